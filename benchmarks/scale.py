"""Loading and preprocessing at MovieLens-10M / Amazon Books scale: wall time, CPU time and peak
memory of every stage before training.

    python benchmarks/scale.py                    # makes /tmp/kp4sr-scale if missing (10M
                                                  # interactions, 70k users, 10k items, 1M triples)
    python benchmarks/scale.py --data DIR --out benchmarks/results/scale --probe 2000

Each run is a fresh Python process, so imports and memory start from nothing, going through:
``import`` (torch, transformers, kp4sr), ``load`` (parse the files with ``load_dataset``, no
k-core, and write the dataset cache; or read the cache back), ``k_core`` (the default 5-core),
``split`` (leave-one-out), ``create`` (``KP4SR.create``: item numbering, the tokenizer trained
on every knowledge sentence, the model, the item ID codes, the prompt builder's adjacency and
the decoding trie; its parts are timed too), ``save`` (``save_pretrained``: the run folder that
``fit`` writes before its first step, with the dataset snapshot) and ``probe`` (``--probe``
training prompts built and collated as training does, batch by batch, starting with empty
token caches: a throughput figure, not part of the total). Run ``cold`` starts from an empty
dataset cache, run ``warm`` reuses the cache ``cold`` wrote, as a second ``kp4sr train`` on the
same files would.

Peak memory is the kernel's high-water mark of the process's resident set (``ru_maxrss``),
reset at the start of every stage by writing 5 to ``/proc/self/clear_refs`` (Linux), so each
stage shows its own peak; the run's peak is the largest. Where the reset is refused, each
stage shows the peak since the process started. Writes ``OUT/results.json`` and
``OUT/results.md`` and prints the table; the target of issue #5 is a cold run under 2 minutes
and 4 GB.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_scale_data  # noqa: E402  (the generator beside this script)

TARGET_SECONDS = 120.0
TARGET_MB = 4096.0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "scale"
RUNS = ("cold", "warm")
# what a training run pays before its first step: the total and the target are over these;
# the prompt probe is a throughput figure of its own
PIPELINE = ("import", "load", "k_core", "split", "create", "save")


# --------------------------------------------------------------------------- measuring


def _reset_peak() -> bool:
    """Reset the process's RSS high-water mark (and so ``ru_maxrss``); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(name: str, fn: Callable[[], dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Run one stage; append its wall and CPU seconds, peak and final RSS and its details."""
    reset = _reset_peak()
    cpu, wall = _cpu_seconds(), time.perf_counter()
    detail = fn()
    rows.append(
        {
            "stage": name,
            "seconds": round(time.perf_counter() - wall, 3),
            "cpu_seconds": round(_cpu_seconds() - cpu, 3),
            "peak_rss_mb": round(_peak_mb(), 1),
            "rss_after_mb": round(_rss_mb(), 1),
            "peak_is_per_stage": reset,
            "detail": detail,
        }
    )


class Timers:
    """Wall time spent inside chosen functions (the parts of ``KP4SR.create``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        stored = inspect.getattr_static(owner, attr)  # a classmethod stays one when restored

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, stored))

    def restore(self) -> dict[str, float]:
        for undo in reversed(self._undo):
            undo()
        return {k: round(v, 3) for k, v in self.seconds.items()}


# --------------------------------------------------------------------------- one run (a child)


def run_stages(data: Path, probe: int, max_items: int) -> dict[str, Any]:
    """Every stage in this process, in order; returns the rows and the counts seen."""
    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {}

    def imports() -> dict[str, Any]:
        import torch
        import transformers

        import kp4sr.recommender  # noqa: F401  (pulls in every module the stages use)

        return {"torch": torch.__version__, "transformers": transformers.__version__}

    def load() -> dict[str, Any]:
        from kp4sr import cache
        from kp4sr.data import DataOptions, load_dataset

        timers = Timers()
        timers.wrap(cache, "save_dataset", "cache_write")
        timers.wrap(cache, "load_saved_dataset", "cache_read")
        try:
            opts = DataOptions(min_user=0, min_item=0, cache=True)
            state["ds"] = load_dataset(str(data), options=opts)
        finally:
            parts = timers.restore()
        return {**_counts(state["ds"]), **parts}

    def k_core() -> dict[str, Any]:
        from kp4sr.filtering import k_core

        state["ds"], report = k_core(state["ds"], 5, 5)
        return {**_counts(state["ds"]), "rounds": report["rounds"]}

    def split() -> dict[str, Any]:
        from kp4sr.data import leave_one_out

        state["split"] = s = leave_one_out(state["ds"], max_items)
        return {"train": len(s.train), "valid": len(s.valid), "test": len(s.test)}

    def create() -> dict[str, Any]:
        from kp4sr import recommender, tokenization
        from kp4sr.recommender import KP4SR, Config

        timers = Timers()
        for attr in ("_tokenizer_corpus", "train_tokenizer", "build_model", "PromptBuilder"):
            timers.wrap(recommender, attr, attr.lstrip("_"))
        timers.wrap(recommender, "ItemTrie", "ItemTrie")
        timers.wrap(tokenization.ItemCodes, "build", "ItemCodes.build")
        config = Config(dataset=str(data), templates=str(data / "templates.json"), device="cpu")
        try:
            rec = KP4SR.create(config, dataset=state["ds"])
        finally:
            parts = timers.restore()
        rec._split = state["split"]
        state["rec"] = rec
        return {"vocabulary": len(rec.tokenizer), "parts_seconds": parts}

    def save() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            state["rec"].save_pretrained(tmp)
            size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        return {"run_folder_mb": round(size / 2**20, 1)}

    def prompts() -> dict[str, Any]:
        import numpy as np

        rec, train = state["rec"], state["split"].train
        pick = np.random.default_rng(0).choice(len(train), size=min(probe, len(train)))
        bs = rec.config.batch_size
        tokens = 0
        start = time.perf_counter()
        for k in range(0, len(pick), bs):
            chosen = [train[int(i)] for i in pick[k : k + bs]]
            batch = rec.builder.build_batch(
                [rec.user_text(s.user) for s in chosen],
                [s.history for s in chosen],
                [np.random.default_rng([rec.config.seed, 0, k, j]) for j in range(len(chosen))],
                [rec.target_tokens(s.target) for s in chosen],
            )
            tokens += int((batch.node_of_token >= 0).sum())
        seconds = time.perf_counter() - start
        return {
            "prompts": len(pick),
            "prompts_per_second": round(len(pick) / max(seconds, 1e-9), 1),
            "mean_tokens": round(tokens / max(1, len(pick)), 1),
        }

    measure("import", imports, rows)
    measure("load", load, rows)
    measure("k_core", k_core, rows)
    measure("split", split, rows)
    measure("create", create, rows)
    measure("save", save, rows)
    if probe > 0:
        measure("probe", prompts, rows)
    return {"stages": rows}


def _counts(ds: Any) -> dict[str, int]:
    return {
        "users": len(ds.users),
        "items": len(ds.items),
        "interactions": ds.num_interactions,
        "kg_triples": ds.kg.num_triples,
        "kg_entities": len(ds.kg.entities),
        "kg_relations": len(ds.kg.relations),
    }


# --------------------------------------------------------------------------- the parent


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and load (the machine is shared: the load says how much)."""
    cpu = platform.processor() or platform.machine()
    mem_gib = float("nan")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def child(run: str, args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    """One run in a fresh process (its own imports, its own memory)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(out)]
        cmd += ["--data", str(args.data), "--probe", str(args.probe)]
        cmd += ["--max-items", str(args.max_items)]
        env = {**os.environ, "KP4SR_CACHE": str(cache_dir)}
        env.setdefault("OMP_NUM_THREADS", "1")
        load_before = os.getloadavg()[0]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"run {run} failed:\n{done.stderr[-3000:]}")
        result = json.loads(out.read_text())
    stages = [s for s in result["stages"] if s["stage"] in PIPELINE]
    result["run"] = run
    result["total_seconds"] = round(sum(s["seconds"] for s in stages), 2)
    result["total_cpu_seconds"] = round(sum(s["cpu_seconds"] for s in stages), 2)
    result["peak_rss_mb"] = max(s["peak_rss_mb"] for s in stages)
    result["load_average_before"] = round(load_before, 2)
    return result


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| run | stage | wall s | CPU s | peak RSS MB | details |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        for s in r["stages"]:
            d = s["detail"]
            shown = ", ".join(
                f"{k} {_fmt(v)}" for k, v in d.items() if k not in ("torch", "transformers")
            )
            lines.append(
                f"| {r['run']} | {s['stage']} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} | "
                f"{s['peak_rss_mb']:,.0f} | {shown} |"
            )
        lines.append(
            f"| {r['run']} | **total before training** ({', '.join(PIPELINE)}) | "
            f"**{r['total_seconds']:.1f}** | {r['total_cpu_seconds']:.1f} | "
            f"**{r['peak_rss_mb']:,.0f}** | |"
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return "(" + ", ".join(f"{k} {_fmt(x)}" for k, x in v.items()) + ")"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path(make_scale_data.DEFAULT_OUT))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--runs", default="cold,warm", help="cold, warm or both (comma-separated)")
    p.add_argument("--probe", type=int, default=2000, help="training prompts to build")
    p.add_argument("--max-items", type=int, default=5)
    p.add_argument("--cache-dir", type=Path, help="dataset cache (default: a fresh temporary one)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: one run's JSON
    make_scale_data.add_size_options(p)
    args = p.parse_args(argv)

    if args.worker is not None:
        result = run_stages(args.data, args.probe, args.max_items)
        args.worker.write_text(json.dumps(result))
        return 0

    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or set(runs) - set(RUNS):
        p.error(f"--runs takes cold and/or warm, got {args.runs!r}")
    if not (args.data / "manifest.json").is_file():
        print(f"generating the dataset in {args.data} ...", file=sys.stderr)
        make_scale_data.generate(args.data, make_scale_data.sizes_from(args))
    manifest = json.loads((args.data / "manifest.json").read_text())

    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="kp4sr-scale-cache-"))
    if "warm" in runs and "cold" not in runs and args.cache_dir is None:
        p.error("--runs warm alone needs --cache-dir holding a cold run's cache")
    try:
        results = [child(run, args, cache_dir) for run in runs]
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)

    cold = next((r for r in results if r["run"] == "cold"), results[0])
    meets = cold["total_seconds"] < TARGET_SECONDS and cold["peak_rss_mb"] < TARGET_MB
    command = "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "machine": machine(),
        "command": command.strip(),
        "data": {k: v for k, v in manifest.items() if k != "bytes"},
        "data_bytes": manifest.get("bytes", {}),
        "runs": {r["run"]: r for r in results},
        "target": {"seconds": TARGET_SECONDS, "peak_rss_mb": TARGET_MB},
        "meets_target": meets,
    }
    text = table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    m = report["machine"]
    md = [
        "# Loading and preprocessing at scale",
        "",
        f"Data: {manifest['interactions']:,} interactions, {manifest['users']:,} users, "
        f"{manifest['items']:,} items, {manifest['kg_triples']:,} KG triples "
        f"(`benchmarks/make_scale_data.py`, seed {manifest['options']['seed']}).",
        "",
        text,
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Python {m['python']}, "
        f"torch {results[0]['stages'][0]['detail'].get('torch')}; load average before the runs "
        + ", ".join(f"{r['run']} {r['load_average_before']}" for r in results)
        + ".",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Target (cold run, the stages before training, under {TARGET_SECONDS:.0f} s and "
        f"{TARGET_MB:.0f} MB): " + ("met" if meets else "NOT met"),
        "",
    ]
    (args.out / "results.md").write_text("\n".join(md))
    print(text)
    verdict = "met" if meets else "NOT met"
    print(
        f"target (cold, before training: < {TARGET_SECONDS:.0f} s, < {TARGET_MB:.0f} MB): {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
