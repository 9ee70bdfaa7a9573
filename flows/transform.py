"""Transform: raw files in the lake -> validated Parquet -> features -> PostgreSQL."""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import sys

from prefect import flow

from flows.ingest import ingest
from tasks.caching import unless_gone
from tasks.config import load_settings
from tasks.features import build_features, features_in_lake
from tasks.movielens.curate import curate_dataset, curated_in_lake
from tasks.movielens.sources import RawDataset
from tasks.warehouse.loads import LoadResult, load_into_warehouse


@flow(name="transform", log_prints=True)
def transform(raw: RawDataset | None = None) -> LoadResult:
    """Curate, featurise and load one raw dataset (default: ingest the configured source).

    Every step is cached on content: a rerun with unchanged raw data loads nothing.
    """
    raw = raw or ingest()
    # cached steps whose tables a wiped lake lost are computed again
    curated = unless_gone(curate_dataset, curated_in_lake, raw, load_settings().max_rejects)
    features = unless_gone(build_features, features_in_lake, curated)
    return load_into_warehouse(curated, features)


if __name__ == "__main__":
    from cli.main import flow_script  # the same options and messages as `recsys transform`

    sys.exit(flow_script("transform"))
