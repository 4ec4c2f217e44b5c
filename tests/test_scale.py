"""Scale work of issue #5: the synthetic dataset generator, the scale benchmark, and the fast
paths it relies on (vectorised readers, array-backed training samples, word counting), each
checked against the plain row-by-row or loop implementation it replaces."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import normalizers, pre_tokenizers

from kp4sr import loaders
from kp4sr.data import DataOptions, Dataset, leave_one_out, load_dataset
from kp4sr.errors import DataError
from kp4sr.tokenization import word_counts

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SMALL = ["--interactions", "20000", "--users", "300", "--items", "200", "--triples", "6000"]


def _make(folder: Path, *extra: str) -> dict:
    subprocess.run(
        [sys.executable, str(BENCH / "make_scale_data.py"), str(folder), *SMALL, *extra],
        check=True,
        capture_output=True,
    )
    return json.loads((folder / "manifest.json").read_text())


def test_generated_counts_are_what_kp4sr_loads(tmp_path):
    manifest = _make(tmp_path / "a")
    ds = load_dataset(str(tmp_path / "a"), options=DataOptions(cache=False))  # default 5-core
    stats = ds.stats()
    for key in ("users", "items", "interactions", "kg_triples", "kg_entities", "kg_relations"):
        assert stats[key] == manifest[key], key
    assert stats["kg_relations"] == 10 and not ds.skipped
    templates = json.loads((tmp_path / "a" / "templates.json").read_text())
    assert set(templates) == set(ds.kg.relations)
    lengths = np.array([len(s) for s in ds.sequences])
    assert lengths.min() >= 5 and lengths.max() > 3 * lengths.mean()  # skewed lengths
    counts = np.bincount(np.concatenate(ds.sequences), minlength=len(ds.items))
    assert counts.max() > 20 * np.median(counts)  # Zipf-like popularity
    # seeded: the same options give the same bytes, another seed other bytes
    _make(tmp_path / "b")
    _make(tmp_path / "c", "--seed", "1")
    same = (tmp_path / "a" / "interactions.tsv").read_bytes()
    assert (tmp_path / "b" / "interactions.tsv").read_bytes() == same
    assert (tmp_path / "c" / "interactions.tsv").read_bytes() != same


def test_scale_script_writes_results(tmp_path, monkeypatch):
    out, cache = tmp_path / "out", tmp_path / "cache"
    cmd = [sys.executable, str(BENCH / "scale.py"), "--data", str(tmp_path / "d"), "--out"]
    cmd += [str(out), "--probe", "40", "--runs", "cold", "--cache-dir", str(cache), *SMALL]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "results.json").read_text())
    assert {"machine", "command", "data", "runs", "target", "meets_target"} <= set(report)
    assert set(report["runs"]) == {"cold"}
    assert "| cold | load |" in (out / "results.md").read_text()
    # the warm run, in this process (a second child would import torch again): reads the cache
    spec = importlib.util.spec_from_file_location("scale_bench", BENCH / "scale.py")
    scale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scale)
    monkeypatch.setenv("KP4SR_CACHE", str(cache))
    warm = scale.run_stages(tmp_path / "d", probe=10, max_items=5)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    for run, probe in ((report["runs"]["cold"], 40), (warm, 10)):
        stages = {s["stage"]: s for s in run["stages"]}
        assert list(stages) == ["import", "load", "k_core", "split", "create", "save", "probe"]
        for s in stages.values():
            assert s["seconds"] >= 0 and s["peak_rss_mb"] > 0
        for key in ("users", "items", "interactions", "kg_triples", "kg_entities"):
            assert stages["load"]["detail"][key] == manifest[key], key
            assert stages["k_core"]["detail"][key] == manifest[key], key
        assert stages["split"]["detail"]["test"] == manifest["users"]
        assert stages["probe"]["detail"]["prompts"] == probe
    cold = report["runs"]["cold"]
    assert cold["peak_rss_mb"] == max(s["peak_rss_mb"] for s in cold["stages"][:-1])
    assert "cache_write" in cold["stages"][1]["detail"]
    assert "cache_read" in warm["stages"][1]["detail"]


# --------------------------------------------------------------------------- fast readers


def _load(folder: Path, fast: bool, monkeypatch) -> tuple[Dataset, bool]:
    """load_generic with the vectorised readers on or off; and whether they were taken."""
    used = []
    real_i, real_t = loaders._fast_interactions, loaders._fast_kb4rec_triples

    def inter(*a):
        r = real_i(*a) if fast else None
        used.append(r is not None)
        return r

    def triples(*a):
        r = real_t(*a) if fast else None
        used.append(r is not None)
        return r

    with monkeypatch.context() as m:
        m.setattr(loaders, "_fast_interactions", inter)
        m.setattr(loaders, "_fast_kb4rec_triples", triples)
        ds = loaders.load_generic(folder)
    return ds, all(used)


def _same(a: Dataset, b: Dataset) -> None:
    assert (a.users, a.items, a.titles, a.skipped) == (b.users, b.items, b.titles, b.skipped)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True))
    assert (a.kg.entities, a.kg.names, a.kg.relations) == (
        b.kg.entities,
        b.kg.names,
        b.kg.relations,
    )
    for part in ("heads", "rels", "tails"):
        assert np.array_equal(getattr(a.kg, part), getattr(b.kg, part))


PLAIN = "user\titem\ttimestamp\nu2\t10\t5\nu1\t7\t3\nu2\t007\t5\nu2\t7\t1\nu1\t10\t3\n"
CASES = {
    "plain": ("interactions.tsv", PLAIN, True),
    "no final newline": ("interactions.tsv", PLAIN.rstrip("\n"), True),
    "csv, other columns and order": (
        "interactions.csv",
        "rating,TIME,item_id,user_id\n5,10,a_long_item_name_over_16,x\n3,9,b,y\n,10,b,x\n",
        True,
    ),
    "quoted csv": ("interactions.csv", 'user,item,time\n"a",b,1\nc,"d,e",2\n', False),
    "padded fields": ("interactions.tsv", "user\titem\ttimestamp\n u1\ti1 \t5\n", False),
    "blank line": ("interactions.tsv", PLAIN.replace("\nu1", "\n\nu1", 1), False),
    "CRLF": ("interactions.tsv", PLAIN.replace("\n", "\r\n"), False),
    "ISO dates": (
        "interactions.tsv",
        "user\titem\ttime\nu\ti\t2020-01-02\nu\tj\t2020-01-01\n",
        False,
    ),
    "fractional times": ("interactions.tsv", "user\titem\ttime\nu\ti\t2.5\nu\tj\t2.25\n", False),
    "UTF-8 names": ("interactions.tsv", "user\titem\ttimestamp\nü\tß\t1\n", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_interaction_reader_matches_row_reader(case, tmp_path, monkeypatch):
    name, text, fast_expected = CASES[case]
    (tmp_path / name).write_text(text, encoding="utf-8")
    fast, used = _load(tmp_path, True, monkeypatch)
    slow, _ = _load(tmp_path, False, monkeypatch)
    _same(fast, slow)
    assert used == fast_expected


@pytest.mark.parametrize(
    "text",
    [
        "user\titem\ttimestamp\nu1\ti1\n",  # a missing field
        "user\titem\nu1\ti1\n",  # a missing column
        "user\titem\ttimestamp\n",  # no rows
        "user\titem\ttimestamp\nu1\t\t5\n",  # an empty item
        "user\titem\ttimestamp\nu1\ti1\tsoon\n",  # a bad timestamp
    ],
)
def test_fast_reader_leaves_errors_to_the_row_reader(text, tmp_path, monkeypatch):
    (tmp_path / "interactions.tsv").write_text(text)
    messages = []
    for fast in (True, False):
        with pytest.raises(DataError) as e:
            _load(tmp_path, fast, monkeypatch)
        messages.append(str(e.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("options", [{}, {"nameless": "id"}, {"script": "latin"}])
def test_fast_triple_reader_matches_row_reader(options, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    items = [str(i) for i in range(40)]
    mids = [f"m.{i:02d}" for i in range(60)]
    ends = items + mids
    lines = [
        f"{ends[rng.integers(len(ends))]}\tr{rng.integers(4)}\t{ends[rng.integers(len(ends))]}\n"
        for _ in range(1500)
    ]  # nameless ends, repeated triples, items as heads and tails
    (tmp_path / "triples.tsv").write_text("head\trelation\ttail\n" + "".join(lines))
    names = [f"m.{i:02d}\t{'Жук' if i % 6 == 0 else 'name'} {i}\n" for i in range(0, 60, 2)]
    (tmp_path / "entity_names.tsv").write_text("entity_id\tname\n" + "".join(names))
    got = [loaders.load_kb4rec_kg(tmp_path, items, **options) for _ in range(2)]
    with monkeypatch.context() as m:
        m.setattr(loaders, "_fast_kb4rec_triples", lambda *a: None)
        want = loaders.load_kb4rec_kg(tmp_path, items, **options)
    (a, skipped_a), (b, skipped_b) = got[0], want
    assert skipped_a == skipped_b and skipped_a.get("duplicate_triples")
    assert (a.entities, a.names, a.relations) == (b.entities, b.names, b.relations)
    for part in ("heads", "rels", "tails"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert loaders._fast_kb4rec_triples(
        tmp_path / "triples.tsv", {i: "item:" + i for i in items}, {}, "skip", "any"
    )  # the fast path was the one taken


def test_order_sequences_is_a_stable_time_sort():
    rng = np.random.default_rng(0)
    for trial in range(60):
        n, n_users = int(rng.integers(1, 200)), int(rng.integers(1, 12))
        users = rng.integers(0, n_users, n)
        times = [
            rng.integers(0, 4, n).astype(np.float64),  # many ties
            rng.integers(-(10**12), 10**12, n),
            rng.random(n),
            np.where(rng.random(n) < 0.2, np.inf, rng.integers(0, 3, n)),
        ][trial % 4]
        want = np.lexsort((np.arange(n), times, users))
        bounds = np.searchsorted(users[want], np.arange(n_users + 1))
        got = loaders._order_sequences(users, times, n_users)
        for u in range(n_users):
            assert np.array_equal(got[u], want[bounds[u] : bounds[u + 1]])


# --------------------------------------------------------------------------- split, tokenizer


def test_array_backed_training_samples_match_the_plain_loop():
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 30, int(rng.integers(0, 14))) for _ in range(120)]
    ds = Dataset(
        "x", "item", [str(i) for i in range(120)], [str(i) for i in range(30)], [None] * 30, seqs
    )
    for max_items in (1, 3, 5):
        split = leave_one_out(ds, max_items)
        want = [
            (u, t, int(s[t]), s[max(0, t - max_items) : t])
            for u, s in enumerate(seqs)
            if len(s) >= 3
            for t in range(1, len(s) - 2)
        ]
        train = split.train
        assert len(train) == len(want)
        for sample, (u, t, target, history) in zip(train, want, strict=True):
            assert (sample.user, sample.position, sample.target) == (u, t, target)
            assert np.array_equal(sample.history, history)
        assert train[-1].position == want[-1][1] and train[np.int64(2)].position == want[2][1]
        assert [s.position for s in train[3:20:4]] == [w[1] for w in want[3:20:4]]
        with pytest.raises(IndexError):
            train[len(train)]
        assert [s.user for s in split.test] == [u for u, s in enumerate(seqs) if len(s) >= 3]


def test_word_counts_equal_counting_text_by_text():
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    corpus = [
        "The author of <item_12> is Kalo Venmira.",
        "Ünïcödé ΣΑΣ test... Jr.. x² ﬁne 12½",
        "\u0301abc a\u0301 x\u00b4y \u00b4z",  # combining marks at a piece's start
        "a\u00a0b  c\td\ne  ",  # NFKC turns NBSP into a space; runs of whitespace
        " lead",
        "",
        "İstanbul ΣΣ. Σ",
        "\x1cfoo\x1fbar",
    ] * 3
    want: Counter[str] = Counter()
    for text in corpus:
        want.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    assert word_counts(corpus, normalizer, pre, chunk=5) == want
