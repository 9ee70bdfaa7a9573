"""Training tasks: the folds of a dataset version, the sweep, the champion's refit and top-N.

Tasks pass small references (a dataset version, a fold number, a configuration); the ratings
themselves are read once per process from the curated Parquet of that version.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict

from recommender import (
    Fold,
    KMeansKNNConfig,
    PopularityConfig,
    RandomForestRatings,
    Ratings,
    RecommenderModel,
    build_model,
    config_from_params,
    evaluate_fold,
    evaluate_neighbor_sweep,
    make_config,
)
from recommender.config import ModelConfig
from recommender.evaluate import cold_start_protocol
from tasks.caching import CONTENT
from tasks.config import load_settings
from tasks.features import read_lake_parquet
from tasks.lake import Lake

METRICS = ("rmse", "mae", "precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "coverage")
LOWER_IS_BETTER = frozenset({"rmse", "mae"})
# The kinds whose neighbour count is swept with one similarity computation per fit, and the
# kinds whose cluster count is swept as well.
NEIGHBOUR_KINDS = frozenset({"kmeans_knn", "paper"})
CLUSTER_KINDS = frozenset({"kmeans_knn"})
# One display name per model kind, in every plot, table and description (the kind itself stays
# the key in MLflow params, the sweep table and telemetry).
MODEL_NAMES: dict[str, str] = {
    "kmeans_knn": "K-Means KNN (tuned)",
    "paper": "K-Means user-KNN (paper)",
    "forest": "Random Forest",
    "bias": "Bias baseline",
    "global_mean": "Global mean",
    "popularity": "Popularity",
    "implicit_knn": "Implicit item-KNN",
}
PAPER_REPORTED = "K-Means user-KNN (paper, reported)"


def display_name(kind: str) -> str:
    return MODEL_NAMES.get(kind, kind)


class TrainingSet(BaseModel):
    """A dataset version ready for training: where it is and what it holds."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    lake_url: str
    version: str
    ratings: int
    users: int
    items: int
    folds: tuple[int, ...]


class SweepTask(BaseModel):
    """One unit of the sweep: a model kind (at a cluster count) on one fold."""

    model_config = ConfigDict(frozen=True)

    kind: str
    fold: int
    n_clusters: int | None = None
    n_neighbors: tuple[int, ...] = ()


@task(cache_policy=CONTENT, persist_result=True)
def prepare_training_set(dataset: str, version: str, lake_url: str) -> TrainingSet:
    """Check the curated version has ratings and folds; the reference the sweep tasks share."""
    ratings, _, _ = training_frames(lake_url, dataset, version)
    # fold 0 holds the ratings no fold tests (a temporal hold-out trains on them always)
    folds = tuple(sorted(int(f) for f in ratings["test_fold"].unique() if f > 0))
    return TrainingSet(
        dataset=dataset,
        lake_url=lake_url,
        version=version,
        ratings=ratings.height,
        users=ratings["user_id"].n_unique(),
        items=ratings["item_id"].n_unique(),
        folds=folds,
    )


@lru_cache(maxsize=4)
def training_frames(
    lake_url: str, dataset: str, version: str
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(ratings with test_fold, items with genre flag columns, users) of a curated version."""
    lake = Lake.from_settings(load_settings(), lake_url)
    prefix = f"curated/{dataset}/{version}"
    names = ("ratings", "folds", "items", "item_genres", "genres", "users")
    tables = read_lake_parquet(lake, {name: f"{prefix}/{name}.parquet" for name in names})
    ratings = tables["ratings"].join(tables["folds"], on=["user_id", "item_id"])
    flags = (
        tables["item_genres"]
        .join(tables["genres"], on="genre_id")
        .with_columns(pl.lit(1, pl.Int8).alias("flag"))
        .pivot(on="name", index="item_id", values="flag")
    )
    genre_names = tables["genres"].sort("genre_id")["name"].to_list()
    missing = [pl.lit(0, pl.Int8).alias(n) for n in genre_names if n not in flags.columns]
    items = (
        tables["items"]
        .select("item_id")
        .join(flags.with_columns(missing), on="item_id", how="left")
        .select("item_id", *(pl.col(n).fill_null(0).cast(pl.Int8) for n in genre_names))
    )
    users = tables["users"].select("user_id", "age", "gender", "occupation")
    return ratings, items, users


def fold_of(training: TrainingSet, fold: int) -> Fold:
    """Train on every rating outside test fold ``fold``, test on that fold."""
    ratings, items, _ = training_frames(training.lake_url, training.dataset, training.version)
    in_test = ratings["test_fold"] == fold
    return Fold(
        name=f"u{fold}",
        train=Ratings.from_frame(ratings.filter(~in_test), items=items),
        test=Ratings.from_frame(ratings.filter(in_test)),
    )


def sweep_tasks(
    kinds: list[str],
    folds: list[int],
    n_clusters: list[int],
    n_neighbors: list[int],
    side_by_side: int = 2,
) -> list[SweepTask]:
    """Every (kind, fold[, cluster count]) unit of the sweep; neighbour counts go together.

    Ordered for ``side_by_side`` workers: folds in groups of that many, cluster counts before
    folds within a group, so the units running together fit different folds' shared
    components (component cache) instead of one waiting for another, while only one group's
    components need to stay cached.
    """
    groups = [folds[i : i + side_by_side] for i in range(0, len(folds), max(side_by_side, 1))]
    units = []
    for kind in kinds:
        clusters: list[int | None] = [*sorted(n_clusters)] if kind in CLUSTER_KINDS else [None]
        counts = tuple(sorted(n_neighbors)) if kind in NEIGHBOUR_KINDS else ()
        units += [
            SweepTask(kind=kind, fold=fold, n_clusters=k, n_neighbors=counts)
            for group in groups
            for k in clusters
            for fold in group
        ]
    return units


def config_for(unit: SweepTask) -> ModelConfig:
    return make_config(
        unit.kind, **({} if unit.n_clusters is None else {"n_clusters": unit.n_clusters})
    )


@task(cache_policy=CONTENT, persist_result=True)
def evaluate_unit(training: TrainingSet, unit: SweepTask) -> list[dict[str, Any]]:
    """Fit one configuration on one fold and evaluate it at every neighbour count."""
    _, items, users = training_frames(training.lake_url, training.dataset, training.version)
    fold = fold_of(training, unit.fold)
    config = config_for(unit)
    if unit.n_neighbors:
        results = evaluate_neighbor_sweep(config, fold, unit.n_neighbors, items=items, users=users)
    else:
        results = [evaluate_fold(config, fold, items=items, users=users)]
    records = []
    for result in results:
        params = config.as_params()
        if result.n_neighbors is not None:
            params["n_neighbors"] = result.n_neighbors
        records.append(
            {
                "kind": unit.kind,
                "n_clusters": unit.n_clusters,
                "n_neighbors": result.n_neighbors,
                "fold": unit.fold,
                "params": params,
                **{name: getattr(result, name) for name in METRICS},
                "fit_seconds": result.fit_seconds,
                "predict_seconds": result.predict_seconds,
            }
        )
    get_run_logger().info(
        "%s k=%s fold %d: best rmse %.4f, ndcg@10 %.4f",
        unit.kind, unit.n_clusters, unit.fold,
        min(r["rmse"] for r in records), max(r["ndcg_at_10"] for r in records),
    )  # fmt: skip
    return records


def sweep_table(records: list[dict[str, Any]]) -> pl.DataFrame:
    """One row per configuration: mean metrics and seconds over its folds."""
    frame = pl.DataFrame(
        [{k: v for k, v in r.items() if k != "params"} for r in records],
        infer_schema_length=None,
    ).with_columns(pl.col(name).fill_nan(None) for name in METRICS)
    return (
        frame.group_by("kind", "n_clusters", "n_neighbors", maintain_order=True)
        .agg(
            pl.len().alias("folds"),
            *(pl.col(name).mean() for name in (*METRICS, "fit_seconds", "predict_seconds")),
        )
        .sort("kind", "n_clusters", "n_neighbors", nulls_last=True)
    )


def best_configuration(records: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The configuration (params) with the best mean ``metric`` over its folds."""
    table = sweep_table(records).filter(pl.col(metric).is_not_null())
    if table.is_empty():
        raise ValueError(f"no model of the sweep has a {metric}")
    best = table.sort(metric, descending=metric not in LOWER_IS_BETTER).row(0, named=True)
    params = next(
        r["params"]
        for r in records
        if (r["kind"], r["n_clusters"], r["n_neighbors"])
        == (best["kind"], best["n_clusters"], best["n_neighbors"])
    )
    return {"params": params, "metrics": {m: best[m] for m in METRICS if best[m] is not None}}


def model_metrics(table: pl.DataFrame, metric: str) -> dict[str, dict[str, float | None]]:
    """Per model kind, the metrics of its best configuration by ``metric`` (by NDCG@10 for
    a ranking-only model such as popularity, which predicts no ratings)."""
    models: dict[str, dict[str, float | None]] = {}
    for (kind,), rows in table.group_by("kind", maintain_order=True):
        by = metric if rows[metric].is_not_null().any() else "ndcg_at_10"
        ranked = rows.filter(pl.col(by).is_not_null())
        if ranked.is_empty():
            continue
        best = ranked.sort(by, descending=by not in LOWER_IS_BETTER).row(0, named=True)
        models[str(kind)] = {m: best.get(m) for m in METRICS}
    return models


def fit_on_all(training: TrainingSet, config: ModelConfig) -> RecommenderModel[Any]:
    """The configuration refitted on every rating of the dataset version."""
    ratings, items, users = training_frames(training.lake_url, training.dataset, training.version)
    return build_model(config).fit(
        Ratings.from_frame(ratings, items=items), items=items, users=users
    )


def top_n_for_every_user(model: RecommenderModel[Any], n: int) -> pl.DataFrame:
    """(user_id, rank, item_id, score) for every user the model knows, best first."""
    users = model.ratings_.user_ids  # type: ignore[attr-defined]
    top, scores = model.recommend_positions(np.arange(len(users)), n)  # type: ignore[attr-defined]
    found = top >= 0  # rows are padded with -1 when a user has fewer than n candidates
    return pl.DataFrame(
        {
            "user_id": np.repeat(users, top.shape[1])[found.ravel()].astype(np.int32),
            "rank": np.tile(np.arange(1, top.shape[1] + 1), len(users))[found.ravel()].astype(
                np.int16
            ),
            "item_id": model.ratings_.item_ids[top[found]].astype(np.int32),  # type: ignore[attr-defined]
            "score": scores[found].astype(np.float64),
        }
    )


def cluster_diagnostics(
    training: TrainingSet, n_clusters: list[int]
) -> tuple[list[float], list[float | None], dict[int, list[int]]]:
    """Inertia, silhouette and cluster sizes of K-Means of users, per cluster count, on the
    features the tuned hybrid clusters."""
    from recommender import KMeansKNNConfig, RatingClusters

    components = KMeansKNNConfig().cluster_components

    ratings, items, _ = training_frames(training.lake_url, training.dataset, training.version)
    data = Ratings.from_frame(ratings, items=items)
    inertia: list[float] = []
    silhouettes: list[float | None] = []
    sizes: dict[int, list[int]] = {}
    for k in sorted(n_clusters):
        clusters = RatingClusters(k, of="users", n_components=components, directions=True).fit(data)
        inertia.append(clusters.inertia_)
        silhouettes.append(clusters.silhouette() if k > 1 else None)
        sizes[k] = np.bincount(clusters.labels_, minlength=k).tolist()
    return inertia, silhouettes, sizes


class SweepDiagnostics(BaseModel):
    """What the sweep's plots show beside the metrics: K-Means of users per cluster count,
    and the Random Forest's feature importances (fit on every rating)."""

    model_config = ConfigDict(frozen=True)

    n_clusters: list[int]
    inertia: list[float]
    silhouettes: list[float | None]
    sizes: dict[int, list[int]]
    forest_importances: list[tuple[str, float]] | None = None


@task(cache_policy=CONTENT, persist_result=True)
def sweep_diagnostics(
    training: TrainingSet, n_clusters: list[int], kinds: list[str]
) -> SweepDiagnostics:
    """The elbow, silhouettes and cluster sizes, and (when the sweep has the forest) its
    importances; a task of its own so that it runs beside the sweep's last units."""
    inertia, silhouettes, sizes = cluster_diagnostics(training, n_clusters)
    importances = None
    if "forest" in kinds:
        forest = fit_on_all(training, config_from_params({"kind": "forest"}))
        assert isinstance(forest, RandomForestRatings)
        importances = forest.feature_importances_
    return SweepDiagnostics(
        n_clusters=sorted(n_clusters), inertia=inertia, silhouettes=silhouettes, sizes=sizes,
        forest_importances=importances,
    )  # fmt: skip


# The cold-start comparison (issue 18.2): new users folded in from their first k ratings. The
# item-KNN fold-in is the K-Means fold-in with one cluster (the population's prior), so the
# clusters are the only difference between the two.
COLD_START_METHODS: dict[str, ModelConfig] = {
    "popularity": PopularityConfig(),
    "item_knn": KMeansKNNConfig(fold_in_clusters=1),
    "kmeans": KMeansKNNConfig(),
}
COLD_START_KS = (0, 1, 3, 5)
COLD_START_METRICS = ("ndcg_at_10", "precision_at_10", "rmse")


@task(cache_policy=CONTENT, persist_result=True)
def cold_start_comparison(
    training: TrainingSet, folds: list[int], ks: list[int]
) -> list[dict[str, Any]]:
    """Popularity, item-KNN fold-in and K-Means fold-in for held-out users given their first
    ``k`` ratings (``recommender.evaluate.cold_start_protocol``) on ``folds``: one record per
    fold, method and k."""
    _, _, users = training_frames(training.lake_url, training.dataset, training.version)
    results = cold_start_protocol(
        [fold_of(training, fold) for fold in folds], COLD_START_METHODS, ks, users=users
    )
    get_run_logger().info("cold start on folds %s: %d results", folds, len(results))
    return [
        {"fold": int(r.fold.removeprefix("u")), "method": r.method, "k": r.k,
         "n_users": r.n_users, **{m: float(getattr(r, m)) for m in COLD_START_METRICS}}
        for r in results
    ]  # fmt: skip


def cold_start_table(records: list[dict[str, Any]]) -> pl.DataFrame:
    """Mean over folds of each cold-start metric per method and k."""
    return (
        pl.DataFrame(records)
        .group_by("method", "k", maintain_order=True)
        .agg(pl.len().alias("folds"), *(pl.col(m).mean() for m in COLD_START_METRICS))
        .sort("method", "k")
    )
