"""LFM-1b (Schedl 2016): Last.fm listening events with artist, album and track ids.

``LFM-1b_LEs.txt`` holds about a billion tab-separated lines ``user-id, artist-id, album-id,
track-id, timestamp`` without a header. It is parsed in byte chunks and only three int64
columns are kept (user, the chosen item column, timestamp), so memory is 24 bytes per event.

The optional name files ``LFM-1b_artists.txt`` (``artist-id, name``), ``LFM-1b_albums.txt`` and
``LFM-1b_tracks.txt`` (``id, name, artist-id``) give item titles and, for album and track items,
``by_artist`` triples to ``artist:<id>`` with the inverse ``works_of_artist``. They are streamed
and only rows of the dataset's items (and their artists) are kept.

Repeated listens are the nature of music data: by default every listening event stays in the
sequence (a re-listen is a real next item). ``dedupe=True`` keeps only the first listen of each
(user, item) and counts the others in ``skipped["repeated_listens"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kp4sr.data import Dataset, KnowledgeGraph, item_key
from kp4sr.errors import ConfigError, DataError
from kp4sr.formats.movielens import read_numeric_columns
from kp4sr.loaders import _int_field, _report_skips

log = logging.getLogger(__name__)

ITEM_CHOICES = ("artist", "album", "track")
EVENTS_FILE = "LFM-1b_LEs.txt"
EVENT_COLUMNS = (
    ("user-id", "int"),
    ("artist-id", "int"),
    ("album-id", "int"),
    ("track-id", "int"),
    ("timestamp", "int"),
)
NAME_FILES = {
    "artist": "LFM-1b_artists.txt",
    "album": "LFM-1b_albums.txt",
    "track": "LFM-1b_tracks.txt",
}


def _name_rows(
    path: Path, with_artist: bool, skipped: dict[str, int]
) -> Iterator[tuple[int, int, str | None, int | None]]:
    """Yield ``(line, id, name or None, artist id or None)`` of a name file, streamed.

    A name may hold a tab (the id is the first field, the artist id the last). Bytes that are
    not utf-8 are replaced and the line counted in ``names_with_undecodable_bytes``.
    """
    want = 3 if with_artist else 2
    columns = "id, name, artist-id" if with_artist else "id, name"
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", path) from None
    with f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                skipped["names_with_undecodable_bytes"] += 1
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < want:
                raise DataError(
                    f"expected {want} tab-separated fields ({columns}), found {len(parts)}",
                    path,
                    number,
                )
            ident = _int_field(parts[0].strip(), "id", path, number)
            artist = None
            if with_artist:
                artist = _int_field(parts[-1].strip(), "artist-id", path, number)
                parts = parts[:-1]
            name = " ".join("\t".join(parts[1:]).split()) or None
            yield number, ident, name, artist


def _names(
    path: Path, wanted: set[int], with_artist: bool, skipped: dict[str, int]
) -> dict[int, tuple[str | None, int | None]]:
    """id -> (name, artist id) for the ``wanted`` ids; a repeated id keeps its first row."""
    found: dict[int, tuple[str | None, int | None]] = {}
    if not path.is_file():
        return found
    for _, ident, name, artist in _name_rows(path, with_artist, skipped):
        if ident not in wanted:
            continue
        if ident in found:
            skipped["repeated_name_rows"] += 1
            continue
        found[ident] = (name, artist)
    return found


def _first_listens(user_idx: np.ndarray, item_idx: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mask over ``order`` (rows in user, time, file order) of each (user, item)'s first row."""
    pair = user_idx[order] * (int(item_idx.max()) + 1) + item_idx[order]
    _, first = np.unique(pair, return_index=True)
    keep = np.zeros(len(order), dtype=bool)
    keep[first] = True
    return keep


def load_lfm1b(folder: Path, items: str = "track", dedupe: bool = False) -> Dataset:
    """Load LFM-1b with artists, albums or tracks as the items.

    Users and items are ordered by numeric id; sequences by timestamp, ties in file order.
    Items are named from the matching name file when it is present (else titles are None);
    for album and track items, ``by_artist``/``works_of_artist`` link each item to its artist
    where the artist has a name (links to nameless artists are counted and left out).
    """
    if items not in ITEM_CHOICES:
        raise ConfigError(f"unknown LFM-1b item kind {items!r}: expected artist, album or track")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    events = folder / EVENTS_FILE
    if not events.is_file():
        raise DataError(
            "missing LFM-1b_LEs.txt (tab-separated user-id, artist-id, album-id, track-id, "
            "timestamp)",
            events,
        )
    column = f"{items}-id"
    cols = read_numeric_columns(events, b"\t", EVENT_COLUMNS, ("user-id", column, "timestamp"))
    if not len(cols["user-id"]):
        raise DataError("no listening events", events)
    user_ids, user_idx = np.unique(cols.pop("user-id"), return_inverse=True)
    item_ids, item_idx = np.unique(cols.pop(column), return_inverse=True)
    user_idx, item_idx = user_idx.ravel(), item_idx.ravel()
    times = cols.pop("timestamp")
    skipped = {
        "repeated_listens": 0,
        "items_without_name": 0,
        "by_artist_links_without_artist_name": 0,
        "repeated_name_rows": 0,
        "names_with_undecodable_bytes": 0,
    }
    rows = np.lexsort((np.arange(len(user_idx)), times, user_idx))
    if dedupe:
        keep = _first_listens(user_idx, item_idx, rows)
        skipped["repeated_listens"] = int(len(rows) - keep.sum())
        kept_rows = rows[keep]
        user_sorted = user_idx[kept_rows]
        order_items = item_idx[kept_rows]
    else:
        user_sorted = user_idx[rows]
        order_items = item_idx[rows]
    bounds = np.searchsorted(user_sorted, np.arange(len(user_ids) + 1))
    sequences = [
        order_items[bounds[u] : bounds[u + 1]].astype(np.int64) for u in range(len(user_ids))
    ]

    item_names = [str(i) for i in item_ids.tolist()]
    wanted = set(item_ids.tolist())
    meta = _names(folder / NAME_FILES[items], wanted, items != "artist", skipped)
    titles: list[str | None] = [meta.get(i, (None, None))[0] for i in item_ids.tolist()]
    skipped["items_without_name"] = sum(1 for t in titles if t is None)
    names: dict[str, str | None] = {item_key(r): t for r, t in zip(item_names, titles)}
    triples: list[tuple[str, str, str]] = []
    if items != "artist":
        artists_of = {i: a for i, (_, a) in meta.items() if a is not None}
        artist_names = _names(
            folder / NAME_FILES["artist"], set(artists_of.values()), False, skipped
        )
        for raw, ident in zip(item_names, item_ids.tolist()):
            if ident not in artists_of:
                continue
            artist = artists_of[ident]
            name = artist_names.get(artist, (None, None))[0]
            if name is None:
                skipped["by_artist_links_without_artist_name"] += 1
                continue
            a = f"artist:{artist}"
            names[a] = name
            triples += [(item_key(raw), "by_artist", a), (a, "works_of_artist", item_key(raw))]
    _report_skips(str(folder), skipped)
    return Dataset(
        name=f"lfm-1b-{items}",
        domain="music",
        users=[str(u) for u in user_ids.tolist()],
        items=item_names,
        titles=titles,
        sequences=sequences,
        kg=KnowledgeGraph.from_triples(triples, names),
        skipped={k: v for k, v in skipped.items() if v},
    )
