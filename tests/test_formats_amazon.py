"""Amazon review dumps: JSON lines, Python-literal lines, gzip, metadata, and bad lines."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from kp4sr.data import Dataset
from kp4sr.errors import DataError
from kp4sr.formats.amazon import load_amazon_reviews

REVIEWS = [
    {"reviewerID": "A1", "asin": "B01", "unixReviewTime": 300, "overall": 5.0},
    {"reviewerID": "A1", "asin": "B02", "unixReviewTime": 100, "verified": True},
    {"reviewerID": "A2", "asin": "B02", "unixReviewTime": 200},
    {"reviewerID": "A2", "asin": "B03", "unixReviewTime": 200},
    {"reviewerID": "A1", "asin": "B03", "unixReviewTime": 200, "reviewText": "it's fine"},
]


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def seq(ds: Dataset, user: str) -> list[str]:
    return [ds.items[i] for i in ds.sequences[ds.users.index(user)].tolist()]


def check_reviews(ds: Dataset) -> None:
    assert ds.users == ["A1", "A2"]  # first appearance
    assert ds.items == ["B01", "B02", "B03"]
    assert seq(ds, "A1") == ["B02", "B03", "B01"]
    assert seq(ds, "A2") == ["B02", "B03"]  # equal times: file order


def error(path: Path, meta: Path | None = None) -> DataError:
    with pytest.raises(DataError) as info:
        load_amazon_reviews(path, meta)
    return info.value


def test_json_lines(tmp_path: Path) -> None:
    ds = load_amazon_reviews(write(tmp_path / "Books_5.json", [json.dumps(r) for r in REVIEWS]))
    check_reviews(ds)
    assert ds.name == "amazon-books" and ds.domain == "book"
    assert ds.titles == [None, None, None] and ds.kg.num_triples == 0


def test_python_literal_lines(tmp_path: Path) -> None:
    lines = [repr(r) for r in REVIEWS]  # single quotes, True
    assert "'" in lines[0] and "True" in lines[1]
    ds = load_amazon_reviews(write(tmp_path / "reviews.txt", lines), name="amazon-music")
    check_reviews(ds)
    assert ds.domain == "item" and ds.name == "amazon-music"


def test_gzip_detected_by_magic_bytes(tmp_path: Path) -> None:
    path = write(tmp_path / "reviews.json", [json.dumps(r) for r in REVIEWS], gz=True)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    check_reviews(load_amazon_reviews(path))


def test_blank_lines_are_ignored_and_lines_still_counted(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in REVIEWS]
    lines.insert(2, "")
    lines.append("{not json")
    err = error(write(tmp_path / "r.json", lines))
    assert err.line == 7 and "malformed" in str(err)


def test_metadata_titles_and_kg(tmp_path: Path) -> None:
    reviews = write(tmp_path / "r.json.gz", [json.dumps(r) for r in REVIEWS], gz=True)
    meta = write(
        tmp_path / "meta_Books.json",
        [
            # 2014 style: Python literal, categories as paths
            repr(
                {
                    "asin": "B01",
                    "title": "The  Hobbit",
                    "brand": "Tolkien Estate",
                    "categories": [["Books", "Fantasy"], ["Books", "Classics"]],
                    "related": {"also_bought": ["B02"]},
                }
            ),
            # 2018 style: JSON, category as one path
            json.dumps({"asin": "B02", "title": "Dune", "category": ["Books", "Fantasy"]}),
            json.dumps({"asin": "B02", "title": "Dune (again)"}),
            json.dumps({"asin": "B99", "title": "Never reviewed"}),
            repr({"asin": "B03", "title": None}),
        ],
    )
    ds = load_amazon_reviews(reviews, meta)
    check_reviews(ds)
    assert ds.titles == ["The Hobbit", "Dune", None]
    t = set(ds.kg.triples())
    assert ("item:B01", "brand", "brand:Tolkien Estate") in t
    assert ("brand:Tolkien Estate", "items_of_brand", "item:B01") in t
    assert ("item:B01", "category", "category:Fantasy") in t
    assert ("category:Classics", "items_of_category", "item:B01") in t
    assert ("item:B02", "category", "category:Fantasy") in t
    assert not any(x == "category:Books" for _, _, x in t)  # the department is left out
    names = ds.kg.name_map()
    assert names["item:B01"] == "The Hobbit" and names["category:Fantasy"] == "Fantasy"
    assert ds.skipped == {
        "repeated_meta_rows": 1,
        "meta_rows_for_items_without_reviews": 1,
        "items_without_title": 1,
    }


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in REVIEWS]
    lines[3] = '{"reviewerID": "A2", "asin": '
    err = error(write(tmp_path / "reviews.json", lines))
    assert Path(err.path or "").name == "reviews.json" and err.line == 4
    assert "reviews.json, line 4" in str(err)


def test_missing_key_is_named(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in REVIEWS]
    lines[1] = json.dumps({"reviewerID": "A1", "asin": "B02"})
    err = error(write(tmp_path / "reviews.json", lines))
    assert err.line == 2 and "'unixReviewTime'" in str(err)
    lines[1] = json.dumps({"reviewerID": "A1", "unixReviewTime": 5})
    err = error(write(tmp_path / "reviews.json", lines))
    assert err.line == 2 and "'asin'" in str(err)


def test_non_object_and_bad_time_are_errors(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in REVIEWS]
    err = error(write(tmp_path / "r.json", lines[:2] + ["[1, 2]"]))
    assert err.line == 3 and "list" in str(err)
    bad = dict(REVIEWS[0], unixReviewTime="yesterday")
    err = error(write(tmp_path / "r.json", [json.dumps(bad)]))
    assert err.line == 1 and "yesterday" in str(err)


def test_code_in_a_python_literal_line_is_rejected_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = (
        "{'reviewerID': 'A1', 'asin': __import__('os').system('touch " + str(marker) + "'), "
        "'unixReviewTime': 1}"
    )
    err = error(write(tmp_path / "r.json", [json.dumps(REVIEWS[0]), payload]))
    assert err.line == 2 and "malformed" in str(err)
    assert not marker.exists()


def test_meta_line_without_asin(tmp_path: Path) -> None:
    reviews = write(tmp_path / "r.json", [json.dumps(r) for r in REVIEWS])
    meta = write(tmp_path / "meta.json", [json.dumps({"asin": "B01"}), json.dumps({"title": "x"})])
    err = error(reviews, meta)
    assert Path(err.path or "").name == "meta.json" and err.line == 2 and "'asin'" in str(err)


def test_truncated_gzip_and_empty_file(tmp_path: Path) -> None:
    data = gzip.compress(("\n".join(json.dumps(r) for r in REVIEWS * 50) + "\n").encode())
    path = tmp_path / "cut.json.gz"
    path.write_bytes(data[: len(data) // 2])
    err = error(path)
    assert "corrupt or truncated" in str(err)
    err = error(write(tmp_path / "empty.json", [""]))
    assert "no reviews" in str(err)


def test_missing_file_and_bad_utf8(tmp_path: Path) -> None:
    err = error(tmp_path / "absent.json")
    assert err.line is None and "cannot read" in str(err)
    path = tmp_path / "r.json"
    path.write_bytes(json.dumps(REVIEWS[0]).encode() + b"\n" + b'{"reviewerID": "\xff"}\n')
    err = error(path)
    assert err.line == 2 and "utf-8" in str(err)
