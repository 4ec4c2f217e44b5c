"""The generated toy dataset: deterministic, well formed, and with signal in its KG."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from kp4sr.data import Dataset, item_key, leave_one_out
from kp4sr.errors import ConfigError
from kp4sr.toy import GENRES, generate

RELATIONS = {
    "genre",
    "films_of_genre",
    "directed_by",
    "films_directed",
    "next_in_series",
    "previous_in_series",
}


@pytest.fixture(scope="module")
def ds() -> Dataset:
    return generate(seed=0)


def by_relation(ds: Dataset, relation: str) -> dict[int, list[str]]:
    """Item index -> tail keys of ``relation`` (for item heads)."""
    index = {item_key(i): k for k, i in enumerate(ds.items)}
    out: dict[int, list[str]] = {}
    for h, r, t in ds.kg.triples():
        if r == relation:
            out.setdefault(index[h], []).append(t)
    return out


def successors(ds: Dataset) -> dict[int, int]:
    index = {item_key(i): k for k, i in enumerate(ds.items)}
    return {i: index[ts[0]] for i, ts in by_relation(ds, "next_in_series").items()}


def same(a: Dataset, b: Dataset) -> bool:
    return (
        a.users == b.users
        and a.items == b.items
        and a.titles == b.titles
        and len(a.sequences) == len(b.sequences)
        and all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))
        and list(a.kg.triples()) == list(b.kg.triples())
        and a.kg.names == b.kg.names
    )


def test_deterministic(ds: Dataset) -> None:
    assert same(ds, generate(seed=0))
    assert not same(ds, generate(seed=1))


def test_sizes_and_types(ds: Dataset) -> None:
    assert (ds.name, ds.domain) == ("toy", "movie")
    assert ds.users == [str(u) for u in range(1, 301)]
    assert ds.items == [str(i) for i in range(1, 201)]
    assert len(set(ds.titles)) == 200 and all(ds.titles)
    assert all(s.dtype == np.int64 and 8 <= len(s) <= 25 for s in ds.sequences)
    assert all(0 <= int(s.min()) and int(s.max()) < 200 for s in ds.sequences)
    small = generate(seed=3, n_users=7, n_items=30)
    assert (len(small.users), len(small.items)) == (7, 30)
    assert len(leave_one_out(ds).test) == 300


def test_kg_shape(ds: Dataset) -> None:
    assert set(ds.kg.relations) == RELATIONS
    genres = by_relation(ds, "genre")
    directors = by_relation(ds, "directed_by")
    assert set(genres) == set(directors) == set(range(200))
    assert all(1 <= len(g) <= 2 for g in genres.values())
    assert all(len(d) == 1 for d in directors.values())
    names = ds.kg.name_map()
    assert {names[f"genre:{g}"] for g in GENRES} == set(GENRES)
    assert 20 <= sum(1 for e in ds.kg.entities if e.startswith("director:")) <= 30
    assert all(names[item_key(i)] == t for i, t in zip(ds.items, ds.titles, strict=True))
    triples = set(ds.kg.triples())
    for h, r, t in triples:  # every relation comes with its inverse
        inverse = {
            "genre": "films_of_genre",
            "films_of_genre": "genre",
            "directed_by": "films_directed",
            "films_directed": "directed_by",
            "next_in_series": "previous_in_series",
            "previous_in_series": "next_in_series",
        }[r]
        assert (t, inverse, h) in triples
    in_series = set(successors(ds)) | set(successors(ds).values())
    assert 0.2 <= len(in_series) / 200 <= 0.45


def test_series_are_continued(ds: Dataset) -> None:
    nxt = successors(ds)
    hits = total = 0
    for seq in ds.sequences:
        for a, b in zip(seq[:-1].tolist(), seq[1:].tolist(), strict=True):
            if a in nxt:
                total += 1
                hits += b == nxt[a]
    assert total > 100
    assert hits / total >= 0.4  # random choice would give about 1/200


def test_users_favour_genres(ds: Dataset) -> None:
    genres = by_relation(ds, "genre")

    def top_share(seqs: list[np.ndarray]) -> float:
        shares = []
        for seq in seqs:
            counts = Counter(g for i in seq.tolist() for g in genres[i])
            shares.append(max(counts.values()) / len(seq))
        return float(np.mean(shares))

    rng = np.random.default_rng(0)
    uniform = [rng.integers(0, 200, size=len(s)) for s in ds.sequences]
    assert top_share(ds.sequences) > 0.45
    assert top_share(ds.sequences) > top_share(uniform) + 0.1


def test_popularity_skew(ds: Dataset) -> None:
    counts = np.bincount(np.concatenate(ds.sequences), minlength=200)
    top = np.sort(counts)[::-1]
    assert top[:20].sum() > 2 * 20 * counts.mean()  # the head is clearly more popular ...
    assert (counts > 0).sum() > 150  # ... but most items are still seen


def test_fast() -> None:
    start = time.perf_counter()
    generate(seed=5)
    assert time.perf_counter() - start < 0.5


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        generate(n_items=3)
    with pytest.raises(ConfigError):
        generate(n_users=0)
