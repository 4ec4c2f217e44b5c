"""The ``kp4sr`` command line: train, evaluate, recommend, explain, data stats.

Errors in the user's input are printed as one line (``kp4sr: error: ...``) with exit status 2,
never as a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from kp4sr.errors import KP4SRError

# help text of every training option; the option name is the Config field with '-' for '_'
OPTION_HELP: dict[str, str] = {
    "dataset": "toy (generated, the default), ml-100k, or a folder in the generic format",
    "data_dir": "folder with the dataset's files (default: $KP4SR_DATA or ../shared/datasets)",
    "kg": "knowledge used: metadata | freebase | both | none (default: all present)",
    "nameless": "KG entities without a name: skip their triples (default) or write their id",
    "names": "any (default) | latin: treat names without a Latin letter as nameless",
    "min_user": "k-core before the split: drop users with fewer interactions (default 5; 0: off)",
    "min_item": "k-core before the split: drop items with fewer interactions (default 5; 0: off)",
    "items": "LFM-1b items: artist | album | track (default)",
    "freebase": "Freebase KG: a KB4Rec-style folder, a triples TSV or an N-Triples dump (.gz)",
    "linkage": "KB4Rec linkage file item -> MID (ml2fb.txt, ab2fb.txt, lfb2fb.txt)",
    "cache": "do not cache the preprocessed dataset",
    "templates": "JSON file {relation: sentence with [X] and [Y]} overriding built-in templates",
    "generic_templates": "relations without a template get 'The <relation> of [X] is [Y].'",
    "mpp_templates": "MPP templates: all (default: one drawn per training sample) | first (only "
    "the evaluation template) | a JSON file with a list of templates",
    "relations": "KG relations to keep, comma-separated, in evaluation priority (default: all)",
    "max_items": "history items the model sees (default 5)",
    "eval_max_items": "ranking and serving read only the last N history items (default 0: all "
    "--max-items; pick N on validation)",
    "eval_windows": "rank by each item's mean probability over the prompts of the last 1, 2, .., "
    "N history items (single-token item IDs; default off)",
    "train_history": "full (default) | random: each training sample keeps its last k history "
    "items, k uniform in 1..--max-items (every context length, as SASRec trains)",
    "recency_embeddings": "add a learned embedding of each history item's position from the "
    "end (1 = most recent) to its ID tokens, so the encoder reads the order (default off)",
    "item_knowledge": "KG relations (comma-separated, or 'all') whose tails that several items "
    "share join each item's input and output embedding (single-token IDs; default: none)",
    "item_knowledge_lr": "learning rate of the --item-knowledge vectors, times --lr (default 1)",
    "user_ids": "write 'new' instead of the user's ID in every prompt (no per-user token)",
    "item_index": "item ID numbering: random (default) | sequential (P5's, leaks order)",
    "item_tokens": "item ID tokens: single (one token per item, default) | digits (one per digit)",
    "hop": "knowledge hops from each history item (default 2)",
    "degree": "at most this many KG edges per entity (default 8)",
    "max_length": "encoder input cap in tokens (default 512)",
    "knowledge": "MPP only, no knowledge prompts (the P5-style model)",
    "tree_mask": "full attention instead of the knowledge tree mask (no prompt denoising)",
    "cross_attention": "what the decoder reads: all encoder tokens (default) | mpp (MPP only)",
    "tree_blocks": "compute tree-masked attention group by group: auto (on a CPU) | on | off",
    "precision": "training autocast: auto (bf16 on a GPU, fp32 on a CPU) | fp32 | bf16",
    "backbone": "tiny | small | t5-small (from scratch) or a local Hugging Face T5 folder",
    "init_from": "start from an earlier run folder: its weights, tokenizer and item numbering",
    "vocab_size": "vocabulary size of the tokenizer trained on the dataset (default 8000)",
    "dropout": "dropout rate (default 0.1)",
    "tie_embeddings": "scale the decoder output by d_model^-0.5 as the original (tied) T5 "
    "(default: unscaled; transformers 5 shares T5's input and output embeddings either way)",
    "epochs": "training epochs (default 10)",
    "max_minutes": "stop after the epoch that passes this many training minutes (default 0: off)",
    "length_buckets": "batch training prompts of similar length (less padding; default off)",
    "batch_size": "training batch size (default 32)",
    "lr": "AdamW learning rate (default 1e-3)",
    "warmup": "share of steps with linear warmup before linear decay (default 0.05)",
    "weight_decay": "AdamW weight decay (default 0.01)",
    "clip": "gradient norm clip (default 1.0)",
    "samples_per_epoch": "training samples per epoch, drawn at random (default 0: all positions)",
    "seed": "random seed of everything (default 0)",
    "eval_every": "validate every N epochs (default 1)",
    "checkpoint_every": "checkpoint also every N optimizer steps (default 0: every epoch's end)",
    "patience": "early stopping: validations without a better NDCG@10 (default 3)",
    "beams": "beam size of constrained beam search (default 20)",
    "exclude_seen": "keep the user's earlier items in the ranking (default: excluded)",
    "train_exclude_seen": "training: leave the user's earlier items out of the softmax, as the "
    "ranking does (needs --item-tokens single; default off)",
    "eval_batch_size": "users per beam search batch (default 16)",
    "workers": "DataLoader worker processes building prompts (default 0)",
    "device": "auto (default) | cpu | cuda | cuda:N",
}
# boolean options whose default is True are switched off by a --no-... / --keep-... flag
NEGATED = {
    "knowledge": "--no-knowledge",
    "tree_mask": "--no-tree-mask",
    "exclude_seen": "--keep-seen",
    "cache": "--no-cache",
    "user_ids": "--no-user-ids",
}
# the options that say how a dataset is read (``kp4sr data stats`` takes only these)
DATA_FIELDS = (
    "dataset data_dir kg nameless names min_user min_item items freebase linkage cache hop seed"
).split()


def _add_config_options(p: argparse.ArgumentParser, only: list[str] | None = None) -> None:
    from kp4sr.recommender import Config

    for f in dataclasses.fields(Config):
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_ = OPTION_HELP.get(f.name, "")
        if f.type in ("bool", bool):
            if f.default:
                p.add_argument(NEGATED[f.name], dest=f.name, action="store_false", help=help_)
            else:
                p.add_argument(flag, dest=f.name, action="store_true", help=help_)
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        p.add_argument(flag, dest=f.name, type=kind, default=f.default, help=help_)


def _config_from_args(args: argparse.Namespace):
    from kp4sr.recommender import Config

    return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})


# options a resumed run may change: where it runs, not what it computes
RESUME_OVERRIDES = ("device", "workers")


def _resume_device(args: argparse.Namespace) -> str:
    """The device a resumed run asks for: --device if given, else the run's own."""
    if args.device != "auto":
        return args.device
    try:
        return str(json.loads((Path(args.resume) / "config.json").read_text("utf-8"))["device"])
    except (OSError, ValueError, KeyError, TypeError):
        return "auto"  # from_pretrained reports what is wrong with the folder


def cmd_train(args: argparse.Namespace) -> int:
    from kp4sr import distributed
    from kp4sr.errors import ConfigError
    from kp4sr.recommender import KP4SR, Config
    from kp4sr.training import fit, resume

    if args.resume and args.out:
        raise ConfigError("give --out RUN_DIR for a new run or --resume RUN_DIR, not both")
    if not args.resume and not args.out:
        raise ConfigError("train needs --out RUN_DIR (or --resume RUN_DIR to continue a run)")
    if args.resume:
        changed = [
            "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(Config)
            if getattr(args, f.name) != f.default and f.name not in RESUME_OVERRIDES
        ]
        if changed:
            raise ConfigError(
                f"--resume continues with the run's saved options; drop {', '.join(changed)}"
                " (only --device and --workers may change)"
            )
    device = _resume_device(args) if args.resume else args.device
    with distributed.session(device):
        main_rank = distributed.current().main
        if not main_rank:  # one copy of the log: rank 0's
            logging.getLogger().setLevel(logging.WARNING)
        if args.resume:
            results = resume(
                args.resume,
                progress=not args.quiet,
                device=None if args.device == "auto" else args.device,
                workers=args.workers if args.workers != 0 else None,
            )
        else:
            with distributed.main_first():  # rank 0 fills the dataset cache, the others read it
                rec = KP4SR.create(_config_from_args(args))
            results = fit(rec, args.out, progress=not args.quiet)
    if args.json and main_rank:
        print(json.dumps(results))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kp4sr.errors import ConfigError
    from kp4sr.evaluation import format_table, metrics, ranks_json
    from kp4sr.recommender import KP4SR

    rec = KP4SR.from_pretrained(args.run_dir, device=args.device)
    if args.beams:
        rec.config.beams = args.beams
    if args.keep_seen:
        rec.config.exclude_seen = False
    if args.eval_max_items is not None:
        if not 0 <= args.eval_max_items <= rec.config.max_items:
            raise ConfigError(
                f"--eval-max-items is {args.eval_max_items}: expected 0 (all) to the run's "
                f"--max-items ({rec.config.max_items})"
            )
        rec.config.eval_max_items = args.eval_max_items
    if args.eval_windows:
        if rec.config.item_tokens != "single":
            raise ConfigError("--eval-windows needs a run with --item-tokens single")
        rec.config.eval_windows = True
    ranks, extra = rec.user_ranks(
        args.split, max_users=args.max_users, progress=not args.json, mode=args.mode
    )
    result = {**metrics(ranks), **extra}
    if args.ranks:  # per-user ranks, for paired comparisons (benchmarks/compare.py)
        users = rec.split_users(args.split, args.max_users)
        Path(args.ranks).write_text(ranks_json({args.split: (users, ranks)}), encoding="utf-8")
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table({args.split: result}))
    return 0


def _history(arg: str | None) -> list[str] | None:
    if arg is None:
        return None
    return [x.strip() for x in arg.split(",") if x.strip()]


def cmd_recommend(args: argparse.Namespace) -> int:
    from kp4sr.recommender import KP4SR

    rec = KP4SR.from_pretrained(args.run_dir, device=args.device)
    if args.user is not None:
        recs = rec.recommend(users=[args.user], k=args.k)[0]
    else:
        recs = rec.recommend(histories=[_history(args.history)], k=args.k)[0]
    if args.json:
        print(json.dumps(recs, ensure_ascii=False))
    else:
        for rank, r in enumerate(recs, 1):
            print(f"{rank:>3}. {r['item']:>8}  {r['title'] or ''}  (log-prob {r['score']:.3f})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from kp4sr.recommender import KP4SR

    rec = KP4SR.from_pretrained(args.run_dir, device=args.device)
    info = rec.explain(user=args.user, history=_history(args.history))
    if args.png:
        draw_mask(info, args.png)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
    else:
        for n in info["nodes"]:
            depth, p = 0, n["parent"]
            while p is not None:
                depth, p = depth + 1, info["nodes"][p]["parent"]
            print(f"{'  ' * depth}[{n['start']}:{n['end']}] {n['text']}")
        print(f"{len(info['tokens'])} tokens, tree mask {'on' if info['tree_mask'] else 'off'}")
    return 0


def draw_mask(info: dict, path: str) -> None:
    """Save the visibility matrix as a picture (needs matplotlib: pip install kp4sr[plot])."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise KP4SRError("--png needs matplotlib: pip install 'kp4sr[plot]'") from None
    import numpy as np

    vis = np.asarray(info["visible"], dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(7, 7), dpi=120)
    ax.imshow(vis, cmap="Greys", interpolation="nearest")
    for n in info["nodes"]:
        if n["kind"] == "item":
            ax.axhline(n["start"] - 0.5, color="tab:red", lw=0.4)
    ax.set_title("knowledge tree mask (black: may attend)")
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cmd_data_stats(args: argparse.Namespace) -> int:
    from kp4sr.data import leave_one_out, load_dataset
    from kp4sr.recommender import Config, data_options

    cfg = Config(**{k: getattr(args, k) for k in DATA_FIELDS})
    ds = load_dataset(cfg.dataset, cfg.data_dir, data_options(cfg), seed=cfg.seed)
    stats = dict(ds.stats())
    stats["linked_share"] = stats["linked_items"] / max(1, stats["items"])
    split = leave_one_out(ds)
    stats.update(
        train_samples=len(split.train), valid_users=len(split.valid), test_users=len(split.test)
    )
    stats["skipped"] = ds.skipped
    if args.json:
        print(json.dumps(stats))
    else:
        for k, v in stats.items():
            print(f"{k:>16}: {v:.4f}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from kp4sr.download import default_cache_dir, download

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    folder = download(args.name, cache, base_url=args.base_url, progress=True)
    print(folder)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from kp4sr.data import load_dataset
    from kp4sr.export import export_recbole
    from kp4sr.recommender import Config, data_options

    cfg = Config(**{k: getattr(args, k) for k in DATA_FIELDS})
    ds = load_dataset(cfg.dataset, cfg.data_dir, data_options(cfg), seed=cfg.seed)
    files = export_recbole(ds, Path(args.out_dir), args.name)
    for path in files.values():
        print(path)
    return 0


# training options `kp4sr benchmark` passes on (the KG ones reach the baselines too)
BENCHMARK_OPTIONS = ("train_exclude_seen", "item_knowledge", "item_knowledge_lr")


def cmd_benchmark(args: argparse.Namespace) -> int:
    from kp4sr.benchmark import FULL, run_benchmark, summary_table
    from kp4sr.data import load_dataset
    from kp4sr.recommender import Config, data_options

    fields = {k: getattr(args, k) for k in DATA_FIELDS}
    options = {k: getattr(args, k) for k in BENCHMARK_OPTIONS}
    cfg = Config(**fields, **FULL, **options)
    ds = load_dataset(cfg.dataset, cfg.data_dir, data_options(cfg), seed=cfg.seed)
    models = tuple(args.models.split(",")) if args.models else None
    rows = run_benchmark(
        ds,
        cfg,
        Path(args.out),
        args.seeds,
        args.quick,
        models,
        not args.quiet,
        tune_recent=args.tune_eval_max_items,
    )
    print(summary_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kp4sr", description="Knowledge prompt-tuning for sequential recommendation (KP4SR)"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train on a dataset, then evaluate and print the metrics")
    t.add_argument("--out", help="run folder to write")
    t.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its last checkpoint, with its saved options",
    )
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    _add_config_options(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="HR/NDCG/MRR of a run folder on test, valid or train")
    e.add_argument("run_dir")
    e.add_argument(
        "--split",
        choices=("train", "valid", "test"),
        default="test",
        help="test (default), valid, or train: each user's last training target (overfitting?)",
    )
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--beams", type=int, default=None, help="beam size (default: the run's)")
    e.add_argument("--keep-seen", action="store_true", help="keep users' earlier items")
    e.add_argument("--max-users", type=int, default=None, help="evaluate the first N users only")
    e.add_argument(
        "--eval-max-items",
        type=int,
        default=None,
        metavar="N",
        help="read only the last N history items (default: the run's; 0: all)",
    )
    e.add_argument(
        "--eval-windows",
        action="store_true",
        help="rank by each item's mean probability over the last 1, 2, .. N items' prompts",
    )
    e.add_argument(
        "--mode",
        choices=("beam", "full", "unconstrained"),
        default="beam",
        help="beam: constrained beam search (default); full: exact ranking of every item; "
        "unconstrained: plain beam search, reports invalid_share",
    )
    e.add_argument(
        "--ranks",
        metavar="FILE",
        default=None,
        help="also write each user's rank of their target as JSON (for paired comparisons)",
    )
    e.add_argument("--device", default=None)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("recommend", help="top-k items for a user or an item history")
    r.add_argument("run_dir")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--user", help="a user ID of the dataset (their whole history is used)")
    g.add_argument("--history", help="comma-separated item IDs, oldest first (any user)")
    r.add_argument("-k", type=int, default=10)
    r.add_argument("--json", action="store_true")
    r.add_argument("--device", default=None)
    r.set_defaults(func=cmd_recommend)

    x = sub.add_parser("explain", help="show the fused prompt, its knowledge tree and mask")
    x.add_argument("run_dir")
    g = x.add_mutually_exclusive_group(required=True)
    g.add_argument("--user", help="a user ID: the prompt of their test prediction")
    g.add_argument("--history", help="comma-separated item IDs, oldest first")
    x.add_argument("--json", action="store_true", help="nodes and the L x L visibility matrix")
    x.add_argument("--png", help="draw the mask into this PNG file")
    x.add_argument("--device", default=None)
    x.set_defaults(func=cmd_explain)

    b = sub.add_parser("benchmark", help="train and compare KP4SR, its ablations and baselines")
    b.add_argument("--out", required=True, help="folder for results.json, results.md, results.png")
    b.add_argument(
        "--seeds", type=int, default=1, help="seeds S..S+N-1 per model, S from --seed (default 1)"
    )
    b.add_argument("--quick", action="store_true", help="a smoke run: a minute or two on toy")
    b.add_argument(
        "--models",
        default=None,
        help="comma-separated subset (default: all; kp4sr-no-prompts only with --item-knowledge)",
    )
    b.add_argument("-q", "--quiet", action="store_true")
    b.add_argument(
        "--tune-eval-max-items",
        action="store_true",
        help="every model ranks from its last k history items or their window mixture, "
        "chosen on its validation NDCG@10 (eval_max_items in results.json)",
    )
    _add_config_options(b, [*DATA_FIELDS, *BENCHMARK_OPTIONS])
    b.set_defaults(func=cmd_benchmark)

    ex = sub.add_parser("export", help="write a dataset and its exact split for another tool")
    ex.add_argument("out_dir")
    ex.add_argument("--format", choices=("recbole",), default="recbole")
    ex.add_argument("--name", default=None, help="file name stem (default: the dataset's name)")
    _add_config_options(ex, DATA_FIELDS)
    ex.set_defaults(func=cmd_export)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="users, items, interactions, sparsity, KG size")
    _add_config_options(s, DATA_FIELDS)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_stats)
    dl = dsub.add_parser("download", help="fetch and verify an official MovieLens archive")
    dl.add_argument("name", help="ml-100k | ml-1m | ml-10m | ml-20m | ml-latest-small")
    dl.add_argument("--cache-dir", default=None, help="default: $KP4SR_CACHE or ~/.cache/kp4sr")
    dl.add_argument("--base-url", default=None, help="a mirror instead of files.grouplens.org")
    dl.set_defaults(func=cmd_data_download)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight loading/saving bars are noise in a CLI
    hf_logging.set_verbosity_error()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except KP4SRError as e:
        print(f"kp4sr: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kp4sr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
