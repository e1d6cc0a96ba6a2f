"""The in-memory table of committed images: LRU order, recency, and the byte total.

Eviction trusts :attr:`Index.total_bytes` and :meth:`Index.lru_order`; a total
that drifts from the entries' sizes over-fills or under-fills the disk, so it is
also checked under random sequences of adds, removes and touches.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgecache.core.index import Index
from edgecache.model import Entry


def entry(image_id: str, size: int = 10, last_access: float = 0.0) -> Entry:
    return Entry(image_id=image_id, size=size, last_access=last_access)


def ids(index: Index) -> list[str]:
    return [e.image_id for e in index.lru_order()]


def test_entries_are_in_insertion_order_least_recent_first() -> None:
    index = Index()
    for name in ("a", "b", "c"):
        index.add(entry(name))
    assert ids(index) == ["a", "b", "c"]
    assert (len(index), "b" in index, "z" in index) == (3, True, False)


def test_touch_makes_an_entry_the_most_recent_and_counts_the_hit() -> None:
    index = Index()
    for name in ("a", "b", "c"):
        index.add(entry(name))
    touched = index.touch("a", now=42.0)
    assert touched is not None
    assert (touched.last_access, touched.hits) == (42.0, 1)
    assert ids(index) == ["b", "c", "a"]
    index.touch("a", now=43.0)
    assert index.get("a") == touched and touched.hits == 2


def test_touching_an_unknown_image_changes_nothing() -> None:
    index = Index()
    index.add(entry("a"))
    assert index.touch("nope", now=1.0) is None
    assert ids(index) == ["a"]


def test_totals_follow_adds_replacements_and_removes() -> None:
    index = Index()
    index.add(entry("a", 100))
    index.add(entry("b", 50))
    assert index.total_bytes == 150
    index.add(entry("a", 30))  # a refetched image replaces its old entry
    assert (index.total_bytes, len(index), ids(index)) == (80, 2, ["b", "a"])
    removed = index.remove("b")
    assert removed is not None and removed.size == 50
    assert index.total_bytes == 30
    assert index.remove("b") is None
    assert index.total_bytes == 30


def test_load_restores_recency_from_last_access() -> None:
    """Entries come off disk in arbitrary order; the LRU order must be their access order."""
    index = Index()
    index.load([entry("new", last_access=30.0), entry("old", last_access=10.0),
                entry("mid", last_access=20.0)])
    assert ids(index) == ["old", "mid", "new"]
    assert index.total_bytes == 30


def test_lru_order_is_a_snapshot() -> None:
    """Eviction removes entries while walking the order; that must not break the walk."""
    index = Index()
    for name in ("a", "b", "c"):
        index.add(entry(name))
    walked = []
    for item in index.lru_order():
        walked.append(item.image_id)
        index.remove(item.image_id)
    assert walked == ["a", "b", "c"]
    assert (len(index), index.total_bytes) == (0, 0)


names = st.sampled_from(["a", "b", "c", "d", "e"])
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), names, st.integers(min_value=0, max_value=1 << 40)),
        st.tuples(st.just("remove"), names, st.just(0)),
        st.tuples(st.just("touch"), names, st.just(0)),
    ),
    max_size=60,
)


@given(operations)
def test_total_and_order_match_a_plain_model(ops: list[tuple[str, str, int]]) -> None:
    index = Index()
    model: dict[str, int] = {}  # insertion order is recency order
    for step, (op, name, size) in enumerate(ops):
        if op == "add":
            index.add(entry(name, size))
            model.pop(name, None)
            model[name] = size
        elif op == "remove":
            index.remove(name)
            model.pop(name, None)
        else:
            index.touch(name, now=float(step))
            if name in model:
                model[name] = model.pop(name)
        assert index.total_bytes == sum(model.values())
        assert ids(index) == list(model)
        assert len(index) == len(model)
