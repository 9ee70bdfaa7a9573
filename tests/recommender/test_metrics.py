"""Rating and ranking metrics: a hand-computed example and properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from recommender import (
    coverage,
    hit_matrix,
    mae,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    rmse,
)

RECOMMENDED = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]]
RELEVANT: list[set[int]] = [{1, 3, 9}, {8}, set()]  # the third user has nothing relevant


def test_rmse_and_mae_by_hand() -> None:
    assert rmse([3, 4, 5], [4, 4, 3]) == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert mae([3, 4, 5], [4, 4, 3]) == pytest.approx((1 + 0 + 2) / 3)


def test_hit_matrix() -> None:
    hits = hit_matrix(RECOMMENDED, RELEVANT)
    assert hits.tolist() == [
        [True, False, True, False],
        [False, False, False, True],
        [False, False, False, False],
    ]


def test_ranking_metrics_by_hand() -> None:
    # User 1: hits at ranks 1 and 3 of 3 relevant; user 2: a hit at rank 4 of 1 relevant.
    assert precision_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert recall_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((2 / 3 + 1) / 2)
    ndcg_1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    ndcg_2 = (1 / math.log2(5)) / 1
    assert ndcg_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((ndcg_1 + ndcg_2) / 2)
    ap_1 = (1 / 1 + 2 / 3) / 3
    ap_2 = (1 / 4) / 1
    assert map_at_k(RECOMMENDED, RELEVANT, 4) == pytest.approx((ap_1 + ap_2) / 2)


def test_ideal_dcg_uses_min_of_relevant_and_k() -> None:
    # 3 relevant items but k = 1: one hit at rank 1 is already ideal.
    assert ndcg_at_k([[1, 2]], [{1, 2, 3}], 1) == pytest.approx(1.0)
    assert map_at_k([[1, 2]], [{1, 2, 3}], 1) == pytest.approx(1.0)


def test_padding_is_never_a_hit() -> None:
    assert precision_at_k([[-1, -1]], [{-1, 5}], 2) == 0.0


def test_coverage_by_hand() -> None:
    assert coverage(RECOMMENDED, 10) == pytest.approx(9 / 10)
    assert coverage([[1, -1]], 4) == pytest.approx(1 / 4)


rankings = st.lists(
    st.tuples(
        st.lists(st.integers(0, 30), min_size=1, max_size=10, unique=True),
        st.sets(st.integers(0, 30), min_size=1, max_size=12),
    ),
    min_size=1,
    max_size=8,
)


@given(rankings, st.integers(1, 10))
def test_ranking_metrics_are_between_0_and_1(
    cases: list[tuple[list[int], set[int]]], k: int
) -> None:
    width = max(len(items) for items, _ in cases)
    recommended = [items + [-1] * (width - len(items)) for items, _ in cases]
    relevant = [relevant for _, relevant in cases]
    for metric in (precision_at_k, recall_at_k, ndcg_at_k, map_at_k):
        value = metric(recommended, relevant, k)
        assert 0.0 <= value <= 1.0 + 1e-12


@given(st.lists(st.sets(st.integers(0, 50), min_size=1, max_size=15), min_size=1, max_size=6))
def test_perfect_ranking_scores_one(relevant: list[set[int]]) -> None:
    k = 10
    width = max(len(items) for items in relevant)
    recommended = [sorted(items) + [-1] * (width - len(items)) for items in relevant]
    assert ndcg_at_k(recommended, relevant, k) == pytest.approx(1.0)
    assert map_at_k(recommended, relevant, k) == pytest.approx(1.0)
    # Recall is 1 exactly when everything relevant fits in the top k.
    if all(len(items) <= k for items in relevant):
        assert recall_at_k(recommended, relevant, k) == pytest.approx(1.0)
    else:
        assert precision_at_k(recommended, relevant, k) <= 1.0


@given(st.lists(st.floats(1, 5), min_size=1, max_size=30))
def test_errors_are_zero_for_exact_predictions(values: list[float]) -> None:
    assert rmse(values, values) == 0.0 and mae(values, values) == 0.0
    assert rmse(np.array(values) + 1, values) == pytest.approx(1.0)
