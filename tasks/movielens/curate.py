"""The curation task: raw files -> validated curated Parquet of one dataset version, rejects
to the lake.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger
from pydantic import BaseModel, ConfigDict

from tasks.caching import DATA_CONTENT
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.movielens.catalog import (
    Layout,
    movielens_set,
)
from tasks.movielens.errors import ArchiveError, ValidationError
from tasks.movielens.folds import OFFICIAL, OFFICIAL_FOLDS, FoldRule, fold_rule
from tasks.movielens.formats import curate_files
from tasks.movielens.sources import MANIFEST, RawDataset, sha256_text
from tasks.movielens.validation import (
    FIRST_REJECTS,
    describe_consequences,
    describe_rejects,
    is_consequence,
)

CURATED_FORMAT = "1"  # bump when the curated tables change shape: it changes every version


# --- the curated layer ------------------------------------------------------------------------
class CuratedDataset(BaseModel):
    """Reference to validated, typed Parquet tables of one dataset version."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    lake_url: str
    version: str
    row_counts: dict[str, int]
    rejected: int
    folds: str = OFFICIAL  # the fold rule's label: official, random:<seed> or temporal

    @property
    def prefix(self) -> str:
        return f"curated/{self.dataset}/{self.version}"

    def table_keys(self) -> dict[str, str]:
        return {name: f"{self.prefix}/{name}.parquet" for name in self.row_counts}


def curated_in_lake(curated: CuratedDataset) -> bool:
    """Whether the lake still holds every table of this curated version."""
    lake = Lake.from_settings(load_settings(), curated.lake_url)
    return all(lake.exists(key) for key in curated.table_keys().values())


def dataset_version(raw: RawDataset, folds: FoldRule = OFFICIAL_FOLDS) -> str:
    """A short, stable version derived from the raw manifest's file hashes (and the fold rule
    when it is not the official one: other folds are another version of the tables)."""
    hashes = "\n".join(f"{f.file}:{f.sha256}" for f in sorted(raw.files, key=lambda f: f.file))
    rule = "" if folds.scheme == OFFICIAL else f"\nfolds:{folds.label}"
    return sha256_text(f"{CURATED_FORMAT}\n{hashes}{rule}")[:16]


@dataclass
class FoldSettings(CachePolicy):
    """Keys a curated result to the fold settings ``curate_dataset`` reads."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        settings = load_settings()
        return f"folds={settings.fold_scheme}:{settings.fold_seed}"


def files_to_parse(raw: RawDataset) -> list[str]:
    """The raw files the curated tables come from (ml-100k: u.* and the official u*.test)."""
    member = movielens_set(raw.dataset)
    if member.layout is Layout.ML100K:
        return [f.file for f in raw.files if f.file.startswith("u.") or f.file.endswith(".test")]
    return [f.file for f in raw.files if f.file in member.parsed_files]


def read_raw_files(lake: Lake, raw: RawDataset, names: list[str], limit: int) -> dict[str, bytes]:
    """The raw files' bytes; a file larger than ``limit`` (RECSYS_MAX_MEMBER_BYTES) is refused
    before it is read, by the size its manifest records."""
    sizes = {f.file: f.size for f in raw.files}
    for name in names:
        if sizes[name] > limit:
            raise ArchiveError(
                f"{lake.uri(raw.key(name))}: {sizes[name]} bytes, more than the "
                f"{limit} allowed by RECSYS_MAX_MEMBER_BYTES"
            )
    return {name: lake.get_bytes(raw.key(name)) for name in names}


def fetched_at(lake: Lake, raw: RawDataset) -> datetime | None:
    """When the raw version was fetched (its manifest's ``fetched_at``): no rating is later.
    Fixed for a raw version, so the curated result stays a function of its inputs."""
    stamp = lake.get_json(f"{raw.prefix}/{MANIFEST}").get("fetched_at")
    return datetime.fromisoformat(stamp) if stamp else None


@task(cache_policy=DATA_CONTENT + FoldSettings(), persist_result=True)
def curate_dataset(raw: RawDataset, max_rejects: int) -> CuratedDataset:
    """Parse and validate the raw files; write curated Parquet, and every bad row to rejects/."""
    logger = get_run_logger()
    settings = load_settings()
    lake = Lake.from_settings(settings, raw.lake_url)
    folds = fold_rule(raw.dataset, settings.fold_scheme, settings.fold_seed)
    files = read_raw_files(lake, raw, files_to_parse(raw), settings.max_member_bytes)
    curated = curate_files(movielens_set(raw.dataset), files, folds, fetched_at(lake, raw))
    version = dataset_version(raw, folds)
    rejected_rows = curated.rejects.select("file", "line").n_unique()
    if rejected_rows:
        rejects_key = f"rejects/{raw.dataset}/{version}/rejects.parquet"
        lake.write_parquet(rejects_key, curated.rejects)
        logger.warning("%d rejected rows written to %s", rejected_rows, lake.uri(rejects_key))
        if rejected_rows > max_rejects:
            raise ValidationError(
                _rejects_message(curated.rejects, max_rejects, lake.uri(rejects_key))
            )
    ref = CuratedDataset(
        dataset=raw.dataset,
        lake_url=lake.url,
        version=version,
        row_counts={name: frame.height for name, frame in curated.tables().items()},
        rejected=rejected_rows,
        folds=folds.label,
    )
    for name, frame in curated.tables().items():
        lake.write_parquet(ref.table_keys()[name], frame)
    logger.info(
        "Curated %s version %s (folds %s): %s", raw.dataset, version, folds.label, ref.row_counts
    )
    return ref


def _rejects_message(rejects: pl.DataFrame, max_rejects: int, where: str) -> str:
    """The refusal: the first root rejects (file, line, field, value, reason), then the rows
    rejected only as their consequence, counted per user or item."""
    rows = rejects.select("file", "line").n_unique()
    causes = rejects.filter(~is_consequence())
    consequences = describe_consequences(rejects, FIRST_REJECTS)
    return (
        f"{rows} rejected rows (more than the {max_rejects} allowed by "
        f"RECSYS_MAX_REJECTS), listed in {where}. "
        f"{causes.select('file', 'line').n_unique()} rejected for themselves, first: "
        f"{describe_rejects(causes, FIRST_REJECTS)}"
        + (
            f"; and, only because their user or item was rejected, {consequences}"
            if consequences
            else ""
        )
    )
