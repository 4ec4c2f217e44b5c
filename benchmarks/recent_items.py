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
from typing import Any

import numpy as np

from kp4sr.baselines import set_recent
from kp4sr.benchmark import write_report
from kp4sr.evaluation import (
    WINDOWS,
    choose_recent,
    format_table,
    metrics,
    ranks_json,
    recent_candidates,
)

SPLITS = ("valid", "test")
# what a model provides: ranks per (candidate, split), max_items, the splits' users, whether
# the mixture over windows applies
Source = tuple[Callable[[int | str, str], np.ndarray], int, list[str], list[str], bool]


def sweep(
    ranks_at: Callable[[int | str, str], np.ndarray], max_items: int, windows: bool = True
) -> tuple[dict, dict, int | str]:
    """Metrics and per-user ranks of every candidate (``windows``: the mixture over the last
    1..max_items items' windows, then the last k items for k = 1..max_items), and the one best
    on validation NDCG@10 (:func:`~kp4sr.evaluation.choose_recent`: test is not read)."""
    scores: dict = {}
    ranks: dict = {}
    for c in recent_candidates(max_items, windows):
        ranks[c] = {s: ranks_at(c, s) for s in SPLITS}
        scores[c] = {s: metrics(r) for s, r in ranks[c].items()}
        print(
            f"{c}: valid NDCG@10 {scores[c]['valid']['NDCG@10']:.4f}, "
            f"test {scores[c]['test']['NDCG@10']:.4f}",
            flush=True,
        )
    best, _ = choose_recent(lambda c: ranks[c]["valid"], max_items, windows)
    return scores, ranks, best


def kp4sr_ranks(run: str) -> Source:
    from kp4sr.recommender import KP4SR

    rec = KP4SR.from_pretrained(run)

    def at(c: int | str, split: str) -> np.ndarray:
        set_recent(rec.config, c)
        return rec.user_ranks(split, progress=True)[0]

    users = [rec.split_users(s) for s in SPLITS]
    # the mixture over windows needs one ID token per item
    return at, rec.config.max_items, users[0], users[1], rec.config.item_tokens == "single"


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Which model (``--run`` or ``--baseline``), ``--out``, and the options of ``--baseline``:
    which data, and how the baseline trains."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", help="a KP4SR run folder")
    g.add_argument("--baseline", help="train this baseline (sasrec, gru4rec, bert4rec, pop)")
    p.add_argument("--out", required=True)
    p.add_argument("--dataset", default="ml-100k", help="--baseline: the dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--max-items", type=int, default=5, help="--baseline: its history window")
    p.add_argument("--epochs", type=int, default=50, help="--baseline: at most this many")
    p.add_argument("--train-exclude-seen", action="store_true", help="--baseline: as baselines.py")
    p.add_argument(
        "--item-knowledge", default="", help="--baseline: KG relations added to item vectors"
    )
    p.add_argument("--min-user", type=int, default=0, help="--baseline: k-core (default 0)")
    p.add_argument("--min-item", type=int, default=0, help="--baseline: k-core (default 0)")


def train_baseline(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``--baseline`` trained exactly as ``benchmarks/baselines.py`` does (``args.seed``):
    the model, the dataset and its split."""
    from kp4sr.baselines import BaselineConfig, make_baseline
    from kp4sr.data import DataOptions, leave_one_out, load_dataset

    opts = DataOptions(min_user=args.min_user, min_item=args.min_item)
    ds = load_dataset(args.dataset, args.data_dir, opts, seed=args.seed)
    split = leave_one_out(ds, args.max_items)
    cfg = BaselineConfig(
        epochs=args.epochs,
        seed=args.seed,
        train_exclude_seen=args.train_exclude_seen,
        item_knowledge=args.item_knowledge,
    )
    model = make_baseline(args.baseline, len(ds.items), args.max_items, cfg, ds)
    model.fit(ds, split, progress=True)
    return model, ds, split


def baseline_ranks(args: argparse.Namespace) -> Source:
    model, ds, split = train_baseline(args)

    def at(c: int | str, s: str) -> np.ndarray:
        set_recent(model.config, c)
        return model.user_ranks(ds, getattr(split, s))

    users = [[str(ds.users[x.user]) for x in getattr(split, s)] for s in SPLITS]
    return at, args.max_items, users[0], users[1], True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_options(p)
    p.add_argument("--seed", type=int, default=0, help="--baseline: its seed")
    args = p.parse_args(argv)

    at, max_items, valid_users, test_users, windows = (
        kp4sr_ranks(args.run) if args.run else baseline_ranks(args)
    )
    scores, ranks, best = sweep(at, max_items, windows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recent.json").write_text(
        json.dumps({"chosen": best, "by_k": {str(c): v for c, v in scores.items()}}, indent=1)
    )
    users = {"valid": valid_users, "test": test_users}
    (out / "ranks.json").write_text(ranks_json({s: (users[s], ranks[best][s]) for s in SPLITS}))
    keys = tuple(f"{s} {m}" for s in SPLITS for m in ("NDCG@10", "HR@10"))
    rows = {
        (f"k={c}" if c != WINDOWS else "windows") + (" (chosen)" if c == best else ""): {
            f"{s} {m}": scores[c][s][m] for s in SPLITS for m in ("NDCG@10", "HR@10")
        }
        for c in scores
    }
    title = f"History items read at ranking ({args.run or args.baseline}), chosen on validation"
    print(write_report(out, title, format_table(rows, keys), "python " + " ".join(sys.argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
