"""The PostgreSQL warehouse: versioned schema, transactional COPY loads, queries.

A load is one transaction: binary COPY into new partitions, then the dataset's old partitions
are swapped for the new ones. An advisory lock serialises concurrent loads; loading
the version that is already current changes nothing. Readers see the old version until commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import psycopg
from prefect import task
from prefect.logging import get_run_logger
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from tasks.caching import DATA_CODE, DATA_LOAD, code_version
from tasks.config import load_settings
from tasks.features import FeatureSet, read_lake_parquet
from tasks.lake import Lake
from tasks.movielens import CuratedDataset, in_pair_order

if TYPE_CHECKING:
    from tasks.config import Settings

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parents[1] / "deployments" / "sql"
LOAD_LOCK = 0x5EC5_10AD  # pg_advisory_xact_lock key for loads
MIGRATION_LOCK = 0x5EC5_5C11
COPY_CHUNK_ROWS = 100_000  # small enough that encoding the next overlaps the server's work
LOAD_MEMORY = "1GB"
PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in unix microseconds
PG_EPOCH_DAYS = 10_957

# Partitioned tables in parent-to-child order: attached in this order, detached in reverse.
TABLES: tuple[str, ...] = (
    "movielens.genres",
    "movielens.occupations",
    "movielens.users",
    "movielens.items",
    "movielens.item_genres",
    "movielens.ratings",
    "features.item_features",
    "features.user_features",
)


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


class WarehouseError(RuntimeError):
    pass


# --- connecting -------------------------------------------------------------------------------
def database_url(settings: Settings) -> str:
    """The configured server, or an embedded PostgreSQL kept under the project home."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return str(embedded_server(settings.home / "postgres").get_uri())


# The embedded server serves this project alone and streams WAL to no replica, so it keeps the
# least WAL: a load's COPY into the partition it created in the same transaction then writes
# none (PostgreSQL syncs the new files at commit), a fifth of a 10M-rating load. Crash safety
# is unchanged; only archiving and replication need more.
EMBEDDED_SETTINGS = {"wal_level": "minimal", "max_wal_senders": "0"}


def embedded_server(folder: Path, cleanup_mode: str | None = "stop") -> Any:
    """pgserver's bundled PostgreSQL in ``folder`` (created on first use) with
    ``EMBEDDED_SETTINGS``. A server that lacks them gets them, and is restarted when this process
    is its only user; otherwise they take effect when it next starts."""
    import pgserver  # the embedded default only: a bundled PostgreSQL, started on demand

    server = pgserver.get_server(folder, cleanup_mode=cleanup_mode)
    with server._lock:  # pgserver's inter-process lock: one process at a time sets and restarts
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            stale = {
                name: value
                for name, value in EMBEDDED_SETTINGS.items()
                if conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                != (value,)
            }
            for name, value in stale.items():
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(name), sql.Literal(value)
                    )
                )
        if not stale:
            return server
        if server.global_process_id_list.get() != [os.getpid()]:
            logger.info("the embedded PostgreSQL gets %s when it next starts", stale)
            return server
        logger.info("restarting the embedded PostgreSQL in %s to apply %s", folder, stale)
        pgserver.pg_ctl(  # type: ignore[attr-defined]  # made by a factory
            ["-w", "-m", "fast", "-l", str(server.log), "restart"],
            pgdata=server.pgdata,
            user=server.system_user,
        )
        server.ensure_postgres_running()  # its handle now follows the restarted postmaster
    return server


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
            "INSERT INTO ops.loads (dataset, version, build, started_at, row_counts, seconds)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
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
    target = _qualified(partition_name(table, dataset, version, build))
    conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)").format(
            target, _qualified(table)
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
    target = _qualified(partition_name(table, dataset, version, build))
    for key, referenced in PARTITION_KEYS[table]:
        parts = (
            [_qualified(partition_name(referenced, dataset, version, build))] if referenced else []
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
                sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(_qualified(table), current)
            )
            conn.execute(sql.SQL("DROP TABLE {}").format(current))
    for table in TABLES:
        conn.execute(
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES IN ({})").format(
                _qualified(table),
                _qualified(partition_name(table, dataset, version, build)),
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
    "boolean": "u1",
}
# Type OIDs of the array elements that binary COPY encodes (an array names its elements' type).
ARRAY_ELEMENTS: dict[str, int] = {
    "smallint": 21,
    "integer": 23,
    "bigint": 20,
    "real": 700,
    "double precision": 701,
    "date": 1082,
    "timestamptz": 1184,
    "boolean": 16,
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


def copy_frame(
    conn: psycopg.Connection[Any],
    table: sql.Composable,
    frame: pl.DataFrame,
    freeze: bool = False,
) -> None:
    """COPY ``frame`` into ``table`` in binary format.

    ``freeze`` writes the rows already frozen (no later hint-bit pass); PostgreSQL allows it
    only into a table created in the current transaction.

    NumPy encodes the rows in bulk: a frame of fixed-width columns without nulls (the ratings)
    as one record array, any other (text, nulls, arrays) field by field. Lists with null
    elements, of text or of lists go row by row through psycopg's binary dumpers.
    """
    names = sql.SQL(", ").join(sql.Identifier(name) for name in frame.columns)
    options = sql.SQL(", FREEZE" if freeze else "")
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY{})").format(table, names, options)
    columns = list(zip(frame.columns, [pg_type(dtype) for dtype in frame.dtypes], strict=True))
    types = [pg for _, pg in columns]
    layouts = [_fixed_layout(frame[name], pg) for name, pg in columns]
    fixed = all(layouts)
    bulk = fixed or all(_encodable(frame[name], pg) for name, pg in columns)
    with conn.cursor() as cur:
        # the queued writer sends from a thread while the next chunk is encoded: not worth
        # a thread for one chunk
        writer = QueuedLibpqWriter(cur) if frame.height > COPY_CHUNK_ROWS else None
        with cur.copy(statement, writer=writer) as copy:
            if not bulk:
                copy.set_types(types)
                for row in frame.iter_rows():
                    copy.write_row(row)
                return
            copy.write(COPY_HEADER)
            for offset in range(0, frame.height, COPY_CHUNK_ROWS):
                chunk = frame.slice(offset, COPY_CHUNK_ROWS)
                copy.write(
                    encode_binary_rows(chunk, types, layouts)  # type: ignore[arg-type]
                    if fixed
                    else encode_rows(chunk, types)
                )
            copy.write(COPY_TRAILER)


def _fixed_layout(series: pl.Series, pg: str) -> str | None:
    """NumPy dtype of the column's binary values when every one has the same width, else None."""
    if series.null_count():
        return None
    if pg in BINARY_LAYOUT:
        return BINARY_LAYOUT[pg]
    if pg == "text" and series.len():
        widths = series.str.len_bytes()
        # NumPy's bytes strings hold ASCII only: other text goes field by field
        if widths.min() == widths.max() and widths.equals(series.str.len_chars()):
            return f"S{widths[0]}"
    return None


def encode_binary_rows(frame: pl.DataFrame, types: list[str], layouts: list[str]) -> bytes:
    """Rows of fixed-width, non-null columns in COPY BINARY tuple format, built in one array."""
    layout: list[tuple[str, str]] = [("fields", ">i2")]
    for i, dtype in enumerate(layouts):
        layout += [(f"len{i}", ">i4"), (f"val{i}", dtype)]
    rows = np.empty(frame.height, dtype=np.dtype(layout))
    rows["fields"] = len(types)
    for i, (column, pg, dtype) in enumerate(zip(frame.columns, types, layouts, strict=True)):
        rows[f"len{i}"] = np.dtype(dtype).itemsize
        rows[f"val{i}"] = _binary_values(frame[column], pg)
    return rows.tobytes()


# A piece of every row's binary tuple, for all rows at once: the bytes, and each row's count.
Piece = tuple[np.ndarray, np.ndarray]


def encode_rows(frame: pl.DataFrame, types: list[str]) -> bytes:
    """Rows in COPY BINARY tuple format, of columns that ``_encodable`` accepts (nulls too).

    Each field is encoded for all rows at once into pieces (its length words, its values,
    an array's header and elements), which one scatter per piece then interleaves row by row.
    """
    count = np.full(frame.height, len(types), dtype=">i2")
    pieces: list[Piece] = [(count.view(np.uint8), np.full(frame.height, 2))]
    for column, pg in zip(frame.columns, types, strict=True):
        pieces += _field_pieces(frame[column], pg)
    return _interleave(pieces)


def _encodable(series: pl.Series, pg: str) -> bool:
    """Fixed-width values, text, or a list of fixed-width values none of which is null."""
    if pg in BINARY_LAYOUT or pg == "text":
        return True
    inner = pg.removesuffix("[]")
    elements = series.explode(empty_as_null=False, keep_nulls=False) if inner != pg else None
    return inner in ARRAY_ELEMENTS and elements is not None and not elements.null_count()


def _field_pieces(series: pl.Series, pg: str) -> list[Piece]:
    valid = series.is_not_null().to_numpy()
    values: list[Piece]
    if pg == "text":
        text = series.str.join("", ignore_nulls=True).item().encode()
        values = [(np.frombuffer(text, np.uint8), series.str.len_bytes().fill_null(0).to_numpy())]
    elif pg in BINARY_LAYOUT:
        layout = np.dtype(BINARY_LAYOUT[pg])
        present = np.asarray(_binary_values(series.drop_nulls(), pg), dtype=layout)
        values = [(present.view(np.uint8), np.where(valid, layout.itemsize, 0))]
    else:
        values = _array_pieces(series, pg.removesuffix("[]"), valid)
    size = np.sum([sizes for _, sizes in values], axis=0)
    lengths = np.where(valid, size, -1).astype(">i4")
    return [(lengths.view(np.uint8), np.full(series.len(), 4)), *values]


def _array_pieces(series: pl.Series, inner: str, valid: np.ndarray) -> list[Piece]:
    """One-dimensional arrays: a header (dimensions, element type, length), then the elements
    with their length words. An empty array has no dimension."""
    layout = np.dtype(BINARY_LAYOUT[inner])
    counts = series.list.len().fill_null(0).to_numpy().astype(np.int64)
    header = np.empty((series.len(), 5), dtype=">i4")
    header[:] = (1, 0, ARRAY_ELEMENTS[inner], 0, 1)
    header[:, 0] = counts > 0
    header[:, 3] = counts
    header_size = np.where(valid, np.where(counts > 0, 20, 12), 0)
    kept = header.view(np.uint8).reshape(-1, 20)[np.arange(20) < header_size[:, None]]
    elements = np.empty(counts.sum(), dtype=[("length", ">i4"), ("value", layout)])
    elements["length"] = layout.itemsize
    flat = series.explode(empty_as_null=False, keep_nulls=False)
    elements["value"] = _binary_values(flat, inner)
    return [(kept, header_size), (elements.view(np.uint8), counts * elements.itemsize)]


def _interleave(pieces: list[Piece]) -> bytes:
    """Row 0's pieces in order, then row 1's...: each piece's bytes scattered to their rows."""
    sizes = np.stack([sizes for _, sizes in pieces]).astype(np.int64)  # (pieces, rows)
    in_row_order = sizes.T.ravel()
    starts = (np.cumsum(in_row_order) - in_row_order).reshape(sizes.shape[::-1]).T
    out = np.empty(int(in_row_order.sum()), dtype=np.uint8)
    index = np.int32 if out.size < 2**31 else np.int64  # an index per byte: keep it small
    for (values, _), size, start in zip(pieces, sizes, starts, strict=True):
        source = np.cumsum(size) - size
        shift = np.repeat((start - source).astype(index), size)
        out[shift + np.arange(values.size, dtype=index)] = values
    return out.tobytes()


def _binary_values(series: pl.Series, pg: str) -> np.ndarray:
    if pg == "timestamptz":
        return series.dt.epoch("us").to_numpy() - PG_EPOCH_US
    if pg == "date":
        return series.cast(pl.Int32).to_numpy() - PG_EPOCH_DAYS
    if pg == "text":
        return np.asarray(series.to_list(), dtype=bytes)
    return series.to_numpy()


# --- queries ----------------------------------------------------------------------------------
def table_counts(url: str, dataset: str) -> dict[str, int]:
    """Row count of every warehouse table (and the folds view) for ``dataset``."""
    with connect(url) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE dataset = %s").format(_qualified(table)),
                (dataset,),
            ).fetchone()[0]  # type: ignore[index]
            for table in (*TABLES, "movielens.folds")
        }


def read_table(url: str, query: str, params: tuple[Any, ...] = ()) -> pl.DataFrame:
    """Run a query and return the result as a Polars frame."""
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute(query, params)  # type: ignore[arg-type]
        columns = [d.name for d in cur.description or []]
        return pl.DataFrame(cur.fetchall(), schema=columns, orient="row")


def export_frame(url: str, query: str, params: tuple[Any, ...] = ()) -> pl.DataFrame:
    """A query's result as a Polars frame through ``COPY ... TO STDOUT`` (CSV): fast for the
    millions of rows that ``fetchall`` would turn into Python tuples; types are inferred."""
    with connect(url) as conn, psycopg.ClientCursor(conn) as cur:
        bound = cur.mogrify(query, params)  # COPY takes no bind parameters
        with cur.copy(f"COPY ({bound}) TO STDOUT (FORMAT csv, HEADER)") as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
    return pl.read_csv(data, infer_schema_length=None)


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
