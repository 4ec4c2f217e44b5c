"""What the knowledge prompts of a setting hold: facts per hop, relations, the length cap's cut.

    python benchmarks/prompt_stats.py                                 # ML-100k, 128/256/512 tokens
    python benchmarks/prompt_stats.py --dataset toy --max-lengths 64,128

For the validation samples (evaluation prompts: fixed template and edge order, as validation and
test see them), at each ``--max-lengths`` cap and without a cap: the mean prompt length, the
facts kept at hop 1 and hop 2, the relations of the kept facts, and the share of targets that
appear among the kept facts' tails (a tail that is an item is written as its ID, so the model
could copy it). Writes ``OUT/prompt_stats.md`` with ``--out``. Builds prompts only: seconds.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

from kp4sr import toy
from kp4sr.data import default_data_dir
from kp4sr.prompts import FusedPrompt, PromptConfig
from kp4sr.recommender import KP4SR, Config


def fact_hops(prompt: FusedPrompt) -> np.ndarray:
    """Hop of each fact node (1: below an item, 2: below a hop-1 fact, ...): [n_facts]."""
    parents = prompt.parents
    first_fact = 1 + len(prompt.items)
    hops = np.zeros(len(parents), dtype=np.int64)
    for node in range(first_fact, len(parents)):
        parent = parents[node]
        assert parent < node, "a fact's parent node comes before it"
        hops[node] = 1 if parent < first_fact else hops[parent] + 1
    return hops[first_fact:]


def stats(rec: KP4SR, max_length: int, hop: int, degree: int) -> dict[str, object]:
    builder = rec.new_builder(PromptConfig(hop, degree, max_length, True))
    item_of = builder.entity_item
    lengths, per_hop, relations, found = [], collections.Counter(), collections.Counter(), 0
    samples = rec.split.valid
    for s in samples:
        prompt = builder.build(rec.user_text(s.user), np.asarray(s.history))
        lengths.append(len(prompt.input_ids))
        per_hop.update(fact_hops(prompt).tolist())
        relations.update(prompt.facts[:, 1].tolist())
        tails = item_of[prompt.facts[:, 2]] if len(prompt.facts) else np.zeros(0, np.int64)
        found += int(s.target in set(tails[tails >= 0].tolist()))
    n = len(samples)
    names = rec.dataset.kg.relations
    top = ", ".join(f"{names[r]} {c / n:.1f}" for r, c in relations.most_common(6))
    return {
        "cap": max_length,
        "length": float(np.mean(lengths)),
        "hop1": per_hop.get(1, 0) / n,
        "hop2": sum(c for h, c in per_hop.items() if h >= 2) / n,
        "targets": found / n,
        "relations": top,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="ml-100k", help="ml-100k (real files) | toy")
    p.add_argument("--max-lengths", default="128,256,512", help="caps to compare (tokens)")
    p.add_argument("--hop", type=int, default=2)
    p.add_argument("--degree", type=int, default=3)
    p.add_argument("--kg", default=None, help="metadata | freebase | both (default: all present)")
    p.add_argument("--relations", default=None, help="keep these relations, in this priority")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    base = dict(hop=args.hop, degree=args.degree, kg=args.kg, relations=args.relations)
    base.update(min_user=0, min_item=0)
    if args.dataset == "toy":
        rec = KP4SR.create(Config(**base), dataset=toy.generate(seed=0))
    else:
        data = default_data_dir()
        if data is None or not (data / "ml-100k" / "u.data").is_file():
            print("ML-100k not found: set KP4SR_DATA or use --dataset toy", file=sys.stderr)
            return 2
        rec = KP4SR.create(Config(dataset="ml-100k", data_dir=str(data), **base))
    caps = [int(x) for x in args.max_lengths.split(",") if x] + [1 << 20]
    lines = [
        f"Validation prompts of {args.dataset} (hop {args.hop}, degree {args.degree}, "
        f"{len(rec.split.valid)} users), evaluation draw:",
        "",
        "| cap | mean length | hop-1 facts | hop-2+ facts | targets among item tails | "
        "relations (facts per prompt) |",
        "|---|---|---|---|---|---|",
    ]
    for cap in caps:
        r = stats(rec, cap, args.hop, args.degree)
        shown = "none" if cap == 1 << 20 else str(cap)
        lines.append(
            f"| {shown} | {r['length']:.1f} | {r['hop1']:.1f} | {r['hop2']:.1f} | "
            f"{r['targets']:.3f} | {r['relations']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/prompt_stats.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        (Path(args.out) / "prompt_stats.md").write_text(text + f"\nCommand: `{command}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
