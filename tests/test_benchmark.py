"""``kp4sr benchmark --quick`` on toy: every model, the result files, the table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kp4sr.benchmark import default_models, machine, summary_table
from kp4sr.cli import main
from kp4sr.errors import ConfigError
from kp4sr.evaluation import metrics


def test_quick_benchmark_on_toy(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["benchmark", "--dataset", "toy", "--out", str(out), "--quick", "--quiet"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == list(default_models(""))
    assert "kp4sr-no-prompts" not in [r["model"] for r in rows]  # only with --item-knowledge
    for r in rows:
        assert r["seed"] == 0 and r["users"] == 300
        assert {"HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "train_seconds"} <= set(r)
        assert 0.0 <= r["NDCG@10"] <= r["HR@10"] <= 1.0
    assert (out / "results.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert all(f"| {m} |" in md for m in default_models(""))
    printed = capsys.readouterr().out
    assert "| kp4sr |" in printed
    # every model's run keeps its validation curve: the baselines' per-epoch log, KP4SR's metrics
    for name in ("gru4rec", "sasrec", "bert4rec"):
        saved = json.loads((out / f"{name}-seed0" / f"{name}.json").read_text())
        log = saved["log"]
        assert [e["epoch"] for e in log] == [1, 2, 3] and "NDCG@10" in log[0]["valid"]
        assert saved["train_positions"] > 0  # samples per epoch, for curves by samples seen
    assert (out / "kp4sr-seed0" / "metrics.jsonl").is_file()
    # per-user ranks of every model, whose metrics are the table's: paired comparisons
    for r in rows:
        ranks = json.loads((out / f"{r['model']}-seed0" / "ranks.json").read_text())
        again = metrics(np.array(ranks["test"]["ranks"]))
        assert again["NDCG@10"] == pytest.approx(r["NDCG@10"]) and again["users"] == 300
    compare = _load_script("compare.py").main
    a, b = out / "sasrec-seed0", out / "pop-seed0"
    assert compare([str(a), str(b), "--json", "--draws", "200"]) == 0


def test_benchmark_with_item_knowledge(tmp_path):
    """``--item-knowledge``: the neural baselines and KP4SR get the KG vectors, the row
    ``kp4sr-no-prompts`` has them without knowledge prompts, and ``kp4sr-no-knowledge`` stays
    free of the KG (it measures what the knowledge adds at all); the no-prompts row without the
    vectors is refused, as it would repeat kp4sr-no-knowledge."""
    from kp4sr.benchmark import run_benchmark
    from kp4sr.recommender import Config
    from kp4sr.toy import generate

    out = tmp_path / "bench"
    argv = ["benchmark", "--dataset", "toy", "--out", str(out), "--quick", "--quiet"]
    models = "sasrec,kp4sr-no-knowledge,kp4sr-no-prompts"
    assert main([*argv, "--models", models, "--item-knowledge", "all"]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in rows] == models.split(",")
    saved = json.loads((out / "sasrec-seed0" / "sasrec.json").read_text())
    assert saved["config"]["item_knowledge"] == "all"
    config = {
        m: json.loads((out / f"{m}-seed0" / "config.json").read_text())
        for m in ("kp4sr-no-knowledge", "kp4sr-no-prompts")
    }
    assert config["kp4sr-no-knowledge"]["item_knowledge"] == ""
    assert not config["kp4sr-no-knowledge"]["knowledge"]
    assert config["kp4sr-no-prompts"]["item_knowledge"] == "all"
    assert not config["kp4sr-no-prompts"]["knowledge"]
    assert "kp4sr-no-prompts" in default_models("all")
    with pytest.raises(ConfigError, match="needs --item-knowledge"):
        run_benchmark(generate(), Config(), tmp_path / "x", models=("kp4sr-no-prompts",))


def test_benchmark_tunes_eval_max_items_on_validation_for_every_model(tmp_path, capsys):
    """``--tune-eval-max-items``: each model's row names what it ranks from — the last k items
    (k = 1..5) or the mixture over those windows — the best on validation NDCG@10 (ties: the
    later candidate, all five items last), its ranks.json is the row's, and a KP4SR run folder
    keeps the choice in config.json, so it ranks and serves with it."""
    from kp4sr.recommender import KP4SR

    out = tmp_path / "bench"
    argv = ["benchmark", "--dataset", "toy", "--out", str(out), "--quick", "--quiet"]
    assert main([*argv, "--models", "sasrec,kp4sr", "--tune-eval-max-items"]) == 0
    rows = json.loads((out / "results.json").read_text())
    order = ["windows", "1", "2", "3", "4", "5"]
    for r in rows:
        folder = out / f"{r['model']}-seed0"
        saved = folder / ("sasrec.json" if r["model"] == "sasrec" else "eval_max_items.json")
        by = json.loads(saved.read_text())["valid_NDCG@10_by_eval_max_items"]
        assert list(by) == order
        assert str(r["eval_max_items"]) == max(order, key=lambda c: (by[c], order.index(c)))
        assert r["valid"]["NDCG@10"] == pytest.approx(by[str(r["eval_max_items"])])
        ranks = json.loads((folder / "ranks.json").read_text())
        assert metrics(np.array(ranks["test"]["ranks"]))["NDCG@10"] == pytest.approx(r["NDCG@10"])
    kp = next(r for r in rows if r["model"] == "kp4sr")
    rec = KP4SR.from_pretrained(out / "kp4sr-seed0")
    windows = kp["eval_max_items"] == "windows"
    assert rec.config.eval_windows == windows
    assert rec.config.eval_max_items == (0 if windows else kp["eval_max_items"])
    assert rec.evaluate("test")["NDCG@10"] == pytest.approx(kp["NDCG@10"])
    assert (out / "kp4sr-seed0" / "ranks-all-items.json").is_file()
    assert "chosen on validation per seed: sasrec" in (out / "results.md").read_text()


def test_paired_comparison_of_per_user_ranks(tmp_path, capsys):
    """benchmarks/compare.py: per-user metrics average to kp4sr's own; a large paired gain is
    significant with an interval around it, no difference gives p = 1, and rank files of
    different users are refused."""
    compare = _load_script("compare.py")
    rng = np.random.default_rng(0)
    ranks = rng.integers(-1, 25, size=500)
    for m in ("NDCG@10", "HR@5", "MRR"):
        assert compare.per_user(ranks, m).mean() == pytest.approx(metrics(ranks)[m])
    users = [f"u{k}" for k in range(500)]
    better = np.where(rng.random(500) < 0.3, 0, ranks)  # 30% of users get their target first
    files = {}
    for name, r in (("a", better), ("b", ranks), ("c", ranks)):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps({"test": {"users": users, "ranks": r.tolist()}}))
    assert compare.main([str(files["a"]), str(files["b"]), "--json", "--draws", "2000"]) == 0
    res = json.loads(capsys.readouterr().out)["NDCG@10"]
    assert res["diff"] > 0.1 and res["low"] > 0 and res["p"] < 0.001
    assert compare.main([str(files["b"]), str(files["c"]), "--json", "--draws", "500"]) == 0
    same = json.loads(capsys.readouterr().out)["HR@10"]
    assert same["diff"] == 0 and same["p"] == 1.0
    capsys.readouterr()
    with pytest.raises(SystemExit):  # a metric that does not exist: a usage error
        compare.main([str(files["a"]), str(files["b"]), "--metrics", "AUC"])
    assert "unknown metric 'AUC'" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"test": {"users": users[:-1], "ranks": ranks[:-1].tolist()}}))
    with pytest.raises(SystemExit, match="different users"):
        compare.main([str(files["a"]), str(other)])
    with pytest.raises(SystemExit, match="different users"):
        compare.main([f"{files['a']},{other}", str(files["b"])])
    # seeds pooled per side: each user's metric is the mean over that side's runs
    pooled = f"{files['a']},{files['b']}"
    assert compare.main([pooled, str(files["c"]), "--json", "--draws", "500"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["seeds_a"], res["seeds_b"]) == (2, 1)
    mean_a = (metrics(better)["NDCG@10"] + metrics(ranks)["NDCG@10"]) / 2
    assert res["NDCG@10"]["a"] == pytest.approx(mean_a)
    assert res["NDCG@10"]["diff"] == pytest.approx(mean_a - metrics(ranks)["NDCG@10"])


def test_standing_table_of_seeds_against_one_reference(tmp_path, capsys):
    """benchmarks/standing.py: a row's score is the mean over its seeds, its difference to the
    reference is the pooled paired one (large and significant for a clearly better model, zero
    for the reference itself), and unknown references or runs of other users are refused."""
    standing = _load_script("standing.py")
    rng = np.random.default_rng(1)
    users = [f"u{k}" for k in range(400)]
    base = {s: rng.integers(-1, 30, size=400) for s in ("valid", "test")}

    def write(name: str, ranks: dict[str, np.ndarray], who: list[str] = users) -> str:
        path = tmp_path / f"{name}.json"
        splits = {s: {"users": who, "ranks": r[: len(who)].tolist()} for s, r in ranks.items()}
        path.write_text(json.dumps(splits))
        return str(path)

    better = {s: np.where(rng.random(400) < 0.4, 0, r) for s, r in base.items()}
    ref = write("ref", base)
    good = [write("good0", better), write("good1", base)]
    out = tmp_path / "out"
    args = [f"ref={ref}", f"good={','.join(good)}", "--against", "ref", "--draws", "500"]
    assert standing.main([*args, "--out", str(out)]) == 0
    rows = json.loads((out / "standing.json").read_text())["rows"]
    ref_row, good_row = rows
    assert ref_row["test diff"] == 0 and ref_row["test NDCG@10 std"] is None
    mean = (metrics(better["test"])["NDCG@10"] + metrics(base["test"])["NDCG@10"]) / 2
    assert good_row["test NDCG@10"] == pytest.approx(mean)
    assert good_row["test diff"] == pytest.approx(mean - metrics(base["test"])["NDCG@10"])
    assert good_row["test diff"] > 0.05 and good_row["test p"] < 0.01
    assert good_row["seeds"] == 2 and good_row["test NDCG@10 std"] > 0
    table = (out / "standing.md").read_text()
    assert "| ref | 1 |" in table and "| good | 2 |" in table and "test − ref (p)" in table
    assert table in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not one of the models"):
        standing.main([f"ref={ref}", "--against", "sasrec"])
    with pytest.raises(SystemExit, match="other users"):
        standing.main([f"ref={ref}", f"few={write('few', base, users[:-1])}", "--against", "ref"])
    with pytest.raises(SystemExit, match="NAME=RUN"):
        standing.main(["ref", "--against", "ref"])


def test_ml100k_standing_script_names_committed_rank_files():
    """benchmarks/ml100k_standing.sh builds the README's table from rank files in the repository:
    every run it names must be committed, so the table stays one command away."""
    import re

    root = Path(__file__).resolve().parents[1]
    script = (root / "benchmarks" / "ml100k_standing.sh").read_text()
    runs = re.findall(r"ml100k-try\d+-[\w-]+", script)
    assert len(runs) >= 15
    missing = [
        r for r in runs if not (root / "benchmarks" / "results" / r / "ranks.json").is_file()
    ]
    assert not missing, missing


def test_metric_by_target_popularity():
    """benchmarks/popularity.py: quantile groups by training count, and a model that only ever
    finds popular targets scores in the top group alone; a user without a rank is refused."""
    pop = _load_script("popularity.py")
    counts = np.arange(100)
    groups, edges = pop.bucket_of(counts, 4)
    assert np.bincount(groups).tolist() == [25, 25, 25, 25] and edges[[0, -1]].tolist() == [0, 99]
    assert groups[0] == 0 and groups[-1] == 3 and np.all(np.diff(groups) >= 0)
    keys = {f"u{k}": float(k) for k in range(100)}  # user u<k>'s target has count k
    users = sorted(keys)
    groups, labels = pop.quantile_groups(keys, users, 4)
    popular_only = {f"u{k}": (0 if k >= 75 else -1) for k in range(100)}
    table = pop.table({"m": [popular_only]}, users, groups, labels, "HR@10")
    assert "| m | 0.2500 | 0.0000 | 0.0000 | 0.0000 | 1.0000 |" in table
    # two seeds: each user scores the mean of the two runs
    half = {f"u{k}": (0 if k >= 50 else -1) for k in range(100)}
    table = pop.table({"m": [popular_only, half]}, users, groups, labels, "HR@10")
    assert "| m | 0.3750 | 0.0000 | 0.0000 | 0.5000 | 1.0000 |" in table
    # --against: each other model minus the reference, per group, with a permutation p
    table = pop.table(
        {"m": [popular_only], "h": [half]}, users, groups, labels, "HR@10", "h", draws=200
    )
    assert "| m | -0.2500 (0.00) | +0.0000 (1.00) | +0.0000 (1.00) | -1.0000 (" in table
    assert "| h |" not in table.split("minus h")[1]
    with pytest.raises(SystemExit, match="not one of the models"):
        pop.table({"m": [half]}, users, groups, labels, "HR@10", "sasrec")
    with pytest.raises(SystemExit, match="no rank for 1 users"):
        pop.table({"m": [{u: 0 for u in users[1:]}]}, users, groups, labels, "HR@10")


def test_metric_by_kg_link_on_toy(tmp_path, capsys):
    """popularity.py --by kg: a user is in the first relation set through which the target
    shares a KG tail with a history item (checked against a plain set intersection per user),
    else in ``none``; main prints the groups of a real split."""
    import json

    from kp4sr.data import DataOptions, item_attributes, leave_one_out, load_dataset

    pop = _load_script("popularity.py")
    ds = load_dataset("toy", None, DataOptions(min_user=0, min_item=0))  # main's defaults
    samples = leave_one_out(ds, 5).test
    sets = ["directed_by", "genre"]
    link = pop.kg_link(ds, samples, sets)
    attrs = []
    for rel in sets:
        off, val, _ = item_attributes(ds, rel)
        attrs.append([set(val[off[i] : off[i + 1]].tolist()) for i in range(len(ds.items))])
    expect = []
    for s in samples:
        hits = [
            g for g, a in enumerate(attrs) if a[s.target] & set().union(*(a[h] for h in s.history))
        ]
        expect.append(hits[0] if hits else len(sets))
    assert link.tolist() == expect
    assert 0 < np.sum(link == 0) < len(samples)  # toy users follow directors, not always
    users = [ds.users[s.user] for s in samples]
    first = np.where(link == 0, 0, -1)  # a model that finds only the director-linked targets
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"test": {"users": users, "ranks": first.tolist()}}))
    argv = ["--by", "kg", "--dataset", "toy", "--kg-groups", "directed_by;genre", f"m={ranks}"]
    assert pop.main(argv) == 0
    out = capsys.readouterr().out
    assert f"| directed_by ({int(np.sum(link == 0))}) |" in out
    assert "| m |" in out and "| 1.0000 | 0.0000 | 0.0000 |" in out
    with pytest.raises(SystemExit):  # an unknown relation is a usage error naming it
        pop.main(["--by", "kg", "--dataset", "toy", "--kg-groups", "film.actor", f"m={ranks}"])
    assert "unknown relation(s) film.actor" in capsys.readouterr().err


def test_metric_by_history_length_on_toy(tmp_path, capsys):
    """popularity.py --by history groups the users of a real split by how many interactions they
    had before the target; a run ranking every target first scores 1 in every group."""
    import json

    from kp4sr.data import DataOptions, leave_one_out, load_dataset

    pop = _load_script("popularity.py")
    ds = load_dataset("toy", None, DataOptions(kg="none"))
    users = [ds.users[s.user] for s in leave_one_out(ds, 5).test]
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"test": {"users": users, "ranks": [0] * len(users)}}))
    assert pop.main(["--by", "history", "--dataset", "toy", "--buckets", "2", f"m={ranks}"]) == 0
    out = capsys.readouterr().out
    assert "number of interactions before the target" in out
    assert "| m | 1.0000 | 1.0000 | 1.0000 |" in out and f"all ({len(users)})" in out


def test_logit_adjustment_ranks_and_sweep():
    """benchmarks/logit_adjust.py: α = 0 keeps the model's ranking, a penalty on the popular
    item lifts the rest, seen items never count, and the table bolds the α valid chose."""
    la = _load_script("logit_adjust.py")
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    seen = np.array([[False] * 4, [False, True, False, False]])
    targets = np.array([1, 2])
    none = np.zeros(4)
    assert la.adjusted_ranks(scores, seen, targets, none).tolist() == [1, 1]  # item 1 seen
    popular = np.array([5.0, 0.0, 0.0, 0.0])  # item 0 pushed below everything
    assert la.adjusted_ranks(scores, seen, targets, popular).tolist() == [0, 0]
    assert la.adjusted_ranks(scores, seen, targets, none, k=1).tolist() == [-1, -1]
    counts = np.array([np.e**5 - 1, 0.0, 0.0, 0.0])  # log1p = 5 for item 0
    split = {"valid": scores}
    rows = la.sweep(split, {"valid": seen}, {"valid": targets}, counts, (0.0, 1.0))
    assert rows[0]["valid HR@10"] == 1.0 and rows[1]["valid NDCG@10"] == 1.0
    assert rows[0]["valid NDCG@10"] == pytest.approx(1 / np.log2(3))
    assert "| **1** | 1.0000 | 1.0000 |" in la.table("m", rows)


def test_recent_items_sweep_picks_k_on_validation_only():
    """benchmarks/recent_items.py: every candidate (the window mixture, then k = 1..max_items)
    is ranked on both splits, the best on validation NDCG@10 is chosen whatever test says, and a
    tie goes to the later candidate (all items last)."""
    ri = _load_script("recent_items.py")
    valid = {"windows": [3, 3], 1: [5, 5], 2: [0, 0], 3: [0, 9]}  # 0-based ranks per user
    test = {"windows": [0, 0], 1: [0, 0], 2: [5, 5], 3: [9, 9]}

    def at(k, split):
        return np.array((valid if split == "valid" else test)[k])

    scores, ranks, best = ri.sweep(at, 3)
    assert best == 2 and list(scores) == ["windows", 1, 2, 3]  # not 1, which test would pick
    assert scores[2]["valid"]["NDCG@10"] == 1.0 and ranks[2]["test"].tolist() == [5, 5]
    _, _, tie = ri.sweep(lambda k, s: np.array([0, 0]), 3)
    assert tie == 3
    only_k, _, _ = ri.sweep(at, 3, windows=False)
    assert list(only_k) == [1, 2, 3]


def test_recent_items_on_a_toy_baseline(tmp_path):
    """End to end on toy with Pop (which ignores the history, so every k scores the same)."""
    ri = _load_script("recent_items.py")
    out = tmp_path / "r"
    argv = ["--baseline", "pop", "--dataset", "toy", "--max-items", "3", "--out", str(out)]
    assert ri.main(argv) == 0
    rec = json.loads((out / "recent.json").read_text())
    assert rec["chosen"] == 3 and list(rec["by_k"]) == ["windows", "1", "2", "3"]
    assert len({json.dumps(v) for v in rec["by_k"].values()}) == 1
    ranks = json.loads((out / "ranks.json").read_text())
    assert metrics(np.array(ranks["test"]["ranks"])) == rec["by_k"]["3"]["test"]
    v = rec["by_k"]["3"]["valid"]["NDCG@10"]
    assert f"| k=3 (chosen) | {v:.4f} |" in (out / "results.md").read_text()


def test_history_order_changes_only_the_order_of_the_items_read():
    """benchmarks/history_order.py: the read items are reversed or shuffled, the rest and the
    item set stay; a ranker that hits only when the newest item is last loses under reversed."""
    ho = _load_script("history_order.py")
    rng = np.random.default_rng(0)
    h = np.array([1, 2, 3, 4, 5])
    assert ho.reorder(h, 0, "kept", rng).tolist() == [1, 2, 3, 4, 5]
    assert ho.reorder(h, 0, "reversed", rng).tolist() == [5, 4, 3, 2, 1]
    assert ho.reorder(h, 3, "reversed", rng).tolist() == [1, 2, 5, 4, 3]
    assert ho.reorder(h, 9, "reversed", rng).tolist() == [5, 4, 3, 2, 1]
    shuffled = [tuple(ho.reorder(h, 4, "shuffled", rng).tolist()) for _ in range(50)]
    assert all(s[0] == 1 and sorted(s) == [1, 2, 3, 4, 5] for s in shuffled)
    assert len(set(shuffled)) > 1
    with pytest.raises(ValueError, match="unknown order"):
        ho.reorder(h, 0, "sorted", rng)

    from kp4sr.data import Sample

    samples = [Sample(user=u, history=np.arange(u, u + 5), target=u, position=5) for u in range(40)]

    def ranks(xs):  # rank 0 when the history's newest item (the largest here) comes last
        return np.array([0 if x.history[-1] == x.history.max() else 15 for x in xs])

    result = ho.measure((ranks, 0, {"valid": samples, "test": samples}), seed=0, draws=200)
    assert result["test"]["kept"]["NDCG@10"] == 1.0 and result["test"]["reversed"]["HR@10"] == 0
    d = result["test"]["reversed"]["vs kept"]["NDCG@10"]
    assert d["diff"] == -1.0 and d["p"] < 0.01
    assert 0 < result["valid"]["shuffled"]["HR@10"] < 1
    assert "| reversed |" in ho.table(result) and "| -1.0000 (0.0" in ho.table(result)


def test_history_order_on_a_toy_baseline(tmp_path):
    """End to end on toy with Pop, which ignores the history: every order scores the same."""
    ho = _load_script("history_order.py")
    out = tmp_path / "o"
    argv = ["--baseline", "pop", "--dataset", "toy", "--out", str(out), "--draws", "100"]
    assert ho.main(argv) == 0
    got = json.loads((out / "order.json").read_text())
    for split in ("valid", "test"):
        kept = got[split]["kept"]["NDCG@10"]
        assert got[split]["reversed"]["NDCG@10"] == kept == got[split]["shuffled"]["NDCG@10"]
        assert got[split]["shuffled"]["vs kept"]["HR@10"]["diff"] == 0
    assert "| kept |" in (out / "results.md").read_text()


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
    scripts = ("ml100k.py", "baselines.py", "determinism.py", "merge_results.py", "precision.py")
    more = ("curves.py", "prompt_stats.py", "compare.py", "popularity.py", "logit_adjust.py")
    more = (*more, "recent_items.py", "history_order.py", "standing.py")
    for script in (*scripts, *more):
        done = subprocess.run([sys.executable, str(root / script), "--help"], capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
    out = tmp_path / "bl"
    args = [sys.executable, str(root / "baselines.py"), "--dataset", "toy", "--models", "pop"]
    done = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| pop |" in (out / "results.md").read_text() and "Machine:" in done.stdout


def _load_script(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / name
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ml100k_set_parses_config_types():
    parse = _load_script("ml100k.py").parse_overrides
    got = parse(["max_items=20", "tie_embeddings=true", "lr=3e-3", "kg=freebase", "device=cuda"])
    assert got == {
        "max_items": 20,
        "tie_embeddings": True,
        "lr": 0.003,
        "kg": "freebase",
        "device": "cuda",
    }
    import pytest

    for bad in ("nonsense=1", "max_items", "tie_embeddings=maybe"):
        with pytest.raises(ValueError, match="--set"):
            parse([bad])


def test_ml100k_set_wins_over_the_named_flags():
    """Regression: ``--lr 1e-3 --set lr=3e-4`` once crashed with a TypeError from Config."""
    import argparse

    from kp4sr.recommender import Config

    script = _load_script("ml100k.py")
    flags = dict(epochs=2, samples_per_epoch=10, max_length=64, degree=3, hop=2)
    flags |= dict(backbone="tiny", item_tokens="single", lr=1e-3, batch_size=8, seed=0)
    flags |= dict(patience=1, min_user=0, min_item=0)
    named = script.config_options(argparse.Namespace(**flags), Path("data"))
    cfg = Config(**{**named, **script.parse_overrides(["lr=3e-4", "eval_every=2"])})
    assert cfg.lr == 3e-4 and cfg.eval_every == 2 and cfg.batch_size == 8


def test_merge_results_from_two_machines(tmp_path):
    merge = _load_script("merge_results.py")
    keys = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")
    bench = [
        {
            "model": "sasrec",
            "seed": s,
            "train_seconds": 5.0,
            "machine": "cpu box",
            **dict.fromkeys(keys, 0.1),
        }
        for s in (0, 1)
    ]
    (tmp_path / "a.json").write_text(json.dumps(bench))
    run = tmp_path / "runs" / "no-knowledge-seed1"
    run.mkdir(parents=True)
    res = {
        "model": "no-knowledge",
        "config": {"seed": 1},
        "test": dict.fromkeys(keys, 0.2),
        "valid": {"NDCG@10": 0.3},
        "train_seconds": 9.0,
        "best_epoch": 2,
        "machine": "gpu box",
    }
    (run / "results.json").write_text(json.dumps([res]))
    out = tmp_path / "merged"
    args = ["--inputs", str(tmp_path / "a.json"), "--ml100k-runs", str(tmp_path / "runs")]
    assert merge.main([*args, "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("sasrec", 0),
        ("sasrec", 1),
        ("kp4sr-no-knowledge", 1),
    ]
    md = (out / "results.md").read_text()
    assert "- sasrec: cpu box" in md and "- kp4sr-no-knowledge: gpu box" in md
    assert "| kp4sr-no-knowledge | 1 | 0.2000 |" in md


def test_merge_results_recovers_rows_from_printed_logs(tmp_path):
    """When only a remote run's logs come back, its rows are read from the printed tables."""
    merge = _load_script("merge_results.py")
    log = "\n".join(
        [
            "epoch 2: loss 3.4  valid HR@10 0.06  NDCG@10 0.03",
            "| | HR@5 | HR@10 | HR@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR | users |",
            "|---|---|---|---|---|---|---|---|---|",
            "| valid | 0.1 | 0.2 | 0.3 | 0.05 | 0.06 | 0.07 | 0.04 | 943 |",
            "| test | 0.11 | 0.21 | 0.31 | 0.051 | 0.061 | 0.071 | 0.041 | 943 |",
            "| | valid NDCG@10 | HR@5 | HR@10 | NDCG@5 | NDCG@10 | MRR | users | train s | best |",
            "| no-tree-mask | 0.06 | 0.11 | 0.21 | 0.051 | 0.061 | 0.041 | 943 | 12.5 | 4 |",
            "Machine: some GPU box",
            "Command: `python benchmarks/ml100k.py --variants no-tree-mask --seed 2`",
        ]
    )
    (tmp_path / "no-tree-mask-seed2.log").write_text(log)
    (tmp_path / "kp4sr-seed0.log").write_text("epoch 1: loss 9\n")  # died: no table, skipped
    rows = merge.rows_from_logs(tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert (row["model"], row["seed"], row["NDCG@10"], row["users"]) == (
        "kp4sr-no-tree-mask",
        2,
        0.061,
        943,
    )
    assert row["valid"]["NDCG@10"] == 0.06 and row["train_seconds"] == 12.5
    assert row["best_epoch"] == 4 and row["machine"] == "some GPU box"


def test_benchmark_seeds_start_at_the_config_seed(tmp_path):
    """``--seed 3 --seeds 2`` runs seeds 3 and 4, so seeds can be split across processes."""
    from kp4sr import toy
    from kp4sr.benchmark import run_benchmark
    from kp4sr.recommender import Config

    ds = toy.generate(seed=1, n_users=60, n_items=40)
    rows = run_benchmark(ds, Config(seed=3), tmp_path, seeds=2, models=("pop",), progress=False)
    assert [(r["model"], r["seed"]) for r in rows] == [("pop", 3), ("pop", 4)]
    assert all(r["machine"] for r in rows)


def test_curves_put_runs_on_one_axis_of_samples_seen(tmp_path):
    """benchmarks/curves.py: a KP4SR folder's validated epochs and a baseline's epochs, each
    at the number of training samples it had seen."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("curves", root / "benchmarks" / "curves.py")
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)
    run = tmp_path / "kp4sr"
    run.mkdir()
    (run / "results.json").write_text(json.dumps([{"config": {"samples_per_epoch": 500}}]))
    lines = [{"epoch": 1}, {"epoch": 2, "valid": {"NDCG@10": 0.25}}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    base = tmp_path / "sasrec.json"
    log = [{"epoch": e, "valid": {"NDCG@10": v}} for e, v in ((1, 0.1), (2, 0.2))]
    base.write_text(json.dumps({"train_positions": 300, "log": log}))
    out = tmp_path / "out"
    assert curves.main([f"kp4sr={run}", f"sasrec={base}", "--out", str(out)]) == 0
    md = (out / "curves.md").read_text()
    assert "| kp4sr | 1,000 | 0.2500 |" in md
    assert "| sasrec | 300 | 0.1000 |" in md and "| sasrec | 600 | 0.2000 |" in md


def test_ml100k_resume_continues_a_run_and_refuses_other_options(tmp_path, capsys):
    """``benchmarks/ml100k.py --resume``: a finished run is returned as it is, a run with other
    options is refused before anything trains. Needs the real ML-100k (skips without)."""
    from test_datasets import real_data

    data = real_data()
    main = _load_script("ml100k.py").main
    base = ["--data-dir", str(data), "--variants", "no-knowledge", "--samples-per-epoch", "64"]
    base += ["--max-length", "32", "--quick", "--set", "beams=2", "--out", str(tmp_path)]
    assert main([*base, "--epochs", "1"]) == 0
    first = json.loads((tmp_path / "results.json").read_text())[0]
    assert main([*base, "--epochs", "1", "--resume"]) == 0
    again = json.loads((tmp_path / "results.json").read_text())[0]
    assert again["test"] == first["test"] and again["best_epoch"] == 1
    # A run begun before an option existed has no key for it: it counts as the default.
    cfg_file = tmp_path / "no-knowledge" / "config.json"
    saved = json.loads(cfg_file.read_text())
    del saved["cross_attention"]
    cfg_file.write_text(json.dumps(saved))
    assert main([*base, "--epochs", "1", "--resume"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([*base, "--epochs", "2", "--resume"])
    assert "was started with other epochs" in capsys.readouterr().err


def test_prompt_stats_count_facts_per_hop_under_each_cap(tmp_path):
    """benchmarks/prompt_stats.py on toy: a tight cap keeps fewer facts than no cap, hop-2
    facts only where hop 2 is asked for, and the table names the relations."""
    mod = _load_script("prompt_stats.py")
    from kp4sr import toy
    from kp4sr.recommender import KP4SR, Config

    rec = KP4SR.create(
        Config(hop=2, degree=3, min_user=0, min_item=0), dataset=toy.generate(seed=0)
    )
    tight, loose = mod.stats(rec, 48, 2, 3), mod.stats(rec, 4096, 2, 3)
    assert tight["length"] <= 48 < loose["length"]
    assert tight["hop1"] + tight["hop2"] < loose["hop1"] + loose["hop2"] and loose["hop2"] > 0
    assert mod.stats(rec, 4096, 1, 3)["hop2"] == 0
    assert mod.main(["--dataset", "toy", "--max-lengths", "48", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "prompt_stats.md").read_text()
    assert "| 48 |" in table and "| none |" in table


@pytest.mark.parametrize("threads, words", [(1, " 1 thread, "), (2, " 2 threads, ")])
def test_machine_line_names_the_thread_count(threads, words):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        line = machine()
    finally:
        torch.set_num_threads(before)
    assert words in line and f"torch {torch.__version__}" in line


def test_benchmark_baselines_stop_early_not_at_an_epoch_cap(tmp_path, monkeypatch):
    """A full benchmark trains each baseline up to BaselineConfig's epochs, so validation
    (patience) ends it; a lower cap once cut SASRec off on ML-100k while it still improved."""
    from kp4sr import benchmark, toy
    from kp4sr.baselines import BaselineConfig
    from kp4sr.recommender import Config

    seen = []
    real = benchmark.run_baseline

    def spy(name, dataset, split, max_items, cfg, **kw):
        seen.append((cfg.epochs, cfg.patience, cfg.train_exclude_seen))
        return real(name, dataset, split, max_items, cfg, **kw)

    monkeypatch.setattr(benchmark, "run_baseline", spy)
    ds = toy.generate(seed=1, n_users=60, n_items=40)
    for folder, quick in (("full", False), ("quick", True)):
        benchmark.run_benchmark(
            ds, Config(), tmp_path / folder, quick=quick, models=("pop",), progress=False
        )
    assert seen == [(BaselineConfig().epochs, BaselineConfig().patience, False), (3, 5, False)]
    assert BaselineConfig().epochs >= 50
    # --train-exclude-seen reaches the baselines as well as KP4SR
    benchmark.run_benchmark(
        ds,
        Config(train_exclude_seen=True),
        tmp_path / "tes",
        quick=True,
        models=("pop",),
        progress=False,
    )
    assert seen[-1] == (3, 5, True)
