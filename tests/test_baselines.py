"""Behavioural tests every baseline must pass on small synthetic data with known answers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from kp4sr.baselines import (
    BASELINES,
    BaselineConfig,
    Pop,
    item_attributes,
    make_baseline,
    rank_scores,
    run_baseline,
)
from kp4sr.data import Dataset, KnowledgeGraph, item_key, leave_one_out
from kp4sr.errors import ConfigError
from kp4sr.evaluation import target_ranks


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def chain_dataset(n_users: int = 60, n_items: int = 12, length: int = 8, seed: int = 0) -> Dataset:
    """Every user walks the cycle i -> i+1 (mod n) from a random start: the next item is known."""
    rng = np.random.default_rng(seed)
    seqs = [(rng.integers(n_items) + np.arange(length)) % n_items for _ in range(n_users)]
    return Dataset(
        name="chain",
        domain="item",
        users=[str(u) for u in range(n_users)],
        items=[f"i{i}" for i in range(n_items)],
        titles=[None] * n_items,
        sequences=[s.astype(np.int64) for s in seqs],
    )


def test_rank_scores_orders_and_excludes_seen():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [1.0, 0.0, 0.2, 0.3]])
    top = rank_scores(scores, [np.array([1]), np.array([], dtype=np.int64)], k=3)
    np.testing.assert_array_equal(top, [[3, 2, 0], [0, 3, 2]])


def test_pop_ranks_by_training_counts():
    ds = Dataset(
        "p",
        "item",
        ["a", "b", "c"],
        ["x", "y", "z"],
        [None] * 3,
        [np.array([0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 2]), np.array([2, 1, 0])],
    )
    split = leave_one_out(ds, max_items=5)
    pop = Pop(3, 5, BaselineConfig())
    pop.fit(ds, split)
    # training targets: users a, b: positions 1, 2 -> items 1, 1; user c: none; first items 0, 0, 2
    np.testing.assert_array_equal(pop.counts, [2, 4, 1])
    assert np.argmax(pop.scores([np.array([0])])[0]) == 1


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "bert4rec"])
def test_neural_baselines_learn_a_deterministic_chain(name):
    ds = chain_dataset()
    split = leave_one_out(ds, max_items=3)
    cfg = BaselineConfig(
        dim=32,
        layers=1,
        heads=2,
        dropout=0.0,
        epochs=40,
        batch_size=64,
        lr=5e-3,
        patience=40,
        seed=0,
    )
    res = run_baseline(name, ds, split, 3, cfg)
    assert res["test"]["users"] == 60
    assert res["test"]["HR@5"] > 0.9, res["test"]  # random guessing gives ~5/12
    assert res["test"]["NDCG@10"] > 0.7
    # and it fits each user's last training target (the diagnostic of over/underfitting)
    assert res["train"]["users"] == 60 and res["train"]["HR@5"] > 0.9, res["train"]


def test_last_train_is_each_users_position_before_validation():
    ds = chain_dataset(n_items=30, length=10)
    split = leave_one_out(ds, max_items=3)
    last = split.last_train()
    assert [s.user for s in last] == [s.user for s in split.valid]
    assert all(t.position == v.position - 1 for t, v in zip(last, split.valid))


def test_neural_baselines_never_rank_seen_items():
    ds = chain_dataset(n_items=30, length=10)
    split = leave_one_out(ds, max_items=3)
    model = make_baseline("sasrec", 30, 3, BaselineConfig(dim=16, layers=1, epochs=1))
    sc = model.scores([s.history for s in split.test])
    seen = [ds.sequences[s.user][: s.position] for s in split.test]
    top = rank_scores(sc, seen, k=20)
    for row, items in zip(top, seen):
        assert not set(row.tolist()) & set(items.tolist())


def test_same_seed_same_result():
    ds = chain_dataset()
    split = leave_one_out(ds, max_items=3)
    cfg = BaselineConfig(dim=16, layers=1, epochs=2, seed=3)
    a = run_baseline("gru4rec", ds, split, 3, cfg)
    b = run_baseline("gru4rec", ds, split, 3, cfg)
    assert a["test"] == b["test"]


def test_unknown_baseline_is_a_config_error():
    assert set(BASELINES) == {"pop", "gru4rec", "sasrec", "bert4rec"}
    with pytest.raises(ConfigError, match="unknown baseline 'mf'"):
        make_baseline("mf", 3, 5, BaselineConfig())


@pytest.mark.parametrize("name", ["gru4rec", "sasrec", "bert4rec"])
def test_train_exclude_seen_drops_earlier_items_from_the_target_softmax(name):
    """``train_exclude_seen``: the target's softmax runs over the items the user had not had
    (by hand for the last-position models); it can only lower the loss, BERT4Rec's included."""
    ds = chain_dataset(n_items=30, length=10)
    split = leave_one_out(ds, max_items=3)
    model = make_baseline(name, 30, 3, BaselineConfig(dim=16, layers=1, dropout=0.0))
    model.net.eval()
    batch = [s for s in split.train if s.position > 3][:8]  # more seen than the window shows
    assert len(batch) == 8
    with torch.no_grad():
        plain = model._loss(batch, np.random.default_rng(0))
        got = model._loss(batch, np.random.default_rng(0), ds)
        assert got < plain
        if name == "bert4rec":
            return
        logits = model._last_logits([s.history for s in batch])
        for row, s in enumerate(batch):
            had = set(ds.sequences[s.user][: s.position].tolist()) - {s.target}
            logits[row, sorted(had)] = float("-inf")
        targets = torch.tensor([s.target for s in batch])
        torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, targets))


def test_sasrec_trained_without_seen_items_still_learns_the_chain():
    ds = chain_dataset()
    split = leave_one_out(ds, max_items=3)
    cfg = BaselineConfig(
        dim=32, layers=1, dropout=0.0, epochs=40, batch_size=64, lr=5e-3, patience=40
    )
    res = run_baseline("sasrec", ds, split, 3, replace(cfg, train_exclude_seen=True))
    assert res["test"]["HR@5"] > 0.9, res["test"]


def test_eval_max_items_ranks_from_the_last_items_only():
    """``eval_max_items = k``: a baseline ranks each user exactly as if the history held only
    its last k items; 0 reads the whole window."""
    ds = chain_dataset(n_items=30, length=10)
    split = leave_one_out(ds, max_items=4)
    model = make_baseline("sasrec", 30, 4, BaselineConfig(dim=16, layers=1, epochs=1))
    samples = split.test
    full = model.user_ranks(ds, samples)
    for k in (1, 2):
        model.config.eval_max_items = k
        cut = [replace(s, history=s.history[-k:]) for s in samples]
        model.config.eval_max_items, want = 0, model.user_ranks(ds, cut)
        model.config.eval_max_items = k
        assert np.array_equal(model.user_ranks(ds, samples), want)
    model.config.eval_max_items = 0
    assert np.array_equal(model.user_ranks(ds, samples), full)
    # the chain needs only the last item: reading one item loses nothing once it is learnt
    cfg = BaselineConfig(dim=32, layers=1, epochs=30, lr=5e-3, dropout=0.0)
    trained = make_baseline("sasrec", 30, 4, cfg)
    trained.fit(ds, split)
    trained.config.eval_max_items = 1
    assert (trained.user_ranks(ds, samples) == 0).mean() > 0.9


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_short_histories_score_finite_and_as_in_training(name):
    """A history shorter than the window (left-padded) scores finite values in evaluation, the
    same as in training mode without dropout. (Regression: SASRec's causal mask left every
    padding position with nothing to attend to, which PyTorch's inference path turns into NaN,
    so users with short histories were never ranked.)"""
    model = make_baseline(name, 30, 5, BaselineConfig(dim=16, dropout=0.0))
    histories = [np.arange(5), np.arange(2) + 7, np.array([3])]
    evaluated = model.scores(histories)
    assert np.isfinite(evaluated).all()
    model.net.train()
    with torch.no_grad():
        trained = model._last_logits(histories).numpy()
    assert np.allclose(evaluated, trained, atol=1e-5)


def test_eval_windows_ranks_by_the_mean_probability_over_the_last_windows():
    """``eval_windows``: a baseline scores each item by the log of its mean softmax probability
    over the last 1, 2, .., all items (computed here by hand); shorter histories average over
    fewer windows."""
    ds = chain_dataset(n_items=30, length=10)
    split = leave_one_out(ds, max_items=3)
    model = make_baseline("sasrec", 30, 3, BaselineConfig(dim=16, layers=1, epochs=1))
    hist = [np.array([4, 5, 6]), np.array([9])]

    def probs(h):
        return torch.softmax(torch.from_numpy(model.scores([h])[0]).double(), -1).numpy()

    want = [np.log(np.mean([probs(h[-k:]) for k in range(1, len(h) + 1)], 0)) for h in hist]
    assert np.allclose(model.window_scores(hist), np.stack(want), atol=1e-6)
    model.config.eval_windows = True
    got = model.user_ranks(ds, split.test)
    model.config.eval_windows = False
    seen = [ds.sequences[s.user][: s.position] for s in split.test]
    top = rank_scores(model.window_scores([s.history for s in split.test]), seen, 20)
    assert np.array_equal(got, target_ranks(top, np.array([s.target for s in split.test])))


def test_item_attributes_keeps_shared_tails_of_the_chosen_relations():
    """CSR of each item's KG tails: only tails two or more items share, only the relations
    asked for; an item without any keeps an empty row; unknown relations are refused."""
    ds = chain_dataset(n_items=4)
    triples = [
        (item_key("i0"), "genre", "g:a"),
        (item_key("i1"), "genre", "g:a"),
        (item_key("i1"), "genre", "g:b"),  # i1's alone: dropped
        (item_key("i2"), "director", "d:x"),
        (item_key("i3"), "director", "d:x"),
        ("d:x", "director.film", item_key("i2")),  # not an item's tail
    ]
    ds.kg = KnowledgeGraph.from_triples(triples, {})
    offsets, values, n = item_attributes(ds, "all")
    assert n == 2 and offsets.tolist() == [0, 1, 2, 3, 4]
    assert values[0] == values[1] != values[2] == values[3]
    offsets, values, n = item_attributes(ds, "genre")
    assert n == 1 and offsets.tolist() == [0, 1, 2, 2, 2] and values.tolist() == [0, 0]
    with pytest.raises(ConfigError, match="unknown relation.*year.*genre"):
        item_attributes(ds, "genre,year")


def test_item_knowledge_lets_sasrec_rank_items_never_seen_as_targets_by_their_kg_group():
    """Two groups of items, told apart only by the KG; users stay within one group. Two items
    of each group never occur in training, so their ID vectors learn nothing: with
    ``item_knowledge`` SASRec still ranks the unseen items of the user's group above those of
    the other group, as their shared KG tail carries the group; without it, it cannot."""
    rng = np.random.default_rng(0)
    groups = {0: list(range(0, 8)), 1: list(range(10, 18))}  # 8, 9 and 18, 19: never seen
    seqs = [rng.choice(groups[u % 2], size=8) for u in range(120)]
    names = [f"i{i}" for i in range(20)]
    ds = Dataset("g", "item", [str(u) for u in range(120)], names, [None] * 20, seqs)
    ds.kg = KnowledgeGraph.from_triples(
        [(item_key(f"i{i}"), "genre", f"g:{int(i >= 10)}") for i in range(20)], {}
    )
    split = leave_one_out(ds, max_items=3)
    cfg = BaselineConfig(dim=32, layers=1, dropout=0.0, epochs=15, lr=5e-3, patience=15)

    def unseen_of_own_group_first(knowledge: str) -> float:
        model = make_baseline("sasrec", 20, 3, replace(cfg, item_knowledge=knowledge), ds)
        model.fit(ds, split)
        sc = model.scores([s.history for s in split.test])
        own = np.array([s.user % 2 for s in split.test])
        a, b = sc[:, [8, 9]].mean(1), sc[:, [18, 19]].mean(1)
        return float(np.mean(np.where(own == 0, a > b, b > a)))

    assert unseen_of_own_group_first("genre") > 0.95
    assert unseen_of_own_group_first("") < 0.8


def test_item_knowledge_needs_the_dataset():
    with pytest.raises(ConfigError, match="needs the dataset"):
        make_baseline("sasrec", 3, 5, BaselineConfig(item_knowledge="all"))
