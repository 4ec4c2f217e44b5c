"""How many of the history items should ranking read? Sweep ``eval_max_items`` on validation.

    python benchmarks/recent_items.py --run RUNS/ml100k-nk-b256-drop0/no-knowledge \\
        --out benchmarks/results/ml100k-try35-recent-nk
    python benchmarks/recent_items.py --baseline sasrec --dataset ml-100k --seed 0 \\
        --out benchmarks/results/ml100k-try35-recent-sasrec-seed0

A model trained on ``max_items`` history items is ranked from only the last k of them, for
k = 1 .. max_items, on validation and test (``--run``: a KP4SR run folder, beam search as
``kp4sr evaluate``; ``--baseline``: trains that baseline first, exactly as
``benchmarks/baselines.py`` does, then ranks with its weights). k is chosen on validation
NDCG@10 only; the test scores of the other k are reported for the record. Writes
``OUT/recent.json`` (every k's metrics and the chosen k), ``OUT/ranks.json`` (per-user ranks at
the chosen k, for ``compare.py``) and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kp4sr.benchmark import write_report
from kp4sr.evaluation import choose_recent, format_table, metrics, ranks_json

SPLITS = ("valid", "test")


def sweep(
    ranks_at: Callable[[int, str], np.ndarray], max_items: int
) -> tuple[dict[int, dict[str, dict[str, float]]], dict[int, dict[str, np.ndarray]], int]:
    """Metrics and per-user ranks for every k in 1..max_items, and the k best on validation
    NDCG@10 (ties go to the larger k: the model's own setting wins a draw)."""
    scores: dict[int, dict[str, dict[str, float]]] = {}
    ranks: dict[int, dict[str, np.ndarray]] = {}
    for k in range(1, max_items + 1):
        ranks[k] = {s: ranks_at(k, s) for s in SPLITS}
        scores[k] = {s: metrics(r) for s, r in ranks[k].items()}
        print(
            f"k={k}: valid NDCG@10 {scores[k]['valid']['NDCG@10']:.4f}, "
            f"test {scores[k]['test']['NDCG@10']:.4f}",
            flush=True,
        )
    best, _ = choose_recent(lambda k: ranks[k]["valid"], max_items)
    return scores, ranks, best


def kp4sr_ranks(run: str) -> tuple[Callable[[int, str], np.ndarray], int, list[str], list[str]]:
    from kp4sr.recommender import KP4SR

    rec = KP4SR.from_pretrained(run)

    def at(k: int, split: str) -> np.ndarray:
        rec.config.eval_max_items = k
        return rec.user_ranks(split, progress=True)[0]

    users = [rec.split_users(s) for s in SPLITS]
    return at, rec.config.max_items, users[0], users[1]


def baseline_ranks(
    args: argparse.Namespace,
) -> tuple[Callable[[int, str], np.ndarray], int, list[str], list[str]]:
    from kp4sr.baselines import BaselineConfig, make_baseline
    from kp4sr.data import DataOptions, leave_one_out, load_dataset

    opts = DataOptions(min_user=args.min_user, min_item=args.min_item)
    ds = load_dataset(args.dataset, args.data_dir, opts, seed=args.seed)
    split = leave_one_out(ds, args.max_items)
    cfg = BaselineConfig(
        epochs=args.epochs, seed=args.seed, train_exclude_seen=args.train_exclude_seen
    )
    model = make_baseline(args.baseline, len(ds.items), args.max_items, cfg)
    model.fit(ds, split, progress=True)

    def at(k: int, s: str) -> np.ndarray:
        model.config.eval_max_items = k
        return model.user_ranks(ds, getattr(split, s))

    users = [[str(ds.users[x.user]) for x in getattr(split, s)] for s in SPLITS]
    return at, args.max_items, users[0], users[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="a KP4SR run folder")
    g.add_argument("--baseline", help="train this baseline (sasrec, gru4rec, bert4rec, pop)")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="ml-100k", help="--baseline: the dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-items", type=int, default=5, help="--baseline: its history window")
    p.add_argument("--epochs", type=int, default=50, help="--baseline: at most this many")
    p.add_argument("--seed", type=int, default=0, help="--baseline: its seed")
    p.add_argument("--train-exclude-seen", action="store_true", help="--baseline: as baselines.py")
    p.add_argument("--min-user", type=int, default=0, help="--baseline: k-core (default 0)")
    p.add_argument("--min-item", type=int, default=0, help="--baseline: k-core (default 0)")
    args = p.parse_args(argv)

    at, max_items, valid_users, test_users = (
        kp4sr_ranks(args.run) if args.run else baseline_ranks(args)
    )
    scores, ranks, best = sweep(at, max_items)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recent.json").write_text(
        json.dumps({"chosen": best, "by_k": {str(k): v for k, v in scores.items()}}, indent=1)
    )
    users = {"valid": valid_users, "test": test_users}
    (out / "ranks.json").write_text(ranks_json({s: (users[s], ranks[best][s]) for s in SPLITS}))
    keys = tuple(f"{s} {m}" for s in SPLITS for m in ("NDCG@10", "HR@10"))
    rows = {
        f"k={k}" + (" (chosen)" if k == best else ""): {
            f"{s} {m}": scores[k][s][m] for s in SPLITS for m in ("NDCG@10", "HR@10")
        }
        for k in scores
    }
    title = f"History items read at ranking ({args.run or args.baseline}), chosen on validation"
    print(write_report(out, title, format_table(rows, keys), "python " + " ".join(sys.argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
