"""Validation NDCG@10 against training samples seen, for KP4SR runs and baselines side by side.

    python benchmarks/curves.py --out benchmarks/results/curves-ml100k \\
        sasrec=benchmarks/results/sasrec-curve-ml100k/sasrec-seed0.json \\
        kp4sr=benchmarks/results/ml100k-try8

Each ``LABEL=PATH`` is either a KP4SR result folder (``metrics.jsonl`` plus ``results.json`` or
``config.json`` for the samples per epoch) or a baseline's JSON as ``kp4sr benchmark`` writes it
(``DIR/<model>-seed<S>/<model>.json``: a ``log`` of epochs over all ``train_positions``). Writes
``OUT/curves.md`` (one row per evaluation) and, with matplotlib, ``OUT/curves.png``. The point:
compare models at the same number of training samples, not only at their end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def kp4sr_curve(folder: Path) -> list[tuple[int, float]]:
    """(samples seen, validation NDCG@10) at each validated epoch of a KP4SR run."""
    config = None
    for name in ("config.json", "results.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text())
            config = data[0]["config"] if isinstance(data, list) else data.get("config", data)
            break
    if config is None or not config.get("samples_per_epoch"):
        raise SystemExit(f"{folder}: no config with samples_per_epoch (config.json/results.json)")
    per_epoch = int(config["samples_per_epoch"])
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x]
    return [(r["epoch"] * per_epoch, r["valid"]["NDCG@10"]) for r in rows if "valid" in r]


def baseline_curve(path: Path) -> list[tuple[int, float]]:
    """(samples seen, validation NDCG@10) after each epoch of a baseline run."""
    data = json.loads(path.read_text())
    per_epoch = int(data["train_positions"])
    return [(e["epoch"] * per_epoch, e["valid"]["NDCG@10"]) for e in data["log"]]


def curve(path: Path) -> list[tuple[int, float]]:
    return kp4sr_curve(path) if path.is_dir() else baseline_curve(path)


def markdown(curves: dict[str, list[tuple[int, float]]]) -> str:
    lines = ["| model | samples seen | valid NDCG@10 |", "|---|---|---|"]
    for label, points in curves.items():
        lines += [f"| {label} | {n:,} | {v:.4f} |" for n, v in points]
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=120)
    for label, points in curves.items():
        ax.plot([n / 1e6 for n, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xlabel("training samples seen (millions)")
    ax.set_ylabel("validation NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    curves = {}
    for spec in args.runs:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).exists():
            p.error(f"{spec!r}: expected LABEL=PATH with an existing PATH")
        curves[label] = curve(Path(path))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(curves)
    command = "python benchmarks/curves.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "curves.md").write_text(
        "# Validation NDCG@10 against training samples\n\n" + table + f"\nCommand: `{command}`\n"
    )
    plot(curves, out / "curves.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
