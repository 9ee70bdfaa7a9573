"""Parsing and validation of the MovieLens files: every kind of bad row is rejected with its line."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from bench.synth import SyntheticSize, write_ml100k
from tasks.features import item_features, user_features
from tasks.movielens.errors import ValidationError
from tasks.movielens.folds import random_folds
from tasks.movielens.formats import RATINGS_SPEC, curate_ml100k, parse_users
from tasks.movielens.validation import (
    RATING_DTYPES,
    KnownIds,
    check_ratings,
    read_fields,
    read_typed_fields,
)
from tasks.warehouse.loads import warehouse_tables

SMALL = SyntheticSize(ratings=400, users=25, items=50)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    folder = write_ml100k(tmp_path / "ml", SMALL, seed=5, folds=False)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def with_line(data: bytes, line: bytes) -> tuple[bytes, int]:
    """``data`` with ``line`` appended; returns the new bytes and the line's number."""
    return data + line + b"\n", data.count(b"\n") + 1


def rejects_of(files: dict[str, bytes]) -> list[tuple[str, int, str, str]]:
    rejects = curate_ml100k(files).rejects
    return [(r["file"], r["line"], r["field"], r["reason"]) for r in rejects.iter_rows(named=True)]


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        (b"1\t2\tfive\t881250949", "rating", "rating must be an integer 1..5"),
        (b"1\t2\t6\t881250949", "rating", "rating must be an integer 1..5"),
        (b"1\t2\t300\t881250949", "rating", "rating must be an integer 1..5"),
        (b"1\t2\t3.5\t881250949", "rating", "rating must be an integer 1..5"),
        (b"0\t2\t3\t881250949", "user_id", "user id must be a positive integer"),
        (b"1\t-4\t3\t881250949", "item_id", "item id must be a positive integer"),
        (b"1\t2\t3\tyesterday", "timestamp", "timestamp must be unix seconds from 1970 to 9999"),
        (b"1\t2\t3\t-1", "timestamp", "timestamp must be unix seconds from 1970 to 9999"),
        (b"1\t2\t3\t253402300800", "timestamp", "timestamp must be unix seconds from 1970 to 9999"),
        (b"999\t2\t3\t881250949", "user_id", "user not in u.user"),
        (b"1\t9999\t3\t881250949", "item_id", "item not in u.item"),
        (b"1\t2\t3", "line", "expected 4 fields separated by '\\t'"),
    ],
)
def test_bad_rating_lines_are_rejected_with_their_line(
    files: dict[str, bytes], line: bytes, field: str, reason: str
) -> None:
    files["u.data"], number = with_line(files["u.data"], line)

    assert rejects_of(files) == [("u.data", number, field, reason)]


def test_duplicate_pair_rejects_the_later_line(files: dict[str, bytes]) -> None:
    first = files["u.data"].split(b"\n")[0].split(b"\t")
    duplicate = b"\t".join([first[0], first[1], b"1", first[3]])
    files["u.data"], number = with_line(files["u.data"], duplicate)

    assert rejects_of(files) == [
        (
            "u.data",
            number,
            "item_id",
            "duplicate (user, item) pair: the user rated this item on an earlier line",
        )
    ]


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        (b"900|30|X|student|12345", "gender", "gender must be M or F"),
        (b"900|300|M|student|12345", "age", "age must be an integer in 1..120"),
        (b"900|30|M|astronaut|12345", "occupation", "occupation not listed in u.occupation"),
        (b"900|30|M|student|", "zip_code", "zip code is empty"),
        (b"1|30|M|student|12345", "user_id", "duplicate user id"),
        (b"01|30|M|student|12345", "user_id", "duplicate user id"),
        (b" 1 |30|M|student|12345", "user_id", "duplicate user id"),
        (b"2147483648|30|M|student|12345", "user_id", "user id must be a positive integer"),
    ],
)
def test_bad_user_lines_are_rejected(
    files: dict[str, bytes], line: bytes, field: str, reason: str
) -> None:
    files["u.user"], number = with_line(files["u.user"], line)

    assert rejects_of(files) == [("u.user", number, field, reason)]


def item_line(item_id: str = "900", date: str = "01-Jan-1995", flag: str = "0") -> bytes:
    flags = "|".join([flag] + ["0"] * 18)
    return f"{item_id}|Noël (1995)|{date}||http://x|{flags}".encode("latin-1")


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        (item_line(date="1995-01-01"), "release_date", "release date is not like 01-Jan-1995"),
        (item_line(flag="2"), "genre_0", "genre flag must be 0 or 1"),
        (item_line(item_id="x"), "item_id", "item id must be a positive integer"),
        (item_line(item_id="2147483648"), "item_id", "item id must be a positive integer"),
        (item_line(item_id="001"), "item_id", "duplicate item id"),
    ],
)
def test_bad_item_lines_are_rejected(
    files: dict[str, bytes], line: bytes, field: str, reason: str
) -> None:
    files["u.item"], number = with_line(files["u.item"], line)

    assert rejects_of(files) == [("u.item", number, field, reason)]


def test_a_file_already_in_pair_order_keeps_it_and_still_finds_duplicates(
    files: dict[str, bytes],
) -> None:
    lines = files["u.data"].splitlines()
    in_order = sorted(lines, key=lambda line: tuple(map(int, line.split(b"\t")[:2])))
    files["u.data"] = b"\n".join(in_order) + b"\n"
    files["u.data"], number = with_line(files["u.data"], in_order[-1])

    curated = curate_ml100k(files)

    assert [(r["line"], r["field"]) for r in curated.rejects.iter_rows(named=True)] == [
        (number, "item_id")
    ]
    pairs = [tuple(map(int, line.split(b"\t")[:2])) for line in in_order]
    assert curated.ratings.select("user_id", "item_id").rows() == pairs


def test_a_pair_whose_first_line_is_rejected_is_still_a_duplicate(
    files: dict[str, bytes],
) -> None:
    files["u.data"], first = with_line(files["u.data"], b"1\t2\t6\t881250949")
    files["u.data"], second = with_line(files["u.data"], b"1\t2\t3\t881250949")

    assert rejects_of(files) == [
        ("u.data", first, "rating", "rating must be an integer 1..5"),
        (
            "u.data",
            second,
            "item_id",
            "duplicate (user, item) pair: the user rated this item on an earlier line",
        ),
    ]


def test_latin1_titles_and_missing_dates_survive(files: dict[str, bytes]) -> None:
    files["u.item"], _ = with_line(files["u.item"], item_line(date=""))

    items = curate_ml100k(files).items.filter(pl.col("item_id") == 900)

    assert items["title"].to_list() == ["Noël (1995)"]
    assert items["release_date"].to_list() == [None]


def test_folds_are_derived_by_the_readme_rule(files: dict[str, bytes]) -> None:
    folds = curate_ml100k(files).folds
    first_fifth = [
        tuple(map(int, line.split(b"\t")[:2])) for line in files["u.data"].split(b"\n")[:80]
    ]

    assert folds.group_by("test_fold").len().sort("test_fold")["len"].to_list() == [80] * 5
    fold_one = folds.filter(pl.col("test_fold") == 1).select("user_id", "item_id").rows()
    assert sorted(fold_one) == sorted(first_fifth)


def test_curated_ratings_are_in_pair_order_whatever_the_file_order(files: dict[str, bytes]) -> None:
    curated = curate_ml100k(files)
    pairs = curated.ratings.select("user_id", "item_id").rows()

    assert pairs == sorted(pairs)
    assert curated.folds.select("user_id", "item_id").rows() == pairs
    assert curated.ratings.height == files["u.data"].count(b"\n")


def test_official_folds_that_disagree_fail(files: dict[str, bytes]) -> None:
    lines = files["u.data"].split(b"\n")
    files["u1.test"] = b"\n".join(lines[80:160]) + b"\n"  # the second fifth, not the first

    with pytest.raises(ValidationError, match=r"u1\.test: disagrees with the folds derived"):
        curate_ml100k(files)


@pytest.mark.realdata
def test_real_ml100k_parses_clean(ml100k_dir: Path) -> None:
    curated = curate_ml100k({p.name: p.read_bytes() for p in ml100k_dir.iterdir() if p.is_file()})

    assert curated.rejects.height == 0
    assert (curated.ratings.height, curated.users.height, curated.items.height) == (
        100_000,
        943,
        1682,
    )
    assert curated.genres.height == 19 and curated.occupations.height == 21
    titles = curated.items.filter(pl.col("item_id") == 543)["title"].to_list()
    assert titles == ["Misérables, Les (1995)"]


def test_clean_ratings_read_typed_equal_the_line_by_line_reading(files: dict[str, bytes]) -> None:
    data = files["u.data"]
    users = curate_ml100k(files).users["user_id"]
    items = curate_ml100k(files).items["item_id"]
    typed = read_typed_fields(data, RATINGS_SPEC, RATING_DTYPES)
    known = KnownIds(items, "u.item", users, "u.user")

    assert typed is not None
    fast = check_ratings(typed, "u.data", known)
    slow = check_ratings(read_fields(data, RATINGS_SPEC), "u.data", known)
    assert fast.rows.height == data.count(b"\n")
    assert fast.rows.equals(slow.rows)
    assert fast.rejects.height == slow.rejects.height == 0


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"1\t2\t3",
        b"1\t2\t3\t4\t5",
        b"1\t2\tfive\t881250949",
        b"1\t2\t3.5\t881250949",
        b"2147483648\t2\t3\t881250949",
        b"1\t2\t300\t881250949",
    ],
    ids=["blank", "short", "long", "text", "fraction", "id past int32", "rating past int8"],
)
def test_the_typed_reader_declines_a_file_with_an_unclean_line(
    files: dict[str, bytes], line: bytes
) -> None:
    data, _ = with_line(files["u.data"], line)

    assert read_typed_fields(data, RATINGS_SPEC, RATING_DTYPES) is None


def test_ids_beyond_postgres_integers_are_rejected(files: dict[str, bytes]) -> None:
    files["u.data"], number = with_line(files["u.data"], b"2147483648\t2\t3\t881250949")

    assert rejects_of(files) == [
        ("u.data", number, "user_id", "user id must be a positive integer")
    ]


def test_lines_with_bad_ids_are_not_also_duplicates(files: dict[str, bytes]) -> None:
    files["u.data"], first = with_line(files["u.data"], b"0\t2\t3\t881250949")
    files["u.data"], second = with_line(files["u.data"], b"-1\t3\t3\t881250949")

    assert rejects_of(files) == [
        ("u.data", first, "user_id", "user id must be a positive integer"),
        ("u.data", second, "user_id", "user id must be a positive integer"),
    ]


def test_random_folds_of_no_ratings_are_empty() -> None:
    none = pl.DataFrame(schema={"user_id": pl.Int32, "item_id": pl.Int32})

    assert random_folds(none, seed=0).height == 0


@pytest.mark.parametrize(
    ("file", "line", "field", "reason"),
    [
        ("u.genre", b"Again|01", "genre_id", "duplicate genre id"),
        ("u.occupation", b"student ", "name", "duplicate occupation"),
    ],
)
def test_duplicates_are_found_by_value_not_text(
    files: dict[str, bytes], file: str, line: bytes, field: str, reason: str
) -> None:
    files[file], number = with_line(files[file], line)

    assert rejects_of(files) == [(file, number, field, reason)]


def test_a_line_holding_the_line_readers_separator_byte_still_parses(
    files: dict[str, bytes],
) -> None:
    files["u.user"] = files["u.user"].replace(b"\n", b"\r\n")  # and CRLF, as Polars reads it
    files["u.user"], number = with_line(files["u.user"], b"900|30|M|stu\x1fdent|12345")

    assert rejects_of(files) == [
        ("u.user", number, "occupation", "occupation not listed in u.occupation")
    ]
    assert curate_ml100k(files).users.height == SMALL.users


@pytest.mark.parametrize("data", [b"", b"\n\n", b"1\t2\t6\t881250949\n"])
def test_a_ratings_file_without_a_valid_rating_fails(files: dict[str, bytes], data: bytes) -> None:
    files["u.data"] = data

    with pytest.raises(ValidationError, match=r"u\.data: no valid ratings"):
        curate_ml100k(files)


def test_an_empty_occupation_list_rejects_every_user(files: dict[str, bytes]) -> None:
    users = parse_users(files["u.user"], occupations=set())

    assert users.rows.height == 0
    assert set(users.rejects["reason"]) == {"occupation not listed in u.occupation"}


def test_trailing_blank_lines_do_not_move_the_folds(files: dict[str, bytes]) -> None:
    before = curate_ml100k(files).folds
    files["u.data"] += b"\n\n\n\n\n"

    assert curate_ml100k(files).folds.equals(before)


def test_a_rejected_rating_line_is_in_no_official_fold(files: dict[str, bytes]) -> None:
    """mku.sh copies u.data's lines into u<i>.test: a line rejected in u.data (here rejected in
    u.data alone) is no disagreement, as long as the rejects are tolerated."""
    lines = files["u.data"].split(b"\n")
    files["u1.test"] = b"\n".join(lines[:80]) + b"\n"
    user, item, _, stamp = lines[4].split(b"\t")
    lines[4] = b"\t".join([user, item, b"6", stamp])
    files["u.data"] = b"\n".join(lines)

    curated = curate_ml100k(files)

    assert [(r["line"], r["field"]) for r in curated.rejects.iter_rows(named=True)] == [
        (5, "rating")
    ]


def test_an_official_fold_line_of_an_unknown_user_disagrees(files: dict[str, bytes]) -> None:
    lines = files["u.data"].split(b"\n")
    files["u1.test"] = b"\n".join([*lines[:80], b"999\t2\t3\t881250949"]) + b"\n"

    with pytest.raises(ValidationError, match=r"u1\.test: disagrees .* 1 unexpected pairs"):
        curate_ml100k(files)


def test_a_rejected_genre_has_no_item_flags(files: dict[str, bytes]) -> None:
    lines = files["u.genre"].split(b"\n")
    name, genre_id = lines[1].split(b"|")
    lines[1] = name + b"|x"  # genre 1's line: rejected
    files["u.genre"] = b"\n".join(lines)

    curated = curate_ml100k(files)

    assert 1 not in curated.genres["genre_id"].to_list()
    assert 1 not in curated.item_genres["genre_id"].to_list()
    # the warehouse's genre lists keep the ids, past the gap
    items = item_features(curated.ratings, curated.items, curated.item_genres, curated.genres)
    users = user_features(curated.ratings, curated.users, curated.item_genres, curated.genres)
    tables = warehouse_tables(curated.tables(), items, users)
    listed = tables["features.item_features"].select("item_id", "genres").explode("genres")
    expected = curated.item_genres.rename({"genre_id": "genres"}).sort("item_id", "genres")
    assert listed.drop_nulls().sort("item_id", "genres").equals(expected)
