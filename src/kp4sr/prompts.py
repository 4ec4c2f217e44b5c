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
    # what each node stands for: ("root",), ("item", item), ("fact", head, relation, tail)
    nodes: list[tuple] = field(default_factory=list)


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
        self.rel = r[final]
        self.tail = t[final]
        self.indptr = np.zeros(n + 1, dtype=np.int64)
        np.add.at(self.indptr, h + 1, 1)
        self.indptr = np.cumsum(self.indptr)

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

    # -- text and token caches ------------------------------------------------------------
    def _encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text, add_special_tokens=False), dtype=np.int64)

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

    def mpp_text(self, user_text: str, history: np.ndarray, template: int) -> str:
        hist = HISTORY_SEPARATOR.join(self.item_texts[i] for i in history)
        return self.mpp_templates[template].format(user=user_text, history=hist, mask=self.mask)

    def _mpp_pieces(self, template: int, user_text: str) -> tuple[np.ndarray, np.ndarray]:
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
        before, after = self._mpp_pieces(template, user_text)

        # MPP: before, id_1, sep, id_2, ..., id_K, after; item nodes are 1..K
        parts: list[np.ndarray] = [before]
        owners: list[int] = [ROOT]
        parents = [ROOT_PARENT]
        nodes: list[tuple] = [("root",)]
        for k, item in enumerate(history):
            if k:
                parts.append(self._sep)
                owners.append(ROOT)
            parts.append(self.codes.of(int(item)))
            owners.append(len(parents))
            parents.append(ROOT)
            nodes.append(("item", int(item)))
        parts.append(after)
        owners.append(ROOT)
        mpp_len = sum(len(p) for p in parts)

        if self.config.knowledge and self.config.hop > 0 and self.kg.num_triples:
            self._expand(history, parts, owners, parents, nodes, mpp_len, rng)
        parts.append(np.array([self.eos], dtype=np.int64))
        owners.append(ROOT)

        lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        input_ids = np.concatenate(parts)
        node_of_token = np.repeat(np.asarray(owners, dtype=np.int64), lengths)
        ends = np.cumsum(lengths)
        spans = np.zeros((len(parents), 2), dtype=np.int64)
        own = np.asarray(owners[1:-1], dtype=np.int64)  # first part and EOS are root's
        spans[own, 0] = (ends - lengths)[1:-1]
        spans[own, 1] = ends[1:-1]
        spans[ROOT] = (0, mpp_len)
        return FusedPrompt(
            input_ids, node_of_token, np.asarray(parents, dtype=np.int64), spans, nodes
        )

    def _expand(self, history, parts, owners, parents, nodes, used, rng) -> None:
        """Append knowledge prompts breadth first until the token budget is spent."""
        cfg = self.config
        budget = cfg.max_length - used - 1  # room for </s>
        # frontier: (node id, entity to expand, entity to exclude as tail)
        frontier = []
        for k in range(len(history) - 1, -1, -1):  # most recent item first
            e = int(self.item_entity[int(history[k])])
            if e >= 0:
                frontier.append((k + 1, e, -1))
        for _ in range(cfg.hop):
            nxt = []
            for node, ent, excl in frontier:
                for edge in self.adj.edges(ent, cfg.degree, excl, rng):
                    r, t = int(self.adj.rel[edge]), int(self.adj.tail[edge])
                    ids = self.fact_tokens(ent, r, t)
                    if len(ids) > budget:
                        return
                    budget -= len(ids)
                    parts.append(ids)
                    owners.append(len(parents))
                    nxt.append((len(parents), t, ent))
                    parents.append(node)
                    nodes.append(("fact", ent, r, t))
            frontier = nxt

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
