"""Prompt templates: masked personalized prompts (MPP) per domain and one sentence per KG relation.

A relation template is a sentence with ``[X]`` (the head) and ``[Y]`` (the tail), as in KP4SR's
``relation2template.json``. Built-in templates cover every relation of the shipped datasets; a
user JSON file ``{"relation": "The genre of [X] is [Y]."}`` overrides or extends them.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

from kp4sr.errors import ConfigError, DataError

# MPP templates: ``{user}`` is the user's ID text, ``{history}`` the items' ID texts joined by
# " , ", ``{mask}`` the tokenizer's mask token. The first template of a domain is the one used
# in evaluation; training draws one at random per sample.
MPP_TEMPLATES: dict[str, list[str]] = {
    "movie": [
        "User {user} has watched {history} , and is going to watch {mask} next .",
        "Given the movies {history} that user {user} watched in order , the next movie is {mask} .",
        "User {user} watched {history} in this order . Next , the user will watch {mask} .",
        "After watching {history} , user {user} chooses {mask} as the next movie .",
    ],
    "book": [
        "User {user} has read {history} , and is going to read {mask} next .",
        "Given the books {history} that user {user} read in order , the next book is {mask} .",
        "User {user} read {history} in this order . Next , the user will read {mask} .",
        "After reading {history} , user {user} chooses {mask} as the next book .",
    ],
    "music": [
        "User {user} has listened to {history} , and is going to listen to {mask} next .",
        "Given the music {history} that user {user} played in order , the next one is {mask} .",
        "User {user} listened to {history} in this order . Next , the user plays {mask} .",
        "After listening to {history} , user {user} chooses {mask} next .",
    ],
    "item": [
        "User {user} has interacted with {history} , and is going to choose {mask} next .",
        "Given the items {history} that user {user} chose in order , the next item is {mask} .",
        "User {user} chose {history} in this order . Next , the user will choose {mask} .",
        "After choosing {history} , user {user} picks {mask} as the next item .",
    ],
}

HISTORY_SEPARATOR = " , "

RELATION_TEMPLATES: dict[str, str] = {
    # toy dataset
    "genre": "The genre of [X] is [Y].",
    "films_of_genre": "[X] films include [Y].",
    "directed_by": "[X] is directed by [Y].",
    "films_directed": "[X] directed [Y].",
    "next_in_series": "The next film in the series of [X] is [Y].",
    "previous_in_series": "The previous film in the series of [X] is [Y].",
    # MovieLens metadata
    "release_year": "[X] was released in [Y].",
    "films_of_year": "Films released in [X] include [Y].",
    # Freebase film relations (KB4Rec ML-100k subgraph)
    "film.actor": "[Y] acts in [X].",
    "actor.film": "[X] acts in [Y].",
    "film.character": "[Y] is a character in [X].",
    "character.film": "[X] is a character in [Y].",
    "film.written_by": "[X] is written by [Y].",
    "writer.film": "[X] wrote [Y].",
    "film.directed_by": "[X] is directed by [Y].",
    "director.film": "[X] directed [Y].",
    "film.person": "[Y] worked on [X].",
    "person.film": "[X] worked on [Y].",
    # Freebase book relations (the KP4SR release's relation2template.json, same meaning)
    "book.written_work.author": "The author of [X] is [Y].",
    "book.written_work.previous_in_series": "The previous book in the series of [X] is [Y].",
    "book.written_work.original_language": "The original language of [X] is [Y].",
    "book.book_subject.works": "Books on the subject [X] include [Y].",
    "book.author.works_written": "[X] wrote [Y].",
    "book.written_work.subjects": "The subject of [X] is [Y].",
    "book.book.genre": "The genre of [X] is [Y].",
    "media_common.adapted_work.adaptations": "[X] was adapted to [Y].",
    "book.book.characters": "The characters in [X] include [Y].",
    "book.book_character.appears_in_book": "[X] appears in [Y].",
    "book.written_work.next_in_series": "The next book in the series of [X] is [Y].",
    "book.written_work.part_of_series": "[X] is part of the series [Y].",
    "media_common.adaptation.adapted_from": "[X] is adapted from [Y].",
    "book.literary_series.works_in_this_series": "Works in the literary series [X] include [Y].",
    "media_common.literary_genre.books_in_this_genre": "Books of the genre [X] include [Y].",
    "book.publishing_company.books_published": "[X] published [Y].",
    # Freebase music relations (KB4Rec LFM-1b linkage; music.* schema of the Freebase dump)
    "music.artist.genre": "The genre of [X] is [Y].",
    "music.genre.artists": "Artists of the genre [X] include [Y].",
    "music.artist.origin": "[X] comes from [Y].",
    "music.artist.label": "[X] is signed to the record label [Y].",
    "music.record_label.artist": "The record label [X] has signed [Y].",
    "music.artist.active_start": "[X] started performing in [Y].",
    "music.artist.active_end": "[X] stopped performing in [Y].",
    "music.musical_group.member": "The members of the band [X] include [Y].",
    "music.group_member.membership": "[X] is a member of [Y].",
    "music.artist.album": "[X] released the album [Y].",
    "music.album.artist": "The album [X] is by [Y].",
    "music.album.genre": "The genre of the album [X] is [Y].",
    "music.album.release_type": "The album [X] is released as [Y].",
    "music.recording.artist": "The recording [X] is performed by [Y].",
    "music.artist.track": "[X] recorded the track [Y].",
    "music.recording.releases": "The recording [X] appears on [Y].",
    "music.release.track": "The release [X] contains the track [Y].",
    "music.album.releases": "The album [X] was released as [Y].",
    "music.composition.composer": "The song [X] was composed by [Y].",
    "music.composer.compositions": "[X] composed [Y].",
    "people.person.nationality": "The nationality of [X] is [Y].",
    "people.person.place_of_birth": "[X] was born in [Y].",
}

GENERIC_TEMPLATE = "The {relation} of [X] is [Y]."
MPP_FIELDS = frozenset({"user", "history", "mask"})
MPP_CHOICES = ("all", "first")


def check_template(relation: str, template: str, path: str | Path | None = None) -> str:
    """A relation template must name both ends, once each, or the prompt would drop one."""
    if not isinstance(template, str) or template.count("[X]") != 1 or template.count("[Y]") != 1:
        raise DataError(
            f"template of relation {relation!r} must contain [X] and [Y] once each, "
            f"got {template!r}",
            path,
        )
    return template


def load_relation_templates(path: str | Path) -> dict[str, str]:
    """Read a user JSON file ``{relation: template}``; every template is validated."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("template file not found", path) from None
    except OSError as e:
        raise DataError(f"cannot read ({e.strerror or e})", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise DataError(f"not valid UTF-8 JSON ({e.__class__.__name__}: {e})", path, line) from None
    except RecursionError:
        raise DataError("not a template file: JSON nested too deeply", path) from None
    if not isinstance(raw, dict):
        raise DataError('expected a JSON object {"relation": "sentence with [X] and [Y]"}', path)
    return {str(r): check_template(str(r), t, path) for r, t in raw.items()}


def generic_template(relation: str) -> str:
    """Fallback sentence for a relation without a template: its last dotted part, in words."""
    words = relation.rsplit(".", 1)[-1].replace("_", " ")
    return GENERIC_TEMPLATE.format(relation=words)


def resolve_relation_templates(
    relations: Iterable[str],
    overrides: dict[str, str] | None = None,
    allow_generic: bool = False,
) -> dict[str, str]:
    """One template per relation of the KG: the user's, else the built-in one.

    A relation with neither is an error naming it, unless ``allow_generic``
    (``--generic-templates``) asks for :func:`generic_template`.
    """
    table = dict(RELATION_TEMPLATES)
    table.update(overrides or {})
    out: dict[str, str] = {}
    missing: list[str] = []
    for r in relations:
        if r in table:
            out[r] = table[r]
        elif allow_generic:
            out[r] = generic_template(r)
        else:
            missing.append(r)
    if missing:
        raise ConfigError(
            f"no template for relation(s) {', '.join(sorted(missing))}: give them in a JSON file "
            "with --templates FILE, or pass --generic-templates to use "
            "'The <relation> of [X] is [Y].'"
        )
    return out


def mpp_templates(domain: str) -> list[str]:
    """The MPP templates of a domain (``item`` for unknown domains)."""
    return MPP_TEMPLATES.get(domain, MPP_TEMPLATES["item"])


def check_mpp_template(template: object, path: str | Path | None = None) -> str:
    """An MPP template fills ``{user}``, ``{history}`` and ``{mask}``, and nothing else."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}  # type: ignore[arg-type]
    except (ValueError, TypeError):
        names = None
    if names is None or not names <= MPP_FIELDS or "mask" not in names:
        raise DataError(
            "an MPP template must be text with {mask} and only {user}, {history}, {mask} "
            f"as fields, found {template!r}",
            path,
        )
    return str(template)


def resolve_mpp_templates(domain: str, choice: str) -> list[str]:
    """The MPP templates a run uses (``--mpp-templates``); the first is the evaluation one.

    ``all``: the domain's set, one drawn per training sample (the paper's augmentation).
    ``first``: only the evaluation template, so training prompts look exactly like test
    prompts. Anything else is a JSON file holding a list of templates.
    """
    if choice == "all":
        return list(mpp_templates(domain))
    if choice == "first":
        return mpp_templates(domain)[:1]
    path = Path(choice)
    if not path.is_file():
        raise ConfigError(
            f"--mpp-templates is {choice!r}: expected {' | '.join(MPP_CHOICES)} or a JSON file "
            "with a list of templates"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        line = getattr(e, "lineno", None)
        raise DataError(
            f"not a readable UTF-8 JSON file ({e.__class__.__name__})", path, line
        ) from None
    if not isinstance(raw, list) or not raw:
        raise DataError(
            'expected a non-empty JSON list of MPP templates, e.g. ["User {user} '
            'has watched {history} , and is going to watch {mask} next ."]',
            path,
        )
    out = [check_mpp_template(t, path) for t in raw]
    for t in out:
        if t.count("{history}") != 1 or t.count("{mask}") != 1:
            raise DataError(
                f"an MPP template needs {{history}} and {{mask}} once each: {t!r}", path
            )
    return out
