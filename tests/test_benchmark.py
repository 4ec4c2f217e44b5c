"""``kp4sr benchmark --quick`` on toy: every model, the result files, the table."""

from __future__ import annotations

import json

from kp4sr.benchmark import MODELS, summary_table
from kp4sr.cli import main


def test_quick_benchmark_on_toy(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--dataset", "toy", "--out", str(out), "--quick", "--quiet"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == list(MODELS)
    for r in rows:
        assert r["seed"] == 0 and r["users"] == 300
        assert {"HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "train_seconds"} <= set(r)
        assert 0.0 <= r["NDCG@10"] <= r["HR@10"] <= 1.0
    assert (out / "results.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in MODELS)
    printed = capsys.readouterr().out
    assert "| kp4sr |" in printed


def test_summary_table_mean_and_std():
    rows = [
        {
            "model": "a",
            "seed": s,
            "train_seconds": 1.0,
            **{k: v for k in ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")},
        }
        for s, v in enumerate((0.1, 0.3))
    ]
    table = summary_table(rows)
    assert "| a | 2 | 0.2000 ± 0.1414 |" in table


def test_benchmark_scripts_run(tmp_path):
    """Regression: a duplicated option once made benchmarks/ml100k.py fail before it started."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    for script in ("ml100k.py", "baselines.py"):
        done = subprocess.run([sys.executable, str(root / script), "--help"], capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
    out = tmp_path / "bl"
    args = [sys.executable, str(root / "baselines.py"), "--dataset", "toy", "--models", "pop"]
    done = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| pop |" in (out / "results.md").read_text() and "Machine:" in done.stdout
