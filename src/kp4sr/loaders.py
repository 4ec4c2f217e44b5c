"""Loaders that turn files on disk into a :class:`~kp4sr.data.Dataset` or a knowledge graph.

Three formats: the original GroupLens MovieLens-100K files, a KB4Rec-style Freebase KG folder
(``item2entity.tsv``, ``triples.tsv``, ``entity_names.tsv``) and our generic format (an
``interactions.tsv``/``.csv`` with a header, optional ``items`` file, optional KB4Rec-style KG).

Every problem with the input is a :class:`~kp4sr.errors.DataError` naming the file and the
1-based line; rows that are deliberately left out are counted in a ``skipped`` dict and logged.
Blank lines are ignored everywhere (they carry no data).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from kp4sr.data import Dataset, KnowledgeGraph, item_key
from kp4sr.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- shared helpers


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text; undecodable bytes become a DataError that names the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", path) from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        shown = "utf-8" if encoding == "utf-8-sig" else encoding
        raise DataError(
            f"bytes that are not valid {shown} text (byte {e.start} of the file)",
            path,
            line,
        ) from None


def _rows(
    path: Path,
    sep: str,
    columns: Sequence[str],
    *,
    header: Sequence[str] | None = None,
    may_be_empty: Sequence[int] = (),
    encoding: str = "utf-8",
) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, stripped_fields)`` of a simple delimited file (no quoting).

    ``columns`` names the expected fields (used for the count and the error message); a first
    line equal to ``header`` is skipped, so files with and without a header both load. Empty
    fields are errors unless their index is in ``may_be_empty``.
    """
    sep_name = {"\t": "tab", "|": "'|'", ",": "comma"}.get(sep, repr(sep))
    want = len(columns)
    first = True
    for number, raw in enumerate(_read_text(path, encoding).split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(sep)]
        if first:
            first = False
            if header is not None and fields == list(header):
                continue
        if len(fields) != want:
            raise DataError(
                f"expected {want} {sep_name}-separated fields ({', '.join(columns)}), "
                f"found {len(fields)}",
                path,
                number,
            )
        for i, f in enumerate(fields):
            if not f and i not in may_be_empty:
                raise DataError(f"empty field {columns[i]!r}", path, number)
        yield number, fields


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int_field(value: str, what: str, path: Path, line: int) -> int:
    """Parse an integer id/timestamp, or say which field on which line is wrong.

    Ids and timestamps end up in int64 arrays, so a value outside int64 is refused here, on its
    line, rather than by numpy later with no line to show.
    """
    try:
        number = int(value)
    except ValueError:
        raise DataError(f"expected an integer {what}, found {value!r}", path, line) from None
    if not INT64_MIN <= number <= INT64_MAX:
        raise DataError(f"{what} {value} does not fit in 64 bits", path, line)
    return number


def _order_sequences(user_idx: np.ndarray, times: np.ndarray, n_users: int) -> list[np.ndarray]:
    """Row indices per user in time order; ties keep file order (lexsort is stable)."""
    order = None
    if len(times) and np.isfinite(times).all():
        lo = times.min()
        span = int(times.max()) - int(lo) + 1  # Python ints: no overflow
        exact = span < 2**53 and span * max(n_users, 1) < 2**62  # t - lo is exact in float
        if exact and (times == np.floor(times)).all():
            # integer times: one stable sort on user * span + time, same order, 3x faster
            key = user_idx.astype(np.int64) * span + (times - lo).astype(np.int64)
            order = np.argsort(key, kind="stable")
    if order is None:
        order = np.lexsort((times, user_idx))  # a stable sort: ties stay in row (file) order
    bounds = np.searchsorted(user_idx[order], np.arange(n_users + 1))
    return [order[bounds[u] : bounds[u + 1]] for u in range(n_users)]


def _report_skips(source: str, skipped: dict[str, int]) -> None:
    """Log the skip counts once, as a warning so that left-out data never goes unnoticed."""
    nonzero = {k: v for k, v in skipped.items() if v}
    if nonzero:
        log.warning(
            "%s: skipped %s",
            source,
            ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in nonzero.items()),
        )


# --------------------------------------------------------------------------- MovieLens-100K

ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}


def _release_year(date: str) -> int | None:
    """The year of a ``dd-Mon-YYYY`` date, or None when it is empty or malformed.

    Parsed by hand rather than with ``strptime('%b')``, whose month names follow the locale.
    """
    parts = date.split("-")
    if len(parts) != 3 or parts[1].lower() not in _MONTHS:
        return None
    day, year = parts[0], parts[2]
    if not (day.isdigit() and 1 <= int(day) <= 31 and len(year) == 4 and year.isdigit()):
        return None
    return int(year)


def _ml_genres(folder: Path) -> list[str]:
    """Genre names by flag index from ``u.genre``, or the standard 19 when the file is absent."""
    path = folder / "u.genre"
    if not path.is_file():
        return list(ML100K_GENRES)
    by_index: dict[int, str] = {}
    for line, (name, index) in _rows(path, "|", ("name", "index"), encoding="latin-1"):
        i = _int_field(index, "genre index", path, line)
        if i in by_index:
            raise DataError(f"genre index {i} appears twice", path, line)
        by_index[i] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise DataError(
            f"genre indices must be 0..{len(by_index) - 1} without gaps, found {sorted(by_index)}",
            path,
        )
    return [by_index[i] for i in range(len(by_index))]


def _ml_items(folder: Path, genres: list[str]) -> dict[int, tuple[str, int | None, list[str]]]:
    """``u.item`` as item id -> (title, release year or None, genre names)."""
    path = folder / "u.item"
    if not path.is_file():
        raise DataError("missing u.item (the MovieLens-100K item file)", path)
    columns = ["item id", "title", "release date", "video release date", "IMDb URL"] + [
        f"genre flag {g}" for g in genres
    ]
    items: dict[int, tuple[str, int | None, list[str]]] = {}
    for line, fields in _rows(path, "|", columns, may_be_empty=range(2, 5), encoding="latin-1"):
        iid = _int_field(fields[0], "item id", path, line)
        if iid in items:
            raise DataError(f"item id {iid} appears twice", path, line)
        flags = fields[5:]
        bad = [f for f in flags if f not in ("0", "1")]
        if bad:
            raise DataError(f"genre flags must be 0 or 1, found {bad[0]!r}", path, line)
        names = [g for g, f in zip(genres, flags, strict=True) if f == "1"]
        items[iid] = (fields[1], _release_year(fields[2]), names)
    return items


def load_movielens_100k(folder: Path) -> Dataset:
    """Load the original GroupLens ML-100K files (``u.data``, ``u.item``, optional ``u.genre``).

    Users and items are ordered by numeric id; only items with interactions are kept. Each
    user's sequence is in timestamp order, ties in ``u.data`` file order. The metadata KG links
    items to ``genre:<Name>`` (not "unknown") and ``year:<YYYY>`` entities, both directions.
    """
    folder = Path(folder)
    genres = _ml_genres(folder)
    meta = _ml_items(folder, genres)
    path = folder / "u.data"
    if not path.is_file():
        raise DataError("missing u.data (the MovieLens-100K ratings file)", path)
    users: list[int] = []
    items: list[int] = []
    times: list[int] = []
    for line, (u, i, rating, ts) in _rows(
        path, "\t", ("user id", "item id", "rating", "timestamp")
    ):
        iid = _int_field(i, "item id", path, line)
        if iid not in meta:
            raise DataError(f"item {iid} is not in u.item", path, line)
        try:
            float(rating)
        except ValueError:
            raise DataError(f"expected a numeric rating, found {rating!r}", path, line) from None
        users.append(_int_field(u, "user id", path, line))
        items.append(iid)
        times.append(_int_field(ts, "unix timestamp", path, line))
    if not users:
        raise DataError("no interactions", path)

    user_ids, user_idx = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
    item_ids, item_idx = np.unique(np.asarray(items, dtype=np.int64), return_inverse=True)
    order = _order_sequences(user_idx, np.asarray(times, dtype=np.int64), len(user_ids))
    sequences = [item_idx[rows].astype(np.int64) for rows in order]

    item_names = [str(i) for i in item_ids.tolist()]
    titles: list[str | None] = [meta[i][0] or None for i in item_ids.tolist()]
    triples: list[tuple[str, str, str]] = []
    names: dict[str, str | None] = {}
    skipped = {"items_without_release_year": 0}
    # items of u.item that nobody rated are no items of the dataset: left out, counted, logged
    _report_skips(str(folder / "u.item"), {"items_without_interactions": len(meta) - len(item_ids)})
    for raw, title in zip(item_names, titles, strict=True):
        key = item_key(raw)
        names[key] = title
        _, year, item_genres = meta[int(raw)]
        for g in item_genres:
            if g == "unknown":
                continue
            names[f"genre:{g}"] = g
            triples += [(key, "genre", f"genre:{g}"), (f"genre:{g}", "films_of_genre", key)]
        if year is None:
            skipped["items_without_release_year"] += 1
            continue
        names[f"year:{year}"] = str(year)
        triples += [(key, "release_year", f"year:{year}"), (f"year:{year}", "films_of_year", key)]
    _report_skips(str(folder / "u.item"), skipped)
    return Dataset(
        name="ml-100k",
        domain="movie",
        users=[str(u) for u in user_ids.tolist()],
        items=item_names,
        titles=titles,
        sequences=sequences,
        kg=KnowledgeGraph.from_triples(triples, names),
        skipped={k: v for k, v in skipped.items() if v},
    )


# --------------------------------------------------------------------------- KB4Rec-style KG

NAMELESS_CHOICES = ("skip", "id")
SCRIPT_CHOICES = ("any", "latin")


def _normalise_name(name: str) -> str:
    """Strip and collapse whitespace runs, so prompts never carry tabs or double spaces."""
    return " ".join(name.split())


def _has_latin_letter(name: str) -> bool:
    """True when the name has a Latin letter (ASCII, Latin-1 or a Latin Extended block)."""
    return any(c.isalpha() and (ord(c) < 0x250 or 0x1E00 <= ord(c) <= 0x1EFF) for c in name)


def _kb4rec_links(path: Path, items: list[str], skipped: dict[str, int]) -> dict[str, str] | None:
    """MID -> item key from ``item2entity.tsv``, or None when the file is absent.

    One-to-one: a second link of the same MID or of the same item is counted and dropped.
    """
    if not path.is_file():
        return None
    known = set(items)
    links: dict[str, str] = {}
    linked_items: set[str] = set()
    for line, (iid, mid) in _rows(
        path, "\t", ("item_id", "entity_id"), header=("item_id", "entity_id")
    ):
        if iid not in known:
            raise DataError(f"item {iid!r} is not an item of the dataset", path, line)
        if mid in links or iid in linked_items:
            skipped["duplicate_item_links"] += 1
            continue
        links[mid] = item_key(iid)
        linked_items.add(iid)
    return links


def _kb4rec_names(path: Path, skipped: dict[str, int]) -> dict[str, str]:
    """MID -> whitespace-normalised name; an empty name is left out (the entity is nameless)."""
    names: dict[str, str] = {}
    if not path.is_file():
        return names
    for _, (mid, name) in _rows(
        path, "\t", ("entity_id", "name"), header=("entity_id", "name"), may_be_empty=(1,)
    ):
        if mid in names:
            skipped["duplicate_entity_names"] += 1
            continue
        name = _normalise_name(name)
        if name:
            names[mid] = name
    return names


def _entity_name(mid: str, raw_names: dict[str, str], nameless: str, script: str) -> str | None:
    """The name a non-item entity is written by, under the nameless policy (see
    :func:`load_kb4rec_kg`); None: nameless, its triples are skipped."""
    name = raw_names.get(mid)
    name = _normalise_name(name) if name else None
    if name and script == "latin" and not _has_latin_letter(name):
        name = None
    if not name and nameless == "id":
        name = mid
    return name or None


def link_triples(
    triples: Iterable[tuple[str, str, str]],
    to_item: dict[str, str],
    raw_names: dict[str, str],
    nameless: str,
    script: str,
) -> tuple[KnowledgeGraph, dict[str, int]]:
    """Tie MID triples to the dataset: a linked item's MID becomes its item key, the nameless
    policy (see :func:`load_kb4rec_kg`) drops or names the other ends, repeats are counted.

    Shared by every Freebase source (KB4Rec folders, triples TSVs, RDF dumps).
    """
    resolved: dict[str, str | None] = {}  # MID -> name, None: nameless and to be skipped

    def name_of(mid: str) -> str | None:
        if mid not in resolved:
            resolved[mid] = _entity_name(mid, raw_names, nameless, script)
        return resolved[mid]

    kept: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    names: dict[str, str | None] = {}
    dropped = repeated = 0
    for h, r, t in triples:
        ends = []
        for mid in (h, t):
            key = to_item.get(mid)
            if key is None:
                name = name_of(mid)
                if name is None:
                    break
                names[mid] = name
                key = mid
            ends.append(key)
        if len(ends) < 2:
            dropped += 1
            continue
        triple = (ends[0], r, ends[1])
        if triple in seen:
            repeated += 1
            continue
        seen.add(triple)
        kept.append(triple)
    counts = {"triples_with_nameless_entity": dropped, "duplicate_triples": repeated}
    return KnowledgeGraph.from_triples(kept, names), counts


def load_kb4rec_kg(
    folder: Path, items: list[str], nameless: str = "skip", script: str = "any"
) -> tuple[KnowledgeGraph, dict[str, int]]:
    """Load a KB4Rec-style KG folder and tie it to the dataset's ``items``.

    Files (tab-separated, header line optional): ``triples.tsv`` (head, relation, tail;
    required), ``entity_names.tsv`` (MID, name; optional) and ``item2entity.tsv`` (item id, MID;
    optional). A linked item's MID becomes ``item_key(item_id)`` everywhere, so the KG and the
    dataset share keys; without ``item2entity.tsv`` a triple end equal to an item id is that item.

    Nameless policy: a non-item entity is *nameless* when it has no (or an empty) name, or,
    with ``script="latin"``, when its name has no Latin letter (prompts would be unreadable to
    an English tokenizer). ``nameless="skip"`` drops every triple with a nameless end (counted
    in ``triples_with_nameless_entity``); ``nameless="id"`` keeps it and names the entity by its
    MID. Items get no name here (``None``): the dataset's titles name them.

    Returns the graph and the nonzero skip counts.
    """
    if nameless not in NAMELESS_CHOICES:
        raise ConfigError(f"unknown nameless policy {nameless!r}: expected skip or id")
    if script not in SCRIPT_CHOICES:
        raise ConfigError(f"unknown script filter {script!r}: expected any or latin")
    folder = Path(folder)
    triples_path = folder / "triples.tsv"
    if not triples_path.is_file():
        raise DataError("missing triples.tsv (head, relation, tail)", triples_path)
    skipped = {"duplicate_item_links": 0, "duplicate_entity_names": 0}
    links = _kb4rec_links(folder / "item2entity.tsv", items, skipped)
    if links is None:
        links = {i: item_key(i) for i in items}
    raw_names = _kb4rec_names(folder / "entity_names.tsv", skipped)

    fast = _fast_kb4rec_triples(triples_path, links, raw_names, nameless, script)
    if fast is not None:
        kg, counts = fast
    else:  # the row-by-row reader: any file, exact errors
        rows = _rows(
            triples_path, "\t", ("head", "relation", "tail"), header=("head", "relation", "tail")
        )
        listed = [t for _, t in rows]
        if not listed:
            raise DataError(
                "no triples: expected tab-separated head, relation, tail lines", triples_path
            )
        kg, counts = link_triples(listed, links, raw_names, nameless, script)
    skipped.update(counts)
    item_keys = set(links.values())
    linked = sum(1 for e in kg.entities if e in item_keys)
    log.info(
        "%s: %d triples, %d entities, %d relations, %d linked items",
        folder,
        kg.num_triples,
        len(kg.entities),
        len(kg.relations),
        linked,
    )
    _report_skips(str(folder), skipped)
    return kg, {k: v for k, v in skipped.items() if v}


# --------------------------------------------------------------------------- generic format

USER_COLUMNS = ("user", "user_id")
ITEM_COLUMNS = ("item", "item_id")
TIME_COLUMNS = ("timestamp", "time")
TITLE_COLUMNS = ("title", "name")


def _find_table(folder: Path, stem: str, required: bool) -> Path | None:
    """``<stem>.tsv`` or ``<stem>.csv`` in the folder; both at once is ambiguous."""
    found = [
        folder / f"{stem}.{ext}" for ext in ("tsv", "csv") if (folder / f"{stem}.{ext}").is_file()
    ]
    if len(found) > 1:
        raise DataError(f"both {stem}.tsv and {stem}.csv are present: keep one", folder)
    if not found:
        if required:
            raise DataError(f"no {stem}.tsv or {stem}.csv in the folder", folder)
        return None
    return found[0]


def _table(path: Path, wanted: dict[str, Sequence[str]]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, {role: value})`` of a CSV/TSV file with a header, columns found by name.

    ``wanted`` maps a role to its accepted column names (case-insensitive). Quoted fields work
    (the ``csv`` module reads the file); a row whose field count differs from the header's is
    an error.
    """
    delimiter = "\t" if path.suffix == ".tsv" else ","
    reader = csv.reader(io.StringIO(_read_text(path, "utf-8-sig"), newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("empty file: a header line is required", path, 1)
        found = [h.strip().lower() for h in header]
        index: dict[str, int] = {}
        for role, accepted in wanted.items():
            hits = [found.index(a) for a in accepted if a in found]
            if not hits:
                raise DataError(
                    f"missing column {role!r}: expected one of {', '.join(accepted)} in the "
                    f"header; found {', '.join(map(repr, found)) or 'none'}",
                    path,
                    1,
                )
            index[role] = hits[0]
        while True:
            start = reader.line_num + 1  # a quoted field may run over several lines
            row = next(reader, None)
            if row is None:
                break
            if not row or all(not f.strip() for f in row):
                continue
            if len(row) != len(header):
                hint = ""
                if reader.line_num > start:
                    hint = f" (the row runs to line {reader.line_num}: an unclosed quote?)"
                raise DataError(
                    f"expected {len(header)} fields as in the header, found {len(row)}{hint}",
                    path,
                    start,
                )
            yield start, {role: row[i].strip() for role, i in index.items()}
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", path, reader.line_num) from None


def _parse_time(value: str, path: Path, line: int) -> tuple[float, bool]:
    """A timestamp as seconds, and whether it was written as a number (else an ISO date).

    Naive ISO datetimes are read as UTC so that the order never depends on the machine's zone.
    """
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number, True
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise DataError(
            f"expected a number or an ISO-8601 date/datetime as timestamp, found {value!r}",
            path,
            line,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp(), False


def _generic_titles(
    folder: Path, item_index: dict[str, int], skipped: dict[str, int]
) -> list[str | None]:
    """Titles from the optional items file; listed items without interactions are counted."""
    titles: list[str | None] = [None] * len(item_index)
    path = _find_table(folder, "items", required=False)
    if path is None:
        return titles
    seen: set[str] = set()
    for _, row in _table(path, {"item": ITEM_COLUMNS, "title": TITLE_COLUMNS}):
        item = row["item"]
        if not item or item in seen:
            skipped["item_rows_without_id_or_repeated"] += 1
            continue
        seen.add(item)
        if item not in item_index:
            skipped["items_without_interactions"] += 1
            continue
        titles[item_index[item]] = row["title"] or None
    return titles


# Bytes the vectorised readers accept: printable ASCII except the quote, plus newline and the
# delimiter. A space, a tab in a CSV, a CR, a quote or any other byte sends the file to the
# row-by-row reader, which strips, unquotes and reports errors.
_PLAIN = np.zeros(256, dtype=bool)
_PLAIN[0x21:0x7F] = True
_PLAIN[ord('"')] = False


def _all_plain(body: np.ndarray, delim: int) -> bool:
    """Every byte is plain (see ``_PLAIN``), a newline or ``delim``. Counted with a few single
    comparisons (the bytes below 0x21 must all be newlines or the delimiter): several times
    faster over hundreds of MB than a table lookup or a combined mask."""
    if body.max() > 0x7E or np.count_nonzero(body == ord('"')):
        return False
    low = np.count_nonzero(body < 0x21)
    allowed = np.count_nonzero(body == ord("\n"))
    if delim < 0x21:
        allowed += np.count_nonzero(body == delim)
    return low == allowed


Columns = Callable[[int], tuple[np.ndarray, np.ndarray]]


def _plain_columns(body: np.ndarray, delim: int, ncol: int) -> Columns | None:
    """``column(j) -> (starts, lengths)`` of the fields of a plain delimited body (see
    ``_PLAIN``) with ``ncol`` fields on every line, or None when it is not that plain (a blank
    line, another field count, any other byte). Vectorised: no Python object per line."""
    if body.size == 0 or not _all_plain(body, delim):
        return None
    seps = np.flatnonzero((body == ord("\n")) | (body == delim))
    if body[-1] != ord("\n"):
        seps = np.append(seps, len(body))  # a last line without newline
    if len(seps) % ncol:
        return None
    is_newline = np.append(body[seps[:-1]] == ord("\n"), True).reshape(-1, ncol)
    if not is_newline[:, -1].all() or is_newline[:, :-1].any():
        return None  # a row with another field count, or a blank line
    del is_newline
    line_starts = np.concatenate(([0], seps[ncol - 1 : -1 : ncol] + 1))

    def column(j: int) -> tuple[np.ndarray, np.ndarray]:
        starts = line_starts if j == 0 else seps[j - 1 :: ncol] + 1
        return starts, seps[j::ncol] - starts

    return column


def _field_bytes(body: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Fields as rows of a zero-padded ``[n, 8k]`` byte matrix (``starts`` ascending)."""
    width = int(lengths.max())
    out = np.zeros((len(starts), -(-width // 8) * 8), dtype=np.uint8)
    fit = int(np.searchsorted(starts, len(body) - width, side="right"))  # rows whose window
    windows = np.lib.stride_tricks.sliding_window_view(body, width)  # stays inside the body
    out[:fit, :width] = windows[starts[:fit]]
    for k in range(fit, len(starts)):
        out[k, : lengths[k]] = body[starts[k] : starts[k] + lengths[k]]
    if lengths.min() < width:
        out[:, :width] *= np.arange(width) < lengths[:, None]  # bytes past a field's end: 0
    return out


def _factorize(
    body: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, dict[str, int]]:
    """Codes 0.. of string fields in order of first appearance, and the code of each string."""
    # equal strings have equal zero-padded 8-byte words (no NUL byte passes ``_PLAIN``)
    words = _field_bytes(body, starts, lengths).view(np.uint64)
    n = len(words)
    # sort on one 64-bit hash of the words (a stable sort: a group's first row is its first
    # appearance); a hash collision is caught below and sorted on all the words instead
    order = np.argsort(_hash_rows(words), kind="stable")
    ranked = words[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    if words.shape[1] > 1 and (new.sum() != len(np.unique(_hash_rows(ranked[new])))):
        order = np.lexsort(words.T[::-1])
        ranked = words[order]
        new[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    del ranked, words
    group = np.cumsum(new) - 1
    first = order[new]  # first row of each distinct string, by sorted string
    by_appearance = np.argsort(first, kind="stable")
    code_of_group = np.empty(len(first), dtype=np.int64)
    code_of_group[by_appearance] = np.arange(len(first))
    codes = np.empty(n, dtype=np.int64)
    codes[order] = code_of_group[group]
    firsts = first[by_appearance]
    spans = zip(starts[firsts].tolist(), lengths[firsts].tolist())
    return codes, {body[s : s + ln].tobytes().decode("ascii"): i for i, (s, ln) in enumerate(spans)}


def _hash_rows(words: np.ndarray) -> np.ndarray:
    """One uint64 per row of a uint64 matrix: the word itself for one column, else a mix
    (multiply-xorshift) of all of them."""
    if words.shape[1] == 1:
        return words[:, 0]
    h = np.zeros(len(words), dtype=np.uint64)
    for j in range(words.shape[1]):
        h ^= words[:, j]
        h *= np.uint64(0x9E3779B97F4A7C15)
        h ^= h >> np.uint64(31)
    return h


def _digits_to_int(body: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """Unsigned integers of at most 18 digits (int64-safe), or None when a field is not one."""
    if not lengths.all() or lengths.max() > 18:
        return None
    width = int(lengths.max())
    digits = _field_bytes(body, starts, lengths)[:, :width] - np.uint8(ord("0"))  # wraps: >9
    inside = np.arange(width) < lengths[:, None]
    if ((digits > 9) & inside).any():
        return None
    value = np.zeros(len(starts), dtype=np.int64)
    for j in range(width):
        value = np.where(inside[:, j], value * 10 + digits[:, j], value)
    return value


def _fast_interactions(
    path: Path, wanted: dict[str, Sequence[str]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int], dict[str, int]] | None:
    """The interactions file parsed by numpy on whole columns, or None to read it row by row.

    Only the plain machine-written case is taken: ASCII without quotes, spaces or CRs, no blank
    lines, every row with the header's field count, non-empty users and items, timestamps of
    at most 18 digits. On anything else (including every kind of error) it returns None and
    :func:`_table` reads the file, so results and error messages do not depend on the path; a
    check added to the row-by-row reader must make this one return None too. Returns user
    and item codes by first appearance, float timestamps and the two code tables. 10M rows
    take seconds here against minutes row by row, and no Python object per row is made.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None
    delim = ord("\t") if path.suffix == ".tsv" else ord(",")
    end = data.find(b"\n")
    if end <= 0:
        return None
    header = np.frombuffer(data, dtype=np.uint8, count=end)
    if not (_PLAIN[header] | (header == delim)).all():
        return None
    found = [h.lower() for h in data[:end].decode("ascii").split(chr(delim))]
    if len(set(found)) != len(found):
        return None
    index: dict[str, int] = {}
    for role, accepted in wanted.items():
        hits = [found.index(a) for a in accepted if a in found]
        if not hits:
            return None
        index[role] = hits[0]
    body = np.frombuffer(data, dtype=np.uint8, offset=end + 1)
    column = _plain_columns(body, delim, len(found))
    if column is None:
        return None
    codes: dict[str, tuple[np.ndarray, dict[str, int]]] = {}
    for role in ("user", "item"):
        starts, lengths = column(index[role])
        if not lengths.all():
            return None
        codes[role] = _factorize(body, starts, lengths)
    times = _digits_to_int(body, *column(index["timestamp"]))
    if times is None:
        return None
    (user_codes, user_index), (item_codes, item_index) = codes["user"], codes["item"]
    return user_codes, item_codes, times.astype(np.float64), user_index, item_index


def _fast_kb4rec_triples(
    path: Path, to_item: dict[str, str], raw_names: dict[str, str], nameless: str, script: str
) -> tuple[KnowledgeGraph, dict[str, int]] | None:
    """:func:`link_triples` over ``triples.tsv`` on whole columns, or None to read it row by row.

    Same result (entity and relation order of first appearance, nameless and duplicate triples
    dropped and counted) for a plain file (see :func:`_plain_columns`); the per-entity work
    runs once per distinct MID, the per-triple work in numpy: a million triples take seconds.
    """
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header = b"head\trelation\ttail\n"
    body = np.frombuffer(data, dtype=np.uint8, offset=len(header) if data.startswith(header) else 0)
    column = _plain_columns(body, ord("\t"), 3)
    if column is None:
        return None
    (h_start, h_len), (r_start, r_len), (t_start, t_len) = column(0), column(1), column(2)
    if not (h_len.all() and r_len.all() and t_len.all()):
        return None
    n = len(h_start)
    ends, mids = _factorize(
        body, np.concatenate([h_start, t_start]), np.concatenate([h_len, t_len])
    )
    rels, relations = _factorize(body, r_start, r_len)
    # per distinct MID: its entity key and name, and whether a triple with it is kept
    keys: list[str] = []
    names: list[str | None] = []
    usable = np.ones(len(mids), dtype=bool)
    for code, mid in enumerate(mids):
        item = to_item.get(mid)
        keys.append(mid if item is None else item)
        names.append(None if item is not None else _entity_name(mid, raw_names, nameless, script))
        usable[code] = item is not None or names[-1] is not None
    if len(set(keys)) != len(keys) or len(mids) ** 2 * max(1, len(relations)) >= 2**62:
        return None  # an MID spelled like an item key, or codes too big to combine
    heads, tails = ends[:n], ends[n:]
    ok = usable[heads] & usable[tails]
    heads, rels, tails = heads[ok], rels[ok], tails[ok]
    combined = (heads * len(relations) + rels) * len(mids) + tails
    _, first = np.unique(combined, return_index=True)
    keep = np.sort(first)
    heads, rels, tails = heads[keep], rels[keep], tails[keep]
    # renumber entities and relations by first appearance, heads before tails, as from_triples
    both = np.empty(2 * len(keep), dtype=np.int64)
    both[0::2], both[1::2] = heads, tails
    ent_order, ent_code = _by_first_appearance(both, len(mids))
    rel_order, rel_code = _by_first_appearance(rels, len(relations))
    relation_names = list(relations)
    kg = KnowledgeGraph(
        entities=[keys[e] for e in ent_order.tolist()],
        names=[names[e] for e in ent_order.tolist()],
        relations=[relation_names[r] for r in rel_order.tolist()],
        heads=ent_code[heads],
        rels=rel_code[rels],
        tails=ent_code[tails],
    )
    kept = int(ok.sum())
    return kg, {"triples_with_nameless_entity": n - kept, "duplicate_triples": kept - len(keep)}


def _by_first_appearance(codes: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The codes present, in order of first appearance, and each code's rank in that order."""
    present, first = np.unique(codes, return_index=True)
    order = present[np.argsort(first, kind="stable")]
    rank = np.full(n, -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    return order, rank


def load_generic(folder: Path, nameless: str = "skip") -> Dataset:
    """Load a folder in the generic format.

    ``interactions.tsv``/``.csv`` (header required; columns ``user``/``user_id``,
    ``item``/``item_id``, ``timestamp``/``time``, others ignored; timestamps are numbers or
    ISO-8601 dates, not both in one file); optional ``items.tsv``/``.csv`` (``item``/``item_id``,
    ``title``/``name``); optional KB4Rec-style KG files (see :func:`load_kb4rec_kg`). Users and
    items are ordered by first appearance; sequences by time, ties in file order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    path = _find_table(folder, "interactions", required=True)
    assert path is not None
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    times: list[float] = []
    numeric: bool | None = None
    wanted = {"user": USER_COLUMNS, "item": ITEM_COLUMNS, "timestamp": TIME_COLUMNS}
    fast = _fast_interactions(path, wanted)  # None: the row-by-row reader below
    if fast is not None:
        users, items, times, user_index, item_index = fast  # type: ignore[assignment]
    for line, row in _table(path, wanted) if fast is None else ():
        for role in wanted:
            if not row[role]:
                raise DataError(f"empty {role}", path, line)
        t, is_number = _parse_time(row["timestamp"], path, line)
        if numeric is None:
            numeric = is_number
        elif numeric != is_number:
            raise DataError(
                f"timestamp {row['timestamp']!r} mixes "
                + ("an ISO date into numeric timestamps" if numeric else "a number into ISO dates"),
                path,
                line,
            )
        users.append(user_index.setdefault(row["user"], len(user_index)))
        items.append(item_index.setdefault(row["item"], len(item_index)))
        times.append(t)
    if not len(users):
        raise DataError("no interactions: the file has a header but no data rows", path)

    skipped = {"items_without_interactions": 0, "item_rows_without_id_or_repeated": 0}
    titles = _generic_titles(folder, item_index, skipped)
    item_arr = np.asarray(items, dtype=np.int64)
    order = _order_sequences(
        np.asarray(users, dtype=np.int64), np.asarray(times, dtype=np.float64), len(user_index)
    )
    kg = KnowledgeGraph.empty()
    if (folder / "triples.tsv").is_file():
        kg, kg_skipped = load_kb4rec_kg(folder, list(item_index), nameless=nameless)
        skipped.update(kg_skipped)
    else:
        for orphan in ("entity_names.tsv", "item2entity.tsv"):
            if (folder / orphan).is_file():
                raise DataError(f"{orphan} is present but triples.tsv is missing", folder / orphan)
    _report_skips(str(folder), skipped)
    return Dataset(
        name=folder.name,
        domain="item",
        users=list(user_index),
        items=list(item_index),
        titles=titles,
        sequences=[item_arr[rows] for rows in order],
        kg=kg,
        skipped={k: v for k, v in skipped.items() if v},
    )
