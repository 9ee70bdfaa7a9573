"""Fold-in of users not in the training data: recommend_for / predict_for / fold_in_strategy."""

from __future__ import annotations

import numpy as np
import pytest

from recommender import (
    BiasBaseline,
    Fold,
    KMeansKNN,
    Popularity,
    Ratings,
)
from recommender.foldin import COLD_START_CLUSTER, COLD_START_POPULAR, FOLD_IN, prior_share

FAST = {"n_factors": 4, "fold_in_clusters": 2}


def _ratings_of(train: Ratings, user_id: int) -> dict[int, float]:
    mine = train.raw_users() == user_id
    return dict(zip(train.raw_items()[mine].tolist(), train.values[mine].tolist(), strict=True))


def test_folded_bias_is_the_damped_mean_residual(tiny: Ratings) -> None:
    model = BiasBaseline(user_damping=1.0, item_damping=0.0).fit(tiny)
    mean, item_bias = model.baseline_.mean, model.baseline_.item_bias
    at_10 = int(tiny.item_positions([10])[0])

    predicted = model.predict_for({10: 5.0}, [10])

    # One rating: bias = (5 - mean - b_10) / (1 + damping 1); prediction = mean + bias + b_10.
    bias = (5.0 - mean - item_bias[at_10]) / 2.0
    assert predicted[0] == pytest.approx(np.clip(mean + bias + item_bias[at_10], 1, 5))


def test_popularity_recommends_the_most_rated_unrated_items(tiny: Ratings) -> None:
    model = Popularity().fit(tiny)

    recommended = model.recommend_for({10: 4.0}, n=2)

    # Counts: 10, 20, 30, 40 are rated 3 times each; 10 is excluded, ties by position.
    assert recommended == [(20, 3.0), (30, 3.0)]


def test_folding_in_a_trained_user_gives_their_top_n(synthetic_folds: list[Fold]) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(**FAST, fold_in_prior=0.0, fold_in_rating_prior=0.0).fit(train)

    for user_id in (1, 7, 23):
        folded = model.recommend_for(_ratings_of(train, user_id), n=5)
        trained = model.recommend(user_id, n=5)
        assert [item for item, _ in folded] == [item for item, _ in trained]
        assert [s for _, s in folded] == pytest.approx([s for _, s in trained], rel=1e-4)


def test_folding_in_a_trained_user_predicts_their_ratings(synthetic_folds: list[Fold]) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(**FAST, fold_in_rating_prior=0.0).fit(train)
    rated = _ratings_of(train, 7)
    unrated = np.setdiff1d(train.item_ids, list(rated))

    folded = model.predict_for(rated, unrated)
    trained = model.predict(np.full(len(unrated), 7), unrated)

    # Same neighbourhoods and blend (but the implicit score); the user's factor is one ALS
    # step away from the fit's.
    assert np.abs(folded - trained).max() < 0.1


def test_few_ratings_fold_in_without_the_implicit_score(
    synthetic_folds: list[Fold], monkeypatch: pytest.MonkeyPatch
) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(**FAST).fit(train)
    k, enough = model.config.n_neighbors, model.implicit_fold_in_ratings_
    assert model.parts_.implicit is not None and enough > 2
    # the fold-in weights: the blend's but the implicit score's three columns, fit without them
    assert len(model.fold_in_weights_[k]) == len(model.blend_weights_[k]) - 3
    assert not np.allclose(model.fold_in_weights_[k], model.blend_weights_[k][:-3])
    rated = _ratings_of(train, 7)
    few = dict(list(rated.items())[: enough - 1])
    targets = np.setdiff1d(train.item_ids, list(rated))[:20]
    read: list[int] = []
    score_new_user = model.parts_.implicit.score_new_user

    def recording(items: np.ndarray) -> np.ndarray:
        read.append(len(items))
        return score_new_user(items)

    monkeypatch.setattr(model.parts_.implicit, "score_new_user", recording)
    assert np.isfinite(model.predict_for(few, targets)).all()
    assert read == []  # fewer ratings than the training users it was learnt on: not read
    model.predict_for(rated, targets)
    assert read == [len(rated)]


def test_empty_ratings_give_a_full_list_from_the_population(synthetic_folds: list[Fold]) -> None:
    model = KMeansKNN(**FAST).fit(synthetic_folds[0].train)

    recommended = model.recommend_for({}, n=10)

    assert len(recommended) == 10 and len({item for item, _ in recommended}) == 10
    assert model.fold_in_strategy({}) == COLD_START_POPULAR
    scores = [score for _, score in recommended]
    assert scores == sorted(scores, reverse=True)


def test_given_items_are_excluded(synthetic_folds: list[Fold]) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(**FAST).fit(train)
    given = _ratings_of(train, 3)

    recommended = model.recommend_for(given, n=20)

    assert len(recommended) == 20
    assert not set(given) & {item for item, _ in recommended}
    assert model.fold_in_strategy(given) == FOLD_IN


def test_unknown_item_ids_are_ignored(synthetic_folds: list[Fold]) -> None:
    model = KMeansKNN(**FAST).fit(synthetic_folds[0].train)
    given = {101: 5.0, 102: 1.0}

    with_unknown = {**given, 99_999: 5.0}

    assert model.recommend_for(with_unknown, n=5) == model.recommend_for(given, n=5)
    assert model.fold_in(with_unknown).n_ignored == 1
    assert model.fold_in_strategy({99_999: 4.0}) == COLD_START_POPULAR


def test_non_finite_rating_is_an_error(synthetic_folds: list[Fold]) -> None:
    model = KMeansKNN(**FAST).fit(synthetic_folds[0].train)

    with pytest.raises(ValueError, match="finite"):
        model.predict_for({101: float("nan")}, [102])


@pytest.mark.parametrize("rating", [1.0, 5.0])
def test_predict_for_is_finite_and_clipped(synthetic_folds: list[Fold], rating: float) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(**FAST).fit(train)
    extreme = dict.fromkeys(train.item_ids[:30].tolist(), rating)
    targets = np.concatenate([train.item_ids, [99_999]])

    for given in ({}, {101: rating}, extreme):
        predicted = model.predict_for(given, targets)
        assert predicted.shape == targets.shape
        assert np.isfinite(predicted).all()
        assert predicted.min() >= 1.0 and predicted.max() <= 5.0


def test_demographics_pick_a_cluster_only_when_fit_with_users(
    synthetic_folds: list[Fold],
) -> None:
    train = synthetic_folds[0].train
    rng = np.random.default_rng(0)
    users = {
        "user_id": train.user_ids,
        "age": rng.integers(15, 70, train.n_users),
        "gender": rng.choice(["M", "F"], train.n_users),
        "occupation": rng.choice(["student", "writer"], train.n_users),
    }
    about = {"age": 25, "gender": "F", "occupation": "student"}
    with_users = KMeansKNN(**FAST).fit(train, users=users)
    without = KMeansKNN(**FAST).fit(train)

    assert with_users.fold_in_strategy({}, demographics=about) == COLD_START_CLUSTER
    assert with_users.fold_in_strategy({}, demographics={"occupation": "pilot"}) == (
        COLD_START_POPULAR
    )
    assert without.fold_in_strategy({}, demographics=about) == COLD_START_POPULAR
    assert len(with_users.recommend_for({}, n=5, demographics=about)) == 5


def test_ratings_point_to_the_cluster_that_rated_those_items() -> None:
    # Users 1-6 rate only items 1-3, users 7-12 only items 4-6: two clear clusters.
    users = np.repeat(np.arange(1, 13), 3)
    items = np.concatenate([np.tile([1, 2, 3], 6), np.tile([4, 5, 6], 6)])
    ratings = np.resize([5.0, 4.0, 2.0], len(users))
    train = Ratings.from_arrays(users, items, ratings)
    model = KMeansKNN(
        n_factors=0, fold_in_clusters=2, cluster_components=0, fold_in_temperature=1.0
    ).fit(train)

    weights = model.fold_in({1: 5.0}).cluster_weights
    recommended = model.recommend_for({1: 5.0}, n=2)

    assert weights is not None
    cluster_of_item_1 = int(model.cluster_prior_.labels[0])
    assert weights[cluster_of_item_1] > 0.9
    assert {item for item, _ in recommended} == {2, 3}


def test_the_cluster_prior_shrinks_as_ratings_grow() -> None:
    assert prior_share(0, 5.0) == 1.0
    assert prior_share(5, 5.0) == pytest.approx(0.5)
    assert prior_share(45, 5.0) == pytest.approx(0.1)
    assert prior_share(3, 0.0) == 0.0


def test_sparse_engine_folds_in_a_trained_user_alike(synthetic_folds: list[Fold]) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(**FAST, engine="sparse", fold_in_prior=0.0, fold_in_rating_prior=0.0)
    model.fit(train)
    rated = _ratings_of(train, 7)
    unrated = np.setdiff1d(train.item_ids, list(rated))

    folded = model.predict_for(rated, unrated)
    trained = model.predict(np.full(len(unrated), 7), unrated)
    top = [item for item, _ in model.recommend_for(rated, n=5)]

    assert np.abs(folded - trained).max() < 0.1
    assert top == [item for item, _ in model.recommend(7, n=5)]


def test_the_cluster_prior_is_fit_on_first_fold_in_not_by_fit(
    synthetic_folds: list[Fold],
) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(**FAST).fit(train)
    assert model._cluster_prior is None  # a fit (e.g. of a sweep) never pays for it

    model.recommend_for({}, n=3)

    assert model._cluster_prior is not None


def test_a_pickled_model_carries_its_cluster_prior(synthetic_folds: list[Fold]) -> None:
    import pickle

    model = KMeansKNN(**FAST).fit(synthetic_folds[0].train)

    served = pickle.loads(pickle.dumps(model))

    assert served._cluster_prior is not None
    assert served.recommend_for({}, n=3) == model.recommend_for({}, n=3)


def test_few_ratings_solve_the_factors_with_the_penalty_of_twenty(
    synthetic_folds: list[Fold],
) -> None:
    """One rating leaves weighted-lambda all but unregularised: the fold-in's ridge takes
    the penalty of FOLD_IN_FACTOR_RATINGS ratings until the user has more."""
    from recommender.knn import FOLD_IN_FACTOR_RATINGS

    model = KMeansKNN().fit(synthetic_folds[0].train)
    parts = model.parts_
    assert parts.factors is not None
    item_factors = parts.factors[1]
    targets = np.arange(10)
    for count in (1, 3, FOLD_IN_FACTOR_RATINGS + 5):
        rated = np.arange(20, 20 + count)
        residuals = np.linspace(-1.0, 1.0, count)
        chosen = item_factors[rated]
        penalty = model.config.factor_regularization * max(count, FOLD_IN_FACTOR_RATINGS)
        gram = chosen.T @ chosen + penalty * np.eye(chosen.shape[1])
        expected = item_factors[targets] @ np.linalg.solve(gram, chosen.T @ residuals)
        found = parts.item_factors_of(rated, residuals, targets)
        np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-8)
