"""Same seed, same results? Train the same small run twice and compare every weight.

    python benchmarks/determinism.py                 # CPU: expected bitwise equal (0.0)
    python benchmarks/determinism.py --device cuda   # GPU: bf16 autocast, not bitwise

Toy data with 60 users, the tiny T5, 12 optimizer steps (2 epochs), evaluation on every user.
Prints one JSON object: the largest absolute difference of any weight between the two runs and
whether the validation and test metrics are identical. (Crash-and-resume equality on CPU is a
test: ``tests/test_resume.py``.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from kp4sr import toy
from kp4sr.benchmark import machine
from kp4sr.recommender import KP4SR, Config
from kp4sr.training import fit


def run_twice(device: str, seed: int = 0) -> dict:
    ds = toy.generate(seed=1, n_users=60, n_items=40)
    cfg = Config(
        max_length=64, degree=2, epochs=2, batch_size=16, samples_per_epoch=96, beams=10,
        eval_batch_size=32, seed=seed, device=device,
    )  # fmt: skip
    states, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(2):
            rec = KP4SR.create(cfg, dataset=ds)
            res = fit(rec, Path(tmp) / f"run{k}", progress=False)
            states.append({n: t.detach().float().cpu() for n, t in rec.model.state_dict().items()})
            results.append({"valid": res["valid"], "test": res["test"]})
    diff = max(float((states[0][n] - states[1][n]).abs().max()) for n in states[0])
    return {
        "max_abs_weight_difference": diff,
        "bitwise_equal": all(torch.equal(states[0][n], states[1][n]) for n in states[0]),
        "metrics_identical": results[0] == results[1],
        "device": device,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(json.dumps(run_twice(args.device, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
