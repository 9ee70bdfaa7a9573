"""Damped user + item biases: the baseline every model falls back to and normalises with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recommender.data import Ratings


@dataclass(frozen=True)
class Biases:
    """``mean + user_bias[u] + item_bias[i]``; unknown positions (-1) get a zero bias."""

    mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        user_part = np.where(users >= 0, self.user_bias[np.maximum(users, 0)], 0.0)
        item_part = np.where(items >= 0, self.item_bias[np.maximum(items, 0)], 0.0)
        return self.mean + user_part + item_part

    def residuals(self, ratings: Ratings) -> np.ndarray:
        """Each rating minus its baseline."""
        return ratings.values - self.predict(ratings.user_index, ratings.item_index)


def fit_biases(
    ratings: Ratings, user_damping: float = 5.0, item_damping: float = 5.0, n_iterations: int = 5
) -> Biases:
    """Damped biases by alternating least squares: a bias is the residual sum over
    (count + damping), so users/items with few ratings stay near the mean."""
    users, items, values = ratings.user_index, ratings.item_index, ratings.values
    mean = float(values.mean())
    user_bias = np.zeros(ratings.n_users)
    item_bias = np.zeros(ratings.n_items)
    user_count = np.bincount(users, minlength=ratings.n_users)
    item_count = np.bincount(items, minlength=ratings.n_items)
    for _ in range(n_iterations):
        item_bias = np.bincount(items, values - mean - user_bias[users], ratings.n_items) / (
            item_count + item_damping
        )
        user_bias = np.bincount(users, values - mean - item_bias[items], ratings.n_users) / (
            user_count + user_damping
        )
    return Biases(mean, user_bias, item_bias)
