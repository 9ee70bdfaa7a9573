"""K-Means helpers: elbow rule by hand, labels, silhouette."""

from __future__ import annotations

import numpy as np
import pytest

from recommender import RatingClusters, Ratings, cluster_labels, elbow_point, silhouette


def test_elbow_point_by_hand() -> None:
    # Inertia falls steeply to k = 3 and then flattens: the elbow is 3.
    assert elbow_point([1, 2, 3, 4, 5, 6], [100, 50, 12, 10, 8, 6]) == 3


def test_two_blobs_are_separated() -> None:
    rng = np.random.default_rng(0)
    points = np.vstack([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))])
    labels = cluster_labels(points, 2)
    assert len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1
    assert labels[0] != labels[-1]
    assert silhouette(points, labels) > 0.9
    assert np.isnan(silhouette(points, np.zeros(40, int)))
    assert cluster_labels(points, 1).tolist() == [0] * 40


def test_rating_clusters_of_items_on_genres(synthetic_folds: list) -> None:
    train: Ratings = synthetic_folds[0].train
    clusters = RatingClusters(4, of="items", features="genres").fit(train)
    assert clusters.labels_.shape == (train.n_items,)
    assert clusters.cluster_centers_.shape == (4, 19)
    assert -1 <= clusters.silhouette() <= 1
    with pytest.raises(ValueError, match="genre"):
        RatingClusters(4, of="users", features="genres").fit(train)
