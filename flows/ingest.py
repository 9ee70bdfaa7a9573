"""Ingest: the MovieLens archive -> verified, content-addressed raw files in the lake."""

from __future__ import annotations

import tasks.process_env  # noqa: F401  (first: the environment, before Prefect and MLflow)

# isort: split

import sys

from prefect import flow

from tasks.caching import unless_gone
from tasks.config import load_settings
from tasks.movielens.sources import (
    RawDataset,
    fetch_archive,
    raw_in_lake,
    resolve_source,
    store_raw_files,
)


@flow(name="ingest", log_prints=True)
def ingest(source: str | None = None, md5: str | None = None) -> RawDataset:
    """Fetch the archive (URL, zip or folder; default from settings), verify it, store it raw.

    A rerun with the same source content is all cache hits.
    """
    settings = load_settings()
    resolved = resolve_source(
        source or settings.movielens_source, md5 if md5 is not None else settings.movielens_md5
    )
    archive = fetch_archive(resolved, settings.downloads_dir)
    # a lake wiped since the cached run is noticed: the raw files are stored again
    return unless_gone(
        store_raw_files, raw_in_lake, archive, settings.resolved_lake_url, settings.dataset
    )


if __name__ == "__main__":
    from cli.main import flow_script  # the same options and messages as `recsys ingest`

    sys.exit(flow_script("ingest"))
