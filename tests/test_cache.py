"""The preprocessed-dataset cache: hits, misses, invalidation and corrupted entries."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from kp4sr.cache import cache_key, cached
from kp4sr.data import Dataset, KnowledgeGraph
from kp4sr.errors import DataError


def small_dataset() -> Dataset:
    return Dataset(
        name="tiny",
        domain="movie",
        users=["u1", "u2"],
        items=["a", "b", "c"],
        titles=["A", None, "C"],
        sequences=[np.array([0, 1, 2]), np.array([2, 0])],
        kg=KnowledgeGraph.from_triples([("item:a", "genre", "g:x")], {"g:x": "X"}),
        skipped={"things": 2},
    )


class Builder:
    """Counts how often the (expensive) build runs."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Dataset:
        self.calls += 1
        return small_dataset()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "ratings.tsv"
    path.write_text("1\t1\t5\t100\n")
    return path


def test_miss_then_hit(tmp_path: Path, source: Path) -> None:
    build = Builder()
    first = cached({"kg": "both"}, [source], build, tmp_path / "cache")
    second = cached({"kg": "both"}, [source], build, tmp_path / "cache")
    assert build.calls == 1
    assert second.users == first.users and second.titles == first.titles
    assert [s.tolist() for s in second.sequences] == [[0, 1, 2], [2, 0]]
    assert list(second.kg.triples()) == [("item:a", "genre", "g:x")]
    assert second.skipped == {"things": 2}
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 1 and (entries[0] / "cache-key.json").is_file()


def test_key_changes_with_files_and_options(tmp_path: Path, source: Path) -> None:
    key, _ = cache_key({"kg": "both", "hop": 2}, [source])
    assert cache_key({"hop": 2, "kg": "both"}, [source])[0] == key  # key order is irrelevant
    assert cache_key({"kg": "none", "hop": 2}, [source])[0] != key
    st = source.stat()
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache_key({"kg": "both", "hop": 2}, [source])[0] != key
    build = Builder()
    cached({"kg": "both"}, [source], build, tmp_path / "c")
    cached({"kg": "none"}, [source], build, tmp_path / "c")
    source.write_text("1\t1\t5\t100\n2\t1\t4\t200\n")
    cached({"kg": "both"}, [source], build, tmp_path / "c")
    assert build.calls == 3
    with pytest.raises(DataError, match="cannot read"):
        cache_key({}, [tmp_path / "absent.tsv"])


@pytest.mark.parametrize("damage", ["truncate_json", "drop_arrays", "garbage_arrays", "no_keys"])
def test_corrupted_entry_is_rebuilt(tmp_path: Path, source: Path, damage: str, caplog) -> None:
    build = Builder()
    cached({}, [source], build, tmp_path / "c")
    (entry,) = (tmp_path / "c").iterdir()
    if damage == "truncate_json":
        (entry / "dataset.json").write_text('{"name": "tin')
    elif damage == "drop_arrays":
        (entry / "dataset.safetensors").unlink()
    elif damage == "garbage_arrays":
        (entry / "dataset.safetensors").write_bytes(b"\x00" * 5)
    else:
        (entry / "dataset.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        ds = cached({}, [source], build, tmp_path / "c")
    assert build.calls == 2 and ds.items == ["a", "b", "c"]
    assert "corrupted cache entry" in caplog.text
    cached({}, [source], build, tmp_path / "c")
    assert build.calls == 2  # the rebuilt entry is good again
