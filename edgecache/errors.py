"""The exceptions edgecache raises between its layers.

The API maps them onto HTTP statuses in one place (:func:`edgecache.api.errors.answer_for`),
so lower layers never speak HTTP.
"""

from __future__ import annotations


class EdgecacheError(Exception):
    """Base of every error edgecache raises on purpose."""


class ConfigError(EdgecacheError):
    """The configuration cannot be used (bad value, missing endpoint)."""


class NotFound(EdgecacheError):
    """The image (or its cache entry) does not exist."""


class UpstreamError(EdgecacheError):
    """No upstream answered usefully: refused, timed out, or a 5xx."""

    def __init__(self, message: str, *, reason: str = "connect") -> None:
        super().__init__(message)
        #: a short, bounded label for metrics: connect, timeout, status, body
        self.reason = reason


class UpstreamRefused(EdgecacheError):
    """Upstream answered with a status the caller must see as is (401/403/404/204...)."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.body = body
        self.headers = headers


class FillAborted(EdgecacheError):
    """A fill ended without a verified image; readers must abort their responses."""


class ChecksumMismatch(FillAborted):
    """The bytes received do not hash to the value Glance recorded for the image."""


class ShortBody(FillAborted):
    """Upstream sent fewer (or more) bytes than the image's size."""


class UnsafeImage(FillAborted):
    """The image's content is not safe to hand a hypervisor (core/inspection.py).

    Refused like Glance refuses a download: a 403 naming the reason and the image.
    """

    def __init__(self, image_id: str, reason: str, detail: str) -> None:
        super().__init__(f"image {image_id} is refused as unsafe ({reason}): {detail}")
        self.image_id = image_id
        #: one of edgecache.core.inspection.REASONS
        self.reason = reason
        self.detail = detail


class CertificateRefused(UpstreamRefused):
    """The key manager would not give this caller the image's signing certificate.

    This caller's answer, not the image's (another may read the certificate): a
    403 to it alone, like Glance's own refusals; nothing is remembered of the image.
    """

    def __init__(self, image_id: str, detail: str) -> None:
        self.message = (f"Image {image_id} is refused: its signature cannot be verified, "
                        f"{detail}")
        super().__init__(403, self.message.encode(), {})
        self.image_id = image_id
        self.detail = detail


class CacheDiskError(FillAborted):
    """The cache's own disk refused a fill's write (ENOSPC, EIO): not upstream's fault.

    The bytes before the failed write are on disk; readers of the fill relay the
    rest from upstream (docs/behaviour.md#a-full-or-failing-disk), nothing is committed.
    """


class FillStalled(FillAborted):
    """A fill made no progress for ``[cache] stall_time`` seconds."""


class FillCoolingDown(EdgecacheError):
    """The image's last fill failed moments ago: no new fill of it starts yet."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoSpace(EdgecacheError):
    """The image cannot be admitted within ``[cache] max_size``."""
