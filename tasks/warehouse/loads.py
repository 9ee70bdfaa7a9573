"""Transactional loads: binary COPY into new partitions, keys, then a swap of the dataset's old
partitions for the new ones, serialised by an advisory lock and idempotent; the load task.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import polars as pl
import psycopg
from prefect import task
from prefect.logging import get_run_logger
from psycopg import sql

from tasks.caching import DATA_CODE, DATA_LOAD, code_version
from tasks.config import load_settings
from tasks.features import FeatureSet, read_lake_parquet
from tasks.lake import Lake
from tasks.movielens.curate import CuratedDataset
from tasks.movielens.validation import in_pair_order
from tasks.warehouse.binary_copy import copy_frame
from tasks.warehouse.connection import WarehouseError, connect, database_url
from tasks.warehouse.schema import TABLES, migrate, qualified_name

logger = logging.getLogger(__name__)

LOAD_LOCK = 0x5EC5_10AD  # pg_advisory_xact_lock key for loads


LOAD_MEMORY = "1GB"


# Keys a table's new partition gets before the swap, beyond those its parent declares. The
# ratings' are on the ids alone (deployments/sql/V004): the foreign keys reference the same
# load's users and items partitions, whose ids are unique there.
PARTITION_KEYS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "movielens.users": (("UNIQUE (user_id)", None),),
    "movielens.items": (("UNIQUE (item_id)", None),),
    "movielens.ratings": (
        ("PRIMARY KEY (user_id, item_id)", None),
        ("FOREIGN KEY (user_id) REFERENCES {} (user_id)", "movielens.users"),
        ("FOREIGN KEY (item_id) REFERENCES {} (item_id)", "movielens.items"),
    ),
}


# --- loading ----------------------------------------------------------------------------------
@dataclass
class LoadResult:
    dataset: str
    version: str
    loaded: bool
    row_counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def current_version(url: str, dataset: str) -> str | None:
    current = current_load(url, dataset)
    return current[0] if current else None


def current_load(url: str, dataset: str) -> tuple[str, str | None] | None:
    """The loaded version of ``dataset`` and the build (code version) that loaded it."""
    with connect(url) as conn:
        row = conn.execute(
            "SELECT version, build FROM movielens.datasets WHERE dataset = %s", (dataset,)
        ).fetchone()
    return (row[0], row[1]) if row else None


def load_dataset(
    url: str,
    dataset: str,
    version: str,
    tables: dict[str, pl.DataFrame],
    on_step: Callable[[str], None] | None = None,
    build: str = "",
) -> LoadResult:
    """Replace ``dataset`` in the warehouse by ``tables`` (keyed like ``TABLES``) atomically.

    ``build`` names the code that made ``tables``: the same version loaded by another build
    replaces the loaded one; by the same build, it changes nothing.

    Each table is COPYed into a fresh table, then, in the same transaction, the dataset's old
    partitions are detached and dropped and the new ones attached: PostgreSQL builds their
    indexes and checks their foreign keys in bulk. ``on_step`` receives progress messages.
    """
    missing = [name for name in TABLES if name not in tables]
    if missing:
        raise WarehouseError(f"load of {dataset} {version}: tables missing: {missing}")
    step = on_step or (lambda message: logger.info("%s", message))
    started_at = datetime.now(UTC)
    result = LoadResult(dataset=dataset, version=version, loaded=False)
    with connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOAD_LOCK,))
        row = conn.execute(
            "SELECT version, coalesce(build, '') FROM movielens.datasets WHERE dataset = %s",
            (dataset,),
        ).fetchone()
        if row == (version, build):
            step(f"{dataset} {version} is already loaded: nothing to do")
            return result
        # Adding keys to a filled partition, and attaching it, builds its indexes and checks its
        # foreign keys in bulk, with one anti-join per key against the (small) referenced
        # table. On fresh tables the planner picks a merge join that sorts every rating (12.8 s
        # at 10M) where a hash anti-join takes 1.4 s, so this transaction plans with hashes and
        # sorts in memory.
        conn.execute(f"SET LOCAL maintenance_work_mem = '{LOAD_MEMORY}'")
        conn.execute(f"SET LOCAL work_mem = '{LOAD_MEMORY}'")
        conn.execute("SET LOCAL enable_mergejoin = off")
        conn.execute("SET LOCAL enable_nestloop = off")
        # The new partitions' pages go to disk as they are written, not all at the commit's
        # sync of them (1M ratings: that sync takes 35 ms instead of 55).
        conn.execute("SET LOCAL backend_flush_after = '2MB'")
        for table in TABLES:
            began = time.perf_counter()
            result.row_counts[table] = copy_into_new_partition(
                conn, table, dataset, version, tables[table], build
            )
            result.seconds[f"copy {table}"] = time.perf_counter() - began
            step(f"copied {table}: {result.row_counts[table]} rows")
            if table in PARTITION_KEYS:
                began = time.perf_counter()
                add_partition_keys(conn, table, dataset, version, build)
                result.seconds[f"keys {table}"] = time.perf_counter() - began
        began = time.perf_counter()
        swap_partitions(conn, dataset, version, build)
        result.seconds["swap"] = time.perf_counter() - began
        step(f"swapped in {dataset} {version} ({result.seconds['swap']:.2f} s)")
        conn.execute(
            "INSERT INTO movielens.datasets (dataset, version, build, loaded_at)"
            " VALUES (%s, %s, %s, now()) ON CONFLICT (dataset) DO UPDATE"
            " SET version = EXCLUDED.version, build = EXCLUDED.build, loaded_at = now()",
            (dataset, version, build or None),
        )
        conn.execute(
            # finished_at from the clock, not now() (the transaction's start: the column's default)
            "INSERT INTO ops.loads"
            " (dataset, version, build, started_at, finished_at, row_counts, seconds)"
            " VALUES (%s, %s, %s, %s, clock_timestamp(), %s, %s)",
            (
                dataset,
                version,
                build or None,
                started_at,
                json.dumps(result.row_counts),
                json.dumps(result.seconds),
            ),
        )
    result.loaded = True
    return result


def partition_name(table: str, dataset: str, version: str, build: str = "") -> str:
    """``<table>__<dataset>_<version>[_<build digest>]``: a load of the same version by another
    build makes partitions of other names, to be swapped for the loaded ones."""
    schema, name = table.split(".")
    slug = re.sub(r"[^a-z0-9]+", "_", dataset.lower())
    suffix = f"_{hashlib.sha256(build.encode()).hexdigest()[:8]}" if build else ""
    return f"{schema}.{name}__{slug}_{version[:16]}{suffix}"


def copy_into_new_partition(
    conn: psycopg.Connection[Any],
    table: str,
    dataset: str,
    version: str,
    frame: pl.DataFrame,
    build: str = "",
) -> int:
    """Create the dataset's next partition of ``table`` (detached) and COPY ``frame`` into it."""
    target = qualified_name(partition_name(table, dataset, version, build))
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
            target, qualified_name(table)
        )
    )
    # The check lets ATTACH skip its scan of the partition constraint. The column default fills
    # in the dataset, so the COPY stream leaves it out: a text field per row is 40% of the COPY.
    name = sql.Literal(dataset)
    conn.execute(
        sql.SQL(
            "ALTER TABLE {} ADD CHECK (dataset = {}), ALTER COLUMN dataset SET DEFAULT {}"
        ).format(target, name, name)
    )
    copy_frame(conn, target, frame, freeze=True)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN dataset DROP DEFAULT").format(target))
    return frame.height


def add_partition_keys(
    conn: psycopg.Connection[Any], table: str, dataset: str, version: str, build: str = ""
) -> None:
    """Build and check ``PARTITION_KEYS[table]`` on the load's new partition of ``table``."""
    target = qualified_name(partition_name(table, dataset, version, build))
    for key, referenced in PARTITION_KEYS[table]:
        parts = (
            [qualified_name(partition_name(referenced, dataset, version, build))]
            if referenced
            else []
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD " + key).format(target, *parts))


def swap_partitions(
    conn: psycopg.Connection[Any], dataset: str, version: str, build: str = ""
) -> None:
    """Detach and drop the dataset's current partitions (children first), attach the new ones."""
    for table in reversed(TABLES):
        current = _current_partition(conn, table, dataset)
        if current is not None:
            conn.execute(
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(qualified_name(table), current)
            )
            conn.execute(sql.SQL("DROP TABLE {}").format(current))
    for table in TABLES:
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                qualified_name(table),
                qualified_name(partition_name(table, dataset, version, build)),
                sql.Literal(dataset),
            )
        )


def _current_partition(
    conn: psycopg.Connection[Any], table: str, dataset: str
) -> sql.Composable | None:
    row = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE i.inhparent = %s::regclass"
        " AND pg_get_expr(c.relpartbound, c.oid) = format('FOR VALUES IN (%%L)', %s::text)",
        (table, dataset),
    ).fetchone()
    return sql.Identifier(row[0], row[1]) if row else None


def with_folds(ratings: pl.DataFrame, folds: pl.DataFrame) -> pl.DataFrame:
    """``ratings`` with each rating's ``test_fold``. The curated folds list the ratings in the
    ratings' order, so the column is taken as it is when the pairs line up, else joined."""
    pairs = ["user_id", "item_id"]
    if folds.height == ratings.height and folds.select(pairs).equals(ratings.select(pairs)):
        return ratings.with_columns(folds["test_fold"])
    return ratings.join(folds, on=pairs, how="left")


def warehouse_tables(
    curated: dict[str, pl.DataFrame], item_features: pl.DataFrame, user_features: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """The curated and feature frames shaped like the warehouse tables (without ``dataset``)."""
    genre_columns = [c for c in item_features.columns if c.startswith("genre_")]
    affinity_columns = [c for c in user_features.columns if c.startswith("affinity_")]
    # the one-hot columns follow the genres in id order (ids may have gaps)
    ids = curated["genres"]["genre_id"].sort().to_list()
    # concat_arr, then a list: 20x faster than concat_list on Polars 2.1
    genre_ids = (
        pl.concat_arr(
            pl.when(pl.col(c) == 1).then(pl.lit(i, pl.Int16))
            for i, c in zip(ids, genre_columns, strict=True)
        )
        .cast(pl.List(pl.Int16))
        .list.drop_nulls()
    )
    ratings = in_pair_order(with_folds(curated["ratings"], curated["folds"]))  # curated: already
    return {
        "movielens.genres": curated["genres"],
        "movielens.occupations": curated["occupations"],
        "movielens.users": curated["users"],
        "movielens.items": curated["items"],
        "movielens.item_genres": curated["item_genres"],
        # in primary-key order: PostgreSQL's index build then finds its input presorted
        "movielens.ratings": ratings.select(
            "user_id",
            "item_id",
            pl.col("rating").cast(pl.Float32),
            pl.from_epoch("timestamp", time_unit="s").dt.replace_time_zone("UTC").alias("rated_at"),
            pl.col("test_fold").cast(pl.Int16),
        ),
        "features.item_features": item_features.select(
            "item_id",
            "release_year",
            genre_ids.alias("genres"),
            "rating_count",
            "rating_mean",
            "damped_mean",
            "popularity_rank",
        ),
        "features.user_features": user_features.select(
            "user_id",
            "age",
            "gender",
            "occupation",
            "rating_count",
            "rating_mean",
            "rating_std",
            # a user without ratings has no profile (not 19 nulls)
            pl.when(pl.any_horizontal(pl.col(affinity_columns).is_not_null()))
            .then(pl.concat_arr(affinity_columns).cast(pl.List(pl.Float64)))
            .alias("genre_affinity"),
            "favourite_genre",
        ),
    }


# --- the load task ----------------------------------------------------------------------------
@task(cache_policy=DATA_LOAD, persist_result=True)
def load_warehouse(curated: CuratedDataset, features: FeatureSet) -> LoadResult:
    """Load one curated version and its features into PostgreSQL in a single transaction."""
    logger = get_run_logger()
    lake = Lake.from_settings(load_settings(), curated.lake_url)
    url = database_url(load_settings())
    frames = read_lake_parquet(lake, {**curated.table_keys(), **features.table_keys()})
    tables = warehouse_tables(frames, frames["item_features"], frames["user_features"])
    build = code_version(DATA_CODE)
    result = load_dataset(url, curated.dataset, curated.version, tables, logger.info, build)
    if result.loaded:
        rate = result.row_counts["movielens.ratings"] / max(sum(result.seconds.values()), 1e-9)
        logger.info(
            "Loaded %s %s: %s (%.0f ratings/s)",
            curated.dataset,
            curated.version,
            result.row_counts,
            rate,
        )
    return result


def load_into_warehouse(curated: CuratedDataset, features: FeatureSet) -> LoadResult:
    """Run ``load_warehouse``, bypassing its cache when the warehouse lacks the version (or
    holds it as loaded by other code).

    The cache alone would trust a database that was reset since; asking the database keeps a
    rerun cached while it is true, and reloads when it is not. A rerun that finds the version
    loaded says so (``loaded`` False), whatever the cached first run said.
    """
    url = database_url(load_settings())
    migrate(url)
    stale = current_load(url, curated.dataset) != (curated.version, code_version(DATA_CODE))
    result = load_warehouse.with_options(refresh_cache=stale)(curated, features)
    return result if stale else replace(result, loaded=False)


def replace_recommendations(
    url: str, model_name: str, model_version: str, dataset: str, top_n: pl.DataFrame
) -> int:
    """Store a model version's top-N lists (user_id, rank, item_id, score) in one transaction."""
    frame = top_n.select(
        pl.lit(model_name).alias("model_name"),
        pl.lit(model_version).alias("model_version"),
        pl.lit(dataset).alias("dataset"),
        pl.col("user_id").cast(pl.Int32),
        pl.col("rank").cast(pl.Int16),
        pl.col("item_id").cast(pl.Int32),
        pl.col("score").cast(pl.Float64),
    )
    with connect(url) as conn, conn.transaction():
        conn.execute(
            "DELETE FROM serving.recommendations"
            " WHERE model_name = %s AND model_version = %s AND dataset = %s",
            (model_name, model_version, dataset),
        )
        copy_frame(conn, sql.SQL("serving.recommendations"), frame)
    return frame.height
