"""Evaluation over folds: rating error, top-10 ranking metrics, timings, and the sweep grid."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recommender.base import RecommenderModel
from recommender.config import ModelConfig, Param
from recommender.data import Fold, ItemGenres, Ratings, column, column_names
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
        model.predict(
            fold.test.raw_users(),
            fold.test.raw_items(),
            n_neighbors=n_neighbors,
            times=fold.test.timestamps,
        )  # fmt: skip
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
        model.predict_for_neighbors(
            fold.test.raw_users(), fold.test.raw_items(), counts, times=fold.test.timestamps
        )
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


# -- the cold-start protocol ---------------------------------------------------------------

COLD_START_COUNTS: tuple[int, ...] = (0, 1, 3, 5, 10)
HELD_OUT_SHARE = 0.2
"""Share of each fold's test users held out as new users. On ml-100k's u1..u5 every user is
in both the base and the test file, so a fold has no new users of its own: a seeded fifth of
its test users (about 90 with relevant test items) lose all their training ratings."""


@dataclass(frozen=True)
class ColdStartSplit:
    """One fold made into a cold start: ``train`` is the fold's training ratings without any
    rating of the ``held_out`` users (raw ids); ``given`` holds those users' training ratings
    (what they could tell the model, first ``k`` by time); ``test`` their test ratings."""

    fold: str
    train: Ratings
    held_out: np.ndarray
    given: Ratings
    test: Ratings

    def first_ratings(self, k: int) -> dict[int, dict[int, float]]:
        """``{user_id: {item_id: rating}}``: each held-out user's first ``k`` given ratings by
        timestamp (ties by item id); every held-out user has an entry, possibly empty."""
        users, items, values = self.given.raw_users(), self.given.raw_items(), self.given.values
        stamps = self.given.timestamps
        if stamps is None:
            raise ValueError(f"fold {self.fold}: the cold-start protocol needs timestamps")
        order = np.lexsort((items, stamps, users))
        users, items, values = users[order], items[order], values[order]
        starts = np.searchsorted(users, users, side="left")
        keep = np.arange(len(users)) - starts < k
        first: dict[int, dict[int, float]] = {int(user): {} for user in self.held_out}
        for user, item, value in zip(users[keep], items[keep], values[keep], strict=True):
            first[int(user)][int(item)] = float(value)
        return first


def cold_start_split(fold: Fold, share: float = HELD_OUT_SHARE, seed: int = 0) -> ColdStartSplit:
    """Hold out a seeded ``share`` of the fold's test users (those with training ratings) and
    remove every one of their ratings from the training data."""
    train, test = fold.train, fold.test
    candidates = np.intersect1d(np.unique(test.raw_users()), train.user_ids)
    rng = np.random.default_rng(seed)
    held_out = np.sort(rng.choice(candidates, int(round(share * len(candidates))), replace=False))
    in_train = np.isin(train.raw_users(), held_out)
    in_test = np.isin(test.raw_users(), held_out)
    kept = train.subset(~in_train)
    # Rebuilt, not a subset: the held-out users must not stay behind as empty rows.
    remaining = Ratings.from_arrays(
        kept.raw_users(), kept.raw_items(), kept.values, kept.timestamps
    )
    if train.genres is not None:
        remaining = remaining.with_items(
            ItemGenres(train.item_ids, train.genres, train.genre_names)
        )
    return ColdStartSplit(
        fold=fold.name,
        train=remaining,
        held_out=held_out,
        given=train.subset(in_train),
        test=test.subset(in_test),
    )


@dataclass(frozen=True)
class ColdStartResult:
    """Metrics of one method on one fold's held-out users given ``k`` ratings each. NDCG@10
    and P@10 average over the users with a relevant (>= 4) test rating; RMSE over every test
    rating of the held-out users. ``strategies`` counts the fold-in strategies that answered."""

    fold: str
    method: str
    k: int
    rmse: float
    ndcg_at_10: float
    precision_at_10: float
    n_users: int
    strategies: dict[str, int] = field(default_factory=dict)


def cold_start_protocol(
    folds: Iterable[Fold],
    methods: Mapping[str, ModelConfig],
    ks: Sequence[int] = COLD_START_COUNTS,
    *,
    share: float = HELD_OUT_SHARE,
    seed: int = 0,
    users: Any | None = None,
) -> list[ColdStartResult]:
    """For every fold, method and ``k``: fit the method on the fold's training data without
    the held-out users (:func:`cold_start_split`), fold each held-out user in from their first
    ``k`` training ratings by time (and their demographics, when ``users`` is given: the
    models see the training users' rows at fit, the held-out users' only as fold-in input),
    and score the top-10 and the predicted ratings on their test ratings. No held-out user's
    rating, training or test, ever enters a fit."""
    demographics = _demographics_by_user(users)
    results = []
    for fold in folds:
        split = cold_start_split(fold, share, seed)
        for name, config in methods.items():
            model = build_model(config).fit(split.train, users=users)
            for k in ks:
                results.append(_cold_start_scores(model, split, name, k, demographics))
                logger.info("cold start %s %s k=%d: ndcg@10 %.4f rmse %.4f", fold.name, name,
                            k, results[-1].ndcg_at_10, results[-1].rmse)  # fmt: skip
    return results


def _demographics_by_user(users: Any | None) -> dict[int, dict[str, Any]]:
    if users is None:
        return {}
    fields = [name for name in ("age", "gender", "occupation") if name in column_names(users)]
    ids = column(users, "user_id")
    values = {name: column(users, name) for name in fields}
    return {int(user): {name: values[name][row] for name in fields} for row, user in enumerate(ids)}


def _cold_start_scores(
    model: RecommenderModel[Any], split: ColdStartSplit, method: str, k: int,
    demographics: Mapping[int, Mapping[str, Any]],
) -> ColdStartResult:  # fmt: skip
    """One method at one ``k``: a fold-in per held-out user (a loop over users, not ratings)."""
    test_users, test_items = split.test.raw_users(), split.test.raw_items()
    test_values = split.test.values
    order = np.argsort(test_users, kind="stable")
    bounds = np.searchsorted(test_users[order], split.held_out, side="left")
    ends = np.searchsorted(test_users[order], split.held_out, side="right")
    predicted = np.zeros(len(test_values))
    hits = np.zeros((len(split.held_out), TOP_K), dtype=bool)
    n_relevant = np.zeros(len(split.held_out), dtype=np.int64)
    strategies: dict[str, int] = {}
    for row, (user, given) in enumerate(split.first_ratings(k).items()):
        rows = order[bounds[row] : ends[row]]
        about = demographics.get(user)
        strategy = model.fold_in_strategy(given, demographics=about)
        strategies[strategy] = strategies.get(strategy, 0) + 1
        predicted[rows] = model.predict_for(given, test_items[rows], demographics=about)
        relevant = test_items[rows][test_values[rows] >= RELEVANT_RATING]
        top = [item for item, _ in model.recommend_for(given, TOP_K, demographics=about)]
        hits[row, : len(top)] = np.isin(top, relevant)
        n_relevant[row] = len(relevant)
    scores = ranking_scores(hits, n_relevant, TOP_K).means()
    return ColdStartResult(
        fold=split.fold, method=method, k=k,
        rmse=rmse(predicted, test_values),
        ndcg_at_10=scores["ndcg"], precision_at_10=scores["precision"],
        n_users=int((n_relevant > 0).sum()), strategies=strategies,
    )  # fmt: skip
