"""Data-parallel training under torchrun: 2 CPU processes with gloo give the training of one
process (same samples, same steps), up to float summation order, also when the torchrun job is
killed and resumed.

Tolerance: the two processes run each global batch as two halves and DDP all-reduces their
gradients, so sums are taken in another order than in one process (relative differences about
1e-7 per step); AdamW divides each gradient by its running RMS, which can enlarge such
differences on coordinates whose gradients are near zero. We allow 1e-4 on any weight after 14
steps (measured: 2e-6) and a difference of at most 2 users' hits in every metric (beam
search near-ties; measured: none)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_resume import write_generic

from kp4sr import distributed, toy
from kp4sr.cli import main
from kp4sr.recommender import KP4SR, Config
from kp4sr.training import _Batches, _epoch_order

# 97 samples in batches of 16: 7 steps an epoch, the last one a single sample, so one process
# trains on a stand-in of weight 0; dropout 0 so that both runs draw nothing at random
OPTS = (
    "--epochs 2 --max-length 48 --degree 2 --samples-per-epoch 97 --batch-size 16 --beams 5"
    " --dropout 0 --checkpoint-every 3 --quiet --json"
).split()
METRICS = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(*args: str) -> subprocess.Popen:
    """``torchrun --standalone --nproc-per-node 2 -m kp4sr.cli ...``"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.Popen(
        [*cmd, "-m", "kp4sr.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def _descendants(pid: int) -> list[int]:
    """Processes started by ``pid``, at any depth (torchrun gives each worker its own session,
    so a process group signal does not reach them)."""
    parent: dict[int, int] = {}
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(stat)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, "\n".join(x for x in err.splitlines() if "INFO" not in x)
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_toy():
    return toy.generate(seed=1, n_users=60, n_items=40)


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _kill_after_first_checkpoint(job: subprocess.Popen, run) -> None:
    """SIGKILL to torchrun and its workers at once (a machine going down), mid-run."""
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.json").exists():
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    workers = _descendants(job.pid)
    assert len(workers) >= 2
    for pid in [job.pid, *workers]:
        os.kill(pid, signal.SIGKILL)
    job.communicate()
    assert not (run / "results.json").exists()  # it died in the middle


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_even_after_a_kill(tmp_path, small_toy):
    """``torchrun --nproc-per-node 2 ... kp4sr train`` (gloo), killed by SIGKILL after its first
    checkpoint and continued by ``torchrun ... kp4sr train --resume``, ends within the stated
    tolerance of the same command in one process."""
    write_generic(small_toy, tmp_path / "data")
    opts = ["--dataset", str(tmp_path / "data"), *OPTS]
    run, alone = tmp_path / "ddp", tmp_path / "single"
    _kill_after_first_checkpoint(_torchrun("train", "--out", str(run), *opts), run)
    # the killed job's checkpoint holds both processes' RNG states; rank 0 alone wrote it
    folder = run / json.loads((run / "checkpoint.json").read_text())["checkpoint"]
    assert json.loads((folder / "state.json").read_text())["world"] == 2
    rng = load_file(str(folder / "rng.safetensors"))
    assert {"torch.0", "torch.1"} <= set(rng) and not torch.equal(rng["torch.0"], rng["torch.1"])
    job = _torchrun("train", "--resume", str(run), "--quiet", "--json")
    assert main(["train", "--out", str(alone), *opts]) == 0  # one process: this one
    single = json.loads((alone / "results.json").read_text())
    ddp = _finish(job)

    a, b = _weights(alone), _weights(run)
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-4, diff
    users = single["test"]["users"]
    assert users == ddp["test"]["users"] == 60
    for split in ("valid", "test"):
        for key in METRICS:
            assert abs(single[split][key] - ddp[split][key]) <= 2 / users, (split, key)
    log_1 = [json.loads(x) for x in (alone / "metrics.jsonl").read_text().splitlines()]
    log_2 = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_2] == [1, 2]  # one copy of each line: rank 0 writes
    for r1, r2 in zip(log_1, log_2):
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)


@pytest.mark.parametrize("batch", [16, 7, 1])
def test_shares_of_a_batch_are_the_single_process_batch(small_toy, batch):
    """What each process builds for a global batch is its slice of what one process builds;
    the weights of the shares sum to 1 (a process with no sample gets a stand-in of weight 0)."""
    rec = KP4SR.create(
        Config(max_length=48, degree=2, batch_size=batch, dropout=0.0), dataset=small_toy
    )
    train = rec.split.train
    order = _epoch_order(len(train), 0, 0, 1)
    alone = _Batches(rec, train, order, 1)
    shares = [_Batches(rec, train, order, 1, group=distributed.Group(r, 2)) for r in range(2)]
    assert len(alone) == len(shares[0]) == len(shares[1])
    for k in (0, len(alone) - 1):
        whole, w = alone[k]
        assert w == 1.0
        parts = [s[k] for s in shares]
        assert sum(p[1] for p in parts) == pytest.approx(1.0)
        rows = [b for b, share in parts if share > 0]
        n = sum(len(b.input_ids) for b in rows)
        assert n == len(whole.input_ids)
        ids = whole.input_ids.numpy()
        start = 0
        for b in rows:
            for row in b.input_ids.numpy():
                length = int((row != rec.tokenizer.pad_token_id).sum())
                np.testing.assert_array_equal(row[:length], ids[start][:length])
                start += 1


def test_outside_torchrun_everything_is_one_process():
    g = distributed.current()
    assert (g.rank, g.world, g.main) == (0, 1, True)
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    part = np.arange(6).reshape(3, 2)
    assert distributed.gather_shards(part, 3) is part
    assert distributed.split_batch(5, g).tolist() == [0, 1, 2, 3, 4]
    two = [distributed.split_batch(5, distributed.Group(r, 2)).tolist() for r in range(2)]
    assert two == [[0, 1], [2, 3, 4]]
    assert distributed.split_batch(1, distributed.Group(0, 2)).tolist() == []
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model
