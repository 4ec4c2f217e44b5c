"""The knowledge tree mask: KP4SR's prompt denoising (PD).

The fused prompt is a tree of token spans (nodes):

    root            the MPP's own words ("User 42 has watched ... <mask> next .") and the final </s>
    ├── item 1      the ID tokens of a history item (a span inside the MPP)
    │   ├── fact    a 1-hop knowledge prompt of item 1 ("The genre of 101 is comedy .")
    │   │   └── fact  a 2-hop prompt expanded from that fact's tail ("comedy films include 7 .")
    │   └── fact
    └── item 2 ...

A token of node ``a`` may attend to a token of node ``b`` iff ``b`` is ``a``'s parent, a sibling
(same parent, ``a`` itself included) or a child. The root has no siblings: it sees itself and its
children. Hence MPP words never see knowledge text, an item's ID tokens see their own facts, and
facts of different items never see each other. Without PD every token sees every token.

With per-token node ids ``N`` and per-token parent ids ``P = parents[N]`` (one gather), the rule is
three broadcast comparisons, for any batch shape and with no loop over tokens:

    visible[i, j] = P[i] == P[j]  (siblings)  |  P[j] == N[i]  (j is a child of i)
                  | N[j] == P[i]  (j is the parent of i)

The root's parent is ``ROOT_PARENT`` (-1), which no other token has. Padding tokens get node
``PAD_NODE`` and parent ``PAD_PARENT``: they match no real token, so real tokens never see
padding, and padding rows see only padding (a fully masked row would give NaNs in softmax).
"""

from __future__ import annotations

import numpy as np
import torch

ROOT = 0
ROOT_PARENT = -1
PAD_NODE = -2
PAD_PARENT = -3


def token_parents(node_of_token: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """Parent node id of every token: one gather ``parents[node_of_token]``.

    ``node_of_token``: [..., L] node ids (``PAD_NODE`` on padding); ``parents``: [..., n_nodes]
    parent id of each node (``ROOT_PARENT`` for the root). Returns [..., L].
    """
    safe = node_of_token.clamp(min=0)
    p = torch.gather(parents, -1, safe)
    return torch.where(node_of_token == PAD_NODE, torch.full_like(p, PAD_PARENT), p)


def tree_visibility(node_of_token: torch.Tensor, parent_of_token: torch.Tensor) -> torch.Tensor:
    """Boolean [..., L, L]: may token i (row) attend to token j (column) under the tree mask."""
    n_i, n_j = node_of_token.unsqueeze(-1), node_of_token.unsqueeze(-2)  # [..., L, 1], [..., 1, L]
    p_i, p_j = parent_of_token.unsqueeze(-1), parent_of_token.unsqueeze(-2)
    return (p_i == p_j) | (p_j == n_i) | (n_j == p_i)


def _tree_visibility_rows(node_of_token: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """[B, L, L] on a CPU, row by row: every token of a node has the same row, so each sample's
    mask is its per-node rows ([n_nodes + 1, L], the same three comparisons) gathered by the
    tokens' node ids — one row copy per token instead of three L x L comparisons."""
    b, length = node_of_token.shape
    n_all = node_of_token.numpy()
    p_all = token_parents(node_of_token, parents).numpy()
    par_all = parents.numpy()
    n_nodes = par_all.shape[1]
    node_id = np.append(np.arange(n_nodes), PAD_NODE)  # the extra row: padding's
    out = np.empty((b, length, length), dtype=bool)
    for k in range(b):  # a loop over samples, never over tokens
        n_j, p_j = n_all[k][None, :], p_all[k][None, :]
        node_par = np.append(par_all[k], PAD_PARENT)[:, None]
        rows = (node_par == p_j) | (p_j == node_id[:, None]) | (n_j == node_par)
        np.take(rows, np.where(n_all[k] < 0, n_nodes, n_all[k]), axis=0, out=out[k])
    return torch.from_numpy(out)


def full_visibility(node_of_token: torch.Tensor) -> torch.Tensor:
    """Boolean [..., L, L] without PD: every real token sees every real token (padding aside)."""
    real = node_of_token != PAD_NODE
    vis = real.unsqueeze(-1) & real.unsqueeze(-2)
    return vis | (~real.unsqueeze(-1) & ~real.unsqueeze(-2))


def encoder_mask(
    node_of_token: torch.Tensor, parents: torch.Tensor, tree: bool = True
) -> torch.Tensor:
    """The 4-D boolean mask [B, 1, L, L] that T5's encoder takes (True = may attend)."""
    if tree and node_of_token.device.type == "cpu" and node_of_token.dim() == 2:
        vis = _tree_visibility_rows(node_of_token, parents)
    elif tree:
        vis = tree_visibility(node_of_token, token_parents(node_of_token, parents))
    else:
        vis = full_visibility(node_of_token)
    return vis.unsqueeze(1)
