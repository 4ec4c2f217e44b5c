"""The knowledge tree mask (prompt denoising): hand-written visibility and a slow reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kp4sr.tree_mask import (
    PAD_NODE,
    PAD_PARENT,
    ROOT_PARENT,
    encoder_mask,
    full_visibility,
    token_parents,
    tree_visibility,
)

# The tree:                                       node ids
#   root (MPP words + final </s>)                   0
#   ├── item 1 (ID tokens inside the MPP)           1
#   │   ├── fact "genre of item 1"                  3
#   │   │   └── 2-hop fact "comedy films include"   6
#   │   └── fact "director of item 1"               4
#   └── item 2                                      2
#       └── fact "genre of item 2"                  5
PARENTS = [ROOT_PARENT, 0, 0, 1, 1, 2, 3]
ROOT, ITEM1, ITEM2, FACT1A, FACT1B, FACT2, HOP2 = range(7)
#   token:   0  1  2  3  4  5  6  7  8  9  10 11 12
NODES = [0, 0, 1, 1, 0, 2, 0, 3, 3, 4, 5, 6, 0]  # MPP: w w [1 1] w [2] w ; facts ; </s>

# Node-level visibility written out by hand: row node sees column node.
#            0  1  2  3  4  5  6
NODE_VIS = [
    [1, 1, 1, 0, 0, 0, 0],  # root: itself and its children (the items)
    [1, 1, 1, 1, 1, 0, 0],  # item 1: root, items (siblings incl. self), its facts
    [1, 1, 1, 0, 0, 1, 0],  # item 2: root, items, its fact
    [0, 1, 0, 1, 1, 0, 1],  # fact 1a: item 1, sibling facts, its 2-hop child
    [0, 1, 0, 1, 1, 0, 0],  # fact 1b: item 1, sibling facts
    [0, 0, 1, 0, 0, 1, 0],  # fact 2: item 2, itself
    [0, 0, 0, 1, 0, 0, 1],  # 2-hop fact: its parent fact 1a, itself
]


def hand_expected(nodes: list[int]) -> np.ndarray:
    vis = np.asarray(NODE_VIS, dtype=bool)
    n = np.asarray(nodes)
    return vis[n[:, None], n[None, :]]


def mask_of(nodes, parents, tree=True) -> np.ndarray:
    m = encoder_mask(
        torch.tensor([nodes], dtype=torch.long), torch.tensor([parents], dtype=torch.long), tree
    )
    return m[0, 0].numpy()


def tokens_of(node: int) -> list[int]:
    return [i for i, n in enumerate(NODES) if n == node]


def block(vis: np.ndarray, a: int, b: int) -> np.ndarray:
    return vis[np.ix_(tokens_of(a), tokens_of(b))]


@pytest.fixture(scope="module")
def vis() -> np.ndarray:
    return mask_of(NODES, PARENTS)


def test_matches_hand_written_table(vis):
    assert vis.shape == (13, 13)
    np.testing.assert_array_equal(vis, hand_expected(NODES))


def test_parent_sibling_child_visibility(vis):
    assert block(vis, FACT1A, ITEM1).all()  # parent
    assert block(vis, ITEM1, FACT1A).all()  # child
    assert block(vis, FACT1A, FACT1B).all()  # sibling
    assert block(vis, FACT1A, FACT1A).all()  # itself
    assert block(vis, ITEM1, ITEM2).all()  # items are siblings under the root
    assert block(vis, HOP2, FACT1A).all() and block(vis, FACT1A, HOP2).all()
    assert block(vis, ITEM1, ROOT).all() and block(vis, ROOT, ITEM2).all()


def test_cross_subtree_isolation(vis):
    for a in (FACT1A, FACT1B, HOP2):
        assert not block(vis, a, FACT2).any()
        assert not block(vis, FACT2, a).any()
        assert not block(vis, a, ITEM2).any()  # facts of item 1 never see item 2
        assert not block(vis, ITEM2, a).any()
    assert not block(vis, FACT2, ITEM1).any()
    # a 2-hop fact sees neither the item (its grandparent) nor its parent's sibling
    assert not block(vis, HOP2, ITEM1).any()
    assert not block(vis, HOP2, FACT1B).any()
    assert not block(vis, ITEM1, HOP2).any()


def test_mpp_words_never_see_knowledge(vis):
    for fact in (FACT1A, FACT1B, FACT2, HOP2):
        assert not block(vis, ROOT, fact).any()
        assert not block(vis, fact, ROOT).any()


def test_root_row(vis):
    root_tokens = tokens_of(ROOT)
    assert root_tokens == [0, 1, 4, 6, 12]  # includes the final </s>
    expected = np.array([n in (ROOT, ITEM1, ITEM2) for n in NODES])
    for i in root_tokens:
        np.testing.assert_array_equal(vis[i], expected)


def test_symmetric(vis):
    np.testing.assert_array_equal(vis, vis.T)


def test_token_parents_gather():
    got = token_parents(torch.tensor(NODES + [PAD_NODE]), torch.tensor(PARENTS))
    assert got.tolist() == [PARENTS[n] for n in NODES] + [PAD_PARENT]


def test_encoder_mask_shape_and_dtype():
    nodes = torch.tensor([NODES, NODES])
    parents = torch.tensor([PARENTS, PARENTS])
    for tree in (True, False):
        m = encoder_mask(nodes, parents, tree=tree)
        assert m.shape == (2, 1, 13, 13)
        assert m.dtype == torch.bool


def test_without_pd_every_real_token_sees_every_real_token():
    m = mask_of(NODES, PARENTS, tree=False)
    assert m.all()


# A second, shorter sample: root, one item with one fact, padded to the first one's size.
SHORT_NODES = [0, 1, 0, 2, 2, 0]
SHORT_PARENTS = [ROOT_PARENT, 0, 1]


def padded_batch():
    length, n_nodes = len(NODES), len(PARENTS)
    short_nodes = SHORT_NODES + [PAD_NODE] * (length - len(SHORT_NODES))
    short_parents = SHORT_PARENTS + [ROOT_PARENT] * (n_nodes - len(SHORT_PARENTS))
    nodes = torch.tensor([NODES, short_nodes])
    parents = torch.tensor([PARENTS, short_parents])
    return nodes, parents


@pytest.mark.parametrize("tree", [True, False])
def test_padding(tree):
    nodes, parents = padded_batch()
    m = encoder_mask(nodes, parents, tree=tree)[:, 0].numpy()
    assert m.shape == (2, 13, 13)
    # the long sample has no padding: unchanged by batching
    np.testing.assert_array_equal(m[0], mask_of(NODES, PARENTS, tree))
    n = len(SHORT_NODES)
    # real rows: the same as the sample alone, and never see padding
    np.testing.assert_array_equal(m[1, :n, :n], mask_of(SHORT_NODES, SHORT_PARENTS, tree))
    assert not m[1, :n, n:].any()
    # padding rows are not empty (a fully masked row gives NaN) and see no real token
    assert m[1, n:].any(axis=1).all()
    assert not m[1, n:, :n].any()


def test_short_sample_hand_values():
    m = mask_of(SHORT_NODES, SHORT_PARENTS)
    # root tokens 0, 2, 5 see the root and the item (1), not the fact (3, 4)
    expected_root = np.array([1, 1, 1, 0, 0, 1], dtype=bool)
    for i in (0, 2, 5):
        np.testing.assert_array_equal(m[i], expected_root)
    np.testing.assert_array_equal(m[1], np.ones(6, dtype=bool))  # item: root, itself, fact
    np.testing.assert_array_equal(m[3], np.array([0, 1, 0, 1, 1, 0], dtype=bool))


# ----------------------------------------------------------------------------- property test


def reference_mask(nodes: list[int], parents: list[int]) -> np.ndarray:
    """By the definition, one token pair at a time."""
    length = len(nodes)
    out = np.zeros((length, length), dtype=bool)
    for i in range(length):
        for j in range(length):
            a, b = nodes[i], nodes[j]
            if a == PAD_NODE or b == PAD_NODE:
                out[i, j] = a == PAD_NODE and b == PAD_NODE
                continue
            siblings = parents[a] == parents[b]  # includes a == b
            out[i, j] = siblings or parents[b] == a or parents[a] == b
    return out


@st.composite
def trees(draw):
    n_nodes = draw(st.integers(1, 8))
    parents = [ROOT_PARENT] + [draw(st.integers(0, k - 1)) for k in range(1, n_nodes)]
    length = draw(st.integers(1, 14))
    nodes = draw(st.lists(st.integers(0, n_nodes - 1), min_size=length, max_size=length))
    n_pad = draw(st.integers(0, 3))
    return nodes + [PAD_NODE] * n_pad, parents


@settings(max_examples=150, deadline=None)
@given(trees())
def test_vectorised_mask_matches_reference(tree):
    nodes, parents = tree
    got = mask_of(nodes, parents)
    np.testing.assert_array_equal(got, reference_mask(nodes, parents))
    np.testing.assert_array_equal(got, got.T)
    # same thing through the lower-level functions, unbatched
    n = torch.tensor(nodes)
    vis = tree_visibility(n, token_parents(n, torch.tensor(parents)))
    np.testing.assert_array_equal(vis.numpy(), got)
    # without PD: all real tokens see each other
    real = np.array([x != PAD_NODE for x in nodes])
    full = full_visibility(n).numpy()
    np.testing.assert_array_equal(full[np.ix_(real, real)], True)
    assert not full[np.ix_(real, ~real)].any()
