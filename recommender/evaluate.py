"""Evaluation over folds: rating error, top-10 ranking metrics, timings, and the sweep grid."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recommender.base import RecommenderModel
from recommender.config import ModelConfig, Param
from recommender.data import Fold, Ratings
from recommender.metrics import coverage, mae, ranking_scores, rmse
from recommender.registry import build_model, make_config

logger = logging.getLogger(__name__)

TOP_K = 10
RELEVANT_RATING = 4.0
METRICS: tuple[str, ...] = (
    "rmse", "mae", "precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "coverage",
    "fit_seconds", "predict_seconds",
)  # fmt: skip
SWEEP_CLUSTERS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
SWEEP_NEIGHBORS: tuple[int, ...] = (10, 20, 40, 80)


@dataclass(frozen=True)
class FoldResult:
    """Metrics of one model on one fold. RMSE/MAE are NaN for ranking-only models;
    ``predict_seconds`` covers the test ratings, ``recommend_seconds`` the top-10 lists."""

    fold: str
    rmse: float
    mae: float
    precision_at_10: float
    recall_at_10: float
    ndcg_at_10: float
    map_at_10: float
    coverage: float
    fit_seconds: float
    predict_seconds: float
    recommend_seconds: float = 0.0
    n_neighbors: int | None = None
    n_ranked_users: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Just the numeric metrics (the keys of :data:`METRICS`)."""
        return {name: float(getattr(self, name)) for name in METRICS}


@dataclass(frozen=True)
class CrossValidationResult:
    """Per-fold results of one configuration and their mean."""

    params: dict[str, Param]
    folds: list[FoldResult] = field(default_factory=list)

    @property
    def mean(self) -> dict[str, float]:
        """Mean of every metric over the folds (NaN stays NaN: ranking-only RMSE)."""
        return {name: float(np.mean([r.metrics()[name] for r in self.folds])) for name in METRICS}

    def records(self) -> list[dict[str, Any]]:
        """One flat dict per fold (params + metrics), e.g. for a frame or MLflow."""
        return [{**self.params, **result.as_dict()} for result in self.folds]


def _known_test(train: Ratings, test: Ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test ratings as training positions (-1 where the user or item is new)."""
    return (
        train.user_positions(test.raw_users()),
        train.item_positions(test.raw_items()),
        test.values,
    )


def _relevance(train: Ratings, test: Ratings) -> tuple[np.ndarray, np.ndarray]:
    """Users to rank (test users known in training) and a dense 0/1 relevance matrix over
    the training catalogue: test items rated >= 4."""
    users, items, values = _known_test(train, test)
    ranked = np.unique(users[users >= 0])
    row_of = np.full(train.n_users, -1)
    row_of[ranked] = np.arange(len(ranked))
    relevant = np.zeros((len(ranked), train.n_items), dtype=bool)
    keep = (users >= 0) & (items >= 0) & (values >= RELEVANT_RATING)
    relevant[row_of[users[keep]], items[keep]] = True
    return ranked, relevant


_NO_RANKING = {
    name: float("nan")
    for name in ("precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "coverage")
}


def _ranking_metrics(
    model: RecommenderModel[Any], fold: Fold, n_neighbors: int | None, rank: bool = True
) -> tuple[dict[str, float], float, int]:
    if not rank:
        return dict(_NO_RANKING), 0.0, 0
    ranked, relevant = _relevance(model.ratings_, fold.test)
    started = time.perf_counter()
    top, _ = model.recommend_positions(ranked, TOP_K, n_neighbors=n_neighbors)
    return _scored_top(model, top, relevant, time.perf_counter() - started)


def _ranking_metrics_for_neighbors(
    model: RecommenderModel[Any], fold: Fold, counts: Sequence[int]
) -> dict[int, tuple[dict[str, float], float, int]]:
    """:func:`_ranking_metrics` at every count, every user's items scored once."""
    ranked, relevant = _relevance(model.ratings_, fold.test)
    started = time.perf_counter()
    tops = model.recommend_positions_for_neighbors(ranked, TOP_K, counts)
    seconds = (time.perf_counter() - started) / len(tops)
    return {k: _scored_top(model, top, relevant, seconds) for k, (top, _) in tops.items()}


def _scored_top(
    model: RecommenderModel[Any], top: np.ndarray, relevant: np.ndarray, seconds: float
) -> tuple[dict[str, float], float, int]:
    hits = np.take_along_axis(relevant, np.maximum(top, 0), axis=1) & (top >= 0)
    scores = ranking_scores(hits, relevant.sum(axis=1), TOP_K).means()
    metrics = {
        "precision_at_10": scores["precision"],
        "recall_at_10": scores["recall"],
        "ndcg_at_10": scores["ndcg"],
        "map_at_10": scores["map"],
        "coverage": coverage(top, model.ratings_.n_items),
    }
    return metrics, seconds, int((relevant.sum(axis=1) > 0).sum())


def _rating_metrics(predicted: np.ndarray | None, actual: np.ndarray) -> dict[str, float]:
    if predicted is None:
        return {"rmse": float("nan"), "mae": float("nan")}
    return {"rmse": rmse(predicted, actual), "mae": mae(predicted, actual)}


def evaluate_fitted(
    model: RecommenderModel[Any], fold: Fold, *, fit_seconds: float = 0.0,
    n_neighbors: int | None = None, rank: bool = True,
) -> FoldResult:  # fmt: skip
    """Metrics of a model already fitted on ``fold.train``; ``rank=False`` skips the top-10
    metrics (NaN), e.g. for models that rank by predicted rating over every item (slow)."""
    started = time.perf_counter()
    predicted = (
        model.predict(fold.test.raw_users(), fold.test.raw_items(), n_neighbors=n_neighbors)
        if model.predicts_ratings
        else None
    )
    predict_seconds = time.perf_counter() - started
    ranking, recommend_seconds, n_ranked = _ranking_metrics(model, fold, n_neighbors, rank)
    return FoldResult(
        fold=fold.name, **_rating_metrics(predicted, fold.test.values), **ranking,
        fit_seconds=fit_seconds, predict_seconds=predict_seconds,
        recommend_seconds=recommend_seconds, n_neighbors=n_neighbors, n_ranked_users=n_ranked,
    )  # fmt: skip


def fit_timed(
    config: ModelConfig, fold: Fold, *, items: Any | None = None, users: Any | None = None,
    neighbor_counts: Sequence[int] = (),
) -> tuple[RecommenderModel[Any], float]:  # fmt: skip
    """A model built from ``config`` and fitted on ``fold.train``, with the seconds it took;
    a model that learns per-count blend weights learns them for ``neighbor_counts`` too."""
    model = build_model(config)
    if neighbor_counts and hasattr(model, "blend_counts"):
        model.blend_counts = tuple(sorted({*model.blend_counts, *neighbor_counts}))
    started = time.perf_counter()
    model.fit(fold.train, items=items, users=users)
    return model, time.perf_counter() - started


def evaluate_fold(
    config: ModelConfig, fold: Fold, *, items: Any | None = None, users: Any | None = None,
    rank: bool = True,
) -> FoldResult:  # fmt: skip
    """Fit ``config`` on the fold's training ratings and score it on its test ratings."""
    model, seconds = fit_timed(config, fold, items=items, users=users)
    return evaluate_fitted(model, fold, fit_seconds=seconds, rank=rank)


def cross_validate(
    config: ModelConfig, folds: Iterable[Fold], *, items: Any | None = None,
    users: Any | None = None, rank: bool = True,
) -> CrossValidationResult:  # fmt: skip
    """Per-fold metrics and fit/predict seconds of one configuration (mean in ``.mean``).
    ``items``/``users`` frames are passed to ``fit`` (item genres, user demographics)."""
    results = []
    for fold in folds:
        result = evaluate_fold(config, fold, items=items, users=users, rank=rank)
        logger.info("%s %s: rmse %.4f ndcg@10 %.4f", config.kind, fold.name, result.rmse,
                    result.ndcg_at_10)  # fmt: skip
        results.append(result)
    return CrossValidationResult(config.as_params(), results)


def evaluate_neighbor_sweep(
    config: ModelConfig, fold: Fold, n_neighbors: Sequence[int] = SWEEP_NEIGHBORS, *,
    items: Any | None = None, users: Any | None = None, rank: bool = True,
) -> list[FoldResult]:  # fmt: skip
    """One fit of ``config`` (its ``n_neighbors`` set to the largest count) evaluated at every
    neighbour count: one similarity computation, one partial sort for all the ratings.
    Each result's ``fit_seconds`` is that shared fit; ``n_neighbors`` says which count."""
    if "n_neighbors" not in type(config).model_fields:
        raise ValueError(f"{config.kind} has no n_neighbors to sweep")
    counts = sorted(set(n_neighbors))
    model, seconds = fit_timed(
        config.model_copy(update={"n_neighbors": counts[-1]}), fold, items=items, users=users,
        neighbor_counts=counts,
    )  # fmt: skip
    started = time.perf_counter()
    predicted = (
        model.predict_for_neighbors(fold.test.raw_users(), fold.test.raw_items(), counts)
        if model.predicts_ratings
        else dict.fromkeys(counts)
    )
    predict_seconds = (time.perf_counter() - started) / len(counts)
    if rank and model.ranking_depends_on_neighbors:
        rankings = _ranking_metrics_for_neighbors(model, fold, counts)
    else:
        rankings = dict.fromkeys(counts, _ranking_metrics(model, fold, None, rank))
    results = []
    for k in counts:
        ranking, recommend_seconds, n_ranked = rankings[k]
        results.append(
            FoldResult(
                fold=fold.name,
                **_rating_metrics(predicted[k], fold.test.values),
                **ranking,
                fit_seconds=seconds,
                predict_seconds=predict_seconds,
                recommend_seconds=recommend_seconds,
                n_neighbors=k,
                n_ranked_users=n_ranked,
            )  # fmt: skip
        )
    return results


def sweep_grid(
    kinds: Sequence[str] = ("kmeans_knn",),
    n_clusters: Sequence[int] = SWEEP_CLUSTERS,
    n_neighbors: Sequence[int] = SWEEP_NEIGHBORS,
    **fixed: Any,
) -> list[ModelConfig]:
    """Configs for every (kind, n_clusters, n_neighbors); ``fixed`` params apply to all.
    Group them by everything but ``n_neighbors`` to use :func:`evaluate_neighbor_sweep`."""
    return [
        make_config(kind, n_clusters=clusters, n_neighbors=count, **fixed)
        for kind, clusters, count in itertools.product(kinds, n_clusters, n_neighbors)
    ]
