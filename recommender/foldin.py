"""Fold-in of users the model has not seen: their few ratings (or demographics) read against
the training data, and the K-Means user-cluster prior that carries them while they have few.

Strategies a fold-in answer reports (:attr:`FoldedUser.strategy`):

- ``cold_start_popular``: no rating of a known item and no usable demographics (or a model
  without demographic clusters): the population's preferences (popularity, item biases).
- ``cold_start_cluster``: no rating of a known item, but demographics the model was fit with
  user features for: the preferences of the user clusters those demographics point to.
- ``fold_in``: at least one rating of a known item: neighbourhood scores from those ratings,
  blended with the prior of the user clusters the ratings point to; the prior's weight
  ``tau / (tau + n)`` shrinks as the number ``n`` of known ratings grows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from recommender.bias import Biases, damped_average
from recommender.clustering import cluster_labels, reduced_rows
from recommender.data import Ratings, column, column_names
from recommender.topk import sparse_rows

logger = logging.getLogger(__name__)

Strategy = Literal["cold_start_popular", "cold_start_cluster", "fold_in"]
COLD_START_POPULAR: Strategy = "cold_start_popular"
COLD_START_CLUSTER: Strategy = "cold_start_cluster"
FOLD_IN: Strategy = "fold_in"
STRATEGIES: tuple[Strategy, ...] = (COLD_START_POPULAR, COLD_START_CLUSTER, FOLD_IN)

AGE_EDGES = (18, 25, 35, 45, 50, 56)
"""Age groups of the MovieLens 1M users file (under 18, 18-24, ..., 56+)."""
DEMOGRAPHIC_FIELDS = ("age", "gender", "occupation")


@dataclass(frozen=True)
class FoldedUser:
    """One new user read against a fitted model.

    ``items``/``values``: positions of the rated items known to the model and their ratings;
    ``n_ignored``: rated item ids the model has never seen (ignored); ``user_bias``: the damped
    user bias of those ratings; ``cluster_weights``: the posterior over the cold-start user
    clusters (None when the model has none); ``prior_share``: the weight of the cluster
    prior in the blend (1 with no ratings).
    """

    items: np.ndarray
    values: np.ndarray
    n_ignored: int
    user_bias: float
    strategy: Strategy
    cluster_weights: np.ndarray | None = None
    prior_share: float = 1.0

    @property
    def n_ratings(self) -> int:
        return len(self.items)


def known_ratings(
    ratings: Mapping[int, float], train: Ratings
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(item positions, ratings, n_ignored)`` of a ``{item_id: rating}`` mapping; item ids
    absent from ``train`` are ignored (and counted); a non-finite rating raises ValueError."""
    if not ratings:
        return np.zeros(0, np.int64), np.zeros(0), 0
    ids = np.fromiter((int(item) for item in ratings), np.int64, len(ratings))
    values = np.fromiter((float(value) for value in ratings.values()), np.float64, len(ratings))
    if not np.isfinite(values).all():
        bad = [item for item, value in zip(ids, values, strict=True) if not math.isfinite(value)]
        raise ValueError(f"fold-in ratings must be finite numbers; item ids {bad[:5]} are not")
    positions = train.item_positions(ids)
    known = positions >= 0
    if not known.all():
        logger.debug("fold-in ignores %d item ids unknown to the model", int((~known).sum()))
    return positions[known], values[known], int((~known).sum())


def folded_user_bias(
    biases: Biases, items: np.ndarray, values: np.ndarray, damping: float
) -> float:
    """The user bias :func:`recommender.bias.fit_biases` gives a user with these ratings (its
    last step, with the item biases fixed)."""
    if len(items) == 0:
        return 0.0
    residual = values - biases.mean - biases.item_bias[items]
    return float(residual.sum() / (len(items) + damping)) if len(items) + damping > 0 else 0.0


def age_group(age: Any) -> int:
    """Index of the MovieLens 1M age group of ``age`` (0: under 18 ... 6: 56 and over)."""
    return int(np.searchsorted(AGE_EDGES, float(age), side="right"))


@dataclass(frozen=True)
class DemographicPrior:
    """Naive-Bayes log p(cluster | age group, gender, occupation) from the training users'
    clusters; values never seen at fit are skipped (they carry no evidence)."""

    values: dict[str, dict[str, int]]
    log_given_cluster: dict[str, np.ndarray]  # field -> (n_values x n_clusters)

    @classmethod
    def fit(
        cls, users: Any, train: Ratings, labels: np.ndarray, n_clusters: int
    ) -> DemographicPrior | None:
        """From a ``user_id, age, gender, occupation`` frame; None if it has none of them."""
        names = set(column_names(users))
        fields = [name for name in DEMOGRAPHIC_FIELDS if name in names]
        if not fields:
            return None
        rows = train.user_positions(column(users, "user_id"))
        keep = rows >= 0
        values, tables = {}, {}
        for name in fields:
            raw = column(users, name)[keep]
            codes = np.array([_demographic_value(name, value) for value in raw])
            vocabulary = {value: code for code, value in enumerate(sorted(set(codes)))}
            index = np.array([vocabulary[value] for value in codes], dtype=np.int64)
            counts = np.zeros((len(vocabulary), n_clusters))
            np.add.at(counts, (index, labels[rows[keep]]), 1.0)
            # Laplace smoothing: p(value | cluster) with one pseudo-user per value.
            given = (counts + 1.0) / (counts.sum(axis=0, keepdims=True) + len(vocabulary))
            values[name], tables[name] = vocabulary, np.log(given)
        return cls(values, tables)

    def log_likelihood(
        self, demographics: Mapping[str, Any], n_clusters: int
    ) -> tuple[np.ndarray, int]:
        """``(sum of log p(value | cluster), number of fields used)``."""
        total = np.zeros(n_clusters)
        used = 0
        for name, vocabulary in self.values.items():
            if demographics.get(name) is None:
                continue
            code = vocabulary.get(_demographic_value(name, demographics[name]))
            if code is None:
                logger.debug("fold-in ignores the unseen %s %r", name, demographics[name])
                continue
            total += self.log_given_cluster[name][code]
            used += 1
        return total, used


def _demographic_value(name: str, value: Any) -> str:
    if name == "age":
        return str(age_group(value))
    return str(value).strip().lower()


@dataclass(frozen=True)
class ClusterPrior:
    """K-Means user clusters of the training data and what each prefers.

    ``choice[c, i]``: share of cluster ``c``'s users who rated item ``i``;
    ``liked[c, i]``: share who rated it at least ``liked_rating`` (the ranking prior);
    ``deviation[c, i]``: damped mean baseline residual of ``c``'s ratings of ``i`` (the
    rating prior); ``log_choice``: smoothed log p(item | cluster) of the multinomial the
    assignment reads a user's rated items with. With one cluster the prior is the population's.
    """

    labels: np.ndarray
    log_size: np.ndarray
    choice: np.ndarray
    liked: np.ndarray
    deviation: np.ndarray
    log_choice: np.ndarray
    residual_scale: float
    temperature: float
    demographics: DemographicPrior | None

    @property
    def n_clusters(self) -> int:
        return len(self.log_size)

    @classmethod
    def fit(
        cls, train: Ratings, biases: Biases, n_clusters: int, *, users: Any | None = None,
        components: int = 24, damping: float = 10.0, temperature: float = 1.0,
        liked_rating: float = 4.0, seed: int = 0, features: str = "residuals",
    ) -> ClusterPrior:  # fmt: skip
        """K-Means of the users' unit-length projections on the top singular components of
        their residual rows (``features="rated"``: of their 0/1 rated rows), as
        :class:`recommender.knn.KMeansKNN` clusters, then the per-cluster tables by counting."""
        rows_of, items = train.user_index, train.item_index
        residuals = biases.residuals(train)
        labels = np.zeros(train.n_users, dtype=np.int64)
        if n_clusters > 1:
            values = residuals if features == "residuals" else np.ones(len(train))
            rows = sparse_rows(rows_of, items, values, (train.n_users, train.n_items))
            features = reduced_rows(rows, components, seed, directions=True)
            labels = cluster_labels(features, n_clusters, seed)
        n_clusters = int(labels.max()) + 1
        shape = (n_clusters, train.n_items)
        keys = np.ravel_multi_index((labels[rows_of], items), shape)
        size = np.bincount(labels, minlength=n_clusters).astype(np.float64)
        rated = np.bincount(keys, minlength=shape[0] * shape[1]).reshape(shape)
        good = train.values >= liked_rating
        liked = np.bincount(keys[good], minlength=shape[0] * shape[1]).reshape(shape)
        sums = np.bincount(keys, residuals, minlength=shape[0] * shape[1]).reshape(shape)
        overall = rated.sum(axis=0) / max(float(size.sum()), 1.0)
        # Smoothed toward the population's item shares, one pseudo-user's worth per cluster.
        smoothed = (rated + overall) / (rated.sum(axis=1, keepdims=True) + overall.sum())
        return cls(
            labels=labels,
            log_size=np.log(size / size.sum()),
            choice=rated / size[:, None],
            liked=liked / size[:, None],
            deviation=damped_average(sums, rated, damping),
            log_choice=np.log(np.maximum(smoothed, 1e-12)),
            residual_scale=float(np.std(residuals)) or 1.0,
            temperature=temperature,
            demographics=(
                DemographicPrior.fit(users, train, labels, n_clusters) if users is not None else None
            ),
        )  # fmt: skip

    def posterior(
        self, items: np.ndarray, residuals: np.ndarray, demographics: Mapping[str, Any] | None
    ) -> tuple[np.ndarray, bool]:
        """``(p(cluster | ratings, demographics), whether demographics were used)``: the
        cluster sizes times the demographic likelihood times the tempered likelihood of which
        items were rated and of their residuals (Gaussian around the cluster's deviation)."""
        log_post = self.log_size.copy()
        used = False
        if demographics and self.demographics is not None:
            evidence, n_used = self.demographics.log_likelihood(demographics, self.n_clusters)
            log_post += evidence
            used = n_used > 0
        if len(items):
            which = self.log_choice[:, items].sum(axis=1)
            misfit = ((residuals[None, :] - self.deviation[:, items]) ** 2).sum(axis=1)
            log_post += self.temperature * (which - misfit / (2 * self.residual_scale**2))
        weights = np.exp(log_post - log_post.max())
        return weights / weights.sum(), used

    def ranking_prior(self, weights: np.ndarray) -> np.ndarray:
        """Expected share of the user's clusters who rated each item highly."""
        return np.asarray(weights @ self.liked)

    def rating_prior(self, weights: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Expected cluster deviation from the baseline of each item."""
        return np.asarray(weights @ self.deviation[:, items])


def prior_share(n_ratings: int, strength: float) -> float:
    """Weight of the cluster prior against a user's own ratings: ``strength / (strength + n)``
    (1 with no ratings, 0 with a strength of 0 and any rating)."""
    if n_ratings == 0:
        return 1.0
    return strength / (strength + n_ratings)


def scaled(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their largest magnitude (0 stays 0), so two scorers blend on one scale."""
    largest = float(np.abs(scores).max()) if len(scores) else 0.0
    return scores / largest if largest > 1e-12 else np.zeros_like(scores, dtype=np.float64)


def top_unseen(
    scores: np.ndarray, seen: np.ndarray, n: int, item_ids: np.ndarray
) -> list[tuple[int, float]]:
    """The ``n`` best items not in ``seen`` (positions) as ``(item_id, score)``, best first
    (ties by position)."""
    scores = np.array(scores, dtype=np.float64)
    scores[seen] = -np.inf
    width = min(n, int(np.isfinite(scores).sum()))
    if width <= 0:
        return []
    best = np.argpartition(-scores, width - 1)[:width]
    best = best[np.lexsort((best, -scores[best]))]
    return [(int(item_ids[i]), float(scores[i])) for i in best]
