"""Features on a hand-checkable ratings frame: every number computed by hand here."""

from __future__ import annotations

import polars as pl
import pytest

from tasks.features import genre_slug, item_features, user_features
from tasks.warehouse.loads import warehouse_tables

# Two users, three items; genres: 0 Action, 1 Drama. Item 1 Action, item 2 Drama, item 3 both.
RATINGS = pl.DataFrame(
    {"user_id": [1, 1, 1, 2], "item_id": [1, 2, 3, 1], "rating": [5, 3, 4, 1]},
    schema={"user_id": pl.Int32, "item_id": pl.Int32, "rating": pl.Int8},
)
ITEMS = pl.DataFrame(
    {"item_id": [1, 2, 3, 4], "release_year": [1995, 1996, None, 1990]},
    schema={"item_id": pl.Int32, "release_year": pl.Int16},
)
ITEM_GENRES = pl.DataFrame(
    {"item_id": [1, 2, 3, 3], "genre_id": [0, 1, 0, 1]},
    schema={"item_id": pl.Int32, "genre_id": pl.Int16},
)
GENRES = pl.DataFrame(
    {"genre_id": [0, 1], "name": ["Action", "Drama"]},
    schema={"genre_id": pl.Int16, "name": pl.String},
)
USERS = pl.DataFrame(
    {
        "user_id": [1, 2, 3],
        "age": [30, 40, 50],
        "gender": ["F", "M", "F"],
        "occupation": ["writer", "doctor", "none"],
    },
    schema={"user_id": pl.Int32, "age": pl.Int16, "gender": pl.String, "occupation": pl.String},
)


def test_item_features_by_hand() -> None:
    features = item_features(RATINGS, ITEMS, ITEM_GENRES, GENRES, damping=2.0).sort("item_id")

    # global mean 13/4 = 3.25; item 1: (5 + 1 + 2 * 3.25) / (2 + 2) = 3.125
    assert features["rating_count"].to_list() == [2, 1, 1, 0]
    assert features["rating_mean"].to_list() == [3.0, 3.0, 4.0, None]
    assert features["damped_mean"].to_list() == pytest.approx([3.125, 9.5 / 3, 10.5 / 3, 3.25])
    assert features["genre_action"].to_list() == [1, 0, 1, 0]
    assert features["genre_drama"].to_list() == [0, 1, 1, 0]
    assert features["popularity_rank"][0] == 1 and features["popularity_rank"][3] == 4


def test_user_features_by_hand() -> None:
    features = user_features(RATINGS, USERS, ITEM_GENRES, GENRES, damping=1.0).sort("user_id")

    # user 1: mean 4, std of (5, 3, 4) = 1; Action ratings 5 and 4: (9 + 1 * 4) / 3;
    # Drama ratings 3 and 4: (7 + 4) / 3
    assert features["rating_count"].to_list() == [3, 1, 0]
    assert features["rating_mean"].to_list()[:2] == [4.0, 1.0]
    assert features["rating_std"].to_list()[:2] == pytest.approx([1.0, 0.0])
    assert features["affinity_action"][0] == pytest.approx(13 / 3)
    assert features["affinity_drama"][0] == pytest.approx(11 / 3)
    assert features["favourite_genre"].to_list() == ["Action", "Action", None]
    assert features["affinity_drama"][1] == pytest.approx(1.0)  # no Drama: the user's mean
    assert features.row(2, named=True)["affinity_action"] is None  # no ratings: no profile


def test_a_user_without_ratings_has_no_genre_profile_in_the_warehouse() -> None:
    ratings = RATINGS.with_columns(pl.lit(874965758).alias("timestamp"))
    curated = {
        "genres": GENRES,
        "occupations": USERS.select(pl.col("occupation").alias("name")),
        "users": USERS,
        "items": ITEMS,
        "item_genres": ITEM_GENRES,
        "ratings": ratings,
        "folds": ratings.select("user_id", "item_id", pl.lit(1, pl.Int8).alias("test_fold")),
    }
    items = item_features(RATINGS, ITEMS, ITEM_GENRES, GENRES)
    users = user_features(RATINGS, USERS, ITEM_GENRES, GENRES, damping=1.0)

    shaped = warehouse_tables(curated, items, users)["features.user_features"].sort("user_id")

    profiles = shaped["genre_affinity"].to_list()
    assert profiles[0] == pytest.approx([13 / 3, 11 / 3])
    assert profiles[2] is None


def test_features_of_a_training_fold_ignore_other_ratings() -> None:
    train = RATINGS.filter(pl.col("user_id") == 1)

    features = item_features(train, ITEMS, ITEM_GENRES, GENRES).sort("item_id")

    assert features["rating_count"].to_list() == [1, 1, 1, 0]


@pytest.mark.parametrize(
    ("name", "slug"),
    [("Children's", "childrens"), ("Sci-Fi", "sci_fi"), ("(no genres listed)", "no_genres_listed")],
)
def test_genre_slugs(name: str, slug: str) -> None:
    assert genre_slug(name) == slug
