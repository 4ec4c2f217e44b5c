"""Freebase knowledge for a dataset: KB4Rec linkage files, the Freebase RDF dump, triple TSVs.

KB4Rec (Zhao et al., Data Intelligence 2019) links MovieLens, Amazon-book and LFM-1b items to
Freebase MIDs (``ml2fb.txt``, ``ab2fb.txt``, ``lfb2fb.txt``). The triples around those MIDs come
from the Freebase RDF dump (about 3 billion N-Triples lines), which is streamed one pass per hop
so that only the kept triples are ever held in memory. :func:`build_kg` then ties the MIDs to the
dataset's items with the same naming policy as :func:`kp4sr.loaders.load_kb4rec_kg`.

MIDs are normalised to ``m.xxx`` (or ``g.xxx``) whichever way a file writes them: ``m.0abc``,
``/m/0abc`` or ``<http://rdf.freebase.com/ns/m.0abc>``.
"""

from __future__ import annotations

import gzip
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from kp4sr.data import KnowledgeGraph, item_key
from kp4sr.errors import ConfigError, DataError
from kp4sr.loaders import (
    NAMELESS_CHOICES,
    SCRIPT_CHOICES,
    _normalise_name,
    _report_skips,
    _rows,
    link_triples,
)

log = logging.getLogger(__name__)

FREEBASE_NS = "http://rdf.freebase.com/ns/"
NAME_PREDICATE = "type.object.name"
_MID = re.compile(r"[mg]\.[0-9a-z_]+")


# --------------------------------------------------------------------------- MIDs and linkage


def normalise_mid(term: str) -> str | None:
    """``m.xxx`` for any spelling of a Freebase MID, or None when the term is not one.

    Accepts ``m.xxx``, ``/m/xxx`` and the dump's ``<http://rdf.freebase.com/ns/m.xxx>`` (also
    without the angle brackets, or over https), and the same for ``g.`` ids.
    """
    t = term.strip()
    if t.startswith("<") and t.endswith(">"):
        t = t[1:-1]
    for prefix in (FREEBASE_NS, "https://rdf.freebase.com/ns/"):
        if t.startswith(prefix):
            t = t[len(prefix) :]
            break
    if t.startswith(("/m/", "/g/")):
        t = t[1] + "." + t[3:]
    return t if _MID.fullmatch(t) else None


def load_linkage(
    path: Path, items: list[str] | None = None
) -> tuple[dict[str, str], dict[str, int]]:
    """Read a KB4Rec linkage file (item id, tab, MID; no header) as item id -> ``m.xxx``.

    One linkage file covers a whole source (``ml2fb.txt`` all of ML-20M), so with ``items``
    given, links of items outside the dataset are skipped and counted rather than rejected.
    Links stay one-to-one: a second link of an item or of a MID keeps the first and is counted.
    A field that is not a MID is a DataError naming the line.
    """
    path = Path(path)
    known = None if items is None else set(items)
    skipped = {"links_of_unknown_items": 0, "duplicate_item_links": 0, "duplicate_entity_links": 0}
    links: dict[str, str] = {}
    linked_mids: set[str] = set()
    for line, (iid, raw_mid) in _rows(
        path, "\t", ("item_id", "entity_id"), header=("item_id", "entity_id")
    ):
        mid = normalise_mid(raw_mid)
        if mid is None:
            raise DataError(
                f"expected a Freebase MID (m.xxx, /m/xxx or <http://rdf.freebase.com/ns/m.xxx>), "
                f"found {raw_mid!r}",
                path,
                line,
            )
        if known is not None and iid not in known:
            skipped["links_of_unknown_items"] += 1
            continue
        if iid in links:
            skipped["duplicate_item_links"] += 1
            continue
        if mid in linked_mids:
            skipped["duplicate_entity_links"] += 1
            continue
        links[iid] = mid
        linked_mids.add(mid)
    if known is not None:
        log.info("%s: %d of %d items linked", path, len(links), len(known))
    _report_skips(str(path), skipped)
    return links, {k: v for k, v in skipped.items() if v}


# --------------------------------------------------------------------------- N-Triples dump

# One N-Triples statement: subject (IRI or blank node), predicate IRI, object (IRI, blank node or
# literal with an optional language tag or datatype), then the final dot. Tabs or spaces between.
_STATEMENT = re.compile(
    rb"(<[^>\s]*>|_:\S+)[ \t]+(<[^>\s]*>)[ \t]+"
    rb'(<[^>\s]*>|_:\S+|"(?:[^"\\]|\\.)*"(?:@[A-Za-z][A-Za-z0-9-]*|\^\^<[^>\s]*>)?)'
    rb"[ \t]*\.[ \t]*"
)
_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.DOTALL)
_SIMPLE_ESCAPES = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'"}
_SIMPLE_ESCAPES["\\"] = "\\"
_NS = b"<" + FREEBASE_NS.encode()


def unescape_literal(text: str) -> str:
    """The string an N-Triples literal body stands for (``\\"``, ``\\\\``, ``\\n``, ``\\uXXXX``).

    An unknown escape raises ValueError: the line is malformed, not a name to guess at.
    """

    def one(m: re.Match[str]) -> str:
        code = m.group(1) or m.group(2)
        if code is not None:
            return chr(int(code, 16))
        simple = _SIMPLE_ESCAPES.get(m.group(3))
        if simple is None:
            raise ValueError(f"unknown escape \\{m.group(3)}")
        return simple

    out = _ESCAPE.sub(one, text)
    # a UTF-16 pair written as two \u escapes is one character; a lone half is none at all
    # (the name could not even be written out as UTF-8 later)
    try:
        return out.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        raise ValueError("a lone UTF-16 surrogate escape") from None


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """A binary reader of the file, decompressed when it starts with the gzip magic bytes.

    The magic bytes decide, not the suffix, because dumps are often renamed on the way.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
        return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")  # type: ignore[return-value]
    except OSError as e:
        raise DataError(f"cannot read the file: {e.strerror or e}", path) from None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line_number, stripped_line)`` of a possibly gzipped file, one line at a time.

    A truncated or corrupt gzip stream becomes a DataError at the line reached.
    """
    number = 0
    with _open_maybe_gzip(path) as f:
        try:
            for number, raw in enumerate(f, start=1):
                yield number, raw.strip()
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
            raise DataError(f"the file is corrupt or truncated ({e})", path, number + 1) from None


def _entity(term: bytes) -> str | None:
    """``m.xxx``/``g.xxx`` of a Freebase entity IRI, or None for anything else."""
    if not term.startswith(_NS):
        return None
    local = term[len(_NS) : -1]
    if not local.startswith((b"m.", b"g.")):
        return None
    try:
        return local.decode("ascii")
    except UnicodeDecodeError:
        return None


def _relation_name(predicate: bytes) -> str:
    """The predicate's local name: ``film.film.genre`` for a Freebase IRI, else after # or /."""
    iri = predicate[1:-1].decode("utf-8", "replace")
    if iri.startswith(FREEBASE_NS):
        return iri[len(FREEBASE_NS) :]
    return re.split(r"[#/]", iri)[-1] or iri


def _statements(
    path: Path, strict: bool, skipped: dict[str, int] | None
) -> Iterator[tuple[int, bytes, bytes, bytes]]:
    """Yield the parsed statements of the dump; blank and ``#`` comment lines carry nothing.

    A malformed line is a DataError when ``strict``, else counted in ``skipped`` (pass None on
    later passes so that each junk line is counted once).
    """
    for number, line in _lines(path):
        if not line or line.startswith(b"#"):
            continue
        m = _STATEMENT.fullmatch(line)
        if m is None:
            if strict:
                raise DataError(
                    "expected an N-Triples statement: subject, predicate, object and a final '.'",
                    path,
                    number,
                )
            if skipped is not None:
                skipped["malformed_lines"] += 1
            continue
        yield number, m.group(1), m.group(2), m.group(3)


def _literal(term: bytes) -> tuple[str, str | None] | None:
    """``(text, language)`` of a literal term (language None when untagged), None otherwise."""
    if not term.startswith(b'"'):
        return None
    end = term.rindex(b'"')
    tag = term[end + 1 :]
    lang = tag[1:].decode("ascii").lower() if tag.startswith(b"@") else None
    return unescape_literal(term[1:end].decode("utf-8")), lang


def _names_pass(
    path: Path, wanted: set[str], strict: bool, skipped: dict[str, int]
) -> tuple[dict[str, str], int]:
    """Names of the ``wanted`` MIDs from ``type.object.name``: ``@en`` first, else any language.

    Returns the names and how many of them are non-English fallbacks. A name literal with a
    bad escape or bad UTF-8 is counted in ``malformed_names`` (a DataError when ``strict``).
    """
    name_iri = _NS + NAME_PREDICATE.encode() + b">"
    english: dict[str, str] = {}
    fallback: dict[str, str] = {}
    for number, s, p, o in _statements(path, strict, None):
        if p != name_iri:
            continue
        mid = _entity(s)
        if mid is None or mid not in wanted or mid in english:
            continue
        try:
            lit = _literal(o)
        except (ValueError, UnicodeDecodeError) as e:
            if strict:
                raise DataError(f"malformed name literal ({e})", path, number) from None
            skipped["malformed_names"] += 1
            continue
        if lit is None:
            continue
        text = _normalise_name(lit[0])
        if not text:
            continue
        if lit[1] is not None and (lit[1] == "en" or lit[1].startswith("en-")):
            english[mid] = text
            fallback.pop(mid, None)
        elif mid not in fallback:
            fallback[mid] = text
    return {**fallback, **english}, len(fallback)


def stream_ntriples(
    path: Path,
    seeds: set[str],
    hop: int = 2,
    relations: set[str] | None = None,
    strict: bool = False,
) -> tuple[list[tuple[str, str, str]], dict[str, str], dict[str, int]]:
    """Extract the ``hop``-hop Freebase subgraph around the ``seeds`` MIDs from an RDF dump.

    Hop 1 keeps the triples whose head is a seed; hop 2 adds those whose head is a tail of a
    hop-1 triple, and so on. The dump is far too big for memory, so each hop is one streaming
    pass over the file (only the heads new at that hop are matched), plus a final pass for the
    names of every kept entity: ``hop + 1`` passes in all, gzipped or not (gzip is recognised
    by its magic bytes). Only entity-valued objects (``ns/m.``/``ns/g.``) make triples (other
    objects of a matched head, names aside, are counted in ``non_entity_objects``); the
    relation is the predicate's local name (``film.film.genre``), optionally limited to the
    ``relations`` whitelist. Names come from ``type.object.name``, ``@en`` preferred, any
    other language only as a fallback.

    Malformed lines are counted in ``malformed_lines`` (the real dump has some) unless
    ``strict``, which makes the first one a DataError with its line number.

    Returns the triples (MIDs as ``m.xxx``), MID -> name and the nonzero skip counts.
    """
    if hop < 1:
        raise ConfigError(f"hop must be at least 1, got {hop}")
    path = Path(path)
    if not path.is_file():
        raise DataError("missing Freebase N-Triples dump", path)
    bad = sorted(s for s in seeds if normalise_mid(s) is None)
    if bad:
        raise ConfigError(f"seeds must be Freebase MIDs (m.xxx, /m/xxx or an ns/ IRI): {bad[:3]}")
    frontier = {normalise_mid(s) or s for s in seeds}
    visited = set(frontier)
    skipped = {
        "malformed_lines": 0,
        "non_entity_objects": 0,
        "relations_not_listed": 0,
        "duplicate_triples": 0,
        "malformed_names": 0,
    }
    kept: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    name_iri = _NS + NAME_PREDICATE.encode() + b">"
    for level in range(1, hop + 1):
        if not frontier:
            break
        found: set[str] = set()
        for _, s, p, o in _statements(path, strict, skipped if level == 1 else None):
            head = _entity(s)
            if head is None or head not in frontier:
                continue
            tail = _entity(o)
            if tail is None:
                if p != name_iri:
                    skipped["non_entity_objects"] += 1
                continue
            rel = _relation_name(p)
            if relations is not None and rel not in relations:
                skipped["relations_not_listed"] += 1
                continue
            triple = (head, rel, tail)
            if triple in seen:
                skipped["duplicate_triples"] += 1
                continue
            seen.add(triple)
            kept.append(triple)
            if tail not in visited:
                found.add(tail)
        log.info("%s: hop %d kept %d triples so far", path, level, len(kept))
        visited |= found
        frontier = found
    wanted = {h for h, _, _ in kept} | {t for _, _, t in kept} | set(visited)
    names, non_english = _names_pass(path, wanted, strict, skipped)
    if non_english:
        log.info("%s: %d entities named only in a language other than English", path, non_english)
    _report_skips(str(path), skipped)
    return kept, names, {k: v for k, v in skipped.items() if v}


# --------------------------------------------------------------------------- TSV and the graph


def _term(value: str) -> str:
    """A triple end as ``m.xxx`` when it is written as a Freebase MID, else unchanged."""
    return normalise_mid(value) or value


def load_triples_tsv(path: Path) -> tuple[list[tuple[str, str, str]], dict[str, int]]:
    """Read a triples TSV (head, relation, tail) with or without a ``head relation tail`` header.

    Ends written as Freebase MIDs are normalised to ``m.xxx`` and IRI relations to their local
    name, so the result matches :func:`stream_ntriples`. Repeated triples are counted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("missing triples file (head, relation, tail)", path)
    kept: list[tuple[str, str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    skipped = {"duplicate_triples": 0}
    for _, (h, r, t) in _rows(
        path, "\t", ("head", "relation", "tail"), header=("head", "relation", "tail")
    ):
        rel = _relation_name(r.encode()) if r.startswith("<") and r.endswith(">") else r
        triple = (_term(h), rel, _term(t))
        if triple in seen:
            skipped["duplicate_triples"] += 1
            continue
        seen.add(triple)
        kept.append(triple)
    if not kept:
        raise DataError("no triples: expected tab-separated head, relation, tail lines", path)
    _report_skips(str(path), skipped)
    return kept, {k: v for k, v in skipped.items() if v}


def build_kg(
    items: list[str],
    linkage: dict[str, str],
    triples: Iterable[tuple[str, str, str]],
    names: dict[str, str],
    nameless: str = "skip",
    script: str = "any",
) -> tuple[KnowledgeGraph, dict[str, int]]:
    """The dataset's knowledge graph: linked items' MIDs become ``item_key(item)``.

    ``linkage`` maps item id -> MID (from :func:`load_linkage`); links of items outside
    ``items`` are counted and ignored. The nameless policy is that of
    :func:`kp4sr.loaders.load_kb4rec_kg`: a non-item entity without a (Latin, with
    ``script="latin"``) name drops its triples under ``nameless="skip"`` (counted in
    ``triples_with_nameless_entity``) or is named by its MID under ``nameless="id"``. Items get
    no name here: the dataset's titles name them.
    """
    if nameless not in NAMELESS_CHOICES:
        raise ConfigError(f"unknown nameless policy {nameless!r}: expected skip or id")
    if script not in SCRIPT_CHOICES:
        raise ConfigError(f"unknown script filter {script!r}: expected any or latin")
    known = set(items)
    skipped = {"links_of_unknown_items": 0, "duplicate_entity_links": 0}
    to_item: dict[str, str] = {}
    for iid, mid in linkage.items():
        if iid not in known:
            skipped["links_of_unknown_items"] += 1
            continue
        mid = _term(mid)
        if mid in to_item:
            skipped["duplicate_entity_links"] += 1
            continue
        to_item[mid] = item_key(iid)

    kg, counts = link_triples(triples, to_item, names, nameless, script)
    skipped.update(counts)
    item_keys = set(to_item.values())
    linked = sum(1 for e in kg.entities if e in item_keys)
    log.info(
        "Freebase KG: %d triples, %d entities, %d relations, %d linked items",
        kg.num_triples,
        len(kg.entities),
        len(kg.relations),
        linked,
    )
    if kg.num_triples and not linked:
        log.warning(
            "Freebase KG: none of its %d triples touches an item of the dataset: check that "
            "the linkage file belongs to this dataset",
            kg.num_triples,
        )
    _report_skips("Freebase KG", skipped)
    return kg, {k: v for k, v in skipped.items() if v}
