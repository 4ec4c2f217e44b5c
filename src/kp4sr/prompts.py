"""Masked personalized prompts (MPP), knowledge prompts (KP) and the fused prompt with its tree.

A sample becomes token ids plus, per token, the id of the knowledge-tree node it belongs to, and
per node its parent (see :mod:`kp4sr.tree_mask` for the tree and the mask built from them).

Knowledge expansion from each history item (most recent item first, breadth first):
hop 1 takes at most ``degree`` edges of the item's entity, hop 2 at most ``degree`` edges of each
hop-1 tail (never the edge straight back to the head), and so on for ``hop`` hops. Edges are
taken relation by relation in round-robin (one edge of each relation before a second of any), so
that a relation with thousands of edges (actors) does not crowd out one with a single edge
(director). Training shuffles relations and edges with the sample's RNG; evaluation uses the
stored order. The fused prompt is capped at ``max_length`` tokens by dropping whole knowledge
prompts, last in breadth-first order first; the MPP is always kept.

Every sentence is tokenised once and cached (triples, MPP pieces, item IDs), so building a
sample is array concatenation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from kp4sr.data import KnowledgeGraph, item_key
from kp4sr.errors import ConfigError
from kp4sr.templates import HISTORY_SEPARATOR
from kp4sr.tokenization import ItemCodes, mask_token
from kp4sr.tree_mask import ROOT, ROOT_PARENT

_HOLE = "\x00HISTORY\x00"


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are built (the paper's defaults: 2 hops, 8 edges per entity, 512 tokens)."""

    hop: int = 2
    degree: int = 8
    max_length: int = 512
    knowledge: bool = True


@dataclass
class FusedPrompt:
    """Token ids of MPP + knowledge prompts + </s>, and the knowledge tree over them."""

    input_ids: np.ndarray  # int64 [L]
    node_of_token: np.ndarray  # int64 [L]
    parents: np.ndarray  # int64 [n_nodes]; parents[ROOT] == ROOT_PARENT
    spans: np.ndarray  # int64 [n_nodes, 2] start, end token offsets (root: the MPP span)
    items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [K] history
    facts: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # [F, 3] h,r,t

    @property
    def nodes(self) -> list[tuple]:
        """What each node stands for: ("root",), ("item", item), ("fact", head, relation, tail).
        Built on demand (for ``explain``): training never needs it."""
        out: list[tuple] = [("root",)]
        out += [("item", i) for i in self.items.tolist()]
        out += [("fact", *f) for f in self.facts.tolist()]
        return out


class Adjacency:
    """Out-edges of every entity in CSR form, in evaluation order (round-robin over relations)."""

    def __init__(self, kg: KnowledgeGraph):
        n = len(kg.entities)
        h, r, t = kg.heads, kg.rels, kg.tails
        # rank of each edge within its (head, relation) group, in stored order
        order = np.lexsort((np.arange(len(h)), r, h))
        hs, rs = h[order], r[order]
        new_group = np.ones(len(order), dtype=bool)
        new_group[1:] = (hs[1:] != hs[:-1]) | (rs[1:] != rs[:-1])
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - group_start
        # evaluation order per head: by rank, then relation, then stored order
        final = np.lexsort((np.arange(len(h)), r, rank, h))
        self.head = h[final]
        self.rel = r[final]
        self.tail = t[final]
        self.triples = np.stack([self.head, self.rel, self.tail], axis=1)  # [E, 3] per edge
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(self.indptr, h + 1, 1)
        self.indptr = np.cumsum(self.indptr)
        # dense rank of each edge's relation among its head's relations (for vectorised draws)
        by_pair = np.lexsort((self.rel, self.head))
        hp, rp = self.head[by_pair], self.rel[by_pair]
        new_pair = np.ones(len(hp), dtype=bool)
        new_pair[1:] = (hp[1:] != hp[:-1]) | (rp[1:] != rp[:-1])
        pair = np.cumsum(new_pair) - 1
        first = np.ones(len(hp), dtype=bool)
        first[1:] = hp[1:] != hp[:-1]
        head_first_pair = np.maximum.accumulate(np.where(first, pair, 0))
        self.local_rel = np.empty(len(hp), dtype=np.int64)
        self.local_rel[by_pair] = pair - head_first_pair
        self.max_rel = int(self.local_rel.max()) + 1 if len(hp) else 1

    def edges(
        self, entity: int, degree: int, exclude: int, rng: np.random.Generator | None
    ) -> np.ndarray:
        """Indices of at most ``degree`` out-edges of ``entity`` whose tail is not ``exclude``."""
        lo, hi = self.indptr[entity], self.indptr[entity + 1]
        idx = np.arange(lo, hi)
        if exclude >= 0:
            idx = idx[self.tail[idx] != exclude]
        if rng is None or len(idx) == 0:
            return idx[:degree]
        if len(idx) <= degree:
            return rng.permutation(idx)
        rels = self.rel[idx]
        order = np.lexsort((rng.random(len(idx)), rels))  # shuffle within each relation
        sr = rels[order]
        new_group = np.ones(len(sr), dtype=bool)
        new_group[1:] = sr[1:] != sr[:-1]
        rank = np.arange(len(sr)) - np.maximum.accumulate(
            np.where(new_group, np.arange(len(sr)), 0)
        )
        uniq, inv = np.unique(sr, return_inverse=True)
        rel_key = rng.permutation(len(uniq))[inv]  # random relation order
        pick = np.lexsort((rel_key, rank))[:degree]
        return idx[order[pick]]

    def sample(
        self,
        entities: np.ndarray,
        exclude: np.ndarray,
        degree: int,
        rng: np.random.Generator | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One hop for a whole frontier at once: at most ``degree`` out-edges of each entity
        (never one whose tail is its ``exclude``), as (edge indices, frontier position of each),
        frontier by frontier position. ``rng=None``: the stored round-robin order (what
        :meth:`edges` gives); with an RNG, a random relation order and a random order within
        each relation, taken round-robin — the same rule as :meth:`edges`, drawn for every
        entity with a handful of array operations instead of a few per entity."""
        empty = np.zeros(0, dtype=np.int64)
        m = len(entities)
        if m == 0 or degree <= 0:
            return empty, empty
        lo = self.indptr[entities]
        cnt = self.indptr[entities + 1] - lo
        total = int(cnt.sum())
        if total == 0:
            return empty, empty
        seg = np.repeat(np.arange(m), cnt)
        edge = np.arange(total) + np.repeat(lo - (np.cumsum(cnt) - cnt), cnt)
        keep = self.tail[edge] != exclude[seg]
        edge, seg = edge[keep], seg[keep]
        if rng is not None and len(edge):
            group = seg * self.max_rel + self.local_rel[edge]
            # shuffled within each relation: one sort on the group plus a random fraction
            # (the same order as sorting by group, then by the random number)
            order = np.argsort(group + rng.random(len(edge)))
            g = group[order]
            new = np.ones(len(g), dtype=bool)
            new[1:] = g[1:] != g[:-1]
            rank = np.arange(len(g)) - np.maximum.accumulate(np.where(new, np.arange(len(g)), 0))
            rel_key = rng.random(m * self.max_rel)  # a random relation order per entity
            # round robin takes at most `degree` edges of a relation: drop the rest before the
            # final sort (a genre can have hundreds of edges, the frontier thousands)
            few = rank < degree
            edge, seg, g, rank = edge[order][few], seg[order][few], g[few], rank[few]
            # by entity, then round (rank), then the random relation order — one sort again
            final = np.argsort((seg * degree + rank) + rel_key[g])
            edge, seg = edge[final], seg[final]
        n_seg = np.bincount(seg, minlength=m)
        rank = np.arange(len(seg)) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
        sel = rank < degree
        return edge[sel], seg[sel]


class PromptBuilder:
    """Builds fused prompts for samples of one dataset; holds the token caches."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        item_texts: list[str],
        codes: ItemCodes,
        items: list[str],
        kg: KnowledgeGraph,
        relation_templates: dict[str, str],
        mpp_templates: list[str],
        config: PromptConfig,
    ):
        if config.hop < 0 or config.degree < 0:
            raise ConfigError("--hop and --degree must be non-negative")
        self.tok = tokenizer
        self.config = config
        self.codes = codes
        self.item_texts = item_texts
        self.mpp_templates = mpp_templates
        self.mask = mask_token(tokenizer)
        self.eos = int(tokenizer.eos_token_id)
        self.kg = kg
        self.adj = Adjacency(kg)
        key_to_item = {item_key(x): i for i, x in enumerate(items)}
        self.entity_item = np.array(
            [key_to_item.get(e, -1) for e in kg.entities], dtype=np.int64
        )  # [n_entities]
        self.item_entity = np.full(len(items), -1, dtype=np.int64)
        linked = np.flatnonzero(self.entity_item >= 0)
        self.item_entity[self.entity_item[linked]] = linked
        self.templates = [relation_templates[r] for r in kg.relations]
        self._sep = self._encode(HISTORY_SEPARATOR)
        self._fact_cache: dict[tuple[int, int, int], np.ndarray] = {}
        self._mpp_cache: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
        # token ids of each adjacency edge's sentence, filled on first use (or by warm())
        self._edge_tokens: list[np.ndarray | None] = [None] * len(self.adj.tail)
        self._edge_len = np.full(len(self.adj.tail), -1, dtype=np.int64)

    # -- text and token caches ------------------------------------------------------------
    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False), dtype=np.int64)

    @property
    def separator(self) -> np.ndarray:
        """Token ids written between two history items."""
        return self._sep

    def entity_text(self, e: int) -> str:
        """An item is written as its ID, any other entity by its name (its key if nameless)."""
        i = self.entity_item[e]
        if i >= 0:
            return self.item_texts[i]
        return self.kg.names[e] or self.kg.entities[e]

    def fact_text(self, h: int, r: int, t: int) -> str:
        return (
            self.templates[r]
            .replace("[X]", self.entity_text(h))
            .replace("[Y]", self.entity_text(t))
        )

    def fact_tokens(self, h: int, r: int, t: int) -> np.ndarray:
        key = (h, r, t)
        ids = self._fact_cache.get(key)
        if ids is None:
            ids = self._fact_cache[key] = self._encode(self.fact_text(h, r, t))
        return ids

    def _edge_lengths(self, edges: np.ndarray) -> np.ndarray:
        """Token counts of these edges' sentences, tokenising (in one batch) those not seen yet:
        each sentence is tokenised once per builder, whatever the number of samples."""
        missing = edges[self._edge_len[edges] < 0]
        if len(missing):
            todo = np.unique(missing).tolist()
            adj = self.adj
            texts = [
                self.fact_text(int(adj.head[e]), int(adj.rel[e]), int(adj.tail[e])) for e in todo
            ]
            encoded = self.tok(texts, add_special_tokens=False)["input_ids"]
            for e, ids in zip(todo, encoded):
                self._edge_tokens[e] = np.asarray(ids, dtype=np.int64)
                self._edge_len[e] = len(ids)
        return self._edge_len[edges]

    def warm(self, chunk: int = 4096) -> None:
        """Tokenise every knowledge sentence now, e.g. before forking DataLoader workers (which
        would otherwise each tokenise what they use, again every epoch)."""
        n = len(self._edge_len)
        for s in range(0, n, chunk):
            self._edge_lengths(np.arange(s, min(n, s + chunk)))

    def mpp_text(self, user_text: str, history: np.ndarray, template: int) -> str:
        hist = HISTORY_SEPARATOR.join(self.item_texts[i] for i in history)
        return self.mpp_templates[template].format(user=user_text, history=hist, mask=self.mask)

    def mpp_pieces(self, template: int, user_text: str) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of the MPP before and after the history (cached per template and user)."""
        key = (template, user_text)
        if key not in self._mpp_cache:
            text = self.mpp_templates[template].format(
                user=user_text, history=_HOLE, mask=self.mask
            )
            if text.count(_HOLE) != 1:
                raise ConfigError(f"MPP template must contain {{history}} once: {text!r}")
            before, after = text.split(_HOLE)
            self._mpp_cache[key] = (self._encode(before), self._encode(after))
        return self._mpp_cache[key]

    _mpp_pieces = mpp_pieces

    # -- one sample -----------------------------------------------------------------------
    def build(
        self,
        user_text: str,
        history: np.ndarray,
        rng: np.random.Generator | None = None,
        template: int | None = None,
    ) -> FusedPrompt:
        """The fused prompt of one sample. ``rng=None`` is evaluation mode (fixed template 0 and
        fixed edge order); with an RNG the template and the edges are drawn at random."""
        if template is None:
            template = 0 if rng is None else int(rng.integers(len(self.mpp_templates)))
        before, after = self.mpp_pieces(template, user_text)
        history = np.asarray(history, dtype=np.int64)
        n_items = len(history)

        # MPP: before, id_1, sep, id_2, ..., id_K, after; item nodes are 1..K
        parts: list[np.ndarray] = [before]
        owners: list[int] = [ROOT]
        for k, item in enumerate(history.tolist()):
            if k:
                parts.append(self._sep)
                owners.append(ROOT)
            parts.append(self.codes.of(item))
            owners.append(k + 1)
        parts.append(after)
        owners.append(ROOT)
        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        mpp_len = int(lengths.sum())
        ends = np.cumsum(lengths)
        owner_arr = np.asarray(owners, dtype=np.int64)
        spans_items = np.stack([ends - lengths, ends], axis=1)[owner_arr > 0]  # [K, 2]

        edges, fact_parent = self._expand(history, mpp_len, rng)
        fact_len = self._edge_len[edges]
        n_facts = len(edges)
        first_fact = 1 + n_items
        eos = np.array([self.eos], dtype=np.int64)
        tok_parts = [*parts, *(self._edge_tokens[e] for e in edges.tolist()), eos]
        input_ids = np.concatenate(tok_parts)
        node_of_token = np.concatenate(
            [
                np.repeat(owner_arr, lengths),
                np.repeat(np.arange(first_fact, first_fact + n_facts), fact_len),
                np.zeros(1, dtype=np.int64),
            ]
        )
        parents = np.concatenate(
            [np.array([ROOT_PARENT], dtype=np.int64), np.zeros(n_items, np.int64), fact_parent]
        )
        spans = np.zeros((len(parents), 2), dtype=np.int64)
        spans[ROOT] = (0, mpp_len)
        spans[1:first_fact] = spans_items
        fact_end = mpp_len + np.cumsum(fact_len)
        spans[first_fact:, 0] = fact_end - fact_len
        spans[first_fact:, 1] = fact_end
        facts = self.adj.triples[edges]
        return FusedPrompt(input_ids, node_of_token, parents, spans, history, facts)

    def _expand(
        self, history: np.ndarray, used: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Knowledge prompts breadth first until the token budget is spent: their adjacency
        edges and parent node ids, in prompt order (one vectorised draw per hop)."""
        cfg = self.config
        none = np.zeros(0, dtype=np.int64)
        if not (cfg.knowledge and cfg.hop > 0 and self.kg.num_triples):
            return none, none
        budget = cfg.max_length - used - 1  # room for </s>
        ks = np.arange(len(history) - 1, -1, -1)  # most recent item first
        ents = self.item_entity[history[ks]] if len(history) else none
        linked = ents >= 0
        ents, nodes = ents[linked], ks[linked] + 1
        excl = np.full(len(ents), -1, dtype=np.int64)
        out_edges: list[np.ndarray] = []
        out_parents: list[np.ndarray] = []
        next_node = 1 + len(history)
        for _ in range(cfg.hop):
            edges, seg = self.adj.sample(ents, excl, cfg.degree, rng)
            if not len(edges):
                break
            csum = np.cumsum(self._edge_lengths(edges))
            take = int(np.searchsorted(csum, budget, side="right"))  # whole facts that fit
            out_edges.append(edges[:take])
            out_parents.append(nodes[seg[:take]])
            if take < len(edges):
                break
            budget -= int(csum[-1])
            ents, excl = self.adj.tail[edges], ents[seg]
            nodes = np.arange(next_node, next_node + take)
            next_node += take
        if not out_edges:
            return none, none
        return np.concatenate(out_edges), np.concatenate(out_parents)

    def node_text(
        self, prompt: FusedPrompt, node: int, user_text: str, history: np.ndarray, template: int = 0
    ) -> str:
        """Human-readable text of a node (for ``explain``)."""
        kind = prompt.nodes[node]
        if kind[0] == "root":
            return self.mpp_text(user_text, history, template)
        if kind[0] == "item":
            return self.item_texts[kind[1]]
        return self.fact_text(*kind[1:])


def collate(prompts: list[FusedPrompt], pad_id: int, targets: list[np.ndarray] | None = None):
    """Pad fused prompts (and target ID tokens) into a :class:`kp4sr.model.Batch`.

    One allocation per array and one slice copy per sample; no loop over tokens.
    """
    import torch

    from kp4sr.model import Batch
    from kp4sr.tree_mask import PAD_NODE

    b = len(prompts)
    lmax = max(len(p.input_ids) for p in prompts)
    nmax = max(len(p.parents) for p in prompts)
    ids = np.full((b, lmax), pad_id, dtype=np.int64)
    node = np.full((b, lmax), PAD_NODE, dtype=np.int64)
    par = np.full((b, nmax), ROOT_PARENT, dtype=np.int64)
    for k, p in enumerate(prompts):
        n = len(p.input_ids)
        ids[k, :n] = p.input_ids
        node[k, :n] = p.node_of_token
        par[k, : len(p.parents)] = p.parents
    labels = None
    if targets is not None:
        tmax = max(len(t) for t in targets)
        lab = np.full((b, tmax), -100, dtype=np.int64)
        for k, t in enumerate(targets):
            lab[k, : len(t)] = t
        labels = torch.from_numpy(lab)
    return Batch(torch.from_numpy(ids), torch.from_numpy(node), torch.from_numpy(par), labels)
