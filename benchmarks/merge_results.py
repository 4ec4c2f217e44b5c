"""Merge benchmark rows from several runs (and machines) into one table.

    python benchmarks/merge_results.py --inputs A/results.json B/results.json --out DIR
    python benchmarks/merge_results.py --ml100k-runs /tmp/kp4sr-gpu-runs --out DIR

``--inputs``: files in the row format of ``kp4sr benchmark`` (one object per model and seed).
``--ml100k-runs``: a folder of ``benchmarks/ml100k.py`` output folders (one per variant and
seed, as ``benchmarks/gpu_ml100k.sh`` writes them); their variants become the rows
``kp4sr``, ``kp4sr-no-tree-mask`` and ``kp4sr-no-knowledge``. ``--logs``: a folder of those
runs' printed logs (``VARIANT-seedS.log``), for when only the logs came back from a remote
machine. Writes ``DIR/results.json``, ``DIR/results.md`` (mean ± std over seeds, with the
machine of each model) and ``DIR/results.png``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from kp4sr.benchmark import bar_chart, summary_markdown

ROW_NAME = {
    "kp4sr": "kp4sr",
    "no-tree-mask": "kp4sr-no-tree-mask",
    "no-knowledge": "kp4sr-no-knowledge",
}


def rows_from_ml100k(folder: Path) -> list[dict[str, Any]]:
    """Benchmark rows from ``benchmarks/ml100k.py`` result files under ``folder``."""
    rows = []
    for path in sorted(folder.glob("*/results.json")):
        for res in json.loads(path.read_text()):
            rows.append(
                {
                    "model": ROW_NAME.get(res["model"], res["model"]),
                    "seed": res["config"]["seed"],
                    **res["test"],
                    "train_seconds": res["train_seconds"],
                    "valid": res["valid"],
                    "best_epoch": res["best_epoch"],
                    "machine": res.get("machine", ""),
                    "config": res["config"],
                }
            )
    return rows


def rows_from_logs(folder: Path) -> list[dict[str, Any]]:
    """Benchmark rows from the printed output of ``benchmarks/ml100k.py`` runs, one log per run
    named ``VARIANT-seedS.log`` (what ``gpu_ml100k.sh`` keeps): for when only logs came back."""
    rows = []
    for log in sorted(folder.glob("*-seed*.log")):
        m = re.fullmatch(r"(.+)-seed(\d+)\.log", log.name)
        if m is None:
            continue
        variant, seed = m.group(1), int(m.group(2))
        head: list[str] = []
        tables: dict[str, dict[str, float]] = {}
        row: dict[str, Any] = {"model": ROW_NAME.get(variant, variant), "seed": seed}
        for line in log.read_text(errors="replace").replace("\r", "\n").splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| | HR@5"):
                head = cells[1:]
            elif head and cells[0] in ("valid", "test"):
                tables[cells[0]] = {k: float(v) for k, v in zip(head, cells[1:])}
            elif line.startswith(f"| {variant} |"):
                row["train_seconds"], row["best_epoch"] = float(cells[-2]), int(cells[-1])
            elif line.startswith("Machine:"):
                row["machine"] = line.split(":", 1)[1].strip()
            elif line.startswith("Command:"):
                row["command"] = line.split("`")[1]
        if "test" not in tables or "train_seconds" not in row:
            print(f"{log}: no result table (the run did not finish)", file=sys.stderr)
            continue
        test = {**tables["test"], "users": int(tables["test"]["users"])}
        rows.append({**row, **test, "valid": tables["valid"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--inputs", nargs="*", default=[], help="results.json files of kp4sr benchmark")
    p.add_argument("--ml100k-runs", default=None, help="folder of benchmarks/ml100k.py outputs")
    p.add_argument("--logs", default=None, help="folder of ml100k.py logs (VARIANT-seedS.log)")
    p.add_argument("--dataset", default="ml-100k")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for f in args.inputs:
        rows += json.loads(Path(f).read_text())
    if args.ml100k_runs:
        rows += rows_from_ml100k(Path(args.ml100k_runs))
    if args.logs:
        rows += rows_from_logs(Path(args.logs))
    if not rows:
        print("no result rows found", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    text = summary_markdown(rows, args.dataset, "python " + " ".join(sys.argv))
    (out / "results.md").write_text(text)
    bar_chart(rows, out / "results.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
