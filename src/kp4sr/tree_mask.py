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

On a CPU the encoder applies this same rule without the [B, 1, L, L] mask: attention is computed
only inside the groups of tokens that can see each other (:mod:`kp4sr.tree_blocks`).
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
    """[B, L, L] on a CPU from the node-level rule: the three comparisons on the tree's nodes
    ([n_nodes + 1]^2, the extra node standing for padding), then each sample's mask gathered
    from that small table by the tokens' node ids (columns, then rows). The same rule as
    :func:`tree_visibility`, since it depends on tokens only through their nodes."""
    b, length = node_of_token.shape
    n_nodes = parents.shape[1]
    node_par = np.concatenate(  # [B, N+1]: the padding node's parent is PAD_PARENT
        [parents.numpy(), np.full((b, 1), PAD_PARENT, dtype=np.int64)], 1
    )
    node_id = np.append(np.arange(n_nodes), PAD_NODE)  # [N+1]
    p_a, p_b = node_par[:, :, None], node_par[:, None, :]
    vis = (p_a == p_b) | (p_b == node_id[:, None]) | (node_id[None, :] == p_a)  # [B, N+1, N+1]
    n = node_of_token.numpy()
    row_of_token = np.where(n < 0, n_nodes, n)  # [B, L]
    out = np.empty((b, length, length), dtype=bool)
    for k in range(b):  # a loop over samples, never over tokens
        cols = np.take(vis[k], row_of_token[k], axis=1, mode="clip")  # [N+1, L]
        np.take(cols, row_of_token[k], axis=0, out=out[k], mode="clip")
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
