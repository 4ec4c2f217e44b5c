"""Training-state checkpoints that survive a crash at any moment, and atomic file writes.

A checkpoint is a folder ``RUN/checkpoint-SSSSSSSS`` (S: optimizer steps done) holding

- ``model.safetensors``: the current weights; ``best.safetensors``: the best weights so far;
- ``optimizer.safetensors``: AdamW's per-parameter tensors (step, moments);
- ``rng.safetensors``: the torch (and CUDA) RNG state of every training process;
- ``state.json``: where to continue (epoch, batch), early-stopping counters, the metrics log,
  the optimizer's hyper-parameters, the scheduler, numpy's and Python's global RNG states.

It is written into a temporary folder (every file flushed and fsynced), renamed into place, and
only then named by the pointer ``RUN/checkpoint.json`` (itself replaced atomically); older
checkpoints are deleted afterwards. A crash leaves either the old or the new checkpoint in force,
never a mix. Tensors go through safetensors and everything else through JSON: no pickles.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kp4sr.errors import DataError

POINTER = "checkpoint.json"
FORMAT = 1


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_mode(path: Path, directory: bool = False) -> None:
    """Give a file or folder made by ``tempfile`` (private, 0600/0700) the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` all at once: a temporary file beside it, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _plain_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with tied tensors once (T5 shares its input embedding between
    encoder and decoder; safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load weights saved from :func:`unique_state` (tied tensors follow their twin)."""
    expected = set(unique_state(model))
    if set(state) != expected:
        raise DataError("the checkpoint's weights do not match the run's model", path)
    model.load_state_dict(state, strict=False)


def save_weights_folder(model: Any, folder: Path) -> None:
    """``model.save_pretrained(folder)`` with the old folder replaced only once the new one is
    complete (a crash leaves ``folder``, or ``folder.tmp`` complete for :func:`repair`)."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in tmp.iterdir():
        _fsync_file(f)
    fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def repair(run: Path) -> None:
    """Finish a :func:`save_weights_folder` cut short between its two renames."""
    folder = Path(run) / "model"
    tmp = folder.with_name("model.tmp")
    if not folder.exists() and tmp.is_dir():
        tmp.rename(folder)


def clear(run: Path) -> None:
    """Forget the checkpoints and results of an earlier run in the same folder."""
    run = Path(run)
    (run / POINTER).unlink(missing_ok=True)
    (run / "results.json").unlink(missing_ok=True)
    for p in run.glob("checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in run.glob(".checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


# -- optimizer, scheduler and RNG states as tensors + JSON ----------------------------------
def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v.detach().to("cpu", copy=True).contiguous()
            else:
                scalars[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _join_optimizer(
    tensors: dict[str, torch.Tensor], doc: dict[str, Any], like: dict[str, Any]
) -> dict[str, Any]:
    """The optimizer's state_dict back; JSON lists become tuples where the optimizer has
    tuples (AdamW's betas)."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in [*tensors.items(), *doc["scalars"].items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = []
    for saved, fresh in zip(doc["param_groups"], like["param_groups"]):
        groups.append(
            {k: tuple(v) if isinstance(fresh.get(k), tuple) else v for k, v in saved.items()}
        )
    return {"state": state, "param_groups": groups}


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's torch RNG state (dropout draws from it), and its GPU's."""
    out = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _global_rngs() -> dict[str, Any]:
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "numpy": [kind, key.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }


def _restore_global_rngs(doc: dict[str, Any]) -> None:
    kind, key, pos, has_gauss, gauss = doc["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = doc["python"]
    random.setstate((version, tuple(internal), gauss_next))


# -- the checkpoint -------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """Everything a run needs to continue exactly where it stopped."""

    state: dict[str, Any]  # where to continue, counters, metrics log (JSON)
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, torch.Tensor]
    rng: dict[str, torch.Tensor]  # "torch.R" / "cuda.R" for process R
    folder: Path

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        sd = _join_optimizer(self.optimizer, self.state["optimizer"], optimizer.state_dict())
        optimizer.load_state_dict(sd)

    def restore_rng(self, rank: int, device: torch.device) -> bool:
        """Set this process's RNGs as they were; False if the checkpoint has no state for this
        rank (resumed with more processes than it was written with)."""
        _restore_global_rngs(self.state["global_rng"])
        if f"torch.{rank}" not in self.rng:
            return False
        torch.set_rng_state(self.rng[f"torch.{rank}"])
        if device.type == "cuda" and f"cuda.{rank}" in self.rng:
            torch.cuda.set_rng_state(self.rng[f"cuda.{rank}"], device)
        return True


def save(
    run: Path,
    state: dict[str, Any],
    model: torch.nn.Module,
    best: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rngs: list[dict[str, torch.Tensor]],
) -> Path:
    """Write a checkpoint of ``step`` = ``state["step"]`` atomically and point to it.

    ``rngs``: the RNG states of every process, by rank. Returns the checkpoint folder.
    """
    run = Path(run)
    name = f"checkpoint-{state['step']:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run))
    try:
        _plain_mode(tmp, directory=True)
        opt_tensors, opt_doc = _split_optimizer(optimizer.state_dict())
        rng = {f"{kind}.{r}": t.cpu() for r, st in enumerate(rngs) for kind, t in st.items()}
        files = {
            "model.safetensors": cpu_copy(unique_state(model)),
            "optimizer.safetensors": opt_tensors,
            "rng.safetensors": rng,
        }
        if best is not None:
            files["best.safetensors"] = best
        for fname, tensors in files.items():
            save_file(tensors, str(tmp / fname))
            _fsync_file(tmp / fname)
        doc = {
            **state,
            "format": FORMAT,
            "world": len(rngs),
            "optimizer": opt_doc,
            "scheduler": scheduler.state_dict(),
            "global_rng": _global_rngs(),
            "torch_version": torch.__version__,
        }
        with open(tmp / "state.json", "w", encoding="utf-8") as f:
            f.write(json.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        final = run / name
        if final.exists():  # left by a crash before its pointer was written: never in force
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(run)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(run / POINTER, json.dumps({"checkpoint": name, "step": state["step"]}))
    for old in [*run.glob("checkpoint-*"), *run.glob(".checkpoint-*")]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(run: Path) -> Checkpoint | None:
    """The checkpoint in force in ``run`` (None if the run has none yet)."""
    run = Path(run)
    pointer = run / POINTER
    if not pointer.is_file():
        return None
    try:
        folder = run / json.loads(pointer.read_text("utf-8"))["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"corrupted checkpoint pointer ({e})", pointer) from None
    path = folder / "state.json"
    try:
        state = json.loads(path.read_text("utf-8"))
        if state.get("format") != FORMAT:
            raise DataError(f"unknown checkpoint format {state.get('format')!r}", path)
        tensors = {}
        for fname in ("model", "best", "optimizer", "rng"):
            path = folder / f"{fname}.safetensors"
            tensors[fname] = load_file(str(path)) if path.is_file() or fname != "best" else None
    except FileNotFoundError:
        raise DataError("missing from the checkpoint", path) from None
    except (json.JSONDecodeError, OSError, ValueError, SafetensorError) as e:
        raise DataError(f"corrupted checkpoint file ({e})", path) from None
    return Checkpoint(
        state, tensors["model"], tensors["best"], tensors["optimizer"], tensors["rng"], folder
    )
