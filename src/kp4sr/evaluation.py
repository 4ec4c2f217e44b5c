"""Ranking metrics for leave-one-out next-item prediction (one relevant item per user).

``rank`` is the 0-based position of the target in a user's ranked list, or -1 if it is absent
(beyond the beam, or excluded). HR@k counts a hit when rank < k; NDCG@k gives 1/log2(rank + 2);
MRR gives 1/(rank + 1), 0 when absent (so with beam search it is MRR@beams).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

CUTOFFS = (5, 10, 20)


# Per-user ranks of a finished run (``{"valid"|"test": {"users": [...], "ranks": [...]}}``):
# what benchmarks/compare.py pairs between two models.
RANKS_FILE = "ranks.json"


def target_ranks(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target in their ranked list ([U, K] items), -1 if absent."""
    hit = ranked == targets[:, None]  # [U, K]
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1), -1)


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each user's ``HR@k``, ``NDCG@k`` or ``MRR`` from the rank of their target: [U]."""
    ranks = np.asarray(ranks)
    found = ranks >= 0
    if metric == "MRR":
        return np.where(found, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)
    name, _, k = metric.partition("@")
    if name not in ("HR", "NDCG") or not k.isdigit():
        raise ValueError(f"unknown metric {metric!r}: HR@k, NDCG@k or MRR")
    hit = found & (ranks < int(k))
    if name == "HR":
        return hit.astype(np.float64)
    return np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)


def metrics(ranks: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """HR@k, NDCG@k for every cutoff, MRR and the number of users, averaged over all users."""
    ranks = np.asarray(ranks)
    names = [f"{m}@{k}" for k in cutoffs for m in ("HR", "NDCG")] + ["MRR"]
    out = {m: float(per_user(ranks, m).mean()) if len(ranks) else 0.0 for m in names}
    out["users"] = int(len(ranks))
    return out


def ranks_json(per_split: dict[str, tuple[list[str], np.ndarray]]) -> str:
    """The ``RANKS_FILE`` text: per split, the users (dataset IDs) and their targets' ranks."""
    return json.dumps(
        {
            s: {"users": users, "ranks": np.asarray(r).tolist()}
            for s, (users, r) in per_split.items()
        }
    )


def format_table(rows: dict[str, dict[str, float]], keys: tuple[str, ...] | None = None) -> str:
    """A small Markdown table: one row per named result."""
    if keys is None:
        keys = tuple(f"{m}@{k}" for m in ("HR", "NDCG") for k in CUTOFFS) + ("MRR", "users")
    lines = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in rows.items():
        cells = [
            f"{row[k]:.4f}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


WINDOWS = "windows"  # the candidate of choose_recent that ranks by the mixture over windows


def recent_candidates(max_items: int, windows: bool = True) -> list[int | str]:
    """What ``choose_recent`` tries, in rising order of preference on a tie: the mixture over
    the last 1..``max_items`` items' windows (``windows``), then the last k items for
    k = 1..``max_items`` (so the model's own setting, all items, wins a draw)."""
    return [*([WINDOWS] if windows else []), *range(1, max_items + 1)]


def choose_recent(
    valid_ranks_at: Callable[[int | str], np.ndarray], max_items: int, windows: bool = True
) -> tuple[int | str, dict[int | str, float]]:
    """What a trained model should rank from: the candidate of :func:`recent_candidates` (the
    last k history items, or ``WINDOWS``) whose validation ranks score the best NDCG@10.
    Returns it and every candidate's validation NDCG@10. Test is never read: on ML-100k test
    prefers fewer items more than validation does (research log, try 35)."""
    order = recent_candidates(max_items, windows)
    scores = {c: metrics(valid_ranks_at(c))["NDCG@10"] for c in order}
    return max(order, key=lambda c: (scores[c], order.index(c))), scores
