"""Fixtures of the recommender tests: a hand-checkable ratings frame, a synthetic data set,
and the real official folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from recommender import GENRES, Fold, Ratings, load_official_folds

# 4 users x 4 items, 12 ratings: small enough to check every number by hand.
TINY_ROWS = [
    (1, 10, 5.0), (1, 20, 3.0), (1, 30, 4.0),
    (2, 10, 4.0), (2, 20, 2.0), (2, 40, 5.0),
    (3, 20, 4.0), (3, 30, 5.0), (3, 40, 1.0),
    (4, 10, 1.0), (4, 30, 2.0), (4, 40, 4.0),
]  # fmt: skip


@pytest.fixture
def tiny_frame() -> pl.DataFrame:
    users, items, ratings = zip(*TINY_ROWS, strict=True)
    return pl.DataFrame({"user_id": users, "item_id": items, "rating": ratings})


@pytest.fixture
def tiny(tiny_frame: pl.DataFrame) -> Ratings:
    return Ratings.from_frame(tiny_frame)


def synthetic_frames(seed: int = 0, n_users: int = 40, n_items: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Random ratings with a little structure, plus an items frame of genre flags."""
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(n_users, 3))
    style = rng.normal(size=(n_items, 3))
    rated = rng.random((n_users, n_items)) < 0.3
    users, items = np.nonzero(rated)
    score = 3.2 + (taste[users] * style[items]).sum(axis=1) + rng.normal(0, 0.5, len(users))
    ratings = pd.DataFrame(
        {
            "user_id": users + 1,
            "item_id": items + 101,
            "rating": np.clip(np.round(score), 1, 5),
            "timestamp": rng.integers(0, 10**6, len(users)),
        }
    )
    flags = (rng.random((n_items, len(GENRES))) < 0.2).astype(int)
    genres = pd.DataFrame(flags, columns=list(GENRES))
    genres.insert(0, "item_id", np.arange(n_items) + 101)
    return ratings, genres


@pytest.fixture(scope="session")
def synthetic_folds() -> list[Fold]:
    """Two random 80/20 folds of the synthetic data, training sides carrying genres."""
    frame, genres = synthetic_frames()
    rng = np.random.default_rng(1)
    folds = []
    for name in ("s1", "s2"):
        test_rows = rng.random(len(frame)) < 0.2
        train = Ratings.from_frame(frame[~test_rows], items=genres)
        folds.append(Fold(name, train, Ratings.from_frame(frame[test_rows])))
    return folds


@pytest.fixture(scope="session")
def official_folds(ml100k_dir: Path) -> list[Fold]:
    return load_official_folds(ml100k_dir)
