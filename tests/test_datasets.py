"""``load_dataset``: names and folders resolve to the right loader, knowledge choices, k-core
filtering before the split, the preprocessed-dataset cache, and the real ML-100k files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kp4sr import cache as cache_mod
from kp4sr.data import DataOptions, load_dataset
from kp4sr.errors import ConfigError
from kp4sr.recommender import KP4SR, Config

NO_CORE = DataOptions(min_user=0, min_item=0)


def real_data() -> Path:
    for cand in (
        os.environ.get("KP4SR_DATA"),
        Path(__file__).resolve().parents[2] / "shared" / "datasets",
    ):
        if cand and (Path(cand) / "ml-100k" / "u.data").is_file():
            return Path(cand)
    pytest.skip(
        "ML-100k not found: set KP4SR_DATA to a folder holding ml-100k/ (and ml-100k-freebase/)"
    )


def test_toy_kg_choices_and_k_core():
    full = load_dataset("toy", options=NO_CORE)
    assert len(full.users) == 300 and full.kg.num_triples > 0
    assert (
        load_dataset("toy", options=DataOptions(kg="none", min_user=0, min_item=0)).kg.num_triples
        == 0
    )
    with pytest.raises(ConfigError, match="needs a Freebase KG"):
        load_dataset("toy", options=DataOptions(kg="freebase"))
    strict = load_dataset("toy", options=DataOptions(min_user=8, min_item=10))
    counts = {}
    for seq in strict.sequences:
        assert len(seq) >= 8
        for i in seq.tolist():
            counts[i] = counts.get(i, 0) + 1
    assert min(counts.values()) >= 10
    assert strict.skipped["users_removed_by_k_core"] > 0
    with pytest.raises(ConfigError, match="unknown --kg"):
        load_dataset("toy", options=DataOptions(kg="wikidata"))


def test_unknown_dataset_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        load_dataset("nope", data_dir=tmp_path)


def test_movielens_1m_layout_in_a_folder_is_detected(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    ratings = [f"{u}::{i}::4::{100 + t}" for u in (1, 2, 3) for t, i in enumerate((1, 2, 3, 1 + u))]
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n")
    movies = [
        "1::Toy Story (1995)::Animation|Comedy",
        "2::Heat (1995)::Action",
        "3::Babe (1995)::Comedy",
        "4::Fargo (1996)::Crime",
    ]
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    ds = load_dataset(str(folder), options=NO_CORE)
    assert ds.name == "ml-1m" and len(ds.users) == 3 and "genre" in ds.kg.relations
    by_name = load_dataset("ml-1m", data_dir=tmp_path, options=NO_CORE)
    assert by_name.items == ds.items


def test_kp4sr_release_templates_reach_the_model(tmp_path):
    import json

    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("1 1 2 3 4\n2 3 1 2 4\n3 2 4 1 3\n")
    maps = {
        "user2id": {"A": "1", "B": "2", "C": "3"},
        "item2id": {f"B00{i}": str(i) for i in range(1, 5)},
        "id2item": {str(i): f"B00{i}" for i in range(1, 5)},
    }
    (folder / "datamaps.json").write_text(json.dumps(maps))
    (folder / "item2entity.json").write_text(
        json.dumps({f"B00{i}": f"m.0{i}" for i in range(1, 5)})
    )
    (folder / "entity2text.json").write_text(json.dumps({"m.h": "Frank Herbert", "m.01": "Dune"}))
    (folder / "triple2dict.json").write_text(
        json.dumps({"m.01": {"book.written_work.author": ["m.h"]}, "m.h": {"my.own.rel": ["m.02"]}})
    )
    (folder / "relation2template.json").write_text(
        json.dumps({"book.written_work.author": "[Y] wrote [X].", "my.own.rel": "[X] likes [Y]."})
    )
    ds = load_dataset(f"kp4sr:{folder}", options=NO_CORE)
    assert ds.domain == "book" and ds.templates["my.own.rel"] == "[X] likes [Y]."
    rec = KP4SR.create(Config(dataset=f"kp4sr:{folder}", min_user=0, min_item=0, max_length=64))
    assert rec.relation_templates["book.written_work.author"] == "[Y] wrote [X]."
    assert rec.relation_templates["my.own.rel"] == "[X] likes [Y]."
    assert "frank herbert wrote" in rec.tokenizer.decode(rec.prompt(rec.split.test[0]).input_ids)


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    rows = ["user\titem\ttimestamp"] + [
        f"u{u}\ti{(u + t) % 7}\t{t}" for u in range(6) for t in range(6)
    ]
    (folder / "interactions.tsv").write_text("\n".join(rows) + "\n")
    calls = []
    real = cache_mod.cached

    def spy(key_parts, files, build, cache_dir=None):
        def counted():
            calls.append(1)
            return build()

        return real(key_parts, files, counted, cache_dir)

    monkeypatch.setattr(cache_mod, "cached", spy)
    a = load_dataset(str(folder), options=NO_CORE)
    b = load_dataset(str(folder), options=NO_CORE)
    assert len(calls) == 1 and a.users == b.users
    assert [s.tolist() for s in a.sequences] == [s.tolist() for s in b.sequences]
    load_dataset(str(folder), options=DataOptions(min_user=0, min_item=0, cache=False))
    assert len(calls) == 1  # --no-cache neither reads nor writes the cache
    (folder / "interactions.tsv").write_text("\n".join(rows[:-1]) + "\n")
    c = load_dataset(str(folder), options=NO_CORE)
    assert len(calls) == 2 and c.num_interactions == a.num_interactions - 1


def test_real_ml100k_with_freebase():
    root = real_data()
    ds = load_dataset("ml-100k", data_dir=root, options=NO_CORE)
    assert (len(ds.users), len(ds.items), ds.num_interactions) == (943, 1682, 100000)
    rels = set(ds.kg.relations)
    assert {"genre", "release_year", "film.directed_by", "director.film"} <= rels
    assert ds.skipped["triples_with_nameless_entity"] > 0
    meta = load_dataset(
        "ml-100k", data_dir=root, options=DataOptions(kg="metadata", min_user=0, min_item=0)
    )
    assert not any("." in r for r in meta.kg.relations)
    fb = load_dataset(
        "ml-100k", data_dir=root, options=DataOptions(kg="freebase", min_user=0, min_item=0)
    )
    assert "genre" not in fb.kg.relations and "film.actor" in fb.kg.relations
    cored = load_dataset("ml-100k", data_dir=root)  # default 5-core
    assert len(cored.users) == 943 and len(cored.items) < 1682
    assert cored.skipped["items_removed_by_k_core"] == 1682 - len(cored.items)


def test_freebase_dump_and_linkage_through_load_dataset(tmp_path):
    """--freebase DUMP.nt.gz --linkage FILE: streamed, tied to items, names from the dump."""
    import gzip

    folder = tmp_path / "shop"
    folder.mkdir()
    rows = ["user\titem\ttimestamp"] + [
        f"u{u}\t{i}\t{t}" for u in range(4) for t, i in enumerate("abc")
    ]
    (folder / "interactions.tsv").write_text("\n".join(rows) + "\n")
    (tmp_path / "links.txt").write_text("a\tm.0a\nb\tm.0b\nzz\tm.0z\n")
    ns = "http://rdf.freebase.com/ns/"
    lines = [
        f"<{ns}m.0a>\t<{ns}film.film.directed_by>\t<{ns}m.0d>\t.",
        f"<{ns}m.0b>\t<{ns}film.film.directed_by>\t<{ns}m.0d>\t.",
        f"<{ns}m.0d>\t<{ns}film.director.film>\t<{ns}m.0a>\t.",
        f'<{ns}m.0d>\t<{ns}type.object.name>\t"Ada Kern"@en\t.',
        f'<{ns}m.0d>\t<{ns}type.object.name>\t"エイダ"@ja\t.',
        f"<{ns}m.0x>\t<{ns}film.film.directed_by>\t<{ns}m.0d>\t.",  # not reachable from items
    ]
    dump = tmp_path / "fb.nt.gz"
    dump.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    opts = DataOptions(
        min_user=0, min_item=0, freebase=str(dump), linkage=str(tmp_path / "links.txt")
    )
    ds = load_dataset(str(folder), options=opts)
    triples = set(ds.kg.triples())
    assert ("item:a", "film.film.directed_by", "m.0d") in triples
    assert ("m.0d", "film.director.film", "item:a") in triples
    assert not any(h == "m.0x" for h, _, _ in triples)
    assert ds.kg.names[ds.kg.entities.index("m.0d")] == "Ada Kern"
    assert ds.skipped.get("links_of_unknown_items") == 1
    no_link = DataOptions(min_user=0, min_item=0, freebase=str(dump), cache=False)
    with pytest.raises(ConfigError, match="needs --linkage"):
        load_dataset(str(folder), options=no_link)
