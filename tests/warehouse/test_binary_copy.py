"""Binary COPY against a real PostgreSQL: every type, nulls, arrays, text widths, chunks."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest
from psycopg import sql

from tasks.warehouse.binary_copy import copy_frame
from tasks.warehouse.connection import connect
from tasks.warehouse.queries import read_table


def test_binary_copy_round_trips_every_type(warehouse: str) -> None:
    frame = pl.DataFrame(
        {
            "i": [1, 2, 3],
            "f": [0.5, None, float("inf")],
            "t": ["Café", None, ""],
            "d": [date(1995, 1, 1), None, date(1969, 7, 20)],
            "ts": [datetime(1997, 12, 4, 15, 55, 49, tzinfo=UTC)] * 3,
            "a": [[1.5, 2.0], [], None],
            "s": [[3], [], [-1, 0, 7]],
            "b": [True, None, False],
            "n": [None, 2**40, -5],
            "r": [1.25, 0.0, None],
        },
        schema={
            "i": pl.Int32,
            "f": pl.Float64,
            "t": pl.String,
            "d": pl.Date,
            "ts": pl.Datetime("us", "UTC"),
            "a": pl.List(pl.Float64),
            "s": pl.List(pl.Int16),
            "b": pl.Boolean,
            "n": pl.Int64,
            "r": pl.Float32,
        },
    )
    fixed = frame.select(
        "i",
        pl.lit("ml-1m").alias("k"),
        "ts",
        pl.col("d").fill_null(date(2000, 1, 1)),
        # as many bytes in each value, not all ASCII; and a constant
        pl.Series(["é", "ab", "ü"]).alias("u"),
        pl.lit("modèle").alias("m"),
    )
    # a null inside an array: PostgreSQL's array format has a null bitmap, psycopg writes it
    holes = pl.DataFrame({"i": [1, 2], "a": [[1.0, None], None]})
    with connect(warehouse) as conn:
        conn.execute(
            "CREATE TABLE t1 (i integer, f double precision, t text, d date, ts timestamptz,"
            " a double precision[], s smallint[], b boolean, n bigint, r real)"
        )
        conn.execute("CREATE TABLE t2 (i integer, k text, ts timestamptz, d date, u text, m text)")
        conn.execute("CREATE TABLE t3 (i bigint, a double precision[])")
        copy_frame(conn, sql.Identifier("t1"), frame)
        copy_frame(conn, sql.Identifier("t2"), fixed)
        copy_frame(conn, sql.Identifier("t3"), holes)
        copy_frame(conn, sql.Identifier("t1"), frame.clear())

    assert read_table(warehouse, "SELECT * FROM t1 ORDER BY i").to_dicts() == frame.to_dicts()
    assert read_table(warehouse, "SELECT * FROM t2 ORDER BY i").to_dicts() == fixed.to_dicts()
    assert read_table(warehouse, "SELECT * FROM t3 ORDER BY i").to_dicts() == holes.to_dicts()


def test_binary_copy_in_chunks(warehouse: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks through the writer thread: the fixed-width layout and the one with nulls."""
    monkeypatch.setattr("tasks.warehouse.binary_copy.COPY_CHUNK_ROWS", 7)
    n = 50
    fixed = pl.DataFrame({"i": range(n), "x": [i / 4 for i in range(n)]})
    varying = fixed.with_columns(
        pl.when(pl.col("i") % 3 == 0).then(None).otherwise(pl.col("i").cast(pl.String)).alias("t")
    )
    with connect(warehouse) as conn:
        conn.execute("CREATE TABLE c1 (i bigint, x double precision)")
        conn.execute("CREATE TABLE c2 (i bigint, x double precision, t text)")
        copy_frame(conn, sql.Identifier("c1"), fixed)
        copy_frame(conn, sql.Identifier("c2"), varying)

    assert read_table(warehouse, "SELECT * FROM c1 ORDER BY i").equals(fixed)
    assert read_table(warehouse, "SELECT * FROM c2 ORDER BY i").equals(varying)
