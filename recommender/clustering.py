"""K-Means of users or items, with the elbow (inertia) and silhouette helpers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from recommender.bias import fit_biases
from recommender.data import Ratings
from recommender.topk import sparse_rows

if TYPE_CHECKING:
    from sklearn.cluster import KMeans, MiniBatchKMeans

# scikit-learn is imported where it is used: importing it takes about a second that a process
# which clusters nothing (``recsys train --help``, a fully cached run) should not pay.

logger = logging.getLogger(__name__)

ClusterOf = Literal["users", "items"]
ClusterFeatures = Literal["residuals", "ratings", "rated", "genres"]


MINIBATCH_ROWS = 50_000
"""Above this many rows K-Means runs on mini-batches (scikit-learn's ``MiniBatchKMeans``)."""


def kmeans(
    features: Any, n_clusters: int, seed: int = 0, n_init: int = 3
) -> KMeans | MiniBatchKMeans:
    """A fitted scikit-learn K-Means (k-means++ init, fixed seed for determinism); on more
    than :data:`MINIBATCH_ROWS` rows, ``MiniBatchKMeans``, whose cost does not grow with
    the rows per iteration."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    n_clusters = min(n_clusters, features.shape[0])
    if features.shape[0] > MINIBATCH_ROWS:
        return MiniBatchKMeans(
            n_clusters=n_clusters, n_init=n_init, batch_size=4096, random_state=seed
        ).fit(features)
    return KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(features)


def reduced_rows(rows: Any, n_components: int, seed: int = 0, directions: bool = False) -> Any:
    """The rows projected on their top ``n_components`` singular directions (randomized SVD),
    so K-Means measures distances in a few dense dimensions instead of thousands of sparse
    ones; the rows as they are when ``n_components`` is 0 or not below their width. ``rows``
    may be a SciPy sparse matrix. ``directions`` scales each projection to unit length:
    users or items with few ratings project near the origin and would otherwise fall into
    one cluster holding nearly all of them (spherical K-Means groups by taste, not volume)."""
    if n_components <= 0 or n_components >= min(rows.shape):
        return rows
    from sklearn.utils.extmath import randomized_svd

    left, values, _ = randomized_svd(rows, n_components, random_state=seed)
    reduced = np.asarray(left * values, dtype=np.float64)
    if directions:
        reduced /= np.maximum(np.linalg.norm(reduced, axis=1, keepdims=True), 1e-12)
    return reduced


def cluster_labels(features: Any, n_clusters: int, seed: int = 0) -> np.ndarray:
    """K-Means labels of the rows; one cluster (all zeros) when ``n_clusters`` is 1."""
    if n_clusters <= 1 or features.shape[0] <= 1:
        return np.zeros(features.shape[0], dtype=np.int64)
    return kmeans(features, n_clusters, seed).labels_.astype(np.int64)


def elbow_inertias(
    features: np.ndarray, cluster_counts: Sequence[int], seed: int = 0
) -> np.ndarray:
    """K-Means inertia (within-cluster sum of squares) for each cluster count."""
    return np.array([kmeans(features, k, seed).inertia_ for k in cluster_counts])


def elbow_point(cluster_counts: Sequence[int], inertias: Sequence[float] | np.ndarray) -> int:
    """The elbow: the count whose (normalised) inertia lies farthest below the straight line
    from the first to the last point (the "kneedle" rule)."""
    counts = np.asarray(cluster_counts, dtype=np.float64)
    values = np.asarray(inertias, dtype=np.float64)
    if len(counts) < 3:
        return int(counts[0])
    x = (counts - counts[0]) / (counts[-1] - counts[0])
    spread = values[0] - values[-1]
    y = (values - values[-1]) / spread if spread > 0 else np.zeros_like(values)
    below_chord = (1.0 - x) - y
    return int(counts[int(np.argmax(below_chord))])


def silhouette(features: np.ndarray, labels: np.ndarray, sample_size: int | None = 2000,
               seed: int = 0) -> float:  # fmt: skip
    """Mean silhouette coefficient (-1..1); NaN when there is a single cluster."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    from sklearn.metrics import silhouette_score

    size = None if sample_size is None or sample_size >= len(labels) else sample_size
    return float(silhouette_score(features, labels, sample_size=size, random_state=seed))


def rating_features(ratings: Ratings, of: ClusterOf, features: ClusterFeatures) -> Any:
    """Rows to cluster: per user (or item) its baseline residuals, raw ratings or 0/1 rated
    flags over the other side, as a sparse matrix (never users x items dense); for items,
    the genre flags."""
    if features == "genres":
        if of != "items" or ratings.genres is None:
            raise ValueError("genre features need of='items' and Ratings carrying genres")
        return ratings.genres
    if features == "residuals":
        values = fit_biases(ratings).residuals(ratings)
    elif features == "rated":
        values = np.ones(len(ratings))
    else:
        values = ratings.values
    users, items = ratings.user_index, ratings.item_index
    if of == "users":
        return sparse_rows(users, items, values, (ratings.n_users, ratings.n_items))
    return sparse_rows(items, users, values, (ratings.n_items, ratings.n_users))


class RatingClusters:
    """K-Means of users or items from a :class:`Ratings` (notebook-friendly helper).

    ``RatingClusters(8, of="items", features="genres").fit(ratings).labels_``; with
    ``n_components`` and ``directions`` it clusters the unit-length projections on the
    features' top singular components, as :class:`KMeansKNN` does.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        of: ClusterOf = "users",
        features: ClusterFeatures = "residuals",
        seed: int = 0,
        n_components: int = 0,
        directions: bool = False,
    ) -> None:
        self.n_clusters = n_clusters
        self.directions = directions
        self.of = of
        self.features = features
        self.seed = seed
        self.n_components = n_components

    def fit(self, ratings: Ratings) -> Self:
        rows = rating_features(ratings, self.of, self.features)
        self.features_ = reduced_rows(rows, self.n_components, self.seed, self.directions)
        fitted = kmeans(self.features_, self.n_clusters, self.seed)
        self.labels_: np.ndarray = fitted.labels_
        self.cluster_centers_: np.ndarray = fitted.cluster_centers_
        self.inertia_ = float(fitted.inertia_)
        return self

    def silhouette(self, sample_size: int | None = 2000) -> float:
        if not hasattr(self, "labels_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("RatingClusters is not fitted yet; call fit(ratings) first")
        return silhouette(self.features_, self.labels_, sample_size, self.seed)
