"""How an image-data request is answered, decided from facts alone.

The handler (:mod:`edgecache.api.images`) gathers the facts — Glance's answer for
this caller, the Range asked for, what the cache holds and is fetching — and
:func:`decide` names the one :class:`Action` to take. No I/O and no clock here,
so every path of the image request is one row of a table test
(``tests/unit/core/test_decision.py``).

The order of the rules is the contract:

1. an id that is not a UUID never reaches Glance (404);
2. Glance decides first: its refusal is relayed (a 404 may mean the image was
   deleted, so the handler reports it); no answer at all is a 503, unless a
   recent grant to these credentials lets a committed copy be served offline;
3. an image that is not ``active`` is Glance's to answer (and a copy we hold is stale);
4. a malformed Range is a 400, an unsatisfiable one a 416;
5. a committed copy of these bytes is served; a copy of other bytes is evicted;
6. offline, nothing else can be served;
7. a ranged GET of an image being fetched is read from that fill; any other
   range, or an image of unknown size, is passed through (a fill never starts
   from a partial read, as in Glance: LP#1664709);
8. a HEAD of an uncached image is answered from the record;
9. a fill of these bytes is joined; a fill of other bytes is left alone (pass through);
10. a fill that failed moments ago cools down (503 with Retry-After);
11. an image that cannot fit is passed through; otherwise a fill starts.

Seeing the record is not leave to download (Glance's ``download_image``
policy): every action that sends bytes or headers of the image from the cache
(a hit, a join, a range of a fill, a HEAD), and every 400 or 416 it gives a
Range itself, ``asks_download`` first, and the handler relays Glance's refusal
instead. A fill this caller starts needs no
extra question (its own data GET is one); a pass through is Glance's own
answer; offline, the recent grant stands for both.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from edgecache.core.views import Copy, FillState


class Glance(enum.Enum):
    """What Glance said to ``GET /v2/images/{id}`` as this caller."""

    GRANTED = "granted"
    REFUSED = "refused"
    #: no Glance answered; a recent grant to these credentials stands in
    OFFLINE_GRANT = "offline_grant"
    UNREACHABLE = "unreachable"


class Ranged(enum.Enum):
    """The Range (or legacy Content-Range) the request carries, judged against the size."""

    NONE = "none"
    SATISFIABLE = "satisfiable"
    BAD = "bad"
    UNSATISFIABLE = "unsatisfiable"


class Kind(enum.Enum):
    BAD_ID = "bad_id"
    RELAY_REFUSAL = "relay_refusal"
    UNAVAILABLE = "unavailable"
    COOLING_DOWN = "cooling_down"
    PASS_THROUGH = "pass_through"
    BAD_RANGE = "bad_range"
    UNSATISFIABLE_RANGE = "unsatisfiable_range"
    SERVE_HIT = "serve_hit"
    SERVE_RANGE_FROM_FILL = "serve_range_from_fill"
    HEAD_MISS = "head_miss"
    JOIN_FILL = "join_fill"
    START_FILL = "start_fill"


@dataclass(frozen=True)
class Facts:
    """Everything the decision depends on, gathered by the handler."""

    method: str
    id_is_uuid: bool = True
    glance: Glance = Glance.GRANTED
    refusal_status: int | None = None
    #: the record's status (when Glance or an offline grant gave one)
    status: str = "active"
    size_known: bool = True
    ranged: Ranged = Ranged.NONE
    copy: Copy = Copy.ABSENT
    fill: FillState = FillState.NONE
    cooling_down: bool = False
    fits: bool = True


@dataclass(frozen=True)
class Action:
    """What to do, and how the request counts in ``edgecache_image_requests_total``."""

    kind: Kind
    #: hit | miss | coalesced | error
    result: str
    #: drop the committed copy first (stale, or the image is no longer active)
    evict_copy: bool = False
    #: a Glance 404: the copy may belong to a deleted image (the purge check decides)
    report_not_found: bool = False
    #: Glance must first say this caller may download (``download_image``)
    asks_download: bool = False


#: What edgecache answers itself instead of Glance's own answer: the image's bytes or
#: headers from the cache, and its verdict on a Range (Glance asks its policy first).
_ANSWERED_HERE = frozenset(
    {Kind.SERVE_HIT, Kind.SERVE_RANGE_FROM_FILL, Kind.HEAD_MISS, Kind.JOIN_FILL,
     Kind.BAD_RANGE, Kind.UNSATISFIABLE_RANGE}
)


def decide(facts: Facts) -> Action:
    """The one action for these facts (see the module docstring for the rules)."""
    action = _decide(facts)
    if action.kind in _ANSWERED_HERE and facts.glance is Glance.GRANTED:
        return dataclasses.replace(action, asks_download=True)
    return action


def _decide(facts: Facts) -> Action:
    if not facts.id_is_uuid:
        return Action(Kind.BAD_ID, "error")
    if facts.glance is Glance.REFUSED:
        return Action(Kind.RELAY_REFUSAL, "error", report_not_found=facts.refusal_status == 404)
    if facts.glance is Glance.UNREACHABLE:
        return Action(Kind.UNAVAILABLE, "error")
    if facts.status != "active":
        return Action(Kind.PASS_THROUGH, "miss", evict_copy=facts.copy is not Copy.ABSENT)
    if facts.ranged is Ranged.BAD:
        return Action(Kind.BAD_RANGE, "error")
    if facts.ranged is Ranged.UNSATISFIABLE:
        return Action(Kind.UNSATISFIABLE_RANGE, "error")
    if facts.copy is Copy.SAME:
        return Action(Kind.SERVE_HIT, "hit")
    stale = facts.copy is Copy.CHANGED
    if facts.glance is Glance.OFFLINE_GRANT:
        return Action(Kind.UNAVAILABLE, "error", evict_copy=stale)
    ranged = facts.ranged is Ranged.SATISFIABLE
    if ranged and facts.method == "GET" and facts.fill in (FillState.RUNNING, FillState.VERIFIED):
        return Action(Kind.SERVE_RANGE_FROM_FILL, "coalesced", evict_copy=stale)
    if ranged or not facts.size_known:
        return Action(Kind.PASS_THROUGH, "miss", evict_copy=stale)
    if facts.method == "HEAD":
        return Action(Kind.HEAD_MISS, "miss", evict_copy=stale)
    if facts.fill is FillState.VERIFIED:
        # every byte is verified: as good as a committed file
        return Action(Kind.JOIN_FILL, "hit", evict_copy=stale)
    if facts.fill is FillState.RUNNING:
        return Action(Kind.JOIN_FILL, "coalesced", evict_copy=stale)
    if facts.fill is FillState.OTHER:
        return Action(Kind.PASS_THROUGH, "miss", evict_copy=stale)
    if facts.cooling_down:
        return Action(Kind.COOLING_DOWN, "error", evict_copy=stale)
    if not facts.fits:
        return Action(Kind.PASS_THROUGH, "miss", evict_copy=stale)
    return Action(Kind.START_FILL, "miss", evict_copy=stale)
