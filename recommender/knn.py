"""The tuned K-Means + KNN hybrid: user- and/or item-based KNN on baseline residuals, with
K-Means clusters restricting or weighting the neighbourhood and a validation-fit blend."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from recommender.base import RecommenderModel
from recommender.bias import fit_biases
from recommender.cache import config_key, shared_component
from recommender.clustering import cluster_labels, reduced_rows
from recommender.config import ModelConfig
from recommender.data import Ratings
from recommender.factors import fit_factors
from recommender.neighbors import (
    RatedLists,
    Similarity,
    neighborhood_average,
    rated_lists,
    shrunk_similarity,
)
from recommender.ranking import ImplicitKNN, ImplicitKNNConfig

logger = logging.getLogger(__name__)

SWEEP_NEIGHBORS: tuple[int, ...] = (10, 20, 40, 80)
"""Neighbour counts whose blend weights every fit learns, so a sweep needs one fit."""


class KMeansKNNConfig(ModelConfig):
    """Hyper-parameters of :class:`KMeansKNN`; the defaults are the best configuration found
    (chosen on validation splits carved from the training folds, never on test data)."""

    kind: Literal["kmeans_knn"] = "kmeans_knn"
    based: Literal["user", "item", "both"] = Field(
        default="both", description="neighbourhoods of users, of items, or both blended"
    )
    similarity: Similarity = "pearson"
    n_neighbors: int = Field(default=40, ge=1)
    shrinkage: float = Field(default=100.0, ge=0, description="similarity * (n-1)/(n-1+shrinkage)")
    min_support: int = Field(
        default=1, ge=1, description="co-ratings needed for a non-zero similarity"
    )
    neighbor_damping: float = Field(
        default=0.5, ge=0, description="added to sum(similarity): pulls thin neighbourhoods to 0"
    )
    user_damping: float = Field(default=5.0, ge=0)
    item_damping: float = Field(default=5.0, ge=0)
    n_clusters: int = Field(default=1, ge=1, description="K-Means clusters; 1 = no clustering")
    cluster_weight: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="weight of neighbours outside the cluster; 0 = restrict",
    )
    cluster_components: int = Field(
        default=24, ge=0,
        description="K-Means clusters the rows' top singular components (0: the raw rows)",
    )  # fmt: skip
    cluster_biases: bool = Field(default=False, description="add damped cluster x item biases")
    cluster_bias_damping: float = Field(default=25.0, ge=0)
    # Regularisation 0.15 won on validation splits of the training folds (never the test
    # folds). 30 factors: 0.9044 there against 0.9042 with 50 (100 tied 50), at 57% of the
    # fit time, which a sweep of 30 fits per dataset feels.
    n_factors: int = Field(
        default=30, ge=0, description="latent factors on the residuals; 0 = none"
    )
    factor_regularization: float = Field(default=0.15, gt=0)
    factor_iterations: int = Field(default=10, ge=1)
    validation_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="training share held out to fit the blend weights"
    )
    seed: int = 0
    ranking: ImplicitKNNConfig | None = Field(
        default=ImplicitKNNConfig(),
        description="scorer of recommend(); None ranks by predicted rating",
    )

    @property
    def n_parts(self) -> int:
        """How many residual predictors the blend combines."""
        return (2 if self.based == "both" else 1) + (1 if self.n_factors > 0 else 0)


@dataclass
class _Side:
    """A fitted neighbourhood: similarity between entities and the lists to average over."""

    similarity: np.ndarray
    lists: RatedLists
    labels: np.ndarray


_RESIDUAL_FIELDS = (
    "based", "similarity", "shrinkage", "min_support", "user_damping", "item_damping",
    "n_factors", "factor_regularization", "factor_iterations", "seed",
)  # fmt: skip
"""The config fields :class:`_ResidualModels` depends on (given residuals without cluster
biases): not ``n_clusters``, ``cluster_*`` or ``n_neighbors``, so a sweep over those shares it."""


@dataclass(frozen=True)
class _ResidualModels:
    """What is fitted on a dense residual matrix: the similarities (before any cluster
    weighting), the rated lists and the latent factors of each side that is used."""

    item_similarity: np.ndarray | None
    user_similarity: np.ndarray | None
    item_lists: RatedLists | None
    user_lists: RatedLists | None
    factors: tuple[np.ndarray, np.ndarray] | None

    @classmethod
    def fit(
        cls, train: Ratings, config: KMeansKNNConfig, dense: np.ndarray, rated: np.ndarray
    ) -> _ResidualModels:
        users, items = train.user_index, train.item_index
        residuals = dense[users, items]
        item_similarity = user_similarity = item_lists = user_lists = None
        if config.based in ("item", "both"):
            item_lists = rated_lists(users, items, residuals, train.n_users, train.n_items)
            item_similarity = _similarity(dense.T, rated.T, config)
        if config.based in ("user", "both"):
            user_lists = rated_lists(items, users, residuals, train.n_items, train.n_users)
            user_similarity = _similarity(dense, rated, config)
        factors = None
        if config.n_factors > 0:
            shape = (train.n_users, train.n_items)
            factors = fit_factors(
                users, items, residuals.astype(np.float64), shape, config.n_factors,
                config.factor_regularization, config.factor_iterations, config.seed,
            )  # fmt: skip
        return cls(item_similarity, user_similarity, item_lists, user_lists, factors)


def _similarity(rows: np.ndarray, rated: np.ndarray, config: KMeansKNNConfig) -> np.ndarray:
    return shrunk_similarity(rows, rated, config.similarity, config.shrinkage, config.min_support)


class _Parts:
    """Everything fitted on one set of ratings: baseline, cluster biases, KNN sides, factors."""

    def __init__(self, train: Ratings, config: KMeansKNNConfig, held_out: bool = False) -> None:
        self.config = config
        users, items = train.user_index, train.item_index
        self.biases = fit_biases(train, config.user_damping, config.item_damping)
        # log(1 + count) of each user and item, scaled as if fit on all the training data.
        scale = 1.0 / (1.0 - (config.validation_fraction if held_out else 0.0))
        self.user_support = np.log1p(np.bincount(users, minlength=train.n_users) * scale) / 7
        self.item_support = np.log1p(np.bincount(items, minlength=train.n_items) * scale) / 7
        residuals = self.biases.residuals(train).astype(np.float32)
        dense = np.zeros((train.n_users, train.n_items), dtype=np.float32)
        dense[users, items] = residuals
        rated = np.zeros_like(dense)
        rated[users, items] = 1.0
        self.user_labels = self._labels(dense, "user")
        self.item_labels = self._labels(dense.T, "item")
        self.cluster_bias = self._cluster_bias(dense, rated)
        models = self._residual_models(train, dense, rated)
        self.item_side = self._side(models.item_similarity, models.item_lists, self.item_labels)
        self.user_side = self._side(models.user_similarity, models.user_lists, self.user_labels)
        self.factors = models.factors

    def _labels(self, rows: np.ndarray, side: str) -> np.ndarray | None:
        wanted = self.config.based in (side, "both")
        if self.config.n_clusters <= 1 or not wanted:
            return None
        features = reduced_rows(rows, self.config.cluster_components, self.config.seed)
        return cluster_labels(features, self.config.n_clusters, self.config.seed)

    def _cluster_bias(self, dense: np.ndarray, rated: np.ndarray) -> np.ndarray:
        """Damped mean residual of each (user cluster, item) and (user, item cluster)."""
        bias = np.zeros_like(dense)
        if not self.config.cluster_biases:
            return bias
        damping = self.config.cluster_bias_damping
        if self.user_labels is not None:
            members = np.eye(self.config.n_clusters, dtype=np.float32)[self.user_labels]
            per_cluster = (members.T @ dense) / (members.T @ rated + damping)
            bias += per_cluster[self.user_labels]
        if self.item_labels is not None:
            members = np.eye(self.config.n_clusters, dtype=np.float32)[self.item_labels]
            remaining = (dense - bias) * rated
            per_cluster = (remaining @ members) / (rated @ members + damping)
            bias += per_cluster[:, self.item_labels]
        return bias

    def _residual_models(
        self, train: Ratings, dense: np.ndarray, rated: np.ndarray
    ) -> _ResidualModels:
        """Similarities, lists and factors of the residuals net of the cluster biases. With no
        cluster biases they do not depend on the clusters: shared between fits (cache)."""
        config = self.config
        if config.cluster_biases and (self.user_labels is not None or self.item_labels is not None):
            dense -= self.cluster_bias * rated
            return _ResidualModels.fit(train, config, dense, rated)
        key = (
            "kmeans_knn.residual_models", train.fingerprint,
            config_key(config, only=_RESIDUAL_FIELDS),
        )  # fmt: skip
        return shared_component(key, lambda: _ResidualModels.fit(train, config, dense, rated))

    def _side(
        self, similarity: np.ndarray | None, lists: RatedLists | None, labels: np.ndarray | None
    ) -> _Side | None:
        """A neighbourhood with out-of-cluster similarities scaled by ``cluster_weight`` (a new
        array: the shared raw similarity is never modified)."""
        if similarity is None or lists is None:
            return None
        if labels is None:
            labels = np.zeros(len(similarity), dtype=np.int64)
        else:
            same = labels[:, None] == labels[None, :]
            weight = np.where(same, 1.0, self.config.cluster_weight).astype(np.float32)
            similarity = similarity * weight
        return _Side(similarity, lists, labels)

    def base(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Baseline plus cluster biases for known positions."""
        return self.biases.predict(users, items) + self.cluster_bias[users, items]

    def residual_parts(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """``{k: design matrix}`` of the residual predictions (item-KNN, user-KNN, factors)."""
        damping = self.config.neighbor_damping
        columns: dict[int, list[np.ndarray]] = {k: [] for k in counts}
        if self.item_side is not None:
            side = self.item_side
            found = neighborhood_average(side.similarity, side.lists, users, items, counts, damping)
            for k in counts:
                columns[k].append(found[k][0])
        if self.user_side is not None:
            side = self.user_side
            found = neighborhood_average(side.similarity, side.lists, items, users, counts, damping)
            for k in counts:
                columns[k].append(found[k][0])
        if self.factors is not None:
            user_factors, item_factors = self.factors
            dot = (user_factors[users] * item_factors[items]).sum(axis=1)
            for k in counts:
                columns[k].append(dot)
        return {k: self._design(users, items, parts) for k, parts in columns.items()}

    def _design(self, users: np.ndarray, items: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
        """Blend inputs: the parts, the parts scaled by user/item support (trust a KNN more
        where there is more data; feature-weighted linear stacking), and the supports."""
        predictors = np.column_stack(parts)
        user_support = self.user_support[users]
        item_support = self.item_support[items]
        return np.column_stack(
            [
                np.ones(len(users)),
                predictors,
                predictors * user_support[:, None],
                predictors * item_support[:, None],
                user_support,
                item_support,
            ]
        )


class KMeansKNN(RecommenderModel[KMeansKNNConfig]):
    """K-Means + KNN recommender; ``KMeansKNN()`` is the best configuration found.

    ``predict``: baseline + a blend of residual KNN predictions (weights fit on a validation
    split of the training data); ``recommend``: the implicit-feedback scorer ``ranker_``.
    The parts that do not depend on the clusters or ``n_neighbors`` (raw similarities, rated
    lists, latent factors, the ranker) are shared, read-only, between fits on equal data
    (:mod:`recommender.cache`), so a cluster sweep fits them once.
    """

    config_class = KMeansKNNConfig

    def _fit(self, train: Ratings, *, users: Any | None) -> None:
        config = self.config
        counts = sorted({config.n_neighbors, *SWEEP_NEIGHBORS})
        self.blend_weights_ = self._blend_weights(train, counts)
        self.parts_ = _Parts(train, config)
        self.cluster_labels_ = (
            self.parts_.user_labels if config.based != "item" else self.parts_.item_labels
        )
        sides = [s for s in (self.parts_.item_side, self.parts_.user_side) if s is not None]
        self.similarity_ = sides[0].similarity if sides else None
        self.ranker_ = ImplicitKNN(config.ranking).fit(train) if config.ranking else None

    def _blend_weights(self, train: Ratings, counts: Sequence[int]) -> dict[int, np.ndarray]:
        """Least-squares weights ``[intercept, part...]`` per neighbour count, fit on a held-out
        share of the training ratings; a single part needs no blend."""
        config = self.config
        if config.n_parts == 1:
            # Just the one residual prediction: intercept 0, weight 1, no support terms.
            single = np.zeros(3 + 3 * config.n_parts)
            single[1] = 1.0
            return {k: single for k in counts}
        held = np.random.default_rng(config.seed).random(len(train)) < config.validation_fraction
        inner = _Parts(train.subset(~held), config, held_out=True)
        users, items = train.user_index[held], train.item_index[held]
        target = train.values[held] - inner.base(users, items)
        weights = {}
        for k, design in inner.residual_parts(users, items, counts).items():
            weights[k] = np.linalg.lstsq(design, target, rcond=None)[0]
        logger.debug("blend weights at k=%d: %s", config.n_neighbors, weights[config.n_neighbors])
        return weights

    def _weights_for(self, k: int) -> np.ndarray:
        if k in self.blend_weights_:
            return self.blend_weights_[k]
        logger.info(
            "no blend weights fit for k=%d; using those of k=%d", k, self.config.n_neighbors
        )
        return self.blend_weights_[self.config.n_neighbors]

    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        k = n_neighbors or self.config.n_neighbors
        return self._blend(users, items, [k])[k]

    def _blend(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        base = self.parts_.base(users, items)
        predictions = {}
        for k, design in self.parts_.residual_parts(users, items, counts).items():
            predictions[k] = base + design @ self._weights_for(k)
        return predictions

    def _predict_index_for_neighbors(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Every count from one similarity and one partial sort."""
        return self._blend(users, items, list(counts))

    @property
    def ranking_depends_on_neighbors(self) -> bool:
        return self.config.ranking is None

    def _score_users(self, users: np.ndarray, n_neighbors: int | None = None) -> np.ndarray:
        if self.ranker_ is None:
            return super()._score_users(users, n_neighbors)
        return self.ranker_._score_users(users)

    def _score_users_for_neighbors(
        self, users: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        if self.ranker_ is None:
            return self._predicted_scores(users, counts)
        scores = self.ranker_._score_users(users)  # the ranker ignores the neighbour count
        return dict.fromkeys(counts, scores)
