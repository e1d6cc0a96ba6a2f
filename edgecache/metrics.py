"""Every Prometheus metric edgecache exports (docs/behaviour.md#metrics), on a private registry.

One :class:`Metrics` per application, so tests can build many apps in one
process. Labels are small closed sets: never image ids, never tokens.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: From a 1 ms hit header to a 10-minute fill of a large image.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
)

REQUEST_RESULTS = ("hit", "miss", "coalesced", "error")
#: ``UpstreamError.reason`` values; declared up front so rate() and alerts see a 0, not nothing.
#: ``store_refused``: a direct-store location not contacted (docs/behaviour.md#direct-store-reads).
UPSTREAM_ERROR_REASONS = (
    "connect", "timeout", "status", "body", "size", "store", "store_refused",
)
#: what the cache's disk refused: a partial file's creation, or a fill's write
DISK_ERROR_OPS = ("create", "write")
#: why an image was not admitted for caching (it is passed through instead)
ADMISSION_REFUSALS = ("max_size", "disk_space")
#: Why the format inspector refused an image (core/inspection.py)
IMAGE_SAFETY_REASONS = (
    "unsupported_disk_format", "disk_format_mismatch", "multiple_formats",
    "backing_file", "data_file", "vmdk_type", "safety_check", "signature", "unsigned",
)


class Metrics:
    """The metric objects, registered on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.image_requests = Counter(
            "edgecache_image_requests",
            "Image-data requests by outcome. A miss or coalesced request whose fill then "
            "fails is counted again as error.",
            ["result"], registry=r,
        )
        self.served_bytes = Counter(
            "edgecache_served_bytes", "Image bytes sent to clients, by where they came from.",
            ["source"], registry=r,
        )
        self.upstream_fetched_bytes = Counter(
            "edgecache_upstream_fetched_bytes", "Image bytes fetched from upstream by fills.",
            registry=r,
        )
        self.time_to_first_byte = Histogram(
            "edgecache_time_to_first_byte_seconds",
            "Time from an image-data request to its first body byte.",
            ["result"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.request_duration = Histogram(
            "edgecache_request_duration_seconds", "Time to complete a request, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.cache_size = Gauge(
            "edgecache_cache_size_bytes", "Bytes of committed images on disk.", registry=r
        )
        self.cache_max_size = Gauge(
            "edgecache_cache_max_size_bytes", "The configured [cache] max_size.", registry=r
        )
        self.cache_images = Gauge(
            "edgecache_cache_images", "Committed images in the cache.", registry=r
        )
        self.evictions = Counter(
            "edgecache_cache_evictions", "Images removed from the cache.", registry=r
        )
        self.fills_in_progress = Gauge(
            "edgecache_fills_in_progress", "Upstream fills running now.", registry=r
        )
        self.prefetch_queue_length = Gauge(
            "edgecache_prefetch_queue_length", "Images queued for prefetch.", registry=r
        )
        self.prefetch = Counter(
            "edgecache_prefetch", "Prefetches finished, by outcome.", ["result"], registry=r
        )
        self.upstream_errors = Counter(
            "edgecache_upstream_errors", "Upstream failures, by reason.", ["reason"], registry=r
        )
        self.integrity_failures = Counter(
            "edgecache_integrity_failures",
            "Fills discarded, or relayed responses cut, because the bytes did not match the "
            "image's hash or size.",
            registry=r,
        )
        self.disk_errors = Counter(
            "edgecache_cache_disk_errors",
            "Cache-disk failures (ENOSPC, EIO, EROFS...), by operation; callers were served "
            "from upstream.",
            ["op"], registry=r,
        )
        self.image_safety_rejections = Counter(
            "edgecache_image_safety_rejections",
            "Images whose content the format inspector found unsafe or not their disk_format, "
            "by reason (refused under [image_safety] mode = enforce, served under log).",
            ["reason"], registry=r,
        )
        self.admissions_refused = Counter(
            "edgecache_cache_admissions_refused",
            "Images passed through uncached because they did not fit, by bound.",
            ["reason"], registry=r,
        )
        self.event_loop_lag = Histogram(
            "edgecache_event_loop_lag_seconds",
            "How late the event loop woke a 10 ms timer: every connection waits this long.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        for result in REQUEST_RESULTS:
            self.image_requests.labels(result=result)
        for source in ("cache", "upstream"):
            self.served_bytes.labels(source=source)
        for result in REQUEST_RESULTS[:3]:
            self.time_to_first_byte.labels(result=result)
        for reason in UPSTREAM_ERROR_REASONS:
            self.upstream_errors.labels(reason=reason)
        for op in DISK_ERROR_OPS:
            self.disk_errors.labels(op=op)
        for reason in ADMISSION_REFUSALS:
            self.admissions_refused.labels(reason=reason)
        for reason in IMAGE_SAFETY_REASONS:
            self.image_safety_rejections.labels(reason=reason)
