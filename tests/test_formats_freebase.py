"""KB4Rec linkage files, the Freebase N-Triples dump and building a KG from them."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import pytest

from kp4sr.errors import ConfigError, DataError
from kp4sr.formats.freebase import (
    build_kg,
    load_linkage,
    load_triples_tsv,
    normalise_mid,
    stream_ntriples,
    unescape_literal,
)
from kp4sr.templates import RELATION_TEMPLATES, check_template

NS = "http://rdf.freebase.com/ns/"


def shared_datasets() -> Path:
    """The real datasets folder, or skip: they are never copied into the project."""
    env = os.environ.get("KP4SR_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set KP4SR_DATA to the shared folder)")
    return root


def nt(s: str, p: str, o: str, sep: str = "\t") -> str:
    """One dump line; ``o`` starting with a quote is written as a literal as given."""
    obj = o if o.startswith('"') else f"<{NS}{o}>"
    return sep.join([f"<{NS}{s}>", f"<{NS}{p}>", obj, "."])


DUMP = [
    nt("m.toy", "film.film.genre", "m.anim"),
    nt("m.toy", "film.film.directed_by", "m.lasseter", sep=" "),
    nt(
        "m.toy",
        "film.film.initial_release_date",
        '"1995-11-22"^^<http://www.w3.org/2001/XMLSchema#date>',
    ),
    nt("m.toy", "type.object.name", '"Toy Story"@en'),
    nt("m.anim", "film.film_genre.films_in_this_genre", "m.shrek"),
    nt("m.anim", "type.object.name", '"Animation \\"film\\""@fr'),
    nt("m.anim", "type.object.name", '"Animation"@en'),
    nt("m.anim", "type.object.name", '"Animación"@es'),
    nt("m.lasseter", "type.object.name", '"John Lass\\u00e9ter"@en'),
    nt("m.lasseter", "people.person.place_of_birth", "g.11hollywood"),
    nt("g.11hollywood", "type.object.name", '"Hollywood"@de'),
    nt("m.shrek", "film.film.genre", "m.anim"),
    nt("m.shrek", "type.object.name", '"Shrek"@en'),
    nt("m.far", "film.film.genre", "m.anim"),
    "this line is junk",
    "",
    "# a comment",
]


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    path = tmp_path / "freebase.nt"
    path.write_text("\n".join(DUMP) + "\n", encoding="utf-8")
    return path


def test_normalise_mid_accepts_every_spelling() -> None:
    assert normalise_mid("m.0dyb1") == "m.0dyb1"
    assert normalise_mid("/m/0dyb1") == "m.0dyb1"
    assert normalise_mid(f"<{NS}m.0dyb1>") == "m.0dyb1"
    assert normalise_mid("g.11bvv6lr6h") == "g.11bvv6lr6h"
    assert normalise_mid("Toy Story") is None


def test_unescape_literal() -> None:
    assert unescape_literal('a \\"b\\" \\\\ c\\nd \\u00e9') == 'a "b" \\ c\nd é'
    with pytest.raises(ValueError):
        unescape_literal("bad \\q")


def test_linkage_normalises_filters_and_counts(tmp_path: Path, caplog) -> None:
    path = tmp_path / "ml2fb.txt"
    path.write_text(
        "1\tm.0dyb1\r\n2\t/m/09w353\r\n3\t<http://rdf.freebase.com/ns/m.0676dr>\r\n"
        "2\tm.other\r\n4\tm.0dyb1\r\n99\tm.unknown\r\n",
        encoding="utf-8",
    )
    links, skipped = load_linkage(path)
    assert links == {"1": "m.0dyb1", "2": "m.09w353", "3": "m.0676dr", "99": "m.unknown"}
    assert skipped == {"duplicate_item_links": 1, "duplicate_entity_links": 1}
    with caplog.at_level(logging.WARNING):
        links, skipped = load_linkage(path, items=["1", "2", "4"])
    assert links == {"1": "m.0dyb1", "2": "m.09w353"}
    assert skipped["links_of_unknown_items"] == 2
    assert "skipped" in caplog.text


def test_linkage_rejects_a_field_that_is_no_mid(tmp_path: Path) -> None:
    path = tmp_path / "ab2fb.txt"
    path.write_text("0001\tm.03cm0hv\n0002\tToy Story\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"ab2fb.txt, line 2: expected a Freebase MID"):
        load_linkage(path)


def test_real_linkage_files() -> None:
    root = shared_datasets() / "kb4rec-linkage"
    links, skipped = load_linkage(root / "ml2fb.txt", items=[str(i) for i in range(1, 1683)])
    assert 0 < len(links) <= 1682 and links["1"] == "m.0dyb1"
    assert skipped["links_of_unknown_items"] > 20000
    links, _ = load_linkage(root / "ab2fb.txt")
    assert len(links) > 100000
    assert all(m.startswith(("m.", "g.")) for m in links.values())


@pytest.mark.parametrize("compress", [False, True])
def test_stream_two_hops(dump: Path, compress: bool, tmp_path: Path) -> None:
    if compress:  # gzip is recognised by its magic bytes, not the suffix
        packed = tmp_path / "dump.bin"
        packed.write_bytes(gzip.compress(dump.read_bytes()))
        dump = packed
    triples, names, skipped = stream_ntriples(dump, {"m.toy"}, hop=2)
    assert triples == [
        ("m.toy", "film.film.genre", "m.anim"),
        ("m.toy", "film.film.directed_by", "m.lasseter"),
        ("m.anim", "film.film_genre.films_in_this_genre", "m.shrek"),
        ("m.lasseter", "people.person.place_of_birth", "g.11hollywood"),
    ]
    assert names["m.anim"] == "Animation"  # @en preferred over the earlier @fr
    assert names["m.lasseter"] == "John Lasséter"
    assert names["g.11hollywood"] == "Hollywood"  # non-English fallback
    assert names["m.shrek"] == "Shrek"
    assert "m.far" not in names
    assert skipped["malformed_lines"] == 1
    assert skipped["non_entity_objects"] == 1  # the release date; names are not counted


def test_stream_one_hop_whitelist_and_seed_spelling(dump: Path) -> None:
    triples, _, skipped = stream_ntriples(dump, {"/m/toy"}, hop=1, relations={"film.film.genre"})
    assert triples == [("m.toy", "film.film.genre", "m.anim")]
    assert skipped["relations_not_listed"] == 1


def test_stream_fallback_name_with_escapes(tmp_path: Path) -> None:
    path = tmp_path / "d.nt"
    path.write_text(
        nt("m.a", "r.x", "m.b") + "\n" + nt("m.b", "type.object.name", '"Le \\"B\\""@fr') + "\n"
    )
    with path.open("a") as f:
        f.write(nt("m.a", "type.object.name", '"bad \\q"@en') + "\n")
    _, names, skipped = stream_ntriples(path, {"m.a"}, hop=1)
    assert names == {"m.b": 'Le "B"'}
    assert skipped == {"malformed_names": 1}
    with pytest.raises(DataError, match=r"d.nt, line 3: malformed name literal"):
        stream_ntriples(path, {"m.a"}, hop=1, strict=True)


def test_stream_strict_names_the_line(dump: Path) -> None:
    with pytest.raises(DataError, match=r"freebase.nt, line 15: expected an N-Triples"):
        stream_ntriples(dump, {"m.toy"}, strict=True)


def test_stream_truncated_gzip_is_a_data_error(dump: Path, tmp_path: Path) -> None:
    packed = tmp_path / "cut.gz"
    packed.write_bytes(gzip.compress(dump.read_bytes() * 50)[:-30])
    with pytest.raises(DataError, match="corrupt or truncated"):
        stream_ntriples(packed, {"m.toy"})


def test_stream_bad_arguments(dump: Path) -> None:
    with pytest.raises(ConfigError):
        stream_ntriples(dump, {"m.toy"}, hop=0)
    with pytest.raises(ConfigError):
        stream_ntriples(dump, {"Toy Story"})
    with pytest.raises(DataError, match="missing"):
        stream_ntriples(dump.parent / "absent.nt", {"m.toy"})


def test_triples_tsv_with_and_without_header(tmp_path: Path) -> None:
    body = "m.toy\tfilm.film.genre\t/m/anim\nm.toy\tfilm.film.genre\tm.anim\n"
    for text in (body, "head\trelation\ttail\n" + body):
        path = tmp_path / "t.tsv"
        path.write_text(text)
        triples, skipped = load_triples_tsv(path)
        assert triples == [("m.toy", "film.film.genre", "m.anim")]
        assert skipped == {"duplicate_triples": 1}
    path.write_text("m.toy\tfilm.film.genre\n")
    with pytest.raises(DataError, match=r"t.tsv, line 1: expected 3 tab-separated"):
        load_triples_tsv(path)


def test_build_kg_links_items_and_applies_the_nameless_policy(dump: Path) -> None:
    triples, names, _ = stream_ntriples(dump, {"m.toy", "m.shrek"}, hop=1)
    triples.append(("m.toy", "film.film.country", "m.nameless"))
    linkage = {"1": "m.toy", "2": "m.shrek", "3": "m.absent"}
    kg, skipped = build_kg(["1", "2"], linkage, triples, names)
    got = set(kg.triples())
    assert ("item:1", "film.film.genre", "m.anim") in got
    assert ("item:2", "film.film.genre", "m.anim") in got
    assert skipped == {"links_of_unknown_items": 1, "triples_with_nameless_entity": 1}
    assert kg.name_map()["item:1"] is None and kg.name_map()["m.anim"] == "Animation"
    kg_id, skipped_id = build_kg(["1", "2"], linkage, triples, names, nameless="id")
    assert kg_id.name_map()["m.nameless"] == "m.nameless"
    assert "triples_with_nameless_entity" not in skipped_id
    with pytest.raises(ConfigError):
        build_kg(["1"], linkage, triples, names, nameless="drop")


def test_music_templates_are_complete() -> None:
    for rel in (
        "music.artist.genre",
        "music.genre.artists",
        "music.artist.origin",
        "music.artist.label",
        "music.record_label.artist",
        "music.artist.active_start",
        "music.artist.active_end",
        "music.musical_group.member",
        "music.group_member.membership",
        "music.artist.album",
        "music.album.artist",
        "music.album.genre",
        "music.album.release_type",
        "music.recording.artist",
        "music.artist.track",
        "music.recording.releases",
        "music.release.track",
        "music.album.releases",
        "music.composition.composer",
        "music.composer.compositions",
        "people.person.nationality",
        "people.person.place_of_birth",
    ):
        check_template(rel, RELATION_TEMPLATES[rel])
