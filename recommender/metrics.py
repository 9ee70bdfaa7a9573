"""Rating error (RMSE, MAE) and top-K ranking metrics (Precision, Recall, NDCG, MAP, coverage).

Ranking metrics take ``recommended`` (one row of item ids per user, best first, -1 padding)
and ``relevant`` (one collection of relevant item ids per user) and average over the users
with at least one relevant item. Binary gains, log2 discount.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def rmse(predicted: Any, actual: Any) -> float:
    """Root mean squared error."""
    errors = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return float(np.sqrt(np.mean(errors**2)))


def mae(predicted: Any, actual: Any) -> float:
    """Mean absolute error."""
    errors = np.asarray(predicted, dtype=np.float64) - np.asarray(actual, dtype=np.float64)
    return float(np.mean(np.abs(errors)))


def hit_matrix(recommended: Any, relevant: Sequence[Collection[int]]) -> np.ndarray:
    """``hits[u, r]``: whether the item at rank ``r`` of user ``u`` is relevant to ``u``."""
    recommended = np.atleast_2d(np.asarray(recommended, dtype=np.int64))
    if len(relevant) != len(recommended):
        raise ValueError("recommended and relevant must have one row per user")
    sizes = np.array([len(items) for items in relevant], dtype=np.int64)
    owners = np.repeat(np.arange(len(relevant)), sizes)
    flat = np.fromiter((item for items in relevant for item in items), np.int64, sizes.sum())
    # Encode (user row, item id) as one integer so membership is a single np.isin.
    span = int(max(flat.max(initial=0), recommended.max(initial=0))) + 2
    relevant_keys = owners * span + flat
    rows = np.arange(len(recommended))[:, None]
    keys = rows * span + np.where(recommended >= 0, recommended, span - 1)
    return np.isin(keys, relevant_keys) & (recommended >= 0)


@dataclass(frozen=True)
class RankingScores:
    """Per-user Precision@K, Recall@K, NDCG@K and AP@K of the users with a relevant item."""

    precision: np.ndarray
    recall: np.ndarray
    ndcg: np.ndarray
    average_precision: np.ndarray

    def means(self) -> dict[str, float]:
        def mean(values: np.ndarray) -> float:
            return float(values.mean()) if len(values) else float("nan")

        return {
            "precision": mean(self.precision),
            "recall": mean(self.recall),
            "ndcg": mean(self.ndcg),
            "map": mean(self.average_precision),
        }


def ranking_scores(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> RankingScores:
    """All ranking metrics from a hit matrix (users x ranks) and each user's relevant count;
    users without relevant items are left out."""
    hits = np.asarray(hits, dtype=bool)
    keep = np.asarray(n_relevant) > 0
    hit = np.zeros((int(keep.sum()), k))
    width = min(k, hits.shape[1])
    hit[:, :width] = hits[keep, :width]
    n_rel = np.asarray(n_relevant)[keep].astype(np.float64)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discount)[np.minimum(n_rel, k).astype(np.int64) - 1]
    precision_at_rank = np.cumsum(hit, axis=1) / np.arange(1, k + 1)
    return RankingScores(
        precision=hit.sum(axis=1) / k,
        recall=hit.sum(axis=1) / n_rel,
        ndcg=(hit * discount).sum(axis=1) / ideal,
        average_precision=(precision_at_rank * hit).sum(axis=1) / np.minimum(n_rel, k),
    )


def _scores(recommended: Any, relevant: Sequence[Collection[int]], k: int) -> RankingScores:
    hits = hit_matrix(recommended, relevant)
    n_relevant = np.array([len(set(items)) for items in relevant])
    return ranking_scores(hits, n_relevant, k)


def precision_at_k(recommended: Any, relevant: Sequence[Collection[int]], k: int = 10) -> float:
    """Share of the top ``k`` that is relevant (the denominator is always ``k``)."""
    return _scores(recommended, relevant, k).means()["precision"]


def recall_at_k(recommended: Any, relevant: Sequence[Collection[int]], k: int = 10) -> float:
    """Share of the relevant items found in the top ``k``."""
    return _scores(recommended, relevant, k).means()["recall"]


def ndcg_at_k(recommended: Any, relevant: Sequence[Collection[int]], k: int = 10) -> float:
    """DCG of the top ``k`` over the ideal DCG of ``min(relevant, k)`` hits."""
    return _scores(recommended, relevant, k).means()["ndcg"]


def map_at_k(recommended: Any, relevant: Sequence[Collection[int]], k: int = 10) -> float:
    """Mean of average precision: sum of precision@rank at the hits over ``min(relevant, k)``."""
    return _scores(recommended, relevant, k).means()["map"]


def coverage(recommended: Any, n_items: int) -> float:
    """Share of the ``n_items`` catalogue that appears in at least one top-K list."""
    ids = np.asarray(recommended).ravel()
    return float(len(np.unique(ids[ids >= 0])) / n_items) if n_items else float("nan")
