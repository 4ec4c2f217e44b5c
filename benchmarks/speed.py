"""Speed of KP4SR's prompt+mask pipeline, training and evaluation, each against a plain reference.

    python benchmarks/speed.py                       # full run: tiny and t5-small, 512 tokens
    python benchmarks/speed.py --quick               # about a minute on a 2-core CPU
    PYTHONPATH=src python3 benchmarks/speed.py --device cuda --sizes tiny,t5-small --out DIR

Every figure is measured in one run, on the same inputs, as ours against a plain reference written
here, the way KP4SR's published code works:

- prompt+mask: the reference builds each sample in Python, re-tokenising every sentence (MPP
  pieces, item IDs, every knowledge sentence) and filling a dense L x L NumPy mask node by node;
  ours assembles the whole batch at once from cached token-id arrays (one vectorised edge draw
  per hop, one gather of every token) and builds the 4-D boolean mask from the tree's nodes.
  Both must give identical token ids and masks (checked here on every batch).
- training: the reference feeds the reference pipeline's batches, built in the training loop, to
  T5 with eager attention; ours is what ``kp4sr.training.fit`` runs (prompts built by DataLoader
  workers, optional length bucketing, SDPA with the boolean tree mask, bf16 autocast on a GPU).
  Reported: samples/s, real (non-padding) tokens/s, and the share of time spent waiting on data.
- evaluation: the reference runs a constrained beam search per user (one user at a time, its
  beams batched, a Python dict trie); ours is ``KP4SR.rank`` (many users per batch, vectorised
  trie). Same beams, and the top-k lists must be identical.
- exact full ranking: every item scored by teacher forcing (``KP4SR.full_ranks``), ours against
  the same code under transformers' own ``sdpa`` attention, which projects each user's
  cross-attention keys and values again for every item; the ranks must be identical.
- memory: peak resident memory of each phase (sampled every 5 ms), and on a GPU the peak
  allocated GPU memory.

The last line printed is one JSON object (``prompt_mask_speedup``, ``eval_speedup``,
``train_speedup_<size>``, ...); ``--out DIR`` also writes ``DIR/results.json`` and
``DIR/results.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.models.t5.modeling_t5 import T5DenseActDense

from kp4sr import toy
from kp4sr.data import Sample
from kp4sr.decoding import ItemTrie
from kp4sr.model import (
    ATTENTION,
    Batch,
    additive_mask,
    build_model,
    set_tree_blocks,
    use_torch_dropout,
)
from kp4sr.prompts import PromptBuilder
from kp4sr.recommender import KP4SR, Config
from kp4sr.templates import HISTORY_SEPARATOR
from kp4sr.tree_mask import encoder_mask

HOLE = "\x00HISTORY\x00"

# ----------------------------------------------------------------------------- reference pipeline


def reference_sample(
    builder: PromptBuilder, user_text: str, history: np.ndarray, rng: np.random.Generator | None
) -> tuple[list[int], list[int], np.ndarray]:
    """One fused prompt the plain way: token ids, per-token node ids and the dense L x L mask.

    Every sentence is tokenised again, node ids are appended token by token, and the mask is
    filled node pair by node pair. Edge choice uses the same sampler as ours (``Adjacency.sample``,
    checked against ``Adjacency.edges`` and its rules in the tests), so both see the same random
    draws.
    """

    def enc(text: str) -> list[int]:
        return list(builder.tok.encode(text, add_special_tokens=False))

    cfg = builder.config
    template = 0 if rng is None else int(rng.integers(len(builder.mpp_templates)))
    text = builder.mpp_templates[template].format(user=user_text, history=HOLE, mask=builder.mask)
    before, after = text.split(HOLE)
    ids: list[int] = []
    nodes: list[int] = []
    parents = [-1]

    def add(tokens: list[int], node: int) -> None:
        for t in tokens:
            ids.append(t)
            nodes.append(node)

    add(enc(before), 0)
    for k, item in enumerate(history):
        if k:
            add(enc(HISTORY_SEPARATOR), 0)
        add(enc(builder.item_texts[int(item)]), len(parents))
        parents.append(0)
    add(enc(after), 0)
    kg = builder.kg
    if cfg.knowledge and cfg.hop > 0 and kg.num_triples:
        budget = cfg.max_length - len(ids) - 1
        frontier = []  # (node, entity to expand, entity never to go back to)
        for k in range(len(history) - 1, -1, -1):
            e = int(builder.item_entity[int(history[k])])
            if e >= 0:
                frontier.append((k + 1, e, -1))
        full = False
        for _ in range(cfg.hop):
            ents = np.array([f[1] for f in frontier], dtype=np.int64)
            excl = np.array([f[2] for f in frontier], dtype=np.int64)
            edges, seg = builder.adj.sample(ents, excl, cfg.degree, rng)
            nxt = []
            for edge, s in zip(edges.tolist(), seg.tolist()):
                node, ent, _ = frontier[s]
                r, t = int(builder.adj.rel[edge]), int(builder.adj.tail[edge])
                tokens = enc(builder.fact_text(ent, r, t))
                if len(tokens) > budget:
                    full = True
                    break
                budget -= len(tokens)
                add(tokens, len(parents))
                nxt.append((len(parents), t, ent))
                parents.append(node)
            if full:
                break
            frontier = nxt
    add([builder.eos], 0)
    return ids, nodes, reference_mask(nodes, parents)


def reference_mask(nodes: list[int], parents: list[int]) -> np.ndarray:
    """Dense L x L mask: a node's tokens see its parent's, its siblings' and its children's."""
    length = len(nodes)
    mask = np.zeros((length, length), dtype=bool)
    node_arr = np.asarray(nodes)
    members = [np.flatnonzero(node_arr == n) for n in range(len(parents))]
    children: list[list[int]] = [[] for _ in parents]
    for n, p in enumerate(parents):
        if p >= 0:
            children[p].append(n)
    for a, p in enumerate(parents):
        near = children[a] + ([p] + children[p] if p >= 0 else [a])
        for b in near:
            mask[np.ix_(members[a], members[b])] = True
    return mask


def reference_batch(
    builder: PromptBuilder,
    chosen: list[Sample],
    users: list[str],
    rngs: list[np.random.Generator | None],
    pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Padded token ids [B, L] and the 4-D mask [B, 1, L, L] (padding sees only padding)."""
    built = [reference_sample(builder, u, s.history, r) for s, u, r in zip(chosen, users, rngs)]
    lmax = max(len(ids) for ids, _, _ in built)
    ids_out = np.full((len(built), lmax), pad_id, dtype=np.int64)
    mask_out = np.zeros((len(built), 1, lmax, lmax), dtype=bool)
    for k, (ids, _, mask) in enumerate(built):
        n = len(ids)
        ids_out[k, :n] = ids
        mask_out[k, 0, :n, :n] = mask
        mask_out[k, 0, n:, n:] = True
    return ids_out, mask_out


def fast_batch(
    builder: PromptBuilder,
    chosen: list[Sample],
    users: list[str],
    rngs: list[np.random.Generator | None],
    pad_id: int,
) -> tuple[Batch, torch.Tensor]:
    """Ours: the whole batch assembled at once from cached token ids, and the 4-D mask."""
    batch = builder.build_batch(users, [s.history for s in chosen], rngs)
    return batch, encoder_mask(batch.node_of_token, batch.parents)


# ----------------------------------------------------------------------------- reference search


@torch.no_grad()
def reference_rank(
    model: Any,
    builder: PromptBuilder,
    trie: ItemTrie,
    users: list[str],
    histories: list[np.ndarray],
    seen: list[set[int]] | None,
    beams: int,
    device: torch.device,
) -> np.ndarray:
    """Constrained beam search one user at a time ([U, beams] items, -1 where fewer).

    Per user: the reference prompt and dense mask, the encoder, then each step the decoder on
    that user's live beams, candidates listed in Python from a dict trie, sorted, top ``beams``.
    """
    model.eval()
    start = model.config.decoder_start_token_id
    below = _items_below(trie)
    out = np.full((len(users), beams), -1, dtype=np.int64)
    for u, (user, hist) in enumerate(zip(users, histories)):
        ids, _, mask = reference_sample(builder, user, hist, None)
        ids_t = torch.tensor([ids], device=device)
        mask_t = torch.from_numpy(mask)[None, None].to(device)
        enc = model.get_encoder()(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        banned = seen[u] if seen is not None else set()
        # a beam: (score, token list, trie node, finished)
        live: list[tuple[float, list[int], int, bool]] = [(0.0, [start], 0, False)]
        for _ in range(trie.depth):
            todo = [b for b in live if not b[3]]
            if not todo:
                break
            dec = torch.tensor([b[1] for b in todo], device=device)
            logits = model(
                encoder_outputs=(enc.expand(len(todo), -1, -1),),
                attention_mask=torch.ones(len(todo), len(ids), device=device, dtype=torch.long),
                decoder_input_ids=dec,
            ).logits[:, -1, :]
            logp = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
            cand = [b for b in live if b[3]]
            for row, (score, toks, node, _) in enumerate(todo):
                for tok, child in trie.children[node].items():
                    if below[child] <= banned:
                        continue
                    cand.append(
                        (score + float(logp[row, tok]), [*toks, tok], child, tok == trie.eos_id)
                    )
            cand.sort(key=lambda b: -b[0])
            live = cand[:beams]
        for k, (_, _, node, _) in enumerate(live):
            out[u, k] = trie.item_of[node]
    return out


def _items_below(trie: ItemTrie) -> list[frozenset[int]]:
    """The items in each trie node's subtree (a node is dead when all of them are banned)."""
    sets: list[set[int]] = [set() for _ in trie.children]
    for item, path in enumerate(trie.paths):
        for node in path.tolist():
            sets[node].add(item)
    return [frozenset(s) for s in sets]


# ----------------------------------------------------------------------------- measuring


class PeakRSS:
    """Peak resident memory of this process while the block runs.

    On Linux the kernel's own high-water mark (``VmHWM``) is reset at the start of the block
    (``5`` written to ``/proc/self/clear_refs``) and read at its end: nothing runs beside the
    timed code. A sampling thread — the fallback elsewhere — takes the GIL every few
    milliseconds and measurably slows Python-heavy code such as prompt construction.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @staticmethod
    def _high_water() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.peak = self.now()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if self._high_water() is not None:
                return self
        except OSError:
            pass
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, self.now(), self._high_water() or 0)

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def gpu_peak(device: torch.device, into: dict[str, Any], key: str) -> Iterator[None]:
    """Peak allocated GPU memory of the block (MiB), only on CUDA."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        into[key] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


# ----------------------------------------------------------------------------- the world


def make_recommender(args: argparse.Namespace, device: torch.device) -> KP4SR:
    """The toy dataset (generated, so the same inputs everywhere), prompts of ``--length``."""
    cfg = Config(
        max_length=args.length,
        hop=2,
        degree=8,
        backbone="tiny",
        dropout=0.0,
        seed=0,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        beams=args.beams,
        device=str(device),
        workers=args.workers,
        tree_blocks=args.tree_blocks,
    )
    ds = toy.generate(seed=0, n_users=args.toy_users) if args.toy_users else toy.generate(seed=0)
    return KP4SR.create(cfg, dataset=ds)


def stock(model: Any, attn: str) -> Any:
    """A copy of ``model`` as stock ``transformers`` runs it: attention ``attn``, T5's own
    position bias, a ReLU that allocates its output and ``nn.Dropout`` (none of
    kp4sr.model.use_fast_paths)."""
    plain = use_torch_dropout(copy.deepcopy(model))
    plain.set_attn_implementation(attn)
    for module in plain.modules():
        if isinstance(module, T5DenseActDense):
            module.act = torch.nn.ReLU()
        vars(module).pop("compute_bias", None)
    return plain


def sample_rngs(n: int, seed: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, i]) for i in range(n)]


def bench_prompt_mask(rec: KP4SR, n: int, bs: int) -> dict[str, Any]:
    """Samples/s of prompt+mask construction, reference and ours, checked identical."""
    samples = [rec.split.train[i % len(rec.split.train)] for i in range(n)]
    users = [rec.user_text(s.user) for s in samples]
    pad = rec.tokenizer.pad_token_id
    chunks = [range(s, min(n, s + bs)) for s in range(0, n, bs)]

    def run(fn: Callable, builder: PromptBuilder) -> tuple[list, float]:
        rngs = sample_rngs(n, 7)
        outs = []
        t = time.perf_counter()
        for c in chunks:
            outs.append(
                fn(
                    builder,
                    [samples[i] for i in c],
                    [users[i] for i in c],
                    [rngs[i] for i in c],
                    pad,
                )
            )
        return outs, time.perf_counter() - t

    res: dict[str, Any] = {"samples": n, "batch_size": bs}
    fresh = rec.new_builder()
    _, cold = run(fast_batch, fresh)  # a new builder: its caches fill on the way
    res["ours_cold_samples_per_s"] = round(n / cold, 1)
    # batch by batch, ours then the reference, so that both see the same machine load; each
    # pair is compared at once and dropped, as a training loop drops its batches (keeping all
    # of them alive would time fresh page faults for every 8 MB mask, not their construction)
    rngs_ours, rngs_ref = sample_rngs(n, 7), sample_rngs(n, 7)
    same, tokens = True, 0
    t_ours = t_ref = 0.0
    with PeakRSS() as mem:
        for c in chunks:
            args = ([samples[i] for i in c], [users[i] for i in c])
            t = time.perf_counter()
            batch, mask = fast_batch(fresh, *args, [rngs_ours[i] for i in c], pad)
            t_ours += time.perf_counter() - t
            t = time.perf_counter()
            ids, ref_mask = reference_batch(fresh, *args, [rngs_ref[i] for i in c], pad)
            t_ref += time.perf_counter() - t
            same &= np.array_equal(batch.input_ids.numpy(), ids)
            same &= np.array_equal(mask.numpy(), ref_mask)
            tokens += int((batch.node_of_token >= 0).sum())
            del batch, mask, ids, ref_mask
    res["peak_rss_mib"] = mem.mib
    res.update(
        reference_samples_per_s=round(n / t_ref, 1),
        ours_samples_per_s=round(n / t_ours, 1),
        speedup=round(t_ref / t_ours, 2),
        identical=bool(same),
        mean_tokens=round(tokens / n, 1),
    )
    return res


def _train_figures(
    who: str, samples: int, tokens: int, slots: int, wait: float, total: float, rss: float
) -> dict[str, float]:
    """The training figures of one side (``ours`` or ``reference``) over ``total`` seconds."""
    return {
        f"{who}_samples_per_s": round(samples / total, 2),
        f"{who}_tokens_per_s": round(tokens / total, 1),
        f"{who}_data_share": round(wait / total, 4),
        f"{who}_padding_share": round(1 - tokens / slots, 4),
        f"{who}_peak_rss_mib": rss,
    }


def bench_train(
    rec: KP4SR, size: str, steps: int, bs: int, device: torch.device, workers: int
) -> dict[str, Any]:
    """One size: reference (in-loop reference pipeline, eager attention, plain shuffle) against
    ours (fit's DataLoader over cached prompts with workers, length buckets, SDPA), same
    optimiser and the same samples. The first step of each is a warm-up, not timed."""
    from torch.utils.data import DataLoader

    from kp4sr.batching import bucketed_order, estimate_lengths
    from kp4sr.model import loss
    from kp4sr.training import _Batches

    tok = rec.tokenizer
    pad = tok.pad_token_id
    use_bf16 = device.type == "cuda"
    res: dict[str, Any] = {"size": size, "steps": steps, "batch_size": bs, "workers": workers}
    train = rec.split.train
    n = (steps + 1) * bs
    base = np.random.default_rng(3).permutation(len(train))
    t = time.perf_counter()
    lengths = estimate_lengths(rec.builder, train, rec.user_text)
    res["length_estimate_seconds"] = round(time.perf_counter() - t, 3)
    ours_order = bucketed_order(base, lengths, bs, seed=3, epoch=1)[:n]
    ref_order = ours_order[np.random.default_rng(5).permutation(n)]  # same samples, no buckets

    def new_model(attn: str) -> Any:
        torch.manual_seed(0)
        m = build_model(size, len(tok), pad, tok.eos_token_id, dropout=0.1).to(device)
        set_tree_blocks(m, rec.config.tree_blocks)
        return (m if attn == ATTENTION else stock(m, attn)).train()

    def step(model: Any, opt: Any, batch: Batch, mask4d: torch.Tensor | None) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            if mask4d is None:
                value = loss(model, batch, True)
            else:
                # eager attention adds the mask to the scores: 0 / -inf, not booleans
                enc = model.get_encoder()(
                    input_ids=batch.input_ids, attention_mask=additive_mask(mask4d, torch.float32)
                )
                value = model(
                    encoder_outputs=enc,
                    attention_mask=(batch.node_of_token >= 0).long(),
                    labels=batch.labels,
                ).loss
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return value.detach()

    # ours: what fit() runs
    model = new_model(ATTENTION)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rec.builder.warm()
    loader = DataLoader(
        _Batches(rec, train, ours_order, 1),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    wait = tokens = slots = 0.0
    with PeakRSS() as mem, gpu_peak(device, res, "ours_gpu_peak_mib"):
        it = iter(loader)
        run_loss = torch.zeros((), device=device)
        start = time.perf_counter()
        for k in range(steps + 1):
            t0 = time.perf_counter()
            batch, _ = next(it)
            t1 = time.perf_counter()
            if k:
                wait += t1 - t0
                tokens += float((batch.node_of_token >= 0).sum())
                slots += batch.input_ids.numel()
            run_loss += step(model, opt, batch.to(device), None)
            if k == 0:
                sync(device)
                start = time.perf_counter()
        sync(device)
        total = time.perf_counter() - start
        del it
    res.update(_train_figures("ours", steps * bs, tokens, slots, wait, total, mem.mib))
    res["ours_mean_loss"] = round(float(run_loss) / (steps + 1), 4)
    del model, opt, loader
    gc.collect()

    # reference: batches built in the loop by the reference pipeline, eager attention
    model = new_model("eager")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wait = tokens = slots = 0.0
    with PeakRSS() as mem, gpu_peak(device, res, "reference_gpu_peak_mib"):
        start = time.perf_counter()
        for k in range(steps + 1):
            t0 = time.perf_counter()
            chosen = [train[i] for i in ref_order[k * bs : (k + 1) * bs]]
            users = [rec.user_text(s.user) for s in chosen]
            ids, mask = reference_batch(rec.builder, chosen, users, sample_rngs(bs, k), pad)
            targets = [rec.target_tokens(s.target) for s in chosen]
            lab = np.full((bs, max(len(x) for x in targets)), -100, dtype=np.int64)
            for r, x in enumerate(targets):
                lab[r, : len(x)] = x
            node = np.where(ids != pad, 0, -2)  # only the padding mark is used (cross-attention)
            batch = Batch(
                torch.from_numpy(ids), torch.from_numpy(node), torch.zeros(1), torch.from_numpy(lab)
            ).to(device)
            mask_t = torch.from_numpy(mask).to(device)
            t1 = time.perf_counter()
            if k:
                wait += t1 - t0
                tokens += float((ids != pad).sum())
                slots += ids.size
            step(model, opt, batch, mask_t)
            if k == 0:
                sync(device)
                start = time.perf_counter()
        sync(device)
        total = time.perf_counter() - start
    res.update(_train_figures("reference", steps * bs, tokens, slots, wait, total, mem.mib))
    res["speedup"] = round(res["ours_samples_per_s"] / res["reference_samples_per_s"], 2)
    del model, opt
    gc.collect()
    return res


def bench_attention(
    rec: KP4SR, size: str, bs: int, device: torch.device, reps: int
) -> dict[str, Any]:
    """Forward+backward time of one batch under each attention implementation, same mask and
    weights; losses must agree. On CUDA, flex_attention with a block mask when it runs."""
    from kp4sr.model import loss

    tok = rec.tokenizer
    chosen = rec.split.train[:bs]
    batch = rec.builder.build_batch(
        [rec.user_text(s.user) for s in chosen],
        [s.history for s in chosen],
        [np.random.default_rng(i) for i in range(len(chosen))],
        [rec.target_tokens(s.target) for s in chosen],
    ).to(device)
    use_bf16 = device.type == "cuda"
    out: dict[str, Any] = {}
    # ours with and without tree blocks (the others ignore them)
    impls = [("eager", "off"), ("sdpa", "off"), (ATTENTION, "on"), (ATTENTION, "off")]
    if device.type == "cuda":
        impls.append(("flex_attention", "off"))
    for impl, blocks in impls:
        name = f"{impl} (tree blocks {blocks})" if impl == ATTENTION else impl
        torch.manual_seed(0)
        model = build_model(size, len(tok), tok.pad_token_id, tok.eos_token_id, dropout=0.0)
        set_tree_blocks(model, blocks)
        model = model.to(device).train()
        try:
            model.set_attn_implementation(impl)

            def once(m: Any = model) -> float:
                m.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    value = loss(m, batch, True)
                value.backward()
                return float(value.detach())

            once()
            value, secs = timed(lambda: [once() for _ in range(reps)][-1], device)
            out[name] = {"seconds_per_step": round(secs / reps, 4), "loss": round(value, 5)}
        except Exception as e:  # flex_attention may be unavailable: record why and go on
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        del model
        gc.collect()
    return out


def bench_eval(rec: KP4SR, n_users: int, beams: int, device: torch.device) -> dict[str, Any]:
    """Users/s of 20-beam constrained search: reference (per user) against ``KP4SR.rank``."""
    samples = rec.split.test[:n_users]
    users = [s.user for s in samples]
    texts = [rec.user_text(u) for u in users]
    hist = [s.history for s in samples]
    seen = [rec.seen_items(s) for s in samples]
    res: dict[str, Any] = {"users": len(samples), "beams": beams}
    rec.model.eval()
    reference = stock(rec.model, "sdpa").eval()
    bs = rec.config.eval_batch_size
    rec.rank(users[:bs], hist[:bs], seen[:bs], beams=beams)  # warm-up: one full batch
    items, ref = [], []
    t_ours = t_ref = 0.0
    peak_ours = peak_ref = 0.0
    for s in range(0, len(samples), bs):  # batch by batch, ours then the reference
        part = slice(s, s + bs)
        with PeakRSS() as mem, gpu_peak(device, res, "ours_gpu_peak_mib"):
            r, t = timed(lambda p=part: rec.rank(users[p], hist[p], seen[p], beams=beams), device)
        items.append(r.items)
        t_ours, peak_ours = t_ours + t, max(peak_ours, mem.mib)
        with PeakRSS() as mem, gpu_peak(device, res, "reference_gpu_peak_mib"):
            r, t = timed(
                lambda p=part: reference_rank(
                    reference, rec.builder, rec.trie, texts[p], hist[p], seen[p], beams, device
                ),
                device,
            )
        ref.append(r)
        t_ref, peak_ref = t_ref + t, max(peak_ref, mem.mib)
    ours_items, ref_items = np.concatenate(items), np.concatenate(ref)
    res["ours_peak_rss_mib"], res["reference_peak_rss_mib"] = peak_ours, peak_ref
    res.update(
        reference_users_per_s=round(len(samples) / t_ref, 2),
        ours_users_per_s=round(len(samples) / t_ours, 2),
        speedup=round(t_ref / t_ours, 2),
        identical_topk=bool(np.array_equal(ours_items, ref_items)),
        differing_users=int((ours_items != ref_items).any(axis=1).sum()),
    )
    return res


def bench_encoder(rec: KP4SR, n_users: int, device: torch.device) -> dict[str, Any]:
    """Where evaluation time goes: ms per user of the encoder alone (the tree mask, 16 users a
    batch) under kp4sr_sdpa and under transformers' own sdpa, against a whole beam search."""
    from kp4sr.model import encode

    samples = rec.split.test[:n_users]
    bs = rec.config.eval_batch_size
    batches = [
        rec.builder.build_batch(
            [rec.user_text(x.user) for x in samples[s : s + bs]],
            [x.history for x in samples[s : s + bs]],
        ).to(device)
        for s in range(0, len(samples), bs)
    ]

    def encoder(model: Any) -> None:
        with torch.no_grad():
            for b in batches:
                encode(model, b, rec.config.tree_mask)

    rec.model.eval()
    reference = stock(rec.model, "sdpa").eval()
    encoder(rec.model)  # warm-up
    _, ours = timed(lambda: encoder(rec.model), device)
    mode = rec.model.config.kp4sr_tree_blocks
    set_tree_blocks(rec.model, "off")
    try:
        _, dense = timed(lambda: encoder(rec.model), device)
    finally:
        set_tree_blocks(rec.model, mode)
    _, theirs = timed(lambda: encoder(reference), device)
    users = [x.user for x in samples]
    _, whole = timed(lambda: rec.rank(users, [x.history for x in samples]), device)
    per_user = 1e3 / len(samples)
    return {
        "users": len(samples),
        "encoder_ms_per_user": round(ours * per_user, 2),
        "encoder_without_tree_blocks_ms_per_user": round(dense * per_user, 2),
        "transformers_sdpa_encoder_ms_per_user": round(theirs * per_user, 2),
        "beam_search_ms_per_user": round(whole * per_user, 2),
    }


def bench_full(rec: KP4SR, n_users: int, device: torch.device) -> dict[str, Any]:
    """Users/s of the exact full ranking (every item scored by teacher forcing): ours shares each
    user's cross-attention keys and values across the items; the reference is the same code
    under stock transformers (its own ``sdpa`` attention, which projects them again for every
    item)."""
    samples = rec.split.test[:n_users]
    res: dict[str, Any] = {"users": len(samples), "items": int(len(rec.codes.lengths))}
    rec.full_ranks(samples[:2])  # warm-up
    ours, t_ours = timed(lambda: rec.full_ranks(samples), device)
    model, rec.model = rec.model, stock(rec.model, "sdpa").eval()
    try:
        ref, t_ref = timed(lambda: rec.full_ranks(samples), device)
    finally:
        rec.model = model
    res.update(
        reference_users_per_s=round(len(samples) / t_ref, 2),
        ours_users_per_s=round(len(samples) / t_ours, 2),
        speedup=round(t_ref / t_ours, 2),
        identical_ranks=bool(np.array_equal(ours, ref)),
    )
    return res


def spread_scores(rec: KP4SR, scale: float) -> None:
    """A random model's item scores are nearly tied; scaling the output layer spreads them so
    that "identical top-k" is a meaningful check rather than a coin toss between ties."""
    with torch.no_grad():
        rec.model.lm_head.weight.mul_(scale)


def machine(device: torch.device) -> str:
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def table(r: dict[str, Any]) -> str:
    """The short Markdown table of the ratios."""
    rows = ["| figure | reference | ours | ours / reference |", "|---|---|---|---|"]
    p = r["prompt_mask"]
    rows.append(
        f"| prompt+mask construction, samples/s ({p['mean_tokens']:.0f} tokens/sample) | "
        f"{p['reference_samples_per_s']} | {p['ours_samples_per_s']} | **{p['speedup']}x** |"
    )
    for size, t in r["train"].items():
        rows.append(
            f"| training {size}, samples/s | {t['reference_samples_per_s']} | "
            f"{t['ours_samples_per_s']} | **{t['speedup']}x** |"
        )
        rows.append(
            f"| training {size}, real tokens/s | {t['reference_tokens_per_s']} | "
            f"{t['ours_tokens_per_s']} | "
            f"{t['ours_tokens_per_s'] / max(t['reference_tokens_per_s'], 1e-9):.2f}x |"
        )
        rows.append(
            f"| training {size}, time waiting on data | {t['reference_data_share']:.1%} | "
            f"{t['ours_data_share']:.1%} | |"
        )
    e = r["eval"]
    rows.append(
        f"| evaluation, users/s ({e['beams']} beams, {e['users']} users) | "
        f"{e['reference_users_per_s']} | {e['ours_users_per_s']} | **{e['speedup']}x** |"
    )
    if "encoder" in r:
        c = r["encoder"]
        rows.append(
            f"| encoder alone, ms per user (tree mask; reference: transformers' sdpa) | "
            f"{c['transformers_sdpa_encoder_ms_per_user']} | {c['encoder_ms_per_user']} | "
            f"(without tree blocks: {c['encoder_without_tree_blocks_ms_per_user']}; a whole beam "
            f"search: {c['beam_search_ms_per_user']} ms per user) |"
        )
    if "full_rank" in r:
        f = r["full_rank"]
        rows.append(
            f"| exact full ranking, users/s ({f['items']} items, {f['users']} users; reference: "
            f"transformers' sdpa) | {f['reference_users_per_s']} | {f['ours_users_per_s']} | "
            f"**{f['speedup']}x** |"
        )
    rows.append(
        f"| peak RSS, evaluation (MiB) | {e['reference_peak_rss_mib']} | "
        f"{e['ours_peak_rss_mib']} | |"
    )
    for size, t in r["train"].items():
        rows.append(
            f"| peak RSS, training {size} (MiB) | {t['reference_peak_rss_mib']} | "
            f"{t['ours_peak_rss_mib']} | |"
        )
        if "ours_gpu_peak_mib" in t:
            rows.append(
                f"| peak GPU memory, training {size} (MiB) | {t['reference_gpu_peak_mib']} | "
                f"{t['ours_gpu_peak_mib']} | |"
            )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: about a minute on 2 cores")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--sizes", default=None, help="model sizes to train (default tiny,t5-small)")
    ap.add_argument("--length", type=int, default=512, help="max prompt length in tokens")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    ap.add_argument("--samples", type=int, default=None, help="prompt+mask samples")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per size")
    ap.add_argument("--batch-size", type=int, default=None, help="training batch size")
    ap.add_argument("--users", type=int, default=None, help="users for the evaluation figure")
    ap.add_argument("--beams", type=int, default=20)
    ap.add_argument("--full-users", type=int, default=16, help="users for the full ranking")
    ap.add_argument("--eval-batch-size", type=int, default=None, help="users per beam search")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (ours)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--toy-users", type=int, default=0, help="toy dataset users (0: default)")
    ap.add_argument(
        "--tree-blocks", default="auto", help="ours: tree-block attention auto | on | off"
    )
    ap.add_argument("--attention", action="store_true", help="also time eager/SDPA(/flex)")
    ap.add_argument(
        "--attention-only", action="store_true", help="only time eager/SDPA(/flex) per size"
    )
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    defaults = dict(  # (quick, full) on CPU; on a GPU the full sizes
        samples=(512, 1024),
        steps=(2, 3),
        batch_size=(8, 8),
        users=(128, 128),
        eval_batch_size=(16, 16),
        workers=(1, 1),
    )
    for key, (quick, full) in defaults.items():
        if getattr(args, key) is None:
            value = quick if args.quick else full
            if cuda and key == "batch_size":
                value = 32
            if cuda and key == "steps":
                value = 20
            if cuda and key == "users":
                value = 256
            if cuda and key == "eval_batch_size":
                value = 64
            if cuda and key == "workers":
                value = min(4, max(1, (os.cpu_count() or 2) - 1))
            setattr(args, key, value)
    if args.sizes is None:
        args.sizes = "tiny" if args.quick else "tiny,t5-small"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rec = make_recommender(args, device)
    results: dict[str, Any] = {
        "machine": machine(device),
        "device": str(device),
        "length": args.length,
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    print(f"machine: {results['machine']}", flush=True)
    out = args.out or os.environ.get("OUT")
    if args.attention_only:  # its own process: a failing kernel cannot spoil the main figures
        results["attention"] = {
            size: bench_attention(rec, size, args.batch_size, device, 3)
            for size in args.sizes.split(",")
            if size
        }
        print(json.dumps(results["attention"]))
        if out:
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "attention.json").write_text(json.dumps(results, indent=2))
        return 0
    results["prompt_mask"] = bench_prompt_mask(rec, args.samples, 32)
    print(f"prompt+mask: {results['prompt_mask']}", flush=True)
    spread_scores(rec, 30.0)
    results["eval"] = bench_eval(rec, args.users, args.beams, device)
    print(f"eval: {results['eval']}", flush=True)
    results["encoder"] = bench_encoder(rec, args.users, device)
    print(f"encoder: {results['encoder']}", flush=True)
    results["full_rank"] = bench_full(rec, args.full_users, device)
    print(f"full ranking: {results['full_rank']}", flush=True)
    results["train"] = {}
    for size in [s for s in args.sizes.split(",") if s]:
        r = bench_train(rec, size, args.steps, args.batch_size, device, args.workers)
        results["train"][size] = r
        print(f"train {size}: {r}", flush=True)
        if args.attention:
            r["attention"] = bench_attention(rec, size, args.batch_size, device, 2)
            print(f"attention {size}: {r['attention']}", flush=True)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    summary = {
        "prompt_mask_speedup": results["prompt_mask"]["speedup"],
        "prompt_mask_identical": results["prompt_mask"]["identical"],
        "eval_speedup": results["eval"]["speedup"],
        "eval_identical_topk": results["eval"]["identical_topk"],
        "full_rank_speedup": results["full_rank"]["speedup"],
        **{f"train_speedup_{s}": t["speedup"] for s, t in results["train"].items()},
        **{f"train_data_share_{s}": t["ours_data_share"] for s, t in results["train"].items()},
        "device": str(device),
        "seconds": results["seconds"],
    }
    results["summary"] = summary
    text = table(results)
    print(text)
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        (path / "results.json").write_text(json.dumps(results, indent=2))
        (path / "results.md").write_text(
            f"# Speed: ours against a plain reference\n\n{text}\n\nMachine: {results['machine']}"
            f"\n\nCommand: `{results['command']}`\n"
        )
    print(json.dumps(summary), flush=True)
    return 0 if math.isfinite(summary["eval_speedup"]) else 1


if __name__ == "__main__":
    sys.exit(main())
