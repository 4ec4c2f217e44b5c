"""The KP4SR authors' released data format: one folder per dataset.

Files (the first two required):

- ``sequential_data.txt``: a user id, then that user's item ids in time order, space-separated,
  one user per line. Both are the *mapped* ids of ``datamaps.json``.
- ``datamaps.json``: ``{"user2id": {...}, "item2id": {...}, "id2item": {...}}``; ``id2item``
  turns a mapped item id back into the raw one (an ASIN, a MovieLens id).
- ``triple2dict.json``: ``{head MID: {relation: [tail MIDs]}}``, the knowledge graph (optional;
  without it the dataset has no KG). With it, ``item2entity.json`` (raw *or* mapped item id ->
  MID) is required and ``entity2text.json`` (MID -> name) names the entities.
- ``relation2template.json``: relation -> sentence with ``[X]``/``[Y]`` (optional).
- ``user_id2name.pkl`` is never loaded: unpickling runs arbitrary code. User descriptions are
  read from ``user_descriptions.json`` (``{user: text}``) or ``user_descriptions.tsv`` instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from kp4sr.data import Dataset, KnowledgeGraph
from kp4sr.errors import ConfigError, DataError
from kp4sr.formats.freebase import build_kg, normalise_mid
from kp4sr.loaders import NAMELESS_CHOICES, _read_text, _report_skips, _rows
from kp4sr.templates import check_template

log = logging.getLogger(__name__)

SEQUENCES = "sequential_data.txt"
DATAMAPS = "datamaps.json"
ITEM2ENTITY = "item2entity.json"
ENTITY2TEXT = "entity2text.json"
TRIPLES = "triple2dict.json"
TEMPLATES = "relation2template.json"
USER_PICKLE = "user_id2name.pkl"


def _read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; a syntax error names the line the parser stopped at."""
    if not path.is_file():
        raise DataError(f"missing {path.name} ({what})", path)
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg}, column {e.colno})", path, e.lineno) from None
    except RecursionError:
        raise DataError("not valid JSON for kp4sr: nested too deeply", path) from None


def _str_map(value: Any, path: Path, what: str) -> dict[str, str]:
    """A JSON object of strings (numbers are taken as their text), or a DataError saying so."""
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object for {what}", path)
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise DataError(f"{what}: value of {k!r} must be a string, found {v!r}", path)
        out[str(k)] = str(v)
    return out


def dataset_domain(name: str) -> str:
    """The MPP template domain a release folder's name implies (``item`` when unclear)."""
    low = name.lower()
    if "book" in low:
        return "book"
    if "lfm" in low or "music" in low:
        return "music"
    if "ml" in low or "movie" in low:
        return "movie"
    return "item"


def _sequences(path: Path, id2item: dict[str, str]) -> tuple[list[str], list[list[str]], int]:
    """Users (mapped ids) and their mapped item ids from ``sequential_data.txt``.

    Returns also how many users had no items (left out and counted).
    """
    if not path.is_file():
        raise DataError(f"missing {SEQUENCES} (user id then item ids, one user per line)", path)
    users: list[str] = []
    seqs: list[list[str]] = []
    first_line: dict[str, int] = {}
    empty = 0
    for number, raw in enumerate(_read_text(path).split("\n"), start=1):
        fields = raw.split()
        if not fields:
            continue
        for f in fields:
            try:
                int(f)
            except ValueError:
                raise DataError(
                    f"expected integer ids (user id, then item ids), found {f!r}", path, number
                ) from None
        user, items = fields[0], fields[1:]
        if user in first_line:
            raise DataError(
                f"user {user} appears twice (first on line {first_line[user]})", path, number
            )
        first_line[user] = number
        for i in items:
            if i not in id2item:
                raise DataError(f"item id {i} is not in id2item of {DATAMAPS}", path, number)
        if not items:
            empty += 1
            continue
        users.append(user)
        seqs.append(items)
    if not users:
        raise DataError("no user has any item", path)
    return users, seqs, empty


def _item_links(
    path: Path, item2id: dict[str, str], id2item: dict[str, str], skipped: dict[str, int]
) -> dict[str, str]:
    """Raw item id -> MID from ``item2entity.json``, whether it is keyed by raw or mapped ids.

    The key space is the one the keys overlap most (the release uses raw ASINs for books).
    """
    raw = _str_map(_read_json(path, "item id -> Freebase MID"), path, "item2entity")
    by_raw = sum(1 for k in raw if k in item2id)
    by_mapped = sum(1 for k in raw if k in id2item)
    if raw and not (by_raw or by_mapped):
        raise DataError(
            f"none of its keys is a raw item id (item2id) or a mapped one (id2item) of {DATAMAPS}",
            path,
        )
    mapped = by_mapped > by_raw
    log.info("%s: keyed by %s item ids", path, "mapped" if mapped else "raw")
    links: dict[str, str] = {}
    for key, mid in raw.items():
        item = id2item.get(key) if mapped else (key if key in item2id else None)
        if item is None:
            skipped["links_of_unknown_items"] += 1
            continue
        links[item] = normalise_mid(mid) or mid
    return links


def _triples(path: Path) -> list[tuple[str, str, str]]:
    """The triples of ``triple2dict.json`` (``{head: {relation: [tails]}}``), MIDs normalised."""
    data = _read_json(path, "{head: {relation: [tails]}}")
    if not isinstance(data, dict):
        raise DataError('expected a JSON object {"head": {"relation": ["tail", ...]}}', path)
    out: list[tuple[str, str, str]] = []
    for head, rels in data.items():
        if not isinstance(rels, dict):
            raise DataError(f"head {head!r}: expected an object {{relation: [tails]}}", path)
        h = normalise_mid(head) or head
        for rel, tails in rels.items():
            if isinstance(tails, str):
                tails = [tails]
            if not isinstance(tails, list) or not all(isinstance(t, str) for t in tails):
                raise DataError(
                    f"head {head!r}, relation {rel!r}: expected a list of tail ids", path
                )
            out += [(h, rel, normalise_mid(t) or t) for t in tails]
    return out


def _templates(path: Path) -> dict[str, str]:
    """``relation2template.json``, every template checked to hold [X] and [Y] once each."""
    if not path.is_file():
        return {}
    raw = _read_json(path, "relation -> template")
    if not isinstance(raw, dict):
        raise DataError('expected a JSON object {"relation": "sentence with [X] and [Y]"}', path)
    return {str(r): check_template(str(r), t, path) for r, t in raw.items()}


def _user_descriptions(folder: Path) -> None:
    """Validate and count user descriptions; the pickle the authors ship is never opened."""
    js, tsv = folder / "user_descriptions.json", folder / "user_descriptions.tsv"
    count: int | None = None
    if js.is_file():
        count = len(_str_map(_read_json(js, "user -> description"), js, "user_descriptions"))
        source = js
    elif tsv.is_file():
        count = sum(
            1 for _ in _rows(tsv, "\t", ("user", "description"), header=("user", "description"))
        )
        source = tsv
    if count is not None:
        log.info("%s: read %d user descriptions (not used by the model)", source, count)
    elif (folder / USER_PICKLE).is_file():
        log.warning(
            "%s: not loaded, because unpickling a file can execute arbitrary code; provide "
            "user_descriptions.json ({user: text}) or user_descriptions.tsv instead",
            folder / USER_PICKLE,
        )


def load_kp4sr_release(folder: Path, nameless: str = "skip") -> tuple[Dataset, dict[str, str]]:
    """Load one dataset folder of the KP4SR release (see the module docstring for the files).

    Users are the mapped user ids in file order; items are the raw ids (``id2item``) of the
    items that occur in some sequence, ordered by mapped id. An item's title is its entity's
    name from ``entity2text.json`` when it is linked. The KG is built by
    :func:`kp4sr.formats.freebase.build_kg` with the ``nameless`` policy.

    Returns the dataset and the release's relation templates (pass them on as template
    overrides; empty without ``relation2template.json``).
    """
    if nameless not in NAMELESS_CHOICES:
        raise ConfigError(f"unknown nameless policy {nameless!r}: expected skip or id")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    maps_path = folder / DATAMAPS
    maps = _read_json(maps_path, "user2id, item2id and id2item")
    if not isinstance(maps, dict) or "id2item" not in maps:
        raise DataError('expected a JSON object with "id2item" (and "item2id")', maps_path)
    id2item = _str_map(maps["id2item"], maps_path, "id2item")
    item2id = _str_map(maps.get("item2id", {}), maps_path, "item2id")
    if not item2id:
        item2id = {raw: mid for mid, raw in id2item.items()}

    users, seqs, empty = _sequences(folder / SEQUENCES, id2item)
    skipped = {"users_without_items": empty, "links_of_unknown_items": 0}
    used = sorted({i for s in seqs for i in s}, key=int)
    # items of id2item in no sequence are no items of the dataset: left out, counted, logged
    _report_skips(str(maps_path), {"items_without_interactions": len(id2item) - len(used)})
    index = {m: k for k, m in enumerate(used)}
    items = [id2item[m] for m in used]
    sequences = [np.asarray([index[i] for i in s], dtype=np.int64) for s in seqs]

    kg = KnowledgeGraph.empty()
    titles: list[str | None] = [None] * len(items)
    names_path = folder / ENTITY2TEXT
    names = (
        _str_map(_read_json(names_path, "MID -> name"), names_path, "entity2text")
        if names_path.is_file()
        else {}
    )
    names = {normalise_mid(k) or k: v for k, v in names.items()}
    links: dict[str, str] = {}
    if (folder / ITEM2ENTITY).is_file() or (folder / TRIPLES).is_file():
        links = _item_links(folder / ITEM2ENTITY, item2id, id2item, skipped)
        titles = [names.get(links.get(i, "")) or None for i in items]
    if (folder / TRIPLES).is_file():
        kg, kg_skipped = build_kg(items, links, _triples(folder / TRIPLES), names, nameless)
        skipped.update(kg_skipped)
    else:
        log.info("%s: no %s, so the dataset has no knowledge graph", folder, TRIPLES)
    templates = _templates(folder / TEMPLATES)
    _user_descriptions(folder)
    _report_skips(str(folder), skipped)
    ds = Dataset(
        name=folder.name,
        domain=dataset_domain(folder.name),
        users=users,
        items=items,
        titles=titles,
        sequences=sequences,
        kg=kg,
        skipped={k: v for k, v in skipped.items() if v},
    )
    return ds, templates
