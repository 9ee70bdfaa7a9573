"""Reading the warehouse: row counts, queries as Polars frames, bulk export through COPY."""

from __future__ import annotations

from typing import Any

import polars as pl
import psycopg
from psycopg import sql

from tasks.warehouse.connection import connect
from tasks.warehouse.schema import TABLES, qualified_name


# --- queries ----------------------------------------------------------------------------------
def table_counts(url: str, dataset: str) -> dict[str, int]:
    """Row count of every warehouse table (and the folds view) for ``dataset``."""
    with connect(url) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE dataset = %s").format(qualified_name(table)),
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
