"""Data-parallel training with PyTorch's own stack: processes started by ``torchrun``.

``torchrun --nproc-per-node N -m kp4sr.cli train ...`` (or the ``kp4sr`` script) sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`session` joins the process
group (NCCL on GPUs, gloo on CPUs) and leaves it at the end. Outside torchrun every helper here is
a no-op for one process, so the single-process code path is unchanged.

Only this module talks to ``torch.distributed``; training and evaluation ask it for their share
of the work (:func:`shard`, :func:`split_batch`) and for the collectives they need.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0 writes the run folder and prints; the others only compute."""
        return self.rank == 0


def current() -> Group:
    """The process group this process belongs to (a group of one if none was joined)."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return Group()


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun with more than one process in all."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


@contextlib.contextmanager
def session(device: str) -> Iterator[None]:
    """Join torchrun's process group for the duration of a command, if launched by torchrun.

    With CUDA (``device`` auto or cuda) each process takes GPU ``LOCAL_RANK`` as its current
    device and the group uses NCCL; otherwise gloo on CPUs.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    g = current()
    log.info("process %d of %d (%s)", g.rank, g.world, "nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """A CUDA device pinned to this process's GPU (torchrun's LOCAL_RANK), else ``device``."""
    if device.type == "cuda" and current().world > 1:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills the dataset cache), then the others."""
    g = current()
    if not g.main:
        barrier()
    yield
    if g.main:
        barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``world``-th one from its rank on."""
    g = current()
    return list(items[g.rank :: g.world])


def gather_shards(part: np.ndarray, n: int) -> np.ndarray:
    """Undo :func:`shard`: every process's per-item results, back in the original order
    (so sums over them are bit for bit those of one process)."""
    g = current()
    if g.world == 1:
        return part
    parts: list[Any] = [None] * g.world
    dist.all_gather_object(parts, np.asarray(part))
    out = np.empty((n, *parts[0].shape[1:]), dtype=parts[0].dtype)
    for r, p in enumerate(parts):
        out[r :: g.world] = p
    return out


def split_batch(n: int, group: Group) -> np.ndarray:
    """Positions of a global batch of ``n`` samples that process ``group.rank`` trains on:
    contiguous, sizes differing by at most one (empty when ``n`` is below the number of
    processes). Pure arithmetic, so DataLoader worker processes may call it."""
    lo, hi = (group.rank * n) // group.world, ((group.rank + 1) * n) // group.world
    return np.arange(lo, hi)


def all_gather(obj: T) -> list[T]:
    """``obj`` of every process, by rank (our own small objects: RNG states, flags)."""
    g = current()
    if g.world == 1:
        return [obj]
    out: list[Any] = [None] * g.world
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every process (a decision all must take together)."""
    return all_gather(obj)[0]


def sum_(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over processes (in place; the tensor itself when alone)."""
    if current().world > 1:
        dist.all_reduce(value)
    return value


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` under DistributedDataParallel (gradients averaged over processes), or
    ``module`` itself when alone."""
    if current().world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
