"""Shared fixtures: a tiny hand-made movie world (dataset, KG, tokenizer, item codes, prompts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from kp4sr.data import Dataset, KnowledgeGraph, item_key
from kp4sr.prompts import PromptBuilder, PromptConfig
from kp4sr.templates import MPP_TEMPLATES, mpp_templates, resolve_relation_templates
from kp4sr.tokenization import ItemCodes, train_tokenizer

# Raw item ids, their titles and the numbers written in prompts (note "12" is a prefix of "123").
TINY_ITEMS = ["a", "b", "c", "d", "e"]
TINY_TITLES = [
    "Silent Harbor",
    "Silent Harbor II",
    "Crimson Garden",
    "Hidden Machine",
    "Golden Owl",
]
TINY_TEXTS = ["12", "7", "123", "45", "3"]

ENTITY_NAMES = {
    "genre:comedy": "comedy",
    "genre:drama": "drama",
    "genre:horror": "horror",
    "director:1": "Kalo Venmira",
    "director:2": "Sati Belmar",
}

TINY_TRIPLES = [
    ("item:a", "genre", "genre:comedy"),
    ("genre:comedy", "films_of_genre", "item:a"),
    ("item:a", "genre", "genre:drama"),
    ("genre:drama", "films_of_genre", "item:a"),
    ("item:a", "directed_by", "director:1"),
    ("director:1", "films_directed", "item:a"),
    ("item:a", "next_in_series", "item:b"),
    ("item:b", "previous_in_series", "item:a"),
    ("item:b", "genre", "genre:comedy"),
    ("genre:comedy", "films_of_genre", "item:b"),
    ("item:b", "directed_by", "director:1"),
    ("director:1", "films_directed", "item:b"),
    ("item:c", "genre", "genre:horror"),
    ("genre:horror", "films_of_genre", "item:c"),
    ("item:c", "directed_by", "director:2"),
    ("director:2", "films_directed", "item:c"),
    ("item:d", "genre", "genre:drama"),
    ("genre:drama", "films_of_genre", "item:d"),
]


@dataclass
class World:
    """Everything a PromptBuilder needs, for one small dataset."""

    dataset: Dataset
    texts: list[str]
    tokenizer: object
    codes: ItemCodes
    relation_templates: dict[str, str]

    def builder(self, kg: KnowledgeGraph | None = None, **config) -> PromptBuilder:
        kg = self.dataset.kg if kg is None else kg
        templates = resolve_relation_templates(kg.relations)
        return PromptBuilder(
            self.tokenizer,
            self.texts,
            self.codes,
            self.dataset.items,
            kg,
            templates,
            mpp_templates(self.dataset.domain),
            PromptConfig(**config),
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def random_tree(rng: np.random.Generator, length: int = 40) -> tuple:
    """A made-up batch for the tree mask: (node_of_token [B, L], parents [B, N]) of 1-3 random
    trees of any depth and shape, each node's tokens scattered anywhere, then padding."""
    import torch

    from kp4sr.tree_mask import PAD_NODE

    b, n_nodes = int(rng.integers(1, 4)), int(rng.integers(1, 30))
    parents = torch.full((b, n_nodes), -1, dtype=torch.long)
    node = torch.full((b, length), PAD_NODE, dtype=torch.long)
    for k in range(b):
        for n in range(1, n_nodes):
            parents[k, n] = int(rng.integers(0, n))
        real = int(rng.integers(1, length + 1))
        node[k, :real] = torch.from_numpy(rng.integers(0, n_nodes, real))
    return node, parents


def tokenizer_corpus(extra: list[str]) -> list[str]:
    """Prompt-like sentences for training a small tokenizer."""
    corpus = [t.replace("{", " ").replace("}", " ") for ts in MPP_TEMPLATES.values() for t in ts]
    corpus += [
        "The genre of 12 is comedy. 7 is directed by Kalo Venmira. drama films include 45.",
        "The next film in the series of [X] is [Y]. The previous film in the series of 7 is 12.",
        "Sati Belmar directed 123. horror films include 123. Books on the subject include.",
        "0 1 2 3 4 5 6 7 8 9 , .",
    ]
    return corpus + extra


def make_world(
    items: list[str],
    titles: list[str],
    texts: list[str],
    triples: list[tuple[str, str, str]],
    names: dict[str, str],
) -> World:
    item_names = {item_key(x): t for x, t in zip(items, titles)}
    kg = KnowledgeGraph.from_triples(triples, {**names, **item_names})
    ds = Dataset(
        name="tiny",
        domain="movie",
        users=["u1"],
        items=list(items),
        titles=list(titles),
        sequences=[np.arange(len(items), dtype=np.int64)],
        kg=kg,
    )
    tok = train_tokenizer(tokenizer_corpus(list(titles) + list(names.values())), [], 400)
    codes = ItemCodes.build(tok, texts)
    return World(ds, list(texts), tok, codes, resolve_relation_templates(kg.relations))


@pytest.fixture(scope="session")
def tiny_world() -> World:
    return make_world(TINY_ITEMS, TINY_TITLES, TINY_TEXTS, TINY_TRIPLES, ENTITY_NAMES)


@pytest.fixture(scope="session")
def world_factory():
    return make_world


@pytest.fixture(autouse=True, scope="session")
def _private_dataset_cache(tmp_path_factory):
    """Tests never read or write the user's dataset cache (~/.cache/kp4sr)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("KP4SR_CACHE", str(tmp_path_factory.mktemp("kp4sr-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test models run faster on one thread, and two processes of two threads each on a
    2-core machine slow each other down many times over (OpenMP threads spin while waiting)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
