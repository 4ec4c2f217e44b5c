"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kp4sr.evaluation import format_table, metrics, target_ranks

RANKS = np.array([0, 1, 4, 9, -1, 12])


def test_target_ranks():
    ranked = np.array(
        [
            [5, 3, 9, 1],
            [5, 3, 9, 1],
            [5, 3, 9, 1],
            [-1, -1, -1, -1],
            [7, 7, 2, -1],
        ]
    )
    targets = np.array([5, 1, 4, 2, 7])
    assert target_ranks(ranked, targets).tolist() == [0, 3, -1, -1, 0]


def test_target_ranks_empty():
    assert target_ranks(np.zeros((0, 5), dtype=np.int64), np.zeros(0, dtype=np.int64)).size == 0


def test_metrics_hand_computed():
    m = metrics(RANKS)
    assert m["users"] == 6
    assert m["HR@5"] == pytest.approx(3 / 6)
    assert m["HR@10"] == pytest.approx(4 / 6)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 6)
    assert m["NDCG@10"] == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6
    )
    assert m["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10 + 0 + 1 / 13) / 6)
    # RANKS are 0, 1, 4, 9, -1, 12: rank 12 is a hit at 20 only
    assert m["HR@20"] == pytest.approx(5 / 6)
    assert m["NDCG@20"] == pytest.approx(
        (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11) + 1 / math.log2(14)) / 6
    )
    keys = {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR", "users"}
    assert set(m) == keys


def test_metrics_boundaries_and_cutoffs():
    # rank k-1 is a hit at k, rank k is not
    m = metrics(np.array([4, 5]), cutoffs=(5,))
    assert m["HR@5"] == pytest.approx(0.5)
    assert m["NDCG@5"] == pytest.approx(1 / math.log2(6) / 2)
    m = metrics(np.array([0, 2]), cutoffs=(1, 3))
    assert m["HR@1"] == pytest.approx(0.5) and m["HR@3"] == pytest.approx(1.0)
    assert m["NDCG@1"] == pytest.approx(0.5)
    assert m["NDCG@3"] == pytest.approx((1 + 0.5) / 2)
    assert "HR@5" not in m


def test_metrics_all_missing():
    m = metrics(np.array([-1, -1, -1]))
    assert all(m[k] == 0.0 for k in ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"))
    assert m["users"] == 3


def test_metrics_empty():
    m = metrics(np.array([], dtype=np.int64))
    assert m["users"] == 0
    assert all(m[k] == 0.0 for k in ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR"))
    assert not any(math.isnan(v) for v in m.values())


def test_format_table():
    table = format_table({"KP4SR": metrics(RANKS), "P5-style": metrics(np.array([0]))})
    lines = table.splitlines()
    assert len(lines) == 4
    for name in ("HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR", "users", "KP4SR", "P5-style"):
        assert name in table
    assert "0.5000" in lines[2]  # HR@5 of RANKS
    assert "| 6 |" in lines[2]  # users printed as an integer
    assert lines[3].startswith("| P5-style | 1.0000")
    custom = format_table({"x": {"MRR": 0.25}}, keys=("MRR",))
    assert custom.splitlines() == ["| | MRR |", "|---|---|", "| x | 0.2500 |"]
