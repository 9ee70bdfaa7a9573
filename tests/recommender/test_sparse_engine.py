"""The sparse engine of KMeansKNN: block-wise top neighbours within clusters, equal to the
dense engine when every positive similarity is kept."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

import recommender.knn as knn_module
from recommender import KMeansKNN
from recommender.data import Ratings
from recommender.knn import DENSE_CELLS, KMeansKNNConfig
from recommender.neighbors import neighborhood_average, rated_lists, shrunk_similarity
from recommender.ranking import ImplicitKNNConfig, ItemKNNScorer
from recommender.topk import sparse_rows, top_k_average, top_neighbors


def _random_ratings(seed: int = 1, users: int = 300, items: int = 150, n: int = 9000) -> Ratings:
    rng = np.random.default_rng(seed)
    user_ids = rng.integers(0, users, n)
    item_ids = rng.integers(0, items, n)
    # a little structure: users of even id like even items
    stars = 3.3 + 0.8 * ((user_ids % 2) == (item_ids % 2)) + rng.normal(0, 0.9, n)
    return Ratings.from_arrays(user_ids, item_ids, np.clip(np.round(stars), 1, 5))


def _residual_matrix(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rated = rng.random((120, 60)) < 0.25
    values = np.where(rated, rng.normal(size=rated.shape), 0.0).astype(np.float32)
    values[np.nonzero(rated)[0][:4], np.nonzero(rated)[1][:4]] = 0.0  # rated, residual 0
    return values, rated.astype(np.float32)


@pytest.mark.parametrize("measure", ["pearson", "cosine"])
def test_top_neighbors_keep_the_dense_similarities(measure: str) -> None:
    values, rated = _residual_matrix()
    dense = np.maximum(shrunk_similarity(values.T, rated.T, measure, 10.0, 2), 0.0)  # type: ignore[arg-type]
    users, items = np.nonzero(rated)
    rows = sparse_rows(items, users, values[users, items], (60, 120))
    assert rows.nnz == len(users)  # zero residuals are kept as ratings
    every = top_neighbors(rows, 60, measure, 10.0, 2)  # type: ignore[arg-type]
    assert np.allclose(every.to_csr().toarray(), dense, atol=1e-6)
    few = top_neighbors(rows, 5, measure, 10.0, 2)  # type: ignore[arg-type]
    assert np.allclose(few.similarity, -np.sort(-dense, axis=1)[:, :5], atol=1e-6)
    assert np.all(np.diff(few.similarity, axis=1) <= 0)  # best first


def test_neighbours_stay_in_their_cluster_or_are_down_weighted() -> None:
    values, rated = _residual_matrix(1)
    users, items = np.nonzero(rated)
    rows = sparse_rows(items, users, values[users, items], (60, 120))
    labels = np.arange(60) % 3
    same = labels[:, None] == labels[None, :]
    restricted = top_neighbors(rows, 60, labels=labels).to_csr().toarray()
    assert np.all(restricted[~same] == 0.0) and np.any(restricted[same] > 0)
    weighted = top_neighbors(rows, 60, labels=labels, cluster_weight=0.5).to_csr().toarray()
    everyone = top_neighbors(rows, 60).to_csr().toarray()
    assert np.allclose(weighted, np.where(same, everyone, 0.5 * everyone), atol=1e-6)


def test_top_k_average_equals_the_dense_kernel() -> None:
    values, rated = _residual_matrix(2)
    users, items = np.nonzero(rated)
    residuals = values[users, items]
    similarity = shrunk_similarity(values.T, rated.T, "pearson", 5.0)
    lists = rated_lists(users, items, residuals, 120, 60)
    rows = sparse_rows(items, users, residuals, (60, 120))
    owners = np.repeat(np.arange(120), 60)
    targets = np.tile(np.arange(60), 120)
    dense = neighborhood_average(similarity, lists, owners, targets, [1, 5, 40], 0.5)
    sparse = top_k_average(top_neighbors(rows, 59, shrinkage=5.0), lists, owners, targets,
                           [1, 5, 40], 0.5)  # fmt: skip
    for k in (1, 5, 40):
        assert np.allclose(sparse[k][0], dense[k][0], atol=1e-5)
        assert np.allclose(sparse[k][1], dense[k][1], atol=1e-5)


def test_rated_lists_look_up_pairs() -> None:
    lists = rated_lists(np.array([0, 0, 2]), np.array([3, 1, 0]), np.array([0.5, -1.0, 2.0]), 3, 4)
    found, value = lists.lookup(np.array([0, 1, 2]), np.array([[1, 3, 4], [1, 3, 4], [0, 1, 4]]))
    assert found.tolist() == [[True, True, False], [False, False, False], [True, False, False]]
    assert value[0].tolist() == [-1.0, 0.5, 0.0] and value[2, 0] == 2.0


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"n_clusters": 4},
        {"n_clusters": 4, "cluster_biases": True},
        {"n_clusters": 3, "cluster_weight": 0.3, "based": "user", "similarity": "cosine"},
    ],
)
def test_sparse_engine_predicts_as_the_dense_one(params: dict[str, object]) -> None:
    """Equal settings, equal predictions. The implicit-score blend and the single fit
    (``blend_fit="loo"``) are the dense engine's only (the sparse engine avoids their users x
    items arrays): both go without them."""
    train = _random_ratings()
    params = {**params, "implicit_blend": False, "blend_fit": "holdout"}
    dense = KMeansKNN(engine="dense", **params).fit(train)  # type: ignore[arg-type]
    sparse = KMeansKNN(engine="sparse", kept_neighbors=1000, **params).fit(train)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    users, items = (
        train.user_ids[rng.integers(0, 300, 800)],
        train.item_ids[rng.integers(0, 150, 800)],
    )
    assert np.allclose(sparse.predict(users, items), dense.predict(users, items), atol=1e-5)
    assert sparse.neighbors_ is not None and sparse.similarity_ is None


def test_sparse_engine_with_few_neighbours_stays_close_and_beats_the_baseline() -> None:
    train = _random_ratings(2, n=12000)
    held = np.random.default_rng(0).random(len(train)) < 0.1
    fit, test = train.subset(~held), train.subset(held)
    users, items = test.raw_users(), test.raw_items()
    sparse = KMeansKNN(engine="sparse", kept_neighbors=30, n_clusters=4).fit(fit)
    dense = KMeansKNN(engine="dense", n_clusters=4).fit(fit)

    def rmse(model: KMeansKNN) -> float:
        return float(np.sqrt(np.mean((model.predict(users, items) - test.values) ** 2)))

    baseline = float(
        np.sqrt(
            np.mean((sparse.baseline_.predict(test.user_index, test.item_index) - test.values) ** 2)
        )
    )
    assert rmse(sparse) < baseline
    assert abs(rmse(sparse) - rmse(dense)) < 0.02


def test_auto_engine_switches_on_size() -> None:
    small = _random_ratings(n=2000)
    assert not KMeansKNNConfig().sparse_for(small)
    assert KMeansKNNConfig(engine="sparse").sparse_for(small)
    assert small.n_users * small.n_items < DENSE_CELLS


def test_item_knn_scorer_by_hand() -> None:
    # users 0 and 1 rated items 0 and 1; user 2 rated item 0 only
    train = Ratings.from_arrays([0, 0, 1, 1, 2], [0, 1, 0, 1, 0], [5, 4, 3, 4, 5])
    scorer = ItemKNNScorer.fit(train, ImplicitKNNConfig(n_neighbors=5))
    cosine = 2 / np.sqrt(3 * 2)  # items 0 (3 raters) and 1 (2 raters) share 2 raters
    scores = scorer._score_users(np.array([2]))
    assert scores[0, 1] == pytest.approx(cosine, rel=1e-5)
    assert scores[0, 0] == 0.0  # an item is not its own neighbour
    model = KMeansKNN(engine="sparse").fit(train)
    assert [item for item, _ in model.recommend(2, n=1)] == [1]


def test_without_refit_the_parts_fit_without_the_validation_share() -> None:
    train = _random_ratings(3, n=12000)
    once = KMeansKNN(engine="sparse", refit=False).fit(train)
    twice = KMeansKNN(engine="sparse").fit(train)
    assert once.parts_.item_side.lists.counts.sum() < len(train)
    assert twice.parts_.item_side.lists.counts.sum() == len(train)
    users, items = train.raw_users()[:500], train.raw_items()[:500]
    assert np.abs(once.predict(users, items) - twice.predict(users, items)).mean() < 0.15


def test_clusters_group_directions_not_volume() -> None:
    # power-law popularity: most items have a handful of ratings and project near the origin
    rng = np.random.default_rng(4)
    weights = 1 / np.arange(1, 401) ** 1.1
    items = rng.choice(400, 20000, p=weights / weights.sum())
    users = rng.integers(0, 500, 20000)
    stars = np.clip(np.round(3.5 + rng.normal(0, 1, 20000)), 1, 5)
    model = KMeansKNN(engine="sparse", based="item", n_clusters=8).fit(
        Ratings.from_arrays(users, items, stars)
    )
    sizes = np.bincount(model.cluster_labels_)
    assert sizes.max() < 0.5 * sizes.sum()


@pytest.mark.parametrize("engine", ["sparse", "dense"])
def test_a_refit_keeps_the_clusters_of_the_fit_without_the_validation_share(engine: str) -> None:
    train = _random_ratings(4, n=12000)
    config = KMeansKNNConfig(engine=engine, n_clusters=4, cluster_weight=0.5, blend_fit="holdout")
    clustered: list[int] = []
    labels = knn_module._Parts._labels

    def counted(parts: knn_module._Parts, rows: object, side: str) -> np.ndarray | None:
        clustered.append(rows.shape[0])  # type: ignore[attr-defined]
        return labels(parts, rows, side)

    with mock.patch.object(knn_module._Parts, "_labels", counted):
        model = KMeansKNN(config).fit(train)
    # K-Means of the users and of the items once: in the fit without the validation share
    assert sorted(clustered) == sorted([train.n_users, train.n_items])
    assert model.parts_.user_labels is not None and model.parts_.item_labels is not None
    assert len(model.parts_.user_labels) == train.n_users
    assert len(np.unique(model.parts_.user_labels)) > 1
    without_refit = KMeansKNN(config.model_copy(update={"refit": False})).fit(train)
    np.testing.assert_array_equal(model.parts_.user_labels, without_refit.parts_.user_labels)
    np.testing.assert_array_equal(model.parts_.item_labels, without_refit.parts_.item_labels)
