"""The train flow's steps around MLflow: record the sweep, promote a champion, serve top-N."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import polars as pl
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict

from recommender import PAPER_RMSE, config_from_params
from tasks import plots
from tasks.caching import CONTENT, RECORDED, STORE_READ, code_version, while_unchanged
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.plots import METRIC_LABELS, markdown_table
from tasks.train.tracking import (
    REGISTERED_MODEL,
    configure_mlflow,
    current_champion,
    experiment_id,
    experiment_url,
    export_to_lake,
    git_commit,
    identical_version,
    log_configurations,
    log_model_version,
    log_sweep_artifacts,
    register_and_promote,
    start_sweep_run,
    store_stamp,
)
from tasks.train.units import (
    COLD_START_METRICS,
    LOWER_IS_BETTER,
    MODEL_NAMES,
    PAPER_REPORTED,
    SweepDiagnostics,
    TrainingSet,
    best_configuration,
    cold_start_table,
    display_name,
    fit_on_all,
    model_metrics,
    sweep_table,
    top_n_for_every_user,
)
from tasks.warehouse.connection import advisory_lock, database_url
from tasks.warehouse.loads import replace_recommendations

if TYPE_CHECKING:
    from mlflow.entities import Metric

REGISTRY_LOCK = 0x5EC5_C4A1  # pg_advisory_lock key: one model registration at a time


class SweepRecord(BaseModel):
    """Where a sweep was recorded, its best configuration (and the nested run holding its
    per-fold figures), and the folds it ran on."""

    model_config = ConfigDict(frozen=True)

    parent_run_id: str
    best: dict[str, Any]
    metric: str
    table_csv: str
    best_run_id: str | None = None
    folds: list[int] = []
    experiment_url: str | None = None


class ChampionRecord(BaseModel):
    """What the train flow did with its best model. ``version``, ``alias`` and ``lake_uri`` are
    None when it registered nothing (a partial sweep not asked to register, or a model identical
    to a registered one); ``outcome`` says which, in a sentence."""

    model_config = ConfigDict(frozen=True)

    version: str | None
    alias: str | None
    champion_version: str | None
    run_id: str | None
    metric: str
    value: float
    lake_uri: str | None
    sweep_run_id: str | None = None
    outcome: str = ""


def run_tags(training: TrainingSet) -> dict[str, str]:
    return {
        "dataset": training.dataset,
        "dataset_version": training.version,
        "git_commit": git_commit(),
    }


def sweep_in_store(sweep: SweepRecord) -> bool:
    """Whether the configured MLflow store still holds the sweep's parent run (asked again
    only after the store changed: ``while_unchanged``)."""
    return while_unchanged(run_in_store, store_stamp(load_settings()), sweep.parent_run_id)


def champion_in_registry(champion: ChampionRecord) -> bool:
    """Whether the registry still holds the version this record names (if it names one)."""
    if champion.version is None:
        return True
    return while_unchanged(version_in_registry, store_stamp(load_settings()), champion.version)


@task(name="run-in-store", cache_policy=STORE_READ, persist_result=True)
def run_in_store(run_id: str, stamp: str | None) -> bool:
    """Whether the configured MLflow store holds run ``run_id`` (``stamp``: its state)."""
    from mlflow.exceptions import MlflowException

    try:
        configure_mlflow(load_settings()).get_run(run_id)
    except MlflowException:
        return False
    return True


@task(name="version-in-registry", cache_policy=STORE_READ, persist_result=True)
def version_in_registry(version: str, stamp: str | None) -> bool:
    """Whether the registry holds ``version`` of the project's model (``stamp``: its state)."""
    from mlflow.exceptions import MlflowException

    try:
        configure_mlflow(load_settings()).get_model_version(REGISTERED_MODEL, version)
    except MlflowException:
        return False
    return True


@task(cache_policy=CONTENT, persist_result=True)
def open_experiment(tracking_uri: str) -> str:
    """The MLflow store at ``tracking_uri`` and its experiment, created if new: run beside the
    sweep's last units, so that a fresh store's schema is not built on the critical path."""
    settings = load_settings()
    client = configure_mlflow(settings)
    if client.tracking_uri != tracking_uri:
        raise RuntimeError(f"MLflow is configured at {client.tracking_uri}, not {tracking_uri}")
    return experiment_id(client, settings)


@task(cache_policy=RECORDED, persist_result=True)
def record_sweep(
    training: TrainingSet,
    records: list[dict[str, Any]],
    grid: dict[str, Any],
    metric: str,
    diagnostics: SweepDiagnostics,
    cold_start: list[dict[str, Any]] | None = None,
) -> SweepRecord:
    """The sweep in MLflow: a parent run, a nested run per configuration, plots, the table,
    and the cold-start comparison (``cold_start_<metric>_k<k>_<method>``, means over folds)."""
    settings = load_settings()
    client = configure_mlflow(settings)
    experiment = experiment_id(client, settings)
    tags = run_tags(training)
    parent = start_sweep_run(client, experiment, tags, {**grid, "selection_metric": metric})
    run_ids = log_configurations(client, experiment, parent, records, tags)
    table = sweep_table(records)
    figures = sweep_figures(table, grid, diagnostics, metric)
    if cold_start:
        starts = cold_start_table(cold_start)
        client.log_batch(parent, metrics=cold_start_metrics(starts))
        client.log_text(parent, starts.write_csv(), "cold_start.csv")
        figures["cold_start"] = plots.cold_start_plot(starts, COLD_START_NAMES)
    log_sweep_artifacts(client, parent, figures, table)
    best = best_configuration(records, metric)
    best_run_id = next(
        run_ids[(r["kind"], r["n_clusters"], r["n_neighbors"])]
        for r in records
        if r["params"] == best["params"]
    )
    client.set_terminated(parent)
    get_run_logger().info("Sweep recorded as MLflow run %s; best by %s: %s", parent, metric, best)
    return SweepRecord(
        parent_run_id=parent, best=best, metric=metric, table_csv=table.write_csv(),
        best_run_id=best_run_id, folds=sorted({int(r["fold"]) for r in records}),
        experiment_url=experiment_url(client.tracking_uri, experiment),
    )  # fmt: skip


COLD_START_NAMES = {
    "popularity": "Popularity",
    "item_knn": "item-KNN fold-in",
    "kmeans": "K-Means fold-in",
}


def cold_start_metrics(starts: pl.DataFrame) -> list[Metric]:
    """``cold_start_<metric>_k<k>_<method>`` per row of the cold-start table."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(f"cold_start_{metric}_k{row['k']}_{row['method']}", float(row[metric]), now, 0)
        for row in starts.iter_rows(named=True)
        for metric in COLD_START_METRICS
    ]


def sweep_figures(
    table: pl.DataFrame, grid: dict[str, Any], diagnostics: SweepDiagnostics, metric: str = "rmse"
) -> dict[str, Any]:
    """The RMSE heatmap (and the NDCG@10 one when it varies), the cluster trade-off, elbow,
    cluster sizes, the metrics summary and the forest's importances."""
    figures: dict[str, Any] = {}
    knn = table.filter(pl.col("kind") == "kmeans_knn")
    if not knn.is_empty():
        figures["heatmap_rmse"] = plots.sweep_heatmap(table, "rmse", "kmeans_knn",
                                                      MODEL_NAMES["kmeans_knn"])  # fmt: skip
        if informative(knn["ndcg_at_10"]):
            figures["heatmap_ndcg_at_10"] = plots.sweep_heatmap(
                table, "ndcg_at_10", "kmeans_knn", MODEL_NAMES["kmeans_knn"]
            )
        figures["cluster_tradeoff"] = plots.cluster_tradeoff_plot(
            cluster_tradeoff(table), MODEL_NAMES["kmeans_knn"]
        )
    clustered = CLUSTERED_WHAT
    figures["elbow"] = plots.elbow_plot(
        diagnostics.n_clusters, diagnostics.inertia, diagnostics.silhouettes, what=clustered
    )
    figures["cluster_sizes"] = plots.cluster_sizes_plot(diagnostics.sizes, what=clustered)
    note = PAPER_NOTE if "paper" in table["kind"].to_list() else None
    figures["model_comparison"] = plots.model_comparison_plot(
        best_per_model(table, metric), note=note
    )
    if diagnostics.forest_importances is not None:
        figures["forest_importances"] = plots.feature_importance_plot(
            diagnostics.forest_importances
        )
    return figures


PAPER_NOTE = (
    f"{MODEL_NAMES['paper']} ranks by its predicted rating, clipped at 5: many unseen items tie "
    "at 5.0, so its top 10 is an arbitrary draw among them and its P@10, R@10 and NDCG@10 are "
    "near zero. Compare it by RMSE and MAE."
)
CLUSTERED_WHAT = "users, on their SVD-reduced rating rows"


def informative(values: pl.Series, tolerance: float = 1e-4) -> bool:
    """True when ``values`` (nulls and NaN aside) differ by more than ``tolerance``: a heatmap
    of one value in every cell says nothing."""
    known = values.cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()
    return known.size > 1 and float(known.max() - known.min()) > tolerance


def cluster_tradeoff(table: pl.DataFrame) -> pl.DataFrame:
    """Per cluster count of the tuned model: its best RMSE over neighbour counts and the mean
    fit seconds per fold (the sweep's own timings)."""
    return (
        table.filter(pl.col("kind") == "kmeans_knn")
        .group_by("n_clusters")
        .agg(pl.col("rmse").min(), pl.col("fit_seconds").mean())
        .sort("n_clusters")
    )


def best_per_model(table: pl.DataFrame, metric: str = "rmse") -> pl.DataFrame:
    """Per model (display name), its configuration with the best ``metric`` (the best NDCG@10
    for a ranking-only model), and the paper's reported RMSE."""
    rows = [
        {"model": display_name(kind), **metrics}
        for kind, metrics in model_metrics(table, metric).items()
    ]
    rows.append({"model": PAPER_REPORTED, "rmse": PAPER_RMSE})
    return pl.DataFrame(rows, infer_schema_length=None)


def registers_by_default(
    grid: dict[str, Any], folds: list[int], training: TrainingSet, default: dict[str, Any]
) -> bool:
    """True when a sweep is on every fold of the dataset and on the ``default`` grid: only
    such a run registers its model unless asked (a partial run's figures are not the
    champion's)."""
    same_grid = all(sorted(grid[key]) == sorted(default[key]) for key in default)
    return same_grid and sorted(folds) == sorted(training.folds)


def model_identity(training: TrainingSet, params: dict[str, Any]) -> dict[str, str]:
    """What makes a refitted model the same model: its data, configuration and code."""
    return {
        "dataset_version": training.version,
        "config": json.dumps(params, sort_keys=True, default=str),
        "code_version": code_version(),
    }


@task(cache_policy=RECORDED, persist_result=True)
def promote_champion(
    training: TrainingSet, sweep: SweepRecord, register: bool = True
) -> ChampionRecord:
    """Refit the best configuration on all ratings and register it, unless ``register`` is
    False or the same model (data, configuration, code) is already the champion or
    challenger; the champion alias moves when it beats the champion on the folds both were
    evaluated on."""
    logger = get_run_logger()
    settings = load_settings()
    client = configure_mlflow(settings)
    value = float(sweep.best["metrics"][sweep.metric])
    current = current_champion(client, training.dataset)
    unregistered = ChampionRecord(
        version=None, alias=None, champion_version=current, run_id=None, metric=sweep.metric,
        value=value, lake_uri=None, sweep_run_id=sweep.parent_run_id,
    )  # fmt: skip
    if not register:
        outcome = (
            f"Recorded as MLflow run {sweep.parent_run_id}, not registered: a run on folds "
            f"{_folds(sweep.folds)} of {_folds(list(training.folds))} or on a grid other than "
            "the default registers only when asked (register_model=True)."
        )
        logger.info(outcome)
        return unregistered.model_copy(update={"outcome": outcome})
    # One registration at a time on this warehouse: the identity check, the comparison with the
    # champion and the alias move see every earlier registration, so two trainings can never
    # both become champion nor register the same model twice.
    with advisory_lock(database_url(settings), REGISTRY_LOCK):
        identity = model_identity(training, sweep.best["params"])
        same = identical_version(client, identity, training.dataset)
        if same is not None:
            outcome = (
                f"Not registered again: version {same.version} is the same model (dataset"
                " version, configuration and code)."
            )
            logger.info(outcome)
            return unregistered.model_copy(update={"outcome": outcome})
        return _register(training, sweep, identity, value)


def _register(
    training: TrainingSet, sweep: SweepRecord, identity: dict[str, str], value: float
) -> ChampionRecord:
    settings = load_settings()
    client = configure_mlflow(settings)
    experiment = experiment_id(client, settings)
    config = config_from_params(sweep.best["params"])
    model = fit_on_all(training, config)
    titles = Lake.from_settings(settings, training.lake_url).read_parquet(
        f"curated/{training.dataset}/{training.version}/items.parquet"
    )
    tags = run_tags(training)
    run_id, model_uri = log_model_version(
        client, experiment, sweep.parent_run_id, model, titles, sweep.best, tags
    )
    per_fold = fold_figures(client, sweep)
    version_tags = {**tags, **identity, "sweep_run_id": sweep.parent_run_id}
    if sweep.best_run_id is not None:
        version_tags["configuration_run_id"] = sweep.best_run_id
    champion = register_and_promote(
        client, run_id, model_uri, sweep.metric, value, version_tags, per_fold=per_fold,
        description=version_description(training, sweep),
    )  # fmt: skip
    lake_uri = export_to_lake(Lake.from_settings(settings, training.lake_url), champion, sweep.best)
    current = current_champion(client, training.dataset) or champion.version  # set above
    outcome = (f"Registered {REGISTERED_MODEL} version {champion.version} as {champion.alias} "
               f"({sweep.metric} {value:.4f}); champion is version {current}.")  # fmt: skip
    get_run_logger().info(outcome)
    return ChampionRecord(
        version=champion.version, alias=champion.alias, champion_version=current,
        run_id=run_id, metric=sweep.metric, value=value, lake_uri=lake_uri,
        sweep_run_id=sweep.parent_run_id, outcome=outcome,
    )  # fmt: skip


def fold_figures(client: Any, sweep: SweepRecord) -> dict[int, float] | None:
    """Fold -> the selection metric of the sweep's best configuration (its nested run)."""
    if sweep.best_run_id is None:
        return None
    history = client.get_metric_history(sweep.best_run_id, f"fold_{sweep.metric}")
    return {int(m.step): float(m.value) for m in history}


def version_description(training: TrainingSet, sweep: SweepRecord) -> str:
    """A registered version in words: what it is, its data, its cross-validated metrics."""
    params = dict(sweep.best["params"])
    kind = str(params.pop("kind"))
    settings = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    metrics = ", ".join(
        f"{METRIC_LABELS.get(m, m)} {v:.4f}" for m, v in sweep.best["metrics"].items()
    )
    return (
        f"{display_name(kind)} (kind {kind}; {settings}), refitted on all "
        f"{training.ratings:,} ratings of {training.dataset} version {training.version} "
        f"({training.users:,} users, {training.items:,} items). Cross-validated on folds "
        f"{_folds(sweep.folds)}: {metrics}. Selected by {sweep.metric} in sweep run "
        f"{sweep.parent_run_id}; code {code_version()}."
    )


def _folds(folds: list[int]) -> str:
    return ", ".join(map(str, sorted(folds)))


@task(cache_policy=RECORDED, persist_result=True)
def write_recommendations(training: TrainingSet, champion: ChampionRecord, top_n: int) -> int:
    """Top-N for every user from the champion version into ``serving.recommendations``; none
    when the dataset has no champion yet."""
    if champion.champion_version is None:
        get_run_logger().info("No champion of %s yet: no recommendations written",
                              training.dataset)  # fmt: skip
        return 0
    import mlflow

    configure_mlflow(load_settings())
    uri = f"models:/{REGISTERED_MODEL}/{champion.champion_version}"
    model = mlflow.pyfunc.load_model(uri).unwrap_python_model().model  # type: ignore[attr-defined]
    rows = top_n_for_every_user(model, top_n)
    written = replace_recommendations(
        database_url(load_settings()), REGISTERED_MODEL, champion.champion_version,
        training.dataset, rows,
    )  # fmt: skip
    get_run_logger().info(
        "Wrote %d recommendations of version %s", written, champion.champion_version
    )
    return written


def summary_markdown(sweep: SweepRecord, champion: ChampionRecord, top: int = 10) -> str:
    """The best configurations and the champion, as a Markdown table for the Prefect UI."""
    table = pl.read_csv(sweep.table_csv.encode())
    metric = sweep.metric
    order = table.filter(pl.col(metric).is_not_null()).sort(
        metric, descending=metric not in LOWER_IS_BETTER
    )
    columns = ["n_clusters", "n_neighbors", "rmse", "ndcg_at_10", "precision_at_10",
               "fit_seconds"]  # fmt: skip
    named = order.select(
        pl.col("kind").replace_strict(MODEL_NAMES, default=pl.col("kind")).alias("model"),
        *columns,
    )
    lines = markdown_table(named.head(top))
    heading = (
        f"## Champion: `{REGISTERED_MODEL}` version {champion.champion_version}"
        if champion.champion_version is not None
        else f"## Champion: `{REGISTERED_MODEL}` has none yet"
    )
    where = (
        [f"The runs in the MLflow UI: {sweep.experiment_url}", ""] if sweep.experiment_url else []
    )
    return "\n".join(
        [f"## Sweep: best configurations by {metric}", "", *where, *lines, "", heading, "",
         champion.outcome]
    )  # fmt: skip
