"""The PostgreSQL warehouse: versioned schema, transactional COPY loads, queries.

A load is one transaction: binary COPY into temporary staging tables, then the dataset's old
rows are swapped for the staged ones. An advisory lock serialises concurrent loads; loading
the version that is already current changes nothing. Readers see the old version until commit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import psycopg
from prefect import task
from prefect.logging import get_run_logger
from psycopg import sql

from tasks.caching import CONTENT
from tasks.config import load_settings
from tasks.features import FeatureSet, read_lake_parquet
from tasks.lake import Lake
from tasks.movielens import CuratedDataset

if TYPE_CHECKING:
    from tasks.config import Settings

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[1] / "deployments" / "sql"
LOAD_LOCK = 0x5EC5_10AD  # pg_advisory_xact_lock key for loads
MIGRATION_LOCK = 0x5EC5_5C11
COPY_CHUNK_ROWS = 1_000_000
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in unix microseconds
PG_EPOCH_DAYS = 10_957

# Target tables in parent-to-child order: inserted in this order, deleted in reverse.
TABLES: tuple[str, ...] = (
    "movielens.genres",
    "movielens.occupations",
    "movielens.users",
    "movielens.items",
    "movielens.item_genres",
    "movielens.ratings",
    "movielens.folds",
    "features.item_features",
    "features.user_features",
)


class WarehouseError(RuntimeError):
    pass


# --- connecting -------------------------------------------------------------------------------
def database_url(settings: Settings) -> str:
    """The configured server, or an embedded PostgreSQL kept under the project home."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    import pgserver  # the embedded default only: a bundled PostgreSQL, started on demand

    server = pgserver.get_server(settings.home / "postgres", cleanup_mode="stop")
    return str(server.get_uri())


@contextmanager
def connect(url: str, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=autocommit) as conn:
        yield conn


def migrate(url: str) -> list[str]:
    """Apply the repository's versioned SQL files not yet applied; returns the applied ones."""
    applied: list[str] = []
    with connect(url) as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS ops")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ops.schema_migrations ("
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM ops.schema_migrations")}
        for path in sorted(MIGRATIONS.glob("V*.sql")):
            version = path.stem
            if version in done:
                continue
            conn.execute(path.read_text())  # type: ignore[call-overload]
            conn.execute("INSERT INTO ops.schema_migrations (version) VALUES (%s)", (version,))
            applied.append(version)
    return applied


# --- loading ----------------------------------------------------------------------------------
@dataclass
class LoadResult:
    dataset: str
    version: str
    loaded: bool
    row_counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def current_version(url: str, dataset: str) -> str | None:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT version FROM movielens.datasets WHERE dataset = %s", (dataset,)
        ).fetchone()
    return row[0] if row else None


def load_dataset(
    url: str,
    dataset: str,
    version: str,
    tables: dict[str, pl.DataFrame],
    on_step: Callable[[str], None] | None = None,
) -> LoadResult:
    """Replace ``dataset`` in the warehouse by ``tables`` (keyed like ``TABLES``) atomically.

    ``on_step`` is called after each step (``staged <table>``, ``swapped``) for progress logs.
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
            "SELECT version FROM movielens.datasets WHERE dataset = %s", (dataset,)
        ).fetchone()
        if row and row[0] == version:
            step(f"{dataset} {version} is already loaded: nothing to do")
            return result
        for name in TABLES:
            began = time.perf_counter()
            result.row_counts[name] = stage_table(conn, name, tables[name])
            result.seconds[f"copy {name}"] = time.perf_counter() - began
            step(f"staged {name}: {result.row_counts[name]} rows")
        began = time.perf_counter()
        swap_in_staged(conn, dataset, version)
        result.seconds["swap"] = time.perf_counter() - began
        step("swapped")
        conn.execute(
            "INSERT INTO ops.loads (dataset, version, started_at, row_counts, seconds)"
            " VALUES (%s, %s, %s, %s, %s)",
            (
                dataset,
                version,
                started_at,
                json.dumps(result.row_counts),
                json.dumps(result.seconds),
            ),
        )
    result.loaded = True
    return result


def _staging_name(table: str) -> str:
    return "stage_" + table.replace(".", "_")


def stage_table(conn: psycopg.Connection[Any], table: str, frame: pl.DataFrame) -> int:
    """Create a temporary staging table shaped like ``frame`` and COPY it in (binary)."""
    stage = sql.Identifier(_staging_name(table))
    columns = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type(dtype)))
        for name, dtype in frame.schema.items()
    )
    conn.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(stage, columns))
    copy_frame(conn, stage, frame)
    return frame.height


def swap_in_staged(conn: psycopg.Connection[Any], dataset: str, version: str) -> None:
    """Delete the dataset's rows (children first) and insert the staged ones (parents first)."""
    conn.execute(
        "INSERT INTO movielens.datasets (dataset, version, loaded_at) VALUES (%s, %s, now())"
        " ON CONFLICT (dataset) DO UPDATE SET version = EXCLUDED.version, loaded_at = now()",
        (dataset, version),
    )
    for table in reversed(TABLES):
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE dataset = %s").format(_qualified(table)), (dataset,)
        )
    for table in TABLES:
        staged = [
            row[0]
            for row in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (_staging_name(table),),
            )
        ]
        names = sql.SQL(", ").join(sql.Identifier(name) for name in staged)
        conn.execute(
            sql.SQL("INSERT INTO {} (dataset, {}) SELECT %s, {} FROM {}").format(
                _qualified(table), names, names, sql.Identifier(_staging_name(table))
            ),
            (dataset,),
        )


def _qualified(table: str) -> sql.Composed:
    schema, name = table.split(".")
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


# --- binary COPY ------------------------------------------------------------------------------
PG_TYPES: dict[type[pl.DataType], str] = {
    pl.Int8: "smallint",
    pl.Int16: "smallint",
    pl.Int32: "integer",
    pl.Int64: "bigint",
    pl.UInt32: "bigint",
    pl.Float32: "real",
    pl.Float64: "double precision",
    pl.String: "text",
    pl.Boolean: "boolean",
    pl.Date: "date",
    pl.Datetime: "timestamptz",
}
# Big-endian NumPy layouts of PostgreSQL's binary format for fixed-width types.
BINARY_LAYOUT: dict[str, str] = {
    "smallint": ">i2",
    "integer": ">i4",
    "bigint": ">i8",
    "real": ">f4",
    "double precision": ">f8",
    "date": ">i4",
    "timestamptz": ">i8",
}
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
COPY_TRAILER = (-1).to_bytes(2, "big", signed=True)


def pg_type(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return pg_type(dtype.inner) + "[]"  # type: ignore[arg-type]
    for polars_type, name in PG_TYPES.items():
        if isinstance(dtype, polars_type):
            return name
    raise WarehouseError(f"no PostgreSQL type for Polars {dtype}")


def copy_frame(conn: psycopg.Connection[Any], table: sql.Composable, frame: pl.DataFrame) -> None:
    """COPY ``frame`` into ``table`` in binary format.

    Frames of fixed-width columns without nulls are encoded by NumPy in bulk; others (text,
    arrays, nulls) go row by row through psycopg's binary dumpers.
    """
    names = sql.SQL(", ").join(sql.Identifier(name) for name in frame.columns)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, names)
    types = [pg_type(dtype) for dtype in frame.dtypes]
    with conn.cursor() as cur, cur.copy(statement) as copy:
        if all(t in BINARY_LAYOUT for t in types) and frame.null_count().sum_horizontal()[0] == 0:
            copy.write(COPY_HEADER)
            for offset in range(0, frame.height, COPY_CHUNK_ROWS):
                copy.write(encode_binary_rows(frame.slice(offset, COPY_CHUNK_ROWS), types))
            copy.write(COPY_TRAILER)
            return
        copy.set_types(types)
        for row in frame.iter_rows():
            copy.write_row(row)


def encode_binary_rows(frame: pl.DataFrame, types: list[str]) -> bytes:
    """Rows of fixed-width, non-null columns in COPY BINARY tuple format, built in one array."""
    layout: list[tuple[str, str]] = [("fields", ">i2")]
    for i, pg in enumerate(types):
        layout += [(f"len{i}", ">i4"), (f"val{i}", BINARY_LAYOUT[pg])]
    rows = np.empty(frame.height, dtype=np.dtype(layout))
    rows["fields"] = len(types)
    for i, (column, pg) in enumerate(zip(frame.columns, types, strict=True)):
        rows[f"len{i}"] = np.dtype(BINARY_LAYOUT[pg]).itemsize
        rows[f"val{i}"] = _binary_values(frame[column], pg)
    return rows.tobytes()


def _binary_values(series: pl.Series, pg: str) -> np.ndarray:
    if pg == "timestamptz":
        return series.dt.epoch("us").to_numpy() - PG_EPOCH_US
    if pg == "date":
        return series.cast(pl.Int32).to_numpy() - PG_EPOCH_DAYS
    return series.to_numpy()


# --- queries ----------------------------------------------------------------------------------
def table_counts(url: str, dataset: str) -> dict[str, int]:
    """Row count of every warehouse table for ``dataset``."""
    with connect(url) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE dataset = %s").format(_qualified(table)),
                (dataset,),
            ).fetchone()[0]  # type: ignore[index]
            for table in TABLES
        }


def read_table(url: str, query: str, params: tuple[Any, ...] = ()) -> pl.DataFrame:
    """Run a query and return the result as a Polars frame."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        columns = [d.name for d in cur.description or []]
        return pl.DataFrame(cur.fetchall(), schema=columns, orient="row")


def warehouse_tables(
    curated: dict[str, pl.DataFrame], item_features: pl.DataFrame, user_features: pl.DataFrame
) -> dict[str, pl.DataFrame]:
    """The curated and feature frames shaped like the warehouse tables (without ``dataset``)."""
    genre_columns = [c for c in item_features.columns if c.startswith("genre_")]
    affinity_columns = [c for c in user_features.columns if c.startswith("affinity_")]
    genre_ids = pl.concat_list(
        pl.when(pl.col(c) == 1).then(pl.lit(i, pl.Int16)) for i, c in enumerate(genre_columns)
    ).list.drop_nulls()
    return {
        "movielens.genres": curated["genres"],
        "movielens.occupations": curated["occupations"],
        "movielens.users": curated["users"],
        "movielens.items": curated["items"],
        "movielens.item_genres": curated["item_genres"],
        "movielens.ratings": curated["ratings"].select(
            "user_id",
            "item_id",
            pl.col("rating").cast(pl.Float32),
            pl.from_epoch("timestamp", time_unit="s").dt.replace_time_zone("UTC").alias("rated_at"),
        ),
        "movielens.folds": curated["folds"].with_columns(pl.col("test_fold").cast(pl.Int16)),
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
            pl.concat_list(affinity_columns).alias("genre_affinity"),
            "favourite_genre",
        ),
    }


# --- the load task ----------------------------------------------------------------------------
@task(cache_policy=CONTENT, persist_result=True)
def load_warehouse(curated: CuratedDataset, features: FeatureSet) -> LoadResult:
    """Load one curated version and its features into PostgreSQL in a single transaction."""
    logger = get_run_logger()
    lake = Lake.from_settings(load_settings(), curated.lake_url)
    url = database_url(load_settings())
    frames = read_lake_parquet(lake, {**curated.table_keys(), **features.table_keys()})
    tables = warehouse_tables(frames, frames["item_features"], frames["user_features"])
    result = load_dataset(url, curated.dataset, curated.version, tables, on_step=logger.info)
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
    """Run ``load_warehouse``, bypassing its cache when the warehouse lacks the version.

    The cache alone would trust a database that was reset since; asking the database keeps a
    rerun cached while it is true, and reloads when it is not.
    """
    url = database_url(load_settings())
    migrate(url)
    stale = current_version(url, curated.dataset) != curated.version
    return load_warehouse.with_options(refresh_cache=stale)(curated, features)
