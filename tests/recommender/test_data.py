"""Ratings construction, id maps, genres and the official folds loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from recommender import GENRES, Ratings, load_items, load_official_folds, load_users


def test_from_frame_builds_sorted_id_maps(tiny: Ratings) -> None:
    assert tiny.user_ids.tolist() == [1, 2, 3, 4]
    assert tiny.item_ids.tolist() == [10, 20, 30, 40]
    assert (tiny.n_users, tiny.n_items, len(tiny)) == (4, 4, 12)
    dense = tiny.matrix.toarray()
    assert dense[0].tolist() == [5.0, 3.0, 4.0, 0.0]
    assert dense[:, 3].tolist() == [0.0, 5.0, 1.0, 4.0]


def test_pandas_and_polars_give_the_same_ratings(tiny_frame: pl.DataFrame) -> None:
    from_pandas = Ratings.from_frame(tiny_frame.to_pandas())
    from_polars = Ratings.from_frame(tiny_frame)
    assert (from_pandas.matrix != from_polars.matrix).nnz == 0


def test_datetime_timestamps_become_unix_seconds(tiny_frame: pl.DataFrame) -> None:
    seconds = pl.Series("timestamp", [883_612_800 + 60 * n for n in range(len(tiny_frame))])
    with_seconds = tiny_frame.with_columns(seconds)
    with_datetimes = tiny_frame.with_columns(pl.from_epoch(seconds, time_unit="s"))
    expected = Ratings.from_frame(with_seconds).timestamps
    assert Ratings.from_frame(with_datetimes).timestamps.tolist() == expected.tolist()
    from_pandas = Ratings.from_frame(with_datetimes.to_pandas())
    assert from_pandas.timestamps.tolist() == expected.tolist()


def test_unknown_ids_map_to_minus_one(tiny: Ratings) -> None:
    assert tiny.user_positions([4, 99, 1]).tolist() == [3, -1, 0]
    assert tiny.item_positions([5, 40]).tolist() == [-1, 3]


def test_repeated_pair_keeps_the_last_rating() -> None:
    ratings = Ratings.from_arrays([1, 1, 2], [7, 7, 7], [2.0, 4.0, 3.0])
    assert len(ratings) == 2
    assert ratings.matrix.toarray()[:, 0].tolist() == [4.0, 3.0]


def test_nan_ratings_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Ratings.from_arrays([1], [2], [np.nan])


def test_genres_align_with_item_ids(tiny_frame: pl.DataFrame) -> None:
    items = pd.DataFrame({"item_id": [40, 10, 99], "Action": [1, 0, 1], "Drama": [0, 1, 1]})
    ratings = Ratings.from_frame(tiny_frame, items=items)
    assert ratings.genre_names == ("Action", "Drama")
    assert ratings.genres is not None
    # Items 10, 20, 30, 40: 20 and 30 have no row, so no genre.
    assert ratings.genres.tolist() == [[0, 1], [0, 0], [0, 0], [1, 0]]


def test_subset_keeps_the_id_maps(tiny: Ratings) -> None:
    part = tiny.subset(tiny.values >= 4)
    assert part.user_ids.tolist() == tiny.user_ids.tolist()
    assert len(part) == 7  # the 4s and 5s
    assert part.matrix.shape == (4, 4)


def test_to_dict_round_trips(tiny: Ratings) -> None:
    again = Ratings.from_frame(pl.DataFrame(tiny.to_dict()))
    assert (again.matrix != tiny.matrix).nnz == 0


@pytest.mark.realdata
def test_official_folds_are_80k_20k_with_genres(ml100k_dir: Path) -> None:
    folds = load_official_folds(ml100k_dir)
    assert [fold.name for fold in folds] == ["u1", "u2", "u3", "u4", "u5"]
    for fold in folds:
        assert (len(fold.train), len(fold.test)) == (80_000, 20_000)
        assert fold.train.genres is not None and fold.train.genres.shape[1] == len(GENRES)
    items, users = load_items(ml100k_dir), load_users(ml100k_dir)
    assert len(items["item_id"]) == 1682 and items["title"][0] == "Toy Story (1995)"
    assert len(users["user_id"]) == 943 and users["gender"][0] == "M"
