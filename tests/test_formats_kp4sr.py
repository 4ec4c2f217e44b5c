"""The KP4SR authors' release format: a synthetic folder, its errors, and the real partial files."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from kp4sr.errors import ConfigError, DataError
from kp4sr.formats.kp4sr_release import dataset_domain, load_kp4sr_release
from kp4sr.templates import resolve_relation_templates


def shared_datasets() -> Path:
    """The real datasets folder, or skip: they are never copied into the project."""
    env = os.environ.get("KP4SR_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if not root.is_dir():
        pytest.skip(f"real datasets not found at {root} (set KP4SR_DATA to the shared folder)")
    return root


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


@pytest.fixture
def release(tmp_path: Path) -> Path:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("1 1 2 3\n2 3 1\n\n3 2 4\n", encoding="utf-8")
    write_json(
        folder / "datamaps.json",
        {
            "user2id": {"A1": "1", "A2": "2", "A3": "3"},
            "item2id": {"B001": "1", "B002": "2", "B003": "3", "B004": "4", "B005": "5"},
            "id2item": {"1": "B001", "2": "B002", "3": "B003", "4": "B004", "5": "B005"},
        },
    )
    write_json(
        folder / "item2entity.json",
        {"B001": "m.01", "B002": "m.02", "B003": "m.03", "B999": "m.99"},
    )
    write_json(
        folder / "entity2text.json",
        {"m.01": "Dune", "m.02": "Emma", "m.03": "Ulysses", "m.h": "Frank Herbert"},
    )
    write_json(
        folder / "triple2dict.json",
        {
            "m.01": {"book.written_work.author": ["m.h"], "book.book.genre": ["m.nameless"]},
            "m.h": {"book.author.works_written": ["m.01"]},
        },
    )
    write_json(folder / "relation2template.json", {"book.written_work.author": "[Y] wrote [X]."})
    return folder


def test_loads_a_release_folder(release: Path, caplog) -> None:
    with caplog.at_level(logging.INFO):
        ds, templates = load_kp4sr_release(release)
    assert ds.name == "books" and ds.domain == "book"
    assert ds.users == ["1", "2", "3"]
    assert ds.items == ["B001", "B002", "B003", "B004"]  # raw ids of used items, mapped order
    assert [s.tolist() for s in ds.sequences] == [[0, 1, 2], [2, 0], [1, 3]]
    assert ds.titles == ["Dune", "Emma", "Ulysses", None]
    assert set(ds.kg.triples()) == {
        ("item:B001", "book.written_work.author", "m.h"),
        ("m.h", "book.author.works_written", "item:B001"),
    }
    assert ds.kg.name_map()["m.h"] == "Frank Herbert"
    assert ds.skipped == {"links_of_unknown_items": 1, "triples_with_nameless_entity": 1}
    assert templates == {"book.written_work.author": "[Y] wrote [X]."}
    resolved = resolve_relation_templates(ds.kg.relations, overrides=templates)
    assert resolved["book.written_work.author"] == "[Y] wrote [X]."
    assert "keyed by raw item ids" in caplog.text


def test_item2entity_keyed_by_mapped_ids_and_nameless_id(release: Path) -> None:
    write_json(release / "item2entity.json", {"1": "/m/01", "2": "m.02"})
    ds, _ = load_kp4sr_release(release, nameless="id")
    assert ("item:B001", "book.book.genre", "m.nameless") in set(ds.kg.triples())
    assert ds.titles[:2] == ["Dune", "Emma"]
    with pytest.raises(ConfigError):
        load_kp4sr_release(release, nameless="drop")


def test_pickle_is_never_loaded(release: Path, caplog) -> None:
    (release / "user_id2name.pkl").write_bytes(b"not even a pickle")
    with caplog.at_level(logging.WARNING):
        load_kp4sr_release(release)
    assert "user_id2name.pkl: not loaded" in caplog.text
    assert "user_descriptions.json" in caplog.text
    write_json(release / "user_descriptions.json", {"1": "likes science fiction"})
    caplog.clear()
    with caplog.at_level(logging.INFO):
        load_kp4sr_release(release)
    assert "read 1 user descriptions" in caplog.text and "not loaded" not in caplog.text


def test_without_kg_files(release: Path) -> None:
    for name in ("item2entity.json", "entity2text.json", "triple2dict.json"):
        (release / name).unlink()
    (release / "relation2template.json").unlink()
    ds, templates = load_kp4sr_release(release)
    assert ds.kg.num_triples == 0 and templates == {} and ds.titles == [None] * 4


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("sequential_data.txt", "1 1 2\n2 3 x\n", r"sequential_data.txt, line 2: .*'x'"),
        ("sequential_data.txt", "1 1 2\n2 3 9\n", r"line 2: item id 9 is not in id2item"),
        ("sequential_data.txt", "1 1 2\n1 3\n", r"line 2: user 1 appears twice"),
        ("datamaps.json", '{"id2item": {\n"1": "B001",\n}', r"datamaps.json, line 3: not valid"),
        ("triple2dict.json", '{"m.01": ["m.h"]}', r"triple2dict.json: head 'm.01'"),
        ("relation2template.json", '{"r": "no slots"}', r"must contain \[X\] and \[Y\]"),
        ("item2entity.json", '{"zzz": "m.01"}', r"none of its keys"),
    ],
)
def test_malformed_files(release: Path, name: str, text: str, message: str) -> None:
    (release / name).write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_kp4sr_release(release)


@pytest.mark.parametrize("name", ["sequential_data.txt", "datamaps.json", "item2entity.json"])
def test_missing_required_file(release: Path, name: str) -> None:
    (release / name).unlink()
    with pytest.raises(DataError, match=f"missing {name}"):
        load_kp4sr_release(release)


def test_domain_from_folder_name() -> None:
    assert dataset_domain("amazon-books") == "book"
    assert dataset_domain("lfm1b") == "music"
    assert dataset_domain("ML-1M") == "movie"
    assert dataset_domain("beauty") == "item"


def test_real_partial_release_files(release: Path) -> None:
    real = shared_datasets() / "kp4sr-books-partial"
    links = json.loads((real / "item2entity.json").read_text(encoding="utf-8"))
    asins = sorted(links)[:5]
    (release / "sequential_data.txt").write_text("1 1 2 3 4 5\n", encoding="utf-8")
    write_json(
        release / "datamaps.json",
        {
            "item2id": {a: str(k) for k, a in enumerate(asins, 1)},
            "id2item": {str(k): a for k, a in enumerate(asins, 1)},
        },
    )
    (release / "item2entity.json").write_bytes((real / "item2entity.json").read_bytes())
    (release / "relation2template.json").write_bytes((real / "relation2template.json").read_bytes())
    write_json(release / "entity2text.json", {links[a]: f"Book {a}" for a in asins})
    ds, templates = load_kp4sr_release(release)
    assert ds.items == asins and ds.titles == [f"Book {a}" for a in asins]
    assert len(templates) == 16 and "book.written_work.author" in templates
