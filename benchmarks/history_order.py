"""Does a model read the order of the history items? Rank with the order changed, same items.

    python benchmarks/history_order.py --run RUNS/ml100k-ws-kp4sr-tes/kp4sr \\
        --out benchmarks/results/ml100k-try37-order-kp4sr
    python benchmarks/history_order.py --baseline sasrec --train-exclude-seen --seed 0 \\
        --out benchmarks/results/ml100k-try37-order-sasrec-seed0

Each validation and test user is ranked three times, as the model is set to rank (a KP4SR run
folder with its saved ``eval_max_items`` / ``eval_windows``; a baseline trained first exactly
as ``benchmarks/baselines.py`` does): with the items the model reads in time order (``kept``),
reversed (``reversed``, the most recent item first) and in a seeded random order
(``shuffled``). Only the order changes: the same items, the same user, the same excluded seen
items. A model that ignores the order scores the same under all three; one that relies on
recency loses under ``reversed``. (Under ``eval_windows`` the windows are the last 1..N items
of the reordered history, so the mixture's weighting by recency is part of what is tested.)
Writes ``OUT/order.json`` (metrics per order and split, and the paired difference of each
order from ``kept`` with its 95% bootstrap interval and permutation p, as ``compare.py``) and
``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from kp4sr.benchmark import write_report
from kp4sr.data import Sample
from kp4sr.evaluation import format_table, metrics, per_user, target_ranks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import paired  # noqa: E402
from recent_items import add_model_options, train_baseline  # noqa: E402

SPLITS = ("valid", "test")
ORDERS = ("kept", "reversed", "shuffled")
# a model: (samples -> 0-based target ranks), its eval_max_items (0: all), samples per split
Ranker = tuple[Callable[[list[Sample]], np.ndarray], int, dict[str, list[Sample]]]


def reorder(history: np.ndarray, read: int, order: str, rng: np.random.Generator) -> np.ndarray:
    """``history`` with the order of its last ``read`` items (all when 0: the part a model set
    to ``eval_max_items = read`` reads) changed; the earlier items stay as they are, so the
    model reads exactly the same items. ``kept``: unchanged; ``reversed``; ``shuffled``: a
    permutation drawn from ``rng``."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}: one of {', '.join(ORDERS)}")
    n = len(history) if read <= 0 else min(read, len(history))
    head, tail = history[: len(history) - n], history[len(history) - n :]
    if order == "reversed":
        tail = tail[::-1]
    elif order == "shuffled":
        tail = tail[rng.permutation(n)]
    return np.concatenate([head, tail]).astype(history.dtype)


def reordered(samples: list[Sample], read: int, order: str, seed: int) -> list[Sample]:
    """The samples with their histories reordered (:func:`reorder`), targets untouched."""
    rng = np.random.default_rng(seed)
    return [dataclasses.replace(s, history=reorder(s.history, read, order, rng)) for s in samples]


def kp4sr_ranker(run: str) -> Ranker:
    from kp4sr.recommender import KP4SR

    rec = KP4SR.from_pretrained(run)

    def ranks(samples: list[Sample]) -> np.ndarray:
        seen = [rec.seen_items(s) for s in samples] if rec.config.exclude_seen else None
        got = rec.rank([s.user for s in samples], [s.history for s in samples], seen, progress=True)
        return target_ranks(got.items, np.array([s.target for s in samples], dtype=np.int64))

    return ranks, rec.config.eval_max_items, {s: rec.eval_samples(s) for s in SPLITS}


def baseline_ranker(args: argparse.Namespace) -> Ranker:
    model, ds, split = train_baseline(args)
    return (
        lambda samples: model.user_ranks(ds, samples),
        0,
        {s: list(getattr(split, s)) for s in SPLITS},
    )


def measure(ranker: Ranker, seed: int, draws: int = 10_000) -> dict:
    """Metrics of every order on both splits, and each order's paired NDCG@10 / HR@10
    difference from ``kept`` (per user)."""
    ranks_of, read, samples = ranker
    out: dict = {}
    for split in SPLITS:
        ranks = {o: ranks_of(reordered(samples[split], read, o, seed)) for o in ORDERS}
        out[split] = {o: metrics(r) for o, r in ranks.items()}
        for o in ORDERS[1:]:
            out[split][o]["vs kept"] = {
                m: paired(per_user(ranks[o], m), per_user(ranks["kept"], m), draws, seed)
                for m in ("NDCG@10", "HR@10")
            }
    return out


def table(result: dict) -> str:
    keys = tuple(f"{s} {m}" for s in SPLITS for m in ("NDCG@10", "HR@10"))
    keys = (*keys, "test NDCG@10 − kept (p)")
    rows = {}
    for o in ORDERS:
        row = {f"{s} {m}": result[s][o][m] for s in SPLITS for m in ("NDCG@10", "HR@10")}
        d = result["test"][o].get("vs kept", {}).get("NDCG@10")
        row[keys[-1]] = "" if d is None else f"{d['diff']:+.4f} ({d['p']:.3f})"
        rows[o] = row
    return format_table(rows, keys)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_options(p)
    p.add_argument("--seed", type=int, default=0, help="the shuffle's seed (and --baseline's)")
    p.add_argument("--draws", type=int, default=10_000, help="bootstrap and permutation draws")
    args = p.parse_args(argv)

    ranker = kp4sr_ranker(args.run) if args.run else baseline_ranker(args)
    result = measure(ranker, args.seed, args.draws)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "order.json").write_text(json.dumps(result, indent=1))
    title = f"History order at ranking ({args.run or args.baseline}): same items, order changed"
    print(write_report(out, title, table(result), "python " + " ".join(sys.argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
