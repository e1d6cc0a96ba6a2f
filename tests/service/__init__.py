"""edgecache as operators run it: metrics, health, logs, systemd, signals.

The daemon runs as a process (:class:`lab.edgecache.EdgecacheProcess`) in front of a
FaultyGlance in thread mode; every check is made from outside, the way Prometheus,
systemd or an operator sees it. The helpers below are shared by the modules here.

See docs/behaviour.md#running-it.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from lab.polling import WaitTimeout, wait_until

__all__ = ["Download", "Scrape", "scrape", "scrape_text", "wait_metric"]

Labels = frozenset[tuple[str, str]]


def scrape_text(url: str) -> str:
    """``GET /metrics`` as text (the exposition format must parse, see :func:`scrape`)."""
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"].startswith("text/plain")
    return response.text


@dataclass(frozen=True)
class Scrape:
    """One parsed scrape: samples by (name, labels), and the families' names and types."""

    samples: dict[tuple[str, Labels], float]
    families: dict[str, str]
    text: str

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def sample_names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def label_values(self) -> set[str]:
        return {value for _, labels in self.samples for _, value in labels}


def scrape(url: str) -> Scrape:
    """A real scrape, parsed with prometheus_client's own parser."""
    text = scrape_text(url)
    samples: dict[tuple[str, Labels], float] = {}
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        sample: Sample
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples, families, text)


def wait_metric(url: str, name: str, expected: float, timeout: float = 10.0,
                **labels: str) -> Scrape:
    """Poll the scrape until ``name{labels} == expected`` (counters move after the
    bytes leave, so a client may finish reading a hair before they do)."""
    current = scrape(url)

    def settled() -> bool:
        nonlocal current
        current = scrape(url)
        return current.get(name, **labels) == expected

    try:
        wait_until(settled, f"{name}{labels} == {expected}", timeout)
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}; it is {current.get(name, **labels)}") from None
    return current


@dataclass
class Download:
    """One image GET in a thread, read to its end (or its breakage) and hashed."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    size: int = 0
    sha512: str = ""
    error: BaseException | None = None
    first_byte: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Download:
        threading.Thread(target=self._run, name="download", daemon=True).start()
        return self

    def _run(self) -> None:
        digest = hashlib.sha512()
        try:
            with requests.get(self.url, headers=self.headers, stream=True, timeout=30) as resp:
                self.status = resp.status_code
                for chunk in resp.iter_content(64 * 1024):
                    digest.update(chunk)
                    self.size += len(chunk)
                    self.first_byte.set()
        except (requests.RequestException, http.client.HTTPException, OSError) as exc:
            self.error = exc
        finally:
            self.sha512 = digest.hexdigest()
            self.first_byte.set()
            self.done.set()

    def wait(self, timeout: float = 30.0) -> Download:
        assert self.done.wait(timeout), f"download of {self.url} still running"
        return self
