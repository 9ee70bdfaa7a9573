"""The main job: every stage of the pipeline in order, as subflows, on the configured stack."""

from __future__ import annotations

from prefect import flow

from flows.ingest import ingest
from flows.train import train
from flows.transform import transform
from tasks.config import prefect_environment
from tasks.sweep import ChampionRecord


@flow(name="pipeline", log_prints=True)
def pipeline(source: str | None = None) -> ChampionRecord:
    """Ingest the MovieLens archive, load it into PostgreSQL, sweep the models, promote a champion.

    The report stage joins this flow when it lands.
    """
    raw = ingest(source=source)
    loaded = transform(raw=raw)
    return train(dataset_version=loaded.version)


if __name__ == "__main__":
    with prefect_environment() as settings:
        champion = pipeline()
    print(f"\nChampion: movielens-recommender version {champion.champion_version}"
          f" (this run registered v{champion.version} as {champion.alias})")  # fmt: skip
    print(f"Lake: {settings.resolved_lake_url}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {settings.resolved_mlflow_tracking_uri}")
    print(f"Prefect UI: PREFECT_HOME={settings.resolved_prefect_home} prefect server start")
