"""Crash and resume: a run stopped at any moment (even while writing a checkpoint, even by
SIGKILL) continues from its last checkpoint to the very weights and metrics of a run that never
stopped — bit for bit, on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from kp4sr import checkpoint, toy
from kp4sr.cli import main
from kp4sr.recommender import KP4SR, Config
from kp4sr.training import fit, resume

# 6 steps per epoch, checkpoints at steps 4, 6 (epoch 1's end), 8, 12 (epoch 2's end)
SMALL = dict(
    max_length=64,
    degree=2,
    epochs=2,
    batch_size=16,
    samples_per_epoch=96,
    checkpoint_every=4,
    beams=10,
    eval_batch_size=32,
)


class Crash(Exception):
    """Stands in for the process dying."""


@pytest.fixture(scope="module")
def small_toy():
    return toy.generate(seed=1, n_users=60, n_items=40)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_toy):
    """A run that was never interrupted."""
    out = tmp_path_factory.mktemp("reference")
    rec = KP4SR.create(Config(**SMALL), dataset=small_toy)
    results = fit(rec, out, progress=False)
    return rec.model.state_dict(), results, out


def assert_same_run(run, reference_run, state, results, ref_state, ref_results):
    for name, value in ref_state.items():
        assert torch.equal(value, state[name]), name
    assert results["valid"] == ref_results["valid"]
    assert results["test"] == ref_results["test"]
    assert results["best_epoch"] == ref_results["best_epoch"]
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["train_loss"], r["valid"]) for r in log] == [
        (r["epoch"], r["train_loss"], r["valid"]) for r in ref
    ]
    saved = load_file(str(run / "model" / "model.safetensors"))
    ref_saved = load_file(str(reference_run / "model" / "model.safetensors"))
    assert saved.keys() == ref_saved.keys()
    assert all(torch.equal(saved[k], ref_saved[k]) for k in saved)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["after", "during"])
def test_resume_after_a_crash_is_bitwise_identical(
    tmp_path, monkeypatch, small_toy, reference, where
):
    """Crash right after the mid-epoch checkpoint of step 8 (resume mid-epoch 2), or while
    that checkpoint is being written (the step-6 checkpoint stays in force: resume at epoch 2's
    start, the half-written one is ignored and cleaned up)."""
    ref_state, ref_results, ref_out = reference
    real_save, real_save_file = checkpoint.save, checkpoint.save_file
    calls = []

    def crash_after(run, state, *args):
        folder = real_save(run, state, *args)
        calls.append(state["step"])
        if state["step"] == 8:
            raise Crash
        return folder

    def crash_during(tensors, filename, *args, **kwargs):
        if filename.endswith("optimizer.safetensors") and len(calls) == 2:
            raise Crash
        if filename.endswith("rng.safetensors"):
            calls.append(filename)
        return real_save_file(tensors, filename, *args, **kwargs)

    if where == "after":
        monkeypatch.setattr(checkpoint, "save", crash_after)
    else:
        monkeypatch.setattr(checkpoint, "save_file", crash_during)
    run = tmp_path / "run"
    rec = KP4SR.create(Config(**SMALL), dataset=small_toy)
    with pytest.raises(Crash):
        fit(rec, run, progress=False)
    monkeypatch.undo()
    assert not (run / "results.json").exists()
    pointer = json.loads((run / "checkpoint.json").read_text())
    assert pointer["step"] == (8 if where == "after" else 6)
    if where == "during":
        assert list(run.glob(".checkpoint-*")) == []  # the half-written folder was removed
    ck = checkpoint.load(run)
    assert ck.state["next_epoch"] == 2 and ck.state["next_batch"] == (2 if where == "after" else 0)

    results = resume(run, progress=False)
    state = KP4SR.from_pretrained(run).model.state_dict()
    assert_same_run(run, ref_out, state, results, ref_state, ref_results)
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-00000012"]


def test_resume_without_a_checkpoint_starts_over(tmp_path, small_toy, capsys):
    """Killed before its first checkpoint (only the run folder was written): ``--resume``
    trains from the start, to the weights of a run never interrupted."""
    cfg = Config(**{**SMALL, "epochs": 1, "samples_per_epoch": 16})
    KP4SR.create(cfg, dataset=small_toy).save_pretrained(tmp_path / "run")
    assert main(["train", "--resume", str(tmp_path / "run"), "--quiet"]) == 0
    capsys.readouterr()
    rec = KP4SR.create(cfg, dataset=small_toy)
    fit(rec, tmp_path / "ref", progress=False)
    state = KP4SR.from_pretrained(tmp_path / "run").model.state_dict()
    for name, value in rec.model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert (tmp_path / "run" / "results.json").is_file()


def test_resume_cli_finished_run_and_bad_options(reference, tmp_path, capsys):
    _, ref_results, ref_out = reference
    assert main(["train", "--resume", str(ref_out), "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == ref_results
    assert main(["train", "--resume", str(ref_out)]) == 0
    assert "finished already" in capsys.readouterr().out
    assert main(["train", "--resume", str(ref_out), "--epochs", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epochs" in err[0]
    assert main(["train", "--resume", str(ref_out), "--out", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a kp4sr run folder" in capsys.readouterr().err
    assert main(["train"]) == 2


def test_checkpoint_files_are_safetensors_and_json(reference):
    _, _, out = reference
    folder = out / json.loads((out / "checkpoint.json").read_text())["checkpoint"]
    names = sorted(p.name for p in folder.iterdir())
    expected = ["best", "model", "optimizer", "rng"]
    assert names == sorted([f"{n}.safetensors" for n in expected] + ["state.json"])
    state = json.loads((folder / "state.json").read_text())
    assert state["next_epoch"] == 3 and state["step"] == 12 and state["world"] == 1
    assert {"optimizer", "scheduler", "global_rng", "records", "best", "bad"} <= set(state)
    assert "0.exp_avg" in load_file(str(folder / "optimizer.safetensors"))
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


CLI_OPTS = (
    "--epochs 2 --max-length 48 --degree 2 --samples-per-epoch 96 --batch-size 16"
    " --beams 5 --checkpoint-every 4 --quiet --json"
).split()


def write_generic(ds, folder):
    """A dataset as a folder in the documented generic format (for the command line)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user\titem\ttimestamp"]
    rows += [
        f"{u}\t{ds.items[i]}\t{t}" for u, s in zip(ds.users, ds.sequences) for t, i in enumerate(s)
    ]
    (folder / "interactions.tsv").write_text("\n".join(rows) + "\n")
    titles = ["item\ttitle"] + [f"{i}\t{t}" for i, t in zip(ds.items, ds.titles)]
    (folder / "items.tsv").write_text("\n".join(titles) + "\n")
    strip = lambda e: e.removeprefix("item:")  # noqa: E731
    triples = ["head\trelation\ttail"]
    triples += [f"{strip(h)}\t{r}\t{strip(t)}" for h, r, t in ds.kg.triples()]
    (folder / "triples.tsv").write_text("\n".join(triples) + "\n")
    names = ["entity_id\tname"]
    names += [
        f"{e}\t{n}" for e, n in zip(ds.kg.entities, ds.kg.names) if n and not e.startswith("item:")
    ]
    (folder / "entity_names.tsv").write_text("\n".join(names) + "\n")


def _kp4sr(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "kp4sr.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, small_toy):
    """``kp4sr train`` killed by SIGKILL after its first checkpoint, then ``--resume``: same
    weights (bitwise) and same metrics as the same command never interrupted."""
    data = tmp_path / "data"
    write_generic(small_toy, data)
    opts = ["--dataset", str(data), *CLI_OPTS]
    ref_run, run = tmp_path / "ref", tmp_path / "run"
    victim = _kp4sr("train", "--out", str(run), *opts)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.json").exists():
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (run / "results.json").exists()  # it really died in the middle
    again = _kp4sr("train", "--resume", str(run), "--quiet", "--json")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming" in err
    assert main(["train", "--out", str(ref_run), *opts]) == 0  # the reference, in this process
    results = json.loads(out)
    ref_results = json.loads((ref_run / "results.json").read_text())
    assert results["valid"] == ref_results["valid"] and results["test"] == ref_results["test"]
    assert results["best_epoch"] == ref_results["best_epoch"]
    weights = load_file(str(run / "model" / "model.safetensors"))
    ref_weights = load_file(str(ref_run / "model" / "model.safetensors"))
    assert weights.keys() == ref_weights.keys()
    for name, value in ref_weights.items():
        assert torch.equal(value, weights[name]), name
    log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ref_log = [json.loads(x) for x in (ref_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["valid"] for r in log] == [r["valid"] for r in ref_log]
    assert [r["epoch"] for r in log] == [1, 2]
