"""The goals on the official MovieLens 100K folds u1..u5 with the default models."""

from __future__ import annotations

import pytest

from recommender import (
    PAPER_RMSE,
    Fold,
    KMeansKNNConfig,
    PaperConfig,
    PopularityConfig,
    cross_validate,
    evaluate_neighbor_sweep,
)

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def default_result(official_folds: list[Fold]):  # type: ignore[no-untyped-def]
    return cross_validate(KMeansKNNConfig(), official_folds)


def test_default_rating_model_beats_the_bar(default_result) -> None:  # type: ignore[no-untyped-def]
    assert default_result.mean["rmse"] <= 0.910
    assert default_result.mean["mae"] < 0.72


def test_default_ranking_beats_the_bar(default_result) -> None:  # type: ignore[no-untyped-def]
    assert default_result.mean["ndcg_at_10"] >= 0.36
    assert default_result.mean["precision_at_10"] >= 0.27


def test_popularity_reference(official_folds: list[Fold]) -> None:
    result = cross_validate(PopularityConfig(), official_folds)
    assert result.mean["ndcg_at_10"] == pytest.approx(0.198, abs=0.005)


def test_paper_configuration_is_reproduced(official_folds: list[Fold]) -> None:
    result = cross_validate(PaperConfig(), official_folds, rank=False)
    print(f"paper RMSE {result.mean['rmse']:.4f} (paper reports {PAPER_RMSE})")
    assert 0.95 <= result.mean["rmse"] <= 1.15


def test_neighbor_sweep_on_a_real_fold(official_folds: list[Fold]) -> None:
    config = KMeansKNNConfig(based="item", n_factors=0)
    results = evaluate_neighbor_sweep(config, official_folds[0])
    assert [r.n_neighbors for r in results] == [10, 20, 40, 80]
    assert all(0.90 < r.rmse < 0.96 for r in results)
