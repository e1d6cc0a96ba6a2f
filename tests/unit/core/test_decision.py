"""Every path of an image-data request, as one table: facts in, action out, no I/O."""

from __future__ import annotations

import itertools

import pytest

from edgecache.core.decision import Action, Facts, Glance, Kind, Ranged, decide
from edgecache.core.views import Copy, FillState

GET, HEAD = "GET", "HEAD"

TABLE: list[tuple[str, Facts, Action]] = [
    ("an id that is not a UUID never reaches Glance",
     Facts(GET, id_is_uuid=False), Action(Kind.BAD_ID, "error")),
    ("Glance's 403 is relayed",
     Facts(GET, glance=Glance.REFUSED, refusal_status=403, copy=Copy.SAME),
     Action(Kind.RELAY_REFUSAL, "error")),
    ("Glance's 404 is relayed and reported: the image may be deleted",
     Facts(GET, glance=Glance.REFUSED, refusal_status=404, copy=Copy.SAME),
     Action(Kind.RELAY_REFUSAL, "error", report_not_found=True)),
    ("no Glance answers and no recent grant: 503 even with a copy",
     Facts(GET, glance=Glance.UNREACHABLE, copy=Copy.SAME),
     Action(Kind.UNAVAILABLE, "error")),
    ("a deactivated image is Glance's to answer; the copy goes",
     Facts(GET, status="deactivated", copy=Copy.SAME),
     Action(Kind.PASS_THROUGH, "miss", evict_copy=True)),
    ("a queued image with nothing cached is Glance's to answer",
     Facts(GET, status="queued", size_known=False),
     Action(Kind.PASS_THROUGH, "miss")),
    ("a multi-range is a 400, even on a hit, once Glance lets the caller download",
     Facts(GET, ranged=Ranged.BAD, copy=Copy.SAME),
     Action(Kind.BAD_RANGE, "error", asks_download=True)),
    ("a range past the end is a 416, once Glance lets the caller download",
     Facts(GET, ranged=Ranged.UNSATISFIABLE),
     Action(Kind.UNSATISFIABLE_RANGE, "error", asks_download=True)),
    ("a committed copy of these bytes is a hit",
     Facts(GET, copy=Copy.SAME), Action(Kind.SERVE_HIT, "hit", asks_download=True)),
    ("a range of a committed copy is a hit",
     Facts(GET, ranged=Ranged.SATISFIABLE, copy=Copy.SAME),
     Action(Kind.SERVE_HIT, "hit", asks_download=True)),
    ("HEAD of a committed copy is a hit",
     Facts(HEAD, copy=Copy.SAME), Action(Kind.SERVE_HIT, "hit", asks_download=True)),
    ("offline, a recently granted caller gets the copy",
     Facts(GET, glance=Glance.OFFLINE_GRANT, copy=Copy.SAME), Action(Kind.SERVE_HIT, "hit")),
    ("offline, nothing cached: 503",
     Facts(GET, glance=Glance.OFFLINE_GRANT), Action(Kind.UNAVAILABLE, "error")),
    ("offline, a copy of other bytes is never served (and goes)",
     Facts(GET, glance=Glance.OFFLINE_GRANT, copy=Copy.CHANGED),
     Action(Kind.UNAVAILABLE, "error", evict_copy=True)),
    ("a range of an image being fetched is read from the fill",
     Facts(GET, ranged=Ranged.SATISFIABLE, fill=FillState.RUNNING),
     Action(Kind.SERVE_RANGE_FROM_FILL, "coalesced", asks_download=True)),
    ("a range of an image whose fill is verified is read from the fill",
     Facts(GET, ranged=Ranged.SATISFIABLE, fill=FillState.VERIFIED),
     Action(Kind.SERVE_RANGE_FROM_FILL, "coalesced", asks_download=True)),
    ("a range with no fill never starts one",
     Facts(GET, ranged=Ranged.SATISFIABLE), Action(Kind.PASS_THROUGH, "miss")),
    ("a range while other bytes of the image are fetched goes to Glance",
     Facts(GET, ranged=Ranged.SATISFIABLE, fill=FillState.OTHER),
     Action(Kind.PASS_THROUGH, "miss")),
    ("a HEAD range of a running fill is Glance's",
     Facts(HEAD, ranged=Ranged.SATISFIABLE, fill=FillState.RUNNING),
     Action(Kind.PASS_THROUGH, "miss")),
    ("an image of unknown size cannot be cached",
     Facts(GET, size_known=False), Action(Kind.PASS_THROUGH, "miss")),
    ("HEAD of an uncached image is answered from the record",
     Facts(HEAD), Action(Kind.HEAD_MISS, "miss", asks_download=True)),
    ("HEAD of a changed copy: answered from the record, the copy goes",
     Facts(HEAD, copy=Copy.CHANGED),
     Action(Kind.HEAD_MISS, "miss", evict_copy=True, asks_download=True)),
    ("a running fill of these bytes is joined",
     Facts(GET, fill=FillState.RUNNING), Action(Kind.JOIN_FILL, "coalesced", asks_download=True)),
    ("joining a fill that verified every byte is as good as a hit",
     Facts(GET, fill=FillState.VERIFIED), Action(Kind.JOIN_FILL, "hit", asks_download=True)),
    ("a fill of other bytes is neither joined nor replaced",
     Facts(GET, fill=FillState.OTHER), Action(Kind.PASS_THROUGH, "miss")),
    ("a fill that failed moments ago cools down",
     Facts(GET, cooling_down=True), Action(Kind.COOLING_DOWN, "error")),
    ("a running fill is joined even while an older failure cools down",
     Facts(GET, fill=FillState.RUNNING, cooling_down=True),
     Action(Kind.JOIN_FILL, "coalesced", asks_download=True)),
    ("an image that cannot fit is passed through",
     Facts(GET, fits=False), Action(Kind.PASS_THROUGH, "miss")),
    ("otherwise a fill starts",
     Facts(GET), Action(Kind.START_FILL, "miss")),
    ("a changed copy is evicted and the new bytes fetched",
     Facts(GET, copy=Copy.CHANGED), Action(Kind.START_FILL, "miss", evict_copy=True)),
]


@pytest.mark.parametrize(("facts", "expected"), [(f, a) for _, f, a in TABLE],
                         ids=[why for why, _, _ in TABLE])
def test_decision_table(facts: Facts, expected: Action) -> None:
    assert decide(facts) == expected


def test_every_kind_of_action_is_reachable() -> None:
    assert {action.kind for _, _, action in TABLE} == set(Kind)


@pytest.mark.parametrize(
    ("copy", "fill", "glance"),
    list(itertools.product(Copy, FillState, Glance)),
)
def test_bytes_of_a_changed_copy_are_never_served(
    copy: Copy, fill: FillState, glance: Glance
) -> None:
    """Whatever else holds, only a copy of exactly the record's bytes is a hit."""
    action = decide(Facts(GET, glance=glance, copy=copy, fill=fill, refusal_status=403))
    if action.kind is Kind.SERVE_HIT:
        assert copy is Copy.SAME and glance in (Glance.GRANTED, Glance.OFFLINE_GRANT)
    if copy is Copy.CHANGED and glance is not Glance.REFUSED and glance is not Glance.UNREACHABLE:
        assert action.evict_copy


@pytest.mark.parametrize("facts", [f for _, f, _ in TABLE])
def test_refusals_and_errors_count_as_errors(facts: Facts) -> None:
    action = decide(facts)
    errors = {Kind.BAD_ID, Kind.RELAY_REFUSAL, Kind.UNAVAILABLE, Kind.COOLING_DOWN,
              Kind.BAD_RANGE, Kind.UNSATISFIABLE_RANGE}
    assert (action.result == "error") == (action.kind in errors)


@pytest.mark.parametrize(("facts", "expected"), [(f, a) for _, f, a in TABLE],
                         ids=[why for why, _, _ in TABLE])
def test_nothing_leaves_the_cache_without_glances_download_verdict(
    facts: Facts, expected: Action
) -> None:
    """A hit, a join, a range of a fill, a HEAD and our own 400/416 to a Range ask
    ``download_image`` first; a started fill's own GET is the question, a pass through is
    Glance's answer, offline the recent grant stands in."""
    action = decide(facts)
    serves = action.kind in (Kind.SERVE_HIT, Kind.SERVE_RANGE_FROM_FILL, Kind.HEAD_MISS,
                             Kind.JOIN_FILL, Kind.BAD_RANGE, Kind.UNSATISFIABLE_RANGE)
    assert action.asks_download == (serves and facts.glance is Glance.GRANTED)
