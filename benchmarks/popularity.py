"""Where do two models differ: a metric by how popular each user's target item is.

    R=benchmarks/results
    python benchmarks/popularity.py sasrec=$R/sasrec-curve-ml100k/sasrec-seed0-ranks.json \\
        t5=$R/ml100k-try19-nk-b256-3m --split test

Each argument is ``NAME=PATH`` with PATH a run folder or a ``ranks.json`` (as for
``compare.py``). The targets of the split are put into ``--buckets`` groups of about equal size
by how often the item is a training target (the leave-one-out training positions of the same
split), and the metric is averaged per group. A model that wins on popular targets and loses on
the rest ranks by popularity more than the other does. Loads the dataset (``--dataset``, k-core
``--min-user/--min-item``, default ML-100k without k-core as in the research log) to know each
user's target; no model is run: seconds.
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
    runs: dict[str, dict[str, int]],
    targets: dict[str, int],
    counts: np.ndarray,
    metric: str,
    buckets: int,
) -> str:
    """Markdown: one row per model, one column per popularity group, plus all users."""
    users = sorted(targets)
    groups, edges = bucket_of(counts[[targets[u] for u in users]], buckets)
    head = [
        f"{edges[g]:.0f}–{edges[g + 1]:.0f} ({int(np.sum(groups == g))})" for g in range(buckets)
    ]
    lines = [
        f"| model | all ({len(users)}) | " + " | ".join(head) + " |",
        "|---" * (buckets + 2) + "|",
    ]
    for name, ranks in runs.items():
        missing = [u for u in users if u not in ranks]
        if missing:
            raise SystemExit(
                f"{name}: no rank for {len(missing)} users of the split, e.g. {missing[0]}"
            )
        values = per_user(np.array([ranks[u] for u in users]), metric)
        cells = [f"{values[groups == g].mean():.4f}" for g in range(buckets)]
        lines.append(f"| {name} | {values.mean():.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", help="NAME=PATH (a run folder or a ranks.json)")
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
        runs[name] = load_ranks(Path(path), args.split)
    try:
        per_user(np.zeros(1, dtype=np.int64), args.metric)
    except ValueError as e:
        p.error(str(e))
    opts = DataOptions(min_user=args.min_user, min_item=args.min_item, kg="none")
    ds = load_dataset(args.dataset, args.data_dir, opts)
    split = leave_one_out(ds, args.max_items)
    samples = split.valid if args.split == "valid" else split.test
    targets = {ds.users[s.user]: s.target for s in samples}
    counts = target_counts(split, len(ds.items))
    print(f"{args.metric}, {args.split} split, by the target's count among training targets\n")
    print(table(runs, targets, counts, args.metric, args.buckets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
