"""PostgreSQL's binary COPY format, encoded by NumPy column by column, and the COPY of a frame.

The riskiest code of the project: every byte here lands in the warehouse. Its tests are
``tests/warehouse/test_binary_copy.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import psycopg
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from tasks.warehouse.connection import WarehouseError

COPY_CHUNK_ROWS = 100_000  # small enough that encoding the next overlaps the server's work


PG_EPOCH_US = 946_684_800 * 1_000_000  # 2000-01-01 in unix microseconds
PG_EPOCH_DAYS = 10_957


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
