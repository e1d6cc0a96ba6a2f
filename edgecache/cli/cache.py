"""``edgecache cache ...``: the operator's view of a running daemon's cache.

Talks to the daemon's cache API over HTTP (``--url``), so it works the same
on the host and through a tunnel. Tables for people, ``--format json`` for
scripts. Exit codes: 0 done; 1 the daemon refused, an operation failed, or
``verify`` found a corrupt image; 2 bad usage; 3 the daemon is unreachable.

See docs/behaviour.md#command-line.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

DEFAULT_URL = "http://127.0.0.1:9292"
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
POLL = 0.5


class Refused(click.ClickException):
    """The daemon answered with an error (or an operation failed)."""

    exit_code = EXIT_REFUSED


class Unreachable(click.ClickException):
    exit_code = EXIT_UNREACHABLE


@dataclass
class Api:
    """A small blocking client of the daemon's cache API."""

    url: str
    token: str | None
    timeout: float

    def call(
        self, method: str, path: str, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """``(status, decoded JSON or None)``; raises Refused / Unreachable."""
        request = urllib.request.Request(self.url.rstrip("/") + path, method=method)
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("X-Auth-Token", self.token)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _decode(response.read())
        except urllib.error.HTTPError as err:
            raise Refused(
                f"edgecache at {self.url} refused {method} {path}: "
                f"{err.code} {_message(err.read()) or err.reason}"
            ) from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise Unreachable(f"cannot reach edgecache at {self.url}: {reason}") from err

    def state(self) -> dict[str, Any]:
        _, body = self.call("GET", "/v2/cache?detail=1")
        if not isinstance(body, dict):
            raise Refused(f"edgecache at {self.url} sent an unreadable cache listing")
        return body


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _message(raw: bytes) -> str:
    """Glance-shaped error bodies carry ``{"error": {"message": ...}}``."""
    body = _decode(raw)
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in body.values():
            if isinstance(value, dict) and value.get("message"):
                return str(value["message"])
    return body.strip() if isinstance(body, str) else ""


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return datetime.fromtimestamp(stamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _progress(done: int, total: int | None) -> str:
    if not total:
        return f"{_size(done)}" if done else "-"
    return f"{100 * done / total:.0f}% of {_size(total)}"


def _emit(ctx: click.Context, payload: Any, text: str) -> None:
    if ctx.obj["format"] == "json":
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    elif text:
        click.echo(text)


def _console() -> Any:
    from rich.console import Console

    # A pipe has no width; never wrap a 36-character image id there.
    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=False)


@click.group("cache")
@click.option("--url", envvar="EDGECACHE_URL", default=DEFAULT_URL, show_default=True,
              help="The daemon's API (env EDGECACHE_URL).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table for people, json for scripts.")
@click.option("--os-auth-token", "token", envvar="OS_AUTH_TOKEN", default=None,
              help="Token sent as X-Auth-Token (keystone mode; env OS_AUTH_TOKEN).")
@click.option("--timeout", default=600.0, show_default=True,
              help="Seconds to wait for one answer (verify of a large cache takes long).")
@click.pass_context
def cache(ctx: click.Context, url: str, fmt: str, token: str | None, timeout: float) -> None:
    """List and steer a running daemon's cache and prefetch queue.

    Exit status: 0 done, 1 refused or failed (or verify found corruption),
    2 bad usage, 3 the daemon could not be reached.
    """
    ctx.obj = {"api": Api(url, token, timeout), "format": fmt}


def _api(ctx: click.Context) -> Api:
    api: Api = ctx.obj["api"]
    return api


@cache.command("list")
@click.pass_context
def list_(ctx: click.Context) -> None:
    """Cached and queued images, with prefetch progress, and images refused as unsafe."""
    state = _api(ctx).state()
    if ctx.obj["format"] == "json":
        _emit(ctx, state, "")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("IMAGE ID", "STATE", "SIZE", "PROGRESS", "HITS", "LAST ACCESSED (UTC)",
                 "LAST VERIFIED (UTC)"):
        numeric = name in ("SIZE", "PROGRESS", "HITS")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=True)
    for entry in state.get("cached_images", []):
        table.add_row(
            entry["image_id"], "pinned" if entry.get("pinned") else "cached",
            _size(entry.get("size")), "100%", str(entry.get("hits", 0)),
            _when(entry.get("last_accessed")), _when(entry.get("last_verified")),
        )
    queued = {row["image_id"] for row in state.get("prefetch", [])}
    for row in state.get("prefetch", []):
        label = row["state"] + (" +pin" if row.get("pin") else "")
        if row.get("error") and row["state"] == "retrying":
            label += f" ({row['error'][:40]})"
        table.add_row(
            row["image_id"], label, _size(row.get("bytes_total")),
            _progress(row.get("bytes_done", 0), row.get("bytes_total")), "-", "-", "-",
        )
    for fill in state.get("fills", []):
        if fill["image_id"] not in queued:
            table.add_row(
                fill["image_id"], "filling", _size(fill["bytes_total"]),
                _progress(fill["bytes_done"], fill["bytes_total"]), "-", "-", "-",
            )
    for refused in state.get("refused", []):
        table.add_row(
            refused["image_id"], f"refused: {refused['reason']}", "-", "-", "-", "-", "-",
        )
    console = _console()
    if table.row_count:
        console.print(table)
    else:
        console.print("No cached or queued images.")
    usage = state.get("usage") or {}
    if usage:
        console.print(
            f"{usage.get('images', 0)} cached, {_size(usage.get('size'))} of "
            f"{_size(usage.get('max_size'))} used ({_size(usage.get('pinned'))} pinned); "
            f"{len(state.get('queued_images', []))} queued",
            highlight=False,
        )


@cache.command()
@click.argument("image_ids", metavar="ID...", nargs=-1, required=True)
@click.option("--wait", is_flag=True, help="Show progress until every image is cached.")
@click.option("--wait-timeout", type=float, default=0.0,
              help="Give up waiting after this many seconds (0: wait as long as it takes).")
@click.pass_context
def queue(ctx: click.Context, image_ids: tuple[str, ...], wait: bool, wait_timeout: float) -> None:
    """Queue images for prefetch (Glance's PUT /v2/cache/{id})."""
    api = _api(ctx)
    queued, errors = [], []
    for image_id in image_ids:
        try:
            api.call("PUT", f"/v2/cache/{image_id}")
        except Refused as exc:
            errors.append(exc.message)
            continue
        queued.append(image_id)
    if not wait or not queued:
        _emit(ctx, {"queued": queued, "errors": errors},
              "\n".join(f"Queued {image_id}" for image_id in queued))
        _fail_if(errors)
        return
    failures = _wait_cached(ctx, api, queued, wait_timeout)
    _emit(ctx, {"queued": queued, "cached": [i for i in queued if i not in failures],
                "errors": errors + list(failures.values())}, "")
    _fail_if(errors + list(failures.values()))


def _wait_cached(
    ctx: click.Context, api: Api, image_ids: list[str], wait_timeout: float
) -> dict[str, str]:
    """Poll until every image is cached or given up on; returns image id -> why it failed."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    started = time.monotonic()
    since = time.time() - 5  # failures older than this run are not ours
    pending = set(image_ids)
    failures: dict[str, str] = {}
    columns = (
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TransferSpeedColumn(), TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console(), disable=ctx.obj["format"] == "json") as bars:
        tasks = {image_id: bars.add_task(image_id, total=None) for image_id in image_ids}
        while pending:
            state = api.state()
            cached = {e["image_id"]: e for e in state.get("cached_images", [])}
            rows = {r["image_id"]: r for r in state.get("prefetch", [])}
            fails = {
                f["image_id"]: f["error"] for f in state.get("failed", []) if f["at"] >= since
            }
            for image_id in sorted(pending):
                task = tasks[image_id]
                if image_id in cached:
                    size = cached[image_id]["size"]
                    bars.update(task, total=size, completed=size)
                    pending.discard(image_id)
                elif image_id in rows:
                    row = rows[image_id]
                    bars.update(task, total=row.get("bytes_total"),
                                completed=row.get("bytes_done", 0))
                else:
                    failures[image_id] = (
                        f"prefetch of {image_id} failed: "
                        f"{fails.get(image_id, 'it left the queue without being cached')}"
                    )
                    pending.discard(image_id)
            if not pending:
                break
            if wait_timeout and time.monotonic() - started > wait_timeout:
                for image_id in pending:
                    failures[image_id] = f"{image_id} not cached after {wait_timeout:.0f} s"
                break
            time.sleep(POLL)
    if ctx.obj["format"] != "json":
        for image_id in image_ids:
            if image_id not in failures:
                click.echo(f"Cached {image_id}")
    return failures


def _fail_if(errors: list[str]) -> None:
    if errors:
        raise Refused("\n".join(errors))


@cache.command()
@click.argument("image_id", metavar="ID")
@click.pass_context
def delete(ctx: click.Context, image_id: str) -> None:
    """Remove an image from the cache and the prefetch queue."""
    _api(ctx).call("DELETE", f"/v2/cache/{image_id}")
    _emit(ctx, {"deleted": image_id}, f"Deleted {image_id}")


@cache.command()
@click.option("--target", type=click.Choice(["cache", "queue", "both"]), default="both",
              show_default=True, help="What to empty.")
@click.pass_context
def clear(ctx: click.Context, target: str) -> None:
    """Empty the cache, the prefetch queue, or both (pinned images too)."""
    headers = {} if target == "both" else {"x-image-cache-clear-target": target}
    _api(ctx).call("DELETE", "/v2/cache", headers=headers)
    _emit(ctx, {"cleared": target}, f"Cleared {'cache and queue' if target == 'both' else target}")


@cache.command()
@click.argument("image_id", metavar="ID")
@click.pass_context
def pin(ctx: click.Context, image_id: str) -> None:
    """Keep an image cached whatever the pressure (queued first if not cached yet)."""
    status, body = _api(ctx).call("PUT", f"/v2/cache/{image_id}/pin")
    text = f"Pinned {image_id}" if status == 200 else (
        f"Queued {image_id}; it is pinned once cached"
    )
    _emit(ctx, body, text)


@cache.command()
@click.argument("image_id", metavar="ID")
@click.pass_context
def unpin(ctx: click.Context, image_id: str) -> None:
    """Let an image be evicted again like any other."""
    _, body = _api(ctx).call("DELETE", f"/v2/cache/{image_id}/pin")
    _emit(ctx, body, f"Unpinned {image_id}")


@cache.command()
@click.argument("image_id", metavar="[ID]", required=False)
@click.pass_context
def verify(ctx: click.Context, image_id: str | None) -> None:
    """Re-hash one cached image (or all) now; a corrupt one is evicted (exit 1)."""
    api = _api(ctx)
    if image_id:
        _, body = api.call("POST", f"/v2/cache/{image_id}/verify")
        verdicts = [body]
    else:
        _, body = api.call("POST", "/v2/cache/verify")
        verdicts = list(body.get("images", [])) if isinstance(body, dict) else []
    lines = []
    for verdict in verdicts:
        line = f"{verdict['image_id']}  {verdict['result']}"
        if verdict.get("detail"):
            line += f" ({verdict['detail']}; evicted)"
        lines.append(line)
    if not verdicts:
        lines.append("No cached images.")
    _emit(ctx, body, "\n".join(lines))
    corrupt = [v["image_id"] for v in verdicts if v["result"] == "corrupt"]
    if corrupt:
        _exit_corrupt(corrupt)


def _exit_corrupt(corrupt: list[str]) -> NoReturn:
    click.echo(f"edgecache: {len(corrupt)} corrupt image(s) evicted: {', '.join(corrupt)}",
               err=True)
    sys.exit(EXIT_REFUSED)
