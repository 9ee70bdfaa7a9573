"""The validation engine: readers of delimited text, rules over fields, rejects with file, line,
field and reason; the ratings' rules that every member shares. Pure Polars, no Prefect.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import polars as pl

from tasks.movielens.errors import ValidationError


@dataclass(frozen=True)
class Rule:
    """A row is valid for ``field`` when ``valid`` is true; otherwise it is rejected with ``reason``."""

    field: str
    valid: pl.Expr
    reason: str


@dataclass(frozen=True)
class FileSpec:
    name: str
    separator: str
    columns: tuple[str, ...]
    encoding: str = "utf-8"
    header: tuple[str, ...] = ()  # the first line's names, when the file has a header line
    quoted: bool = False  # fields may be in RFC 4180 double quotes


REJECT_SCHEMA = {
    "file": pl.String,
    "line": pl.Int64,
    "field": pl.String,
    "value": pl.String,
    "reason": pl.String,
}


@dataclass
class Parsed:
    """Valid rows of one file (with their ``line``) and the rejected ones.

    ``typed``: the fields already hold numbers (the fast reader's), not the text of each field.
    ``lines``: how many lines the file has, when the reader counted them.
    ``removed_ids``: of a users or items file, the ids that only rejected lines hold.
    """

    rows: pl.DataFrame
    rejects: pl.DataFrame
    typed: bool = False
    lines: int | None = None
    removed_ids: pl.Series | None = None


BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark: some editors write it at a file's start
NUL = "\x00"  # PostgreSQL's text cannot hold it


def without_bom(data: bytes) -> bytes:
    """``data`` without a leading UTF-8 byte-order mark (a copy only when it has one)."""
    return data[len(BOM) :] if data.startswith(BOM) else data


def count_lines(data: bytes, block: int = 1 << 26) -> int:
    """Lines in ``data`` (a last one without its newline counts too), counted by NumPy in
    blocks: twice as fast as ``bytes.count`` and bounded in memory."""
    view = np.frombuffer(data, dtype=np.uint8)
    newlines = sum(
        int(np.count_nonzero(view[start : start + block] == 10))
        for start in range(0, len(view), block)
    )
    return newlines + (0 if data.endswith(b"\n") else 1)


def read_lines(data: bytes, encoding: str, file: str) -> pl.DataFrame:
    """Every non-blank line of ``data`` as ``raw`` text with its 1-based ``line`` number."""
    if encoding != "utf-8":
        data = _decoded(data, encoding, file).encode("utf-8")
    if b"\x1f" in data:  # the reader's separator is in the text: split the lines in Python
        text = _decoded(data, "utf-8", file).split("\n")
        if text[-1] == "":
            text.pop()  # the last line's newline
        raw = [line.removesuffix("\r") for line in text]  # as Polars reads CRLF
        return _numbered(pl.DataFrame({"raw": raw}, schema={"raw": pl.String}))
    try:
        lines = pl.read_csv(
            io.BytesIO(data),
            has_header=False,
            separator="\x1f",
            quote_char=None,
            schema={"raw": pl.String},
        )
    except pl.exceptions.ComputeError:
        _decoded(data, "utf-8", file)  # Polars does not say where: name the file and line
        raise
    return _numbered(lines)


def _numbered(lines: pl.DataFrame) -> pl.DataFrame:
    """The non-blank ``raw`` lines with their 1-based ``line`` number."""
    return (
        lines.with_row_index("line", offset=1)
        .with_columns(pl.col("line").cast(pl.Int64))
        .filter(pl.col("raw").is_not_null() & (pl.col("raw").str.strip_chars() != ""))
    )


def _decoded(data: bytes, encoding: str, file: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValidationError(
            f"{file} line {line}: not {encoding} text (byte {data[error.start]:#04x})"
        ) from None


def read_fields(data: bytes, spec: FileSpec) -> Parsed:
    """Split each line into the spec's string fields; lines with the wrong field count are rejected."""
    lines = read_lines(data, spec.encoding, spec.name)
    parts = pl.col("raw").str.split(spec.separator)
    lines = lines.with_columns(parts.alias("parts"))
    count_ok = pl.col("parts").list.len() == len(spec.columns)
    rejects = _rejects(
        lines.filter(~count_ok),
        spec.name,
        "line",
        pl.col("raw"),
        f"expected {len(spec.columns)} fields separated by {spec.separator!r}",
    )
    rows = lines.filter(count_ok).select(
        "line",
        *(pl.col("parts").list.get(i).alias(name) for i, name in enumerate(spec.columns)),
    )
    if b"\x00" in data:
        return without_nul_fields(Parsed(rows=rows, rejects=rejects), spec)
    return Parsed(rows=rows, rejects=rejects)


def without_nul_fields(parsed: Parsed, spec: FileSpec) -> Parsed:
    """Reject the rows with a NUL byte in a field, naming the first such field of each."""
    holds_nul = [pl.col(name).str.contains(NUL, literal=True) for name in spec.columns]
    first_field = pl.coalesce(
        pl.when(nul).then(pl.lit(name)) for nul, name in zip(holds_nul, spec.columns, strict=True)
    )
    marked = parsed.rows.with_columns(first_field.alias("__nul_field"))
    bad = marked.filter(pl.col("__nul_field").is_not_null())
    rejects = bad.select(
        pl.lit(spec.name).alias("file"),
        pl.col("line"),
        pl.col("__nul_field").alias("field"),
        pl.coalesce(
            pl.when(nul).then(pl.col(name))
            for nul, name in zip(holds_nul, spec.columns, strict=True)
        )
        .str.replace_all(NUL, "\\0", literal=True)
        .alias("value"),
        pl.lit("holds a NUL byte (PostgreSQL text cannot store one)").alias("reason"),
    ).cast(REJECT_SCHEMA)  # type: ignore[arg-type]
    rows = marked.filter(pl.col("__nul_field").is_null()).drop("__nul_field")
    return replace(parsed, rows=rows, rejects=pl.concat([parsed.rejects, rejects]))


def read_typed_fields(data: bytes, spec: FileSpec, dtypes: dict[str, pl.DataType]) -> Parsed | None:
    """The file's fields read straight into ``dtypes`` by Polars' CSV reader, or None when any
    line is not that clean (a blank line, a missing, extra or non-numeric field): the caller
    then reads it line by line, which names each bad line's field and reason.

    On the ratings files this is 5x faster than splitting lines, and most files are clean.
    """
    skip = 1 if spec.header else 0
    if len(spec.separator) != 1 or spec.encoding != "utf-8" or not data or data.isspace():
        return None  # (not data.strip(): that copies the file)
    end = data.find(b"\n")
    first_line = data if end < 0 else data[:end]  # (not split: that copies the rest)
    if spec.header and first_line.rstrip(b"\r") != ",".join(spec.header).encode():
        return None  # the line reader reports the header
    try:
        rows = pl.read_csv(
            data,
            has_header=False,
            skip_rows=skip,
            separator=spec.separator,
            quote_char=None,
            schema=dtypes,
        )
    except (pl.exceptions.PolarsError, UnicodeDecodeError):
        return None
    lines = count_lines(data)
    if rows.height != lines - skip or any(rows.null_count().row(0)):
        return None  # a blank or short line: Polars reads it as nulls
    return Parsed(
        rows=rows.with_row_index("line", offset=1 + skip).with_columns(
            pl.col("line").cast(pl.Int64)
        ),
        rejects=pl.DataFrame(schema=REJECT_SCHEMA),
        typed=True,
        lines=lines,
    )


def apply_rules(parsed: Parsed, file: str, rules: list[Rule]) -> Parsed:
    """Keep the rows every rule accepts; a row's failed field is reported once, by its first rule."""
    checks = parsed.rows.with_columns(
        rule.valid.fill_null(False).alias(f"__ok_{i}") for i, rule in enumerate(rules)
    )
    verdicts = [f"__ok_{i}" for i in range(len(rules))]
    all_ok = pl.all_horizontal(verdicts)
    if checks.select(all_ok.all()).item():  # the usual case: skip a filter per rule
        return replace(parsed, rows=checks.drop(verdicts))
    rejects = []
    for i, rule in enumerate(rules):
        earlier = [f"__ok_{j}" for j, other in enumerate(rules[:i]) if other.field == rule.field]
        first_failure = ~pl.col(f"__ok_{i}") & pl.all_horizontal(True, *earlier)
        rejects.append(
            _rejects(
                checks.filter(first_failure),
                file,
                rule.field,
                pl.col(rule.field).cast(pl.String),
                rule.reason,
            )
        )
    rows = checks.filter(all_ok).drop(verdicts)
    return replace(parsed, rows=rows, rejects=pl.concat([parsed.rejects, *rejects]))


def _rejects(
    frame: pl.DataFrame, file: str, field: str, value: pl.Expr, reason: str
) -> pl.DataFrame:
    return frame.select(
        pl.lit(file).alias("file"),
        pl.col("line"),
        pl.lit(field).alias("field"),
        value.alias("value"),
        pl.lit(reason).alias("reason"),
    ).cast(REJECT_SCHEMA)  # type: ignore[arg-type]


def as_integer(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars().cast(pl.Int64, strict=False)


def as_type(name: str, dtype: pl.DataType) -> pl.Expr:
    return pl.col(name).str.strip_chars().cast(dtype, strict=False)


def first_occurrence(*keys: str | pl.Expr) -> pl.Expr:
    """True on the first line (rows are in line order) holding each value of ``keys``; give
    the parsed value (``01`` and `` 1 `` are ``1``), not the text."""
    return pl.struct(keys).is_first_distinct()


def id_rules(field: str, noun: str) -> list[Rule]:
    """An id: a positive integer that fits PostgreSQL's integer, on one line only."""
    value = as_integer(field)
    return [
        Rule(field, value.is_between(1, ID_MAX), f"{noun} id must be a positive integer"),
        Rule(field, first_occurrence(value), f"duplicate {noun} id"),
    ]


# The fast reader's types: a value that does not fit (an id past 2**31 - 1, a rating past 127)
# fails the read, and the line reader then names the line.
RATING_DTYPES: dict[str, pl.DataType] = {
    "user_id": pl.Int32(),
    "item_id": pl.Int32(),
    "rating": pl.Int8(),
    "timestamp": pl.Int64(),
}
ID_MAX = 2**31 - 1  # ids are PostgreSQL integers
TIMESTAMP_MAX = 253_402_300_799  # 9999-12-31 23:59:59 UTC: PostgreSQL's timestamps go further


@dataclass(frozen=True)
class KnownIds:
    """The ids a ratings file may use, and the files that list them (no users file: any user).

    ``rejected_users`` / ``rejected_items``: the ids of the lines of those files that were
    rejected; a rating of one is rejected as that line's consequence, not as a cause.
    """

    items: pl.Series
    items_file: str
    users: pl.Series | None = None
    users_file: str = ""
    rejected_users: pl.Series | None = None
    rejected_items: pl.Series | None = None


CONSEQUENCE_REASON = "rejected in"  # "user rejected in u.user": the reason of a consequence


def rejected_in(noun: str, file: str) -> str:
    """The reason of a rating rejected only because its user's or item's line was."""
    return f"{noun} {CONSEQUENCE_REASON} {file}"


def is_consequence() -> pl.Expr:
    """True on the rejects that only follow from another reject (``rejected_in``'s reasons)."""
    return pl.col("reason").str.contains(rf"^(user|item) {CONSEQUENCE_REASON} ")


def rejected_ids(fields: Parsed, checked: Parsed, separator: str, field: str) -> pl.Series:
    """The ids (of ``field``, the file's first column) of the rejected lines of a users or items
    file whose id no accepted line holds: the users or items that the rejects removed.

    ``fields``: the file's string fields; ``checked``: its accepted rows (``field`` typed) and
    rejects."""
    if not checked.rejects.height:
        return pl.Series(field, [], pl.Int32)
    lines = checked.rejects["line"].unique().implode()
    of_lines = fields.rows.filter(pl.col("line").is_in(lines)).select(as_integer(field))
    short_or_long = checked.rejects.filter(pl.col("field") == "line").select(
        pl.col("value").str.split(separator).list.first().alias(field)
    )
    ids = pl.concat([of_lines, short_or_long.select(as_integer(field))])[field]
    accepted = checked.rows[field].cast(pl.Int64).implode()
    removed = ids.filter(ids.is_between(1, ID_MAX) & ~ids.is_in(accepted))
    return removed.unique().sort().cast(pl.Int32)


def rating_dtypes(half_stars: bool) -> dict[str, pl.DataType]:
    return {**RATING_DTYPES, "rating": pl.Float64()} if half_stars else RATING_DTYPES


def check_ratings(
    parsed: Parsed,
    file: str,
    known: KnownIds,
    half_stars: bool = False,
    not_after: datetime | None = None,
) -> Parsed:
    """Ratings with strict types and ranges (whole stars 1..5, or half stars 0.5..5.0), known
    users and items, no duplicate (user, item) pairs, no time later than ``not_after`` (the
    fetch of the source; default now); the rows come out in (user, item) order."""

    def number(name: str, dtype: pl.DataType | None = None) -> pl.Expr:
        return pl.col(name) if parsed.typed else as_type(name, dtype or pl.Int64())

    user, item = number("user_id"), number("item_id")
    if half_stars:
        stars = number("rating", pl.Float64())
        rating = Rule(
            "rating",
            stars.is_between(0.5, 5.0) & ((stars * 2).round() == stars * 2),
            "rating must be 0.5..5.0 in half stars",
        )
    else:
        rating = Rule("rating", number("rating").is_between(1, 5), "rating must be an integer 1..5")
    known_user = (
        [Rule("user_id", user.is_in(known.users.implode()), f"user not in {known.users_file}")]
        if known.users is not None
        else []
    )
    latest = not_after or datetime.now(UTC)
    valid_ids = user.is_between(1, ID_MAX) & item.is_between(1, ID_MAX)
    rules = [
        Rule("user_id", user.is_between(1, ID_MAX), "user id must be a positive integer"),
        Rule("item_id", item.is_between(1, ID_MAX), "item id must be a positive integer"),
        rating,
        Rule(
            "timestamp",
            number("timestamp").is_between(0, TIMESTAMP_MAX),
            "timestamp must be unix seconds from 1970 to 9999",
        ),
        Rule(
            "timestamp",
            number("timestamp") <= int(latest.timestamp()),
            f"timestamp is later than the fetch of the source ({latest:%Y-%m-%d %H:%M:%S} UTC)",
        ),
        *_consequence_rules(user, item, known),
        *known_user,
        Rule("item_id", item.is_in(known.items.implode()), f"item not in {known.items_file}"),
    ]
    first_of_pair = Rule(
        "item_id",
        # rows with a bad id (a null pair) are rejected for it, not as duplicates
        pl.when(valid_ids).then(pair_key(user, item)).is_first_distinct()
        | ~valid_ids.fill_null(False),
        "duplicate (user, item) pair: the user rated this item on an earlier line",
    )

    def checked_rows(rules: list[Rule]) -> tuple[Parsed, pl.DataFrame]:
        checked = apply_rules(parsed, file, rules)
        # In (user, item) order, the warehouse's primary-key order: the features and the load
        # take them as they are, and a duplicate pair is next to its first line.
        rows = checked.rows.select(
            "line",
            number("user_id", pl.Int32()).alias("user_id"),
            number("item_id", pl.Int32()).alias("item_id"),
            number("rating", pl.Float64())
            .cast(pl.Float32 if half_stars else pl.Int8)
            .alias("rating"),
            number("timestamp").alias("timestamp"),
        )
        return checked, in_pair_order(rows)

    checked, rows = checked_rows(rules)
    # Rare: a duplicate pair, or rejects (a rejected line still counts as a pair's first line).
    if checked.rejects.height or rows.select((pair_key().diff() == 0).any()).item():
        checked, rows = checked_rows([*rules, first_of_pair])
    return Parsed(rows=rows, rejects=checked.rejects, lines=parsed.lines)


def _consequence_rules(user: pl.Expr, item: pl.Expr, known: KnownIds) -> list[Rule]:
    """Ratings of a user or item whose own line was rejected (none when no line was)."""
    rules = []
    if known.rejected_users is not None and known.rejected_users.len():
        rejected = known.rejected_users.implode()
        rules.append(Rule("user_id", ~user.is_in(rejected), rejected_in("user", known.users_file)))
    if known.rejected_items is not None and known.rejected_items.len():
        rejected = known.rejected_items.implode()
        rules.append(Rule("item_id", ~item.is_in(rejected), rejected_in("item", known.items_file)))
    return rules


CSV_FIELD = r'("(?:[^"]|"")*"|[^",]*)'  # a quoted field ("" inside is a quote) or a bare one


def read_csv_fields(data: bytes, spec: FileSpec) -> Parsed:
    """Fields of a CSV file with a header line; the header must name the spec's columns."""
    lines = read_lines(data, spec.encoding, spec.name).with_columns(
        pl.col("raw").str.strip_suffix("\r")
    )
    header = lines.filter(pl.col("line") == 1)["raw"].to_list()
    expected = ",".join(spec.header)
    if header != [expected]:
        found = repr(header[0]) if header else "nothing"
        raise ValidationError(f"{spec.name} line 1: header {found}, expected {expected!r}")
    lines = lines.filter(pl.col("line") > 1)
    if spec.quoted:
        pattern = "^" + ",".join([CSV_FIELD] * len(spec.columns)) + "$"
        fields = pl.col("raw").str.extract_groups(pattern)
        lines = lines.with_columns(fields.alias("fields")).unnest("fields")
        count_ok = pl.col("1").is_not_null()
        values = [_unquoted(pl.col(str(i + 1))) for i in range(len(spec.columns))]
    else:
        lines = lines.with_columns(pl.col("raw").str.split(",").alias("parts"))
        count_ok = pl.col("parts").list.len() == len(spec.columns)
        values = [pl.col("parts").list.get(i) for i in range(len(spec.columns))]
    rejects = _rejects(
        lines.filter(~count_ok),
        spec.name,
        "line",
        pl.col("raw"),
        f"expected {len(spec.columns)} comma-separated fields",
    )
    rows = lines.filter(count_ok).select(
        "line", *(value.alias(name) for value, name in zip(values, spec.columns, strict=True))
    )
    if b"\x00" in data:
        return without_nul_fields(Parsed(rows=rows, rejects=rejects), spec)
    return Parsed(rows=rows, rejects=rejects)


def _unquoted(field: pl.Expr) -> pl.Expr:
    inner = (
        field.str.strip_prefix('"').str.strip_suffix('"').str.replace_all('""', '"', literal=True)
    )
    return pl.when(field.str.starts_with('"')).then(inner).otherwise(field)


def pair_key(user: pl.Expr | None = None, item: pl.Expr | None = None) -> pl.Expr:
    """(user_id, item_id), or the ``user`` and ``item`` ids given, as one int64 that sorts like
    the pair: a sort on it is 2x faster, and it is distinct exactly when the pairs are."""
    user = pl.col("user_id") if user is None else user
    item = pl.col("item_id") if item is None else item
    return user.cast(pl.Int64) * 2**32 + item


def in_pair_order(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by (user_id, item_id); one already in that order (the ml-20m and ml-25m
    files are) as it is. (At 10M rows Polars' lazy sort takes 0.45 s, its eager one 0.73 s.)"""
    if frame.select(pair_key()).to_series().is_sorted():
        return frame
    return frame.lazy().sort(pair_key()).collect()


FIRST_REJECTS = 5  # the root rejects a refusal names


def describe_rejects(rejects: pl.DataFrame, limit: int) -> str:
    """The first ``limit`` rejects, in file and line order, as "file line N field F ('value'):
    reason"; empty when there are none."""
    first = rejects.sort("file", "line").head(limit)
    return "; ".join(
        f"{r['file']} line {r['line']} field {r['field']} ({r['value']!r}): {r['reason']}"
        for r in first.iter_rows(named=True)
    )


def describe_consequences(rejects: pl.DataFrame, limit: int) -> str:
    """The consequences among ``rejects``, counted per user or item whose own line was rejected
    ("403 ratings of user 7 (u.data)"), the largest first; empty when there are none."""
    counts = (
        rejects.filter(is_consequence())
        .group_by("file", "field", "value")
        .agg(pl.col("line").n_unique().alias("rows"))
        .sort(["rows", "file", "field", "value"], descending=[True, False, False, False])
    )
    parts = [
        f"{r['rows']} ratings of {r['field'].removesuffix('_id')} {r['value']} ({r['file']})"
        for r in counts.head(limit).iter_rows(named=True)
    ]
    more = counts.height - limit
    return ", ".join(parts) + (f" and {more} more users or items" if more > 0 else "")
