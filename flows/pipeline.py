"""The main job: every stage of the pipeline in order, as subflows, on the configured stack."""

from __future__ import annotations

from prefect import flow

from flows.ingest import ingest
from tasks.config import prefect_environment
from tasks.movielens import RawDataset


@flow(name="pipeline", log_prints=True)
def pipeline(source: str | None = None) -> RawDataset:
    """Ingest the MovieLens archive into the lake (later stages join as they land)."""
    return ingest(source=source)


if __name__ == "__main__":
    with prefect_environment() as settings:
        raw = pipeline()
    print(f"\nRaw data: {raw.lake_url}/{raw.prefix}")
    print(f"Prefect UI: run `PREFECT_HOME={settings.resolved_prefect_home} prefect server start`")
