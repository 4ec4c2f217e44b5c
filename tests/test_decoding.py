"""The item trie and constrained beam search, checked against exhaustive teacher-forced scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kp4sr.decoding import ItemTrie, beam_search
from kp4sr.model import Batch, build_model, encode, padding_mask
from kp4sr.prompts import collate

# Digit IDs where some items are prefixes of others ("1" < "12" < "123", "3" < "30" < "301").
TEXTS = [
    "1", "12", "123", "2", "21", "3", "30", "301", "4", "45",
    "5", "6", "7", "8", "9", "10", "11", "13", "14", "15",
]  # fmt: skip
ITEMS = [f"i{k}" for k in range(len(TEXTS))]
IDX = {t: i for i, t in enumerate(TEXTS)}
NAMES = {"genre:comedy": "comedy", "genre:drama": "drama", "director:1": "Kalo Venmira"}


def triples() -> list[tuple[str, str, str]]:
    out = []
    for k, item in enumerate(ITEMS):
        g = "genre:comedy" if k % 2 else "genre:drama"
        out += [(f"item:{item}", "genre", g), (g, "films_of_genre", f"item:{item}")]
        if k % 3 == 0:
            out += [(f"item:{item}", "directed_by", "director:1")]
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is ~20x faster than two contending ones on a loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(world_factory):
    return world_factory(ITEMS, [f"Title {k}" for k in range(len(ITEMS))], TEXTS, triples(), NAMES)


@pytest.fixture(scope="module")
def trie(world) -> ItemTrie:
    return ItemTrie(world.codes, world.tokenizer.eos_token_id)


@pytest.fixture(scope="module")
def model(world):
    torch.manual_seed(0)
    tok = world.tokenizer
    m = build_model("tiny", len(tok), tok.pad_token_id, tok.eos_token_id, dropout=0.0)
    return m.eval()


@pytest.fixture(scope="module")
def batch(world) -> Batch:
    builder = world.builder(degree=3)
    prompts = [
        builder.build("42", np.array([IDX["12"], IDX["5"], IDX["301"]])),
        builder.build("7", np.array([IDX["21"]])),
    ]
    assert len(prompts[0].input_ids) != len(prompts[1].input_ids)  # padding is exercised
    return collate(prompts, world.tokenizer.pad_token_id)


# ----------------------------------------------------------------------------- trie


def tok_ids(world, text: str) -> list[int]:
    return world.encode(text)


def walk(trie: ItemTrie, tokens: list[int]) -> int:
    node = 0
    for t in tokens:
        node = trie.step(node, t)
    return node


def test_trie_keeps_prefix_items(world, trie):
    eos = world.tokenizer.eos_token_id
    assert len(trie.item_of) == len(TEXTS)
    for i, text in enumerate(TEXTS):
        ids = world.codes.of(i).tolist()
        assert ids == tok_ids(world, text)
        assert trie.item_of[walk(trie, ids + [eos])] == i
        np.testing.assert_array_equal(trie.paths[i][-1], walk(trie, ids + [eos]))
    # after "1" "2": both "12" (by </s>) and "123" (by "3") continue
    node_12 = walk(trie, tok_ids(world, "12"))
    assert set(trie.allowed[node_12].tolist()) == {eos, *tok_ids(world, "3")}
    assert node_12 not in trie.item_of
    # a finished item is a leaf
    assert len(trie.allowed[walk(trie, tok_ids(world, "123") + [eos])]) == 0
    assert set(trie.allowed[0].tolist()) == {tok_ids(world, t)[0] for t in TEXTS}
    assert eos not in trie.allowed[0].tolist()
    assert trie.depth == 4
    assert trie.n_below[0] == len(TEXTS)
    assert trie.n_below[node_12] == 2
    with pytest.raises(KeyError):
        trie.step(0, eos)


def test_trie_dead(world, trie):
    eos = world.tokenizer.eos_token_id
    node_12 = walk(trie, tok_ids(world, "12"))
    end_12 = walk(trie, tok_ids(world, "12") + [eos])
    dead = trie.dead({IDX["12"]})
    assert dead[end_12] and not dead[node_12] and not dead[0]
    dead = trie.dead({IDX["12"], IDX["123"]})
    assert dead[node_12] and not dead[walk(trie, tok_ids(world, "1"))]
    assert dead.sum() == 4  # "12", "12</s>", "123", "123</s>"
    assert not trie.dead(set()).any()
    assert trie.dead(set(range(len(TEXTS))))[0]


# ----------------------------------------------------------------------------- beam search


def exact_scores(model, batch: Batch, world, tree_mask: bool) -> np.ndarray:
    """Log-probability of every item's ID tokens + </s> by teacher forcing: [B, n_items]."""
    tok, codes = world.tokenizer, world.codes
    n, t = len(codes.lengths), int(codes.lengths.max()) + 1
    target = np.full((n, t), tok.pad_token_id, dtype=np.int64)
    for i in range(n):
        target[i, : codes.lengths[i]] = codes.of(i)
        target[i, codes.lengths[i]] = tok.eos_token_id
    target = torch.from_numpy(target)
    start = torch.full((n, 1), model.config.decoder_start_token_id, dtype=torch.long)
    dec_in = torch.cat([start, target[:, :-1]], dim=1)
    valid = torch.arange(t)[None, :] <= torch.from_numpy(codes.lengths)[:, None]
    model.eval()
    out = []
    with torch.no_grad():
        enc = encode(model, batch, tree_mask).last_hidden_state
        att = padding_mask(batch)
        for b in range(enc.shape[0]):
            logits = model(
                encoder_outputs=(enc[b : b + 1].expand(n, -1, -1).contiguous(),),
                attention_mask=att[b : b + 1].expand(n, -1),
                decoder_input_ids=dec_in,
                return_dict=True,
            ).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            tok_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            out.append((tok_lp * valid).sum(dim=1).numpy())
    return np.stack(out)


@pytest.fixture(scope="module", params=[True, False], ids=["tree", "full"])
def exact(request, model, batch, world):
    tree = request.param
    scores = exact_scores(model, batch, world, tree)
    gaps = np.diff(np.sort(scores, axis=1), axis=1)
    assert gaps.min() > 1e-4  # the exact order is well defined
    return tree, scores


def search(model, batch, trie, world, beams, tree, banned=None):
    return beam_search(model, batch, trie, beams, tree, world.tokenizer.pad_token_id, banned=banned)


def check_well_formed(ranked, n_items: int, banned=None) -> None:
    for b in range(ranked.items.shape[0]):
        items = ranked.items[b]
        real = items[items >= 0]
        assert ((items >= -1) & (items < n_items)).all()
        assert len(set(real.tolist())) == len(real)  # no duplicates
        assert (items[: len(real)] >= 0).all()  # -1 only pads the end
        sc = ranked.scores[b][: len(real)]
        assert np.isfinite(sc).all()
        assert (np.diff(sc) <= 1e-6).all()  # best first
        if banned is not None:
            assert not set(real.tolist()) & banned[b]


def test_wide_beam_is_exact(model, batch, trie, world, exact):
    tree, scores = exact
    n = len(TEXTS)
    ranked = search(model, batch, trie, world, n, tree)
    assert ranked.items.shape == (2, n)
    check_well_formed(ranked, n)
    for b in range(2):
        np.testing.assert_array_equal(ranked.items[b], np.argsort(-scores[b]))
        np.testing.assert_allclose(ranked.scores[b], np.sort(scores[b])[::-1], atol=1e-4)


def test_wider_than_the_catalogue_pads_with_minus_one(model, batch, trie, world, exact):
    tree, scores = exact
    n = len(TEXTS)
    ranked = search(model, batch, trie, world, n + 3, tree)
    check_well_formed(ranked, n)
    for b in range(2):
        np.testing.assert_array_equal(ranked.items[b, :n], np.argsort(-scores[b]))
        assert ranked.items[b, n:].tolist() == [-1, -1, -1]
        assert not np.isfinite(ranked.scores[b, n:]).any()


def test_banned_items_never_appear(model, batch, trie, world, exact):
    tree, scores = exact
    n = len(TEXTS)
    banned = [{IDX["12"]}, {IDX["1"], IDX["123"], IDX["30"], IDX["7"]}]
    ranked = search(model, batch, trie, world, n, tree, banned=banned)
    check_well_formed(ranked, n, banned)
    for b in range(2):
        order = [int(i) for i in np.argsort(-scores[b]) if i not in banned[b]]
        got = ranked.items[b]
        assert got[: len(order)].tolist() == order
        assert (got[len(order) :] == -1).all()
        np.testing.assert_allclose(ranked.scores[b, : len(order)], scores[b, order], atol=1e-4)
    assert IDX["123"] in ranked.items[0]  # banning "12" keeps its extension "123"


def test_narrow_beam_is_well_formed_and_scored_exactly(model, batch, trie, world, exact):
    tree, scores = exact
    n = len(TEXTS)
    for beams, banned in ((5, None), (3, [{IDX["1"]}, set(range(10))])):
        ranked = search(model, batch, trie, world, beams, tree, banned=banned)
        assert ranked.items.shape == (2, beams)
        check_well_formed(ranked, n, banned)
        for b in range(2):
            items = ranked.items[b]
            assert (items >= 0).all()
            np.testing.assert_allclose(ranked.scores[b], scores[b, items], atol=1e-4)


def test_tree_mask_changes_the_scores(model, batch, world):
    with_pd = exact_scores(model, batch, world, True)
    without = exact_scores(model, batch, world, False)
    assert np.abs(with_pd - without).max() > 1e-4
