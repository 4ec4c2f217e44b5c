"""Relation templates: built-ins, JSON overrides and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kp4sr.errors import ConfigError, DataError
from kp4sr.templates import (
    RELATION_TEMPLATES,
    check_template,
    generic_template,
    load_relation_templates,
    mpp_templates,
    resolve_mpp_templates,
    resolve_relation_templates,
)
from kp4sr.toy import generate

FREEBASE_FILM = [
    "film.actor", "actor.film", "film.character", "character.film", "film.written_by",
    "writer.film", "film.directed_by", "director.film", "film.person", "person.film",
    "genre", "films_of_genre", "release_year", "films_of_year",
]  # fmt: skip
BOOKS = Path(__file__).resolve().parents[2] / "shared/datasets/kp4sr-books-partial"


def assert_sentence(template: str) -> None:
    assert template.count("[X]") == 1 and template.count("[Y]") == 1, template


def test_toy_relations_have_templates():
    relations = generate(seed=0, n_users=5, n_items=20).kg.relations
    assert len(relations) >= 4
    table = resolve_relation_templates(relations)
    assert list(table) == relations
    for r in relations:
        assert_sentence(table[r])


@pytest.mark.parametrize("relation", FREEBASE_FILM)
def test_freebase_film_relations_have_templates(relation):
    assert_sentence(resolve_relation_templates([relation])[relation])


def test_specific_sentences():
    t = resolve_relation_templates(["genre", "films_of_genre", "film.directed_by"])
    assert t["genre"] == "The genre of [X] is [Y]."
    assert t["films_of_genre"] == "[X] films include [Y]."
    assert t["film.directed_by"] == "[X] is directed by [Y]."


def test_book_relations_have_templates():
    path = BOOKS / "relation2template.json"
    if not path.is_file():
        pytest.skip("kp4sr-books-partial not present")
    relations = list(json.loads(path.read_text(encoding="utf-8")))
    assert len(relations) == 16
    table = resolve_relation_templates(relations)
    for r in relations:
        assert_sentence(table[r])
    # the release's own file is a valid override file too
    assert set(load_relation_templates(path)) == set(relations)


def test_every_builtin_template_is_valid():
    for r, t in RELATION_TEMPLATES.items():
        assert check_template(r, t) == t


def write_json(tmp_path: Path, content) -> Path:
    path = tmp_path / "templates.json"
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text, encoding="utf-8")
    return path


def test_json_override(tmp_path):
    path = write_json(tmp_path, {"genre": "[X] is a [Y] film.", "my.rel": "[Y] likes [X]."})
    overrides = load_relation_templates(path)
    table = resolve_relation_templates(["genre", "my.rel", "directed_by"], overrides)
    assert table == {
        "genre": "[X] is a [Y] film.",
        "my.rel": "[Y] likes [X].",
        "directed_by": RELATION_TEMPLATES["directed_by"],
    }
    assert RELATION_TEMPLATES["genre"] == "The genre of [X] is [Y]."  # built-ins untouched


@pytest.mark.parametrize(
    "template", ["The genre is [Y].", "The genre of [X].", "[X] [X] [Y]", "", 3, None]
)
def test_template_without_both_ends_is_a_data_error(tmp_path, template):
    path = write_json(tmp_path, {"genre": template})
    with pytest.raises(DataError) as info:
        load_relation_templates(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert "genre" in str(info.value)


@pytest.mark.parametrize("text", ['{"genre": "The genre of [X] is [Y]."', "not json", '["a"]'])
def test_invalid_json_is_a_data_error(tmp_path, text):
    path = write_json(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_relation_templates(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_relation_templates(tmp_path / "nope.json")
    assert "nope.json" in str(info.value)


def test_directory_instead_of_file_is_a_data_error(tmp_path):
    """Regression: an IsADirectoryError used to escape as a traceback."""
    with pytest.raises(DataError, match=str(tmp_path)):
        load_relation_templates(tmp_path)


def test_unknown_relation_is_a_config_error_naming_it():
    with pytest.raises(ConfigError) as info:
        resolve_relation_templates(["genre", "film.film.mood", "zzz_rel"])
    assert "film.film.mood" in str(info.value)
    assert "zzz_rel" in str(info.value)
    assert "genre," not in str(info.value)


def test_generic_templates():
    table = resolve_relation_templates(["genre", "film.film.place_of_shooting"], allow_generic=True)
    assert table["genre"] == RELATION_TEMPLATES["genre"]
    sentence = table["film.film.place_of_shooting"]
    assert_sentence(sentence)
    assert sentence == "The place of shooting of [X] is [Y]."
    assert generic_template("a.b.c_d") == "The c d of [X] is [Y]."


def test_mpp_templates():
    for domain in ("movie", "book", "music", "item"):
        ts = mpp_templates(domain)
        assert len(ts) >= 2
        for t in ts:
            assert t.count("{history}") == 1 and t.count("{mask}") == 1 and "{user}" in t
    assert mpp_templates("podcasts") == mpp_templates("item")


def test_mpp_template_choices(tmp_path):
    """``--mpp-templates``: all of the domain's, only the evaluation one, or a user's list."""
    assert resolve_mpp_templates("movie", "all") == mpp_templates("movie")
    assert resolve_mpp_templates("movie", "first") == mpp_templates("movie")[:1]
    mine = ["{user} : {history} -> {mask}", "history {history} ; next {mask}"]
    f = tmp_path / "mpp.json"
    f.write_text(json.dumps(mine))
    assert resolve_mpp_templates("movie", str(f)) == mine


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"a": 1}', "non-empty JSON list"),
        ("[]", "non-empty JSON list"),
        ('["{history} without a mask"]', "must be text with {mask}"),
        ('["{history} {mask} {title}"]', "must be text with {mask}"),
        ('["no history, only {mask}"]', "{history} and {mask} once each"),
        ('["{history} {history} {mask}"]', "{history} and {mask} once each"),
        ('["{history} {mask}",', "not a readable UTF-8 JSON file"),
    ],
)
def test_mpp_template_file_errors_name_the_file(tmp_path, content, expected):
    f = tmp_path / "mpp.json"
    f.write_text(content)
    with pytest.raises(DataError, match=expected) as e:
        resolve_mpp_templates("movie", str(f))
    assert "mpp.json" in str(e.value)


def test_unknown_mpp_template_choice_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="all | first"):
        resolve_mpp_templates("movie", str(tmp_path / "missing.json"))


def test_first_mpp_template_trains_on_the_evaluation_prompt_only(tmp_path):
    """With ``first`` every training prompt uses the evaluation template; the tokenizer is the
    same as with ``all`` (so one run can warm-start the other); a user's template file is
    saved in the run folder and need not exist when the run is loaded again."""
    import numpy as np

    from kp4sr.recommender import KP4SR, Config

    data = generate(seed=1, n_users=30, n_items=20)
    opts = dict(max_length=48, degree=2, vocab_size=300, knowledge=False)
    both = KP4SR.create(Config(**opts), dataset=data)
    first = KP4SR.create(Config(mpp_templates="first", **opts), dataset=data)
    assert len(both.builder.mpp_templates) > 1
    assert first.builder.mpp_templates == both.builder.mpp_templates[:1]
    assert first.tokenizer.get_vocab() == both.tokenizer.get_vocab()
    hist = [np.array([0, 1, 2])] * 8
    rngs = [np.random.default_rng(i) for i in range(8)]
    fixed = first.builder.build_batch(["7"] * 8, hist).input_ids
    assert np.array_equal(first.builder.build_batch(["7"] * 8, hist, rngs).input_ids, fixed)
    drawn = both.builder.build_batch(["7"] * 8, hist, rngs).input_ids  # several templates
    assert drawn.shape != fixed.shape or not np.array_equal(drawn, fixed)

    f = tmp_path / "mpp.json"
    f.write_text(json.dumps(["{user} saw {history} then {mask}"]))
    mine = KP4SR.create(Config(mpp_templates=str(f), **opts), dataset=data)
    mine.save_pretrained(tmp_path / "run")
    f.unlink()
    again = KP4SR.from_pretrained(tmp_path / "run")
    assert again.builder.mpp_templates == ["{user} saw {history} then {mask}"]
    assert again.builder.mpp_text("7", np.array([0, 1]), 0).startswith("7 saw ")
