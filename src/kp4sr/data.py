"""The data every model reads: users' time-ordered item sequences, item titles, a knowledge graph,
and the leave-one-out split.

Loaders for file formats live in :mod:`kp4sr.loaders`, the generated default dataset in
:mod:`kp4sr.toy`; this module holds the types they produce and the split that every model shares.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

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

    def merge(self, other: KnowledgeGraph) -> KnowledgeGraph:
        """Union of two graphs; a name from ``self`` wins over one from ``other``."""
        names = other.name_map()
        names.update({k: v for k, v in self.name_map().items() if v is not None})
        return KnowledgeGraph.from_triples(list(self.triples()) + list(other.triples()), names)

    def keep_relations(self, keep: Iterable[str]) -> KnowledgeGraph:
        """The subgraph of the named relations (for relation ablations)."""
        keep = set(keep)
        names = self.name_map()
        return KnowledgeGraph.from_triples([t for t in self.triples() if t[1] in keep], names)


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


@dataclass(frozen=True)
class Split:
    """Leave-one-out split: per user the last item is test, the one before is validation,
    every earlier position (from the second item on) is a training target."""

    train: list[Sample]
    valid: list[Sample]
    test: list[Sample]
    skipped_users: int = 0

    def __getitem__(self, name: str) -> list[Sample]:
        if name not in ("train", "valid", "test"):
            raise ConfigError(f"unknown split {name!r}: expected train, valid or test")
        return getattr(self, name)


MIN_INTERACTIONS = 3


def leave_one_out(dataset: Dataset, max_items: int = 5) -> Split:
    """Split every user's sequence; users with fewer than 3 interactions are skipped and counted.

    The model sees at most ``max_items`` items before each target (the most recent ones).
    """
    if max_items < 1:
        raise ConfigError(f"max_items must be at least 1, got {max_items}")
    train: list[Sample] = []
    valid: list[Sample] = []
    test: list[Sample] = []
    skipped = 0
    for u, seq in enumerate(dataset.sequences):
        n = len(seq)
        if n < MIN_INTERACTIONS:
            skipped += 1
            continue
        for t in range(1, n):
            s = Sample(u, seq[max(0, t - max_items) : t], int(seq[t]), t)
            if t == n - 1:
                test.append(s)
            elif t == n - 2:
                valid.append(s)
            else:
                train.append(s)
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


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    kg: str | None = None,
    seed: int = 0,
    nameless: str = "skip",
    script: str = "any",
) -> Dataset:
    """Resolve ``toy``, ``ml-100k`` or a folder in the generic format to a :class:`Dataset`.

    ``kg`` chooses the knowledge: ``metadata`` (genres, years from the item file), ``freebase``
    (a KB4Rec-style KG folder), ``both`` or ``none``; ``None`` means both where present.
    ``nameless`` and ``script`` are the Freebase naming policy of
    :func:`kp4sr.loaders.load_kb4rec_kg`.
    """
    from kp4sr import loaders, toy

    if kg is not None and kg not in KG_CHOICES:
        raise ConfigError(f"unknown --kg {kg!r}: expected one of {', '.join(KG_CHOICES)}")
    if name == "toy":
        ds = toy.generate(seed=seed)
    elif name in ("ml-100k", "ml100k", "movielens-100k"):
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        if root is None:
            raise ConfigError(
                "ml-100k needs its files: pass --data-dir DIR or set KP4SR_DATA "
                "(DIR holds ml-100k/ or u.data itself)"
            )
        folder = root / "ml-100k" if (root / "ml-100k").is_dir() else root
        fb = root / "ml-100k-freebase"
        ds = loaders.load_movielens_100k(folder)
        want_fb = kg in ("freebase", "both") or (kg is None and fb.is_dir())
        if want_fb:
            if not fb.is_dir():
                raise ConfigError(f"--kg {kg} needs the Freebase KG folder {fb}, which is missing")
            fb_kg, skipped = loaders.load_kb4rec_kg(fb, ds.items, nameless=nameless, script=script)
            for k, v in skipped.items():
                ds.skipped[k] = ds.skipped.get(k, 0) + v
            if kg == "freebase":
                ds.kg = fb_kg
            else:
                ds.kg = ds.kg.merge(fb_kg)
    else:
        path = Path(name)
        if not path.is_dir() and data_dir is not None:
            path = Path(data_dir) / name
        if not path.is_dir():
            raise ConfigError(
                f"unknown dataset {name!r}: expected toy, ml-100k or a folder in the generic format"
            )
        ds = loaders.load_generic(path, nameless=nameless)
    if kg == "none":
        ds.kg = KnowledgeGraph.empty()
    if not any(len(s) for s in ds.sequences):
        raise DataError("the dataset has no interactions", name)
    return ds


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
        "kg_entities": ds.kg.entities,
        "kg_names": ds.kg.names,
        "kg_relations": ds.kg.relations,
    }
    (folder / "dataset.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")


def load_saved_dataset(folder: Path) -> Dataset:
    """Read what :func:`save_dataset` wrote; a missing or inconsistent file is a DataError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta_path, arr_path = folder / "dataset.json", folder / "dataset.safetensors"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        arrays = load_file(str(arr_path))
    except FileNotFoundError as e:
        raise DataError("missing from the run folder", e.filename) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"corrupted ({e})", meta_path) from None
    except (SafetensorError, OSError) as e:
        raise DataError(f"corrupted ({e})", arr_path) from None
    lengths = arrays["seq_lengths"]
    if len(lengths) != len(meta["users"]) or int(lengths.sum()) != len(arrays["seq_items"]):
        raise DataError("sequence arrays do not match the users in dataset.json", arr_path)
    sequences = np.split(arrays["seq_items"], np.cumsum(lengths)[:-1]) if len(lengths) else []
    kg = KnowledgeGraph(
        entities=meta["kg_entities"],
        names=meta["kg_names"],
        relations=meta["kg_relations"],
        heads=arrays["kg_heads"],
        rels=arrays["kg_rels"],
        tails=arrays["kg_tails"],
    )
    return Dataset(
        name=meta["name"],
        domain=meta["domain"],
        users=meta["users"],
        items=meta["items"],
        titles=meta["titles"],
        sequences=list(sequences),
        kg=kg,
        skipped=meta.get("skipped", {}),
    )
