"""Bad input gives one clear line naming the file, the line and what was expected — or, where
leaving data out is the policy, a counted and logged skip. Never a traceback, never a silent
drop, never unpickled or evaluated user data.

The fuzz tests (tests/test_fuzz.py) check that no input crashes; these check what the user reads
for the cases a first hour on one's own data runs into, and that a damaged run folder is named.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kp4sr.cli import main
from kp4sr.data import Dataset, leave_one_out
from kp4sr.errors import DataError, KP4SRError
from kp4sr.formats.amazon import load_amazon_reviews
from kp4sr.formats.freebase import load_triples_tsv, stream_ntriples
from kp4sr.formats.kp4sr_release import load_kp4sr_release
from kp4sr.loaders import load_generic, load_kb4rec_kg, load_movielens_100k
from kp4sr.templates import load_relation_templates

SRC = Path(__file__).resolve().parents[1] / "src" / "kp4sr"
FLAGS = "|".join(["0"] * 5 + ["1"] + ["0"] * 13)


def write_ml100k(folder: Path, u_data: str) -> Path:
    """A minimal ML-100K folder (u.item with three movies, the standard genres)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text(u_data)
    rows = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{FLAGS}" for i in (1, 2, 3)]
    (folder / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1")
    return folder


# --------------------------------------------------------------------------- the example


def test_cli_names_u_data_line_3_and_the_expected_format(tmp_path: Path) -> None:
    """`kp4sr train --dataset ml-100k --data-dir DIR`, line 3 of u.data has two fields."""
    data = write_ml100k(tmp_path / "DIR", "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t3\n")
    env = {**os.environ, "KP4SR_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "kp4sr.cli", "train", "--dataset", "ml-100k"]
        + ["--data-dir", str(data), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode != 0
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in out.stderr
    line = lines[0]
    assert "u.data" in line and "line 3" in line
    assert "expected 4 tab-separated fields (user id, item id, rating, timestamp)" in line
    assert "found 2" in line
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- what users read


def _error(call) -> DataError:
    with pytest.raises(KP4SRError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, DataError)
    return info.value


def ml100k_case(tmp_path: Path, u_data: bytes) -> DataError:
    folder = write_ml100k(tmp_path, "")
    (folder / "u.data").write_bytes(u_data)
    return _error(lambda: load_movielens_100k(folder))


@pytest.mark.parametrize(
    ("u_data", "line", "expected"),
    [
        (b"1\t1\t5\t1\nx\t1\t5\t2\n", 2, "expected an integer user id, found 'x'"),
        (b"1\t1\t5\t1\n1\t9\t5\t2\n", 2, "item 9 is not in u.item"),
        (b"1\t1\t5\t1\n1\t2\t\xff\t2\n", 2, "not valid utf-8"),
        (b"1\t1\t5\t1\n1\t2\tfive\t2\n", 2, "expected a numeric rating, found 'five'"),
        (b"1\t1\t5\t1\n1\t2\t5\t99999999999999999999\n", 2, "does not fit in 64 bits"),
        (b"1\t1\t5\t1\n\n1\t2\t\t3\n", 3, "empty field 'rating'"),
        (b"", None, "no interactions"),
        (b"\n  \n", None, "no interactions"),
    ],
)
def test_ml100k_u_data_errors(tmp_path: Path, u_data: bytes, line, expected: str) -> None:
    e = ml100k_case(tmp_path, u_data)
    assert e.path is not None and e.path.endswith("u.data")
    assert e.line == line and expected in str(e), str(e)


def test_ml100k_u_item_duplicate_and_missing(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path, "1\t1\t5\t1\n")
    rows = (folder / "u.item").read_text(encoding="latin-1").splitlines()
    (folder / "u.item").write_text("\n".join(rows + rows[:1]) + "\n", encoding="latin-1")
    e = _error(lambda: load_movielens_100k(folder))
    assert e.path.endswith("u.item") and e.line == 4 and "item id 1 appears twice" in str(e)
    (folder / "u.item").unlink()
    e = _error(lambda: load_movielens_100k(folder))
    assert "missing u.item" in str(e)


def write_generic(folder: Path, interactions: str, name: str = "interactions.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(interactions)
    return folder


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("user,item\nu1,i1\n", 1, "missing column 'timestamp': expected one of timestamp, time"),
        ("", 1, "empty file: a header line is required"),
        ("user,item,timestamp\n", None, "no interactions"),
        ("user,item,timestamp\nu1,i1,1\nu1,i2\n", 3, "expected 3 fields as in the header, found 2"),
        ("user,item,timestamp\nu1,i1,1\nu1,,2\n", 3, "empty item"),
        ("user,item,timestamp\nu1,i1,yesterday\n", 2, "ISO-8601"),
        ("user,item,timestamp\nu1,i1,1\nu1,i2,2024-01-01\n", 3, "mixes an ISO date"),
        ('user,item,timestamp\nu1,"i1,1\nu2,i2,2\n', 2, "expected 3 fields as in the header"),
    ],
)
def test_generic_errors(tmp_path: Path, text: str, line, expected: str) -> None:
    e = _error(lambda: load_generic(write_generic(tmp_path / "d", text)))
    assert e.path.endswith("interactions.csv")
    assert expected in str(e), str(e)
    if line is not None:
        assert e.line == line


def test_empty_kg_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "triples.tsv").write_text("head\trelation\ttail\n")
    e = _error(lambda: load_kb4rec_kg(tmp_path, ["1"]))
    assert e.path.endswith("triples.tsv") and "no triples" in str(e)
    e = _error(lambda: load_triples_tsv(tmp_path / "triples.tsv"))
    assert "no triples" in str(e)


def test_kg_line_with_two_fields(tmp_path: Path) -> None:
    (tmp_path / "triples.tsv").write_text("1\tgenre\tg\n1\tgenre\n")
    e = _error(lambda: load_kb4rec_kg(tmp_path, ["1"]))
    assert e.line == 2 and "expected 3 tab-separated fields (head, relation, tail)" in str(e)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"reviewerID": "A", "asin": "B", "unixReviewTime": "--5"}', "'unixReviewTime'"),
        ('{"reviewerID": "A", "asin": "B", "unixReviewTime": 1e400}', "'unixReviewTime'"),
        ('{"reviewerID": "A", "asin": "B", "unixReviewTime": ' + "9" * 30 + "}", "64-bit"),
        ('{"reviewerID": "A", "asin": "B", "unixReviewTime": "\u00b2"}', "'unixReviewTime'"),
        ('{"reviewerID": "A", "asin": "B"}', "missing key 'unixReviewTime'"),
        ("[1, 2]", "found a list"),
        ("{'asin': __import__('os').system('touch PWNED')}", "neither a JSON object"),
    ],
)
def test_amazon_errors(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "reviews.json"
    good = '{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n'
    path.write_text(good + line + "\n")
    e = _error(lambda: load_amazon_reviews(path))
    assert e.line == 2 and expected in str(e), str(e)
    assert not list(tmp_path.glob("PWNED")) and not Path("PWNED").exists()


def write_release(folder: Path, sequences: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_data.txt").write_text(sequences)
    maps = {"user2id": {"A": "1", "B": "2"}, "item2id": {"x": "1", "y": "2"}}
    maps["id2item"] = {"1": "x", "2": "y", "3": "z"}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    return folder


def test_release_duplicate_user_unknown_item_and_template(tmp_path: Path) -> None:
    e = _error(lambda: load_kp4sr_release(write_release(tmp_path / "a", "1 1 2\n1 2\n")))
    assert e.line == 2 and "user 1 appears twice (first on line 1)" in str(e)
    e = _error(lambda: load_kp4sr_release(write_release(tmp_path / "b", "1 1 7\n")))
    assert e.line == 1 and "item id 7 is not in id2item" in str(e)
    folder = write_release(tmp_path / "c", "1 1 2\n")
    (folder / "relation2template.json").write_text('{"film.genre": "The genre is [Y]."}')
    e = _error(lambda: load_kp4sr_release(folder))
    assert e.path.endswith("relation2template.json") and "[X] and [Y]" in str(e)


def test_release_pickle_is_never_opened(tmp_path: Path, caplog) -> None:
    folder = write_release(tmp_path / "r", "1 1 2\n")
    (folder / "user_id2name.pkl").write_bytes(b"cos\nsystem\n(S'touch PWNED'\ntR.")
    with caplog.at_level(logging.WARNING):
        load_kp4sr_release(folder)
    assert "unpickling" in caplog.text and not (folder / "PWNED").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"genre": "The genre of [X] is comedy."}', "'genre' must contain [X] and [Y]"),
        ('{"genre": "[X] [X] [Y]"}', "once each"),
        ('{"genre": 3}', "must contain [X] and [Y]"),
        ('["[X] is [Y]"]', "expected a JSON object"),
        ('{"genre": "[X] is [Y]."', "not valid UTF-8 JSON"),
        ("[" * 100000, "not"),
    ],
)
def test_user_template_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "my-templates.json"
    path.write_text(text)
    e = _error(lambda: load_relation_templates(path))
    assert e.path.endswith("my-templates.json") and expected in str(e), str(e)


def test_cli_template_without_y(tmp_path: Path, capsys) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"genre": "The genre of [X]."}')
    args = ["train", "--dataset", "toy", "--out", str(tmp_path / "run"), "--templates", str(path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "t.json" in err[-1] and "[X] and [Y]" in err[-1] and "Traceback" not in "".join(err)


def test_freebase_lone_surrogate_name_is_counted_not_crashing(tmp_path: Path) -> None:
    ns = "http://rdf.freebase.com/ns/"
    dump = tmp_path / "dump.nt"
    dump.write_text(
        f"<{ns}m.a> <{ns}film.film.genre> <{ns}m.b> .\n"
        f'<{ns}m.b> <{ns}type.object.name> "Bad \\uD800 name"@en .\n'
    )
    triples, names, skipped = stream_ntriples(dump, {"m.a"}, hop=1)
    assert triples == [("m.a", "film.film.genre", "m.b")]
    assert "m.b" not in names and skipped["malformed_names"] == 1
    e = _error(lambda: stream_ntriples(dump, {"m.a"}, hop=1, strict=True))
    assert e.line == 2 and "malformed name literal" in str(e)


# --------------------------------------------------------------------------- counted skips


def test_skips_are_counted_and_logged(tmp_path: Path, caplog) -> None:
    """Rows left out on purpose are counted in ``skipped`` and logged as one warning."""
    folder = write_generic(
        tmp_path / "g", "user,item,timestamp\nu1,i1,1\nu1,i2,2\nu1,i3,3\nu2,i1,1\n"
    )
    (folder / "items.csv").write_text("item,title\ni1,One\ni9,Never rated\ni1,Again\n")
    with caplog.at_level(logging.WARNING):
        ds = load_generic(folder)
    assert ds.skipped == {"items_without_interactions": 1, "item_rows_without_id_or_repeated": 1}
    assert "skipped 1 items without interactions, 1 item rows without id or repeated" in (
        caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        split = leave_one_out(ds)
    assert split.skipped_users == 1 and len(split.test) == 1
    assert "skipped 1 users with fewer than 3 interactions" in caplog.text


def test_unrated_items_are_counted_and_logged(tmp_path: Path, caplog) -> None:
    folder = write_ml100k(tmp_path, "1\t1\t5\t1\n1\t2\t3\t2\n")  # movie 3 is never rated
    with caplog.at_level(logging.WARNING):
        ds = load_movielens_100k(folder)
    assert ds.items == ["1", "2"]
    assert re.search(r"u\.item: skipped 1 items without interactions", caplog.text)
    folder = write_release(tmp_path / "r", "1 1 2\n")  # id2item's item 3 is in no sequence
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_kp4sr_release(folder)
    assert "datamaps.json: skipped 1 items without interactions" in caplog.text


# --------------------------------------------------------------------------- no pickle, no eval


def test_nothing_is_unpickled_or_evaluated() -> None:
    """No module reads pickles or evaluates text: only JSON, safetensors and literal parsing."""
    # the names are joined from pieces so that this test's own source is no hit for scanners
    pkl, tload = "pick" + "le", r"torch\." + "load"
    banned = re.compile(
        rf"\bimport {pkl}\b|\b{pkl}\.|\b{tload}\(|allow_{pkl}\s*=\s*True"
        r"|(?<![\w.])eval\(|(?<![\w.])exec\(|weights_only\s*=\s*False|\bmarshal\.|\bshelve\b|\byaml\.load\("
    )
    hits = [
        f"{p.name}:{n}: {line.strip()}"
        for p in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if banned.search(line)
    ]
    assert hits == []


# --------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> tuple[Path, Dataset]:
    """An untrained tiny run folder (weights, tokenizer, snapshot): enough to test loading."""
    from kp4sr import toy
    from kp4sr.recommender import KP4SR, Config

    ds = toy.generate(seed=1, n_users=20, n_items=15)
    folder = tmp_path_factory.mktemp("run")
    rec = KP4SR.create(Config(max_length=64, degree=2, vocab_size=300, beams=3), dataset=ds)
    rec.save_pretrained(folder)
    return folder, ds


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    "truncated weights": (
        lambda d: _truncate(d / "model" / "model.safetensors"),
        "model.safetensors: corrupted safetensors file",
    ),
    "missing weights file": (
        lambda d: (d / "model" / "model.safetensors").unlink(),
        "model.safetensors: missing from the run folder",
    ),
    "model config narrower than the weights": (
        lambda d: _edit_json(d / "model" / "config.json", lambda c: c.update(d_model=64)),
        "model/config.json: d_model is 64 but model.safetensors holds 128",
    ),
    "model config deeper than the weights": (
        lambda d: _edit_json(d / "model" / "config.json", lambda c: c.update(num_layers=3)),
        "model/config.json: num_layers is 3 but model.safetensors holds 2",
    ),
    "feed-forward size changed": (
        lambda d: _edit_json(d / "model" / "config.json", lambda c: c.update(d_ff=64)),
        "model: weights whose shape differs from config.json: decoder.block.0.layer.2",
    ),
    "broken model config": (
        lambda d: _truncate(d / "model" / "config.json"),
        "config.json, line",
    ),
    "option of the wrong type": (
        lambda d: _edit_json(d / "config.json", lambda c: c.update(max_length="long")),
        "config.json: option 'max_length' must be int, found 'long'",
    ),
    "unknown option": (
        lambda d: _edit_json(d / "config.json", lambda c: c.update(colour="red")),
        "config.json: unknown option(s) 'colour'",
    ),
    "item tokens flipped": (
        lambda d: _edit_json(d / "config.json", lambda c: c.update(item_tokens="digits")),
        "config.json: item_tokens is 'digits' but the tokenizer has one token per item",
    ),
    "truncated config": (lambda d: _truncate(d / "config.json"), "config.json, line"),
    "item numbers repeated": (
        lambda d: _edit_json(d / "items.json", lambda c: c["numbers"].__setitem__(0, 2)),
        "items.json: item numbers must be 1..",
    ),
    "template without [X]": (
        lambda d: _edit_json(
            d / "templates.json", lambda c: c["relations"].update(genre="It is [Y].")
        ),
        "templates.json: template of relation 'genre' must contain [X] and [Y]",
    ),
    "truncated dataset arrays": (
        lambda d: _truncate(d / "dataset.safetensors"),
        "dataset.safetensors: corrupted safetensors file",
    ),
    "snapshot with fewer entities than its triples": (
        lambda d: _edit_json(
            d / "dataset.json",
            lambda c: c.update(kg_entities=c["kg_entities"][:2], kg_names=c["kg_names"][:2]),
        ),
        "dataset.safetensors: array 'kg_heads' holds indices outside 0..1",
    ),
    "tokenizer file emptied": (
        lambda d: (d / "tokenizer" / "tokenizer.json").write_text("{}"),
        "tokenizer: cannot load the tokenizer",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_damaged_run_folder_is_one_line_naming_the_file(
    case: str, run_folder, tmp_path: Path, capsys
) -> None:
    src, ds = run_folder
    folder = tmp_path / "run"
    shutil.copytree(src, folder)
    damage, expected = CORRUPTIONS[case]
    damage(folder)
    assert main(["recommend", str(folder), "--user", ds.users[0], "-k", "3"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("kp4sr: error: ") and str(folder) in lines[0]
    assert expected in lines[0], lines[0]


def test_undamaged_run_folder_loads(run_folder, capsys) -> None:
    src, ds = run_folder
    assert main(["recommend", str(src), "--user", ds.users[0], "-k", "3", "--json"]) == 0
    assert 1 <= len(json.loads(capsys.readouterr().out)) <= 3
