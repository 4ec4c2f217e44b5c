"""k-core filtering: the iterated fixed point, KG pruning, the report, and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kp4sr.data import Dataset, KnowledgeGraph
from kp4sr.errors import ConfigError
from kp4sr.filtering import k_core

ITEMS = ["a", "b", "c", "d", "e"]


def make(sequences: list[list[str]], kg: KnowledgeGraph | None = None) -> Dataset:
    index = {x: i for i, x in enumerate(ITEMS)}
    return Dataset(
        name="hand",
        domain="movie",
        users=[f"u{i}" for i in range(len(sequences))],
        items=list(ITEMS),
        titles=[f"Title {x.upper()}" for x in ITEMS],
        sequences=[np.array([index[x] for x in s], dtype=np.int64) for s in sequences],
        kg=kg if kg is not None else KnowledgeGraph.empty(),
        skipped={"something": 1},
    )


HAND = [
    ["a", "b", "c"],  # u0: keeps a, b after c goes
    ["a", "b"],  # u1
    ["c", "d"],  # u2: falls below 2 once d is gone (round 2 -> dropped in round 3)
    ["d"],  # u3: below 2 from the start
    ["a", "b", "a"],  # u4: a repeated item counts twice
]
TRIPLES = [
    ("item:a", "genre", "genre:x"),
    ("genre:x", "films_of_genre", "item:a"),
    ("item:c", "genre", "genre:x"),
    ("item:d", "genre", "genre:y"),
    ("genre:y", "films_of_genre", "item:d"),
    ("genre:x", "subgenre_of", "genre:z"),
    ("item:e", "directed_by", "person:p"),
]
NAMES = {"genre:x": "X", "genre:y": "Y", "genre:z": "Z", "person:p": "P", "item:a": "Title A"}


def named(ds: Dataset) -> list[list[str]]:
    return [[ds.items[i] for i in s.tolist()] for s in ds.sequences]


def test_cascade_needs_several_rounds() -> None:
    out, report = k_core(make(HAND), min_user=2, min_item=2)
    assert out.users == ["u0", "u1", "u4"]
    assert out.items == ["a", "b"]
    assert named(out) == [["a", "b"], ["a", "b"], ["a", "b", "a"]]
    assert out.titles == ["Title A", "Title B"]
    assert all(s.dtype == np.int64 for s in out.sequences)
    assert report == {
        "users_before": 5,
        "users_after": 3,
        "items_before": 5,
        "items_after": 2,
        "interactions_before": 11,
        "interactions_after": 7,
        "rounds": 4,  # u3 and e; then d; then u2; then c
    }
    assert out.name == "hand" and out.domain == "movie" and out.skipped == {"something": 1}


def test_kg_pruning_keeps_only_what_still_touches_the_data() -> None:
    kg = KnowledgeGraph.from_triples(TRIPLES, NAMES)
    out, _ = k_core(make(HAND, kg), min_user=2, min_item=2)
    assert set(out.kg.triples()) == {
        ("item:a", "genre", "genre:x"),
        ("genre:x", "films_of_genre", "item:a"),
        ("genre:x", "subgenre_of", "genre:z"),
    }
    assert set(out.kg.entities) == {"item:a", "genre:x", "genre:z"}
    assert set(out.kg.relations) == {"genre", "films_of_genre", "subgenre_of"}
    assert out.kg.name_map() == {"item:a": "Title A", "genre:x": "X", "genre:z": "Z"}
    assert len(out.kg.names) == len(out.kg.entities)


def test_zero_thresholds_are_a_no_op() -> None:
    kg = KnowledgeGraph.from_triples(TRIPLES, NAMES)
    ds = make(HAND + [[]], kg)
    out, report = k_core(ds, 0, 0)
    assert out.users == ds.users and out.items == ds.items and out.titles == ds.titles
    assert named(out) == HAND + [[]]
    assert list(out.kg.triples()) == list(kg.triples())
    assert report["rounds"] == 0 and report["interactions_after"] == 11


def test_everything_can_go() -> None:
    out, report = k_core(make(HAND), min_user=10, min_item=1)
    assert out.users == [] and out.items == [] and out.sequences == []
    assert report["users_after"] == 0 and report["interactions_after"] == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_threshold(bad: object) -> None:
    with pytest.raises(ConfigError, match="min_user"):
        k_core(make(HAND), min_user=bad)  # type: ignore[arg-type]


def reference(seqs: list[list[int]], min_user: int, min_item: int) -> tuple[set[int], set[int]]:
    """Remove one offending user or item at a time until none is left."""
    users, items = set(range(len(seqs))), set(range(len(ITEMS)))
    while True:
        counts = {i: 0 for i in items}
        for u in users:
            for i in seqs[u]:
                if i in items:
                    counts[i] += 1
        bad_items = {i for i, c in counts.items() if c < min_item}
        if bad_items:
            items -= {min(bad_items)}
            continue
        bad_users = {u for u in users if sum(i in items for i in seqs[u]) < min_user}
        if bad_users:
            users -= {min(bad_users)}
            continue
        return users, items


@settings(max_examples=150, deadline=None)
@given(
    seqs=st.lists(st.lists(st.integers(0, len(ITEMS) - 1), max_size=8), max_size=8),
    min_user=st.integers(0, 4),
    min_item=st.integers(0, 4),
)
def test_k_core_properties(seqs: list[list[int]], min_user: int, min_item: int) -> None:
    ds = make([[ITEMS[i] for i in s] for s in seqs])
    out, report = k_core(ds, min_user, min_item)
    flat = np.concatenate([*out.sequences, np.zeros(0, np.int64)])
    item_count = np.bincount(flat, minlength=len(out.items))
    assert len(item_count) == len(out.items)
    assert all(len(s) >= min_user for s in out.sequences)
    assert (item_count >= min_item).all()
    kept_items = set(out.items)
    for user, s in zip(out.users, named(out)):
        original = [ITEMS[i] for i in seqs[ds.users.index(user)]]
        # the kept items, in the original order: a subsequence that drops only removed items
        assert s == [x for x in original if x in kept_items]
    users, items = reference(seqs, min_user, min_item)
    assert out.users == [f"u{u}" for u in sorted(users)]
    assert out.items == [ITEMS[i] for i in sorted(items)]
    assert report["interactions_after"] == sum(len(s) for s in out.sequences)
    assert report["users_after"] == len(out.users) and report["items_after"] == len(out.items)
    if min_user == 0 and min_item == 0:
        assert report["rounds"] == 0 and named(out) == named(ds)
