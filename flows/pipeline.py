"""The main job: every stage of the pipeline in order, as subflows, on the configured stack."""

from __future__ import annotations

from prefect import flow

from flows.ingest import ingest
from flows.transform import transform
from tasks.config import prefect_environment
from tasks.warehouse import LoadResult


@flow(name="pipeline", log_prints=True)
def pipeline(source: str | None = None) -> LoadResult:
    """Ingest the MovieLens archive, then curate, featurise and load it into PostgreSQL.

    Training and reporting join this flow as they land.
    """
    raw = ingest(source=source)
    return transform(raw=raw)


if __name__ == "__main__":
    with prefect_environment() as settings:
        loaded = pipeline()
    print(f"\nWarehouse: {loaded.dataset} version {loaded.version}")
    print(f"Lake: {settings.resolved_lake_url}")
    print(f"Prefect UI: PREFECT_HOME={settings.resolved_prefect_home} prefect server start")
