"""The train flow's steps around MLflow: record the sweep, promote a champion, serve top-N."""

from __future__ import annotations

from typing import Any

import mlflow
import polars as pl
from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict

from recommender import PAPER_RMSE, config_from_params
from tasks import plots
from tasks.caching import CONTENT, RECORDED
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.plots import markdown_table
from tasks.train.tracking import (
    REGISTERED_MODEL,
    configure_mlflow,
    current_champion,
    experiment_id,
    export_to_lake,
    git_commit,
    log_configurations,
    log_model_version,
    log_sweep_artifacts,
    register_and_promote,
    start_sweep_run,
)
from tasks.train.units import (
    LOWER_IS_BETTER,
    SweepDiagnostics,
    TrainingSet,
    best_configuration,
    fit_on_all,
    sweep_table,
    top_n_for_every_user,
)
from tasks.warehouse.connection import database_url
from tasks.warehouse.loads import replace_recommendations


class SweepRecord(BaseModel):
    """Where a sweep was recorded, and its best configuration."""

    model_config = ConfigDict(frozen=True)

    parent_run_id: str
    best: dict[str, Any]
    metric: str
    table_csv: str


class ChampionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: str
    alias: str
    champion_version: str
    run_id: str
    metric: str
    value: float
    lake_uri: str
    sweep_run_id: str | None = None


def run_tags(training: TrainingSet) -> dict[str, str]:
    return {
        "dataset": training.dataset,
        "dataset_version": training.version,
        "git_commit": git_commit(),
    }


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
) -> SweepRecord:
    """The sweep in MLflow: a parent run, a nested run per configuration, plots, the table."""
    settings = load_settings()
    client = configure_mlflow(settings)
    experiment = experiment_id(client, settings)
    tags = run_tags(training)
    parent = start_sweep_run(client, experiment, tags, {**grid, "selection_metric": metric})
    log_configurations(client, experiment, parent, records, tags)
    table = sweep_table(records)
    log_sweep_artifacts(client, parent, sweep_figures(table, grid, diagnostics), table)
    best = best_configuration(records, metric)
    client.set_terminated(parent)
    get_run_logger().info("Sweep recorded as MLflow run %s; best by %s: %s", parent, metric, best)
    return SweepRecord(parent_run_id=parent, best=best, metric=metric, table_csv=table.write_csv())


def sweep_figures(
    table: pl.DataFrame, grid: dict[str, Any], diagnostics: SweepDiagnostics
) -> dict[str, Any]:
    """Heatmaps, elbow, cluster sizes, model comparison, forest importances."""
    figures: dict[str, Any] = {}
    if "kmeans_knn" in grid["kinds"]:
        figures["heatmap_rmse"] = plots.sweep_heatmap(table, "rmse", "kmeans_knn")
        figures["heatmap_ndcg_at_10"] = plots.sweep_heatmap(table, "ndcg_at_10", "kmeans_knn")
    figures["elbow"] = plots.elbow_plot(
        diagnostics.n_clusters, diagnostics.inertia, diagnostics.silhouettes
    )
    figures["cluster_sizes"] = plots.cluster_sizes_plot(diagnostics.sizes)
    best_per_kind = (
        table.sort("rmse", nulls_last=True)
        .group_by("kind", maintain_order=True)
        .first()
        .select(pl.col("kind").alias("model"), "rmse", "ndcg_at_10")
    )
    reported = pl.DataFrame(
        {"model": ["paper (reported)"], "rmse": [PAPER_RMSE], "ndcg_at_10": [None]}
    )
    figures["model_comparison"] = plots.model_comparison_plot(
        pl.concat([best_per_kind, reported], how="vertical_relaxed")
    )
    if diagnostics.forest_importances is not None:
        figures["forest_importances"] = plots.feature_importance_plot(
            diagnostics.forest_importances
        )
    return figures


@task(cache_policy=RECORDED, persist_result=True)
def promote_champion(training: TrainingSet, sweep: SweepRecord) -> ChampionRecord:
    """Refit the best configuration on all ratings, register it, move the alias on improvement."""
    logger = get_run_logger()
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
    value = float(sweep.best["metrics"][sweep.metric])
    champion = register_and_promote(client, run_id, model_uri, sweep.metric, value, tags)
    lake_uri = export_to_lake(Lake.from_settings(settings, training.lake_url), champion, sweep.best)
    current = current_champion(client, training.dataset) or champion.version  # set above
    logger.info(
        "Registered %s version %s as %s (%s %.4f); champion is version %s",
        REGISTERED_MODEL, champion.version, champion.alias, sweep.metric, value, current,
    )  # fmt: skip
    return ChampionRecord(
        version=champion.version, alias=champion.alias, champion_version=current,
        run_id=run_id, metric=sweep.metric, value=value, lake_uri=lake_uri,
        sweep_run_id=sweep.parent_run_id,
    )  # fmt: skip


@task(cache_policy=RECORDED, persist_result=True)
def write_recommendations(training: TrainingSet, champion: ChampionRecord, top_n: int) -> int:
    """Top-N for every user from the champion version into ``serving.recommendations``."""
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
    columns = ["kind", "n_clusters", "n_neighbors", "rmse", "ndcg_at_10", "precision_at_10",
               "fit_seconds"]  # fmt: skip
    lines = markdown_table(order.select(columns).head(top))
    return "\n".join(
        [
            f"## Sweep: best configurations by {metric}",
            "",
            *lines,
            "",
            f"## Champion: `{REGISTERED_MODEL}` version {champion.champion_version}",
            "",
            f"This run registered version {champion.version} as **{champion.alias}** "
            f"({metric} {champion.value:.4f}). MLflow run `{champion.run_id}`; "
            f"files in `{champion.lake_uri}`.",
        ]
    )
