"""The embedded default dataset: a small generated movie world where the KG carries signal.

Users favour genres and directors, and tend to watch a film series in order, so a model that
reads the knowledge graph (``genre``, ``directed_by``, ``next_in_series``, ...) can beat one that
only sees item ids. A mild Zipf-like popularity skew makes "most popular" a real but weak
baseline. Everything comes from ``numpy.random.default_rng(seed)``: no files, no global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kp4sr.data import Dataset, KnowledgeGraph, item_key
from kp4sr.errors import ConfigError

GENRES = ("comedy", "drama", "horror", "sci-fi", "romance", "thriller", "animation", "western")
N_DIRECTORS = 25
MIN_ITEMS = 10
SEQ_LEN = (8, 25)
P_SERIES = 0.6  # take the next film of a series when there is one
P_DIRECTOR = 0.5  # else a film by a favoured director ...
P_GENRE = 0.4  # ... else one of a favoured genre, else (the rest, 0.1) any film
P_DIRECTOR_HOME = 0.7  # a film's first genre is its director's usual genre
ZIPF_EXPONENT = 0.8

_SYLLABLES = (
    "ka", "lo", "mi", "ra", "ven", "dor", "sa", "ti", "bel", "mar",
    "no", "ri", "es", "tan", "vi", "ol", "gra", "hen", "lu", "zet",
)  # fmt: skip
_ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Broken", "Golden", "Frozen", "Distant", "Restless",
    "Burning", "Hollow", "Midnight", "Electric", "Quiet", "Wild", "Lost", "Endless",
    "Scarlet", "Velvet", "Savage", "Gentle", "Iron", "Paper", "Secret", "Bitter",
    "Shining", "Falling", "Northern", "Forgotten", "Wandering", "Last",
)  # fmt: skip
_NOUNS = (
    "Harbor", "Garden", "Machine", "Kingdom", "Promise", "Shadow", "River", "Station",
    "Empire", "Letter", "Mirror", "Highway", "Orchard", "Signal", "Frontier", "Island",
    "Summer", "Ghost", "Engine", "Carnival", "Lighthouse", "Canyon", "Winter", "Voyage",
    "Citadel", "Horizon", "Circus", "Forest", "Tower", "Compass",
)  # fmt: skip
_NUMERALS = ("", " II", " III", " IV")


@dataclass(frozen=True)
class _World:
    """The generated catalogue: per item its genres, director and series successor (-1: none)."""

    titles: list[str]
    genres: list[list[int]]
    director: np.ndarray  # int64 [n_items]
    next_item: np.ndarray  # int64 [n_items], -1 where the film has no sequel
    director_names: list[str]
    popularity: np.ndarray  # float64 [n_items], Zipf-like weights
    genre_matrix: np.ndarray  # bool [n_items, n_genres]


def _director_names(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct made-up names "Kalo Venmira" built from syllables."""
    names: list[str] = []
    while len(names) < n:
        first = "".join(rng.choice(_SYLLABLES, size=2)).capitalize()
        last = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        name = f"{first} {last}"
        if name not in names:
            names.append(name)
    return names


def _base_titles(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct "The <Adjective> <Noun>" titles (numbered once the word pairs run out)."""
    pairs = [f"The {a} {b}" for a in _ADJECTIVES for b in _NOUNS]
    order = rng.permutation(len(pairs))
    titles = []
    for k in range(n):
        lap = k // len(pairs)
        titles.append(pairs[order[k % len(pairs)]] + (f" {lap + 1}" if lap else ""))
    return titles


def _series(rng: np.random.Generator, n_items: int) -> list[list[int]]:
    """About a third of the items, in random chunks of 2-4 films (in viewing order)."""
    order = rng.permutation(n_items).tolist()
    budget = max(2, n_items // 3)
    groups: list[list[int]] = []
    pos = 0
    while budget - pos >= 2:
        size = min(int(rng.integers(2, 5)), budget - pos)
        groups.append(order[pos : pos + size])
        pos += size
    return groups


def _world(rng: np.random.Generator, n_items: int) -> _World:
    """Directors with a usual genre, films with 1-2 genres, series sharing director and genres."""
    n_genres = len(GENRES)
    director_names = _director_names(rng, N_DIRECTORS)
    home_genre = rng.integers(0, n_genres, size=N_DIRECTORS)
    director = rng.integers(0, N_DIRECTORS, size=n_items).astype(np.int64)
    genres: list[list[int]] = []
    for i in range(n_items):
        first = (
            int(home_genre[director[i]])
            if rng.random() < P_DIRECTOR_HOME
            else int(rng.integers(n_genres))
        )
        gs = [first]
        if rng.random() < 0.5:
            second = int(rng.integers(n_genres))
            if second != first:
                gs.append(second)
        genres.append(gs)
    next_item = np.full(n_items, -1, dtype=np.int64)
    titles = _base_titles(rng, n_items)
    for group in _series(rng, n_items):
        head = group[0]
        for k, item in enumerate(group):
            director[item] = director[head]
            genres[item] = list(genres[head])
            titles[item] = titles[head] + _NUMERALS[k]
            if k + 1 < len(group):
                next_item[item] = group[k + 1]
    ranks = rng.permutation(n_items)
    popularity = 1.0 / (ranks + 1.0) ** ZIPF_EXPONENT
    matrix = np.zeros((n_items, n_genres), dtype=bool)
    for i, gs in enumerate(genres):
        matrix[i, gs] = True
    return _World(titles, genres, director, next_item, director_names, popularity, matrix)


def _pick(rng: np.random.Generator, weights: np.ndarray, allowed: np.ndarray) -> int | None:
    """A popularity-weighted draw among the allowed items (None when none is allowed)."""
    w = np.cumsum(weights * allowed)
    if w[-1] <= 0:
        return None
    return int(np.searchsorted(w, rng.random() * w[-1], side="right"))


def _user_sequence(rng: np.random.Generator, world: _World, length: int) -> np.ndarray:
    """One user's viewing history: series continued in order, favoured directors and genres."""
    n_items = len(world.titles)
    n_genres = len(GENRES)
    fav_genres = rng.choice(n_genres, size=int(rng.integers(1, 3)), replace=False)
    in_genre = world.genre_matrix[:, fav_genres].any(axis=1)
    # directors whose films are mostly in a favoured genre are likelier favourites
    affinity = np.bincount(world.director[in_genre], minlength=N_DIRECTORS) + 0.5
    fav_dirs = rng.choice(
        N_DIRECTORS, size=int(rng.integers(1, 3)), replace=False, p=affinity / affinity.sum()
    )
    by_director = np.isin(world.director, fav_dirs)
    anything = np.ones(n_items, dtype=bool)
    unseen = np.ones(n_items, dtype=bool)
    first = _pick(rng, world.popularity, in_genre) if in_genre.any() else None
    seq = [first if first is not None else _pick(rng, world.popularity, anything)]
    unseen[seq[0]] = False
    while len(seq) < length:
        sequel = int(world.next_item[seq[-1]])
        if sequel >= 0 and unseen[sequel] and rng.random() < P_SERIES:
            item: int | None = sequel
        else:
            r = rng.random()
            pool = (
                by_director
                if r < P_DIRECTOR
                else in_genre
                if r < P_DIRECTOR + P_GENRE
                else anything
            )
            item = _pick(rng, world.popularity, pool & unseen)
            if item is None:
                item = _pick(rng, world.popularity, unseen)
            if item is None:  # every film seen: a repeat is the only choice
                item = _pick(rng, world.popularity, pool if pool.any() else anything)
        assert item is not None
        seq.append(item)
        unseen[item] = False
    return np.asarray(seq, dtype=np.int64)


def _kg(world: _World, items: list[str]) -> KnowledgeGraph:
    """Genre, director and series triples, each with its inverse, named for prompts."""
    triples: list[tuple[str, str, str]] = []
    names: dict[str, str | None] = {}
    for i, raw in enumerate(items):
        key = item_key(raw)
        names[key] = world.titles[i]
        for g in world.genres[i]:
            genre = f"genre:{GENRES[g]}"
            names[genre] = GENRES[g]
            triples += [(key, "genre", genre), (genre, "films_of_genre", key)]
        d = int(world.director[i])
        director = f"director:{d + 1}"
        names[director] = world.director_names[d]
        triples += [(key, "directed_by", director), (director, "films_directed", key)]
        nxt = int(world.next_item[i])
        if nxt >= 0:
            other = item_key(items[nxt])
            triples += [(key, "next_in_series", other), (other, "previous_in_series", key)]
    return KnowledgeGraph.from_triples(triples, names)


def generate(seed: int = 0, n_users: int = 300, n_items: int = 200) -> Dataset:
    """The toy movie dataset, identical for identical arguments (see the module docstring)."""
    if n_users < 1:
        raise ConfigError(f"the toy dataset needs at least 1 user, got {n_users}")
    if n_items < MIN_ITEMS:
        raise ConfigError(f"the toy dataset needs at least {MIN_ITEMS} items, got {n_items}")
    rng = np.random.default_rng(seed)
    world = _world(rng, n_items)
    items = [str(i + 1) for i in range(n_items)]
    lengths = rng.integers(SEQ_LEN[0], SEQ_LEN[1] + 1, size=n_users)
    sequences = [_user_sequence(rng, world, int(n)) for n in lengths]
    return Dataset(
        name="toy",
        domain="movie",
        users=[str(u + 1) for u in range(n_users)],
        items=items,
        titles=list(world.titles),
        sequences=sequences,
        kg=_kg(world, items),
    )
