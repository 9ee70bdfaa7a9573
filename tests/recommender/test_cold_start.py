"""The cold-start protocol: held-out users, their first k ratings by time, no leak into a fit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recommender import Fold, KMeansKNNConfig, PopularityConfig, Ratings, RecommenderModel
from recommender.evaluate import cold_start_protocol, cold_start_split


def test_split_removes_every_rating_of_the_held_out_users(synthetic_folds: list[Fold]) -> None:
    fold = synthetic_folds[0]

    split = cold_start_split(fold, share=0.25, seed=3)

    test_users = np.unique(fold.test.raw_users())
    assert len(split.held_out) == round(0.25 * len(test_users))
    assert not np.isin(split.train.user_ids, split.held_out).any()
    assert len(split.train) + len(split.given) == len(fold.train)
    assert set(np.unique(split.given.raw_users())) <= set(split.held_out.tolist())
    assert set(np.unique(split.test.raw_users())) == set(split.held_out.tolist())


def test_first_ratings_are_the_earliest_by_time() -> None:
    train = Ratings.from_arrays(
        [1, 1, 1, 2, 2, 3], [10, 20, 30, 10, 40, 20], [5, 4, 3, 2, 1, 4], [30, 10, 20, 5, 5, 1]
    )
    test = Ratings.from_arrays([1, 2, 3], [40, 20, 10], [4, 4, 4])

    split = cold_start_split(Fold("hand", train, test), share=1.0)

    # User 1 rated 20 (t=10), then 30 (t=20), then 10 (t=30); user 2's tie goes by item id.
    assert split.first_ratings(2) == {1: {20: 4.0, 30: 3.0}, 2: {10: 2.0, 40: 1.0}, 3: {20: 4.0}}
    assert split.first_ratings(0) == {1: {}, 2: {}, 3: {}}


def test_held_out_ratings_never_enter_a_fit(
    synthetic_folds: list[Fold], monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted: list[Ratings] = []
    original = RecommenderModel.fit

    def recording_fit(self: Any, ratings: Any, **kwargs: Any) -> Any:
        fitted.append(ratings)
        return original(self, ratings, **kwargs)

    monkeypatch.setattr(RecommenderModel, "fit", recording_fit)
    methods = {"popularity": PopularityConfig(), "kmeans": KMeansKNNConfig(n_factors=4)}

    results = cold_start_protocol(synthetic_folds, methods, ks=(0, 2), share=0.3)

    assert len(results) == len(synthetic_folds) * len(methods) * 2
    splits = [(cold_start_split(fold, share=0.3), fold) for fold in synthetic_folds]
    assert len(fitted) >= len(synthetic_folds) * len(methods)
    # the models' own inner fits (the ranker, the blend's scorer on a share) are recorded too
    for ratings in fitted:
        fit_pairs = _pairs(ratings)
        split, fold = next((s, f) for s, f in splits if fit_pairs <= _pairs(s.train))
        assert not np.isin(ratings.raw_users(), split.held_out).any()
        test_pairs = _pairs(fold.test)
        assert not test_pairs & fit_pairs


def _pairs(ratings: Ratings) -> set[tuple[int, int]]:
    return set(zip(ratings.raw_users().tolist(), ratings.raw_items().tolist(), strict=True))


def test_protocol_reports_finite_metrics_and_strategies(synthetic_folds: list[Fold]) -> None:
    methods = {"kmeans": KMeansKNNConfig(n_factors=4, fold_in_clusters=2)}

    results = cold_start_protocol(synthetic_folds[:1], methods, ks=(0, 3), share=0.3)

    assert [r.k for r in results] == [0, 3]
    assert all(np.isfinite([r.rmse, r.ndcg_at_10, r.precision_at_10]).all() for r in results)
    assert set(results[0].strategies) == {"cold_start_popular"}
    assert set(results[1].strategies) == {"fold_in"}
