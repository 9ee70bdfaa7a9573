"""KNN kernels and the K-Means + KNN hybrid, checked against hand computations."""

from __future__ import annotations

import math
import pickle
from unittest import mock

import numpy as np
import pytest
from pydantic import ValidationError

import recommender.knn as knn_module
from recommender import (
    KMeansKNN,
    KMeansKNNConfig,
    Ratings,
    build_model,
    config_from_params,
    fit_biases,
)
from recommender.evaluate import evaluate_fold, evaluate_neighbor_sweep
from recommender.neighbors import (
    loo_neighborhood_average,
    neighborhood_average,
    rated_lists,
    shrunk_similarity,
    similarity_stats,
)

RESIDUALS = np.array([[1.0, -1.0, 0.0, 2.0], [2.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
RATED = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 0]], dtype=float)


def test_pearson_similarity_by_hand() -> None:
    similarity = shrunk_similarity(RESIDUALS, RATED, "pearson", shrinkage=0.0)
    # Rows 0 and 1 share columns 0 and 3: (1*2 + 2*1) / sqrt((1+4) * (4+1)) = 0.8.
    assert similarity[0, 1] == pytest.approx(0.8)
    assert similarity[1, 0] == pytest.approx(0.8)
    # A single co-rated column gives n-1 = 0 overlap: no similarity.
    assert similarity[0, 2] == 0.0 and similarity[1, 2] == 0.0
    assert np.diag(similarity).tolist() == [0.0, 0.0, 0.0]


def test_shrinkage_and_min_support() -> None:
    shrunk = shrunk_similarity(RESIDUALS, RATED, "pearson", shrinkage=1.0)
    # (n - 1) / (n - 1 + shrinkage) = 1 / 2 for two co-rated columns.
    assert shrunk[0, 1] == pytest.approx(0.4)
    strict = shrunk_similarity(RESIDUALS, RATED, "pearson", shrinkage=0.0, min_support=3)
    assert strict[0, 1] == 0.0


def test_cosine_similarity_by_hand() -> None:
    similarity = shrunk_similarity(RESIDUALS, RATED, "cosine", shrinkage=1.0)
    # Whole rows: 4 / (sqrt(6) * sqrt(6)), shrunk by 1/2.
    assert similarity[0, 1] == pytest.approx(4 / 6 / 2)


def test_rated_lists_pickle_without_their_padded_layout() -> None:
    lists = rated_lists(np.array([0, 0, 1]), np.array([0, 2, 1]), np.array([1.0, 2.0, 3.0]), 2, 3)
    padded = lists.padded(np.array([1, 0]), 2)  # makes the layout
    assert "_layout" in lists.__dict__

    again = pickle.loads(pickle.dumps(lists))

    assert "_layout" not in again.__dict__
    for made, remade in zip(padded, again.padded(np.array([1, 0]), 2), strict=True):
        np.testing.assert_array_equal(made, remade)


@pytest.mark.parametrize("seed", range(5))
def test_a_lookup_finds_each_link_and_its_value_and_nothing_else(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_owners, n_entities = 9, 14
    cells = rng.choice(n_owners * n_entities, 40, replace=False)
    owners, entities = cells // n_entities, cells % n_entities
    values = rng.normal(size=40).astype(np.float32)
    values[:5] = 0.0  # a residual of exactly 0 is still a link
    owners[owners == 8] = 7  # owner 8 has no links (and the cells stay distinct: 8 -> 7 ...)
    cells = np.unique(owners * n_entities + entities, return_index=True)[1]
    owners, entities, values = owners[cells], entities[cells], values[cells]
    links = {(o, e): v for o, e, v in zip(owners.tolist(), entities.tolist(), values, strict=True)}
    lists = rated_lists(owners, entities, values, n_owners, n_entities)
    # every owner, three times in a shuffled order, against every entity in a shuffled order
    # and the padding entity (n_entities)
    asked_owners = rng.permutation(np.repeat(np.arange(n_owners), 3))
    asked = np.array([rng.permutation(n_entities + 1) for _ in asked_owners])

    for cells in (10**6, 2 * (n_entities + 1), 1):  # owners read in one group, or several
        with mock.patch("recommender.neighbors._LOOKUP_CELLS", cells):
            found, value = lists.lookup(asked_owners, asked)

        assert found.shape == value.shape == asked.shape
        assert value.dtype == np.float32
        for row, o in enumerate(asked_owners):
            for column, e in enumerate(asked[row]):
                assert found[row, column] == ((o, e) in links)
                assert value[row, column] == links.get((o, e), 0.0)
        assert not found[asked_owners == 8].any() and not found[asked == n_entities].any()
    empty = lists.lookup(np.zeros(0, int), np.zeros((0, 3), int))
    assert empty[0].shape == empty[1].shape == (0, 3)


def test_neighborhood_average_by_hand() -> None:
    similarity = np.array([[0.0, 0.5, 0.25], [0.5, 0.0, 0.0], [0.25, 0.0, 0.0]])
    # One owner that is linked to entities 0, 1, 2 with residuals 1, 2, -1.
    lists = rated_lists(np.zeros(3, int), np.arange(3), np.array([1.0, 2.0, -1.0]), 1, 3)
    owners, targets = np.array([0]), np.array([0])
    found = neighborhood_average(similarity, lists, owners, targets, [1, 2])
    assert found[1][0][0] == pytest.approx(2.0)  # only entity 1: 0.5*2 / 0.5
    assert found[2][0][0] == pytest.approx((0.5 * 2 - 0.25) / 0.75)
    assert found[2][1][0] == pytest.approx(0.75)
    damped = neighborhood_average(similarity, lists, owners, targets, [2], damping=0.25)
    assert damped[2][0][0] == pytest.approx(0.75 / 1.0)
    negative = similarity.copy()
    negative[0, 2] = -0.25
    assert neighborhood_average(negative, lists, owners, targets, [2])[2][0][0] == 2.0


def _hand_item_knn(ratings: Ratings, user: int, item: int, k: int) -> float:
    """Item KNN on undamped residuals with plain Pearson over co-raters, written out."""
    biases = fit_biases(ratings, 0.0, 0.0)
    dense = ratings.matrix.toarray()
    residual = {
        (u, i): dense[u, i] - biases.mean - biases.user_bias[u] - biases.item_bias[i]
        for u, i in zip(*np.nonzero(dense), strict=True)
    }

    def pearson(a: int, b: int) -> float:
        both = [u for u in range(ratings.n_users) if (u, a) in residual and (u, b) in residual]
        if len(both) < 2:
            return 0.0
        top = sum(residual[u, a] * residual[u, b] for u in both)
        bottom = math.sqrt(sum(residual[u, a] ** 2 for u in both))
        bottom *= math.sqrt(sum(residual[u, b] ** 2 for u in both))
        return top / bottom if bottom else 0.0

    rated = [j for j in range(ratings.n_items) if (user, j) in residual and j != item]
    neighbours = sorted(rated, key=lambda j: -pearson(item, j))[:k]
    weights = [max(pearson(item, j), 0.0) for j in neighbours]
    base = biases.mean + biases.user_bias[user] + biases.item_bias[item]
    if sum(weights) == 0:
        return base
    return base + sum(
        w * residual[user, j] for w, j in zip(weights, neighbours, strict=True)
    ) / sum(weights)


HAND = {
    "based": "item", "n_neighbors": 2, "shrinkage": 0.0, "neighbor_damping": 0.0,
    "user_damping": 0.0, "item_damping": 0.0, "n_factors": 0, "ranking": None,
}  # fmt: skip


@pytest.mark.parametrize(("user_id", "item_id"), [(1, 40), (2, 30), (3, 10), (4, 20)])
def test_item_knn_prediction_by_hand(tiny: Ratings, user_id: int, item_id: int) -> None:
    model = KMeansKNN(**HAND).fit(tiny)
    user, item = tiny.user_positions([user_id])[0], tiny.item_positions([item_id])[0]
    expected = float(np.clip(_hand_item_knn(tiny, user, item, 2), 1, 5))
    assert model.predict([user_id], [item_id])[0] == pytest.approx(expected, abs=1e-5)


def test_user_based_is_item_based_on_the_transpose(tiny: Ratings) -> None:
    flipped = Ratings.from_arrays(tiny.raw_items(), tiny.raw_users(), tiny.values)
    users, items = np.array([1, 2, 3, 4]), np.array([40, 30, 10, 20])
    by_user = KMeansKNN(**{**HAND, "based": "user"}).fit(tiny).predict(users, items)
    by_item = KMeansKNN(**HAND).fit(flipped).predict(items, users)
    # Not exact: the alternating bias fit starts with items, so 5 rounds differ a little.
    assert by_user == pytest.approx(by_item, abs=1e-3)


def test_predict_for_neighbors_matches_single_counts(tiny: Ratings) -> None:
    model = KMeansKNN(**{**HAND, "n_neighbors": 3}).fit(tiny)
    users, items = [1, 2, 3, 4, 99], [40, 30, 10, 20, 10]
    swept = model.predict_for_neighbors(users, items, [1, 2, 3])
    for k in (1, 2, 3):
        assert swept[k] == pytest.approx(model.predict(users, items, n_neighbors=k))


def test_clusters_restrict_the_neighbourhood(synthetic_folds: list) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN(based="item", n_clusters=3, n_factors=0, ranking=None).fit(train)
    labels = model.cluster_labels_
    assert labels is not None and len(np.unique(labels)) == 3
    different = labels[:, None] != labels[None, :]
    assert model.similarity_ is not None
    assert np.all(model.similarity_[different] == 0.0)
    weighted = KMeansKNN(based="item", n_clusters=3, cluster_weight=0.5, n_factors=0, ranking=None)
    assert np.any(weighted.fit(train).similarity_[different] != 0.0)


def test_blend_learns_weights_per_neighbor_count(synthetic_folds: list) -> None:
    model = KMeansKNN(n_factors=4, ranking=None, cluster_biases=True, n_clusters=2)
    model.fit(synthetic_folds[0].train)
    assert set(model.blend_weights_) >= {10, 20, 40, 80}
    assert all(np.isfinite(w).all() for w in model.blend_weights_.values())


def test_config_validates_and_round_trips() -> None:
    with pytest.raises(ValidationError):
        KMeansKNNConfig(n_neighbors=0)
    with pytest.raises(ValidationError):
        KMeansKNNConfig(not_a_field=1)  # type: ignore[call-arg]
    config = KMeansKNNConfig(n_clusters=4, based="user")
    params = config.as_params()
    assert params["kind"] == "kmeans_knn" and params["ranking.n_neighbors"] == 100
    assert all(isinstance(v, str | int | float | bool) for v in params.values())
    as_strings = {name: str(value) for name, value in params.items()}
    assert config_from_params(as_strings) == config
    assert KMeansKNN(config).config is config
    assert isinstance(build_model(config), KMeansKNN)


def test_zero_damping_leaves_users_and_items_without_ratings_at_the_prior(
    synthetic_folds: list,
) -> None:
    """A damping of 0 is allowed. The blend's held-out split keeps every user and item, so some
    have no ratings left: they get no bias (not 0/0), and the blend weights stay finite."""
    train = synthetic_folds[0].train
    without_item = train.subset(train.item_index != 0)
    biases = fit_biases(without_item, 0.0, 0.0)
    assert np.isfinite(biases.item_bias).all() and biases.item_bias[0] == 0.0

    model = KMeansKNN(
        user_damping=0, item_damping=0, n_clusters=2, cluster_biases=True,
        cluster_bias_damping=0, n_factors=0, ranking=None,
    ).fit(without_item)  # fmt: skip
    assert all(np.isfinite(w).all() for w in model.blend_weights_.values())
    test = synthetic_folds[0].test
    predicted = model.predict(test.raw_users(), test.raw_items())
    assert np.isfinite(predicted).all()
    biases = fit_biases(without_item, 0.0, 0.0)
    positions = (
        without_item.user_positions(test.raw_users()),
        without_item.item_positions(test.raw_items()),
    )
    fallback = np.clip(biases.predict(*positions), 1, 5)
    assert not np.allclose(predicted, fallback)  # the neighbours count, not just the biases


def test_a_neighbour_sweep_learns_the_blend_weights_of_every_count(synthetic_folds: list) -> None:
    """Counts outside the default sweep (10, 20, 40, 80) get their own blend weights: the
    sweep's figure at k is the one a model fitted with n_neighbors=k gets."""
    fold = synthetic_folds[0]
    config = KMeansKNNConfig(n_clusters=2, n_factors=0, ranking=None)

    swept = {
        r.n_neighbors: r.rmse for r in evaluate_neighbor_sweep(config, fold, [5, 40], rank=False)
    }

    for k in (5, 40):
        alone = evaluate_fold(config.model_copy(update={"n_neighbors": k}), fold, rank=False)
        assert swept[k] == pytest.approx(alone.rmse, abs=1e-9)


@pytest.mark.parametrize("measure", ["pearson", "cosine"])
def test_loo_average_is_the_average_without_the_rating(measure: str) -> None:
    """Leave-one-out neighbourhood averages equal the averages on the data without the pair's
    rating (same residuals): similarities recomputed, the target not its own neighbour."""
    rng = np.random.default_rng(3)
    rated = (rng.random((30, 12)) < 0.6).astype(float)
    residuals = rng.normal(size=rated.shape) * rated
    owners_of, entities_of = np.nonzero(rated)  # users x items: item-KNN, owner = user
    values = residuals[owners_of, entities_of]
    lists = rated_lists(owners_of, entities_of, values, 30, 12)
    stats = similarity_stats(residuals.T, rated.T, measure)
    chosen = np.arange(0, len(values), 7)
    loo = loo_neighborhood_average(
        stats,
        lists,
        owners_of[chosen],
        entities_of[chosen],
        values[chosen],
        [2, 5],
        0.5,
        shrinkage=3.0,
        min_support=2,
    )
    for at, pair in enumerate(chosen):
        user, item = owners_of[pair], entities_of[pair]
        without = rated.copy()
        without[user, item] = 0.0
        kept = without[owners_of, entities_of] > 0
        similarity = shrunk_similarity((residuals * without).T, without.T, measure, 3.0, 2)  # type: ignore[arg-type]
        reduced = rated_lists(owners_of[kept], entities_of[kept], values[kept], 30, 12)
        expected = neighborhood_average(
            similarity, reduced, np.array([user]), np.array([item]), [2, 5], 0.5
        )
        for k in (2, 5):
            assert loo[k][0][at] == pytest.approx(expected[k][0][0], abs=1e-5)


def test_single_fit_blend_predicts_like_the_holdout_blend(synthetic_folds: list) -> None:
    """blend_fit="loo" fits the parts once (the KNN sides and the implicit scorer on all the
    ratings) and predicts about as well as the held-out blend."""
    fold = synthetic_folds[0]
    holdout = evaluate_fold(KMeansKNNConfig(blend_fit="holdout"), fold, rank=False).rmse
    single = KMeansKNN(blend_fit="loo")
    single.fit(fold.train)
    assert single.single_fit(fold.train)
    assert single.parts_.item_side is not None and single.parts_.factors is not None
    # what only the leave-one-out inputs read is not kept: a pickled model is as small as
    # the held-out blend's
    assert single.parts_.models.item_stats is None and single.parts_.models.held_factors is None
    holdout_model = KMeansKNN(blend_fit="holdout").fit(fold.train)
    assert len(pickle.dumps(single)) < 1.1 * len(pickle.dumps(holdout_model))
    rmse = evaluate_fold(KMeansKNNConfig(blend_fit="loo"), fold, rank=False).rmse
    assert np.isfinite(rmse) and rmse < holdout + 0.02


def test_auto_blend_fit_is_a_single_fit_on_small_sets_only(
    synthetic_folds: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = synthetic_folds[0].train
    model = KMeansKNN()
    assert model.config.blend_fit == "auto" and model.single_fit(train)
    monkeypatch.setattr(knn_module, "LOO_CELLS", train.n_users * train.n_items - 1)
    assert not model.single_fit(train)
    assert KMeansKNN(blend_fit="loo").single_fit(train)
    assert not KMeansKNN(blend_fit="loo", engine="sparse").single_fit(train)


def test_single_fit_with_cluster_biases_blends_every_part(synthetic_folds: list) -> None:
    """The cluster-bias path of a single fit fits its held-out factors too: the blend's
    weights and the predictions' design have the same parts (a crash at predict, before)."""
    fold = synthetic_folds[0]
    model = KMeansKNN(blend_fit="loo", cluster_biases=True, n_clusters=3).fit(fold.train)
    assert model.single_fit(fold.train)
    predicted = model.predict(fold.test.raw_users(), fold.test.raw_items())
    assert np.all(np.isfinite(predicted))
    holdout = evaluate_fold(
        KMeansKNNConfig(blend_fit="holdout", cluster_biases=True, n_clusters=3), fold, rank=False
    ).rmse
    assert float(np.sqrt(np.mean((predicted - fold.test.values) ** 2))) < holdout + 0.02
