"""The paper configuration (Ahuja, Solanki & Nayyar, Confluence 2019): K-Means of movies on
their genres, users as mean rating per movie cluster, Pearson user KNN on those profiles."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from recommender.base import RecommenderModel
from recommender.clustering import elbow_inertias, elbow_point, kmeans
from recommender.config import ModelConfig
from recommender.data import Ratings
from recommender.neighbors import neighborhood_average, rated_lists

logger = logging.getLogger(__name__)

PAPER_RMSE = 1.081
"""RMSE the paper reports on its 80/20 split."""


class PaperConfig(ModelConfig):
    """``n_clusters=None`` picks the movie-cluster count by the elbow method over
    ``2..max_clusters``."""

    kind: Literal["paper"] = "paper"
    n_clusters: int | None = Field(default=None, ge=1)
    max_clusters: int = Field(default=20, ge=3)
    n_neighbors: int = Field(default=30, ge=1)
    seed: int = 0


class PaperKNN(RecommenderModel[PaperConfig]):
    """Needs item genres: ``fit(ratings, items=items_frame)`` or Ratings carrying genres."""

    config_class = PaperConfig

    def _fit(self, train: Ratings, *, users: Any | None) -> None:
        if train.genres is None:
            raise ValueError(
                "the paper model clusters movies on genres: pass fit(ratings, items=frame) "
                "with item_id + genre columns, or Ratings built with items"
            )
        self.n_clusters_ = self._cluster_count(train.genres)
        fitted = kmeans(train.genres, self.n_clusters_, self.config.seed, n_init=10)
        self.item_labels_: np.ndarray = fitted.labels_
        self.cluster_centers_: np.ndarray = fitted.cluster_centers_
        self.profiles_ = self._profiles(train)
        self.similarity_ = _pearson_rows(self.profiles_).astype(np.float32)
        self.lists_ = rated_lists(
            train.item_index, train.user_index, train.values, train.n_items, train.n_users
        )

    def _cluster_count(self, genres: np.ndarray) -> int:
        if self.config.n_clusters is not None:
            return self.config.n_clusters
        counts = list(range(1, self.config.max_clusters + 1))
        self.inertias_ = elbow_inertias(genres, counts, self.config.seed)
        chosen = elbow_point(counts, self.inertias_)
        logger.info("elbow method picked %d movie clusters", chosen)
        return chosen

    def _profiles(self, train: Ratings) -> np.ndarray:
        """Mean rating of each user per movie cluster; a cluster the user never rated gets
        the user's overall mean, so it does not pull the correlation either way."""
        members = np.eye(self.n_clusters_)[self.item_labels_[train.item_index]]
        sums = np.zeros((train.n_users, self.n_clusters_))
        counts = np.zeros_like(sums)
        np.add.at(sums, train.user_index, members * train.values[:, None])
        np.add.at(counts, train.user_index, members)
        user_mean = sums.sum(axis=1) / np.maximum(counts.sum(axis=1), 1)
        return np.where(counts > 0, sums / np.maximum(counts, 1), user_mean[:, None])

    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        k = n_neighbors or self.config.n_neighbors
        average, weight = neighborhood_average(self.similarity_, self.lists_, items, users, [k])[k]
        # No positively correlated neighbour rated the item: leave it to the baseline.
        return np.where(weight > 0, average, np.nan)

    def _predict_index_for_neighbors(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """Every count from one partial sort of the neighbours."""
        found = neighborhood_average(self.similarity_, self.lists_, items, users, counts)
        return {k: np.where(weight > 0, average, np.nan) for k, (average, weight) in found.items()}

    @property
    def ranking_depends_on_neighbors(self) -> bool:
        return True


def _pearson_rows(rows: np.ndarray) -> np.ndarray:
    centred = rows - rows.mean(axis=1, keepdims=True)
    length = np.sqrt((centred**2).sum(axis=1))
    norms = np.outer(length, length)
    similarity = np.divide(centred @ centred.T, norms, out=np.zeros((len(rows), len(rows))),
                           where=norms > 1e-12)  # fmt: skip
    np.fill_diagonal(similarity, 0.0)
    return similarity
