"""Baseline models: the global mean and damped user + item biases."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from recommender.base import RecommenderModel
from recommender.bias import Biases, fit_biases
from recommender.config import ModelConfig
from recommender.data import Ratings
from recommender.foldin import FoldedUser


class GlobalMeanConfig(ModelConfig):
    """Predict the mean training rating for everything."""

    kind: Literal["global_mean"] = "global_mean"


class BiasConfig(ModelConfig):
    """Damped user + item biases (Koren's baseline predictor)."""

    kind: Literal["bias"] = "bias"
    user_damping: float = Field(default=5.0, ge=0)
    item_damping: float = Field(default=5.0, ge=0)


class GlobalMean(RecommenderModel[GlobalMeanConfig]):
    """The mean training rating; ranks items by their damped bias."""

    config_class = GlobalMeanConfig

    def _fit(self, train: Ratings, *, users: Any | None) -> None:
        self.mean_ = float(train.values.mean())

    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        return np.full(len(users), self.mean_)

    def _score_users(self, users: np.ndarray, n_neighbors: int | None = None) -> np.ndarray:
        # Every item has the same prediction; break the tie by item bias, not by id.
        return np.broadcast_to(self.baseline_.item_bias, (len(users), self.ratings_.n_items))

    def _predict_folded(self, user: FoldedUser, items: np.ndarray) -> np.ndarray:
        return np.full(len(items), self.mean_)

    def _score_folded(self, user: FoldedUser) -> np.ndarray:
        return self.baseline_.item_bias


class BiasBaseline(RecommenderModel[BiasConfig]):
    """``mean + user bias + item bias`` with damping toward zero for sparse users/items."""

    config_class = BiasConfig

    def _fit(self, train: Ratings, *, users: Any | None) -> None:
        # The shared fallback already is this model, fitted with the config's damping.
        self.biases_: Biases = self.baseline_

    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        return self.biases_.predict(users, items)

    def _score_users(self, users: np.ndarray, n_neighbors: int | None = None) -> np.ndarray:
        return self.biases_.mean + self.biases_.user_bias[users, None] + self.biases_.item_bias


__all__ = ["BiasBaseline", "BiasConfig", "Biases", "GlobalMean", "GlobalMeanConfig", "fit_biases"]
