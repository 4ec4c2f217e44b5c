"""Recommendation by beam search constrained to valid item IDs.

A prefix trie over every item's ID tokens followed by </s> allows, at each decoding step, only
tokens that continue some item's ID; a beam that emits </s> is exactly one item. Beams are
distinct token sequences, so a top-k has no invalid and no duplicate items. Beams are scored by
the sum of token log-probabilities (the item's probability under the model, no length penalty),
and search runs for many users at once: the encoder runs once per user, the decoder on
[users x beams] sequences per step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from kp4sr.model import ATTENTION, Batch, cross_mask, encode
from kp4sr.tokenization import ItemCodes


class ItemTrie:
    """Prefix trie over item ID token sequences (each ended by </s>)."""

    def __init__(self, codes: ItemCodes, eos_id: int):
        children: list[dict[int, int]] = [{}]
        item_of: dict[int, int] = {}  # terminal node (after </s>) -> item
        for item in range(len(codes.lengths)):
            node = 0
            for tok in [*codes.of(item).tolist(), eos_id]:
                nxt = children[node].get(tok)
                if nxt is None:
                    nxt = len(children)
                    children[node][tok] = nxt
                    children.append({})
                node = nxt
            item_of[node] = item
        self.children = children
        self.item_of = item_of
        self.eos_id = eos_id
        self.allowed = [np.fromiter(c.keys(), dtype=np.int64, count=len(c)) for c in children]
        self.child = [np.fromiter(c.values(), dtype=np.int64, count=len(c)) for c in children]
        self.depth = int(codes.lengths.max()) + 1
        self.paths = [self._path(codes, i) for i in range(len(codes.lengths))]
        self.n_below = np.zeros(len(children), dtype=np.int64)  # items in each node's subtree
        for path in self.paths:
            self.n_below[path] += 1

    def _path(self, codes: ItemCodes, item: int) -> np.ndarray:
        node, path = 0, [0]
        for tok in [*codes.of(item).tolist(), self.eos_id]:
            node = self.children[node][tok]
            path.append(node)
        return np.asarray(path, dtype=np.int64)

    def dead(self, banned: set[int]) -> np.ndarray:
        """Bool per node: every item below it is banned, so no beam should enter it."""
        count = np.zeros(len(self.children), dtype=np.int64)
        for item in banned:
            count[self.paths[item]] += 1
        return (count == self.n_below) & (self.n_below > 0)

    def step(self, node: int, token: int) -> int:
        return self.children[node][token]


INVALID = -2  # a generated ID that is no item (unconstrained beam search only)
MISSING = -1  # fewer candidates than beams


@dataclass
class Ranked:
    """Top items per user, best first, with their log-probabilities; ``MISSING`` (-1) pads short
    lists and ``INVALID`` (-2) marks a generated ID that is no item (unconstrained search)."""

    items: np.ndarray  # int64 [B, K]
    scores: np.ndarray  # float32 [B, K]


@torch.no_grad()
def beam_search(
    model: T5ForConditionalGeneration,
    batch: Batch,
    trie: ItemTrie,
    beams: int,
    tree_mask: bool,
    pad_id: int,
    banned: list[set[int]] | None = None,
    constrained: bool = True,
) -> Ranked:
    """Constrained beam search for a batch of users; ``banned[b]`` items are never returned.

    ``constrained=False`` is plain beam search over the whole vocabulary, as in the paper's code:
    a generated sequence that is no item's ID is returned as item -1 (``INVALID``), so callers
    can report how many generated IDs are invalid instead of dropping them silently.
    """
    model.eval()
    enc = encode(model, batch, tree_mask).last_hidden_state  # [B, L, d]
    b, k = enc.shape[0], beams
    device = enc.device
    att = cross_mask(model, batch)  # [B, L]
    # First step once per user (every beam starts the same); its cache holds the decoder's
    # cross-attention keys and values, computed once per user instead of for every beam at every
    # step. Under kp4sr_attention the beams then share that one copy (folded into the query
    # length); under any other attention it is copied to the user's beams.
    first = model(
        encoder_outputs=(enc,),
        attention_mask=att,
        decoder_input_ids=torch.full((b, 1), model.config.decoder_start_token_id, device=device),
        use_cache=True,
        return_dict=True,
    )
    cache = getattr(first, "cache", None) or first.past_key_values
    if model.config._attn_implementation == ATTENTION:
        cache.self_attention_cache.batch_repeat_interleave(k)
    else:
        cache.batch_repeat_interleave(k)
    cache_arg = _cache_keyword(model)
    att_k = att.repeat_interleave(k, dim=0)  # [B*K, L]
    # the decoder reads only the shape of the encoder states once the cache holds keys and values
    enc_shape = enc.new_zeros(b * k, enc.shape[1], 1).expand(-1, -1, enc.shape[2])
    dec = torch.full((b * k, 1), model.config.decoder_start_token_id, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    nodes = np.zeros(b * k, dtype=np.int64)
    done = np.zeros(b * k, dtype=bool)
    dead = None if banned is None else [trie.dead(s) for s in banned]
    logits = first.logits[:, -1, :].repeat_interleave(k, dim=0)
    for step in range(trie.depth):
        if step:
            logits = model(
                encoder_outputs=(enc_shape,),
                attention_mask=att_k,
                decoder_input_ids=dec[:, -1:],
                use_cache=True,
                **{cache_arg: cache},
                return_dict=True,
            ).logits[:, -1, :]
        logp = torch.log_softmax(logits.float(), dim=-1)  # [B*K, V]
        vocab = logp.shape[-1]
        if constrained:
            masked = torch.full_like(logp, float("-inf"))
            rows, cols = _allowed(trie, nodes, done, k, dead)
            r = torch.from_numpy(rows).to(device)
            c = torch.from_numpy(cols).to(device)
            masked[r, c] = logp[r, c]
        else:
            masked = logp.clone()
        fin = torch.from_numpy(done).to(device)
        masked[fin] = float("-inf")
        masked[fin, pad_id] = 0.0  # a finished beam carries its score unchanged
        cand = (scores.reshape(b * k, 1) + masked).reshape(b, k * vocab)
        scores, flat = cand.topk(k, dim=-1)  # [B, K]
        src = (flat // vocab + torch.arange(b, device=device).unsqueeze(1) * k).reshape(-1)
        tok = (flat % vocab).reshape(-1)
        dec = torch.cat([dec[src], tok.unsqueeze(1)], dim=1)
        cache.self_attention_cache.reorder_cache(src)  # beams stay within their user's rows
        src_np, tok_np = src.cpu().numpy(), tok.cpu().numpy()
        prev_done = done[src_np]
        nodes = nodes[src_np].copy()
        live = ~prev_done & np.isfinite(scores.reshape(-1).cpu().numpy())
        for i in np.flatnonzero(live):
            node = int(nodes[i])  # -1: the prefix already left the trie (unconstrained only)
            nodes[i] = trie.children[node].get(int(tok_np[i]), -1) if node >= 0 else -1
        done = prev_done | (tok_np == trie.eos_id) | ~live
        if done.all():
            break
    items = np.array([trie.item_of.get(int(n), INVALID) for n in nodes], dtype=np.int64)
    sc = scores.reshape(-1).cpu().numpy().astype(np.float32)
    items[~np.isfinite(sc)] = MISSING
    return Ranked(items.reshape(b, k), sc.reshape(b, k))


@torch.no_grad()
def full_scores(
    model: T5ForConditionalGeneration,
    batch: Batch,
    codes: ItemCodes,
    eos_id: int,
    tree_mask: bool,
    item_chunk: int = 1024,
) -> np.ndarray:
    """Exact log-probability of every item for every user: [B, n_items].

    Teacher forcing of each item's ID tokens + </s> under the decoder, the encoder run once per
    user and reused for every chunk of items (under ``kp4sr_sdpa`` so are the decoder's
    cross-attention keys and values). The same scores beam search sums, so its top-k equals
    this ranking's top-k whenever the beam is wide enough.
    """
    model.eval()
    enc = encode(model, batch, tree_mask).last_hidden_state  # [B, L, d]
    att = cross_mask(model, batch)  # [B, L]
    n, width = codes.codes.shape
    labels = np.full((n, width + 1), -100, dtype=np.int64)
    cols = np.arange(width + 1)[None, :]
    labels[:, :width] = np.where(cols[:, :width] < codes.lengths[:, None], codes.codes, -100)
    labels[np.arange(n), codes.lengths] = eos_id
    start = model.config.decoder_start_token_id
    pad = model.config.pad_token_id
    dec_in = np.concatenate(
        [np.full((n, 1), start), np.where(labels[:, :-1] < 0, pad, labels[:, :-1])], 1
    )
    labels_t = torch.from_numpy(labels).to(enc.device)
    dec_t = torch.from_numpy(dec_in).to(enc.device)
    if model.config._attn_implementation == ATTENTION:
        return _full_scores_folded(model, enc, att, labels_t, dec_t, item_chunk)
    out = np.empty((enc.shape[0], n), dtype=np.float32)
    for u in range(enc.shape[0]):
        for s in range(0, n, item_chunk):
            lab, dec = labels_t[s : s + item_chunk], dec_t[s : s + item_chunk]
            c = lab.shape[0]
            logits = model(
                encoder_outputs=(enc[u : u + 1].expand(c, -1, -1),),
                attention_mask=att[u : u + 1].expand(c, -1),
                decoder_input_ids=dec,
                return_dict=True,
            ).logits  # [c, T, V]
            out[u, s : s + c] = _sequence_logp(logits, lab)
    return out


def _sequence_logp(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Log-probability of each row's label tokens (-100: none) under logits [N, T, V]: [N]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [N, T]
    return (tok * (labels >= 0)).sum(-1).cpu().numpy()


def _full_scores_folded(
    model: T5ForConditionalGeneration,
    enc: torch.Tensor,
    att: torch.Tensor,
    labels: torch.Tensor,
    dec_in: torch.Tensor,
    item_chunk: int,
) -> np.ndarray:
    """:func:`full_scores` with each user's cross-attention keys and values projected once and
    shared by all the items scored against it (folded into the query length by
    :func:`kp4sr.model.kp4sr_attention`), all users of the batch in one decoder call per chunk
    of items, instead of projecting the encoder output again for every (user, item) pair."""
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    b, length, _ = enc.shape
    cross = DynamicCache(config=model.config)
    for i, block in enumerate(model.get_decoder().block):
        attn = block.layer[1].EncDecAttention
        shape = (b, length, attn.n_heads, attn.key_value_proj_dim)
        cross.update(
            attn.k(enc).view(shape).transpose(1, 2), attn.v(enc).view(shape).transpose(1, 2), i
        )
    n = labels.shape[0]
    out = np.empty((b, n), dtype=np.float32)
    per_user = max(1, item_chunk // b)
    for s in range(0, n, per_user):
        lab, dec = labels[s : s + per_user], dec_in[s : s + per_user]
        c = lab.shape[0]
        cache = EncoderDecoderCache(DynamicCache(config=model.config), cross)
        logits = model(
            # the decoder reads only the shape of the encoder states: the cache holds the rest
            encoder_outputs=(enc.new_zeros(b * c, length, 1).expand(-1, -1, enc.shape[2]),),
            attention_mask=att.repeat_interleave(c, dim=0),
            decoder_input_ids=dec.repeat(b, 1),  # user by user, the chunk's items
            use_cache=True,
            **{_cache_keyword(model): cache},
            return_dict=True,
        ).logits  # [b*c, T, V]
        out[:, s : s + c] = _sequence_logp(logits, lab.repeat(b, 1)).reshape(b, c)
    return out


def _cache_keyword(model: T5ForConditionalGeneration) -> str:
    """``cache`` in recent transformers, ``past_key_values`` before (deprecated since)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _allowed(
    trie: ItemTrie,
    nodes: np.ndarray,
    done: np.ndarray,
    k: int,
    dead: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(row, token) pairs that live beams may emit next, never into a subtree of banned items."""
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for i in np.flatnonzero(~done):
        allowed = trie.allowed[nodes[i]]
        if dead is not None:
            allowed = allowed[~dead[i // k][trie.child[nodes[i]]]]
        rows.append(np.full(len(allowed), i, dtype=np.int64))
        cols.append(allowed)
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)


@torch.no_grad()
def first_token_logp(
    model: T5ForConditionalGeneration, batch: Batch, first_tokens: np.ndarray, tree_mask: bool
) -> np.ndarray:
    """[B, n_items]: the log-probability of each item's first ID token at the decoder's first
    step, one decoder step per user. With single-token item IDs this is the item's probability
    short of its </s> step, which a trained model puts near 1 for every item."""
    model.eval()
    enc = encode(model, batch, tree_mask).last_hidden_state
    start = torch.full((enc.shape[0], 1), model.config.decoder_start_token_id, device=enc.device)
    logits = model(
        encoder_outputs=(enc,),
        attention_mask=cross_mask(model, batch),
        decoder_input_ids=start,
        return_dict=True,
    ).logits[:, -1, :]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp[:, torch.from_numpy(first_tokens).to(logp.device)].cpu().numpy()
