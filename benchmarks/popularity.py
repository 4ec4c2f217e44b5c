"""Where do two models differ: a metric by how popular each user's target item is, or by how
long the user's history is.

    R=benchmarks/results
    python benchmarks/popularity.py sasrec=$R/sasrec-curve-ml100k/sasrec-seed0-ranks.json \\
        t5=$R/ml100k-try19-nk-b256-3m --split test
    python benchmarks/popularity.py --by history sasrec=S0,S1,S2 kp4sr=K0,K1,K2

Each argument is ``NAME=PATH`` with PATH a run folder or a ``ranks.json`` (as for
``compare.py``), or several joined by commas (one per training seed: each user then scores the
mean over them). The targets of the split are put into ``--buckets`` groups of about equal size
by ``--by``: ``popularity``, how often the item is a training target (the leave-one-out training
positions of the same split), or ``history``, how many interactions the user had before the
target; the metric is averaged per group. A model that wins on popular targets and loses on the
rest ranks by popularity more than the other does; one that loses on long histories only misses
something about heavy users. Loads the dataset (``--dataset``, k-core ``--min-user/--min-item``,
default ML-100k without k-core as in the research log) to know each user's target; no model is
run: seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kp4sr.data import DataOptions, Split, leave_one_out, load_dataset
from kp4sr.evaluation import per_user

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import load_ranks  # noqa: E402


def target_counts(split: Split, n_items: int) -> np.ndarray:
    """How often each item is a training target: [n_items]."""
    train = split.train
    targets = np.fromiter((train[i].target for i in range(len(train))), np.int64, len(train))
    return np.bincount(targets, minlength=n_items)


def bucket_of(counts: np.ndarray, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile group of every value (0 = least popular) and the groups' edges.

    Ties at an edge go to the higher group, so groups are only about equal in size.
    """
    edges = np.quantile(counts, np.linspace(0, 1, buckets + 1))
    groups = np.clip(np.searchsorted(edges, counts, side="right") - 1, 0, buckets - 1)
    return groups, edges


def table(
    runs: dict[str, list[dict[str, int]]],
    keys: dict[str, float],
    metric: str,
    buckets: int,
) -> str:
    """Markdown: one row per model, one column per group of users by ``keys`` (each user's
    target count, or history length), plus all users. A model with several runs (seeds)
    scores each user by the mean over them."""
    users = sorted(keys)
    groups, edges = bucket_of(np.array([keys[u] for u in users]), buckets)
    head = [
        f"{edges[g]:.0f}–{edges[g + 1]:.0f} ({int(np.sum(groups == g))})" for g in range(buckets)
    ]
    lines = [
        f"| model | all ({len(users)}) | " + " | ".join(head) + " |",
        "|---" * (buckets + 2) + "|",
    ]
    for name, seeds in runs.items():
        for ranks in seeds:
            missing = [u for u in users if u not in ranks]
            if missing:
                raise SystemExit(
                    f"{name}: no rank for {len(missing)} users of the split, e.g. {missing[0]}"
                )
        values = np.mean([per_user(np.array([r[u] for u in users]), metric) for r in seeds], 0)
        cells = [f"{values[groups == g].mean():.4f}" for g in range(buckets)]
        lines.append(f"| {name} | {values.mean():.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "runs", nargs="+", help="NAME=PATH (a run folder or a ranks.json; seeds joined by commas)"
    )
    p.add_argument("--by", default="popularity", choices=("popularity", "history"))
    p.add_argument("--split", default="test", choices=("valid", "test"))
    p.add_argument("--metric", default="NDCG@10")
    p.add_argument("--buckets", type=int, default=4)
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--min-user", type=int, default=0)
    p.add_argument("--min-item", type=int, default=0)
    p.add_argument("--max-items", type=int, default=5)
    args = p.parse_args(argv)
    if args.buckets < 1:
        p.error("--buckets must be at least 1")
    runs = {}
    for arg in args.runs:
        name, sep, path = arg.partition("=")
        if not sep or not name or not path:
            p.error(f"expected NAME=PATH, got {arg!r}")
        runs[name] = [load_ranks(Path(x), args.split) for x in path.split(",") if x]
    try:
        per_user(np.zeros(1, dtype=np.int64), args.metric)
    except ValueError as e:
        p.error(str(e))
    opts = DataOptions(min_user=args.min_user, min_item=args.min_item, kg="none")
    ds = load_dataset(args.dataset, args.data_dir, opts)
    split = leave_one_out(ds, args.max_items)
    samples = split.valid if args.split == "valid" else split.test
    if args.by == "popularity":
        counts = target_counts(split, len(ds.items))
        keys = {ds.users[s.user]: float(counts[s.target]) for s in samples}
        what = "the target's count among training targets"
    else:
        keys = {ds.users[s.user]: float(s.position) for s in samples}
        what = "the user's number of interactions before the target"
    print(f"{args.metric}, {args.split} split, by {what}\n")
    print(table(runs, keys, args.metric, args.buckets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
