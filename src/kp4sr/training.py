"""Training: cross-entropy on the target item's ID tokens, AdamW with warmup and linear decay,
validation by constrained beam search with early stopping on NDCG@10, best weights kept.

Every random choice of a training sample (MPP template, sampled knowledge edges) comes from a
generator seeded by ``(seed, epoch, position in the epoch's order)`` and the order itself from
``(seed, epoch)``, so a run is reproducible and independent of worker count, of how a batch is
split between processes, and of where it was interrupted. Dropout draws from torch's RNG, which
checkpoints save and restore.

A checkpoint (:mod:`kp4sr.checkpoint`) is written at the end of every epoch (so at every
validation) and, with ``checkpoint_every``, every N optimizer steps; :func:`resume` continues a
run from it, bit for bit as if it had not stopped (on CPU).

Under ``torchrun`` (:mod:`kp4sr.distributed`) every process trains on its share of each global
batch of ``batch_size`` samples, gradients are averaged by DistributedDataParallel with weights
that make the step the same as one process's, validation users are shared out and gathered, and
only rank 0 writes the run folder.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from kp4sr import checkpoint, distributed
from kp4sr.batching import bucketed_order, estimate_lengths
from kp4sr.data import Sample, seen_before, seen_mask
from kp4sr.evaluation import RANKS_FILE, format_table, metrics, ranks_json
from kp4sr.model import Batch, loss, train_in_bf16
from kp4sr.recommender import KP4SR, Config

log = logging.getLogger(__name__)

ORDER_KEY = 1 << 20  # SeedSequence words (seed, epoch, ORDER_KEY): an epoch's sample order
SAMPLE_KEY = 2  # (seed, epoch, SAMPLE_KEY, position): one training sample's random choices
HISTORY_KEY = 3  # (seed, epoch, HISTORY_KEY): the history lengths of --train-history random


def random_recent(histories: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each history cut to its last k items, k uniform in 1..len (``--train-history random``).

    Why: SASRec's causal loss trains every position on every context length from 1 to
    ``max_items``; a prompt model trained on full-length histories only ranks test users worse
    from 5 items than from 2 (try 35), so training shows it the short contexts too."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    keep = np.minimum(lengths, 1 + np.floor(rng.random(len(histories)) * lengths).astype(np.int64))
    return [h[len(h) - k :] for h, k in zip(histories, keep.tolist())]


class _Batches(torch.utils.data.Dataset):
    """Global batch ``start + i`` of an epoch, this process's share of it: its fused prompts
    (built in a worker process if any) and that share's weight in the batch's mean loss."""

    def __init__(
        self,
        rec: KP4SR,
        samples: list[Sample],
        order: np.ndarray,
        epoch: int,
        start: int = 0,
        group: distributed.Group | None = None,
    ):
        self.rec, self.samples, self.order, self.epoch = rec, samples, order, epoch
        self.bs = rec.config.batch_size
        self.start = start
        self.group = group or distributed.Group()

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.bs) - self.start

    def __getitem__(self, i: int) -> tuple[Batch, float]:
        lo = (self.start + i) * self.bs
        idx = self.order[lo : lo + self.bs]
        mine = distributed.split_batch(len(idx), self.group)
        weight = 1.0
        if self.group.world > 1:
            # DDP averages gradients over processes: weigh each share by its target tokens so
            # the step is the one of the whole batch's token-mean loss
            tokens = np.array([len(self.rec.target_tokens(self.samples[j].target)) for j in idx])
            weight = float(tokens[mine].sum() / tokens.sum())
            if len(mine) == 0:  # a stand-in with weight 0: every process takes part in a step
                mine = np.arange(1)
        seed, epoch = self.rec.config.seed, self.epoch
        chosen = [self.samples[idx[p]] for p in mine]
        rngs = [np.random.default_rng([seed, epoch, SAMPLE_KEY, lo + int(p)]) for p in mine]
        histories = [s.history for s in chosen]
        if self.rec.config.train_history == "random":
            rng = np.random.default_rng([seed, epoch, HISTORY_KEY, lo])
            histories = random_recent(histories, rng)
        batch = self.rec.builder.build_batch(
            [self.rec.user_text(s.user) for s in chosen],
            histories,
            rngs,
            [self.rec.target_tokens(s.target) for s in chosen],
        )
        if self.rec.config.train_exclude_seen:
            seen = seen_before(self.rec.dataset, chosen)
            targets = np.array([s.target for s in chosen], dtype=np.int64)
            vocab = self.rec.model.config.vocab_size
            mask = seen_mask(seen, targets, self.rec.codes.codes[:, 0], vocab)
            batch = replace(batch, exclude=torch.from_numpy(mask))
        return batch, weight


class _Loss(torch.nn.Module):
    """The training loss as one module, so DistributedDataParallel wraps the whole forward."""

    def __init__(self, model: torch.nn.Module, tree_mask: bool):
        super().__init__()
        self.model, self.tree_mask = model, tree_mask

    def forward(self, input_ids, node_of_token, parents, labels, exclude=None) -> torch.Tensor:
        batch = Batch(input_ids, node_of_token, parents, labels, exclude)
        return loss(self.model, batch, self.tree_mask)


def _epoch_order(n: int, per_epoch: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch, ORDER_KEY])
    order = rng.permutation(n)
    return order[:per_epoch] if per_epoch > 0 else order


@dataclass
class _Progress:
    """Where a run stands; saved in every checkpoint's ``state.json``."""

    next_epoch: int = 1
    next_batch: int = 0  # batches of ``next_epoch`` already trained
    step: int = 0  # optimizer steps done
    best: float = -1.0  # best validation NDCG@10
    best_epoch: int = 0
    bad: int = 0  # validations since the best one
    run_loss: float = 0.0  # sum of the batch losses of ``next_epoch`` so far
    elapsed: float = 0.0  # training seconds so far
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl


def _should_stop(cfg: Any, prog: _Progress, elapsed: float) -> bool:
    """Early stopping or the time budget; rank 0 decides for all (clocks differ)."""
    stop = False
    if prog.bad >= cfg.patience:
        log.info("early stop after epoch %d (best epoch %d)", prog.next_epoch - 1, prog.best_epoch)
        stop = True
    elif cfg.max_minutes > 0 and elapsed > 60 * cfg.max_minutes:
        log.info("time budget of %.1f min spent after epoch %d", cfg.max_minutes, prog.next_epoch)
        stop = True
    return bool(distributed.from_main(stop))


def _write_best(model: torch.nn.Module, best: dict[str, torch.Tensor], out: Path) -> None:
    """Rewrite ``out/model`` with the best weights (the current ones are put back)."""
    current = checkpoint.cpu_copy(checkpoint.unique_state(model))
    checkpoint.load_state(model, best, out)
    checkpoint.save_weights_folder(model, out / "model")
    checkpoint.load_state(model, current, out)


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """AdamW's parameter groups: the knowledge-aware item vectors (``--item-knowledge``) learn at
    ``item_knowledge_lr`` times the learning rate, everything else at the learning rate.

    Why: started at zero in a warm start, at the T5's learning rate the vectors stayed about 30x
    smaller than the ID embeddings they are added to (research log, try 40), so they could not
    carry what the KG says about an item."""
    from kp4sr.model import ITEM_KNOWLEDGE

    prefix = f"{ITEM_KNOWLEDGE}."
    named = list(model.named_parameters())
    rest = [p for n, p in named if not n.startswith(prefix)]
    knowledge = [p for n, p in named if n.startswith(prefix)]
    groups: list[dict[str, Any]] = [{"params": rest}]
    if knowledge:
        groups.append({"params": knowledge, "lr": cfg.lr * cfg.item_knowledge_lr})
    return groups


def fit(rec: KP4SR, out: str | Path, progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train ``rec`` in place, writing the run folder ``out``; returns the final metrics.

    The run folder gets ``metrics.jsonl`` (one line per epoch), the best weights, a checkpoint
    after every epoch and, at the end, ``results.json`` with validation and test metrics of the
    best weights. ``resume``: continue from ``out``'s checkpoint (see :func:`resume`).
    """
    from tqdm.auto import tqdm

    cfg = rec.config
    out = Path(out)
    group = distributed.current()
    show = progress and group.main
    train = rec.split.train
    if not train:
        from kp4sr.errors import DataError

        raise DataError(
            "no training samples: every user needs at least 3 interactions", cfg.dataset
        )
    rec.device = distributed.local_device(rec.device)
    model, device = rec.model.to(rec.device), rec.device
    per_epoch = min(cfg.samples_per_epoch, len(train)) if cfg.samples_per_epoch else len(train)
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * total), total)
    torch.manual_seed(cfg.seed + group.rank)  # dropout: its own stream in every process
    prog, best_state = _Progress(), None
    log_path = out / "metrics.jsonl"
    ck = checkpoint.load(out) if resume else None
    if ck is not None:
        checkpoint.load_state(model, ck.model, ck.folder / "model.safetensors")
        ck.load_optimizer(opt)
        sched.load_state_dict(ck.state["scheduler"])
        restored = ck.restore_rng(group.rank, device)
        if ck.state["world"] != group.world or not restored:
            log.warning(
                "checkpoint written by %d process(es), resumed by %d: same data, but dropout "
                "draws differ from an uninterrupted run",
                ck.state["world"],
                group.world,
            )
        prog = _Progress(**{k: ck.state[k] for k in _Progress.__dataclass_fields__})
        best_state = ck.best
        if group.main:
            if best_state is not None:  # in case a crash cut the best weights' save short
                _write_best(model, best_state, out)
            lines = "".join(json.dumps(r) + "\n" for r in prog.records)
            checkpoint.atomic_write_text(log_path, lines)
        log.info(
            "resuming %s at epoch %d, batch %d (step %d)",
            out,
            prog.next_epoch,
            prog.next_batch,
            prog.step,
        )
    elif group.main:
        if resume:
            log.info("%s has no checkpoint yet: training from the start", out)
        else:
            checkpoint.clear(out)
            rec.save_pretrained(out)
        log_path.write_text("")
    net = distributed.wrap(_Loss(model, cfg.tree_mask), device) if group.world > 1 else None
    use_bf16 = train_in_bf16(cfg.precision, device)
    t0 = time.perf_counter() - prog.elapsed

    def save_checkpoint() -> None:
        prog.elapsed = time.perf_counter() - t0
        rngs = distributed.all_gather(checkpoint.rng_state(device))
        if group.main:
            checkpoint.save(out, asdict(prog), model, best_state, opt, sched, rngs)

    first_epoch, first_batch = prog.next_epoch, prog.next_batch
    stop = resume and _should_stop(cfg, prog, prog.elapsed)
    if cfg.workers:
        rec.builder.warm()  # tokenise every knowledge sentence once, before workers fork
    lengths = estimate_lengths(rec.builder, train, rec.user_text) if cfg.length_buckets else None
    for epoch in range(first_epoch, cfg.epochs + 1):
        if stop:
            break
        (net or model).train()
        start = first_batch if epoch == first_epoch else 0
        order = _epoch_order(len(train), per_epoch, cfg.seed, epoch)
        if lengths is not None:
            order = bucketed_order(order, lengths, cfg.batch_size, cfg.seed, epoch)
        loader = DataLoader(
            _Batches(rec, train, order, epoch, start, group),
            batch_size=None,
            shuffle=False,
            num_workers=cfg.workers,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
            # worker seeds come from this generator, not from the global RNG that dropout uses
            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
        )
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not show, leave=False)
        partial = prog.run_loss if start and group.main else 0.0  # rank 0 holds the sum
        run_loss = torch.tensor(partial, dtype=torch.float32, device=device)
        data_wait, t_wait = 0.0, time.perf_counter()
        for step, (batch, weight) in enumerate(bar, start + 1):
            data_wait += time.perf_counter() - t_wait  # time spent waiting on the DataLoader
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                if net is None:
                    value = part = loss(model, batch, cfg.tree_mask)
                else:
                    part = net(
                        batch.input_ids,
                        batch.node_of_token,
                        batch.parents,
                        batch.labels,
                        batch.exclude,
                    )
                    part = part * weight  # this process's share of the batch's mean loss
                    value = part * group.world  # DDP divides the gradient sum by world
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            run_loss += part.detach()
            prog.step += 1
            if show and step % 20 == 0:  # a host sync only when the bar is drawn
                bar.set_postfix(loss=f"{(run_loss * group.world / step).item():.3f}")
            if cfg.checkpoint_every and prog.step % cfg.checkpoint_every == 0:
                if step < steps_per_epoch:  # the epoch's end has its own checkpoint
                    prog.next_epoch, prog.next_batch = epoch, step
                    prog.run_loss = distributed.sum_(run_loss.clone()).item()
                    save_checkpoint()
            t_wait = time.perf_counter()
        train_loss = (distributed.sum_(run_loss) / max(1, steps_per_epoch)).item()
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "seconds": round(time.perf_counter() - t0, 2),
            "data_wait_seconds": round(data_wait, 2),
        }
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            valid = rec.evaluate("valid", progress=show, sharded=True)
            record["valid"] = valid
            if valid["NDCG@10"] > prog.best:
                prog.best, prog.best_epoch, prog.bad = valid["NDCG@10"], epoch, 0
                best_state = checkpoint.cpu_copy(checkpoint.unique_state(model))
                if group.main:
                    checkpoint.save_weights_folder(model, out / "model")
            else:
                prog.bad += 1
            log.info("epoch %d loss %.4f valid NDCG@10 %.4f", epoch, train_loss, valid["NDCG@10"])
            if show:
                print(
                    f"epoch {epoch}: loss {train_loss:.4f}  valid HR@10 {valid['HR@10']:.4f}"
                    f"  NDCG@10 {valid['NDCG@10']:.4f}",
                    flush=True,
                )
        prog.records.append(record)
        if group.main:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        prog.next_epoch, prog.next_batch, prog.run_loss = epoch + 1, 0, 0.0
        save_checkpoint()
        stop = _should_stop(cfg, prog, time.perf_counter() - t0)
    train_seconds = time.perf_counter() - t0
    if best_state is not None:
        checkpoint.load_state(model, best_state, out)
    ranks = {
        split: rec.user_ranks(split, progress=show, sharded=True)[0] for split in ("valid", "test")
    }
    results = {
        "best_epoch": prog.best_epoch,
        "train_seconds": round(train_seconds, 2),
        "valid": metrics(ranks["valid"]),
        "test": metrics(ranks["test"]),
    }
    if group.main:  # per-user ranks first: a run with results.json is finished
        per_split = {s: (rec.split_users(s), r) for s, r in ranks.items()}
        checkpoint.atomic_write_text(out / RANKS_FILE, ranks_json(per_split))
        checkpoint.atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    if show:
        print(format_table({"valid": results["valid"], "test": results["test"]}))
    return results


def finished(run: str | Path) -> dict[str, Any] | None:
    """The final metrics of a run that has finished (its ``results.json``), else None."""
    path = Path(run) / "results.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError:
        return None  # written atomically, so only by hand: train again to rewrite it


def resume(
    run: str | Path,
    progress: bool = True,
    device: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Continue the run in folder ``run`` from its last checkpoint with its saved options
    (``device`` and ``workers`` may change); a finished run returns its results as they are."""
    run = Path(run)
    done = finished(run)
    if done is not None:
        log.info("%s has finished already: nothing to resume", run)
        if progress and distributed.current().main:
            print(f"{run} has finished already (results.json): nothing to resume")
        return done
    if distributed.current().main:
        checkpoint.repair(run)
    distributed.barrier()
    rec = KP4SR.from_pretrained(run, device=device)
    if workers is not None:
        rec.config.workers = workers
    return fit(rec, run, progress, resume=True)
