"""bench/models.py's per-user splits: at random, or each user's latest ratings by time."""

from __future__ import annotations

import numpy as np

from bench.models import stratified_split
from recommender import Ratings


def ratings(seed: int = 0) -> Ratings:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, 21), 12)
    items = np.concatenate([rng.choice(50, 12, replace=False) + 1 for _ in range(20)])
    times = rng.permutation(len(users)) * 60
    return Ratings.from_arrays(users, items, rng.integers(1, 6, len(users)), times)


def test_a_split_by_time_tests_each_users_latest_quarter() -> None:
    train, test = stratified_split(ratings(), 0.25, by_time=True)
    assert (len(train), len(test)) == (180, 60)
    for user in range(1, 21):
        trained = train.timestamps[train.raw_users() == user]
        tested = test.timestamps[test.raw_users() == user]
        assert len(tested) == 3 and tested.min() > trained.max()


def test_a_random_split_keeps_each_users_share_and_timestamps() -> None:
    train, test = stratified_split(ratings(), 0.25, seed=3)
    assert np.bincount(test.raw_users()).tolist()[1:] == [3] * 20
    assert test.timestamps is not None and train.timestamps is not None
    later = [
        test.timestamps[test.raw_users() == u].min()
        > train.timestamps[train.raw_users() == u].max()
        for u in range(1, 21)
    ]
    assert not all(later)
