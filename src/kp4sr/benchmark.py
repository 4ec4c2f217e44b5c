"""``kp4sr benchmark``: every model on one dataset, same split, same metrics, several seeds.

Rows: ``pop``, ``gru4rec``, ``sasrec``, ``bert4rec`` (see :mod:`kp4sr.baselines`),
``kp4sr-no-knowledge`` (MPP only, the P5-style model), ``kp4sr-no-tree-mask`` and ``kp4sr``.
With ``item_knowledge`` (``--item-knowledge``) every model but ``pop`` and
``kp4sr-no-knowledge`` gets the KG in its item vectors, and the row ``kp4sr-no-prompts`` (the
vectors without knowledge prompts) shows what the prompts add on top of them;
``kp4sr-no-knowledge`` stays free of the KG, so that it measures what the knowledge adds at all.
Writes ``OUT/results.json`` (one object per model and seed: ``model``, ``seed``, the test metrics
with the keys of ``kp4sr evaluate --json``, ``train_seconds`` and the validation metrics),
``OUT/results.md`` (mean ± std over seeds) and ``OUT/results.png`` (a bar chart).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from kp4sr.baselines import BASELINES, BaselineConfig, run_baseline, set_recent
from kp4sr.data import Dataset, leave_one_out
from kp4sr.errors import ConfigError
from kp4sr.evaluation import RANKS_FILE, choose_recent, metrics, ranks_json
from kp4sr.recommender import KP4SR, Config

KP4SR_VARIANTS = {
    "kp4sr-no-knowledge": {"knowledge": False, "item_knowledge": ""},
    "kp4sr-no-prompts": {"knowledge": False},  # only with item_knowledge: the vectors alone
    "kp4sr-no-tree-mask": {"tree_mask": False},
    "kp4sr": {},
}
MODELS = (*BASELINES, *KP4SR_VARIANTS)


def default_models(item_knowledge: str) -> tuple[str, ...]:
    """Every model; ``kp4sr-no-prompts`` only when the KG is in the item vectors (without
    them it would be ``kp4sr-no-knowledge`` again)."""
    return tuple(m for m in MODELS if item_knowledge or m != "kp4sr-no-prompts")


SHOWN = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")

# what a 2-core CPU affords: ``quick`` for a smoke run on toy, the other for ML-100k-sized data
QUICK = {"epochs": 1, "samples_per_epoch": 512, "max_length": 64, "degree": 2}
FULL = {"epochs": 4, "samples_per_epoch": 30000, "max_length": 128, "degree": 3}


def run_benchmark(
    dataset: Dataset,
    base: Config,
    out: Path,
    seeds: int = 1,
    quick: bool = False,
    models: tuple[str, ...] | None = None,
    progress: bool = True,
    tune_recent: bool = False,
) -> list[dict[str, Any]]:
    """Train and evaluate every model for every seed; write and return the result rows.

    ``tune_recent``: every model, baselines included, then ranks from its last k history items
    or their window mixture, as its own validation NDCG@10 prefers (``eval_max_items`` in each
    row: k or ``"windows"``). ``models``: default :func:`default_models`."""
    models = default_models(base.item_knowledge) if models is None else models
    if "kp4sr-no-prompts" in models and not base.item_knowledge:
        raise ConfigError(
            "kp4sr-no-prompts needs --item-knowledge: without the KG vectors it is "
            "kp4sr-no-knowledge"
        )
    unknown = set(models) - set(MODELS)
    if unknown:
        raise ConfigError(f"unknown model(s) {', '.join(sorted(unknown))}: expected {MODELS}")
    out.mkdir(parents=True, exist_ok=True)
    split = leave_one_out(dataset, base.max_items)
    rows: list[dict[str, Any]] = []
    for seed in range(base.seed, base.seed + seeds):  # --seed S --seeds N: S..S+N-1
        for name in models:
            if name in BASELINES:
                # up to BaselineConfig's epochs (50): early stopping on validation ends the run,
                # not an epoch cap (SASRec on ML-100k still improves after epoch 30)
                # --train-exclude-seen goes to every model, baselines included: a fair table
                cfg = BaselineConfig(
                    seed=seed,
                    train_exclude_seen=base.train_exclude_seen,
                    item_knowledge=base.item_knowledge,
                    **({"epochs": 3} if quick else {}),
                )
                # DIR/<model>-seed<S>/<model>.json keeps the per-epoch validation curve
                run = out / f"{name}-seed{seed}"
                res = run_baseline(
                    name, dataset, split, base.max_items, cfg, out=run, tune_recent=tune_recent
                )
                row = {"model": name, "seed": seed, **res["test"]}
                row.update(train_seconds=res["train_seconds"], valid=res["valid"])
                if tune_recent:
                    row["eval_max_items"] = res["eval_max_items"]
            else:
                cfg = replace(base, seed=seed, **(QUICK if quick else {}), **KP4SR_VARIANTS[name])
                rec = KP4SR.create(cfg, dataset=dataset)
                t0 = time.perf_counter()
                res = _fit(rec, out / f"{name}-seed{seed}", progress)
                seconds = round(time.perf_counter() - t0, 2)
                if tune_recent:
                    res = tune_eval_max_items(rec, out / f"{name}-seed{seed}")
                row = {"model": name, "seed": seed, **res["test"]}
                row.update(train_seconds=seconds, valid=res["valid"])
                if tune_recent:
                    row["eval_max_items"] = res["eval_max_items"]
            row["machine"] = machine()
            rows.append(row)
            if progress:
                print(f"{name} seed {seed}: test NDCG@10 {row['NDCG@10']:.4f}", flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text(summary_markdown(rows, dataset.name))
    bar_chart(rows, out / "results.png")
    return rows


def tune_eval_max_items(rec: KP4SR, folder: Path) -> dict[str, Any]:
    """Choose on validation what a trained run ranks from (``eval_max_items`` or
    ``eval_windows``), save it in the run folder's ``config.json`` (so the folder ranks and
    serves with it) and return the choice and its valid/test metrics."""
    ranks: dict[int | str, np.ndarray] = {}

    def valid_at(c: int | str) -> np.ndarray:
        set_recent(rec.config, c)
        ranks[c] = rec.user_ranks("valid")[0]
        return ranks[c]

    windows = rec.config.item_tokens == "single"  # the mixture needs one token per item
    chosen, by_k = choose_recent(valid_at, rec.config.max_items, windows)
    set_recent(rec.config, chosen)
    config = json.loads((folder / "config.json").read_text("utf-8"))
    config["eval_max_items"] = rec.config.eval_max_items
    config["eval_windows"] = rec.config.eval_windows
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    test = rec.user_ranks("test")[0]
    users = {s: rec.split_users(s) for s in ("valid", "test")}
    per_split = {"valid": (users["valid"], ranks[chosen]), "test": (users["test"], test)}
    # ranks.json holds the table's ranks; training's own (every item read) are kept beside
    (folder / RANKS_FILE).replace(folder / "ranks-all-items.json")
    (folder / RANKS_FILE).write_text(ranks_json(per_split))
    choice = {"eval_max_items": chosen, "valid_NDCG@10_by_eval_max_items": by_k}
    (folder / "eval_max_items.json").write_text(json.dumps(choice, indent=2))
    return {"valid": metrics(ranks[chosen]), "test": metrics(test), "eval_max_items": chosen}


def _fit(rec: KP4SR, folder: Path, progress: bool) -> dict[str, Any]:
    from kp4sr.training import fit

    return fit(rec, folder, progress=progress)


def summary_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean ± std over seeds per model, in the order models first appear."""
    order = list(dict.fromkeys(r["model"] for r in rows))
    lines = [
        "| model | seeds | " + " | ".join(SHOWN) + " | train s |",
        "|---" * (len(SHOWN) + 3) + "|",
    ]
    for m in order:
        rs = [r for r in rows if r["model"] == m]
        cells = []
        for k in (*SHOWN, "train_seconds"):
            v = np.array([r[k] for r in rs], dtype=float)
            fmt = "{:.1f}" if k == "train_seconds" else "{:.4f}"
            cell = fmt.format(v.mean())
            if len(v) > 1:
                cell += " ± " + fmt.format(v.std(ddof=1))
            cells.append(cell)
        lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    """The machine numbers came from, in one line (CPU model, threads, GPU, versions)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    n = torch.get_num_threads()
    return (
        f"{cpu}, {n} thread{'s' if n != 1 else ''}, {dev}; Python {platform.python_version()}, "
        f"torch {torch.__version__}"
    )


def write_report(out: Path, title: str, table: str, command: str) -> str:
    """``OUT/results.md``: title, table, machine and the command that made it; returns the text."""
    text = "\n".join(
        [f"# {title}", "", table, "", f"Machine: {machine()}", "", f"Command: `{command}`", ""]
    )
    (out / "results.md").write_text(text)
    return text


def summary_markdown(rows: list[dict[str, Any]], dataset: str, command: str = "") -> str:
    """The table, then the machine(s) each model ran on (rows may come from several)."""
    lines = [
        f"# Benchmark on {dataset} (test split, leave-one-out, mean ± std over seeds)",
        "",
        summary_table(rows),
        "",
    ]
    machines: dict[str, list[str]] = {}
    for r in rows:
        models = machines.setdefault(r.get("machine") or machine(), [])
        if r["model"] not in models:
            models.append(r["model"])
    chosen: dict[str, list[int | str]] = {}
    for r in rows:
        if "eval_max_items" in r:
            chosen.setdefault(r["model"], []).append(r["eval_max_items"])
    if chosen:
        per_model = "; ".join(f"{m} {', '.join(map(str, ks))}" for m, ks in chosen.items())
        lines += [f"History items read at ranking, chosen on validation per seed: {per_model}", ""]
    if len(machines) == 1:
        lines.append(f"Machine: {next(iter(machines))}")
    else:
        lines += [f"- {', '.join(ms)}: {m}" for m, ms in machines.items()]
    if command:
        lines += ["", f"Command: `{command}`"]
    return "\n".join([*lines, ""])


def bar_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """NDCG@10 and HR@10 per model (mean over seeds, std as error bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the chart is optional; the table and JSON are the results
        return
    order = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=120)
    x = np.arange(len(order))
    for j, key in enumerate(("NDCG@10", "HR@10")):
        vals = [np.array([r[key] for r in rows if r["model"] == m]) for m in order]
        ax.bar(
            x + (j - 0.5) * 0.38,
            [v.mean() for v in vals],
            0.38,
            label=key,
            yerr=[v.std() for v in vals],
        )
    ax.set_xticks(x, order, rotation=20, ha="right")
    ax.legend()
    ax.set_title("test metrics")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
