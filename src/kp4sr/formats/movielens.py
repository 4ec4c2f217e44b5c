"""Every published MovieLens layout, detected from the files in the folder.

* ML-100K: ``u.data`` (delegated to :func:`kp4sr.loaders.load_movielens_100k`);
* ML-1M and ML-10M: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``movies.dat``
  (``MovieID::Title::Genres``), ``users.dat`` (1M only) and ``tags.dat`` (10M only);
* ML-20M, ML-25M, ML-32M, ML-latest(-small): ``ratings.csv``, ``movies.csv``, ``tags.csv``.

The metadata KG links every rated movie to ``genre:<Name>`` and ``year:<YYYY>`` (the year in the
title) and, where a tags file exists, to ``tag:<lowercase tag>`` for tags that at least two users
wrote (a tag one person used is noise, not knowledge). Each relation has its inverse.

Ratings files are big (ML-32M has 32 million lines), so :func:`read_numeric_columns` parses them
in byte chunks with numpy and falls back to a line-by-line parser only for a chunk that the fast
path cannot vouch for; the slow parser then names the first bad line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from kp4sr.data import Dataset, KnowledgeGraph, item_key
from kp4sr.errors import DataError
from kp4sr.loaders import (
    _int_field,
    _order_sequences,
    _report_skips,
    _rows,
    _table,
    load_movielens_100k,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- numeric tables

CHUNK_BYTES = 1 << 24
_NUMERIC_BYTES = b"0123456789.-,\n"


def _line_chunks(path: Path, size: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(number of the chunk's first line, bytes)``; every chunk ends with a newline."""
    try:
        with open(path, "rb") as f:
            rest = b""
            line = 1
            while True:
                block = f.read(size)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    rest = block
                    continue
                chunk, rest = block[:cut], block[cut:]
                yield line, chunk
                line += chunk.count(b"\n")
            if rest:
                yield line, rest + b"\n"
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", path) from None


def _fast_chunk(chunk: bytes, sep: bytes, kinds: Sequence[str]) -> list[np.ndarray] | None:
    """Parse a chunk of plain numeric lines with numpy, or None when anything looks unusual.

    None is not an error: it sends the chunk to :func:`_slow_chunk`, which either accepts it
    (spaces around fields, ``1e3``) or names the bad line.
    """
    if b"\r" in chunk:
        chunk = chunk.replace(b"\r\n", b"\n")
    if sep != b",":
        if b"," in chunk:
            return None  # a comma would pass for a separator below
        chunk = chunk.replace(sep, b",")
    if chunk.translate(None, _NUMERIC_BYTES):
        return None  # a byte that is not a digit, '.', '-', separator or newline
    if b",," in chunk or b"\n," in chunk or b",\n" in chunk or chunk.startswith(b","):
        return None  # an empty field
    buf = np.frombuffer(chunk, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    seps = np.flatnonzero(buf == 44)
    per_line = np.diff(np.searchsorted(seps, ends), prepend=0)
    length = np.diff(ends, prepend=-1) - 1
    if not np.all((per_line == len(kinds) - 1) | (length == 0)):
        return None  # a line with the wrong number of fields (blank lines are fine)
    tokens = chunk.replace(b",", b" ").split()
    if not tokens:
        return [np.zeros(0, dtype=np.int64 if k == "int" else np.float64) for k in kinds]
    table = np.array(tokens).reshape(-1, len(kinds))
    try:
        return [
            table[:, j].astype(np.int64 if k == "int" else np.float64) for j, k in enumerate(kinds)
        ]
    except (ValueError, OverflowError):
        return None


def _slow_chunk(
    path: Path, first_line: int, chunk: bytes, sep: bytes, columns: Sequence[tuple[str, str]]
) -> list[np.ndarray]:
    """Parse a chunk line by line; the first bad line is a DataError naming it."""
    sep_text = sep.decode()
    sep_name = {"\t": "tab", ",": "comma"}.get(sep_text, repr(sep_text))
    names = [c[0] for c in columns]
    values: list[list[float | int]] = [[] for _ in columns]
    lines = chunk.decode("utf-8", errors="replace").split("\n")
    for number, raw in enumerate(lines[:-1], start=first_line):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(sep_text)]
        if len(fields) != len(columns):
            raise DataError(
                f"expected {len(columns)} {sep_name}-separated fields ({', '.join(names)}), "
                f"found {len(fields)}",
                path,
                number,
            )
        for j, ((name, kind), field) in enumerate(zip(columns, fields)):
            if not field:
                raise DataError(f"empty field {name!r}", path, number)
            if kind == "int":
                value: float | int = _int_field(field, name, path, number)
                if not -(2**63) <= value < 2**63:
                    raise DataError(f"{name} {field} is too large", path, number)
            else:
                try:
                    value = float(field)
                except ValueError:
                    value = float("nan")
                if not np.isfinite(value):
                    raise DataError(f"expected a number as {name}, found {field!r}", path, number)
            values[j].append(value)
    return [
        np.asarray(v, dtype=np.int64 if k == "int" else np.float64)
        for v, (_, k) in zip(values, columns)
    ]


def _blank_header(chunk: bytes, sep: bytes, header: Sequence[str]) -> bytes:
    """Blank the first line when it is ``header`` (case-insensitive), keeping line numbers."""
    first, newline, rest = chunk.partition(b"\n")
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    fields = [f.strip().lower() for f in text.split(sep.decode())]
    if fields == [h.lower() for h in header]:
        return newline + rest
    return chunk


def read_numeric_columns(
    path: Path,
    sep: bytes,
    columns: Sequence[tuple[str, str]],
    keep: Sequence[str],
    *,
    header: Sequence[str] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, np.ndarray]:
    """Read a separated file of numbers and return the ``keep`` columns as arrays.

    ``columns`` are ``(name, "int" | "float")`` in file order; every column is validated, only
    the kept ones are held (int64 or float64), so that a billion-line file costs only the
    columns a loader needs. A first line equal to ``header`` is skipped; blank lines are
    ignored. A malformed line is a DataError with its 1-based number.
    """
    kinds = [k for _, k in columns]
    index = {name: j for j, (name, _) in enumerate(columns)}
    wanted = [index[k] for k in keep]
    parts: list[list[np.ndarray]] = [[] for _ in keep]
    first = True
    for line, chunk in _line_chunks(path, chunk_bytes):
        if first and header is not None:
            chunk = _blank_header(chunk, sep, header)
        first = False
        arrays = _fast_chunk(chunk, sep, kinds)
        if arrays is None:
            arrays = _slow_chunk(path, line, chunk, sep, columns)
        for slot, j in enumerate(wanted):
            parts[slot].append(arrays[j])
    return {
        name: np.concatenate(p)
        if p
        else np.zeros(0, dtype=np.int64 if kinds[index[name]] == "int" else np.float64)
        for name, p in zip(keep, parts)
    }


def line_of_row(path: Path, row: int, header: Sequence[str] | None = None, sep: str = ",") -> int:
    """The 1-based line of data row ``row`` (0-based, blank lines and header not counted).

    Only used to place an error found after a vectorised parse, so a second pass is fine.
    """
    seen = -1
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
            if not text:
                continue
            if number == 1 and header is not None:
                fields = [x.strip().lower() for x in text.split(sep)]
                if fields == [h.lower() for h in header]:
                    continue
            seen += 1
            if seen == row:
                return number
    raise ValueError(f"{path} has no data row {row}")  # pragma: no cover - caller's bug


# --------------------------------------------------------------------------- metadata

NO_GENRES = "(no genres listed)"
MIN_TAG_USERS = 2
_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)\s*$")
_RELEASE = re.compile(r"ml-(latest-small|latest|100k|\d+m)")

Movie = tuple[str | None, list[str]]  # title, genres


def _title_year(title: str | None) -> int | None:
    """The year in "Toy Story (1995)" (the first year of a series' "(2006–2007)")."""
    if not title:
        return None
    m = _YEAR.search(title)
    return int(m.group(1)) if m else None


def _genres(field: str) -> list[str]:
    """Genre names of a ``|``-joined field; "(no genres listed)" means none."""
    if field.strip() == NO_GENRES:
        return []
    return [g.strip() for g in field.split("|") if g.strip()]


def _text_encoding(path: Path) -> str:
    """utf-8 when the file decodes as such, else latin-1 (ML-1M's .dat files are latin-1)."""
    try:
        path.read_bytes().decode("utf-8")
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", path) from None
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _movies_dat(path: Path) -> dict[int, Movie]:
    """``movies.dat`` as movie id -> (title, genres)."""
    if not path.is_file():
        raise DataError("missing movies.dat (MovieID::Title::Genres)", path)
    movies: dict[int, Movie] = {}
    encoding = _text_encoding(path)
    for line, (mid, title, genres) in _rows(
        path, "::", ("movie id", "title", "genres"), may_be_empty=(1, 2), encoding=encoding
    ):
        movie = _int_field(mid, "movie id", path, line)
        if movie in movies:
            raise DataError(f"movie id {movie} appears twice", path, line)
        movies[movie] = (title or None, _genres(genres))
    return movies


def _movies_csv(path: Path) -> dict[int, Movie]:
    """``movies.csv`` (header ``movieId,title,genres``, quoted titles) as id -> (title, genres)."""
    if not path.is_file():
        raise DataError("missing movies.csv (movieId,title,genres)", path)
    movies: dict[int, Movie] = {}
    wanted = {"movie": ("movieid",), "title": ("title",), "genres": ("genres",)}
    for line, row in _table(path, wanted):
        movie = _int_field(row["movie"], "movieId", path, line)
        if movie in movies:
            raise DataError(f"movie id {movie} appears twice", path, line)
        movies[movie] = (row["title"] or None, _genres(row["genres"]))
    return movies


def _users_dat(path: Path) -> set[int]:
    """User ids of ML-1M's ``users.dat`` (the demographic columns are not used)."""
    users: set[int] = set()
    columns = ("user id", "gender", "age", "occupation", "zip-code")
    for line, fields in _rows(path, "::", columns, encoding=_text_encoding(path)):
        user = _int_field(fields[0], "user id", path, line)
        if user in users:
            raise DataError(f"user id {user} appears twice", path, line)
        users.add(user)
    return users


TagRow = tuple[int, int, str]  # user, movie, tag text


def _tags_dat(path: Path) -> list[TagRow]:
    """ML-10M's ``tags.dat`` (``UserID::MovieID::Tag::Timestamp``); a tag may contain '::'."""
    rows: list[TagRow] = []
    text = path.read_bytes().decode(_text_encoding(path))
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 4:
            raise DataError(
                f"expected 4 '::'-separated fields (user id, movie id, tag, timestamp), "
                f"found {len(parts)}",
                path,
                number,
            )
        user = _int_field(parts[0].strip(), "user id", path, number)
        movie = _int_field(parts[1].strip(), "movie id", path, number)
        _int_field(parts[-1].strip(), "timestamp", path, number)
        rows.append((user, movie, "::".join(parts[2:-1])))
    return rows


def _tags_csv(path: Path) -> list[TagRow]:
    """``tags.csv`` (header ``userId,movieId,tag,timestamp``; quoted tags)."""
    rows: list[TagRow] = []
    wanted = {
        "user": ("userid",),
        "movie": ("movieid",),
        "tag": ("tag",),
        "timestamp": ("timestamp",),
    }
    for line, row in _table(path, wanted):
        user = _int_field(row["user"], "userId", path, line)
        movie = _int_field(row["movie"], "movieId", path, line)
        _int_field(row["timestamp"], "timestamp", path, line)
        rows.append((user, movie, row["tag"]))
    return rows


def _tag_triples(
    tags: list[TagRow],
    items: set[int],
    names: dict[str, str | None],
    skipped: dict[str, int],
) -> list[tuple[str, str, str]]:
    """``tag``/``films_with_tag`` triples for tags written by at least two distinct users.

    Tags are matched case- and whitespace-insensitively; the entity is named by the first
    spelling seen. Tags on movies without ratings are counted and left out.
    """
    users_of: dict[str, set[int]] = {}
    spelling: dict[str, str] = {}
    kept: list[tuple[int, str]] = []
    for user, movie, text in tags:
        if movie not in items:
            skipped["tags_on_movies_without_ratings"] += 1
            continue
        shown = " ".join(text.split())
        norm = shown.lower()
        if not norm:
            skipped["empty_tags"] += 1
            continue
        users_of.setdefault(norm, set()).add(user)
        spelling.setdefault(norm, shown)
        kept.append((movie, norm))
    rare = {t for t, us in users_of.items() if len(us) < MIN_TAG_USERS}
    skipped["tags_used_by_fewer_than_2_users"] += len(rare)
    triples: list[tuple[str, str, str]] = []
    for movie, norm in kept:
        if norm in rare:
            continue
        key, tag = item_key(str(movie)), f"tag:{norm}"
        names[tag] = spelling[norm]
        triples += [(key, "tag", tag), (tag, "films_with_tag", key)]
    return triples


# --------------------------------------------------------------------------- assembly

RATING_COLUMNS = (
    ("user id", "int"),
    ("movie id", "int"),
    ("rating", "float"),
    ("timestamp", "int"),
)
CSV_HEADER = ("userId", "movieId", "rating", "timestamp")


def _release_name(folder: Path, layout: str) -> str:
    """ "ml-1m", "ml-20m", ... from the folder name; ``users.dat`` exists only in ML-1M."""
    m = _RELEASE.match(folder.resolve().name.lower())
    if m:
        return f"ml-{m.group(1)}"
    if layout == "dat" and (folder / "users.dat").is_file():
        return "ml-1m"
    return "movielens"


def load_movielens(folder: Path) -> Dataset:
    """Load any published MovieLens release; the layout is detected from the files present.

    Users and items are ordered by numeric id; only rated movies are items (titled as in the
    movies file). Each user's sequence is in timestamp order, ties in file order. A rating of a
    movie missing from the movies file, or of a user missing from ``users.dat``, is an error.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("not a folder", folder)
    present = [n for n in ("u.data", "ratings.dat", "ratings.csv") if (folder / n).is_file()]
    if not present:
        raise DataError(
            "no MovieLens ratings file: expected u.data (ML-100K), ratings.dat (ML-1M, ML-10M) "
            "or ratings.csv (ML-20M, ML-25M, ML-32M, ML-latest)",
            folder,
        )
    if len(present) > 1:
        raise DataError(
            f"files of more than one MovieLens layout ({', '.join(present)}): keep one", folder
        )
    if present[0] == "u.data":
        return load_movielens_100k(folder)

    skipped = {
        "items_without_release_year": 0,
        "users_without_ratings": 0,
        "tags_on_movies_without_ratings": 0,
        "empty_tags": 0,
        "tags_used_by_fewer_than_2_users": 0,
    }
    if present[0] == "ratings.dat":
        layout, ratings_path, header, sep = "dat", folder / "ratings.dat", None, b"::"
        movies_path = folder / "movies.dat"
        movies = _movies_dat(movies_path)
        tags = _tags_dat(folder / "tags.dat") if (folder / "tags.dat").is_file() else []
    else:
        layout, ratings_path, header, sep = "csv", folder / "ratings.csv", CSV_HEADER, b","
        movies_path = folder / "movies.csv"
        movies = _movies_csv(movies_path)
        tags = _tags_csv(folder / "tags.csv") if (folder / "tags.csv").is_file() else []
    cols = read_numeric_columns(
        ratings_path, sep, RATING_COLUMNS, ("user id", "movie id", "timestamp"), header=header
    )
    user_raw, movie_raw, times = cols["user id"], cols["movie id"], cols["timestamp"]
    if not len(user_raw):
        raise DataError("no ratings", ratings_path)

    def fail_at(row: int, message: str) -> DataError:
        line = line_of_row(ratings_path, row, header, sep.decode())
        return DataError(message, ratings_path, line)

    known = np.fromiter(movies, dtype=np.int64, count=len(movies))
    unknown = np.flatnonzero(~np.isin(movie_raw, known))
    if len(unknown):
        row = int(unknown[0])
        raise fail_at(row, f"movie {int(movie_raw[row])} is not in {movies_path.name}")
    users_path = folder / "users.dat"
    if layout == "dat" and users_path.is_file():
        listed = _users_dat(users_path)
        listed_arr = np.fromiter(listed, dtype=np.int64, count=len(listed))
        missing = np.flatnonzero(~np.isin(user_raw, listed_arr))
        if len(missing):
            row = int(missing[0])
            raise fail_at(row, f"user {int(user_raw[row])} is not in users.dat")
        skipped["users_without_ratings"] = len(listed) - len(np.unique(user_raw))

    user_ids, user_idx = np.unique(user_raw, return_inverse=True)
    item_ids, item_idx = np.unique(movie_raw, return_inverse=True)
    # movies nobody rated are no items of the dataset: left out, counted and logged
    _report_skips(str(ratings_path), {"movies_without_ratings": len(movies) - len(item_ids)})
    order = _order_sequences(user_idx.ravel(), times, len(user_ids))
    item_idx = item_idx.ravel()
    sequences = [item_idx[rows].astype(np.int64) for rows in order]

    item_names = [str(i) for i in item_ids.tolist()]
    titles = [movies[i][0] for i in item_ids.tolist()]
    names: dict[str, str | None] = {}
    triples: list[tuple[str, str, str]] = []
    for raw, (title, genres) in zip(item_names, (movies[i] for i in item_ids.tolist())):
        key = item_key(raw)
        names[key] = title
        for g in genres:
            names[f"genre:{g}"] = g
            triples += [(key, "genre", f"genre:{g}"), (f"genre:{g}", "films_of_genre", key)]
        year = _title_year(title)
        if year is None:
            skipped["items_without_release_year"] += 1
            continue
        names[f"year:{year}"] = str(year)
        triples += [(key, "release_year", f"year:{year}"), (f"year:{year}", "films_of_year", key)]
    triples += _tag_triples(tags, set(item_ids.tolist()), names, skipped)
    _report_skips(str(folder), skipped)
    return Dataset(
        name=_release_name(folder, layout),
        domain="movie",
        users=[str(u) for u in user_ids.tolist()],
        items=item_names,
        titles=titles,
        sequences=sequences,
        kg=KnowledgeGraph.from_triples(triples, names),
        skipped={k: v for k, v in skipped.items() if v},
    )
