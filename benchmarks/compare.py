"""Is model A better than model B on the same users? A paired test on per-user ranks.

    python benchmarks/compare.py RUN_A RUN_B                 # test split, NDCG@10 and HR@10
    python benchmarks/compare.py a/ranks.json b/ranks.json --split valid --metrics NDCG@10

Each side is a KP4SR run folder or a ``ranks.json`` (written by training at the end of every
run, by ``kp4sr benchmark`` for baselines in ``DIR/<model>-seed<S>/``, and by ``kp4sr evaluate
--ranks FILE``). The two must rank the same users (matched by user ID). For every metric it
reports both means, their difference, a 95% paired bootstrap interval of the difference and a
two-sided paired sign-flip permutation p-value (both seeded, 10,000 draws). Pairing takes out
the spread from which users happen to be hard; between two separately trained models it narrows
the interval only a little (on ML-100k's 943 test users about +-0.007 NDCG@10 remains).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kp4sr.evaluation import RANKS_FILE, per_user


def load_ranks(path: Path, split: str) -> dict[str, int]:
    """User ID -> 0-based rank of the target (-1: not in the list) from a run or a file."""
    file = path / RANKS_FILE if path.is_dir() else path
    if not file.is_file():
        raise SystemExit(
            f"{path}: no {RANKS_FILE} (runs finished before it existed: use "
            "`kp4sr evaluate RUN --ranks FILE`)"
        )
    data = json.loads(file.read_text())
    if split not in data:
        raise SystemExit(f"{file}: no {split!r} ranks (has {', '.join(data)})")
    users, ranks = data[split]["users"], data[split]["ranks"]
    return dict(zip(users, ranks))


def paired(a: np.ndarray, b: np.ndarray, draws: int, seed: int) -> dict[str, float]:
    """Mean difference a - b, its 95% bootstrap interval and a sign-flip permutation p."""
    d = a - b
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // max(1, len(d)))  # draws at a time: bounded memory
    boot, null = [], []
    for start in range(0, draws, chunk):
        n = min(chunk, draws - start)
        boot.append(d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1))
        flips = rng.choice(np.array([-1.0, 1.0]), size=(n, len(d)))
        null.append(np.abs((flips * d).mean(axis=1)))
    boot, null = np.concatenate(boot), np.concatenate(null)
    p = (1 + np.sum(null >= abs(d.mean()) - 1e-15)) / (draws + 1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"a": a.mean(), "b": b.mean(), "diff": d.mean(), "low": lo, "high": hi, "p": p}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--metrics", default="NDCG@10,HR@10")
    p.add_argument("--draws", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    ra, rb = load_ranks(args.a, args.split), load_ranks(args.b, args.split)
    if set(ra) != set(rb):
        only = len(set(ra) ^ set(rb))
        raise SystemExit(f"the two rank different users ({only} in one only): not comparable")
    users = sorted(ra)
    a = np.array([ra[u] for u in users])
    b = np.array([rb[u] for u in users])
    rows = {}
    for metric in args.metrics.split(","):
        try:
            rows[metric] = paired(per_user(a, metric), per_user(b, metric), args.draws, args.seed)
        except ValueError as e:
            p.error(str(e))
    if args.json:
        print(json.dumps({"users": len(users), "split": args.split, **rows}))
        return 0
    print(f"A = {args.a}\nB = {args.b}\n{len(users)} users, {args.split} split\n")
    print("| metric | A | B | A − B | 95% interval | p |\n|---|---|---|---|---|---|")
    for metric, r in rows.items():
        print(
            f"| {metric} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | "
            f"[{r['low']:+.4f}, {r['high']:+.4f}] | {r['p']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
