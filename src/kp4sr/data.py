"""The data every model reads: users' time-ordered item sequences, item titles, a knowledge graph,
and the leave-one-out split.

Loaders for file formats live in :mod:`kp4sr.loaders`, the generated default dataset in
:mod:`kp4sr.toy`; this module holds the types they produce and the split that every model shares.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import numpy as np

from kp4sr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ITEM_PREFIX = "item:"


def item_key(raw_item: str) -> str:
    """The KG entity key of a dataset item: items and KG entities share one key space."""
    return ITEM_PREFIX + raw_item


@dataclass(frozen=True)
class KnowledgeGraph:
    """Directed triples over integer entity and relation indices.

    Entity keys of dataset items are ``item_key(raw_item_id)``; every other entity key is
    whatever the source used (a Freebase MID, ``genre:Comedy``, ...). ``names[e]`` is the text a
    knowledge prompt writes for entity ``e`` (``None``: the entity has no usable name).
    """

    entities: list[str]
    names: list[str | None]
    relations: list[str]
    heads: np.ndarray  # int64 [T]
    rels: np.ndarray  # int64 [T]
    tails: np.ndarray  # int64 [T]

    @property
    def num_triples(self) -> int:
        return int(self.heads.shape[0])

    @classmethod
    def empty(cls) -> KnowledgeGraph:
        z = np.zeros(0, dtype=np.int64)
        return cls([], [], [], z, z.copy(), z.copy())

    @classmethod
    def from_triples(
        cls, triples: Iterable[tuple[str, str, str]], names: dict[str, str | None]
    ) -> KnowledgeGraph:
        """Index string triples; duplicate triples are kept once (first occurrence order)."""
        ent: dict[str, int] = {}
        rel: dict[str, int] = {}
        seen: set[tuple[int, int, int]] = set()
        hs: list[int] = []
        rs: list[int] = []
        ts: list[int] = []
        for h, r, t in triples:
            hi = ent.setdefault(h, len(ent))
            ri = rel.setdefault(r, len(rel))
            ti = ent.setdefault(t, len(ent))
            if (hi, ri, ti) in seen:
                continue
            seen.add((hi, ri, ti))
            hs.append(hi)
            rs.append(ri)
            ts.append(ti)
        entities = list(ent)
        return cls(
            entities=entities,
            names=[names.get(e) for e in entities],
            relations=list(rel),
            heads=np.asarray(hs, dtype=np.int64),
            rels=np.asarray(rs, dtype=np.int64),
            tails=np.asarray(ts, dtype=np.int64),
        )

    def triples(self) -> Iterable[tuple[str, str, str]]:
        """The triples as string keys, in stored order."""
        for h, r, t in zip(self.heads.tolist(), self.rels.tolist(), self.tails.tolist()):
            yield self.entities[h], self.relations[r], self.entities[t]

    def name_map(self) -> dict[str, str | None]:
        return dict(zip(self.entities, self.names))

    def only(self, relations: list[str]) -> KnowledgeGraph:
        """The triples of these relations, numbered in the order given. Prompts take an entity's
        relations in that order in evaluation (round-robin by relation number), so the order
        is a priority: with degree 3, the first three listed that an entity has."""
        index = {r: k for k, r in enumerate(self.relations)}
        new = np.full(len(self.relations), -1, dtype=np.int64)
        new[[index[r] for r in relations]] = np.arange(len(relations))
        keep = new[self.rels] >= 0
        return KnowledgeGraph(
            entities=self.entities,
            names=self.names,
            relations=list(relations),
            heads=self.heads[keep],
            rels=new[self.rels[keep]],
            tails=self.tails[keep],
        )

    def merge(self, other: KnowledgeGraph) -> KnowledgeGraph:
        """Union of two graphs; a name from ``self`` wins over one from ``other``."""
        names = other.name_map()
        names.update({k: v for k, v in self.name_map().items() if v is not None})
        return KnowledgeGraph.from_triples(list(self.triples()) + list(other.triples()), names)


@dataclass
class Dataset:
    """Users' interaction sequences plus item metadata and a knowledge graph.

    ``sequences[u]`` holds item indices (into ``items``) in time order, ties already broken
    stably by the loader (file order), so that every model and every export sees the same split.
    """

    name: str
    domain: str  # "movie", "book", "music" or "item": picks the MPP templates
    users: list[str]
    items: list[str]
    titles: list[str | None]
    sequences: list[np.ndarray]
    kg: KnowledgeGraph = field(default_factory=KnowledgeGraph.empty)
    skipped: dict[str, int] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)  # relation templates the data ships

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def stats(self) -> dict[str, float | int]:
        """Counts a user compares with the paper's dataset table."""
        n_u, n_i, n_x = len(self.users), len(self.items), self.num_interactions
        keys = {item_key(i) for i in self.items}
        linked = sum(1 for e in self.kg.entities if e in keys)
        return {
            "users": n_u,
            "items": n_i,
            "interactions": n_x,
            "sparsity": 1.0 - n_x / max(1, n_u * n_i),
            "avg_seq_len": n_x / max(1, n_u),
            "linked_items": linked,
            "kg_entities": len(self.kg.entities),
            "kg_relations": len(self.kg.relations),
            "kg_triples": self.kg.num_triples,
        }


@dataclass(frozen=True)
class Sample:
    """One next-item prediction: the user, the items before the target (time order), the target."""

    user: int
    history: np.ndarray  # item indices, oldest first, at most max_items long
    target: int
    position: int  # index of the target in the user's sequence (its prefix is what was seen)


class Samples(Sequence[Sample]):
    """Training samples kept as two integer arrays (user, target position) and built as
    :class:`Sample` on access: at 10M interactions a list of Sample objects alone takes several
    GB and a minute to build. Indexing (also by numpy integers), slicing (a list), ``len`` and
    iteration work as on a list, in the same order (by user, then position)."""

    def __init__(
        self, sequences: list[np.ndarray], users: np.ndarray, positions: np.ndarray, max_items: int
    ):
        self.sequences = sequences
        self.users = users
        self.positions = positions
        self.max_items = max_items

    def __len__(self) -> int:
        return len(self.users)

    def _sample(self, k: int) -> Sample:
        u, t = int(self.users[k]), int(self.positions[k])
        seq = self.sequences[u]
        return Sample(u, seq[max(0, t - self.max_items) : t], int(seq[t]), t)

    @overload
    def __getitem__(self, k: int) -> Sample: ...

    @overload
    def __getitem__(self, k: slice) -> list[Sample]: ...

    def __getitem__(self, k: int | slice) -> Sample | list[Sample]:
        if isinstance(k, slice):
            return [self._sample(i) for i in range(*k.indices(len(self)))]
        return self._sample(range(len(self))[k])  # negative indices, IndexError as a list

    def __iter__(self) -> Iterator[Sample]:
        return (self._sample(i) for i in range(len(self)))


@dataclass(frozen=True)
class Split:
    """Leave-one-out split: per user the last item is test, the one before is validation,
    every earlier position (from the second item on) is a training target."""

    train: Samples  # array-backed: (user, target position) per training sample
    valid: list[Sample]
    test: list[Sample]
    skipped_users: int = 0

    def __getitem__(self, name: str) -> Sequence[Sample]:
        if name not in ("train", "valid", "test"):
            raise ConfigError(f"unknown split {name!r}: expected train, valid or test")
        return getattr(self, name)

    def last_train(self) -> list[Sample]:
        """Each user's last training target (the position before validation), one per user.

        Ranked with the protocol of ``valid`` and ``test``, it measures how well a model fits
        data it learnt from: a large gap to ``valid`` is overfitting, none is underfitting."""
        users = self.train.users  # array-backed: no sample is built to find each user's last
        last = np.flatnonzero(np.append(users[1:] != users[:-1], True)) if len(users) else users
        return [self.train[int(k)] for k in last]


def item_attributes(dataset: Dataset, relations: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Each item's 1-hop KG tails as attribute numbers, in CSR form (``offsets`` [n_items + 1],
    ``values``), and the number of attributes.

    ``relations``: comma-separated relation names, or ``all``. Only tails that at least two
    items share become attributes: a tail of one item alone says nothing that item's own ID
    embedding cannot, and would only add parameters. An unknown relation is a ConfigError."""
    kg = dataset.kg
    wanted = (
        kg.relations
        if relations == "all"
        else [r.strip() for r in relations.split(",") if r.strip()]
    )
    unknown = sorted(set(wanted) - set(kg.relations))
    if unknown or not wanted:
        raise ConfigError(
            f"item_knowledge: unknown relation(s) {', '.join(unknown) or '(none given)'}; "
            f"the dataset's KG has: {', '.join(kg.relations) or 'no relations'}"
        )
    rel_ok = np.isin(np.arange(len(kg.relations)), [kg.relations.index(r) for r in wanted])
    ent_item = np.full(len(kg.entities), -1, dtype=np.int64)
    index = {e: k for k, e in enumerate(kg.entities)}
    for j, raw in enumerate(dataset.items):
        e = index.get(item_key(raw))
        if e is not None:
            ent_item[e] = j
    heads = ent_item[kg.heads]
    keep = rel_ok[kg.rels] & (heads >= 0)
    items, tails = heads[keep], kg.tails[keep]
    pairs = np.unique(np.stack([items, tails], axis=1), axis=0) if len(items) else np.zeros((0, 2))
    items, tails = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    shared = np.bincount(tails, minlength=len(kg.entities)) >= 2
    items, tails = items[shared[tails]], tails[shared[tails]]
    _, attr = np.unique(tails, return_inverse=True)
    order = np.argsort(items, kind="stable")
    counts = np.bincount(items, minlength=len(dataset.items))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, attr[order].astype(np.int64), int(attr.max(initial=-1)) + 1


MIN_INTERACTIONS = 3


def leave_one_out(dataset: Dataset, max_items: int = 5) -> Split:
    """Split every user's sequence; users with fewer than 3 interactions are skipped and counted.

    The model sees at most ``max_items`` items before each target (the most recent ones).
    """
    if max_items < 1:
        raise ConfigError(f"max_items must be at least 1, got {max_items}")
    seqs = dataset.sequences
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    kept = np.flatnonzero(lengths >= MIN_INTERACTIONS)
    skipped = len(seqs) - len(kept)
    # training targets: positions 1 .. n-3 of every kept user, by user then position
    per_user = lengths[kept] - 2 - 1
    users = np.repeat(kept, per_user)
    firsts = np.cumsum(per_user) - per_user
    positions = np.arange(len(users), dtype=np.int64) - np.repeat(firsts, per_user) + 1
    train = Samples(seqs, users, positions, max_items)
    valid: list[Sample] = []
    test: list[Sample] = []
    for u, n in zip(kept.tolist(), lengths[kept].tolist()):
        seq = seqs[u]
        for t, into in ((n - 2, valid), (n - 1, test)):
            into.append(Sample(u, seq[max(0, t - max_items) : t], int(seq[t]), t))
    if skipped:
        log.warning(
            "%s: skipped %d users with fewer than %d interactions",
            dataset.name,
            skipped,
            MIN_INTERACTIONS,
        )
    return Split(train, valid, test, skipped)


def default_data_dir() -> Path | None:
    """``$KP4SR_DATA``, else ``../shared/datasets`` seen from the working directory, if present."""
    env = os.environ.get("KP4SR_DATA")
    if env:
        return Path(env)
    for cand in (Path.cwd() / "../shared/datasets", Path.cwd() / "shared/datasets"):
        if cand.is_dir():
            return cand.resolve()
    return None


KG_CHOICES = ("metadata", "freebase", "both", "none")
MOVIELENS_NAMES = (
    "movielens",
    "ml-1m",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-latest",
    "ml-latest-small",
)
ML100K_NAMES = ("ml-100k", "ml100k", "movielens-100k")


@dataclass(frozen=True)
class DataOptions:
    """How a dataset is read: which knowledge, naming policy, filtering and extra files."""

    kg: str | None = None  # metadata | freebase | both | none; None: all that is present
    nameless: str = "skip"  # Freebase entities without a name: skip their triples, or use the id
    script: str = "any"  # any | latin: a name without a Latin letter counts as no name
    min_user: int = 5  # k-core: users with fewer interactions are dropped (0: keep all)
    min_item: int = 5  # k-core: items with fewer interactions are dropped (0: keep all)
    items: str = "track"  # LFM-1b: artist | album | track
    freebase: str | None = None  # KB4Rec-style KG folder, triples TSV or N-Triples dump
    linkage: str | None = None  # KB4Rec linkage file (ml2fb.txt, ab2fb.txt, lfb2fb.txt)
    hop: int = 2  # hops kept when streaming a Freebase dump
    cache: bool = True  # cache preprocessed file-based datasets ($KP4SR_CACHE)


def _data_root(data_dir: str | Path | None, what: str) -> Path:
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if root is None:
        raise ConfigError(
            f"{what} needs its files: pass --data-dir DIR or set KP4SR_DATA to their folder"
        )
    return root


def _subfolder(root: Path, *names: str) -> Path:
    """``root/<name>`` for the first name present, else ``root`` itself."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    return root


def _first(folder: Path, patterns: tuple[str, ...]) -> Path | None:
    for pat in patterns:
        hits = sorted(p for p in folder.glob(pat) if p.is_file())
        if hits:
            return hits[0]
    return None


def _freebase_kg(ds: Dataset, opts: DataOptions, default_linkage: Path | None) -> KnowledgeGraph:
    """The Freebase KG of ``--freebase`` (a KB4Rec-style folder, a triples TSV or an N-Triples
    dump, gzipped or not) tied to the dataset's items through ``--linkage``."""
    from kp4sr import loaders
    from kp4sr.formats import freebase as fb

    src = Path(opts.freebase)  # type: ignore[arg-type]
    skipped: dict[str, int] = {}
    if src.is_dir():
        kg, skipped = loaders.load_kb4rec_kg(src, ds.items, opts.nameless, opts.script)
    else:
        link_path = Path(opts.linkage) if opts.linkage else default_linkage
        if link_path is None or not link_path.is_file():
            raise ConfigError(
                f"--freebase {src} needs --linkage FILE (a KB4Rec linkage such as ml2fb.txt)"
            )
        links, s1 = fb.load_linkage(link_path, ds.items)
        if src.name.endswith((".tsv", ".tsv.gz", ".txt")):
            triples, s2 = fb.load_triples_tsv(src)
            names = loaders._kb4rec_names(src.parent / "entity_names.tsv", s2)
        else:
            triples, names, s2 = fb.stream_ntriples(src, set(links.values()), opts.hop)
        kg, s3 = fb.build_kg(ds.items, links, triples, names, opts.nameless, opts.script)
        for part in (s1, s2, s3):
            for k, v in part.items():
                skipped[k] = skipped.get(k, 0) + v
    for k, v in skipped.items():
        ds.skipped[k] = ds.skipped.get(k, 0) + v
    return kg


def _with_knowledge(ds: Dataset, fb_kg: KnowledgeGraph | None, kg: str | None) -> Dataset:
    """Combine the metadata KG (already in ``ds``) with a Freebase KG as ``--kg`` asks."""
    if kg in ("freebase", "both") and fb_kg is None:
        raise ConfigError(
            f"--kg {kg} needs a Freebase KG: pass --freebase PATH (and --linkage FILE), or put "
            "ml-100k-freebase/ beside ml-100k/"
        )
    if kg == "none":
        ds.kg = KnowledgeGraph.empty()
    elif kg == "freebase":
        ds.kg = fb_kg  # type: ignore[assignment]
    elif fb_kg is not None and kg != "metadata":
        ds.kg = ds.kg.merge(fb_kg)
    return ds


def _read_files(name: str, root: Path | None, opts: DataOptions) -> Dataset:
    """Read a file-based dataset and its KG."""
    from kp4sr import loaders
    from kp4sr.formats.amazon import load_amazon_reviews
    from kp4sr.formats.kp4sr_release import load_kp4sr_release
    from kp4sr.formats.lfm1b import load_lfm1b
    from kp4sr.formats.movielens import load_movielens

    fb_kg = None
    linkage_dir = None if root is None else root / "kb4rec-linkage"
    if name in ML100K_NAMES or name in MOVIELENS_NAMES:
        assert root is not None
        folder = _subfolder(root, name) if name != "movielens" else root
        if name in ML100K_NAMES:
            folder = _subfolder(root, "ml-100k")
        ds = load_movielens(folder)
        beside = folder.parent / "ml-100k-freebase"
        if (
            opts.freebase is None
            and ds.name == "ml-100k"
            and beside.is_dir()
            and opts.kg != "metadata"
        ):
            opts = dataclasses.replace(opts, freebase=str(beside))
        link = None if linkage_dir is None else linkage_dir / "ml2fb.txt"
    elif name in ("amazon-books", "amazon"):
        assert root is not None
        folder = _subfolder(root, "amazon-books", "amazon")
        reviews = _first(folder, ("reviews_*.json*", "*_5.json*", "Books.json*", "*review*.json*"))
        if reviews is None:
            raise DataError(
                "no Amazon review file (reviews_*.json[.gz], *_5.json[.gz] or Books.json[.gz])",
                folder,
            )
        meta = _first(folder, ("meta_*.json*", "meta*.json*"))
        ds = load_amazon_reviews(reviews, meta, name="amazon-books")
        link = None if linkage_dir is None else linkage_dir / "ab2fb.txt"
    elif name in ("lfm-1b", "lfm1b"):
        assert root is not None
        folder = _subfolder(root, "lfm-1b", "LFM-1b")
        ds = load_lfm1b(folder, items=opts.items)
        link = None if linkage_dir is None else linkage_dir / "lfb2fb.txt"
    else:
        folder = Path(name[len("kp4sr:") :]) if name.startswith("kp4sr:") else Path(name)
        if not folder.is_dir() and root is not None and (root / folder).is_dir():
            folder = root / folder
        if not folder.is_dir():
            raise ConfigError(
                f"unknown dataset {name!r}: expected toy, ml-100k, movielens, ml-1m, ml-10m, "
                "ml-20m, amazon-books, lfm-1b, kp4sr:PATH or a folder in the generic format"
            )
        link = None
        if name.startswith("kp4sr:") or (folder / "sequential_data.txt").is_file():
            ds, templates = load_kp4sr_release(folder, nameless=opts.nameless)
            ds.templates = dict(templates)
        elif any((folder / f).is_file() for f in ("u.data", "ratings.dat", "ratings.csv")):
            ds = load_movielens(folder)
        elif (folder / "LFM-1b_LEs.txt").is_file():
            ds = load_lfm1b(folder, items=opts.items)
        else:
            ds = loaders.load_generic(folder, nameless=opts.nameless)
    if opts.freebase is not None:
        fb_kg = _freebase_kg(ds, opts, link)
    return _with_knowledge(ds, fb_kg, opts.kg)


def load_dataset(
    name: str, data_dir: str | Path | None = None, options: DataOptions | None = None, seed: int = 0
) -> Dataset:
    """Resolve a dataset name or folder to a :class:`Dataset`, k-core filtered.

    Names: ``toy`` (generated from ``seed``), ``ml-100k``, ``movielens`` / ``ml-1m`` / ``ml-10m``
    / ``ml-20m`` / ``ml-latest-small`` (any MovieLens layout), ``amazon-books``, ``lfm-1b``,
    ``kp4sr:PATH`` (the KP4SR authors' released format), or a folder (the format is detected:
    KP4SR release, MovieLens, LFM-1b, else our generic format). File-based datasets are cached
    after preprocessing, keyed by their input files and every option.
    """
    from kp4sr import toy
    from kp4sr.filtering import k_core

    opts = options or DataOptions()
    if opts.kg is not None and opts.kg not in KG_CHOICES:
        raise ConfigError(f"unknown --kg {opts.kg!r}: expected one of {', '.join(KG_CHOICES)}")
    if name == "toy":
        ds = _with_knowledge(toy.generate(seed=seed), None, opts.kg if opts.kg != "both" else None)
    else:
        known = (
            name in ML100K_NAMES
            or name in MOVIELENS_NAMES
            or name in ("amazon-books", "amazon", "lfm-1b", "lfm1b")
        )
        root = _data_root(data_dir, name) if known else (Path(data_dir) if data_dir else None)

        def build() -> Dataset:
            return _read_files(name, root, opts)

        if opts.cache:
            from kp4sr.cache import cached

            files = _input_files(name, root, opts)
            key = {"name": name, "root": str(root), **dataclasses.asdict(opts)}
            key.pop("cache")
            ds = cached(key, files, build)
        else:
            ds = build()
    if opts.min_user or opts.min_item:
        before = len(ds.users), len(ds.items), ds.num_interactions
        ds, report = k_core(ds, opts.min_user, opts.min_item)
        for what, b, a in zip(
            ("users", "items", "interactions"),
            before,
            (len(ds.users), len(ds.items), ds.num_interactions),
        ):
            if b != a:
                ds.skipped[f"{what}_removed_by_k_core"] = b - a
    if not any(len(s) for s in ds.sequences):
        raise DataError("the dataset has no interactions (after k-core filtering)", name)
    return ds


def _input_files(name: str, root: Path | None, opts: DataOptions) -> list[Path]:
    """The files a dataset is read from, for the cache key (every file of its folders)."""
    folders: list[Path] = []
    if root is not None:
        for sub in (
            "ml-100k",
            name,
            "ml-100k-freebase",
            "amazon-books",
            "amazon",
            "lfm-1b",
            "LFM-1b",
            "kb4rec-linkage",
        ):
            if (root / sub).is_dir():
                folders.append(root / sub)
        folders.append(root)
    path = Path(name[len("kp4sr:") :]) if name.startswith("kp4sr:") else Path(name)
    if path.is_dir():
        folders.append(path)
    files = sorted({p for f in folders for p in f.iterdir() if p.is_file()})
    for extra in (opts.freebase, opts.linkage):
        if extra:
            e = Path(extra)
            files += sorted(p for p in e.iterdir() if p.is_file()) if e.is_dir() else [e]
    return files


def save_dataset(ds: Dataset, folder: Path) -> None:
    """Write a dataset as JSON (names) + safetensors (integer arrays), so a run folder is
    self-contained: it can rebuild prompts and the split without the original files."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(s) for s in ds.sequences], dtype=np.int64)
    arrays = {
        "seq_lengths": lengths,
        "seq_items": np.concatenate([np.asarray(s, dtype=np.int64) for s in ds.sequences])
        if len(ds.sequences)
        else np.zeros(0, dtype=np.int64),
        "kg_heads": ds.kg.heads.astype(np.int64),
        "kg_rels": ds.kg.rels.astype(np.int64),
        "kg_tails": ds.kg.tails.astype(np.int64),
    }
    save_file(arrays, str(folder / "dataset.safetensors"))
    meta = {
        "name": ds.name,
        "domain": ds.domain,
        "users": ds.users,
        "items": ds.items,
        "titles": ds.titles,
        "skipped": ds.skipped,
        "templates": ds.templates,
        "kg_entities": ds.kg.entities,
        "kg_names": ds.kg.names,
        "kg_relations": ds.kg.relations,
    }
    (folder / "dataset.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def load_saved_dataset(folder: Path) -> Dataset:
    """Read what :func:`save_dataset` wrote; a missing or inconsistent file is a DataError."""
    from kp4sr.runfolder import check_snapshot, load_arrays, read_json

    meta_path, arr_path = folder / "dataset.json", folder / "dataset.safetensors"
    meta = read_json(meta_path, "the dataset snapshot")
    got = check_snapshot(meta, load_arrays(arr_path), meta_path, arr_path)
    heads, rels, tails = got["kg"]
    kg = KnowledgeGraph(got["entities"], got["names"], got["relations"], heads, rels, tails)
    return Dataset(
        name=meta["name"],
        domain=meta["domain"],
        users=got["users"],
        items=got["items"],
        titles=got["titles"],
        sequences=got["sequences"],
        kg=kg,
        skipped=meta.get("skipped", {}),
        templates=meta.get("templates", {}),
    )


def seen_before(dataset: Dataset, samples: Sequence[Sample]) -> list[np.ndarray]:
    """Items each user had before the target: what the ranking leaves out (and training too,
    with ``--train-exclude-seen``), for KP4SR and the baselines alike."""
    return [dataset.sequences[s.user][: s.position] for s in samples]


def seen_mask(
    seen: list[np.ndarray], targets: np.ndarray, column: np.ndarray, width: int
) -> np.ndarray:
    """[B, width] bool: ``column[i]`` set for every item i each user had before the target.

    Training with ``--train-exclude-seen`` leaves these out of the softmax, as the ranking
    leaves them out. ``column`` maps items to logit columns: KP4SR's first ID token of each
    item (its own only with single-token IDs, which the config checks), a baseline's item
    index. The target's own column is never set, so an item consumed again stays learnable
    (its loss stays finite).
    """
    mask = np.zeros((len(seen), width), dtype=bool)
    lengths = [len(h) for h in seen]
    if sum(lengths):
        rows = np.repeat(np.arange(len(seen)), lengths)
        mask[rows, column[np.concatenate(seen)]] = True
    mask[np.arange(len(seen)), column[targets]] = False
    return mask
