"""Where do two models differ: a metric by how popular each user's target item is, by how
long the user's history is, or by what the KG links between the target and the history.

    R=benchmarks/results
    python benchmarks/popularity.py sasrec=$R/sasrec-curve-ml100k/sasrec-seed0-ranks.json \\
        t5=$R/ml100k-try19-nk-b256-3m --split test
    python benchmarks/popularity.py --by history sasrec=S0,S1,S2 kp4sr=K0,K1,K2
    python benchmarks/popularity.py --by kg --against control kp4sr=K0,K1 control=C0,C1

Each argument is ``NAME=PATH`` with PATH a run folder or a ``ranks.json`` (as for
``compare.py``), or several joined by commas (one per training seed: each user then scores the
mean over them). The targets of the split are put into ``--buckets`` groups of about equal size
by ``--by``: ``popularity``, how often the item is a training target (the leave-one-out training
positions of the same split), or ``history``, how many interactions the user had before the
target, or ``kg``: the first of ``--kg-groups`` (relation sets, ``;``-separated) through which
the target shares a KG tail with one of the last ``--max-items`` history items (the same
director, say), else ``none``. The metric is averaged per group. A model that wins on popular
targets and loses on the rest ranks by popularity more than the other does; one that loses on
long histories only misses something about heavy users; knowledge that helps should help most
where the KG links the target to the history. ``--against NAME`` adds each model's paired
difference from NAME per group, with its permutation p (as ``compare.py``). Loads the dataset
(``--dataset``, k-core ``--min-user/--min-item``, default ML-100k without k-core as in the
research log) to know each user's target; no model is run: seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kp4sr.data import (
    DataOptions,
    Dataset,
    Sample,
    Split,
    item_attributes,
    leave_one_out,
    load_dataset,
)
from kp4sr.errors import ConfigError
from kp4sr.evaluation import per_user

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import load_ranks, paired  # noqa: E402

KG_GROUPS = "film.directed_by,film.written_by;genre"


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


def kg_link(ds: Dataset, samples: list[Sample], relation_sets: list[str]) -> np.ndarray:
    """Per sample, the first relation set through which its target shares a KG tail (one that
    two or more items have) with one of its history items; ``len(relation_sets)``: none.

    Vectorised over samples: an item x attribute incidence matrix, the history's rows OR-ed."""
    n = len(samples)
    width = max((len(s.history) for s in samples), default=0)
    hist = np.full((n, max(width, 1)), len(ds.items), dtype=np.int64)  # padding: an empty row
    for k, s in enumerate(samples):
        hist[k, : len(s.history)] = s.history
    targets = np.fromiter((s.target for s in samples), np.int64, n)
    link = np.full(n, len(relation_sets), dtype=np.int64)
    for g in reversed(range(len(relation_sets))):  # the first set wins: write it last
        offsets, values, n_attr = item_attributes(ds, relation_sets[g])
        has = np.zeros((len(ds.items) + 1, max(n_attr, 1)), dtype=bool)
        has[np.repeat(np.arange(len(ds.items)), np.diff(offsets)), values] = True
        shared = (has[hist].any(axis=1) & has[targets]).any(axis=1)
        link[shared] = g
    return link


def table(
    runs: dict[str, list[dict[str, int]]],
    users: list[str],
    groups: np.ndarray,
    labels: list[str],
    metric: str,
    against: str | None = None,
    draws: int = 10_000,
) -> str:
    """Markdown: one row per model, one column per group of ``users`` (``groups[i]`` indexes
    ``labels``), plus all users. A model with several runs (seeds) scores each user by the mean
    over them. With ``against``, a second table: each other model minus it, per group, with the
    permutation p of the paired difference."""
    head = [f"{label} ({int(np.sum(groups == g))})" for g, label in enumerate(labels)]
    rule = "|---" * (len(labels) + 2) + "|"
    lines = [f"| model | all ({len(users)}) | " + " | ".join(head) + " |", rule]
    values = {}
    for name, seeds in runs.items():
        for ranks in seeds:
            missing = [u for u in users if u not in ranks]
            if missing:
                raise SystemExit(
                    f"{name}: no rank for {len(missing)} users of the split, e.g. {missing[0]}"
                )
        v = np.mean([per_user(np.array([r[u] for u in users]), metric) for r in seeds], 0)
        values[name] = v
        cells = [
            f"{v[groups == g].mean():.4f}" if np.any(groups == g) else "–"
            for g in range(len(labels))
        ]
        lines.append(f"| {name} | {v.mean():.4f} | " + " | ".join(cells) + " |")
    if against is None:
        return "\n".join(lines)
    if against not in values:
        raise SystemExit(f"--against {against!r} is not one of the models: {', '.join(values)}")
    lines += ["", f"{metric} minus {against} (permutation p)", "", lines[0], rule]
    ref = values[against]
    everyone = np.ones(len(users), dtype=bool)
    for name, v in values.items():
        if name == against:
            continue
        cells = []
        for sel in [everyone] + [groups == g for g in range(len(labels))]:
            if not np.any(sel):
                cells.append("–")
                continue
            r = paired(v[sel], ref[sel], draws, 0)
            cells.append(f"{r['diff']:+.4f} ({r['p']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quantile_groups(
    keys: dict[str, float], users: list[str], buckets: int
) -> tuple[np.ndarray, list[str]]:
    """Groups of about equal size by each user's key, labelled by their edges."""
    groups, edges = bucket_of(np.array([keys[u] for u in users]), buckets)
    return groups, [f"{edges[g]:.0f}–{edges[g + 1]:.0f}" for g in range(buckets)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "runs", nargs="+", help="NAME=PATH (a run folder or a ranks.json; seeds joined by commas)"
    )
    p.add_argument("--by", default="popularity", choices=("popularity", "history", "kg"))
    p.add_argument(
        "--kg-groups", default=KG_GROUPS, help="--by kg: relation sets in priority, ';' between"
    )
    p.add_argument("--against", default=None, help="NAME: also each model minus this one")
    p.add_argument("--draws", type=int, default=10_000)
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
    kg = "none" if args.by != "kg" else None
    opts = DataOptions(min_user=args.min_user, min_item=args.min_item, kg=kg)
    ds = load_dataset(args.dataset, args.data_dir, opts)
    split = leave_one_out(ds, args.max_items)
    samples = split.valid if args.split == "valid" else split.test
    users = [ds.users[s.user] for s in samples]
    if args.by == "popularity":
        counts = target_counts(split, len(ds.items))
        keys = {u: float(counts[s.target]) for u, s in zip(users, samples)}
        groups, labels = quantile_groups(keys, users, args.buckets)
        what = "the target's count among training targets"
    elif args.by == "history":
        keys = {u: float(s.position) for u, s in zip(users, samples)}
        groups, labels = quantile_groups(keys, users, args.buckets)
        what = "the user's number of interactions before the target"
    else:
        sets = [x.strip() for x in args.kg_groups.split(";") if x.strip()]
        try:
            groups, labels = kg_link(ds, samples, sets), [*sets, "none"]
        except ConfigError as e:  # an unknown relation: say which, and what the KG has
            p.error(f"--kg-groups: {e}")
        what = f"what the KG links between the target and the last {args.max_items} items"
    print(f"{args.metric}, {args.split} split, by {what}\n")
    print(table(runs, users, groups, labels, args.metric, args.against, args.draws))
    return 0


if __name__ == "__main__":
    sys.exit(main())
