"""The main job: every stage of the pipeline in order, as subflows, on the configured stack."""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import sys
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict

from flows.ingest import ingest
from flows.report import report
from flows.train import ModelKind, train
from flows.transform import transform
from tasks.config import Settings
from tasks.orchestration import running_local_server
from tasks.report.summary import ReportRecord
from tasks.train.sweep import ChampionRecord


class PipelineResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    champion: ChampionRecord
    report: ReportRecord


@flow(name="pipeline", log_prints=True)
def pipeline(
    source: str | None = None,
    n_clusters: list[int] | None = None,
    n_neighbors: list[int] | None = None,
    kinds: list[ModelKind] | None = None,
    folds: list[int] | None = None,
    selection_metric: Literal["rmse", "ndcg_at_10"] = "rmse",
    top_n: int = 10,
) -> PipelineResult:
    """Ingest the MovieLens archive, load it into PostgreSQL, sweep the models, promote a
    champion, and report the sweep (plots, report.md, ThingsBoard when configured).

    ``source`` overrides the configured archive; the rest are the train flow's parameters.
    """
    raw = ingest(source=source)
    loaded = transform(raw=raw)
    champion = train(
        n_clusters=n_clusters, n_neighbors=n_neighbors, kinds=kinds, folds=folds,
        selection_metric=selection_metric, top_n=top_n, dataset_version=loaded.version,
    )  # fmt: skip
    return PipelineResult(champion=champion, report=report(sweep_run_id=champion.sweep_run_id))


def where_to_look(settings: Settings, result: PipelineResult) -> str:
    """The closing lines a user reads: the report, the champion, and how to open the UIs."""
    champion = result.champion
    mlflow_ui = (
        settings.mlflow_tracking_uri
        if settings.mlflow_tracking_uri and settings.mlflow_tracking_uri.startswith("http")
        else f"mlflow ui --backend-store-uri {settings.resolved_mlflow_tracking_uri}"
        " (then http://127.0.0.1:5000)"
    )
    local = None if settings.prefect_api_url else running_local_server(settings)
    if settings.prefect_api_url:
        prefect_ui = settings.prefect_api_url.removesuffix("/").removesuffix("/api")
    elif local is not None:
        prefect_ui = f"{local.url} (the project's server, recsys server start; this run is there)"
    else:
        prefect_ui = (
            "recsys server start (then http://127.0.0.1:4200; its home is"
            f" {settings.resolved_prefect_home}, where this run's history is)"
        )
    return "\n".join(
        [
            f"Report: {result.report.folder}/report.md (plots beside it)",
            f"Champion: movielens-recommender version {champion.champion_version or 'none yet'}."
            f" {champion.outcome}",
            f"Lake: {settings.resolved_lake_url}",
            f"MLflow UI: {mlflow_ui}",
            f"Prefect UI: {prefect_ui}",
            f"Serve it: recsys serve (then http://{settings.api_host}:{settings.api_port}/docs)",
        ]
    )


if __name__ == "__main__":
    from cli.main import flow_script  # the same options and messages as `recsys run`

    sys.exit(flow_script("run"))
