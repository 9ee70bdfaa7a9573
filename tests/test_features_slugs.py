"""Genres whose names make the same slug get distinct feature columns (issue 21, item 6)."""

from __future__ import annotations

import polars as pl
import pytest

from tasks.features import genre_column_slugs, item_features, user_features
from tasks.warehouse.loads import warehouse_tables

# Genres 0 "Sci-Fi" and 1 "Sci Fi" both slug to sci_fi; 2 "Sci Fi 1" slugs to sci_fi_1.
# Item 1 is genre 0, item 2 genre 1, item 3 genres 1 and 2.
GENRES = pl.DataFrame(
    {"genre_id": [0, 1, 2], "name": ["Sci-Fi", "Sci Fi", "Sci Fi 1"]},
    schema={"genre_id": pl.Int16, "name": pl.String},
)
ITEM_GENRES = pl.DataFrame(
    {"item_id": [1, 2, 3, 3], "genre_id": [0, 1, 1, 2]},
    schema={"item_id": pl.Int32, "genre_id": pl.Int16},
)
ITEMS = pl.DataFrame(
    {"item_id": [1, 2, 3], "release_year": [1995, 1996, 1997]},
    schema={"item_id": pl.Int32, "release_year": pl.Int16},
)
RATINGS = pl.DataFrame(
    {"user_id": [1, 1, 1], "item_id": [1, 2, 3], "rating": [5, 1, 3]},
    schema={"user_id": pl.Int32, "item_id": pl.Int32, "rating": pl.Int8},
)
USERS = pl.DataFrame(
    {"user_id": [1], "age": [30], "gender": ["F"], "occupation": ["writer"]},
    schema={"user_id": pl.Int32, "age": pl.Int16, "gender": pl.String, "occupation": pl.String},
)


def test_colliding_slugs_get_their_genre_id_and_others_keep_theirs() -> None:
    assert genre_column_slugs(GENRES) == ["sci_fi__0", "sci_fi__1", "sci_fi_1"]


def test_slugs_follow_genre_id_order_not_row_order() -> None:
    shuffled = GENRES.reverse()

    assert genre_column_slugs(shuffled) == ["sci_fi__0", "sci_fi__1", "sci_fi_1"]


def test_item_features_have_one_column_per_colliding_genre() -> None:
    features = item_features(RATINGS, ITEMS, ITEM_GENRES, GENRES).sort("item_id")

    assert features["genre_sci_fi__0"].to_list() == [1, 0, 0]
    assert features["genre_sci_fi__1"].to_list() == [0, 1, 1]
    assert features["genre_sci_fi_1"].to_list() == [0, 0, 1]


def test_user_affinities_have_one_column_per_colliding_genre() -> None:
    features = user_features(RATINGS, USERS, ITEM_GENRES, GENRES, damping=1.0)

    # user mean 3; genre 0: rating 5 -> (5 + 3) / 2; genre 1: ratings 1, 3 -> (4 + 3) / 3
    assert features["affinity_sci_fi__0"][0] == pytest.approx(4.0)
    assert features["affinity_sci_fi__1"][0] == pytest.approx(7 / 3)
    assert features["affinity_sci_fi_1"][0] == pytest.approx(3.0)


def test_warehouse_genre_lists_keep_colliding_genres_apart() -> None:
    items = item_features(RATINGS, ITEMS, ITEM_GENRES, GENRES)
    users = user_features(RATINGS, USERS, ITEM_GENRES, GENRES)
    curated = {
        "genres": GENRES,
        "occupations": pl.DataFrame({"occupation": ["writer"]}),
        "users": USERS,
        "items": ITEMS,
        "item_genres": ITEM_GENRES,
        "ratings": RATINGS.with_columns(pl.lit(0, pl.Int64).alias("timestamp")),
        "folds": RATINGS.select("user_id", "item_id", pl.lit(1, pl.Int16).alias("test_fold")),
    }

    tables = warehouse_tables(curated, items, users)

    genres = tables["features.item_features"].sort("item_id")["genres"].to_list()
    assert genres == [[0], [1], [1, 2]]
