"""The fast ml-25m-shaped sampler of bench/synth.py: seeded, unique pairs, MovieLens's floor
of 20 ratings a user, its stars, and ratings a model of user x item interactions can learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from bench.synth import (
    HALF_STAR_SHARES,
    SyntheticSize,
    structured_ratings,
    write_scaled_csv,
)
from tasks.movielens.catalog import movielens_set
from tasks.movielens.folds import FoldRule
from tasks.movielens.formats import curate_files

SIZE = SyntheticSize(ratings=24_000, users=300, items=200)
HALF_STARS = [0.5 * k for k in range(1, 11)]


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def test_same_seed_same_frame_other_seed_other_frame() -> None:
    first = structured_ratings(SIZE, seed=4)

    assert first.equals(structured_ratings(SIZE, seed=4))
    assert not first.equals(structured_ratings(SIZE, seed=5))


def test_pairs_are_unique_and_sorted_by_user_then_item() -> None:
    ratings = structured_ratings(SIZE, seed=1)

    assert ratings.height == SIZE.ratings
    assert ratings.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    assert ratings.equals(ratings.sort("user_id", "item_id"))


def test_every_user_rates_at_least_twenty_items() -> None:
    ratings = structured_ratings(SIZE, seed=2)

    counts = ratings.group_by("user_id").len()
    assert counts.height == SIZE.users
    assert counts["len"].min() >= 20


def test_a_user_rates_at_most_half_the_items_when_few_items_allow_little() -> None:
    ratings = structured_ratings(SyntheticSize(ratings=5_000, users=40, items=30), seed=3)

    counts = ratings.group_by("user_id").len()["len"]
    assert ratings.height == 40 * 15  # capped: 15 items each
    assert counts.min() == counts.max() == 15


def test_stars_are_half_stars_in_ml25m_shares() -> None:
    ratings = structured_ratings(SyntheticSize.like_ml25m(200_000), seed=0)

    shares = ratings["rating"].value_counts(normalize=True).sort("rating")
    assert ratings["rating"].dtype == pl.Float32
    assert shares["rating"].to_list() == HALF_STARS
    expected = np.asarray(HALF_STAR_SHARES) / sum(HALF_STAR_SHARES)
    np.testing.assert_allclose(shares["proportion"].to_numpy(), expected, atol=1e-3)


def test_whole_stars_without_half_stars() -> None:
    ratings = structured_ratings(SIZE, seed=0, half_stars=False)

    assert ratings["rating"].dtype == pl.Int8
    assert sorted(ratings["rating"].unique().to_list()) == [1, 2, 3, 4, 5]


def test_like_ml25m_scales_users_linearly_and_items_sublinearly() -> None:
    full = SyntheticSize.like_ml25m(25_000_095)
    tenth = SyntheticSize.like_ml25m(2_500_010)

    assert (full.users, full.items) == (162_541, 59_047)
    assert tenth.users == 16_254
    assert 0.2 < tenth.items / full.items < 0.3  # 10 ** -0.6 = 0.25


def test_ratings_carry_interactions_a_low_rank_model_learns() -> None:
    ratings = structured_ratings(SIZE, seed=0)
    users = ratings["user_id"].to_numpy() - 1
    items = ratings["item_id"].to_numpy() - 1
    stars = ratings["rating"].to_numpy().astype(np.float64)
    test = np.random.default_rng(9).random(len(stars)) < 0.2
    train = ~test

    mean = stars[train].mean()
    item_bias = np.bincount(items[train], stars[train] - mean, SIZE.items) / (
        np.bincount(items[train], minlength=SIZE.items) + 5
    )
    user_residual = stars[train] - mean - item_bias[items[train]]
    user_bias = np.bincount(users[train], user_residual, SIZE.users) / (
        np.bincount(users[train], minlength=SIZE.users) + 5
    )
    biases = mean + user_bias[users] + item_bias[items]
    residuals = np.zeros((SIZE.users, SIZE.items))
    residuals[users[train], items[train]] = (stars - biases)[train]
    left, singular, right = np.linalg.svd(residuals, full_matrices=False)
    low_rank = (left[:, :8] * singular[:8]) @ right[:8]

    global_rmse = rmse(np.full(test.sum(), mean), stars[test])
    bias_rmse = rmse(biases[test], stars[test])
    low_rank_rmse = rmse((biases + low_rank[users, items])[test], stars[test])
    assert bias_rmse < 0.9 * global_rmse
    assert low_rank_rmse < 0.97 * bias_rmse


def test_scaled_csv_folder_parses_without_rejects(tmp_path: Path) -> None:
    size = SyntheticSize.like_ml25m(20_000)
    folder = write_scaled_csv(tmp_path / "ml-25m", size, seed=0)

    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    curated = curate_files(movielens_set("ml-25m"), files, FoldRule("random", 0))
    assert sorted(files) == ["movies.csv", "ratings.csv"]
    assert curated.rejects.height == 0
    assert curated.ratings.height == size.ratings
    assert curated.items.height == size.items
