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

Every sentence is tokenised once and kept in one flat token store (triples, MPP pieces, item
IDs). :meth:`PromptBuilder.build_batch` (training and evaluation) assembles a whole batch at
once: one vectorised edge draw per hop for every sample's frontier (each sample drawing from its
own RNG, so its prompt does not depend on its batch), a table of token segments, one gather from
the store. :meth:`PromptBuilder.build` gives one sample with its tree spelled out (for
``explain`` and the tests); both give the same tokens and tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from kp4sr.data import KnowledgeGraph, item_key
from kp4sr.errors import ConfigError
from kp4sr.model import Batch
from kp4sr.templates import HISTORY_SEPARATOR
from kp4sr.tokenization import ItemCodes, mask_token
from kp4sr.tree_mask import PAD_NODE, ROOT, ROOT_PARENT

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
        owner = np.zeros(len(entities), dtype=np.int64)
        return self.sample_groups(entities, exclude, owner, degree, None if rng is None else [rng])

    def sample_groups(
        self,
        entities: np.ndarray,
        exclude: np.ndarray,
        owner: np.ndarray,
        degree: int,
        rngs: list[np.random.Generator | None] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sample` for the frontiers of many samples at once (a batch): ``owner[i]`` is
        the sample of frontier entity ``i`` (non-decreasing), ``rngs[g]`` sample ``g``'s RNG.
        Each sample draws from its own RNG exactly what :meth:`sample` would draw for its
        frontier alone (edges, then relation keys, and nothing when it has no edge), so a
        sample's prompt does not depend on the batch it is built in."""
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
        if rngs is not None and len(edge):
            drawn = np.array([r is not None for r in rngs])[owner[seg]]
            if drawn.all():
                edge, seg = self._shuffled(edge, seg, owner, degree, rngs)
            elif drawn.any():  # samples without an RNG keep the stored order
                e, g = self._shuffled(edge[drawn], seg[drawn], owner, degree, rngs)
                edge, seg = np.concatenate([e, edge[~drawn]]), np.concatenate([g, seg[~drawn]])
                by_entity = np.argsort(seg, kind="stable")
                edge, seg = edge[by_entity], seg[by_entity]
        n_seg = np.bincount(seg, minlength=m)
        rank = np.arange(len(seg)) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
        sel = rank < degree
        return edge[sel], seg[sel]

    def _shuffled(
        self,
        edge: np.ndarray,
        seg: np.ndarray,
        owner: np.ndarray,
        degree: int,
        rngs: list[np.random.Generator | None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate edges (by frontier position) in a random round-robin order: a random order
        within each relation, a random relation order per entity; at most ``degree`` kept of
        each relation (round robin never takes more)."""
        noise, rel_key = self._draws(owner, owner[seg], rngs)
        group = seg * self.max_rel + self.local_rel[edge]
        # shuffled within each relation: one sort on the group plus a random fraction
        # (the same order as sorting by group, then by the random number)
        order = np.argsort(group + noise)
        g = group[order]
        new = np.ones(len(g), dtype=bool)
        new[1:] = g[1:] != g[:-1]
        rank = np.arange(len(g)) - np.maximum.accumulate(np.where(new, np.arange(len(g)), 0))
        # drop edges round robin never reaches before the final sort (a genre can have
        # hundreds of edges, the frontier thousands)
        few = rank < degree
        edge, seg, g, rank = edge[order][few], seg[order][few], g[few], rank[few]
        # by entity, then round (rank), then the random relation order — one sort again
        final = np.argsort((seg * degree + rank) + rel_key[g])
        return edge[final], seg[final]

    def _draws(
        self,
        owner: np.ndarray,
        edge_owner: np.ndarray,
        rngs: list[np.random.Generator | None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's random numbers, in :meth:`sample`'s order: one per candidate edge,
        then one per (frontier entity, relation slot); samples without edges draw nothing."""
        n = len(rngs)
        n_edges = np.bincount(edge_owner, minlength=n)
        n_front = np.bincount(owner, minlength=n) * self.max_rel
        noise = np.empty(len(edge_owner))
        rel_key = np.zeros(len(owner) * self.max_rel)
        e_at, f_at = np.cumsum(n_edges) - n_edges, np.cumsum(n_front) - n_front
        for g in np.flatnonzero(n_edges).tolist():
            rng = rngs[g]
            assert rng is not None  # only samples with an RNG have candidate edges here
            noise[e_at[g] : e_at[g] + n_edges[g]] = rng.random(n_edges[g])
            rel_key[f_at[g] : f_at[g] + n_front[g]] = rng.random(n_front[g])
        return noise, rel_key


class TokenStore:
    """Token id sequences in one growing flat array: a batch's tokens are then one gather
    (:meth:`gather`) instead of a Python list of small arrays per sample."""

    def __init__(self, capacity: int = 1 << 16):
        self.flat = np.empty(capacity, dtype=np.int64)
        self.size = 0

    def add(self, seqs: list) -> np.ndarray:
        """Append sequences; returns their start offsets."""
        lens = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
        starts = self.size + np.cumsum(lens) - lens
        end = self.size + int(lens.sum())
        if end > len(self.flat):  # amortised growth: double, or more if one add needs it
            grown = np.empty(max(end, 2 * len(self.flat)), dtype=np.int64)
            grown[: self.size] = self.flat[: self.size]
            self.flat = grown
        if end > self.size:
            self.flat[self.size : end] = np.concatenate([np.asarray(x, np.int64) for x in seqs])
        self.size = end
        return starts

    def gather(self, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The sequences at these offsets, concatenated in order."""
        shift = starts - (np.cumsum(lengths) - lengths)
        return self.flat[np.repeat(shift, lengths) + np.arange(int(lengths.sum()))]


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
        self._mpp_cache: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
        # every cached token sequence lives in one store: item IDs, the separator, </s>, the
        # MPP pieces (on first use) and each adjacency edge's sentence (on first use or warm())
        self._store = TokenStore()
        self._item_len = codes.lengths.astype(np.int64)
        self._item_start = self._store.add([codes.of(i) for i in range(len(codes.lengths))])
        self._sep_start = int(self._store.add([self._sep])[0])
        self._eos_start = int(self._store.add([[self.eos]])[0])
        self._mpp_at: dict[tuple[int, str], tuple[int, int, int, int]] = {}
        self._edge_start = np.full(len(self.adj.tail), -1, dtype=np.int64)
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
            self._edge_start[todo] = self._store.add(encoded)
            self._edge_len[todo] = [len(ids) for ids in encoded]
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

    def _mpp_offsets(self, template: int, user_text: str) -> tuple[int, int, int, int]:
        """Where the MPP pieces lie in the token store: (before start, length, after start,
        length), stored on first use."""
        key = (template, user_text)
        at = self._mpp_at.get(key)
        if at is None:
            before, after = self.mpp_pieces(template, user_text)
            b, a = self._store.add([before, after]).tolist()
            at = self._mpp_at[key] = (b, len(before), a, len(after))
        return at

    # -- one sample -----------------------------------------------------------------------
    def build(
        self,
        user_text: str,
        history: np.ndarray,
        rng: np.random.Generator | None = None,
        template: int | None = None,
    ) -> FusedPrompt:
        """The fused prompt of one sample, its tree spelled out (spans, items, facts). ``rng=None``
        is evaluation mode (fixed template 0 and fixed edge order); with an RNG the template and
        the edges are drawn at random. The same assembly as :meth:`build_batch`, for one."""
        history = np.asarray(history, dtype=np.int64)
        batch, edges = self._assemble(
            [user_text],
            [history],
            None if rng is None else [rng],
            None,
            None if template is None else [template],
        )
        input_ids = batch.input_ids[0].numpy()
        node_of_token = batch.node_of_token[0].numpy()
        parents = batch.parents[0].numpy()
        # each node's token span; the root's is the MPP (its tokens up to the first fact)
        at = np.arange(len(node_of_token))
        spans = np.zeros((len(parents), 2), dtype=np.int64)
        spans[:, 0] = len(node_of_token)
        np.minimum.at(spans[:, 0], node_of_token, at)
        np.maximum.at(spans[:, 1], node_of_token, at + 1)
        spans[ROOT] = (0, int((node_of_token <= len(history)).sum()) - 1)  # less the final </s>
        return FusedPrompt(
            input_ids, node_of_token, parents, spans, history, self.adj.triples[edges]
        )

    def _expand(
        self,
        histories: list[np.ndarray],
        budgets: np.ndarray,
        rngs: list[np.random.Generator | None] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Knowledge prompts of many samples, breadth first until each sample's token budget
        is spent: their adjacency edges, parent node ids and samples, sample by sample in
        prompt order. One vectorised draw per hop for the whole batch; a sample whose next
        fact does not fit keeps the facts before it and expands no further."""
        cfg = self.config
        none = np.zeros(0, dtype=np.int64)
        if not (cfg.knowledge and cfg.hop > 0 and self.kg.num_triples) or not histories:
            return none, none, none
        n = len(histories)
        lens = np.fromiter((len(h) for h in histories), dtype=np.int64, count=n)
        hist = np.concatenate(histories).astype(np.int64, copy=False)
        owner = np.repeat(np.arange(n), lens)
        k = np.arange(len(hist)) - np.repeat(np.cumsum(lens) - lens, lens)  # position in history
        recent = np.lexsort((-k, owner))  # each sample's items, most recent first
        ents, owner, nodes = self.item_entity[hist[recent]], owner[recent], k[recent] + 1
        linked = ents >= 0
        ents, owner, nodes = ents[linked], owner[linked], nodes[linked]
        excl = np.full(len(ents), -1, dtype=np.int64)
        budget = np.asarray(budgets, dtype=np.int64).copy()
        next_node = lens + 1  # each sample's next fact node id
        active = np.ones(n, dtype=bool)
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for _ in range(cfg.hop):
            live = active[owner]
            ents, excl, owner, nodes = ents[live], excl[live], owner[live], nodes[live]
            edges, seg = self.adj.sample_groups(ents, excl, owner, cfg.degree, rngs)
            if not len(edges):
                break
            of = owner[seg]
            length = self._edge_lengths(edges)
            cnt = np.bincount(of, minlength=n)
            csum = np.cumsum(length)
            first = np.minimum(np.cumsum(cnt) - cnt, len(edges) - 1)  # (unused where cnt is 0)
            before = np.repeat((csum - length)[first], cnt)  # tokens of earlier samples' facts
            fits = (csum - before) <= budget[of]  # whole facts that fit: a prefix per sample
            taken = np.bincount(of[fits], minlength=n)
            active &= (taken == cnt) & (cnt > 0)
            budget -= np.bincount(of, weights=length, minlength=n).astype(np.int64)
            edges, seg, of = edges[fits], seg[fits], of[fits]
            out.append((edges, nodes[seg], of))
            rank = np.arange(len(edges)) - np.repeat(np.cumsum(taken) - taken, taken)
            ents, excl, owner, nodes = self.adj.tail[edges], ents[seg], of, next_node[of] + rank
            next_node = next_node + taken
        if not out:
            return none, none, none
        edges, parents, of = (np.concatenate(x) for x in zip(*out))
        order = np.argsort(of, kind="stable")  # sample by sample, hop by hop
        return edges[order], parents[order], of[order]

    # -- a batch of samples ---------------------------------------------------------------
    def build_batch(
        self,
        user_texts: list[str],
        histories: list[np.ndarray],
        rngs: list[np.random.Generator | None] | None = None,
        targets: list[np.ndarray] | None = None,
    ) -> Batch:
        """The padded batch of these samples' fused prompts (what :func:`collate` makes of
        :meth:`build`'s prompts), assembled for the whole batch at once — one draw per hop, a
        table of token segments, one gather of every token from the store, one scatter into
        the padded arrays."""
        return self._assemble(user_texts, histories, rngs, targets)[0]

    def _assemble(
        self,
        user_texts: list[str],
        histories: list[np.ndarray],
        rngs: list[np.random.Generator | None] | None,
        targets: list[np.ndarray] | None,
        templates: list[int] | None = None,
    ) -> tuple[Batch, np.ndarray]:
        """:meth:`build_batch`, and the adjacency edges of the knowledge prompts (sample by
        sample, in prompt order). ``templates`` fixes the MPP templates instead of drawing them."""
        n = len(histories)
        if rngs is not None and all(r is None for r in rngs):
            rngs = None
        if templates is None:
            n_tpl = len(self.mpp_templates)
            templates = [0 if r is None else int(r.integers(n_tpl)) for r in (rngs or [None] * n)]
        at = np.array(
            [self._mpp_offsets(t, u) for t, u in zip(templates, user_texts)], dtype=np.int64
        ).reshape(n, 4)
        histories = [np.asarray(h, dtype=np.int64) for h in histories]
        n_items = np.fromiter((len(h) for h in histories), dtype=np.int64, count=n)
        hist = np.concatenate(histories) if n else np.zeros(0, np.int64)
        # the MPP as segments: before, id_1, sep, id_2, ..., sep, id_K, after (slot j)
        n_seg = np.where(n_items > 0, 2 * n_items + 1, 2)
        mpp_sample = np.repeat(np.arange(n), n_seg)
        j = np.arange(len(mpp_sample)) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)
        first, last = j == 0, j == (n_seg - 1)[mpp_sample]
        item = ~first & ~last & (j % 2 == 1)
        sep = ~first & ~last & (j % 2 == 0)
        k = (j - 1) // 2  # history position of an item slot
        which = hist[(np.cumsum(n_items) - n_items)[mpp_sample[item]] + k[item]]
        start = np.empty(len(j), dtype=np.int64)
        length = np.empty(len(j), dtype=np.int64)
        start[first], length[first] = at[mpp_sample[first], 0], at[mpp_sample[first], 1]
        start[last], length[last] = at[mpp_sample[last], 2], at[mpp_sample[last], 3]
        start[item], length[item] = self._item_start[which], self._item_len[which]
        start[sep], length[sep] = self._sep_start, len(self._sep)
        mpp_node = np.where(item, k + 1, ROOT)
        mpp_len = np.bincount(mpp_sample, weights=length, minlength=n).astype(np.int64)
        edges, fact_parent, fact_sample = self._expand(
            histories, self.config.max_length - mpp_len - 1, rngs
        )
        n_facts = np.bincount(fact_sample, minlength=n)
        fact_rank = np.arange(len(edges)) - np.repeat(np.cumsum(n_facts) - n_facts, n_facts)
        fact_node = n_items[fact_sample] + 1 + fact_rank
        # every segment, sample by sample: the MPP's, the facts', </s>
        seg_sample = np.concatenate([mpp_sample, fact_sample, np.arange(n)])
        order = np.argsort(seg_sample, kind="stable")
        seg_sample = seg_sample[order]
        start = np.concatenate([start, self._edge_start[edges], np.full(n, self._eos_start)])
        length = np.concatenate([length, self._edge_len[edges], np.ones(n, np.int64)])
        node = np.concatenate([mpp_node, fact_node, np.full(n, ROOT)])
        start, length, node = start[order], length[order], node[order]
        flat = self._store.gather(start, length)
        total = np.bincount(seg_sample, weights=length, minlength=n).astype(np.int64)
        row = np.repeat(np.arange(n), total)
        col = np.arange(len(flat)) - np.repeat(np.cumsum(total) - total, total)
        ids = np.full((n, int(total.max())), self.tok.pad_token_id, dtype=np.int64)
        node_of_token = np.full(ids.shape, PAD_NODE, dtype=np.int64)
        ids[row, col] = flat
        node_of_token[row, col] = np.repeat(node, length)
        # parents: the root's is ROOT_PARENT, an item's the root, a fact's from the expansion
        parents = np.full((n, int((1 + n_items + n_facts).max())), ROOT_PARENT, dtype=np.int64)
        item_sample = np.repeat(np.arange(n), n_items)
        item_rank = np.arange(len(item_sample)) - np.repeat(np.cumsum(n_items) - n_items, n_items)
        parents[item_sample, 1 + item_rank] = ROOT
        parents[fact_sample, fact_node] = fact_parent
        return _to_batch(ids, node_of_token, parents, targets), edges

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
    return _to_batch(ids, node, par, targets)


def _to_batch(
    ids: np.ndarray, node: np.ndarray, parents: np.ndarray, targets: list[np.ndarray] | None
) -> Batch:
    """Tensors of padded arrays, and the target ID tokens padded with -100 (ignored)."""
    labels = None
    if targets is not None:
        tmax = max(len(t) for t in targets)
        lab = np.full((len(targets), tmax), -100, dtype=np.int64)
        for k, t in enumerate(targets):
            lab[k, : len(t)] = t
        labels = torch.from_numpy(lab)
    return Batch(torch.from_numpy(ids), torch.from_numpy(node), torch.from_numpy(parents), labels)
