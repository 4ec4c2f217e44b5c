"""kp4sr_attention: the same numbers as transformers' own SDPA path, for less work."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_decoding import IDX, TEXTS
from transformers import T5Config
from transformers.models.t5.modeling_t5 import T5Attention, T5DenseActDense

from kp4sr.decoding import ItemTrie, beam_search
from kp4sr.model import (
    ATTENTION,
    FastDropout,
    build_model,
    encode,
    keep_mask,
    loss,
    toeplitz_bias,
    use_torch_dropout,
)
from kp4sr.prompts import collate
from kp4sr.tree_mask import encoder_mask


@pytest.fixture(scope="module")
def world(world_factory):
    from test_decoding import ITEMS, NAMES, triples

    return world_factory(ITEMS, [f"Title {k}" for k in range(len(ITEMS))], TEXTS, triples(), NAMES)


@pytest.fixture(scope="module")
def pair(world):
    """Our model and an identical copy that runs transformers' ``sdpa``."""
    torch.manual_seed(0)
    tok = world.tokenizer
    ours = build_model("tiny", len(tok), tok.pad_token_id, tok.eos_token_id, dropout=0.0)
    theirs = use_torch_dropout(copy.deepcopy(ours))
    theirs.set_attn_implementation("sdpa")
    for module in theirs.modules():  # stock transformers: a ReLU that allocates its output,
        if isinstance(module, T5DenseActDense):  # T5's own position bias
            assert module.act.inplace  # ours works in place
            module.act = torch.nn.ReLU()
        if isinstance(module, T5Attention) and module.has_relative_attention_bias:
            assert "compute_bias" in vars(module)  # ours: toeplitz_bias
            del module.compute_bias
    assert ours.config._attn_implementation == ATTENTION
    assert ours.encoder.config._attn_implementation == ATTENTION
    assert theirs.encoder.config._attn_implementation == "sdpa"
    return ours, theirs


@pytest.fixture(scope="module")
def batch(world):
    builder = world.builder(degree=3)
    histories = [[IDX["12"], IDX["5"], IDX["301"]], [IDX["21"]], [IDX["3"], IDX["4"]]]
    prompts = [builder.build(str(u), np.array(h)) for u, h in enumerate(histories)]
    targets = [world.codes.of(IDX[t]) for t in ("123", "9", "30")]
    targets = [np.append(t, world.tokenizer.eos_token_id) for t in targets]
    batch = collate(prompts, world.tokenizer.pad_token_id, targets)
    assert len({len(p.input_ids) for p in prompts}) > 1  # padding is exercised
    return batch


def assert_same_encoder(a, b, batch, tree: bool) -> None:
    """Two models' encoder outputs agree on every real token (padding rows may differ)."""
    with torch.no_grad():
        x = encode(a.eval(), batch, tree).last_hidden_state
        y = encode(b.eval(), batch, tree).last_hidden_state
    real = batch.node_of_token >= 0
    torch.testing.assert_close(x[real], y[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tree", [True, False])
def test_encoder_matches_transformers_sdpa(pair, batch, tree):
    assert_same_encoder(*pair, batch, tree)


@pytest.mark.parametrize("per_sample", [True, False])
def test_mask_is_built_once_and_shared_by_every_layer(pair, batch, per_sample):
    ours, theirs = pair
    shared: dict = {"per_sample": per_sample}
    mask = encoder_mask(batch.node_of_token, batch.parents)
    with torch.no_grad():
        out = ours.eval().get_encoder()(
            input_ids=batch.input_ids, attention_mask=mask, kp4sr_shared=shared
        )
        ref = encode(theirs.eval(), batch, True)
    real = batch.node_of_token >= 0
    torch.testing.assert_close(out.last_hidden_state[real], ref.last_hidden_state[real])
    built = shared["additive"] + shared["bias"]
    b, length = batch.input_ids.shape
    assert shared["additive"].shape == (b, 1, length, length)
    assert built.shape == (b, ours.config.num_heads, length, length)
    assert ("mask" in shared) is not per_sample  # the batched sum only where it is used
    # where the tree forbids attention, hugely negative; elsewhere the relative position bias
    full = mask.expand_as(built)
    assert (built[~full] < -1e30).all()
    bias = ours.encoder.block[0].layer[0].SelfAttention.compute_bias(length, length)
    torch.testing.assert_close(built[full], bias.expand_as(built)[full])


def test_training_loss_and_gradients_match(pair, batch):
    ours, theirs = pair
    grads = []
    for m in (ours, theirs):
        m.train()
        m.zero_grad(set_to_none=True)
        value = loss(m, batch, True)
        value.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
        grads[-1]["loss"] = value.detach()
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)
    # the relative position bias learns through the shared mask
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in grads[0]


@pytest.mark.parametrize("beams", [3, 20])
def test_beam_search_folded_beams_match_copied_cache(pair, batch, world, beams, monkeypatch):
    import kp4sr.model

    ours, theirs = pair
    calls = []
    folded = kp4sr.model._beams_folded
    monkeypatch.setattr(
        kp4sr.model, "_beams_folded", lambda *a: calls.append(a[1].shape) or folded(*a)
    )
    trie = ItemTrie(world.codes, world.tokenizer.eos_token_id)
    pad = world.tokenizer.pad_token_id
    banned = [{IDX["12"]}, set(), {IDX["1"], IDX["30"]}]
    a = beam_search(ours, batch, trie, beams, True, pad, banned=banned)
    b = beam_search(theirs, batch, trie, beams, True, pad, banned=banned)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert calls and all(shape[0] == 3 * beams for shape in calls)  # ours folded the beams
    c = beam_search(ours, batch, trie, beams, True, pad, constrained=False)
    d = beam_search(theirs, batch, trie, beams, True, pad, constrained=False)
    np.testing.assert_array_equal(c.items, d.items)


def test_folding_refuses_a_self_attention_layer(pair):
    from kp4sr.model import kp4sr_attention

    ours, _ = pair
    layer = ours.encoder.block[0].layer[0].SelfAttention  # has the relative position bias
    q = torch.zeros(4, 4, 1, 32)
    kv = torch.zeros(2, 4, 5, 32)
    with pytest.raises(ValueError, match="fold"):
        kp4sr_attention(layer, q, kv, kv, None)


def test_folded_beams_without_padding(pair, world):
    """Equal-length prompts: the cross-attention mask may be dropped altogether."""
    ours, theirs = pair
    builder = world.builder(degree=3)
    history = np.array([IDX["12"], IDX["5"]])
    batch = builder.build_batch(["1", "1"], [history, history])
    assert (batch.node_of_token >= 0).all()
    trie = ItemTrie(world.codes, world.tokenizer.eos_token_id)
    pad = world.tokenizer.pad_token_id
    a = beam_search(ours, batch, trie, 5, True, pad)
    b = beam_search(theirs, batch, trie, 5, True, pad)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_full_scores_share_each_users_keys_across_items(pair, batch, world, monkeypatch):
    """The exact full ranking: every item scored against one copy of each user's cross-attention
    keys (folded) equals scoring (user, item) pairs one by one as transformers does."""
    import kp4sr.model
    from kp4sr.decoding import full_scores

    ours, theirs = pair
    calls = []
    folded = kp4sr.model._beams_folded
    monkeypatch.setattr(
        kp4sr.model, "_beams_folded", lambda *a: calls.append(a[1].shape) or folded(*a)
    )
    eos = world.tokenizer.eos_token_id
    n = len(world.codes.lengths)
    for chunk in (1000, 7):  # all items at once; chunks of 7 // 3 users = 2 items
        a = full_scores(ours, batch, world.codes, eos, True, item_chunk=chunk)
        assert a.shape == (3, n)
        b = full_scores(theirs, batch, world.codes, eos, True, item_chunk=chunk)
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert calls


def test_eager_attention_gets_an_additive_mask(pair, batch):
    """transformers' eager T5 adds the mask to the scores; encode() hands it 0 / -inf, so the
    tree mask holds there too (booleans would add 0 and 1 and mask nothing)."""
    ours, theirs = pair
    eager = copy.deepcopy(theirs)
    eager.set_attn_implementation("eager")
    assert_same_encoder(eager, theirs, batch, True)


@pytest.mark.parametrize("decoder", [False, True])
def test_toeplitz_bias_equals_t5s_position_bias(decoder):
    cfg = T5Config(d_model=16, num_heads=3, d_kv=4, is_decoder=decoder)
    module = T5Attention(cfg, has_relative_attention_bias=True, layer_idx=0)
    torch.nn.init.normal_(module.relative_attention_bias.weight)
    for q, k, past in [(512, 512, 0), (1, 5, 4), (7, 3, 0), (1, 1, 0), (300, 300, 0), (3, 10, 7)]:
        ours = toeplitz_bias(module, q, k, past_seen_tokens=past)
        assert torch.equal(ours, module.compute_bias(q, k, past_seen_tokens=past)), (q, k, past)


def test_fast_dropout_replaces_every_dropout_layer(pair):
    ours, theirs = pair
    kinds = {type(m) for m in ours.modules()} & {FastDropout, torch.nn.Dropout}
    assert kinds == {FastDropout}
    assert FastDropout not in {type(m) for m in theirs.modules()}


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_fast_dropout_keeps_each_element_with_probability_one_minus_p(p):
    """Every 16-bit lane of the random words is uniform: the kept share is 1 - p in each of the
    four lanes (a generator word with a fixed top bit would keep every element of one lane),
    kept values are scaled by 1 / (1 - p), and the mean is preserved."""
    torch.manual_seed(0)
    x = torch.ones(400_000, 3)
    drop = FastDropout(p).train()
    y = drop(x)
    kept = y != 0
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    lanes = kept.reshape(-1, 4).float().mean(0)  # element k comes from lane k mod 4
    assert torch.allclose(lanes, torch.full_like(lanes, 1 - p), atol=0.005), lanes
    assert abs(float(y.mean()) - 1.0) < 0.01
    assert abs(float(kept[1:].eq(kept[:-1]).float().mean()) - (p**2 + (1 - p) ** 2)) < 0.005


def test_fast_dropout_gradient_reproducibility_and_eval():
    x = torch.randn(64, 33, requires_grad=True)
    drop = FastDropout(0.3).train()
    torch.manual_seed(5)
    y = drop(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.7)  # d/dx of the kept, scaled x
    torch.manual_seed(5)
    assert torch.equal(drop(x.detach()), y.detach())  # the seeded generator decides
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    z = x.detach().clone()
    torch.manual_seed(5)
    assert torch.equal(FastDropout(0.3, inplace=True).train()(z), y.detach()) and torch.equal(
        z, y.detach()
    )
    assert keep_mask(torch.zeros(7, 5, dtype=torch.bfloat16), 0.2).dtype == torch.bfloat16


@pytest.mark.parametrize("tie", [False, True])
def test_tie_embeddings_only_scales_the_output_in_transformers_5(tie):
    """What the README says ``--tie-embeddings`` does: T5's output layer is its input
    embedding either way (transformers 5 forces it), and the option switches the d^-0.5
    scaling of the decoder output. Should a transformers release untie them, this fails and
    the option's documentation must change."""
    from kp4sr.model import build_model

    model = build_model("tiny", 50, 0, 1, 0.0, tie_embeddings=tie).eval()
    assert model.lm_head.weight is model.shared.weight
    assert model.config.scale_decoder_outputs is tie
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        out = model(input_ids=ids, labels=torch.tensor([[9, 1]]), output_hidden_states=True)
    hidden = out.decoder_hidden_states[-1]
    # transformers applies the final norm inside the decoder's last hidden state
    want = hidden * model.config.d_model**-0.5 if tie else hidden
    torch.testing.assert_close(out.logits, want @ model.shared.weight.T)


def test_loss_leaves_excluded_first_tokens_out_of_the_softmax(pair, batch):
    """``Batch.exclude``: nothing excluded is the plain loss; excluded first tokens drop out of
    the first step's softmax only (checked by hand), which can only lower the loss."""
    from dataclasses import replace

    from kp4sr.model import cross_mask

    model = pair[0].eval()
    vocab = model.config.vocab_size
    rows = len(batch.labels)
    with torch.no_grad():
        plain = loss(model, batch, True)
        nothing = replace(batch, exclude=torch.zeros(rows, vocab, dtype=torch.bool))
        torch.testing.assert_close(loss(model, nothing, True), plain)
        exclude = torch.zeros(rows, vocab, dtype=torch.bool)
        exclude[:, 5:40] = True
        exclude[torch.arange(rows), batch.labels[:, 0]] = False  # never the target itself
        got = loss(model, replace(batch, exclude=exclude), True)
        logits = model(
            encoder_outputs=encode(model, batch, True),
            attention_mask=cross_mask(model, batch),
            labels=batch.labels,
        ).logits
        logits[:, 0][exclude] = float("-inf")
        want = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), batch.labels.flatten(), ignore_index=-100
        )
    torch.testing.assert_close(got, want)
    assert got < plain


def test_seen_mask_marks_earlier_items_but_never_the_target():
    from kp4sr.data import seen_mask

    first = np.array([10, 11, 12, 13, 14])  # item i's first ID token is 10 + i
    seen = [np.array([0, 2]), np.array([], dtype=np.int64), np.array([1, 3, 4])]
    mask = seen_mask(seen, np.array([1, 0, 3]), first, 16)  # user 3 had item 3 before
    assert mask.shape == (3, 16)
    assert np.flatnonzero(mask[0]).tolist() == [10, 12]
    assert not mask[1].any()
    assert np.flatnonzero(mask[2]).tolist() == [11, 14]  # 13 is the target: kept learnable
    assert not seen_mask([np.array([], dtype=np.int64)], np.array([0]), first, 16).any()
