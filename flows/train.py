"""Train: sweep cluster and neighbour counts over the folds into MLflow, promote a champion,
and write its top-N recommendations for every user to PostgreSQL."""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import sys
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tasks.caching import unless_gone
from tasks.config import load_settings
from tasks.orchestration import sweep_task_runner
from tasks.train.sweep import (
    ChampionRecord,
    champion_in_registry,
    open_experiment,
    promote_champion,
    record_sweep,
    registers_by_default,
    summary_markdown,
    sweep_in_store,
    write_recommendations,
)
from tasks.train.units import (
    COLD_START_KS,
    cold_start_comparison,
    evaluate_unit,
    prepare_training_set,
    sweep_diagnostics,
    sweep_tasks,
)
from tasks.warehouse.connection import database_url
from tasks.warehouse.loads import current_version
from tasks.warehouse.schema import migrate

ModelKind = Literal["kmeans_knn", "paper", "forest", "bias", "global_mean", "popularity"]
DEFAULT_KINDS: list[ModelKind] = [
    "kmeans_knn",
    "paper",
    "forest",
    "bias",
    "global_mean",
    "popularity",
]
DEFAULT_CLUSTERS = [1, 2, 4, 8, 16, 32]
DEFAULT_NEIGHBOURS = [10, 20, 40, 80]
DEFAULT_GRID = {"kinds": DEFAULT_KINDS, "n_clusters": DEFAULT_CLUSTERS,
                "n_neighbors": DEFAULT_NEIGHBOURS}  # fmt: skip


@flow(name="train", log_prints=True, task_runner=sweep_task_runner(load_settings()))
def train(
    n_clusters: list[int] | None = None,
    n_neighbors: list[int] | None = None,
    kinds: list[ModelKind] | None = None,
    folds: list[int] | None = None,
    selection_metric: Literal["rmse", "ndcg_at_10"] = "rmse",
    top_n: int = 10,
    dataset_version: str | None = None,
    register_model: bool | None = None,
    cold_start_folds: int = 1,
) -> ChampionRecord:
    """Sweep the models over the folds of the warehouse's current dataset version.

    Defaults: clusters 1, 2, 4, 8, 16, 32; neighbours 10, 20, 40, 80; every model kind; all five
    folds; RMSE selects the champion (``ndcg_at_10`` selects the ranking scorer).
    ``register_model``: register the best model (None: only when the run is on all folds and
    the default grid).
    ``cold_start_folds``: on how many of the sweep's folds (the first) the cold-start
    comparison runs (0: none; about 15 s a fold on ml-100k).
    """
    settings = load_settings()
    model_kinds: list[str] = list(kinds or DEFAULT_KINDS)
    cluster_counts = sorted(n_clusters or DEFAULT_CLUSTERS)
    neighbour_counts = sorted(n_neighbors or DEFAULT_NEIGHBOURS)
    grid = {"kinds": model_kinds, "n_clusters": cluster_counts, "n_neighbors": neighbour_counts}
    version = dataset_version or warehouse_version(settings.dataset)
    training = prepare_training_set(settings.dataset, version, settings.resolved_lake_url)
    sweep_folds = sorted(folds or training.folds)
    units = sweep_tasks(
        model_kinds, sweep_folds, cluster_counts, neighbour_counts,
        side_by_side=settings.sweep_workers,
    )  # fmt: skip
    futures = [evaluate_unit.submit(training, unit) for unit in units]
    # queued last: they take the worker that the sweep's last units leave idle
    diagnostics = sweep_diagnostics.submit(training, cluster_counts, model_kinds)
    cold_start = (
        cold_start_comparison.submit(training, sweep_folds[:cold_start_folds], list(COLD_START_KS))
        if cold_start_folds > 0
        else None
    )
    experiment = open_experiment.submit(settings.resolved_mlflow_tracking_uri)
    records = [record for future in futures for record in future.result()]
    experiment.result()  # the store is ready (or its error is raised here)
    # a cached record of a run a reset MLflow store lost is recorded again
    sweep = unless_gone(
        record_sweep, sweep_in_store, training, records, grid, selection_metric,
        diagnostics.result(), cold_start.result() if cold_start is not None else None,
    )  # fmt: skip
    registering = (
        register_model
        if register_model is not None
        else registers_by_default(grid, sweep_folds, training, DEFAULT_GRID)
    )
    champion = unless_gone(promote_champion, champion_in_registry, training, sweep, registering)
    # asked again of the store as this run leaves it, so that a rerun finds the answer kept
    sweep_in_store(sweep)
    write_recommendations(training, champion, top_n)
    create_markdown_artifact(summary_markdown(sweep, champion), key="train-summary",
                             description="Best configurations and the champion")  # fmt: skip
    return champion


def warehouse_version(dataset: str) -> str:
    """The dataset version the warehouse holds (the transform loads it)."""
    url = database_url(load_settings())
    migrate(url)
    version = current_version(url, dataset)
    if version is None:
        raise RuntimeError(
            f"the warehouse holds no {dataset}: load it first (recsys ingest, then recsys"
            " transform; or recsys run for the whole pipeline)"
        )
    return version


if __name__ == "__main__":
    from cli.main import flow_script  # the same options and messages as `recsys train`

    sys.exit(flow_script("train"))
