"""Masked personalized prompts, knowledge prompts, the fused prompt's tree, and collate."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from kp4sr.data import KnowledgeGraph
from kp4sr.prompts import Adjacency, FusedPrompt, collate
from kp4sr.tree_mask import PAD_NODE, ROOT, ROOT_PARENT, encoder_mask

USER = "42"
HISTORY = np.array([0, 1])  # items a ("12") then b ("7"), b is the most recent

# Hand-written templates of the relations used here (the spec's sentences).
TEMPLATES = {
    "genre": "The genre of [X] is [Y].",
    "films_of_genre": "[X] films include [Y].",
    "directed_by": "[X] is directed by [Y].",
    "films_directed": "[X] directed [Y].",
    "next_in_series": "The next film in the series of [X] is [Y].",
    "previous_in_series": "The previous film in the series of [X] is [Y].",
}

# The whole expected knowledge of HISTORY in evaluation mode (hop 2, degree 8), breadth first:
# most recent item first, relations round-robin in first-appearance order, 2-hop never back.
EXPECTED_FACTS = [  # (node id, parent node id, sentence)
    (3, 2, "The genre of 7 is comedy."),
    (4, 2, "7 is directed by Kalo Venmira."),
    (5, 2, "The previous film in the series of 7 is 12."),
    (6, 1, "The genre of 12 is comedy."),
    (7, 1, "12 is directed by Kalo Venmira."),
    (8, 1, "The next film in the series of 12 is 7."),
    (9, 1, "The genre of 12 is drama."),
    (10, 3, "comedy films include 12."),
    (11, 4, "Kalo Venmira directed 12."),
    (12, 5, "The genre of 12 is comedy."),
    (13, 5, "12 is directed by Kalo Venmira."),
    (14, 5, "The genre of 12 is drama."),
    (15, 6, "comedy films include 7."),
    (16, 7, "Kalo Venmira directed 7."),
    (17, 8, "The genre of 7 is comedy."),
    (18, 8, "7 is directed by Kalo Venmira."),
    (19, 9, "drama films include 45."),
]


def norm(text: str) -> str:
    return "".join(text.lower().split())


def span_ids(p: FusedPrompt, node: int) -> list[int]:
    s, e = p.spans[node]
    return p.input_ids[s:e].tolist()


def check_tree(p: FusedPrompt) -> None:
    """Structural invariants of any fused prompt."""
    assert p.parents[ROOT] == ROOT_PARENT
    assert len(p.nodes) == len(p.parents) == len(p.spans)
    assert (p.parents[1:] < np.arange(1, len(p.parents))).all()
    assert (p.parents[1:] >= 0).all()
    assert len(p.node_of_token) == len(p.input_ids)
    for n in range(1, len(p.parents)):
        s, e = p.spans[n]
        assert e > s
        assert (p.node_of_token[s:e] == n).all()
        assert (p.node_of_token == n).sum() == e - s  # a node is one contiguous span


@pytest.fixture(scope="module")
def builder(tiny_world):
    return tiny_world.builder()


@pytest.fixture(scope="module")
def prompt(builder):
    return builder.build(USER, HISTORY)


# ----------------------------------------------------------------------------- MPP


def test_mpp_text_is_the_template_with_item_ids(tiny_world, builder, prompt):
    text = "User 42 has watched 12 , 7 , and is going to watch <mask> next ."
    assert builder.mpp_text(USER, HISTORY, 0) == text
    mpp_end = prompt.spans[ROOT][1]
    assert prompt.spans[ROOT][0] == 0
    assert prompt.input_ids[:mpp_end].tolist() == tiny_world.encode(text)
    decoded = tiny_world.tokenizer.decode(prompt.input_ids[:mpp_end])
    assert norm(decoded) == norm(text)
    assert prompt.input_ids[-1] == tiny_world.tokenizer.eos_token_id
    assert prompt.node_of_token[-1] == ROOT
    assert (prompt.node_of_token[:mpp_end] <= len(HISTORY)).all()


def test_item_spans_in_the_mpp_are_the_item_ids(tiny_world, prompt):
    mpp_end = prompt.spans[ROOT][1]
    for k, item in enumerate(HISTORY, start=1):
        assert prompt.nodes[k] == ("item", int(item))
        assert prompt.parents[k] == ROOT
        s, e = prompt.spans[k]
        assert e <= mpp_end
        assert span_ids(prompt, k) == tiny_world.codes.of(int(item)).tolist()
        decoded = tiny_world.tokenizer.decode(prompt.input_ids[s:e])
        assert norm(decoded) == tiny_world.texts[item]


# ----------------------------------------------------------------------------- knowledge


def test_knowledge_prompts_by_hand(tiny_world, prompt):
    check_tree(prompt)
    assert len(prompt.parents) == 1 + len(HISTORY) + len(EXPECTED_FACTS)
    for node, parent, sentence in EXPECTED_FACTS:
        assert prompt.parents[node] == parent, (node, sentence)
        assert prompt.nodes[node][0] == "fact"
        assert span_ids(prompt, node) == tiny_world.encode(sentence), (node, sentence)
        decoded = tiny_world.tokenizer.decode(span_ids(prompt, node))
        assert norm(decoded) == norm(sentence)
    # facts follow the MPP, then the final </s>
    first_fact = prompt.spans[EXPECTED_FACTS[0][0]][0]
    assert first_fact == prompt.spans[ROOT][1]
    assert prompt.spans[EXPECTED_FACTS[-1][0]][1] == len(prompt.input_ids) - 1


def test_fact_nodes_match_templates(tiny_world, builder, prompt):
    kg = tiny_world.dataset.kg
    item_of = {f"item:{x}": tiny_world.texts[i] for i, x in enumerate(tiny_world.dataset.items)}
    for node in range(1 + len(HISTORY), len(prompt.nodes)):
        _, h, r, t = prompt.nodes[node]
        head, tail = kg.entities[h], kg.entities[t]
        x = item_of.get(head, kg.names[h])  # items by their ID, never their title
        y = item_of.get(tail, kg.names[t])
        sentence = TEMPLATES[kg.relations[r]].replace("[X]", x).replace("[Y]", y)
        assert builder.fact_text(h, r, t) == sentence
        assert span_ids(prompt, node) == tiny_world.encode(sentence)


def test_titles_never_appear(tiny_world, prompt):
    text = tiny_world.tokenizer.decode(prompt.input_ids).lower()
    for word in ("silent", "harbor", "crimson", "garden"):
        assert word not in text


def test_item_tail_is_written_by_its_id(tiny_world, builder):
    kg = tiny_world.dataset.kg
    a, b = kg.entities.index("item:a"), kg.entities.index("item:b")
    r = kg.relations.index("next_in_series")
    assert builder.entity_text(b) == "7"
    assert builder.fact_text(a, r, b) == "The next film in the series of 12 is 7."
    g = kg.entities.index("genre:comedy")
    assert builder.entity_text(g) == "comedy"


def test_two_hop_parent_is_its_one_hop_fact_and_never_back(prompt):
    n_items = len(HISTORY)
    two_hop = 0
    for node in range(1 + n_items, len(prompt.nodes)):
        parent = int(prompt.parents[node])
        if parent <= n_items:
            continue
        two_hop += 1
        _, h, _, t = prompt.nodes[node]
        _, ph, _, pt = prompt.nodes[parent]
        assert h == pt  # expanded from the parent fact's tail
        assert t != ph  # never the edge straight back to the head
    assert two_hop == 10


def test_hop_one_has_no_two_hop_facts(tiny_world):
    p = tiny_world.builder(hop=1).build(USER, HISTORY)
    check_tree(p)
    assert all(int(x) in (1, 2) for x in p.parents[3:])
    assert len(p.parents) == 3 + 7


def test_item_without_entity_gets_no_facts(tiny_world, builder):
    p = builder.build(USER, np.array([4]))  # item e has no KG entity
    assert len(p.parents) == 2
    assert len(p.input_ids) == p.spans[ROOT][1] + 1


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_degree_caps_edges_per_entity(tiny_world, degree):
    for rng in (None, np.random.default_rng(degree)):
        p = tiny_world.builder(degree=degree).build(USER, HISTORY, rng=rng)
        check_tree(p)
        children = Counter(p.parents[1 + len(HISTORY) :].tolist())
        assert all(c <= degree for c in children.values())
        if degree:
            # both items have at least 3 edges: each gets exactly `degree` facts
            assert children[1] == degree and children[2] == degree
        else:
            assert len(p.parents) == 1 + len(HISTORY)


def round_robin_kg() -> KnowledgeGraph:
    """Item a: five genre edges stored first, then one directed_by edge."""
    genres = ["comedy", "drama", "horror", "western", "romance"]
    triples = [("item:a", "genre", f"genre:{g}") for g in genres]
    triples.append(("item:a", "directed_by", "director:1"))
    names = {f"genre:{g}": g for g in genres} | {"director:1": "Kalo Venmira"}
    return KnowledgeGraph.from_triples(triples, names)


def relations_of_item_a(p: FusedPrompt, kg: KnowledgeGraph) -> list[str]:
    return [kg.relations[n[2]] for n, par in zip(p.nodes, p.parents) if par == 1]


def test_round_robin_over_relations_in_eval_mode(tiny_world):
    kg = round_robin_kg()
    builder = tiny_world.builder(kg=kg, degree=2, hop=1)
    p = builder.build(USER, np.array([0]))
    assert sorted(relations_of_item_a(p, kg)) == ["directed_by", "genre"]
    # the genre taken is the first stored one
    first_genre = [n for n in p.nodes if n[0] == "fact" and kg.relations[n[2]] == "genre"]
    assert kg.entities[first_genre[0][3]] == "genre:comedy"


def test_round_robin_over_relations_in_training_mode(tiny_world):
    kg = round_robin_kg()
    builder = tiny_world.builder(kg=kg, degree=2, hop=1)
    for seed in range(20):
        p = builder.build(USER, np.array([0]), rng=np.random.default_rng(seed))
        assert sorted(relations_of_item_a(p, kg)) == ["directed_by", "genre"]


def test_eval_mode_is_deterministic(tiny_world):
    p1 = tiny_world.builder(degree=2).build(USER, HISTORY)
    p2 = tiny_world.builder(degree=2).build(USER, HISTORY)
    np.testing.assert_array_equal(p1.input_ids, p2.input_ids)
    np.testing.assert_array_equal(p1.node_of_token, p2.node_of_token)
    np.testing.assert_array_equal(p1.parents, p2.parents)
    assert p1.nodes == p2.nodes


def test_training_mode_varies_with_the_seed(tiny_world):
    kg = round_robin_kg()
    builder = tiny_world.builder(kg=kg, degree=2, hop=1)
    picks, mpp_texts = set(), set()
    for seed in range(30):
        p = builder.build(USER, np.array([0]), rng=np.random.default_rng(seed))
        check_tree(p)
        picks.add(frozenset(n for n in p.nodes if n[0] == "fact"))
        mpp_texts.add(tuple(p.input_ids[: p.spans[ROOT][1]].tolist()))
    assert len(picks) > 1  # different genre edges drawn
    assert len(mpp_texts) > 1  # different MPP templates drawn
    # the same seed gives the same sample
    a = builder.build(USER, np.array([0]), rng=np.random.default_rng(7))
    b = builder.build(USER, np.array([0]), rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.input_ids, b.input_ids)


def test_explicit_template(tiny_world, builder):
    p = builder.build(USER, HISTORY, template=2)
    text = "User 42 watched 12 , 7 in this order . Next , the user will watch <mask> ."
    assert builder.mpp_text(USER, HISTORY, 2) == text
    assert p.input_ids[: p.spans[ROOT][1]].tolist() == tiny_world.encode(text)


# ----------------------------------------------------------------------------- truncation


def test_max_length_drops_whole_facts_in_breadth_first_order(tiny_world):
    full = tiny_world.builder(max_length=10_000).build(USER, HISTORY)
    mpp_end = int(full.spans[ROOT][1])
    n_fixed = 1 + len(HISTORY)
    fact_lengths = np.diff(full.spans[n_fixed:], axis=1)[:, 0]
    assert len(full.input_ids) == mpp_end + fact_lengths.sum() + 1
    for max_length in range(mpp_end + 1, len(full.input_ids) + 2):
        p = tiny_world.builder(max_length=max_length).build(USER, HISTORY)
        check_tree(p)
        assert len(p.input_ids) <= max_length
        # the longest prefix (breadth first) of the facts that fits
        kept = int(np.searchsorted(np.cumsum(fact_lengths), max_length - mpp_end - 1, "right"))
        assert len(p.nodes) == n_fixed + kept, max_length
        assert p.nodes == full.nodes[: n_fixed + kept]
        np.testing.assert_array_equal(p.parents, full.parents[: n_fixed + kept])
        # no fact whose parent was dropped
        assert (p.parents < len(p.parents)).all()
        # MPP and </s> intact, each kept fact complete
        np.testing.assert_array_equal(p.input_ids[:mpp_end], full.input_ids[:mpp_end])
        assert p.input_ids[-1] == tiny_world.tokenizer.eos_token_id
        for node in range(n_fixed, len(p.nodes)):
            assert span_ids(p, node) == span_ids(full, node)
        np.testing.assert_array_equal(
            p.input_ids,
            full.input_ids[: len(p.input_ids) - 1].tolist() + [tiny_world.tokenizer.eos_token_id],
        )


def test_max_length_below_the_mpp_keeps_the_mpp(tiny_world):
    full = tiny_world.builder().build(USER, HISTORY)
    mpp_end = int(full.spans[ROOT][1])
    p = tiny_world.builder(max_length=5).build(USER, HISTORY)
    assert len(p.nodes) == 1 + len(HISTORY)
    np.testing.assert_array_equal(p.input_ids[:-1], full.input_ids[:mpp_end])


def test_without_knowledge_only_the_mpp(tiny_world):
    full = tiny_world.builder().build(USER, HISTORY)
    mpp_end = int(full.spans[ROOT][1])
    for p in (
        tiny_world.builder(knowledge=False).build(USER, HISTORY),
        tiny_world.builder(hop=0).build(USER, HISTORY),
    ):
        check_tree(p)
        assert p.nodes == [("root",), ("item", 0), ("item", 1)]
        assert p.input_ids.tolist() == full.input_ids[:mpp_end].tolist() + [
            tiny_world.tokenizer.eos_token_id
        ]


# ----------------------------------------------------------------------------- collate


def test_collate_pads(tiny_world, builder):
    long = builder.build(USER, HISTORY)
    short = tiny_world.builder(knowledge=False).build(USER, np.array([2]))
    targets = [
        np.append(tiny_world.codes.of(2), tiny_world.tokenizer.eos_token_id),  # "123": 3 + 1
        np.append(tiny_world.codes.of(4), tiny_world.tokenizer.eos_token_id),  # "3": 1 + 1
    ]
    pad = tiny_world.tokenizer.pad_token_id
    batch = collate([short, long], pad, targets)
    n_short, n_long = len(short.input_ids), len(long.input_ids)
    assert n_short < n_long
    assert batch.input_ids.shape == (2, n_long)
    assert batch.node_of_token.shape == (2, n_long)
    assert batch.parents.shape == (2, len(long.parents))
    assert batch.input_ids[1].tolist() == long.input_ids.tolist()
    assert batch.input_ids[0, :n_short].tolist() == short.input_ids.tolist()
    assert (batch.input_ids[0, n_short:] == pad).all()
    assert batch.node_of_token[0, :n_short].tolist() == short.node_of_token.tolist()
    assert (batch.node_of_token[0, n_short:] == PAD_NODE).all()
    assert batch.parents[0, : len(short.parents)].tolist() == short.parents.tolist()
    assert batch.labels.shape == (2, 4)
    assert batch.labels[0].tolist() == targets[0].tolist()
    assert batch.labels[1, :2].tolist() == targets[1].tolist()
    assert batch.labels[1, 2:].tolist() == [-100, -100]
    assert collate([short], pad).labels is None


# ----------------------------------------------------------------------------- Adjacency


def random_kg(rng: np.random.Generator) -> KnowledgeGraph:
    n_ent, n_rel = int(rng.integers(2, 8)), int(rng.integers(1, 4))
    n = int(rng.integers(0, 40))
    triples = [
        (f"e{rng.integers(n_ent)}", f"r{rng.integers(n_rel)}", f"e{rng.integers(n_ent)}")
        for _ in range(n)
    ]
    return KnowledgeGraph.from_triples(triples, {})


def reference_order(kg: KnowledgeGraph, e: int) -> list[tuple[int, int]]:
    """Round-robin by relation index: the first edge of every relation, then the second, ..."""
    by_rel: dict[int, list[int]] = {}
    for h, r, t in zip(kg.heads.tolist(), kg.rels.tolist(), kg.tails.tolist()):
        if h == e:
            by_rel.setdefault(r, []).append(t)
    out = []
    for rank in range(max((len(v) for v in by_rel.values()), default=0)):
        for r in sorted(by_rel):
            if rank < len(by_rel[r]):
                out.append((r, by_rel[r][rank]))
    return out


@pytest.mark.parametrize("seed", range(25))
def test_adjacency_matches_reference(seed):
    rng = np.random.default_rng(seed)
    kg = random_kg(rng)
    adj = Adjacency(kg)
    assert adj.indptr[-1] == kg.num_triples
    for e in range(len(kg.entities)):
        ref = reference_order(kg, e)
        lo, hi = adj.indptr[e], adj.indptr[e + 1]
        assert list(zip(adj.rel[lo:hi].tolist(), adj.tail[lo:hi].tolist())) == ref
        for degree in (0, 1, 2, 5):
            for exclude in (-1, int(rng.integers(len(kg.entities)))):
                allowed = [x for x in ref if x[1] != exclude]
                got = adj.edges(e, degree, exclude, None)
                assert [(int(adj.rel[i]), int(adj.tail[i])) for i in got] == allowed[:degree]
                # training mode: a round-robin draw of the allowed edges
                got = adj.edges(e, degree, exclude, np.random.default_rng(seed))
                picked = [(int(adj.rel[i]), int(adj.tail[i])) for i in got]
                assert len(set(got.tolist())) == len(got) == min(degree, len(allowed))
                assert all(lo <= i < hi for i in got)
                assert Counter(picked) <= Counter(allowed)
                counts = Counter(r for r, _ in picked)
                available = Counter(r for r, _ in allowed)
                most = max(counts.values(), default=0)
                for r, n in available.items():
                    if counts[r] < n:  # a relation not exhausted is at most one round behind
                        assert counts[r] >= most - 1, (picked, allowed)


def test_empty_history_is_only_the_mpp(tiny_world, builder):
    p = builder.build(USER, np.array([], dtype=np.int64))
    check_tree(p)
    assert p.nodes == [("root",)]
    assert p.input_ids[-1] == tiny_world.tokenizer.eos_token_id


def test_built_prompt_under_the_tree_mask(prompt):
    """End to end: the mask of a real fused prompt isolates knowledge as the spec says."""
    vis = encoder_mask(
        torch.from_numpy(prompt.node_of_token)[None], torch.from_numpy(prompt.parents)[None]
    )[0, 0].numpy()
    node = prompt.node_of_token
    words = node == ROOT
    facts_of = {
        k: np.isin(node, [n for n in range(3, 10) if prompt.parents[n] == k]) for k in (1, 2)
    }
    assert words.sum() > 0 and facts_of[1].any() and facts_of[2].any()
    facts = node > len(HISTORY)
    assert not vis[np.ix_(words, facts)].any() and not vis[np.ix_(facts, words)].any()
    for k in (1, 2):
        assert vis[np.ix_(node == k, facts_of[k])].all()  # an item's ID sees its own facts
        other = 3 - k
        assert not vis[np.ix_(node == k, facts_of[other])].any()
    assert not vis[np.ix_(facts_of[1], facts_of[2])].any()
    assert vis[np.ix_(words, node <= len(HISTORY))].all()  # MPP words see the item IDs
