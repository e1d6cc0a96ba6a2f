"""How long to rest after the n-th failure in a row: one rule for every retry loop.

Endpoint rests, prefetch retries and fill resumes all back off exponentially up
to a cap. Writing that formula once keeps the schedules identical where they
should be and lets a unit test read a schedule without running the loop. This
module imports nothing of edgecache's, so any layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """``base * factor ** (attempt - 1)`` seconds, never more than ``cap``.

    With the defaults the n-th failure in a row rests 2, 4, 8, ... seconds, at
    most a minute: long enough not to hammer something that is down, short
    enough that it is used again soon after it comes back.
    """

    base: float = 2.0
    factor: float = 2.0
    cap: float = 60.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.factor < 1 or self.cap < 0:
            raise ValueError(f"not a backoff: {self!r}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure in a row (1 is the first)."""
        if attempt < 1:
            return 0.0
        # The exponent is bounded so a long run of failures cannot overflow a float.
        exponent = min(attempt - 1, 1024)
        try:
            raw = self.base * self.factor**exponent
        except OverflowError:
            return self.cap
        return min(self.cap, raw)
