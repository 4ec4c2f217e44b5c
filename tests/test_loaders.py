"""Loaders: small files in the real formats written to tmp_path, plus the real data when present."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from kp4sr.data import Dataset, KnowledgeGraph, default_data_dir, item_key
from kp4sr.errors import ConfigError, DataError
from kp4sr.loaders import load_generic, load_kb4rec_kg, load_movielens_100k

# ----------------------------------------------------------------------------- helpers


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def triple_set(kg: KnowledgeGraph) -> set[tuple[str, str, str]]:
    return set(kg.triples())


def seq_items(ds: Dataset, user: str) -> list[str]:
    return [ds.items[i] for i in ds.sequences[ds.users.index(user)].tolist()]


def expect_data_error(fn, *args, file: str, line: int | None, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.path is not None and Path(err.path).name == file, str(err)
    assert file in str(err)
    if line is not None:
        assert err.line == line, str(err)
        assert f"line {line}" in str(err)
    return err


# ----------------------------------------------------------------------------- MovieLens-100K


def item_line(iid: int, title: str, date: str, genres: set[int]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in range(19))
    return f"{iid}|{title}|{date}||http://us.imdb.com/M/x|{flags}"


@pytest.fixture
def ml_folder(tmp_path: Path) -> Path:
    write(
        tmp_path / "u.item",
        [
            item_line(
                1, "Toy Story (1995)", "01-Jan-1995", {3, 4, 5}
            ),  # Animation Children's Comedy
            item_line(3, "Café Society (1995)", "", {0}),  # latin-1 title, no date, unknown
            item_line(4, "Never Watched (1990)", "12-Mar-1990", {8}),
            item_line(5, "Heat (1995)", "15-Dec-1995", {1, 6, 16}),  # Action Crime Thriller
        ],
        encoding="latin-1",
    )
    write(
        tmp_path / "u.data",
        [
            "10\t1\t5\t300",
            "2\t5\t4\t100",
            "2\t1\t3\t100",  # same time as the line above: file order must win
            "2\t3\t2\t50",
            "10\t5\t1\t200",
        ],
    )
    write(tmp_path / "u.genre", [f"{g}|{i}" for i, g in enumerate(GENRE_NAMES)] + [""])
    return tmp_path


GENRE_NAMES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def test_ml100k_users_items_titles(ml_folder: Path) -> None:
    ds = load_movielens_100k(ml_folder)
    assert (ds.name, ds.domain) == ("ml-100k", "movie")
    assert ds.users == ["2", "10"]  # numeric, not string, order
    assert ds.items == ["1", "3", "5"]  # item 4 has no interactions
    assert ds.titles == ["Toy Story (1995)", "Café Society (1995)", "Heat (1995)"]
    assert ds.num_interactions == 5
    assert all(s.dtype == np.int64 for s in ds.sequences)


def test_ml100k_timestamp_ties_keep_file_order(ml_folder: Path) -> None:
    ds = load_movielens_100k(ml_folder)
    assert seq_items(ds, "2") == ["3", "5", "1"]
    assert seq_items(ds, "10") == ["5", "1"]


def test_ml100k_metadata_kg(ml_folder: Path) -> None:
    ds = load_movielens_100k(ml_folder)
    t = triple_set(ds.kg)
    toy, cafe, heat = item_key("1"), item_key("3"), item_key("5")
    for g in ("Animation", "Children's", "Comedy"):
        assert (toy, "genre", f"genre:{g}") in t
        assert (f"genre:{g}", "films_of_genre", toy) in t
    assert (toy, "release_year", "year:1995") in t
    assert ("year:1995", "films_of_year", heat) in t
    assert not any(h == cafe or tl == cafe for h, _, tl in t)  # only "unknown", no date
    assert "genre:unknown" not in ds.kg.entities
    assert item_key("4") not in ds.kg.entities
    assert ds.skipped == {"items_without_release_year": 1}
    names = ds.kg.name_map()
    assert names["genre:Comedy"] == "Comedy"
    assert names["year:1995"] == "1995"
    assert names[heat] == "Heat (1995)"
    assert sorted(ds.kg.relations) == sorted(
        ["genre", "films_of_genre", "release_year", "films_of_year"]
    )


def test_ml100k_without_u_genre_uses_standard_names(ml_folder: Path) -> None:
    (ml_folder / "u.genre").unlink()
    ds = load_movielens_100k(ml_folder)
    assert (item_key("5"), "genre", "genre:Thriller") in triple_set(ds.kg)


def test_ml100k_item_missing_from_u_item(ml_folder: Path) -> None:
    with (ml_folder / "u.data").open("a") as f:
        f.write("2\t99\t3\t400\n")
    err = expect_data_error(load_movielens_100k, ml_folder, file="u.data", line=6)
    assert "99" in str(err) and "u.item" in str(err)


def test_ml100k_short_u_data_line(ml_folder: Path) -> None:
    lines = (ml_folder / "u.data").read_text().splitlines()
    lines.insert(2, "2\t5")
    write(ml_folder / "u.data", lines)
    err = expect_data_error(load_movielens_100k, ml_folder, file="u.data", line=3)
    assert "expected 4" in str(err)


def test_ml100k_bad_timestamp_and_flags(ml_folder: Path) -> None:
    write(ml_folder / "u.data", ["2\t5\t4\t100", "2\t1\t3\tyesterday"])
    expect_data_error(load_movielens_100k, ml_folder, file="u.data", line=2)
    lines = (ml_folder / "u.item").read_text(encoding="latin-1").splitlines()
    lines[1] = lines[1][:-1] + "7"
    write(ml_folder / "u.item", lines, encoding="latin-1")
    expect_data_error(load_movielens_100k, ml_folder, file="u.item", line=2)


# ----------------------------------------------------------------------------- KB4Rec KG

KB_ITEMS = ["1", "2", "3"]


def kb_folder(root: Path, header: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    heads = {
        "item2entity.tsv": "item_id\tentity_id",
        "triples.tsv": "head\trelation\ttail",
        "entity_names.tsv": "entity_id\tname",
    }
    files = {
        "item2entity.tsv": ["1\tm.a", "2\tm.b"],
        "triples.tsv": [
            "m.a\tfilm.actor\tm.x",
            "m.x\tactor.film\tm.a",
            "m.a\tfilm.character\tm.y",  # m.y has no name
            "m.y\tcharacter.film\tm.a",
            "m.b\tfilm.directed_by\tm.z",  # m.z only has a Japanese name
            "m.b\tfilm.actor\tm.w",
            "m.b\tfilm.actor\tm.e",  # m.e has an empty name
        ],
        "entity_names.tsv": [
            "m.x\tTom Hanks",
            "m.z\t黒澤明",
            "m.w\t  Jean    Reno ",
            "m.e\t",
            "m.a\tToy Story",  # item names come from the dataset, not from here
        ],
    }
    for name, lines in files.items():
        write(root / name, ([heads[name]] if header else []) + lines)
    return root


@pytest.mark.parametrize("header", [True, False])
def test_kb4rec_links_and_skip(tmp_path: Path, header: bool) -> None:
    kg, skipped = load_kb4rec_kg(kb_folder(tmp_path / "kg", header), KB_ITEMS)
    t = triple_set(kg)
    a, b = item_key("1"), item_key("2")
    assert t == {
        (a, "film.actor", "m.x"),
        ("m.x", "actor.film", a),
        (b, "film.directed_by", "m.z"),
        (b, "film.actor", "m.w"),
    }
    assert "m.a" not in kg.entities and "m.b" not in kg.entities
    assert skipped == {"triples_with_nameless_entity": 3}
    names = kg.name_map()
    assert names["m.x"] == "Tom Hanks"
    assert names["m.w"] == "Jean Reno"
    assert names["m.z"] == "黒澤明"
    assert names[a] is None and names[b] is None


def test_kb4rec_nameless_id_keeps_triples(tmp_path: Path) -> None:
    kg, skipped = load_kb4rec_kg(kb_folder(tmp_path), KB_ITEMS, nameless="id")
    assert kg.num_triples == 7
    assert "triples_with_nameless_entity" not in skipped
    names = kg.name_map()
    assert names["m.y"] == "m.y" and names["m.e"] == "m.e"
    assert names["m.x"] == "Tom Hanks"


def test_kb4rec_latin_script(tmp_path: Path) -> None:
    folder = kb_folder(tmp_path)
    kg, skipped = load_kb4rec_kg(folder, KB_ITEMS, script="latin")
    assert "m.z" not in kg.entities
    assert skipped["triples_with_nameless_entity"] == 4
    kg, _ = load_kb4rec_kg(folder, KB_ITEMS, nameless="id", script="latin")
    assert kg.name_map()["m.z"] == "m.z"
    write(folder / "entity_names.tsv", ["m.x\tTom Hanks", "m.z\tAkira Kurosawa (黒澤明)"])
    kg, _ = load_kb4rec_kg(folder, KB_ITEMS, script="latin")
    assert kg.name_map()["m.z"] == "Akira Kurosawa (黒澤明)"


def test_kb4rec_latin_accepts_accented_names(tmp_path: Path) -> None:
    folder = kb_folder(tmp_path)
    write(folder / "entity_names.tsv", ["m.x\tÉé", "m.z\tŁódź", "m.w\t1999", "m.y\tДмитрий"])
    kg, _ = load_kb4rec_kg(folder, KB_ITEMS, script="latin")
    assert {"m.x", "m.z"} <= set(kg.entities)
    assert "m.w" not in kg.entities and "m.y" not in kg.entities


def test_kb4rec_unknown_item(tmp_path: Path) -> None:
    folder = kb_folder(tmp_path)
    write(folder / "item2entity.tsv", ["item_id\tentity_id", "1\tm.a", "9\tm.q"])
    err = expect_data_error(load_kb4rec_kg, folder, KB_ITEMS, file="item2entity.tsv", line=3)
    assert "'9'" in str(err)


def test_kb4rec_malformed_triple_lines(tmp_path: Path) -> None:
    folder = kb_folder(tmp_path)
    lines = (folder / "triples.tsv").read_text().splitlines()
    write(folder / "triples.tsv", lines[:3] + ["m.a\tfilm.actor"] + lines[3:])
    err = expect_data_error(load_kb4rec_kg, folder, KB_ITEMS, file="triples.tsv", line=4)
    assert "expected 3" in str(err)
    write(folder / "triples.tsv", lines[:2] + ["m.a\t\tm.x"])
    err = expect_data_error(load_kb4rec_kg, folder, KB_ITEMS, file="triples.tsv", line=3)
    assert "relation" in str(err)


def test_kb4rec_undecodable_bytes(tmp_path: Path) -> None:
    folder = kb_folder(tmp_path)
    (folder / "entity_names.tsv").write_bytes(b"entity_id\tname\nm.x\tTom\nm.z\t\xff\xfe\n")
    expect_data_error(load_kb4rec_kg, folder, KB_ITEMS, file="entity_names.tsv", line=3)


def test_kb4rec_duplicate_links_counted(tmp_path: Path, caplog) -> None:
    folder = kb_folder(tmp_path)
    write(folder / "item2entity.tsv", ["1\tm.a", "3\tm.a", "2\tm.b"])
    with caplog.at_level(logging.WARNING, logger="kp4sr.loaders"):
        kg, skipped = load_kb4rec_kg(folder, KB_ITEMS)
    assert skipped["duplicate_item_links"] == 1
    assert item_key("1") in kg.entities and item_key("3") not in kg.entities
    assert "duplicate item links" in caplog.text


def test_kb4rec_identity_links_without_item2entity(tmp_path: Path) -> None:
    folder = kb_folder(tmp_path)
    (folder / "item2entity.tsv").unlink()
    write(folder / "triples.tsv", ["1\tfilm.actor\tm.x", "m.q\tfilm.actor\tm.x"])
    kg, skipped = load_kb4rec_kg(folder, KB_ITEMS)
    assert triple_set(kg) == {(item_key("1"), "film.actor", "m.x")}
    assert skipped == {"triples_with_nameless_entity": 1}  # m.q has no name


def test_kb4rec_bad_options(tmp_path: Path) -> None:
    folder = kb_folder(tmp_path)
    with pytest.raises(ConfigError):
        load_kb4rec_kg(folder, KB_ITEMS, nameless="drop")
    with pytest.raises(ConfigError):
        load_kb4rec_kg(folder, KB_ITEMS, script="cyrillic")


# ----------------------------------------------------------------------------- generic format


def test_generic_tsv(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    folder.mkdir()
    write(
        folder / "interactions.tsv",
        [
            "user_id\titem_id\trating\ttimestamp",
            "u9\tB\t5\t20",
            "u1\tA\t3\t10",
            "u9\tA\t4\t5",
            "u9\tC\t1\t20",  # ties with the first line: file order
            "u1\tC\t2\t10.5",
        ],
    )
    write(folder / "items.tsv", ["item\ttitle", "A\tApple", "B\t", "Z\tNever bought"])
    ds = load_generic(folder)
    assert (ds.name, ds.domain) == ("shop", "item")
    assert ds.users == ["u9", "u1"]
    assert ds.items == ["B", "A", "C"]
    assert ds.titles == [None, "Apple", None]
    assert seq_items(ds, "u9") == ["A", "B", "C"]
    assert seq_items(ds, "u1") == ["A", "C"]
    assert ds.skipped == {"items_without_interactions": 1}
    assert ds.kg.num_triples == 0


def test_generic_csv_quoted_iso(tmp_path: Path) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    write(
        folder / "interactions.csv",
        [
            "time,user,item",
            "2021-03-01T10:00:00,ann,b1",
            "2021-02-01,ann,b2",
            "2021-03-01 09:00:00+00:00,ann,b3",
        ],
    )
    write(folder / "items.csv", ["item_id,name", 'b1,"War, and Peace"', "b3,Emma"])
    ds = load_generic(folder)
    assert seq_items(ds, "ann") == ["b2", "b3", "b1"]
    assert ds.titles[ds.items.index("b1")] == "War, and Peace"


def test_generic_with_kg(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    folder.mkdir()
    write(folder / "interactions.tsv", ["user\titem\ttimestamp", "1\ti1\t1", "1\ti2\t2"])
    write(folder / "triples.tsv", ["i1\tauthor\tm.x", "i2\tauthor\tm.nobody"])
    write(folder / "entity_names.tsv", ["m.x\tJane Austen"])
    ds = load_generic(folder)
    assert triple_set(ds.kg) == {(item_key("i1"), "author", "m.x")}
    assert ds.skipped == {"triples_with_nameless_entity": 1}
    ds = load_generic(folder, nameless="id")
    assert ds.kg.num_triples == 2


def test_generic_missing_column(tmp_path: Path) -> None:
    write(tmp_path / "interactions.tsv", ["user\tproduct\ttimestamp", "1\ti1\t1"])
    err = expect_data_error(load_generic, tmp_path, file="interactions.tsv", line=1)
    assert "item" in err.reason and "item_id" in err.reason and "product" in err.reason


def test_generic_bad_timestamp(tmp_path: Path) -> None:
    write(tmp_path / "interactions.csv", ["user,item,timestamp", "1,a,5", "1,b,6", "1,c,last week"])
    err = expect_data_error(load_generic, tmp_path, file="interactions.csv", line=4)
    assert "last week" in str(err)


def test_generic_mixed_timestamps_and_ragged_rows(tmp_path: Path) -> None:
    write(tmp_path / "interactions.csv", ["user,item,timestamp", "1,a,5", "1,b,2021-01-01"])
    expect_data_error(load_generic, tmp_path, file="interactions.csv", line=3)
    write(tmp_path / "interactions.csv", ["user,item,timestamp", "1,a,5", "1,b"])
    expect_data_error(load_generic, tmp_path, file="interactions.csv", line=3)


def test_generic_empty_file(tmp_path: Path) -> None:
    write(tmp_path / "interactions.tsv", ["user\titem\ttimestamp"])
    err = expect_data_error(load_generic, tmp_path, file="interactions.tsv", line=None)
    assert "no interactions" in str(err)
    (tmp_path / "interactions.tsv").write_bytes(b"")
    expect_data_error(load_generic, tmp_path, file="interactions.tsv", line=1)


def test_generic_no_interactions_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="interactions.tsv or interactions.csv"):
        load_generic(tmp_path)


# ----------------------------------------------------------------------------- real data


def real_data_dir() -> Path:
    """``$KP4SR_DATA``/``../shared/datasets``, else the shared folder next to the repository."""
    found = default_data_dir()
    if found is None and not os.environ.get("KP4SR_DATA"):
        fallback = Path(__file__).resolve().parents[2] / "shared" / "datasets"
        found = fallback if fallback.is_dir() else None
    if found is None or not (found / "ml-100k" / "u.data").is_file():
        pytest.skip("real ML-100k data not found: set KP4SR_DATA to the shared datasets folder")
    return found


def test_real_ml100k() -> None:
    ds = load_movielens_100k(real_data_dir() / "ml-100k")
    assert (len(ds.users), len(ds.items), ds.num_interactions) == (943, 1682, 100000)
    assert ds.titles[0] == "Toy Story (1995)"
    assert {"genre", "films_of_genre", "release_year", "films_of_year"} == set(ds.kg.relations)


def test_real_freebase_kg() -> None:
    root = real_data_dir()
    fb = root / "ml-100k-freebase"
    if not (fb / "triples.tsv").is_file():
        pytest.skip(f"real Freebase KG not found in {fb}: set KP4SR_DATA")
    ds = load_movielens_100k(root / "ml-100k")
    start = time.perf_counter()
    kg, skipped = load_kb4rec_kg(fb, ds.items, nameless="id")
    assert time.perf_counter() - start < 10
    links = [line.split("\t") for line in (fb / "item2entity.tsv").read_text().splitlines()[1:]]
    assert len(links) == 1598
    in_triples = set()
    for line in (fb / "triples.tsv").read_text().splitlines()[1:]:
        h, _, t = line.split("\t")
        in_triples.update((h, t))
    linked = {item_key(i) for i, mid in links if mid in in_triples}
    assert len(linked) >= 1590  # a few linked films have no triples at all
    assert linked <= set(kg.entities)
    assert not {mid for _, mid in links} & set(kg.entities)
    assert len(kg.relations) == 10
    kg_skip, skipped = load_kb4rec_kg(fb, ds.items)
    assert skipped["triples_with_nameless_entity"] > 0
    assert kg_skip.num_triples < kg.num_triples
    assert all(n for e, n in kg_skip.name_map().items() if not e.startswith("item:"))
