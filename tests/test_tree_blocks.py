"""Tree-block attention computes exactly the tree-masked attention, group by group."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kp4sr import toy, tree_blocks
from kp4sr.data import Sample
from kp4sr.model import additive_mask, encode
from kp4sr.prompts import PromptConfig
from kp4sr.recommender import KP4SR, Config
from kp4sr.tree_mask import PAD_NODE, encoder_mask

H, D = 3, 8


@pytest.fixture(scope="module")
def rec() -> KP4SR:
    ds = toy.generate(seed=1, n_users=60, n_items=40)
    return KP4SR.create(Config(max_length=512, beams=10, dropout=0.0), dataset=ds)


def toeplitz_bias(length: int, gen: torch.Generator) -> torch.Tensor:
    """A [1, H, L, L] bias that, like T5's, depends only on key - query position."""
    table = torch.randn(H, 2 * length - 1, generator=gen)
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None] + length - 1
    return table[:, rel].unsqueeze(0)


def dense(q, k, v, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The plain reference: the whole [L, L] square under the tree mask, [B, L, H, d]."""
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=additive_mask(mask, q.dtype) + bias
    )
    return out.transpose(1, 2)


def check(node: torch.Tensor, parents: torch.Tensor, ratio: float, seed: int) -> None:
    b, length = node.shape
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, H, length, D, generator=gen, dtype=torch.float64) for _ in "qkv")
    bias = toeplitz_bias(length, gen).double()
    blocks = tree_blocks.plan(node, parents, ratio)
    ours = tree_blocks.attention(q, k, v, blocks, tree_blocks.masks(blocks, bias), None)
    ref = dense(q, k, v, encoder_mask(node, parents), bias)
    real = node != PAD_NODE
    torch.testing.assert_close(ours[real], ref[real])
    assert not ours[~real].any()  # padding rows: zero, never NaN
    # every real token's row is computed in exactly one place
    spare = b * length
    written = torch.cat([bk.targets.reshape(-1) for bk in blocks.buckets])
    written = written[written != spare]
    assert written.numel() == len(set(written.tolist())) == int(real.sum())
    assert set(written.tolist()) == set(torch.nonzero(real.reshape(-1)).reshape(-1).tolist())


SAMPLES = settings(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(SAMPLES, max_examples=150)
@given(
    samples=st.lists(
        st.tuples(
            st.lists(st.integers(0, 39), min_size=1, max_size=6),  # history
            st.integers(0, 59),  # user
            st.one_of(st.none(), st.integers(0, 2**31)),  # rng seed; None = evaluation
        ),
        min_size=1,
        max_size=4,
    ),
    hop=st.integers(0, 3),
    degree=st.integers(0, 8),
    max_length=st.sampled_from([24, 64, 200, 512]),
    ratio=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
)
def test_equals_the_dense_tree_mask_on_built_prompts(rec, samples, hop, degree, max_length, ratio):
    builder = rec.new_builder(PromptConfig(hop, degree, max_length, True))
    chosen = [Sample(u, np.asarray(h, dtype=np.int64), 0, len(h)) for h, u, _ in samples]
    rngs = [None if seed is None else np.random.default_rng(seed) for _, _, seed in samples]
    batch = builder.build_batch(
        [rec.user_text(s.user) for s in chosen], [s.history for s in chosen], rngs
    )
    check(batch.node_of_token, batch.parents, ratio, seed=len(samples) * 7 + hop)


def test_equals_the_dense_tree_mask_on_random_trees():
    """Trees of any depth and shape, tokens of a node scattered anywhere in the sequence."""
    rng = np.random.default_rng(0)
    for case in range(60):
        node, parents = random_tree(rng)
        check(node, parents, ratio=float(rng.choice([0.0, 0.75, 1.0])), seed=case)


def test_buckets_hold_groups_of_similar_size(rec):
    samples = rec.split.test[:8]
    batch = rec.builder.build_batch(
        [rec.user_text(s.user) for s in samples], [s.history for s in samples]
    )
    node = batch.node_of_token
    spare = node.numel()  # the spare row marks padding
    blocks = tree_blocks.plan(node, batch.parents, ratio=0.9)
    *knowledge, mpp = blocks.buckets
    assert len(knowledge) > 1
    for bk in knowledge:
        sizes = (bk.targets != spare).sum(1)
        assert sizes.max() == bk.queries.shape[1]
        assert (sizes >= 0.9 * sizes.max()).all()
    # the last bucket: one row per sample, the MPP's own tokens (root and item IDs), whose keys
    # are the MPP and the 1-hop prompts
    assert mpp.queries.shape[0] == len(samples)
    rows = mpp.targets[mpp.targets != spare]
    parents = torch.gather(batch.parents, 1, node.clamp(min=0)).reshape(-1)
    assert set(parents[rows].tolist()) <= {-1, 0}
    in_knowledge = sum(int((bk.targets != spare).sum()) for bk in knowledge)
    assert in_knowledge > 10 * len(rows)
    # far fewer query-key pairs than the dense square
    pairs = sum(bk.lookup.numel() for bk in blocks.buckets)
    assert pairs < 0.3 * node.numel() * node.shape[1]


@pytest.mark.parametrize("tree", [True, False])
def test_encoder_with_and_without_blocks(rec, tree):
    """The model's encoder under the real T5 position bias: blocks == the dense mask."""
    samples = rec.split.test[:6]
    batch = rec.builder.build_batch(
        [rec.user_text(s.user) for s in samples], [s.history for s in samples]
    )
    model = rec.model.eval()
    with torch.no_grad():
        a = encode(model, batch, tree, blocks=True).last_hidden_state
        b = encode(model, batch, tree, blocks=False).last_hidden_state
        default = encode(model, batch, tree).last_hidden_state  # CPU, no gradients: blocks
    real = batch.node_of_token >= 0
    torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=1e-5)
    assert torch.equal(default, a)


def test_blocks_need_our_attention(rec):
    import copy

    model = copy.deepcopy(rec.model)
    model.set_attn_implementation("sdpa")
    samples = rec.split.test[:2]
    batch = rec.builder.build_batch(
        [rec.user_text(s.user) for s in samples], [s.history for s in samples]
    )
    with torch.no_grad(), pytest.raises(ValueError, match="kp4sr_sdpa"):
        encode(model, batch, True, blocks=True)
    with torch.no_grad():  # by default it simply runs without them
        encode(model, batch, True)


def test_training_gradients_with_and_without_blocks(rec):
    """Training (the CPU default) gets the same loss and gradients, position bias included."""
    from kp4sr.model import padding_mask

    samples = rec.split.test[:4]
    batch = rec.builder.build_batch(
        [rec.user_text(s.user) for s in samples],
        [s.history for s in samples],
        targets=[rec.target_tokens(s.target) for s in samples],
    )
    model = rec.model.train()  # dropout 0.0 in this fixture: both runs are deterministic
    grads = []
    for blocks in (True, False):
        model.zero_grad(set_to_none=True)
        enc = encode(model, batch, True, blocks=blocks)
        out = model(encoder_outputs=enc, attention_mask=padding_mask(batch), labels=batch.labels)
        out.loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        grads[-1]["loss"] = out.loss.detach()
    model.zero_grad(set_to_none=True)
    model.eval()
    assert grads[0].keys() == grads[1].keys()
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_attention_dropout_applies_in_blocks():
    gen = torch.Generator().manual_seed(0)
    node = torch.tensor([[0, 1, 0, 2, 2, 3, 3, 0]])
    parents = torch.tensor([[-1, 0, 1, 1]])
    q, k, v = (torch.randn(1, H, 8, D, generator=gen) for _ in "qkv")
    blocks = tree_blocks.plan(node, parents)
    masks = tree_blocks.masks(blocks, toeplitz_bias(8, gen))
    plain = tree_blocks.attention(q, k, v, blocks, masks, None)
    torch.manual_seed(0)
    dropped = tree_blocks.attention(q, k, v, blocks, masks, None, dropout=0.5)
    assert torch.isfinite(dropped).all() and not torch.allclose(plain, dropped)


@pytest.mark.parametrize("mode, used", [("auto", True), ("on", True), ("off", False)])
def test_tree_blocks_option(mode, used, monkeypatch):
    """Config.tree_blocks (--tree-blocks) decides for training and ranking; auto on a CPU."""
    calls = []
    plan = tree_blocks.plan
    monkeypatch.setattr(tree_blocks, "plan", lambda *a, **k: calls.append(1) or plan(*a, **k))
    ds = toy.generate(seed=1, n_users=20, n_items=30)
    rec = KP4SR.create(Config(max_length=64, beams=5, tree_blocks=mode), dataset=ds)
    assert rec.model.config.kp4sr_tree_blocks == mode
    samples = rec.split.test[:3]
    rec.rank([s.user for s in samples], [s.history for s in samples])
    assert bool(calls) is used


def test_tree_blocks_option_is_checked():
    from kp4sr.errors import ConfigError

    ds = toy.generate(seed=1, n_users=20, n_items=30)
    with pytest.raises(ConfigError, match="--tree-blocks is 'sometimes'"):
        KP4SR.create(Config(max_length=64, tree_blocks="sometimes"), dataset=ds)
