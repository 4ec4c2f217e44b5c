"""Ranking metrics for leave-one-out next-item prediction (one relevant item per user).

``rank`` is the 0-based position of the target in a user's ranked list, or -1 if it is absent
(beyond the beam, or excluded). HR@k counts a hit when rank < k; NDCG@k gives 1/log2(rank + 2);
MRR gives 1/(rank + 1), 0 when absent (so with beam search it is MRR@beams).
"""

from __future__ import annotations

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


def metrics(ranks: np.ndarray, cutoffs: tuple[int, ...] = CUTOFFS) -> dict[str, float]:
    """HR@k, NDCG@k for every cutoff, MRR and the number of users, averaged over all users."""
    ranks = np.asarray(ranks)
    found = ranks >= 0
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = found & (ranks < k)
        out[f"HR@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        gain = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        out[f"NDCG@{k}"] = float(gain.mean()) if len(ranks) else 0.0
    rr = np.where(found, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)
    out["MRR"] = float(rr.mean()) if len(ranks) else 0.0
    out["users"] = int(len(ranks))
    return out


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
