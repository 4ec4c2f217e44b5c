"""Train and evaluate the baselines (Pop, GRU4Rec, SASRec, BERT4Rec) on KP4SR's exact split.

    python benchmarks/baselines.py --dataset ml-100k --out benchmarks/results/baselines-ml100k
    python benchmarks/baselines.py --dataset toy --out benchmarks/results/baselines-toy

Same leave-one-out split, same ``--max-items`` history window (default 5, KP4SR's), the same
targets and the same convention as KP4SR (earlier items of the user are excluded from the
ranking), full ranking over all items, early stopping on validation NDCG@10. Writes
``OUT/results.json`` and ``OUT/results.md`` (table, machine, command).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kp4sr.baselines import BASELINES, BaselineConfig, run_baseline
from kp4sr.benchmark import write_report
from kp4sr.data import DataOptions, leave_one_out, load_dataset
from kp4sr.evaluation import format_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="toy")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="benchmarks/results/baselines")
    p.add_argument("--models", default=",".join(BASELINES))
    p.add_argument("--max-items", type=int, default=5)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--train-exclude-seen",
        action="store_true",
        help="leave each user's earlier items out of the training softmax (as the ranking does)",
    )
    p.add_argument(
        "--item-knowledge",
        default="",
        help="KG relations (comma-separated, or 'all') whose tails join each item's vector in "
        "GRU4Rec, SASRec and BERT4Rec (default: none)",
    )
    p.add_argument("--min-user", type=int, default=0, help="k-core (default 0: no filtering)")
    p.add_argument("--min-item", type=int, default=0, help="k-core (default 0: no filtering)")
    args = p.parse_args(argv)

    opts = DataOptions(min_user=args.min_user, min_item=args.min_item)
    ds = load_dataset(args.dataset, args.data_dir, opts, seed=args.seed)
    split = leave_one_out(ds, args.max_items)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, rows = [], {}
    for name in args.models.split(","):
        cfg = BaselineConfig(
            epochs=args.epochs,
            dim=args.dim,
            seed=args.seed,
            train_exclude_seen=args.train_exclude_seen,
            item_knowledge=args.item_knowledge,
        )
        res = run_baseline(name, ds, split, args.max_items, cfg, out=out, progress=True)
        results.append(res)
        rows[name] = {**res["test"], "train s": res["train_seconds"]}
        rows[name]["best epoch"] = res["best_epoch"]
        (out / "results.json").write_text(json.dumps(results, indent=2))
    keys = ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "users", "train s", "best epoch")
    command = "python " + " ".join(sys.argv)
    print(
        write_report(
            out,
            f"Baselines on {ds.name} (test split, full ranking, seen items excluded)",
            format_table(rows, keys),
            command,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
