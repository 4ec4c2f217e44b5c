"""Training batches of an epoch, optionally bucketed by prompt length so they carry little padding.

A batch is padded to its longest prompt, and attention costs grow with the square of that length,
so mixing a 100-token prompt with a 512-token one wastes most of the short one's work. Bucketing
takes the epoch's random order in windows of ``window`` batches, sorts each window by estimated
prompt length, cuts it into batches and shuffles the batches (seeded by ``(seed, epoch)``): every
sample is still seen once per epoch, in an order that stays random across windows, and a run is
reproducible whatever the number of DataLoader workers.

Lengths are estimated without building the training prompts (whose knowledge edges are drawn at
random): the MPP's length plus each history item's knowledge length in evaluation mode, capped
at ``max_length``. The estimate only decides which samples share a batch; the batch is padded
to the real prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kp4sr.data import Sample
from kp4sr.prompts import PromptBuilder


def item_knowledge_lengths(builder: PromptBuilder, chunk: int = 256) -> np.ndarray:
    """Tokens of each item's knowledge prompts (evaluation mode, the item alone): [n_items]."""
    n = len(builder.item_entity)
    out = np.zeros(n, dtype=np.int64)
    cfg = builder.config
    if not (cfg.knowledge and cfg.hop > 0 and builder.kg.num_triples):
        return out
    linked = np.flatnonzero(builder.item_entity >= 0)
    for s in range(0, len(linked), chunk):
        items = linked[s : s + chunk]
        batch = builder.build_batch(
            [""] * len(items), [items[k : k + 1] for k in range(len(items))]
        )
        # nodes 0 and 1 are the root and the item: every other token is knowledge
        out[items] = (batch.node_of_token > 1).sum(1).numpy()
    return out


def estimate_lengths(
    builder: PromptBuilder, samples: list[Sample], user_text: Callable[[int | None], str]
) -> np.ndarray:
    """Estimated prompt length of each sample (tokens, at most ``max_length``): [n_samples]."""
    know = item_knowledge_lengths(builder)
    code_len = builder.codes.lengths
    sep = len(builder.separator)
    out = np.empty(len(samples), dtype=np.int64)
    for k, s in enumerate(samples):
        before, after = builder.mpp_pieces(0, user_text(s.user))
        h = s.history
        mpp = len(before) + len(after) + int(code_len[h].sum()) + sep * max(len(h) - 1, 0)
        out[k] = mpp + int(know[h].sum()) + 1
    return np.minimum(out, builder.config.max_length)


def bucketed_order(
    order: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    window: int = 64,
) -> np.ndarray:
    """The epoch's ``order`` rearranged so that its consecutive ``batch_size`` slices (the
    batches) hold samples of similar ``lengths`` (one per sample index).

    Each window of ``window * batch_size`` consecutive samples of ``order`` is sorted by length
    (stable) and cut into batches; the full batches of the whole epoch are shuffled (seeded by
    ``(seed, epoch)``) and a last, short batch stays last, so every slice but the last is full.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    span = max(1, window) * batch_size
    batches: list[np.ndarray] = []
    for s in range(0, len(order), span):
        chunk = order[s : s + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    short = [b for b in batches if len(b) < batch_size]
    full = [b for b in batches if len(b) == batch_size]
    perm = np.random.default_rng([seed, epoch, 2 << 20]).permutation(len(full))
    parts = [full[i] for i in perm] + short
    return np.concatenate(parts) if parts else order[:0]


def padding_share(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> float:
    """Share of the padded token slots that are padding when ``order`` is cut into batches."""
    real = slots = 0
    for s in range(0, len(order), batch_size):
        b = lengths[order[s : s + batch_size]]
        real += int(b.sum())
        slots += int(b.max()) * len(b)
    return 1.0 - real / slots if slots else 0.0
