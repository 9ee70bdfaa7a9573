"""Cross-validation, the neighbour sweep and the sweep grid on synthetic folds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recommender import (
    BiasConfig,
    Fold,
    KMeansKNNConfig,
    ModelConfig,
    PaperConfig,
    PopularityConfig,
    Ratings,
    build_model,
    cross_validate,
    evaluate_fitted,
    evaluate_neighbor_sweep,
    sweep_grid,
)
from recommender.evaluate import METRICS

SINGLE = KMeansKNNConfig(based="item", n_factors=0, ranking=None)


def test_cross_validate_reports_every_metric(synthetic_folds: list[Fold]) -> None:
    result = cross_validate(BiasConfig(), synthetic_folds)
    assert [r.fold for r in result.folds] == ["s1", "s2"]
    assert set(result.mean) == set(METRICS)
    assert 0 < result.mean["rmse"] < 2 and 0 <= result.mean["ndcg_at_10"] <= 1
    assert result.records()[0]["kind"] == "bias"


def test_ranking_only_models_report_nan_rmse(synthetic_folds: list[Fold]) -> None:
    result = cross_validate(PopularityConfig(), synthetic_folds)
    assert math.isnan(result.mean["rmse"]) and result.mean["precision_at_10"] > 0


def test_ranking_metrics_by_hand() -> None:
    # Counts: item 10 and 40 rated twice, 20 and 30 once.
    train = Ratings.from_arrays([1, 1, 2, 3, 3, 4], [10, 20, 10, 30, 40, 40], [5, 4, 3, 4, 2, 1])
    # User 2 likes 20 (relevant), dislikes 30; user 4 likes 10; user 1 has no test items.
    test = Ratings.from_arrays([2, 2, 4], [20, 30, 10], [4, 2, 5])
    fold = Fold("hand", train, test)
    model = build_model(PopularityConfig()).fit(train)
    result = evaluate_fitted(model, fold)
    # User 2 (rated 10): [40, 20, 30], the hit at rank 2. User 4 (rated 40): [10, 20, 30],
    # the hit at rank 1. Each has one relevant item.
    assert result.precision_at_10 == pytest.approx((1 / 10 + 1 / 10) / 2)
    assert result.ndcg_at_10 == pytest.approx((1 / np.log2(3) + 1) / 2)
    assert result.map_at_10 == pytest.approx((1 / 2 + 1) / 2)
    assert result.recall_at_10 == pytest.approx(1.0)
    assert result.coverage == pytest.approx(4 / 4)
    assert result.n_ranked_users == 2


@pytest.mark.parametrize("config", [SINGLE, PaperConfig(n_clusters=3)], ids=["knn", "paper"])
def test_neighbor_sweep_matches_separate_fits(
    synthetic_folds: list[Fold], config: ModelConfig
) -> None:
    fold = synthetic_folds[0]
    swept = evaluate_neighbor_sweep(config, fold, [5, 10, 20])
    assert [r.n_neighbors for r in swept] == [5, 10, 20]
    assert len({r.ndcg_at_10 for r in swept}) >= 2  # the ranking follows the count
    for result in swept:
        alone = cross_validate(
            config.model_copy(update={"n_neighbors": result.n_neighbors}), [fold]
        )
        for metric in METRICS:
            if not metric.endswith("_seconds"):
                assert getattr(result, metric) == pytest.approx(getattr(alone.folds[0], metric))


def test_sweep_of_the_default_shares_its_ranking(synthetic_folds: list[Fold]) -> None:
    swept = evaluate_neighbor_sweep(KMeansKNNConfig(n_factors=4), synthetic_folds[0])
    assert len({r.ndcg_at_10 for r in swept}) == 1
    assert len({r.rmse for r in swept}) >= 2  # short synthetic lists: 40 and 80 coincide


def test_sweep_needs_neighbors(synthetic_folds: list[Fold]) -> None:
    with pytest.raises(ValueError, match="no n_neighbors"):
        evaluate_neighbor_sweep(BiasConfig(), synthetic_folds[0])


def test_sweep_grid_covers_every_combination() -> None:
    grid = sweep_grid(("kmeans_knn", "implicit_knn"))
    assert len(grid) == 2 * 6 * 4
    assert {(c.kind, c.n_clusters, c.n_neighbors) for c in grid} >= {("kmeans_knn", 32, 80)}
    users_only = sweep_grid(n_clusters=[1, 2], n_neighbors=[10], based="user")
    assert [c.based for c in users_only] == ["user", "user"]  # type: ignore[attr-defined]
