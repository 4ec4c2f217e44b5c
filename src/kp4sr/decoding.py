"""Recommendation by beam search constrained to valid item IDs.

A prefix trie over every item's ID tokens followed by </s> allows, at each decoding step, only
tokens that continue some item's ID; a beam that emits </s> is exactly one item. Beams are
distinct token sequences, so a top-k has no invalid and no duplicate items. Beams are scored by
the sum of token log-probabilities (the item's probability under the model, no length penalty),
and search runs for many users at once: the encoder runs once per user, the decoder on
[users x beams] sequences per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import T5ForConditionalGeneration

from kp4sr.model import Batch, encode, padding_mask
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


@dataclass
class Ranked:
    """Top items per user, best first, with their log-probabilities; -1 pads short lists."""

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
) -> Ranked:
    """Constrained beam search for a batch of users; ``banned[b]`` items are never returned."""
    model.eval()
    enc = encode(model, batch, tree_mask).last_hidden_state  # [B, L, d]
    b, k = enc.shape[0], beams
    device = enc.device
    enc_k = enc.repeat_interleave(k, dim=0)  # [B*K, L, d]
    att_k = padding_mask(batch).repeat_interleave(k, dim=0)  # [B*K, L]
    dec = torch.full((b * k, 1), model.config.decoder_start_token_id, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    nodes = np.zeros(b * k, dtype=np.int64)
    done = np.zeros(b * k, dtype=bool)
    dead = None if banned is None else [trie.dead(s) for s in banned]
    for _ in range(trie.depth):
        out = model(
            encoder_outputs=(enc_k,), attention_mask=att_k, decoder_input_ids=dec, return_dict=True
        )
        logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # [B*K, V]
        vocab = logp.shape[-1]
        masked = torch.full_like(logp, float("-inf"))
        rows, cols = _allowed(trie, nodes, done, k, dead)
        r = torch.from_numpy(rows).to(device)
        c = torch.from_numpy(cols).to(device)
        masked[r, c] = logp[r, c]
        fin = torch.from_numpy(done).to(device)
        masked[fin, pad_id] = 0.0  # a finished beam carries its score unchanged
        cand = (scores.reshape(b * k, 1) + masked).reshape(b, k * vocab)
        scores, flat = cand.topk(k, dim=-1)  # [B, K]
        src = (flat // vocab + torch.arange(b, device=device).unsqueeze(1) * k).reshape(-1)
        tok = (flat % vocab).reshape(-1)
        dec = torch.cat([dec[src], tok.unsqueeze(1)], dim=1)
        src_np, tok_np = src.cpu().numpy(), tok.cpu().numpy()
        prev_done = done[src_np]
        nodes = nodes[src_np].copy()
        live = ~prev_done & np.isfinite(scores.reshape(-1).cpu().numpy())
        for i in np.flatnonzero(live):
            nodes[i] = trie.step(int(nodes[i]), int(tok_np[i]))
        done = prev_done | (tok_np == trie.eos_id) | ~live
        if done.all():
            break
    items = np.array([trie.item_of.get(int(n), -1) for n in nodes], dtype=np.int64)
    sc = scores.reshape(-1).cpu().numpy().astype(np.float32)
    items[~np.isfinite(sc)] = -1
    return Ranked(items.reshape(b, k), sc.reshape(b, k))


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
