"""Amazon review dumps (McAuley et al. 2014 and Ni et al. 2018; 5-core and full).

One record per line with ``reviewerID``, ``asin`` and ``unixReviewTime``, gzipped or not (told
apart by the gzip magic bytes, not the file name). The 2018 dumps and the 2014 review files
are JSON; the 2014 metadata (and some review files) are Python literals (single quotes, ``True``,
``None``), which are read with :func:`ast.literal_eval` and only after JSON failed: that accepts
literals only, so a line such as ``{'a': __import__('os').system('x')}`` is a DataError and is
never run. Files are streamed line by line: a full dump has tens of millions of reviews.

The optional metadata file (same line format) gives titles and a small metadata KG: ``brand``
and ``category`` with inverses ``items_of_brand`` and ``items_of_category``. The first element
of a category path is the store department ("Books"), shared by nearly every item of a dump,
so it is left out: it would only link everything to everything.
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kp4sr.data import Dataset, KnowledgeGraph, item_key
from kp4sr.errors import DataError
from kp4sr.loaders import INT64_MAX, INT64_MIN, _order_sequences, _report_skips

log = logging.getLogger(__name__)

GZIP_MAGIC = b"\x1f\x8b"
REQUIRED_KEYS = ("reviewerID", "asin", "unixReviewTime")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, raw bytes)`` of a plain or gzipped file, one line at a time."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", path) from None
    number = 0
    with f:
        try:
            gzipped = f.read(2) == GZIP_MAGIC
            f.seek(0)
            stream = gzip.GzipFile(fileobj=f) if gzipped else f
            for number, raw in enumerate(stream, start=1):
                yield number, raw
        except (OSError, EOFError, zlib.error) as e:
            # gzip.BadGzipFile is an OSError; EOFError is a truncated download
            raise DataError(
                f"cannot read the file (corrupt or truncated?): {e}", path, number + 1
            ) from None


def _record(raw: bytes, path: Path, line: int) -> dict[str, Any] | None:
    """One line as a dict (None for a blank line): JSON first, then a Python literal."""
    try:
        text = raw.decode("utf-8").lstrip("\ufeff").strip()
    except UnicodeDecodeError as e:
        raise DataError(
            f"bytes that are not valid utf-8 text (byte {e.start + 1} of the line)", path, line
        ) from None
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise DataError(
                "malformed line: neither a JSON object nor a Python dict literal", path, line
            ) from None
    if not isinstance(value, dict):
        raise DataError(
            f"expected a JSON object per line, found a {type(value).__name__}", path, line
        )
    return value


def _text(record: dict[str, Any], key: str, path: Path, line: int) -> str:
    """A required non-empty text field."""
    if key not in record:
        raise DataError(f"missing key {key!r}", path, line)
    value = record[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"expected non-empty text as {key!r}, found {value!r}", path, line)
    return value.strip()


def _time(record: dict[str, Any], path: Path, line: int) -> int:
    """``unixReviewTime`` as an integer (an integer written as a string is accepted)."""
    if "unixReviewTime" not in record:
        raise DataError("missing key 'unixReviewTime'", path, line)
    value = record["unixReviewTime"]
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None or not INT64_MIN <= number <= INT64_MAX:
        raise DataError(
            f"expected an integer 'unixReviewTime' (64-bit), found {value!r}", path, line
        )
    return number


def _optional_text(record: dict[str, Any], key: str, path: Path, line: int) -> str | None:
    """An optional text field, whitespace-normalised; absent, None or empty gives None."""
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"expected text as {key!r}, found {value!r}", path, line)
    return " ".join(value.split()) or None


def _categories(record: dict[str, Any], path: Path, line: int) -> list[str]:
    """Category names below the department: 2014 ``categories`` (list of paths) or 2018
    ``category`` (one path); a plain string is one category."""
    value = record.get("categories", record.get("category"))
    if value is None:
        return []
    if isinstance(value, str):
        return [" ".join(value.split())] if value.strip() else []
    if not isinstance(value, list):
        raise DataError(f"expected a list of categories, found {value!r}", path, line)
    paths = value if value and all(isinstance(p, list) for p in value) else [value]
    names: list[str] = []
    for p in paths:
        if not all(isinstance(c, str) for c in p):
            raise DataError(f"expected category names as text, found {p!r}", path, line)
        for c in p[1:]:
            c = " ".join(c.split())
            if c and c not in names:
                names.append(c)
    return names


def _read_meta(
    path: Path,
    item_index: dict[str, int],
    titles: list[str | None],
    names: dict[str, str | None],
    skipped: dict[str, int],
) -> list[tuple[str, str, str]]:
    """Fill ``titles`` from the metadata file and return its brand/category triples."""
    triples: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for line, raw in _lines(path):
        record = _record(raw, path, line)
        if record is None:
            continue
        asin = _text(record, "asin", path, line)
        if asin in seen:
            skipped["repeated_meta_rows"] += 1
            continue
        seen.add(asin)
        if asin not in item_index:
            skipped["meta_rows_for_items_without_reviews"] += 1
            continue
        title = _optional_text(record, "title", path, line)
        key = item_key(asin)
        titles[item_index[asin]] = title
        names[key] = title
        brand = _optional_text(record, "brand", path, line)
        if brand is not None:
            b = f"brand:{brand}"
            names[b] = brand
            triples += [(key, "brand", b), (b, "items_of_brand", key)]
        for c in _categories(record, path, line):
            e = f"category:{c}"
            names[e] = c
            triples += [(key, "category", e), (e, "items_of_category", key)]
    return triples


def load_amazon_reviews(
    reviews: Path, meta: Path | None = None, name: str = "amazon-books"
) -> Dataset:
    """Load an Amazon review dump (and optionally its metadata) as a :class:`Dataset`.

    Users and items are ordered by first appearance; each user's sequence is in
    ``unixReviewTime`` order (a day resolution, so ties are common), ties in file order. Every
    review is kept, a repeated (user, item) review too: the dump is the record of events.
    """
    reviews = Path(reviews)
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users, items, times = array("q"), array("q"), array("q")
    for line, raw in _lines(reviews):
        record = _record(raw, reviews, line)
        if record is None:
            continue
        for key in REQUIRED_KEYS:
            if key not in record:
                raise DataError(f"missing key {key!r}", reviews, line)
        user = _text(record, "reviewerID", reviews, line)
        item = _text(record, "asin", reviews, line)
        times.append(_time(record, reviews, line))
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index.setdefault(item, len(item_index)))
    if not len(users):
        raise DataError("no reviews in the file", reviews)

    skipped = {
        "repeated_meta_rows": 0,
        "meta_rows_for_items_without_reviews": 0,
        "items_without_title": 0,
    }
    titles: list[str | None] = [None] * len(item_index)
    names: dict[str, str | None] = {}
    triples: list[tuple[str, str, str]] = []
    if meta is not None:
        triples = _read_meta(Path(meta), item_index, titles, names, skipped)
        skipped["items_without_title"] = sum(1 for t in titles if t is None)
    item_arr = np.frombuffer(items, dtype=np.int64)
    order = _order_sequences(
        np.frombuffer(users, dtype=np.int64), np.frombuffer(times, dtype=np.int64), len(user_index)
    )
    _report_skips(str(reviews), skipped)
    return Dataset(
        name=name,
        domain="book" if "book" in name.lower() else "item",
        users=list(user_index),
        items=list(item_index),
        titles=titles,
        sequences=[item_arr[rows].astype(np.int64) for rows in order],
        kg=KnowledgeGraph.from_triples(triples, names),
        skipped={k: v for k, v in skipped.items() if v},
    )
