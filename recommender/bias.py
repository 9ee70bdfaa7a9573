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


def damped_average(weighted: np.ndarray, total: np.ndarray, damping: float) -> np.ndarray:
    """``weighted / (total + damping)``, 0 where that denominator is (about) 0: a damping of 0
    leaves a user, item or cell without ratings at the prior, not at 0/0."""
    denominator = total + damping
    shape = np.broadcast_shapes(np.shape(weighted), np.shape(denominator))
    out = np.zeros(shape, dtype=np.result_type(weighted, denominator, np.float32))
    return np.divide(weighted, denominator, out=out, where=denominator > 1e-9)


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
        item_sums = np.bincount(items, values - mean - user_bias[users], ratings.n_items)
        item_bias = damped_average(item_sums, item_count, item_damping)
        user_sums = np.bincount(users, values - mean - item_bias[items], ratings.n_users)
        user_bias = damped_average(user_sums, user_count, user_damping)
    return Biases(mean, user_bias, item_bias)
