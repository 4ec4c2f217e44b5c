"""The KP4SR recommender as one object: build it, train it, rank, recommend, explain, save, load.

A run folder (``save_pretrained`` / ``from_pretrained``) is the unit users share: it holds the
options, the model weights (safetensors), the tokenizer, the item ID numbering, the templates and
a snapshot of the dataset (so prompts and the split can be rebuilt without the original files).
No pickles anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from kp4sr import distributed
from kp4sr.data import (
    DataOptions,
    Dataset,
    KnowledgeGraph,
    Sample,
    Split,
    item_attributes,
    leave_one_out,
    load_saved_dataset,
    save_dataset,
)
from kp4sr.decoding import (
    INVALID,
    MISSING,
    ItemTrie,
    Ranked,
    beam_search,
    first_token_logp,
    full_scores,
)
from kp4sr.errors import ConfigError, DataError
from kp4sr.evaluation import metrics, target_ranks
from kp4sr.model import (
    CROSS_ATTENTION,
    ITEM_KNOWLEDGE,
    PRECISIONS,
    RECENCY,
    TREE_BLOCKS,
    add_item_knowledge,
    add_recency,
    build_model,
    check_backbone,
    is_preset,
    set_cross_attention,
    set_tree_blocks,
)
from kp4sr.prompts import FusedPrompt, PromptBuilder, PromptConfig
from kp4sr.templates import (
    load_relation_templates,
    mpp_templates,
    resolve_mpp_templates,
    resolve_relation_templates,
)
from kp4sr.tokenization import (
    ItemCodes,
    assign_item_numbers,
    item_texts,
    load_tokenizer,
    train_tokenizer,
)
from kp4sr.tree_mask import encoder_mask

log = logging.getLogger(__name__)

NEW_USER = "new"  # user text written in the MPP for a history of no known user
TRAIN_HISTORY = ("full", "random")


@dataclass
class Config:
    """Every option of a run, saved as ``config.json`` in the run folder.

    Defaults follow the paper where it states them (5 items, 2 hops, degree 8, 512 tokens,
    AdamW 1e-3 with 5% warmup and linear decay, clip 1.0, dropout 0.1, 20 beams).
    """

    dataset: str = "toy"  # toy | ml-100k | path to a folder in the generic format
    data_dir: str | None = None  # folder holding the dataset's files (else $KP4SR_DATA)
    kg: str | None = None  # metadata | freebase | both | none (None: all that is present)
    nameless: str = "skip"  # KG entities without a name: skip their triples, or use the id
    names: str = "any"  # any | latin: treat names without a Latin letter as nameless
    min_user: int = 5  # k-core before the split: drop users with fewer interactions
    min_item: int = 5  # k-core before the split: drop items with fewer interactions
    items: str = "track"  # LFM-1b items: artist | album | track
    freebase: str | None = None  # Freebase KG: KB4Rec-style folder, triples TSV, N-Triples dump
    linkage: str | None = None  # KB4Rec linkage file (ml2fb.txt, ab2fb.txt, lfb2fb.txt)
    cache: bool = True  # cache preprocessed datasets ($KP4SR_CACHE, else ~/.cache/kp4sr)
    templates: str | None = None  # JSON file {relation: "sentence with [X] and [Y]"}
    generic_templates: bool = False  # relations without a template get a generic sentence
    mpp_templates: str = "all"  # all: one drawn per sample | first: eval's only | JSON list file
    relations: str | None = None  # KG relations to keep, comma-separated, in priority order
    max_items: int = 5  # history items the model sees
    eval_max_items: int = 0  # ranking and serving read only the last N of them (0: all)
    eval_windows: bool = False  # rank by the mean probability over the last 1, 2, .. N items
    train_history: str = "full"  # full | random: each training sample keeps its last k items,
    # k drawn uniformly from 1..max_items (SASRec's causal loss trains on every context length)
    recency_embeddings: bool = False  # a learned embedding of each history item's position
    # from the end, added to its ID tokens (T5 alone ignores the order: research log, try 37)
    item_knowledge: str = ""  # KG relations ("all", or A,B) whose shared tails join each item
    # token's input and output embedding (knowledge-aware item embeddings; "": off)
    item_knowledge_lr: float = 1.0  # their learning rate, as a multiple of lr
    user_ids: bool = True  # False: every MPP names no user (no per-user token to memorise)
    item_index: str = "random"  # random | sequential (P5's leaky order of appearance)
    item_tokens: str = "single"  # single: one token per item | digits: one token per digit
    hop: int = 2  # knowledge hops from each history item
    degree: int = 8  # at most this many edges per entity
    max_length: int = 512  # encoder input cap in tokens
    knowledge: bool = True  # False: MPP only (the P5-style model)
    tree_mask: bool = True  # False: full attention (no prompt denoising)
    cross_attention: str = "all"  # the decoder reads: all encoder tokens | mpp (MPP tokens only)
    tree_blocks: str = "auto"  # tree-masked attention group by group: auto (on a CPU) | on | off
    precision: str = "auto"  # training autocast: auto (bf16 on a GPU, fp32 on a CPU) | fp32 | bf16
    backbone: str = "tiny"  # tiny | small | t5-small | path to a local HF T5 checkpoint
    init_from: str | None = None  # an earlier run folder whose weights start this run
    vocab_size: int = 8000  # tokenizer trained from scratch: target vocabulary size
    dropout: float = 0.1
    tie_embeddings: bool = False  # from scratch: scale the decoder output by d^-0.5 (T5 v1.0)
    epochs: int = 10
    max_minutes: float = 0.0  # >0: stop after the epoch that passes this training time
    batch_size: int = 32
    lr: float = 1e-3
    warmup: float = 0.05  # share of steps with linear warmup, then linear decay
    weight_decay: float = 0.01
    clip: float = 1.0  # gradient norm clip
    samples_per_epoch: int = 0  # 0: every training position each epoch; N: a random N
    seed: int = 0
    eval_every: int = 1  # validate every N epochs
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    patience: int = 3  # stop after this many validations without a better NDCG@10
    beams: int = 20
    exclude_seen: bool = True  # items the user had before the target are not recommended
    train_exclude_seen: bool = False  # training softmax leaves out those items too (single only)
    eval_batch_size: int = 16  # users per beam search batch
    workers: int = 0  # DataLoader worker processes building prompts
    length_buckets: bool = False  # batch training samples of similar prompt length
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown option(s) in config: {', '.join(sorted(unknown))}")
        return cls(**d)


def data_options(config: Config) -> DataOptions:
    """The dataset-reading part of a run's options."""
    return DataOptions(
        kg=config.kg,
        nameless=config.nameless,
        script=config.names,
        min_user=config.min_user,
        min_item=config.min_item,
        items=config.items,
        freebase=config.freebase,
        linkage=config.linkage,
        hop=config.hop,
        cache=config.cache,
    )


def keep_relations(kg: KnowledgeGraph, spec: str) -> KnowledgeGraph:
    """``--relations A,B,C``: the KG with only these relations, A first in evaluation."""
    wanted = [r.strip() for r in spec.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in kg.relations]
    if unknown or len(set(wanted)) != len(wanted) or not wanted:
        problem = f"unknown {', '.join(unknown)}" if unknown else "each relation at most once"
        raise ConfigError(
            f"--relations {spec!r}: {problem}; the KG has: {', '.join(kg.relations) or 'none'}"
        )
    return kg.only(wanted)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class KP4SR:
    """Knowledge prompt-tuning for sequential recommendation (Zhai et al., ACM MM 2023)."""

    def __init__(
        self,
        config: Config,
        dataset: Dataset,
        tokenizer: PreTrainedTokenizerBase,
        model: T5ForConditionalGeneration,
        numbers: np.ndarray,
        relation_templates: dict[str, str],
        mpp: list[str] | None = None,
    ):
        self.config = config
        # a loaded run passes its saved templates: a template file need not outlive the run
        self.mpp_templates = mpp or resolve_mpp_templates(dataset.domain, config.mpp_templates)
        self.dataset = dataset
        self.tokenizer = tokenizer
        if config.tree_blocks not in TREE_BLOCKS:
            raise ConfigError(
                f"--tree-blocks is {config.tree_blocks!r}: expected {' | '.join(TREE_BLOCKS)}"
            )
        if config.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision is {config.precision!r}: expected {' | '.join(PRECISIONS)}"
            )
        self.model = model
        set_tree_blocks(model, config.tree_blocks)
        if config.cross_attention not in CROSS_ATTENTION:
            raise ConfigError(
                f"--cross-attention is {config.cross_attention!r}: expected "
                f"{' | '.join(CROSS_ATTENTION)}"
            )
        set_cross_attention(model, config.cross_attention)
        if not 0 <= config.eval_max_items <= config.max_items:
            raise ConfigError(
                f"--eval-max-items is {config.eval_max_items}: expected 0 (all) to "
                f"--max-items ({config.max_items})"
            )
        if config.train_history not in TRAIN_HISTORY:
            raise ConfigError(
                f"--train-history is {config.train_history!r}: expected {' | '.join(TRAIN_HISTORY)}"
            )
        if config.eval_windows and config.item_tokens != "single":
            raise ConfigError(
                "--eval-windows needs --item-tokens single: it averages the probability of each "
                "item's one ID token over the windows"
            )
        if config.train_exclude_seen and config.item_tokens != "single":
            raise ConfigError(
                "--train-exclude-seen needs --item-tokens single: with digit tokens an item's "
                "first token is shared with other items, so it cannot be left out alone"
            )
        self.numbers = numbers
        self.relation_templates = relation_templates
        self.texts = item_texts(numbers, config.item_tokens)
        self.codes = ItemCodes.build(tokenizer, self.texts)
        self.builder = self.new_builder(
            PromptConfig(config.hop, config.degree, config.max_length, config.knowledge)
        )
        self.trie = ItemTrie(self.codes, tokenizer.eos_token_id)
        self.device = resolve_device(config.device)
        self.model.to(self.device)
        self._split: Split | None = None
        self._item_index = {x: i for i, x in enumerate(dataset.items)}
        self._user_index = {x: i for i, x in enumerate(dataset.users)}

    # -- construction ---------------------------------------------------------------------
    def new_builder(self, config: PromptConfig | None = None) -> PromptBuilder:
        """A prompt builder of this run with empty caches (``config``: other hop, degree,
        length or knowledge switch than the run's), e.g. to time or compare prompt variants."""
        return PromptBuilder(
            self.tokenizer,
            self.texts,
            self.codes,
            self.dataset.items,
            self.dataset.kg,
            self.relation_templates,
            self.mpp_templates,
            config or self.builder.config,
        )

    @classmethod
    def create(cls, config: Config, dataset: Dataset | None = None) -> KP4SR:
        """A fresh, untrained recommender for ``config`` (loads the dataset unless given)."""
        from kp4sr.data import load_dataset

        check_backbone(config.backbone)
        if dataset is None:
            dataset = load_dataset(
                config.dataset, config.data_dir, data_options(config), seed=config.seed
            )
        attributes = None  # from the whole KG: --relations picks what the prompts write
        if config.item_knowledge:
            if config.item_tokens != "single":
                raise ConfigError(
                    "--item-knowledge needs --item-tokens single: the KG's vectors join each "
                    "item's one ID token"
                )
            attributes = item_attributes(dataset, config.item_knowledge)
        if config.relations:
            dataset = dataclasses.replace(dataset, kg=keep_relations(dataset.kg, config.relations))
        overrides = dict(dataset.templates)  # templates the dataset ships, under the user's
        if config.templates:
            overrides.update(load_relation_templates(config.templates))
        rel_templates = resolve_relation_templates(
            dataset.kg.relations, overrides, config.generic_templates
        )
        if config.init_from:  # the earlier run's numbers: its weights' rows are by number
            from kp4sr.runfolder import warm_start_numbers

            numbers = warm_start_numbers(Path(config.init_from), list(map(str, dataset.items)))
        else:
            numbers = assign_item_numbers(
                dataset.sequences, len(dataset.items), config.item_index, config.seed
            )
        mpp = resolve_mpp_templates(dataset.domain, config.mpp_templates)
        texts = item_texts(numbers, config.item_tokens)
        extra = texts if config.item_tokens == "single" else []
        if config.init_from and is_preset(config.backbone):
            from kp4sr.runfolder import warm_start_tokenizer

            tokenizer = warm_start_tokenizer(
                Path(config.init_from), config.vocab_size, config.item_tokens, extra
            )
        elif is_preset(config.backbone):
            corpus = _tokenizer_corpus(dataset, texts, rel_templates, mpp)
            tokenizer = train_tokenizer(corpus, extra, config.vocab_size)
        else:
            tokenizer = load_tokenizer(config.backbone)
            if extra:
                tokenizer.add_tokens(extra, special_tokens=True)
        torch.manual_seed(config.seed)
        model = build_model(
            config.backbone,
            len(tokenizer),
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
            config.dropout,
            config.tie_embeddings,
        )
        if config.recency_embeddings:
            add_recency(model, config.max_items)
        if attributes is not None:
            offsets, attrs, n_attrs = attributes
            tokens = np.asarray(tokenizer.convert_tokens_to_ids(texts), dtype=np.int64)
            rows = np.repeat(tokens, np.diff(offsets))
            add_item_knowledge(model, torch.from_numpy(rows), torch.from_numpy(attrs), n_attrs)
        if config.init_from:
            from kp4sr.runfolder import warm_start

            warm_start(model, tokenizer, Path(config.init_from))
        return cls(config, dataset, tokenizer, model, numbers, rel_templates, mpp)

    def save_pretrained(self, folder: str | Path, weights_only: bool = False) -> None:
        """Write the self-contained run folder (safetensors + JSON)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder / "model")
        if weights_only:
            return
        (folder / "config.json").write_text(
            json.dumps(dataclasses.asdict(self.config), indent=2), encoding="utf-8"
        )
        self.tokenizer.save_pretrained(folder / "tokenizer")
        save_dataset(self.dataset, folder)
        (folder / "items.json").write_text(
            json.dumps({"numbers": self.numbers.tolist()}), encoding="utf-8"
        )
        (folder / "templates.json").write_text(
            json.dumps(
                {"relations": self.relation_templates, "mpp": self.builder.mpp_templates},
                indent=2,
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | None = None) -> KP4SR:
        """Load a run folder written by :meth:`save_pretrained` (or by ``kp4sr train``)."""
        from kp4sr import runfolder as rf

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{folder} is not a kp4sr run folder (no config.json)")
        config_path = folder / "config.json"
        options = rf.check_config(rf.read_json(config_path, "options"), Config, config_path)
        config = Config.from_dict(options)
        if device is not None:
            config.device = device
        dataset = load_saved_dataset(folder)
        items_path, templates_path = folder / "items.json", folder / "templates.json"
        numbers = rf.check_numbers(
            rf.read_json(items_path, "item numbers"), len(dataset.items), items_path
        )
        relations, mpp = rf.check_saved_templates(
            rf.read_json(templates_path, "relation and MPP templates"),
            templates_path,
            dataset.kg.relations,
        )
        tokenizer = rf.load_run_tokenizer(folder / "tokenizer")
        single = item_texts(numbers[:1], "single")[0] in tokenizer.get_vocab()
        if single != (config.item_tokens == "single"):
            raise DataError(
                f"item_tokens is {config.item_tokens!r} but the tokenizer "
                + ("has" if single else "lacks")
                + " one token per item: config.json and tokenizer/ do not match",
                config_path,
            )
        model = rf.load_t5(folder / "model", len(tokenizer), is_preset(config.backbone))
        if bool(config.item_knowledge) != hasattr(model, ITEM_KNOWLEDGE):
            raise DataError(
                f"item_knowledge is {config.item_knowledge!r} but the model "
                + ("lacks" if config.item_knowledge else "has")
                + " knowledge-aware item embeddings: config.json and model/ do not match",
                config_path,
            )
        if config.recency_embeddings != hasattr(model, RECENCY):
            raise DataError(
                f"recency_embeddings is {str(config.recency_embeddings).lower()} but the model "
                + ("lacks" if config.recency_embeddings else "has")
                + " a recency table: config.json and model/ do not match",
                config_path,
            )
        return cls(config, dataset, tokenizer, model, numbers, relations, mpp)

    # -- data -----------------------------------------------------------------------------
    @property
    def split(self) -> Split:
        if self._split is None:
            self._split = leave_one_out(self.dataset, self.config.max_items)
        return self._split

    def user_text(self, user: int | None) -> str:
        if user is None or not self.config.user_ids:
            return NEW_USER
        return self.dataset.users[user]

    def prompt(self, sample: Sample, rng: np.random.Generator | None = None) -> FusedPrompt:
        return self.builder.build(self.user_text(sample.user), sample.history, rng)

    def target_tokens(self, item: int) -> np.ndarray:
        return np.append(self.codes.of(item), self.tokenizer.eos_token_id)

    def item_index(self, raw: str) -> int:
        """Internal index of a dataset item ID; an unknown ID is a clear error."""
        try:
            return self._item_index[str(raw)]
        except KeyError:
            raise ConfigError(f"unknown item {raw!r}: not in dataset {self.dataset.name}") from None

    def user_index(self, raw: str) -> int:
        try:
            return self._user_index[str(raw)]
        except KeyError:
            raise ConfigError(f"unknown user {raw!r}: not in dataset {self.dataset.name}") from None

    # -- ranking --------------------------------------------------------------------------
    def rank(
        self,
        users: list[int | None],
        histories: list[np.ndarray],
        seen: list[set[int]] | None = None,
        beams: int | None = None,
        batch_size: int | None = None,
        progress: bool = False,
        constrained: bool = True,
    ) -> Ranked:
        """Top-``beams`` items per history by constrained beam search, best first
        (``constrained=False``: plain beam search, invalid IDs marked ``INVALID``)."""
        beams = beams or self.config.beams
        bs = batch_size or self.config.eval_batch_size
        if self.config.eval_windows:
            if not constrained:
                raise ConfigError("--eval-windows ranks every item: evaluate in beam or full mode")
            return self._rank_windows(users, histories, seen, beams, bs, progress)
        out_items, out_scores = [], []
        pad = self.tokenizer.pad_token_id
        starts = range(0, len(histories), bs)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="ranking", unit="batch", leave=False)
        for s in starts:
            texts = [self.user_text(u) for u in users[s : s + bs]]
            recent = [self.recent(h) for h in histories[s : s + bs]]
            batch = self.builder.build_batch(texts, recent).to(self.device)
            r = beam_search(
                self.model,
                batch,
                self.trie,
                beams,
                self.config.tree_mask,
                pad,
                None if seen is None or not constrained else seen[s : s + bs],
                constrained=constrained,
            )
            out_items.append(r.items)
            out_scores.append(r.scores)
        if not out_items:
            return Ranked(np.zeros((0, beams), np.int64), np.zeros((0, beams), np.float32))
        return Ranked(np.concatenate(out_items), np.concatenate(out_scores))

    def window_scores(
        self, users: list[int | None], histories: list[np.ndarray], batch_size: int | None = None
    ) -> np.ndarray:
        """[B, n_items] (``--eval-windows``): the log of each item's mean probability over the
        prompts of the history's last 1, 2, ..., all items (after ``eval_max_items``).

        Why: the model ranks test users better from fewer items than it was trained on, and no
        one window is best for every user; the mixture weighs recent items most (the last item
        is in every window, the oldest in one) without choosing. Single-token item IDs only."""
        bs = batch_size or self.config.eval_batch_size
        hist = [self.recent(h) for h in histories]
        lengths = np.array([len(h) for h in hist], dtype=np.int64)
        texts = [self.user_text(u) for u in users]
        total = np.zeros((len(hist), len(self.dataset.items)), dtype=np.float64)
        first = self.codes.codes[:, 0]
        for k in range(1, int(lengths.max(initial=0)) + 1):
            rows = np.flatnonzero(lengths >= k)
            for s in range(0, len(rows), bs):
                part = rows[s : s + bs]
                batch = self.builder.build_batch(
                    [texts[r] for r in part], [hist[r][-k:] for r in part]
                ).to(self.device)
                logp = first_token_logp(self.model, batch, first, self.config.tree_mask)
                total[part] += np.exp(logp.astype(np.float64))
        with np.errstate(divide="ignore"):
            return np.log(total / np.maximum(lengths, 1)[:, None]).astype(np.float32)

    def _rank_windows(
        self,
        users: list[int | None],
        histories: list[np.ndarray],
        seen: list[set[int]] | None,
        k: int,
        bs: int,
        progress: bool,
    ) -> Ranked:
        """:meth:`rank` under ``--eval-windows``: every item scored, the top ``k`` kept."""
        out_items, out_scores = [], []
        starts = range(0, len(histories), 256)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="ranking (windows)", unit="chunk", leave=False)
        for s in starts:
            sc = self.window_scores(users[s : s + 256], histories[s : s + 256], bs)
            if seen is not None:
                for row, items in enumerate(seen[s : s + 256]):
                    sc[row, list(items)] = -np.inf
            top = np.argsort(-sc, axis=1, kind="stable")[:, :k]
            top_scores = np.take_along_axis(sc, top, axis=1)
            out_items.append(np.where(np.isfinite(top_scores), top, MISSING))
            out_scores.append(top_scores)
        if not out_items:
            return Ranked(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        return Ranked(np.concatenate(out_items), np.concatenate(out_scores))

    def recent(self, history: np.ndarray) -> np.ndarray:
        """The part of a history that ranking and serving read: its last ``eval_max_items``
        items (all when 0). A model trained on 5 items can rank better from fewer (try 35)."""
        k = self.config.eval_max_items
        return history[-k:] if k else history

    def seen_items(self, sample: Sample) -> set[int]:
        return set(self.dataset.sequences[sample.user][: sample.position].tolist())

    def item_scores(self, samples: list[Sample], progress: bool = False) -> np.ndarray:
        """[len(samples), n_items]: every item's exact log-probability under the decoder for
        each sample's prompt (seen items not excluded): what the full ranking sorts. Under
        ``--eval-windows``: :meth:`window_scores`."""
        bs = self.config.eval_batch_size
        if self.config.eval_windows:
            return self.window_scores([x.user for x in samples], [x.history for x in samples])
        out = np.empty((len(samples), len(self.dataset.items)), dtype=np.float32)
        starts = range(0, len(samples), bs)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="full ranking", unit="batch", leave=False)
        for s in starts:
            chunk = samples[s : s + bs]
            texts = [self.user_text(x.user) for x in chunk]
            recent = [self.recent(x.history) for x in chunk]
            batch = self.builder.build_batch(texts, recent).to(self.device)
            out[s : s + len(chunk)] = full_scores(
                self.model, batch, self.codes, self.tokenizer.eos_token_id, self.config.tree_mask
            )
        return out

    def full_ranks(self, samples: list[Sample], progress: bool = False) -> np.ndarray:
        """Exact 0-based rank of each target among all items (seen items excluded by the
        config), from every item's log-probability under the decoder."""
        sc = self.item_scores(samples, progress)
        if self.config.exclude_seen:
            for row, x in enumerate(samples):
                sc[row, list(self.seen_items(x))] = -np.inf
        targets = np.array([x.target for x in samples], dtype=np.int64)
        mine = sc[np.arange(len(samples)), targets]
        return (sc > mine[:, None]).sum(1).astype(np.int64)

    def evaluate(
        self,
        split: str = "test",
        max_users: int | None = None,
        progress: bool = False,
        mode: str = "beam",
        sharded: bool = False,
    ) -> dict[str, float]:
        """HR@k, NDCG@k (k = 5, 10, 20) and MRR over all users of ``split`` (see eval_samples).

        ``mode``: ``beam`` (constrained beam search, the default), ``full`` (exact ranking of
        every item, MRR over the full list) or ``unconstrained`` (plain beam search as in the
        paper's code; adds ``invalid_share``, the share of generated IDs that are no item).
        ``sharded``: under torchrun, every process ranks its share of the users and the lists
        are gathered (every process must call it; the result is the same on all).
        """
        ranks, extra = self.user_ranks(split, max_users, progress, mode, sharded)
        return {**metrics(ranks), **extra}

    def user_ranks(
        self,
        split: str = "test",
        max_users: int | None = None,
        progress: bool = False,
        mode: str = "beam",
        sharded: bool = False,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Each user's 0-based rank of their target in ``split`` (-1: not in the list), in the
        order of ``split_users``; and, for ``unconstrained``, ``invalid_share``. What
        :meth:`evaluate` averages; kept per user for paired comparisons of two models."""
        if mode not in ("beam", "full", "unconstrained"):
            raise ConfigError(f"unknown evaluation mode {mode!r}: beam, full or unconstrained")
        samples = self.eval_samples(split)[:max_users]
        targets = np.array([s.target for s in samples], dtype=np.int64)
        mine = distributed.shard(samples) if sharded else samples
        if mode == "full":
            ranks = self.full_ranks(mine, progress)
            return (distributed.gather_shards(ranks, len(samples)) if sharded else ranks), {}
        seen = [self.seen_items(s) for s in samples] if self.config.exclude_seen else None
        ranked = self.rank(
            [s.user for s in mine],
            [s.history for s in mine],
            distributed.shard(seen) if sharded and seen is not None else seen,
            progress=progress,
            constrained=mode == "beam",
        )
        items = ranked.items
        if sharded:
            items = distributed.gather_shards(items, len(samples))
        out: dict[str, float] = {}
        if mode == "unconstrained":
            out["invalid_share"] = float((items == INVALID).mean()) if items.size else 0.0
            if seen is not None:  # beams cannot ban seen items here: drop them afterwards
                k = items.shape[1]
                kept = [[i for i in row if i not in sn] for row, sn in zip(items.tolist(), seen)]
                items = np.array([r + [MISSING] * (k - len(r)) for r in kept], dtype=np.int64)
        return target_ranks(items, targets), out

    def split_users(self, split: str, max_users: int | None = None) -> list[str]:
        """The dataset's user IDs of ``split``'s samples, in evaluation order."""
        return [str(self.dataset.users[s.user]) for s in self.eval_samples(split)[:max_users]]

    def eval_samples(self, split: str) -> list[Sample]:
        """The samples :meth:`evaluate` ranks, one per user: ``valid``, ``test``, or ``train``:
        each user's last training target (the position before validation). ``train`` runs the
        same protocol on data the model learnt from, so that its gap to ``valid`` tells
        overfitting (a large gap) from underfitting (none)."""
        if split in ("valid", "test"):
            return list(self.split[split])
        if split != "train":
            raise ConfigError(f"evaluate on train, valid or test, not {split!r}")
        return self.split.last_train()

    def recommend(
        self,
        histories: list[list[str]] | None = None,
        k: int = 10,
        users: list[str] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Top-``k`` items for known users (their whole history) or for raw item-ID histories
        (any user, seen in training or not). Returns per query a list of
        ``{"item", "title", "score", "id_text"}``, best first."""
        u_idx: list[int | None]
        if users is not None:
            u_idx = [self.user_index(u) for u in users]
            full = [self.dataset.sequences[u] for u in u_idx]
        elif histories is not None:
            u_idx = [None] * len(histories)
            full = [np.array([self.item_index(x) for x in h], dtype=np.int64) for h in histories]
            if any(len(h) == 0 for h in full):
                raise ConfigError("a history needs at least one item")
        else:
            raise ConfigError("give users or histories")
        hist = [h[-self.config.max_items :] for h in full]
        seen = [set(h.tolist()) for h in full] if self.config.exclude_seen else None
        ranked = self.rank(u_idx, hist, seen, beams=max(k, self.config.beams))
        out = []
        for items, scores in zip(ranked.items, ranked.scores):
            out.append(
                [
                    {
                        "item": self.dataset.items[i],
                        "title": self.dataset.titles[i],
                        "score": float(s),
                        "id_text": self.texts[i],
                    }
                    for i, s in zip(items[:k].tolist(), scores[:k].tolist())
                    if i >= 0
                ]
            )
        return out

    def explain(self, user: str | None = None, history: list[str] | None = None) -> dict[str, Any]:
        """The fused prompt the encoder reads for a user (their test-time input, i.e. all but
        the last item) or for a raw history, with its knowledge tree and visibility matrix."""
        if user is not None:
            u = self.user_index(user)
            seq = self.dataset.sequences[u]
            hist = self.recent(seq[:-1][-self.config.max_items :] if len(seq) > 1 else seq)
            utext = self.user_text(u)
        elif history is not None:
            hist = np.array([self.item_index(x) for x in history], dtype=np.int64)
            hist = self.recent(hist[-self.config.max_items :])
            utext = NEW_USER
        else:
            raise ConfigError("give a user or a history")
        p = self.builder.build(utext, hist)
        vis = encoder_mask(
            torch.from_numpy(p.node_of_token)[None],
            torch.from_numpy(p.parents)[None],
            tree=self.config.tree_mask,
        )[0, 0]
        nodes = []
        for n in range(len(p.parents)):
            parent = int(p.parents[n])
            nodes.append(
                {
                    "id": n,
                    "parent": None if parent < 0 else parent,
                    "kind": p.nodes[n][0],
                    "text": self.builder.node_text(p, n, utext, hist),
                    "start": int(p.spans[n, 0]),
                    "end": int(p.spans[n, 1]),
                }
            )
        return {
            "tokens": self.tokenizer.convert_ids_to_tokens(p.input_ids.tolist()),
            "nodes": nodes,
            "visible": vis.to(torch.int8).tolist(),
            "tree_mask": self.config.tree_mask,
        }


def _tokenizer_corpus(
    dataset: Dataset, texts: list[str], rel_templates: dict[str, str], mpp: list[str]
) -> list[str]:
    """Sentences the tokenizer is trained on: templates, every fact, every title.

    The domain's built-in MPP templates are always in it, so that ``--mpp-templates first``
    and ``all`` give the same tokenizer (and one run can warm-start the other)."""
    kg = dataset.kg
    key_text = dict(zip(dataset.items, texts))
    names = [
        key_text.get(e[len("item:") :], n or e) if e.startswith("item:") else (n or e)
        for e, n in zip(kg.entities, kg.names)
    ]
    builtin = mpp_templates(dataset.domain)
    every_mpp = builtin + [t for t in mpp if t not in builtin]
    corpus = [t.replace("{", " ").replace("}", " ") for t in every_mpp]
    tmpl = [rel_templates[r] for r in kg.relations]
    for h, r, t in zip(kg.heads.tolist(), kg.rels.tolist(), kg.tails.tolist()):
        corpus.append(tmpl[r].replace("[X]", names[h]).replace("[Y]", names[t]))
    corpus.extend(t for t in dataset.titles if t)
    corpus.extend(dataset.users[:1000])
    return corpus
