"""The shared component cache: fits differing only in cluster fields reuse the
cluster-independent parts, without changing any prediction or ranking."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from recommender import (
    Fold,
    KMeansKNN,
    Ratings,
    clear_component_cache,
    component_cache_info,
    evaluate_neighbor_sweep,
)
from recommender.cache import ComponentCache

from .conftest import synthetic_frames


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    clear_component_cache()
    yield
    clear_component_cache()


def _ratings() -> Ratings:
    """A fresh Ratings object (new identity, same content) on every call."""
    return Ratings.from_frame(synthetic_frames()[0])


def _outputs(model: KMeansKNN, ratings: Ratings) -> tuple[np.ndarray, np.ndarray]:
    users, items = ratings.raw_users(), ratings.raw_items()
    top, _ = model.recommend_positions(np.arange(ratings.n_users), 5)
    return model.predict(users, items), top


def test_fingerprint_is_by_content() -> None:
    first, second = _ratings(), _ratings()
    assert first is not second and first.fingerprint == second.fingerprint
    assert first.subset(np.arange(len(first)) % 2 == 0).fingerprint != first.fingerprint


@pytest.mark.parametrize(("blend_fit", "hits"), [("holdout", 9), ("loo", 8)])
def test_cluster_sweep_shares_components_and_keeps_results(blend_fit: str, hits: int) -> None:
    ratings = _ratings()
    params = [
        {"n_clusters": 1, "blend_fit": blend_fit},
        {"n_clusters": 3, "n_neighbors": 10, "blend_fit": blend_fit},
    ]
    cold = []
    for config in params:
        clear_component_cache()
        cold.append(_outputs(KMeansKNN(**config).fit(_ratings()), ratings))
    clear_component_cache()
    first = KMeansKNN(**params[0]).fit(_ratings())
    misses = component_cache_info().misses
    second = KMeansKNN(**params[1]).fit(_ratings())
    info = component_cache_info()
    # the second fit misses nothing. holdout: its residual models and the blend's implicit
    # scorer (each on the validation split and on all the ratings) and its ranker hit; the
    # first fit's ranker hit its own refit's scorer (the same fit); the validation split's
    # implicit scores (every user's, computed once) hit too, and the users' co-ratings (of
    # the validation split and of all the ratings) that the residual models share with the
    # implicit scorer. loo (one fit of the parts): the residual models, the implicit scorer
    # and its scores, and the co-ratings the leave-one-out inputs read hit in the second
    # fit; the first fit's scorer and ranker share one fit and its co-ratings (3 hits)
    assert info.misses == misses
    assert info.hits == hits
    assert second.parts_.implicit is not None and first.parts_.implicit is not None
    assert second.parts_.implicit.item_weights_ is first.ranker_.item_weights_
    assert second.parts_.factors is first.parts_.factors
    assert second.ranker_ is not None and first.ranker_ is not None
    assert second.ranker_.item_weights_ is first.ranker_.item_weights_
    for model, (predicted, top) in zip((first, second), cold, strict=True):
        np.testing.assert_array_equal(_outputs(model, ratings)[0], predicted)
        np.testing.assert_array_equal(_outputs(model, ratings)[1], top)


def test_cluster_biases_are_not_shared() -> None:
    KMeansKNN(n_clusters=1).fit(_ratings())
    biased = KMeansKNN(n_clusters=3, cluster_biases=True).fit(_ratings())
    plain = KMeansKNN(n_clusters=1).fit(_ratings())
    assert biased.parts_.factors is not plain.parts_.factors


def test_cached_arrays_are_read_only() -> None:
    model = KMeansKNN().fit(_ratings())
    assert model.similarity_ is not None and not model.similarity_.flags.writeable
    with pytest.raises(ValueError):
        model.similarity_[0, 0] = 1.0


def test_sweep_metrics_unchanged_by_cache(synthetic_folds: list[Fold]) -> None:
    fold = synthetic_folds[0]
    warm = [evaluate_neighbor_sweep(KMeansKNN.config_class(n_clusters=k), fold) for k in (1, 2)]
    clear_component_cache()
    cold = evaluate_neighbor_sweep(KMeansKNN.config_class(n_clusters=2), fold)
    for ours, theirs in zip(warm[1], cold, strict=True):
        assert ours.rmse == theirs.rmse and ours.ndcg_at_10 == theirs.ndcg_at_10


def test_concurrent_callers_compute_once() -> None:
    cache = ComponentCache()
    calls = []
    started = threading.Barrier(4)

    def compute() -> np.ndarray:
        calls.append(1)
        time.sleep(0.05)  # the other threads arrive while this one computes
        return np.ones(3)

    def worker(results: list[np.ndarray]) -> None:
        started.wait()
        results.append(cache.get_or_compute("key", compute))

    results: list[np.ndarray] = []
    threads = [threading.Thread(target=worker, args=(results,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(result is results[0] for result in results)
    assert cache.info().hits == 3


def test_bounds_and_errors() -> None:
    cache = ComponentCache(max_entries=2, max_bytes=100)
    for key in "abc":
        cache.get_or_compute(key, lambda: np.zeros(2))
    assert cache.info().entries == 2
    cache.get_or_compute("big", lambda: np.zeros(100))  # 800 bytes: returned, not kept
    assert cache.info().entries == 2 and cache.info().nbytes <= 100

    def fail() -> np.ndarray:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_compute("bad", fail)
    assert cache.get_or_compute("bad", lambda: np.ones(1))[0] == 1.0
    cache.clear()
    assert cache.info() == type(cache.info())(0, 0, 0, 0)
