"""The fast paths give exactly what the plain references of benchmarks/speed.py give: token ids
and tree masks (hypothesis, hundreds of random samples), edge draws, length buckets, and beam
search batched over users against one user at a time. Plus a smoke run of the benchmark."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kp4sr import toy
from kp4sr.batching import bucketed_order, estimate_lengths, padding_share
from kp4sr.data import KnowledgeGraph
from kp4sr.prompts import Adjacency, PromptBuilder, PromptConfig
from kp4sr.recommender import KP4SR, Config
from kp4sr.tree_mask import encoder_mask, token_parents, tree_visibility

ROOT_DIR = Path(__file__).resolve().parents[1]


def _load_speed():
    spec = importlib.util.spec_from_file_location("speed", ROOT_DIR / "benchmarks" / "speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


speed = _load_speed()


@pytest.fixture(scope="module")
def rec() -> KP4SR:
    ds = toy.generate(seed=1, n_users=60, n_items=40)
    return KP4SR.create(Config(max_length=512, beams=10, dropout=0.0), dataset=ds)


_builders: dict[tuple, PromptBuilder] = {}


def builder_for(rec: KP4SR, hop: int, degree: int, max_length: int, knowledge: bool):
    key = (hop, degree, max_length, knowledge)
    if key not in _builders:
        _builders[key] = rec.new_builder(PromptConfig(hop, degree, max_length, knowledge))
    return _builders[key]


# ----------------------------------------------------------------------------- prompt + mask

# reproducible runs over random samples, with the module's (read-only) recommender fixture
SAMPLES = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

sample_lists = st.lists(
    st.tuples(
        st.lists(st.integers(0, 39), min_size=1, max_size=5),  # history (item indices)
        st.integers(0, 59),  # user
        st.one_of(st.none(), st.integers(0, 2**31)),  # rng seed, None = evaluation mode
    ),
    min_size=1,
    max_size=4,
)


@settings(SAMPLES, max_examples=300)
@given(
    samples=sample_lists,
    hop=st.integers(0, 2),
    degree=st.integers(0, 8),
    max_length=st.sampled_from([8, 24, 64, 128, 200, 512]),
    knowledge=st.booleans(),
)
def test_fast_prompt_and_mask_equal_the_reference(rec, samples, hop, degree, max_length, knowledge):
    """Ours (cached token arrays, vectorised tree, collate, 4-D mask) == the plain reference
    (re-tokenise every sentence, node ids token by token, dense mask node pair by node pair)."""
    from kp4sr.data import Sample

    b = builder_for(rec, hop, degree, max_length, knowledge)
    chosen = [Sample(u, np.asarray(h, dtype=np.int64), 0, len(h)) for h, u, _ in samples]
    users = [rec.user_text(s.user) for s in chosen]

    def rngs():
        return [None if seed is None else np.random.default_rng(seed) for _, _, seed in samples]

    pad = rec.tokenizer.pad_token_id
    ref_ids, ref_mask = speed.reference_batch(b, chosen, users, rngs(), pad)
    batch, mask = speed.fast_batch(b, chosen, users, rngs(), pad)
    np.testing.assert_array_equal(batch.input_ids.numpy(), ref_ids)
    np.testing.assert_array_equal(mask.numpy(), ref_mask)
    # the CPU row-gather mask equals the generic broadcast rule
    generic = tree_visibility(
        batch.node_of_token, token_parents(batch.node_of_token, batch.parents)
    ).unsqueeze(1)
    np.testing.assert_array_equal(mask.numpy(), generic.numpy())


@settings(SAMPLES, max_examples=150)
@given(
    samples=sample_lists,
    hop=st.integers(0, 3),
    degree=st.integers(0, 8),
    max_length=st.sampled_from([8, 24, 64, 128, 512]),
)
def test_batch_assembly_equals_one_sample_at_a_time(rec, samples, hop, degree, max_length):
    """build_batch == collate of build() (ids, nodes, parents, labels; build() is the same
    assembly for one sample, so this checks padding and that a sample's rows do not depend on
    the batch it is built in: each draws from its own RNG only). The independent check is the
    reference test above."""
    from kp4sr.prompts import collate

    b = builder_for(rec, hop, degree, max_length, True)
    users = [rec.user_text(u) for _, u, _ in samples]
    hists = [np.asarray(h, dtype=np.int64) for h, _, _ in samples]
    targets = [rec.target_tokens(h[0]) for h in hists]

    def rngs(keep=None):
        return [
            None if seed is None else np.random.default_rng(seed)
            for k, (_, _, seed) in enumerate(samples)
            if keep is None or k == keep
        ]

    one_by_one = collate(
        [b.build(u, h, r) for u, h, r in zip(users, hists, rngs())],
        rec.tokenizer.pad_token_id,
        targets,
    )
    batch = b.build_batch(users, hists, rngs(), targets)
    for name in ("input_ids", "node_of_token", "parents", "labels"):
        assert torch.equal(getattr(batch, name), getattr(one_by_one, name)), name
    for k in range(len(samples)):
        alone = b.build_batch(users[k : k + 1], hists[k : k + 1], rngs(k))
        n = alone.input_ids.shape[1]
        assert torch.equal(alone.input_ids[0], batch.input_ids[k, :n])
        assert torch.equal(alone.node_of_token[0], batch.node_of_token[k, :n])


def test_cpu_mask_equals_the_broadcast_rule_on_random_trees():
    rng = np.random.default_rng(0)
    for _ in range(50):
        node, parents = random_tree(rng)
        fast = encoder_mask(node, parents)
        p = token_parents(node, parents)
        n_i, n_j = node.unsqueeze(-1), node.unsqueeze(-2)
        p_i, p_j = p.unsqueeze(-1), p.unsqueeze(-2)
        slow = ((p_i == p_j) | (p_j == n_i) | (n_j == p_i)).unsqueeze(1)
        assert torch.equal(fast, slow)


# ----------------------------------------------------------------------------- edge draws

kgs = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 3), st.integers(0, 6)), min_size=0, max_size=60
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(triples=kgs, degree=st.integers(0, 6), seed=st.integers(0, 1000))
def test_vectorised_hop_draw_follows_the_per_entity_rules(triples, degree, seed):
    kg = KnowledgeGraph.from_triples([(f"e{h}", f"r{r}", f"e{t}") for h, r, t in triples], {})
    adj = Adjacency(kg)
    n = len(kg.entities)
    if n == 0:
        return
    rng = np.random.default_rng(seed)
    ents = rng.integers(0, n, int(rng.integers(1, 6)))
    excl = np.where(rng.random(len(ents)) < 0.5, rng.integers(0, n, len(ents)), -1)
    # evaluation mode: exactly the stored order of edges(), entity after entity
    edges, seg = adj.sample(ents, excl, degree, None)
    expect = [adj.edges(int(e), degree, int(x), None) for e, x in zip(ents, excl)]
    np.testing.assert_array_equal(edges, np.concatenate([*expect, np.zeros(0, np.int64)]))
    np.testing.assert_array_equal(seg, np.repeat(np.arange(len(ents)), [len(x) for x in expect]))
    # training mode: per entity, min(degree, allowed) distinct allowed edges, round-robin
    edges, seg = adj.sample(ents, excl, degree, np.random.default_rng(seed))
    assert (np.diff(seg) >= 0).all()
    for k, (e, x) in enumerate(zip(ents, excl)):
        got = edges[seg == k]
        lo, hi = adj.indptr[e], adj.indptr[e + 1]
        allowed = [i for i in range(lo, hi) if adj.tail[i] != x]
        assert len(set(got.tolist())) == len(got) == min(degree, len(allowed))
        assert set(got.tolist()) <= set(allowed)
        picked = Counter(adj.rel[got].tolist())
        available = Counter(adj.rel[allowed].tolist())
        most = max(picked.values(), default=0)
        for r, c in available.items():
            if picked[r] < c:  # a relation not exhausted is at most one round behind
                assert picked[r] >= most - 1


def test_training_draws_vary_and_repeat(rec):
    b = rec.builder
    hist = np.arange(5)
    runs = [b.build("u", hist, np.random.default_rng(s)).input_ids.tolist() for s in range(10)]
    assert len({tuple(r) for r in runs}) > 1
    again = b.build("u", hist, np.random.default_rng(3)).input_ids.tolist()
    assert again == runs[3]


# ----------------------------------------------------------------------------- buckets


def test_bucketed_order_is_a_permutation_with_full_batches_and_less_padding(rec):
    train = rec.split.train
    lengths = estimate_lengths(rec.builder, train, rec.user_text)
    assert lengths.max() <= rec.config.max_length and lengths.min() > 0
    order = np.random.default_rng(0).permutation(len(train))
    for bs in (1, 7, 32):
        got = bucketed_order(order, lengths, bs, seed=0, epoch=1, window=4)
        assert sorted(got.tolist()) == sorted(order.tolist())
        np.testing.assert_array_equal(got, bucketed_order(order, lengths, bs, 0, 1, 4))
        assert padding_share(lengths, got, bs) <= padding_share(lengths, order, bs) + 1e-9
    other = bucketed_order(order, lengths, 7, seed=0, epoch=2, window=4)
    assert not np.array_equal(other, bucketed_order(order, lengths, 7, 0, 1, 4))
    # the estimate is close to the real evaluation-mode length
    real = np.array([len(rec.prompt(s).input_ids) for s in train[:50]])
    assert np.abs(real - lengths[:50]).max() <= 0.25 * rec.config.max_length


# ----------------------------------------------------------------------------- beam search


def test_batched_beam_search_equals_one_user_at_a_time(rec):
    speed.spread_scores(rec, 30.0)
    samples = rec.split.test[:12]
    users = [s.user for s in samples]
    hist = [s.history for s in samples]
    seen = [rec.seen_items(s) for s in samples]
    ref = speed.reference_rank(
        rec.model,
        rec.builder,
        rec.trie,
        [rec.user_text(u) for u in users],
        hist,
        seen,
        10,
        torch.device("cpu"),
    )
    for bs in (5, 12):
        ours = rec.rank(users, hist, seen, beams=10, batch_size=bs)
        np.testing.assert_array_equal(ours.items, ref)
        for row, banned in zip(ours.items, seen):
            assert not set(row.tolist()) & banned


# ----------------------------------------------------------------------------- the benchmark


def test_speed_benchmark_smoke(tmp_path):
    """A reduced run of benchmarks/speed.py: its last line is the JSON summary."""
    cmd = [
        sys.executable,
        str(ROOT_DIR / "benchmarks" / "speed.py"),
        "--quick",
        "--samples=32",
        "--users=4",
        "--full-users=2",
        "--steps=1",
        "--batch-size=2",
        "--length=96",
        "--toy-users=40",
        "--workers=0",
        "--threads=1",
        f"--out={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT_DIR / "src")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["prompt_mask_identical"] and summary["eval_identical_topk"]
    assert summary["prompt_mask_speedup"] > 0 and summary["eval_speedup"] > 0
    assert summary["full_rank_speedup"] > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["full_rank"]["identical_ranks"]
    assert saved["encoder"]["encoder_ms_per_user"] > 0
    assert saved["summary"] == summary
    assert (tmp_path / "results.md").read_text().startswith("# Speed")


def test_precision_benchmark_smoke(tmp_path):
    """A reduced run of benchmarks/precision.py on toy: every variant timed, and bf16 autocast
    gives the fp32 loss on the first batch from the same weights to about 1e-2."""
    spec = importlib.util.spec_from_file_location(
        "precision", ROOT_DIR / "benchmarks" / "precision.py"
    )
    precision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(precision)
    args = ["--dataset=toy", "--steps=2", "--block=1", "--length=64", "--batch-size=8"]
    assert precision.main([*args, f"--out={tmp_path}"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res["seconds_per_step"]) == {"fp32 nn.Dropout", "fp32", "bf16"}
    assert all(v > 0 for v in res["seconds_per_step"].values())
    first = res["first_batch_loss"]
    assert abs(first["bf16"] - first["fp32"]) < 0.05 and first["fp32"] > 1.0
