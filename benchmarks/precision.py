"""Training speed under ``--precision fp32`` and ``--precision bf16`` on the same batches, and
what :class:`kp4sr.model.FastDropout` saves against ``nn.Dropout`` (fp32).

    python benchmarks/precision.py                                   # ML-100k setting, tiny
    python benchmarks/precision.py --backbone t5-small --length 512  # the paper's shape
    python benchmarks/precision.py --dataset toy                     # no real data needed

Each variant trains the same model (same initial weights, same batches, dropout as in the run
setting) for ``--steps`` optimizer steps, alternating blocks of steps so that a machine whose
speed drifts (shared VMs) affects both alike; the first steps of each are a warm-up. Reported:
seconds per step (median), samples/s, their ratio, and the loss of each precision on the first
batch from the same weights (bf16 autocast keeps fp32 weights; the losses should agree to about
1e-2). With ``--out DIR`` also ``DIR/results.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kp4sr import toy
from kp4sr.data import default_data_dir
from kp4sr.model import (
    Batch,
    cpu_has_bf16,
    loss,
    train_in_bf16,
    use_fast_paths,
    use_torch_dropout,
)
from kp4sr.recommender import KP4SR, Config

# fp32 with torch's own dropout (the reference), fp32 and bf16 autocast (both with FastDropout)
NAMES = ("fp32 nn.Dropout", "fp32", "bf16")


def batches(rec: KP4SR, n: int, bs: int, seed: int) -> list[Batch]:
    """``n`` training batches of ``bs`` samples, prompts drawn as training draws them."""
    train = rec.split.train
    order = np.random.default_rng(seed).permutation(len(train))[: n * bs]
    out = []
    for k in range(n):
        chosen = [train[i] for i in order[k * bs : (k + 1) * bs]]
        out.append(
            rec.builder.build_batch(
                [rec.user_text(s.user) for s in chosen],
                [s.history for s in chosen],
                [np.random.default_rng([seed, k, j]) for j in range(len(chosen))],
                [rec.target_tokens(s.target) for s in chosen],
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="ml-100k (real files) | toy")
    p.add_argument("--backbone", default="tiny")
    p.add_argument("--length", type=int, default=128, help="prompt cap in tokens")
    p.add_argument("--degree", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=12, help="timed steps per precision")
    p.add_argument("--block", type=int, default=3, help="steps per block before switching")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(
        max_length=args.length,
        degree=args.degree,
        hop=2,
        backbone=args.backbone,
        tie_embeddings=True,
        device="cpu",
        seed=0,
    )
    if args.dataset == "toy":
        rec = KP4SR.create(Config(**cfg), dataset=toy.generate(seed=0))
    else:
        data = default_data_dir()
        if data is None or not (data / "ml-100k" / "u.data").is_file():
            print("ML-100k not found: set KP4SR_DATA or use --dataset toy", file=sys.stderr)
            return 2
        cfg.update(dataset="ml-100k", data_dir=str(data), min_user=0, min_item=0)
        rec = KP4SR.create(Config(**cfg))
    device = torch.device("cpu")
    start = {k: v.clone() for k, v in rec.model.state_dict().items()}
    work = batches(rec, args.steps // args.block + 1, args.batch_size, seed=0)
    models, opts = {}, {}
    for name in NAMES:
        model = use_fast_paths(type(rec.model)(rec.model.config))
        if name == "fp32 nn.Dropout":
            use_torch_dropout(model)
        model.load_state_dict(start)
        model.train()
        models[name] = model
        opts[name] = torch.optim.AdamW(model.parameters(), lr=1e-4)
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in NAMES}

    def step(name: str, batch: Batch) -> float:
        bf16 = train_in_bf16(name.split()[0], device)
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            value = loss(models[name], batch, True)
        opts[name].zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(models[name].parameters(), 1.0)
        opts[name].step()
        times[name].append(time.perf_counter() - t)
        return float(value.detach())

    for name in NAMES:  # warm-up, and the first batch's loss from the same weights
        torch.manual_seed(0)
        first[name] = step(name, work[0])
        times[name].clear()
    for k in range(args.steps // args.block):
        for name in NAMES if k % 2 == 0 else NAMES[::-1]:
            for _ in range(args.block):
                step(name, work[k + 1])
    per_step = {name: float(np.median(t)) for name, t in times.items()}
    result = {
        "dataset": args.dataset,
        "backbone": args.backbone,
        "length": args.length,
        "batch_size": args.batch_size,
        "tokens_per_batch": int(work[1].input_ids.numel()),
        "threads": torch.get_num_threads(),
        "cpu_bf16_instructions": cpu_has_bf16(),
        "seconds_per_step": {k: round(v, 4) for k, v in per_step.items()},
        "samples_per_s": {k: round(args.batch_size / v, 1) for k, v in per_step.items()},
        "fast_dropout_speedup": round(per_step["fp32 nn.Dropout"] / per_step["fp32"], 2),
        "bf16_speedup": round(per_step["fp32"] / per_step["bf16"], 2),
        "both_speedup": round(per_step["fp32 nn.Dropout"] / per_step["bf16"], 2),
        "first_batch_loss": {k: round(v, 4) for k, v in first.items()},
        "command": "python benchmarks/precision.py " + " ".join(sys.argv[1:]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
