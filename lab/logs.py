"""Progress lines and log tails: what the lab shows when something is slow or broken."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["say", "tail", "tails"]


def say(tag: str, message: str) -> None:
    """One progress line on stderr (venv builds take tens of seconds: say why)."""
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def tail(path: Path, lines: int, start: int = 0) -> list[str]:
    """The last ``lines`` lines of ``path`` from byte ``start`` on; [] if it is missing."""
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def tails(paths: list[Path], lines: int) -> str:
    """The tails of several logs, each under its name, for an error message."""
    parts = []
    for path in paths:
        found = tail(path, lines)
        if found:
            parts.append(f"--- {path} (last {len(found)} lines)\n" + "\n".join(found))
    return "\n".join(parts) or "(no log output)"
