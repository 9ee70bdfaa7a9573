"""Most-popular ranking: items ordered by how many training users rated them."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from recommender.base import RecommenderModel
from recommender.config import ModelConfig
from recommender.data import Ratings
from recommender.foldin import FoldedUser


class PopularityConfig(ModelConfig):
    """No hyper-parameters: the ranking comparison point."""

    kind: Literal["popularity"] = "popularity"


class Popularity(RecommenderModel[PopularityConfig]):
    """Ranks by rating count; ``predict`` gives the bias baseline (it does not model ratings)."""

    config_class = PopularityConfig
    predicts_ratings = False

    def _fit(self, train: Ratings, *, users: Any | None) -> None:
        self.counts_ = np.bincount(train.item_index, minlength=train.n_items).astype(np.float64)

    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        return self.baseline_.predict(users, items)

    def _score_users(self, users: np.ndarray, n_neighbors: int | None = None) -> np.ndarray:
        return np.broadcast_to(self.counts_, (len(users), len(self.counts_)))

    def _score_folded(self, user: FoldedUser) -> np.ndarray:
        return self.counts_
