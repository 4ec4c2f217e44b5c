"""MovieLens layouts (1M, 10M, 20M-style, 100K delegation), written in the real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kp4sr.data import Dataset
from kp4sr.errors import DataError
from kp4sr.formats.movielens import load_movielens, read_numeric_columns


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def seq(ds: Dataset, user: str) -> list[str]:
    return [ds.items[i] for i in ds.sequences[ds.users.index(user)].tolist()]


def title(ds: Dataset, item: str) -> str | None:
    return ds.titles[ds.items.index(item)]


def triples(ds: Dataset) -> set[tuple[str, str, str]]:
    return set(ds.kg.triples())


def expect_error(folder: Path, file: str, line: int | None) -> DataError:
    with pytest.raises(DataError) as info:
        load_movielens(folder)
    err = info.value
    assert err.path is not None and Path(err.path).name == file, str(err)
    assert err.line == line, str(err)
    return err


# ----------------------------------------------------------------------------- ML-1M


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-1m"
    write(
        folder / "ratings.dat",
        [
            "1::10::5::978300760",
            "1::20::3::978300700",
            "2::10::4::978300000",
            "2::30::4::978300000",
            "3::20::2::978301000",
        ],
    )
    write(
        folder / "movies.dat",
        [
            "10::Toy Story (1995)::Animation|Children's|Comedy",
            "20::Misérables, Les (1995)::Drama|Musical",
            "30::Untitled Film::(no genres listed)",
            "40::Never Rated (2000)::Drama",
        ],
        encoding="latin-1",
    )
    write(
        folder / "users.dat",
        ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117", "4::M::45::7::02460"],
    )
    return folder


def test_ml1m_users_items_sequences_titles(ml1m: Path) -> None:
    ds = load_movielens(ml1m)
    assert ds.name == "ml-1m" and ds.domain == "movie"
    assert ds.users == ["1", "2", "3"]
    assert ds.items == ["10", "20", "30"]  # movie 40 has no ratings
    assert seq(ds, "1") == ["20", "10"]  # time order
    assert seq(ds, "2") == ["10", "30"]  # equal timestamps: file order
    assert seq(ds, "3") == ["20"]
    assert title(ds, "20") == "Misérables, Les (1995)"  # latin-1 decoded
    assert ds.kg.name_map()["item:20"] == "Misérables, Les (1995)"
    assert ds.skipped == {"items_without_release_year": 1, "users_without_ratings": 1}


def test_ml1m_genre_and_year_triples(ml1m: Path) -> None:
    ds = load_movielens(ml1m)
    t = triples(ds)
    assert ("item:10", "genre", "genre:Children's") in t
    assert ("genre:Children's", "films_of_genre", "item:10") in t
    assert ("item:20", "release_year", "year:1995") in t
    assert ("year:1995", "films_of_year", "item:10") in t
    assert not any(h == "item:30" for h, _, _ in t)  # no genres, no year
    assert not any("40" in h or "40" in x for h, _, x in t)
    names = ds.kg.name_map()
    assert names["genre:Musical"] == "Musical" and names["year:1995"] == "1995"
    assert set(ds.kg.relations) == {"genre", "films_of_genre", "release_year", "films_of_year"}


def test_ml1m_short_line_names_file_and_line(ml1m: Path) -> None:
    lines = (ml1m / "ratings.dat").read_text().splitlines()
    lines[2] = "2::10::4"
    write(ml1m / "ratings.dat", lines)
    err = expect_error(ml1m, "ratings.dat", 3)
    assert "expected 4" in str(err) and "found 3" in str(err)


def test_ml1m_bad_integer_names_line(ml1m: Path) -> None:
    lines = (ml1m / "ratings.dat").read_text().splitlines()
    lines[3] = "2::thirty::4::978300000"
    write(ml1m / "ratings.dat", lines)
    err = expect_error(ml1m, "ratings.dat", 4)
    assert "'thirty'" in str(err)


def test_ml1m_unknown_movie_and_user_are_errors_at_their_line(ml1m: Path) -> None:
    lines = (ml1m / "ratings.dat").read_text().splitlines()
    write(ml1m / "ratings.dat", lines + ["", "3::99::1::978301001"])
    err = expect_error(ml1m, "ratings.dat", 7)  # the blank line 6 still counts as a line
    assert "movie 99" in str(err) and "movies.dat" in str(err)
    write(ml1m / "ratings.dat", lines + ["9::10::1::978301001"])
    err = expect_error(ml1m, "ratings.dat", 6)
    assert "user 9" in str(err) and "users.dat" in str(err)


def test_ml1m_missing_movies_file(ml1m: Path) -> None:
    (ml1m / "movies.dat").unlink()
    err = expect_error(ml1m, "movies.dat", None)
    assert "missing" in str(err)


# ----------------------------------------------------------------------------- ML-10M


@pytest.fixture
def ml10m(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-10M100K"
    write(
        folder / "ratings.dat",
        [
            "1::10::3.5::838985046",
            "1::20::4.5::838983525",
            "2::10::5::838983421",
            "2::20::0.5::838983392",
            "2::30::3::838983400",
        ],
    )
    write(
        folder / "movies.dat",
        [
            "10::Toy Story (1995)::Adventure|Animation",
            "20::Some Series (2006\u20132007)::Drama",
            "30::Heat (1995)::(no genres listed)",
        ],
    )
    write(
        folder / "tags.dat",
        [
            "1::10::pixar::1139045764",
            "2::10::  Pixar ::1139045765",
            "1::20::boring::1139045766",
            "1::20::Boring::1139045767",
            "3::99::pixar::1139045768",
            "2::30::time::travel::1139045769",
            "1::30::time::travel::1139045770",
        ],
    )
    return folder


def test_ml10m_layout_and_tags(ml10m: Path) -> None:
    ds = load_movielens(ml10m)
    assert ds.name == "ml-10m"
    assert ds.users == ["1", "2"] and ds.items == ["10", "20", "30"]
    assert seq(ds, "1") == ["20", "10"]
    assert seq(ds, "2") == ["20", "30", "10"]
    t = triples(ds)
    assert ("item:10", "tag", "tag:pixar") in t
    assert ("tag:pixar", "films_with_tag", "item:10") in t
    assert ("item:30", "tag", "tag:time::travel") in t  # a tag may contain the separator
    assert not any(x == "tag:boring" for _, _, x in t)  # two rows but one user
    assert ds.kg.name_map()["tag:pixar"] == "pixar"
    assert ("item:20", "release_year", "year:2006") in t  # a series' first year
    assert not any(h == "item:30" and r == "genre" for h, r, _ in t)
    assert ds.skipped["tags_used_by_fewer_than_2_users"] == 1
    assert ds.skipped["tags_on_movies_without_ratings"] == 1
    assert "users_without_ratings" not in ds.skipped  # no users.dat in 10M


def test_ml10m_short_tag_line(ml10m: Path) -> None:
    write(ml10m / "tags.dat", ["1::10::pixar::1", "1::10::2"])
    err = expect_error(ml10m, "tags.dat", 2)
    assert "expected 4" in str(err)


# ----------------------------------------------------------------------------- ML-20M style


@pytest.fixture
def ml20m(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-20m"
    write(
        folder / "ratings.csv",
        [
            "userId,movieId,rating,timestamp",
            "1,1,4.0,100",
            "1,2,3.5,100",
            "2,3,5.0,50",
            "2,1,1.0,60",
            "3,3,2.0,10",
        ],
    )
    write(
        folder / "movies.csv",
        [
            "movieId,title,genres",
            '1,"American President, The (1995)",Comedy|Drama|Romance',
            "2,Hyena Road,(no genres listed)",
            '3,"Quote ""Test"" (2001)",Drama',
        ],
    )
    write(
        folder / "tags.csv",
        [
            "userId,movieId,tag,timestamp",
            '1,1,"politics, romance",10',
            '2,1,"Politics,  Romance",11',
            "3,3,solo,12",
        ],
    )
    return folder


def test_ml20m_csv_layout(ml20m: Path) -> None:
    ds = load_movielens(ml20m)
    assert ds.name == "ml-20m"
    assert ds.users == ["1", "2", "3"] and ds.items == ["1", "2", "3"]
    assert seq(ds, "1") == ["1", "2"]  # tie: file order
    assert seq(ds, "2") == ["3", "1"]
    assert title(ds, "1") == "American President, The (1995)"
    assert title(ds, "3") == 'Quote "Test" (2001)'
    t = triples(ds)
    assert ("item:1", "genre", "genre:Romance") in t
    assert ("item:3", "release_year", "year:2001") in t
    assert not any(h == "item:2" for h, _, _ in t)  # no genres, no year
    assert ("item:1", "tag", "tag:politics, romance") in t
    assert ("tag:politics, romance", "films_with_tag", "item:1") in t
    assert not any(x == "tag:solo" for _, _, x in t)
    assert ds.skipped == {"items_without_release_year": 1, "tags_used_by_fewer_than_2_users": 1}


def test_ml20m_bad_rating_line(ml20m: Path) -> None:
    lines = (ml20m / "ratings.csv").read_text().splitlines()
    lines[4] = "2,1,one,60"
    write(ml20m / "ratings.csv", lines)
    err = expect_error(ml20m, "ratings.csv", 5)
    assert "rating" in str(err)


def test_ml20m_unknown_movie_line_counts_the_header(ml20m: Path) -> None:
    lines = (ml20m / "ratings.csv").read_text().splitlines()
    write(ml20m / "ratings.csv", lines + ["3,77,2.0,10"])
    err = expect_error(ml20m, "ratings.csv", 7)
    assert "movie 77" in str(err)


def test_unnamed_folder_is_movielens(ml20m: Path, tmp_path: Path) -> None:
    other = ml20m.rename(tmp_path / "my-ratings")
    assert load_movielens(other).name == "movielens"


# ----------------------------------------------------------------------------- detection


def test_folder_without_known_files_lists_what_was_expected(tmp_path: Path) -> None:
    write(tmp_path / "readme.txt", ["nothing here"])
    with pytest.raises(DataError) as info:
        load_movielens(tmp_path)
    msg = str(info.value)
    assert "u.data" in msg and "ratings.dat" in msg and "ratings.csv" in msg


def test_two_layouts_are_ambiguous(ml1m: Path) -> None:
    write(ml1m / "ratings.csv", ["userId,movieId,rating,timestamp", "1,10,5,1"])
    with pytest.raises(DataError, match="more than one"):
        load_movielens(ml1m)


def test_100k_is_delegated(tmp_path: Path) -> None:
    flags = "|".join("1" if g == 5 else "0" for g in range(19))
    write(tmp_path / "u.item", [f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags}"])
    write(tmp_path / "u.data", ["7\t1\t5\t881250949", "8\t1\t3\t881250950"])
    ds = load_movielens(tmp_path)
    assert ds.name == "ml-100k" and ds.users == ["7", "8"] and ds.items == ["1"]


# ----------------------------------------------------------------------------- fast reader


COLUMNS = (("user", "int"), ("item", "int"), ("rating", "float"), ("time", "int"))


def test_reader_chunks_blank_lines_crlf_and_slow_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 10**9, size=(300, 4))
    lines = [f"{a}::{b}::{c % 5}.5::{d}" for a, b, c, d in data.tolist()]
    lines[10] = ""  # blank: ignored
    lines[50] = " 1 :: 2 :: 1e0 :: 3 "  # only the slow path reads this one
    path = tmp_path / "r.dat"
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    for chunk in (37, 1 << 20):
        got = read_numeric_columns(
            path, b"::", COLUMNS, ("user", "rating", "time"), chunk_bytes=chunk
        )
        keep = [i for i in range(300) if i != 10]
        users = [1 if i == 50 else int(data[i, 0]) for i in keep]
        assert got["user"].tolist() == users
        assert got["rating"][keep.index(50)] == 1.0
        assert got["time"][-1] == data[-1, 3]
        assert got["user"].dtype == np.int64 and got["rating"].dtype == np.float64


def test_reader_error_line_across_chunks(tmp_path: Path) -> None:
    lines = [f"{i}\t{i}\t1\t{i}" for i in range(1, 500)]
    lines[411] = "412\t412\t1"
    path = write(tmp_path / "r.tsv", lines)
    with pytest.raises(DataError) as info:
        read_numeric_columns(path, b"\t", COLUMNS, ("user",), chunk_bytes=64)
    assert info.value.line == 412 and "found 3" in str(info.value)


def test_reader_comma_in_a_tab_file_is_not_a_separator(tmp_path: Path) -> None:
    path = write(tmp_path / "r.tsv", ["1\t2\t3\t4", "1,5\t2\t3"])
    with pytest.raises(DataError) as info:
        read_numeric_columns(path, b"\t", COLUMNS, ("user",))
    assert info.value.line == 2
