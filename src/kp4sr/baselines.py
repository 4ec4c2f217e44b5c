"""Standard sequential recommenders, trained and evaluated on exactly KP4SR's split.

Every baseline reads the same :class:`~kp4sr.data.Split` (same training positions, same
validation and test targets, the same ``max_items`` history window) and is ranked over all
items with the same metrics, so that a comparison table compares models, not pipelines.

- ``pop``: most popular item in the training positions (Ji et al., "A Re-visit of the
  Popularity Baseline in Recommender Systems", SIGIR 2020).
- ``gru4rec``: a GRU over the history (Hidasi et al., ICLR 2016), full softmax cross-entropy.
- ``sasrec``: a causal self-attention encoder (Kang & McAuley, ICDM 2018) trained with full
  softmax cross-entropy, which beats its original one-negative BCE loss (Klenitskiy & Vasilev,
  RecSys 2023).
- ``bert4rec``: a bidirectional encoder trained on the cloze task (Sun et al., CIKM 2019); it
  predicts the item at a ``[mask]`` appended to the history.

``item_knowledge`` (off by default) gives GRU4Rec, SASRec and BERT4Rec the KG as side
information: an item's vector, in the input and in the tied output layer, becomes its ID
embedding plus the mean embedding of its 1-hop KG tails (genres, directors, ...). It answers
whether the knowledge graph carries any next-item signal that a collaborative model can use,
independently of how KP4SR writes it into prompts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kp4sr.data import Dataset, Sample, Split, item_attributes, seen_before, seen_mask
from kp4sr.evaluation import (
    RANKS_FILE,
    WINDOWS,
    choose_recent,
    metrics,
    ranks_json,
    target_ranks,
)

BASELINES = ("pop", "gru4rec", "sasrec", "bert4rec")


@dataclass
class BaselineConfig:
    """Options shared by the neural baselines (defaults suit ML-100k on a CPU)."""

    dim: int = 64  # embedding and hidden size
    layers: int = 2  # transformer blocks / GRU layers
    heads: int = 2  # attention heads
    dropout: float = 0.2
    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # validations without a better NDCG@10 before stopping
    mask_prob: float = 0.2  # BERT4Rec: share of history items masked in training
    train_exclude_seen: bool = False  # the training softmax leaves out the user's earlier items
    eval_max_items: int = 0  # ranking reads only the last N history items (0: all), as KP4SR's
    eval_windows: bool = False  # rank by the mean probability over the last 1..N items, as KP4SR's
    item_knowledge: str = ""  # KG relations whose tails join an item's vector ("all"; "": off)
    seed: int = 0
    device: str = "cpu"


def set_recent(config: Any, choice: int | str) -> None:
    """Set a KP4SR ``Config`` or a ``BaselineConfig`` to a ``choose_recent`` candidate: the
    last ``choice`` items, or the mixture over windows (``WINDOWS``)."""
    config.eval_windows = choice == WINDOWS
    config.eval_max_items = 0 if choice == WINDOWS else int(choice)


def rank_scores(scores: np.ndarray, seen: list[np.ndarray] | None, k: int) -> np.ndarray:
    """Top-``k`` item indices per row of a [U, n_items] score matrix, seen items excluded."""
    scores = scores.astype(np.float32, copy=True)
    if seen is not None:
        for row, items in enumerate(seen):
            scores[row, items] = -np.inf
    top = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


class Baseline:
    """Common interface: ``fit`` on a split, ``scores`` for a batch of histories."""

    name = "baseline"

    def __init__(self, n_items: int, max_items: int, config: BaselineConfig):
        self.n_items, self.max_items, self.config = n_items, max_items, config

    def fit(self, dataset: Dataset, split: Split, progress: bool = False) -> dict[str, Any]:
        raise NotImplementedError

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """[B, n_items] scores, higher is better."""
        raise NotImplementedError

    def window_scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """[B, n_items] log of each item's mean softmax probability over the last 1, 2, ..,
        all items of each history (``eval_windows``, as ``KP4SR.window_scores``)."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        total = np.zeros((len(histories), self.n_items), dtype=np.float64)
        for k in range(1, int(lengths.max(initial=0)) + 1):
            rows = np.flatnonzero(lengths >= k)
            sc = torch.from_numpy(self.scores([histories[r][-k:] for r in rows])).double()
            total[rows] += torch.softmax(sc, dim=-1).numpy()
        with np.errstate(divide="ignore"):
            return np.log(total / np.maximum(lengths, 1)[:, None])

    def evaluate(
        self, dataset: Dataset, samples: list[Sample], exclude_seen: bool = True, k: int = 20
    ) -> dict[str, float]:
        return metrics(self.user_ranks(dataset, samples, exclude_seen, k))

    def user_ranks(
        self, dataset: Dataset, samples: list[Sample], exclude_seen: bool = True, k: int = 20
    ) -> np.ndarray:
        """Each sample's 0-based rank of its target in the top ``k`` (-1: not there)."""
        ranked, k_recent = [], self.config.eval_max_items
        for s in range(0, len(samples), 512):
            chunk = samples[s : s + 512]
            hist = [x.history[-k_recent:] if k_recent else x.history for x in chunk]
            sc = self.window_scores(hist) if self.config.eval_windows else self.scores(hist)
            seen = seen_before(dataset, chunk) if exclude_seen else None
            ranked.append(rank_scores(sc, seen, k))
        items = np.concatenate(ranked) if ranked else np.zeros((0, k), dtype=np.int64)
        targets = np.array([x.target for x in samples], dtype=np.int64)
        return target_ranks(items, targets)


class Pop(Baseline):
    """Most popular items among the training targets (and the first items of sequences)."""

    name = "pop"

    def fit(self, dataset: Dataset, split: Split, progress: bool = False) -> dict[str, Any]:
        counts = np.zeros(self.n_items, dtype=np.float64)
        targets = np.array([s.target for s in split.train], dtype=np.int64)
        np.add.at(counts, targets, 1.0)
        firsts = np.array([seq[0] for seq in dataset.sequences if len(seq) >= 3], dtype=np.int64)
        np.add.at(counts, firsts, 1.0)
        self.counts = counts
        return {"epochs": 0}

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), self.n_items)).copy()


class _SequenceNet(nn.Module):
    """Embeds a left-padded history [B, T] (0 = padding, items are 1..n) and returns [B, d]."""

    def __init__(
        self,
        kind: str,
        n_items: int,
        max_items: int,
        cfg: BaselineConfig,
        attributes: tuple[np.ndarray, np.ndarray, int] | None = None,
    ):
        super().__init__()
        self.kind = kind
        d = cfg.dim
        self.item = nn.Embedding(n_items + 2, d, padding_idx=0)  # n+1 is BERT4Rec's [mask]
        self.attr: nn.EmbeddingBag | None = None
        if attributes is not None:  # item_knowledge: ID vector + mean of the item's KG tails
            offsets, values, n_attr = attributes
            self.attr = nn.EmbeddingBag(max(1, n_attr), d, mode="mean")  # N(0, 1), as self.item
            self.register_buffer("attr_values", torch.from_numpy(values), persistent=False)
            self.register_buffer("attr_offsets", torch.from_numpy(offsets[:-1]), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        if kind == "gru4rec":
            between = cfg.dropout if cfg.layers > 1 else 0.0  # dropout between GRU layers
            self.gru = nn.GRU(d, d, num_layers=cfg.layers, batch_first=True, dropout=between)
        else:
            self.pos = nn.Embedding(max_items + 1, d)
            layer = nn.TransformerEncoderLayer(
                d,
                cfg.heads,
                4 * d,
                cfg.dropout,
                batch_first=True,
                norm_first=True,
                activation="gelu",
            )
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
        self.out_bias = nn.Parameter(torch.zeros(n_items + 2))

    def item_vectors(self) -> torch.Tensor:
        """[n_items + 2, d]: the ID embeddings, plus (``item_knowledge``) each item's mean KG
        tail embedding; an item without tails (and padding, [mask]) keeps its ID vector."""
        if self.attr is None:
            return self.item.weight
        tails = self.attr(self.attr_values, self.attr_offsets)  # [n_items, d], 0 without tails
        pad = tails.new_zeros(1, tails.shape[1])
        return self.item.weight + torch.cat([pad, tails, pad])

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """[B, T] ids -> [B, T, d] hidden states."""
        x = self.drop(nn.functional.embedding(seq, self.item_vectors(), padding_idx=0))
        if self.kind == "gru4rec":
            return self.gru(x)[0]
        t = seq.shape[1]
        x = x + self.pos(torch.arange(t, device=seq.device))[None]
        # [B, T, T] True where a position may not look: padding, and the future for SASRec.
        # Every position may look at itself, so no softmax row is empty: an empty row is NaN in
        # PyTorch's inference fast path, and under SASRec's causal mask every padding position
        # of a short history would have one (its NaN then reaching the real positions through
        # the next layer's zero-weighted values). Real positions see exactly what they did.
        eye = torch.eye(t, dtype=torch.bool, device=seq.device)
        blocked = (seq == 0)[:, None, :].expand(-1, t, -1)
        if self.kind == "sasrec":
            blocked = blocked | torch.triu(torch.ones_like(eye), 1)
        blocked = blocked & ~eye
        heads = self.encoder.layers[0].self_attn.num_heads
        h = self.encoder(x, mask=blocked.repeat_interleave(heads, dim=0))
        return self.norm(h)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., n_items + 2] by the tied item embeddings."""
        return h @ self.item_vectors().T + self.out_bias


class NeuralBaseline(Baseline):
    """GRU4Rec, SASRec or BERT4Rec with full softmax cross-entropy and early stopping."""

    def __init__(
        self,
        kind: str,
        n_items: int,
        max_items: int,
        config: BaselineConfig,
        attributes: tuple[np.ndarray, np.ndarray, int] | None = None,
    ):
        super().__init__(n_items, max_items, config)
        self.name = kind
        torch.manual_seed(config.seed)
        net = _SequenceNet(kind, n_items, max_items, config, attributes)
        self.net = net.to(config.device)
        self.mask_id = n_items + 1

    def _pad(self, histories: list[np.ndarray], extra: int = 0) -> torch.Tensor:
        """Left-pad histories (item i is id i+1) to one length; ``extra`` free slots at the end."""
        t = self.max_items + extra
        out = np.zeros((len(histories), t), dtype=np.int64)
        for r, h in enumerate(histories):
            h = np.asarray(h[-self.max_items :], dtype=np.int64) + 1
            out[r, t - extra - len(h) : t - extra] = h
        if extra:
            out[:, -1] = self.mask_id
        return torch.from_numpy(out).to(self.config.device)

    def _last_logits(self, histories: list[np.ndarray]) -> torch.Tensor:
        extra = 1 if self.name == "bert4rec" else 0
        seq = self._pad(histories, extra)
        h = self.net.hidden(seq)[:, -1]  # [B, d]
        return self.net.logits(h)[:, 1 : self.n_items + 1]  # [B, n_items]

    @torch.no_grad()
    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        self.net.eval()
        return self._last_logits(histories).float().cpu().numpy()

    def _loss(
        self,
        batch: list[Sample],
        rng: np.random.Generator,
        dataset: Dataset | None = None,
    ) -> torch.Tensor:
        """Cross-entropy of each sample's target; with ``dataset`` (``train_exclude_seen``)
        the items the user had before the target are left out of the target's softmax."""
        targets = torch.tensor([s.target for s in batch], device=self.config.device)
        exclude = None
        if dataset is not None:
            n = self.n_items
            mask = seen_mask(seen_before(dataset, batch), targets.cpu().numpy(), np.arange(n), n)
            exclude = torch.from_numpy(mask).to(self.config.device)
        if self.name != "bert4rec":
            logits = self._last_logits([s.history for s in batch])
            if exclude is not None:
                logits = logits.masked_fill(exclude, float("-inf"))
            return nn.functional.cross_entropy(logits, targets)
        # BERT4Rec: cloze over the history plus the target at the appended [mask]
        full = [np.append(s.history[-self.max_items :], s.target) for s in batch]
        seq = self._pad([f[:-1] for f in full], 1)  # [B, T+1], last is [mask]
        labels = torch.full_like(seq, -100)
        labels[:, -1] = targets + 1
        hist = seq[:, :-1]
        drop = torch.from_numpy(rng.random(tuple(hist.shape)) < self.config.mask_prob).to(
            seq.device
        )
        drop &= hist > 0
        labels[:, :-1] = torch.where(drop, hist, labels[:, :-1])
        seq = seq.clone()
        seq[:, :-1] = torch.where(drop, torch.full_like(hist, self.mask_id), hist)
        logits = self.net.logits(self.net.hidden(seq))  # [B, T+1, n+2]
        if exclude is not None:  # the appended [mask] predicts the target: its row only
            last = logits[:, -1].clone()
            last[:, 1 : self.n_items + 1] = last[:, 1 : self.n_items + 1].masked_fill(
                exclude, float("-inf")
            )
            logits = torch.cat([logits[:, :-1], last[:, None]], dim=1)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    def fit(self, dataset: Dataset, split: Split, progress: bool = False) -> dict[str, Any]:
        cfg = self.config
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        train = split.train
        seen_from = dataset if cfg.train_exclude_seen else None
        best, best_state, best_epoch, bad = -1.0, None, 0, 0
        log = []
        for epoch in range(1, cfg.epochs + 1):
            rng = np.random.default_rng([cfg.seed, epoch])
            order = rng.permutation(len(train))
            self.net.train()
            total = 0.0
            for s in range(0, len(order), cfg.batch_size):
                batch = [train[i] for i in order[s : s + cfg.batch_size]]
                loss = self._loss(batch, rng, seen_from)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batch)
            valid = self.evaluate(dataset, split.valid)
            log.append({"epoch": epoch, "loss": total / max(1, len(train)), "valid": valid})
            if progress:
                print(
                    f"{self.name} epoch {epoch}: loss {log[-1]['loss']:.4f} "
                    f"valid NDCG@10 {valid['NDCG@10']:.4f}",
                    flush=True,
                )
            if valid["NDCG@10"] > best:
                best, best_epoch, bad = valid["NDCG@10"], epoch, 0
                best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            else:
                bad += 1
                if bad >= cfg.patience:
                    break
        if best_state is not None:
            self.net.load_state_dict(best_state)
        return {"epochs": len(log), "best_epoch": best_epoch, "log": log}


def make_baseline(
    name: str,
    n_items: int,
    max_items: int,
    config: BaselineConfig,
    dataset: Dataset | None = None,
) -> Baseline:
    """The baseline ``name``; ``dataset`` supplies the KG when ``config.item_knowledge`` is set."""
    from kp4sr.errors import ConfigError

    if name == "pop":
        return Pop(n_items, max_items, config)
    if name in ("gru4rec", "sasrec", "bert4rec"):
        attributes = None
        if config.item_knowledge:
            if dataset is None:
                raise ConfigError("item_knowledge needs the dataset (its knowledge graph)")
            attributes = item_attributes(dataset, config.item_knowledge)
        return NeuralBaseline(name, n_items, max_items, config, attributes)
    raise ConfigError(f"unknown baseline {name!r}: expected one of {', '.join(BASELINES)}")


def run_baseline(
    name: str,
    dataset: Dataset,
    split: Split,
    max_items: int,
    config: BaselineConfig,
    out: Path | None = None,
    progress: bool = False,
    tune_recent: bool = False,
) -> dict[str, Any]:
    """Train one baseline and return its validation and test metrics and training time.

    ``tune_recent``: then rank from the last k history items or their window mixture, as
    chosen on validation (:func:`~kp4sr.evaluation.choose_recent`), as ``kp4sr benchmark
    --tune-eval-max-items`` does for every model."""
    model = make_baseline(name, len(dataset.items), max_items, config, dataset)
    t0 = time.perf_counter()
    info = model.fit(dataset, split, progress)
    seconds = time.perf_counter() - t0
    recent = {}
    if tune_recent:  # the trained model ranks as its validation prefers

        def valid_at(c: int | str) -> np.ndarray:
            set_recent(model.config, c)
            return model.user_ranks(dataset, split.valid)

        chosen, by_k = choose_recent(valid_at, max_items)
        set_recent(model.config, chosen)
        recent = {"eval_max_items": chosen, "valid_NDCG@10_by_eval_max_items": by_k}
    ranks = {s: model.user_ranks(dataset, getattr(split, s)) for s in ("valid", "test")}
    result = {
        "model": name,
        "seed": config.seed,
        "train_seconds": round(seconds, 2),
        "best_epoch": info.get("best_epoch", 0),
        "train_positions": len(split.train),  # samples per epoch: every training position
        "valid": metrics(ranks["valid"]),
        "test": metrics(ranks["test"]),
        # each user's last training target: how well it fits what it learnt from
        "train": metrics(model.user_ranks(dataset, split.last_train())),
        **recent,
        "config": asdict(config),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps({**result, "log": info.get("log", [])}))
        users = {s: [str(dataset.users[x.user]) for x in getattr(split, s)] for s in ranks}
        (out / RANKS_FILE).write_text(ranks_json({s: (users[s], r) for s, r in ranks.items()}))
    return result
