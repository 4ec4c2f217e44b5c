"""Train and evaluate KP4SR and its two ablations on MovieLens-100K + Freebase.

    python benchmarks/ml100k.py --out benchmarks/results/ml100k          # all three variants
    python benchmarks/ml100k.py --variants kp4sr --epochs 2 --quick      # a smoke run

Variants: ``kp4sr`` (knowledge prompts + tree mask), ``no-tree-mask`` (knowledge prompts, full
attention), ``no-knowledge`` (MPP only, the P5-style model). Every variant gets the same options
and seed. Writes ``OUT/results.json`` (one object per variant: metrics on valid and test, best
epoch, training seconds, the options) and ``OUT/results.md`` (the table, the machine, the
command). Needs the real files: ``$KP4SR_DATA`` or ``../shared/datasets`` (with ``ml-100k/`` and
``ml-100k-freebase/``); exits with a clear message when they are absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from kp4sr.benchmark import machine, write_report
from kp4sr.data import default_data_dir
from kp4sr.evaluation import format_table
from kp4sr.recommender import KP4SR, Config
from kp4sr.training import fit, resume

VARIANTS = {
    "kp4sr": {},
    "no-tree-mask": {"tree_mask": False},
    "no-knowledge": {"knowledge": False},
}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to Config fields, each value parsed as the field's type."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE with KEY a Config option")
        default = fields[key].default
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {pair!r}: expected true or false")
            out[key] = raw.lower() in ("true", "1")
        elif isinstance(default, int):
            out[key] = int(raw)
        elif isinstance(default, float):
            out[key] = float(raw)
        else:
            out[key] = None if raw.lower() == "none" else raw
    return out


def config_options(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """The Config options the named flags set; ``--set`` may override any of them."""
    return {
        "dataset": "ml-100k",
        "data_dir": str(data_dir),
        "epochs": args.epochs,
        "samples_per_epoch": args.samples_per_epoch,
        "max_length": args.max_length,
        "degree": args.degree,
        "hop": args.hop,
        "backbone": args.backbone,
        "item_tokens": args.item_tokens,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "patience": args.patience,
        "min_user": args.min_user,
        "min_item": args.min_item,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default=None, help="folder with ml-100k/ and ml-100k-freebase/")
    p.add_argument("--out", default="benchmarks/results/ml100k")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--samples-per-epoch", type=int, default=20000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--degree", type=int, default=3)
    p.add_argument("--hop", type=int, default=2)
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--item-tokens", default="single")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--min-user", type=int, default=0, help="k-core (default 0: no filtering)")
    p.add_argument("--min-item", type=int, default=0, help="k-core (default 0: no filtering)")
    p.add_argument("--quick", action="store_true", help="first 200 validation users only")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue each variant's run in OUT from its last checkpoint (long runs that span "
        "several sittings; the options given must be the run's own)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other Config option, e.g. --set max_items=20 --set tie_embeddings=true "
        "(it wins over the named flags: --set lr=3e-4 and --lr 3e-4 are the same)",
    )
    args = p.parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        p.error(str(e))

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None or not (data_dir / "ml-100k" / "u.data").is_file():
        print(
            "ML-100k not found: set KP4SR_DATA to a folder with ml-100k/ (and ml-100k-freebase/) "
            "or pass --data-dir",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, results = {}, []
    named = config_options(args, data_dir)
    for name in args.variants.split(","):
        cfg = Config(**{**named, **overrides, **VARIANTS[name]})
        t0 = time.perf_counter()
        run = out / name
        if args.resume and (run / "config.json").is_file():
            # Options added since the run began are read as their defaults.
            saved = Config.from_dict(json.loads((run / "config.json").read_text())).__dict__
            changed = {k for k, v in cfg.__dict__.items() if k != "data_dir" and saved[k] != v}
            if changed:
                p.error(f"--resume: {run} was started with other {', '.join(sorted(changed))}")
            res = resume(run, progress=True)
        else:
            rec = KP4SR.create(cfg)
            if args.quick:
                rec.split.valid[:] = rec.split.valid[:200]
            res = fit(rec, run, progress=True)
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        res.update(model=name, config=cfg.__dict__, machine=machine())
        results.append(res)
        rows[name] = {**res["test"], "train s": res["train_seconds"]}
        rows[name]["best epoch"] = res["best_epoch"]
        rows[name]["valid NDCG@10"] = res["valid"]["NDCG@10"]
        (out / "results.json").write_text(json.dumps(results, indent=2))
    keys = ("valid NDCG@10", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "users", "train s")
    keys += ("best epoch",)
    command = "python " + " ".join(sys.argv)
    print(
        write_report(
            out,
            "KP4SR on ML-100k + Freebase (test split, leave-one-out)",
            format_table(rows, keys),
            command,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
