"""Tree-block attention: the knowledge tree mask's attention without computing what it hides.

Under the tree mask (:mod:`kp4sr.tree_mask`) a knowledge prompt's token sees only tokens of the
same history item's subtree (its parent, siblings and children) and, for a 1-hop prompt, that
item's ID tokens. So the knowledge text splits into independent *groups*, one per history item:

    queries of group g = the tokens of every knowledge prompt below item g
    keys of group g    = item g's ID tokens + those same tokens

The MPP's own tokens (the root's and the items' IDs) form one more group per sample, whose keys
are the MPP and the 1-hop prompts (an item's ID sees its facts, not theirs). Computing each
group's small rectangle instead of the whole L x L square does about a quarter of the work at 512
tokens and five history items, with the same numbers (the tree mask, still applied inside each
group, zeroes the rest anyway). Every real token is a query of exactly one group.

Groups are sorted by size and cut into buckets of similar sizes, each padded to its largest
group and run as one SDPA call: the padding is small and the calls few. A :class:`TreeBlocks`
plan (index arrays only) is made once per batch; the float masks (the tree rule within each
group, plus T5's relative position bias) once per forward; every layer then only gathers its
queries, keys and values by index. Padded query rows repeat their group's first query, padded
key columns are masked, so no row is ever fully masked.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from kp4sr.tree_mask import PAD_NODE, PAD_PARENT, ROOT

# A group joins a bucket while it has at least this share of the bucket's largest group's
# tokens (so a bucket wastes at most 1 - RATIO**2 of its query-key pairs on padding).
RATIO = 0.9


@dataclass(frozen=True)
class Bucket:
    """Groups of similar size, padded to the largest: flat token indices into [B * L]."""

    queries: torch.Tensor  # [G, Q] (padding repeats the group's first query)
    targets: torch.Tensor  # [G, Q] where each output row goes (padding: the spare row B * L)
    keys: torch.Tensor  # [G, K]
    lookup: torch.Tensor  # [G, Q, K] where each query-key pair's mask value is (see masks)


@dataclass(frozen=True)
class TreeBlocks:
    """Where every real token's attention is computed: in exactly one bucket."""

    buckets: list[Bucket]

    def to(self, device: torch.device | str) -> TreeBlocks:
        """The plan (made on the CPU) where the model runs."""
        return TreeBlocks(
            [
                Bucket(*(getattr(b, f.name).to(device, non_blocking=True) for f in fields(b)))
                for b in self.buckets
            ],
        )


def plan(node_of_token: torch.Tensor, parents: torch.Tensor, ratio: float = RATIO) -> TreeBlocks:
    """The buckets of a batch (CPU tensors [B, L] and [B, n_nodes], as :class:`Batch`): the
    knowledge groups', then one with the MPP groups."""
    n, par = node_of_token.numpy(), parents.numpy()
    b, length = n.shape
    tok_parent = np.where(n == PAD_NODE, PAD_PARENT, np.take_along_axis(par, np.maximum(n, 0), 1))
    knowledge = tok_parent > ROOT  # below an item (the root's parent is -1, padding's -3)
    flat = np.arange(b * length).reshape(b, length)
    spare = b * length  # the output row that padding rows are written to
    buckets = _knowledge_buckets(n, par, tok_parent, knowledge, flat, ratio, spare)
    buckets += _mpp_bucket(n, par, tok_parent, knowledge, flat, spare)
    lookup = _Tables.of(n, par)
    return TreeBlocks(
        buckets=[Bucket(q, t, k, lookup(q, k, valid)) for q, t, k, valid in buckets],
    )


def _knowledge_buckets(
    n: np.ndarray,
    par: np.ndarray,
    tok_parent: np.ndarray,
    knowledge: np.ndarray,
    flat: np.ndarray,
    ratio: float,
    spare: int,
) -> list[tuple[torch.Tensor, ...]]:
    """One group per history item: its knowledge tokens as queries; its ID tokens and those
    same tokens as keys. Groups sorted by size, cut where they shrink below ``ratio``."""
    b, n_nodes = par.shape
    item_of_node = _item_ancestor(par)  # [B, n_nodes]
    group = np.arange(b)[:, None] * n_nodes + np.take_along_axis(item_of_node, np.maximum(n, 0), 1)
    item_id = tok_parent == ROOT
    q_flat, q_start, q_size, q_group = _runs(group[knowledge], flat[knowledge])
    i_flat, i_start, i_size, i_group = _runs(group[item_id], flat[item_id])
    id_start = id_size = np.zeros_like(q_group)
    if len(i_group):  # each group's item ID tokens (none if the item has no tokens)
        at = np.minimum(np.searchsorted(i_group, q_group), len(i_group) - 1)
        found = i_group[at] == q_group
        id_start, id_size = np.where(found, i_start[at], 0), np.where(found, i_size[at], 0)
    buckets = []
    order = np.argsort(-q_size, kind="stable")
    lo = 0
    while lo < len(order):
        largest = q_size[order[lo]]
        hi = lo + int(np.sum(q_size[order[lo:]] >= ratio * largest))
        g = order[lo:hi]
        buckets.append(
            _bucket(q_flat, q_start[g], q_size[g], i_flat, id_start[g], id_size[g], spare)
        )
        lo = hi
    return buckets


def _mpp_bucket(
    n: np.ndarray,
    par: np.ndarray,
    tok_parent: np.ndarray,
    knowledge: np.ndarray,
    flat: np.ndarray,
    spare: int,
) -> list[tuple[torch.Tensor, ...]]:
    """One group per sample: the MPP's own tokens (the root's and the items' IDs) as queries;
    the MPP and the 1-hop prompts (the IDs' children) as keys, all that those tokens see."""
    mpp = (n != PAD_NODE) & ~knowledge
    if not mpp.any():  # (a made-up tree may have no MPP token at all)
        return []
    one_hop = knowledge & (np.take_along_axis(par, np.maximum(tok_parent, 0), 1) == ROOT)
    near = (mpp | one_hop) & mpp.any(1, keepdims=True)
    sample = np.broadcast_to(np.arange(n.shape[0])[:, None], n.shape)
    m_flat, m_start, m_size, m_sample = _runs(sample[mpp], flat[mpp])
    k_flat, k_start, k_size, k_sample = _runs(sample[near], flat[near])
    assert np.array_equal(m_sample, k_sample)
    return [_bucket(m_flat, m_start, m_size, k_flat, k_start, k_size, spare, queries_too=False)]


def _item_ancestor(par: np.ndarray) -> np.ndarray:
    """[B, n_nodes]: each node's ancestor that is a child of the root (itself for an item)."""
    anc = np.broadcast_to(np.arange(par.shape[1]), par.shape).copy()
    for _ in range(par.shape[1]):  # climbs one level per pass; a tree is at most n_nodes deep
        up = np.take_along_axis(par, np.maximum(anc, 0), 1)
        climb = (anc > ROOT) & (up > ROOT)
        if not climb.any():
            break
        anc = np.where(climb, up, anc)
    return anc


def _runs(keys: np.ndarray, flat: np.ndarray) -> tuple[np.ndarray, ...]:
    """Tokens sorted by group (stable, so in prompt order within one): the sorted flat indices
    and each group's start, size and key."""
    order = np.argsort(keys, kind="stable")
    keys, flat = keys[order], flat[order]
    uniq, start, size = np.unique(keys, return_index=True, return_counts=True)
    return flat, start, size, uniq


def _bucket(
    q_flat: np.ndarray,
    q_start: np.ndarray,
    q_size: np.ndarray,
    k_flat: np.ndarray,
    k_start: np.ndarray,
    k_size: np.ndarray,
    spare: int,
    queries_too: bool = True,
) -> tuple[torch.Tensor, ...]:
    """Index arrays of one bucket: queries and output rows [G, Q], padded; keys [G, K]: each
    group's run of ``k_flat``, then (``queries_too``) its queries again; key validity [G, K]."""
    width = int(q_size.max())
    q_off = np.arange(width)[None, :]
    real = q_off < q_size[:, None]
    queries = q_flat[q_start[:, None] + np.where(real, q_off, 0)]
    first, second = k_size[:, None], q_size[:, None] * queries_too
    k_off = np.arange(int((first + second).max()))[None, :]
    in_first, in_second = k_off < first, (k_off >= first) & (k_off < first + second)
    from_q = q_flat[q_start[:, None] + np.where(in_second, k_off - first, 0)]
    from_k = k_flat[k_start[:, None] + np.where(in_first, k_off, 0)] if len(k_flat) else from_q
    keys = np.where(in_first, from_k, np.where(in_second, from_q, queries[:, :1]))
    return (
        torch.from_numpy(queries),
        torch.from_numpy(np.where(real, queries, spare)),
        torch.from_numpy(keys),
        torch.from_numpy(in_first | in_second),
    )


def masks(blocks: TreeBlocks, position_bias: torch.Tensor) -> list[torch.Tensor]:
    """Float masks, once per forward: [G, H, Q, K] per bucket.

    One lookup per bucket into a [H, 2L] table: T5's relative position bias for key - query =
    -(L - 1) .. L - 1 (it depends on nothing else; read from the first column and row of
    ``position_bias`` [1 or B, H, L, L]), then the hidden value where the tree forbids."""
    bias = position_bias[0]
    hidden = bias.new_full((bias.shape[0], 1), torch.finfo(bias.dtype).min)
    table = torch.cat([bias[:, 1:, 0].flip(1), bias[:, 0, :], hidden], 1)  # [H, 2L]
    return [
        table.index_select(1, bk.lookup.view(-1)).view(-1, *bk.lookup.shape).transpose(0, 1)
        for bk in blocks.buckets
    ]


def _node_visibility(par: np.ndarray) -> np.ndarray:
    """[B, N + 1, N + 1] bool: the tree rule of :func:`kp4sr.tree_mask.tree_visibility` between
    nodes (the last one stands for padding, which sees and is seen by nothing real)."""
    b = par.shape[0]
    node_par = np.concatenate([par, np.full((b, 1), PAD_PARENT, dtype=par.dtype)], 1)
    node_id = np.append(np.arange(par.shape[1]), PAD_NODE)
    p_a, p_b = node_par[:, :, None], node_par[:, None, :]
    return (p_a == p_b) | (p_b == node_id[:, None]) | (node_id[None, :] == p_a)


@dataclass(frozen=True)
class _Tables:
    """What a query-key pair's mask value is looked up from (flat over the batch's tokens)."""

    hidden: torch.Tensor  # [B * (N + 1) * (N + 1)] True where a node may not see a node
    row: torch.Tensor  # [B * L] start of the token's node row in ``hidden``
    col: torch.Tensor  # [B * L] the token's node column
    length: int

    @classmethod
    def of(cls, n: np.ndarray, par: np.ndarray) -> _Tables:
        """The tables of a batch: node ids [B, L], node parents [B, N]."""
        b, length = n.shape
        seen = _node_visibility(par)  # [B, N + 1, N + 1]
        width = seen.shape[1]
        col = np.where(n == PAD_NODE, width - 1, n).astype(np.int32)  # [B, L]
        row = (col + (np.arange(b, dtype=np.int32) * width)[:, None]) * width
        return cls(
            torch.from_numpy(~seen.reshape(-1)),
            torch.from_numpy(row.reshape(-1)),
            torch.from_numpy(col.reshape(-1)),
            length,
        )

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[G, Q, K] index into :func:`masks`' table: key - query + L - 1 where query token
        ``q`` may attend to key token ``k``, 2L - 1 (the hidden value) where not."""
        pair = self.row[q][:, :, None] + self.col[k][:, None, :]
        hidden = self.hidden.index_select(0, pair.view(-1)).view(pair.shape)
        if key_valid is not None:
            hidden |= ~key_valid[:, None, :]
        length = self.length
        rel = (k % length + (length - 1)).int()[:, None, :] - (q % length).int()[:, :, None]
        return rel.masked_fill_(hidden, 2 * length - 1)


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    blocks: TreeBlocks,
    block_masks: list[torch.Tensor],
    scaling: float | None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Encoder self-attention [B, H, L, d] -> [B, L, H, d], bucket by bucket.

    Rows of padding tokens come out zero (no real token attends to them)."""
    b, h, length, d = query.shape
    q, k, v = (x.transpose(1, 2).reshape(b * length, h, d) for x in (query, key, value))
    out = query.new_zeros(b * length + 1, h, d)  # + the spare row padding rows are written to

    for bk, mask in zip(blocks.buckets, block_masks):
        o = torch.nn.functional.scaled_dot_product_attention(
            _gather(q, bk.queries),
            _gather(k, bk.keys),
            _gather(v, bk.keys),
            attn_mask=mask,
            dropout_p=dropout,
            scale=scaling,
        )
        out.index_copy_(0, bk.targets.reshape(-1), o.transpose(1, 2).reshape(-1, h, d))
    return out[:-1].view(b, length, h, d)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` [G, n] of flat [B * L, H, d] as SDPA's [G, H, n, d]."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:]).transpose(1, 2)
