"""Where each model stands: one table of several models' seeds, each against one reference.

    python benchmarks/standing.py --against sasrec-kg \\
        sasrec=R/sasrec-s0,R/sasrec-s1 sasrec-kg=R/kg-s0,R/kg-s1 kp4sr=R/kp4sr-s0,R/kp4sr-s1 \\
        --out benchmarks/results/ml100k-standing

Each ``NAME=RUNS`` names a model and its runs (one per training seed, comma-separated), each a
KP4SR run folder or a ``ranks.json`` (as ``benchmarks/compare.py`` reads them). The table gives
per model the number of seeds, validation and test NDCG@10 and test HR@10 as the mean over seeds
(± their standard deviation where there are two or more), and the paired difference to the
``--against`` model on both splits with its permutation p-value (seeds pooled per user, as
``compare.py`` does). It exists so that the README's summary table is one command over the
committed rank files, not numbers copied by hand from many comparisons.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from kp4sr.evaluation import per_user

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import load_ranks, paired  # noqa: E402

SPLITS = ("valid", "test")


def parse_group(text: str) -> tuple[str, list[Path]]:
    """``NAME=RUN[,RUN...]`` -> the model's name and its runs, one per seed."""
    name, sep, runs = text.partition("=")
    paths = [Path(r) for r in runs.split(",") if r]
    if not sep or not name or not paths:
        raise SystemExit(f"{text!r}: expected NAME=RUN[,RUN...]")
    return name, paths


def seed_matrix(runs: list[Path], split: str, users: list[str]) -> np.ndarray:
    """Per-user ranks of every seed, in ``users``' order: [seeds, users]."""
    rows = []
    for run in runs:
        ranks = load_ranks(run, split)
        if set(ranks) != set(users):
            raise SystemExit(f"{run}: ranks other users than the first run ({split} split)")
        rows.append([ranks[u] for u in users])
    return np.array(rows)


def standing(
    groups: dict[str, list[Path]], against: str, draws: int = 10_000, seed: int = 0
) -> list[dict[str, object]]:
    """One row per model: its scores over seeds and its paired difference to ``against``."""
    if against not in groups:
        raise SystemExit(f"--against {against!r} is not one of the models: {', '.join(groups)}")
    first = next(iter(groups.values()))[0]
    users = {s: sorted(load_ranks(first, s)) for s in SPLITS}
    ranks = {
        name: {s: seed_matrix(runs, s, users[s]) for s in SPLITS} for name, runs in groups.items()
    }
    rows = []
    for name, by_split in ranks.items():
        row: dict[str, object] = {"model": name, "seeds": len(groups[name])}
        for split, metric in (("valid", "NDCG@10"), ("test", "NDCG@10"), ("test", "HR@10")):
            per_seed = np.array([per_user(r, metric).mean() for r in by_split[split]])
            row[f"{split} {metric}"] = float(per_seed.mean())
            row[f"{split} {metric} std"] = (
                float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None
            )
        for split in SPLITS:
            if name == against:  # no test against itself
                row[f"{split} diff"], row[f"{split} p"] = 0.0, 1.0
                continue
            a, b = (per_user(ranks[m][split], "NDCG@10").mean(axis=0) for m in (name, against))
            res = paired(a, b, draws, seed)
            row[f"{split} diff"], row[f"{split} p"] = float(res["diff"]), float(res["p"])
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, object]], against: str) -> str:
    """The table, with the reference named in the difference columns."""

    def score(row: dict[str, object], key: str) -> str:
        std = row[f"{key} std"]
        return f"{row[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")

    head = (
        f"| model | seeds | valid NDCG@10 | test NDCG@10 | test HR@10 | valid − {against} (p) "
        f"| test − {against} (p) |\n|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        diffs = [
            "—" if r["model"] == against else f"{r[f'{s} diff']:+.4f} ({r[f'{s} p']:.3f})"
            for s in SPLITS
        ]
        cells = [score(r, "valid NDCG@10"), score(r, "test NDCG@10"), score(r, "test HR@10")]
        lines.append(f"| {r['model']} | {r['seeds']} | {' | '.join(cells)} | {' | '.join(diffs)} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("groups", nargs="+", help="NAME=RUN[,RUN...] per model, in table order")
    p.add_argument("--against", required=True, help="the model every row is compared with")
    p.add_argument("--draws", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write standing.md and standing.json here")
    args = p.parse_args(argv)
    groups = dict(parse_group(g) for g in args.groups)
    rows = standing(groups, args.against, args.draws, args.seed)
    table = markdown(rows, args.against)
    print(table, end="")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        runs = {name: [str(r) for r in paths] for name, paths in groups.items()}
        (args.out / "standing.md").write_text(table)
        (args.out / "standing.json").write_text(json.dumps({"runs": runs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
