"""Training: cross-entropy on the target item's ID tokens, AdamW with warmup and linear decay,
validation by constrained beam search with early stopping on NDCG@10, best weights kept.

Every random choice (sample order, MPP template, sampled knowledge edges) comes from a generator
seeded by ``(seed, epoch, batch)``, so a run is reproducible and independent of worker count.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from kp4sr.data import Sample
from kp4sr.evaluation import format_table
from kp4sr.model import Batch, loss
from kp4sr.prompts import collate
from kp4sr.recommender import KP4SR

log = logging.getLogger(__name__)


class _Batches(torch.utils.data.Dataset):
    """Batch k of an epoch: build its fused prompts (in a worker process if any)."""

    def __init__(self, rec: KP4SR, samples: list[Sample], order: np.ndarray, epoch: int):
        self.rec, self.samples, self.order, self.epoch = rec, samples, order, epoch
        self.bs = rec.config.batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.bs)

    def __getitem__(self, k: int) -> Batch:
        rng = np.random.default_rng([self.rec.config.seed, self.epoch, k])
        idx = self.order[k * self.bs : (k + 1) * self.bs]
        chosen = [self.samples[i] for i in idx]
        prompts = [self.rec.prompt(s, rng) for s in chosen]
        targets = [self.rec.target_tokens(s.target) for s in chosen]
        return collate(prompts, self.rec.tokenizer.pad_token_id, targets)


def _epoch_order(n: int, per_epoch: int, seed: int, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch, 1 << 20])
    order = rng.permutation(n)
    return order[:per_epoch] if per_epoch > 0 else order


def fit(rec: KP4SR, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Train ``rec`` in place, writing the run folder ``out``; returns the final metrics.

    The run folder gets ``metrics.jsonl`` (one line per validation), the best weights and, at
    the end, ``results.json`` with validation and test metrics of the best weights.
    """
    from tqdm.auto import tqdm

    cfg = rec.config
    out = Path(out)
    rec.save_pretrained(out)
    torch.manual_seed(cfg.seed)
    model, device = rec.model, rec.device
    train = rec.split.train
    if not train:
        from kp4sr.errors import DataError

        raise DataError(
            "no training samples: every user needs at least 3 interactions", cfg.dataset
        )
    per_epoch = min(cfg.samples_per_epoch, len(train)) if cfg.samples_per_epoch else len(train)
    steps_per_epoch = math.ceil(per_epoch / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup * total), total)
    use_bf16 = device.type == "cuda"
    log_path = out / "metrics.jsonl"
    log_path.write_text("")
    best, best_epoch, bad = -1.0, 0, 0
    t0 = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = _epoch_order(len(train), per_epoch, cfg.seed, epoch)
        loader = DataLoader(
            _Batches(rec, train, order, epoch),
            batch_size=None,
            shuffle=False,
            num_workers=cfg.workers,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
            # worker seeds come from this generator, not from the global RNG that dropout uses
            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
        )
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False)
        run_loss = torch.zeros((), device=device)
        for step, batch in enumerate(bar, 1):
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                value = loss(model, batch, cfg.tree_mask)
            opt.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            run_loss += value.detach()
            if progress and step % 20 == 0:  # a host sync only when the bar is drawn
                bar.set_postfix(loss=f"{(run_loss / step).item():.3f}")
        train_loss = (run_loss / max(1, len(loader))).item()
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            valid = rec.evaluate("valid", progress=progress)
            record["valid"] = valid
            if valid["NDCG@10"] > best:
                best, best_epoch, bad = valid["NDCG@10"], epoch, 0
                rec.save_pretrained(out, weights_only=True)
            else:
                bad += 1
            log.info("epoch %d loss %.4f valid NDCG@10 %.4f", epoch, train_loss, valid["NDCG@10"])
            if progress:
                print(
                    f"epoch {epoch}: loss {train_loss:.4f}  valid HR@10 {valid['HR@10']:.4f}"
                    f"  NDCG@10 {valid['NDCG@10']:.4f}",
                    flush=True,
                )
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if bad >= cfg.patience:
            log.info("early stop after epoch %d (best epoch %d)", epoch, best_epoch)
            break
    train_seconds = time.perf_counter() - t0
    best_model = type(model).from_pretrained(str(out / "model")).to(device)
    rec.model = best_model
    results = {
        "best_epoch": best_epoch,
        "train_seconds": round(train_seconds, 2),
        "valid": rec.evaluate("valid", progress=progress),
        "test": rec.evaluate("test", progress=progress),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if progress:
        print(format_table({"valid": results["valid"], "test": results["test"]}))
    return results
