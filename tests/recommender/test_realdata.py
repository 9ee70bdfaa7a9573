"""The goals on the official MovieLens 100K folds u1..u5 with the default models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recommender import (
    PAPER_RMSE,
    Fold,
    KMeansKNN,
    KMeansKNNConfig,
    PaperConfig,
    PopularityConfig,
    cross_validate,
    evaluate_neighbor_sweep,
    load_users,
    rmse,
)
from recommender.evaluate import cold_start_protocol

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def default_result(official_folds: list[Fold]):  # type: ignore[no-untyped-def]
    return cross_validate(KMeansKNNConfig(), official_folds)


def test_default_rating_model_beats_the_bar(default_result) -> None:  # type: ignore[no-untyped-def]
    # with the test ratings' times (the session offset): 0.8839 and u1 0.8948 (bench/models.py)
    assert default_result.mean["rmse"] <= 0.895
    assert default_result.folds[0].fold == "u1" and default_result.folds[0].rmse <= 0.900
    assert default_result.mean["mae"] < 0.70


def test_default_rating_model_without_times_beats_the_older_bar(
    official_folds: list[Fold],
) -> None:
    # 0.9018 and u1 0.9111; without the implicit-score blend 0.9040 and 0.9140
    errors = []
    for fold in official_folds:
        model = KMeansKNN().fit(fold.train)
        errors.append(
            rmse(model.predict(fold.test.raw_users(), fold.test.raw_items()), fold.test.values)
        )
    assert np.mean(errors) <= 0.903
    assert errors[0] <= 0.9125


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


@pytest.mark.slow
def test_cold_start_ordering(official_folds: list[Fold], ml100k_dir: Path) -> None:
    """What the cluster-assisted fold-in achieves (bench/cold_start.py): the best 5-fold mean
    NDCG@10 at every k <= 5, but by 0.003-0.004 only, and not in every fold."""
    methods = {
        "popularity": PopularityConfig(),
        "item_knn": KMeansKNNConfig(fold_in_clusters=1),
        "kmeans": KMeansKNNConfig(),
    }
    results = cold_start_protocol(
        official_folds, methods, (0, 1, 3, 5), users=load_users(ml100k_dir)
    )

    def mean_ndcg(method: str, k: int) -> float:
        return float(np.mean([r.ndcg_at_10 for r in results if r.method == method and r.k == k]))

    for k in (0, 1, 3, 5):
        assert mean_ndcg("kmeans", k) > mean_ndcg("item_knn", k)
        assert mean_ndcg("kmeans", k) > mean_ndcg("popularity", k)
    for k in (3, 5):
        assert mean_ndcg("item_knn", k) > mean_ndcg("popularity", k) + 0.01
