"""bench/models.py's per-user splits (at random, or each user's latest ratings by time), its
profile of a fit and its speed against accuracy frontier."""

from __future__ import annotations

import numpy as np
import pytest

from bench.models import LIGHTER, PROFILE_STAGES, frontier_rows, profile_stages, stratified_split
from recommender import Fold, Ratings
from tests.recommender.conftest import synthetic_frames


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


def synthetic_fold() -> Fold:
    frame, _ = synthetic_frames()
    test_rows = np.random.default_rng(1).random(len(frame)) < 0.2
    return Fold("s1", Ratings.from_frame(frame[~test_rows]), Ratings.from_frame(frame[test_rows]))


def test_the_frontier_times_the_reference_and_every_variant_fold_by_fold() -> None:
    fold = synthetic_fold()
    timed: list[str] = []

    def reference(timed_fold: Fold) -> float:
        timed.append(timed_fold.name)
        return 2.5

    seconds, rows = frontier_rows([fold, fold], reference)
    assert seconds == [2.5, 2.5] and timed == ["s1", "s1"]
    assert list(rows) == [label for label, _ in LIGHTER]
    for values in rows.values():
        assert values.shape == (2, 5)
        assert (values[:, :2] > 0).all()  # fit and predict seconds
    defaults = rows["KMeansKNN() defaults"]
    # the blend predicts at the test ratings' times (its session offset) ...
    assert defaults[0, 2] != defaults[0, 3]
    # ... one part alone has no blend to carry an offset: with or without times, the same
    alone = rows["item KNN alone (one part: no blend, no offset)"]
    assert alone[0, 2] == alone[0, 3]
    # each variant is its own model; the ranking scorer (NDCG@10) is the same in all
    assert len({round(values[0, 3], 12) for values in rows.values()}) == len(LIGHTER)
    assert len({round(values[0, 4], 12) for values in rows.values()}) == 1


def test_the_profile_splits_a_fit_into_stages_that_add_up() -> None:
    rows = dict(profile_stages([synthetic_fold()]))
    whole = rows.pop("fit + predict")
    assert set(rows) == {label for label, _, _ in PROFILE_STAGES} | {
        "the rest (biases, lists, blend, glue)"
    }
    stages = [rows[label] for label, _, _ in PROFILE_STAGES]
    assert min(stages) > 0  # each stage runs in a default fit and its timed predictions
    # no stage calls another (their seconds would count twice): together they take less
    # than the whole fit and predict
    assert sum(stages) < whole
    assert rows["the rest (biases, lists, blend, glue)"] == pytest.approx(whole - sum(stages))
    # the stages are timed only inside the call: the functions are unwrapped again after it
    assert not any(
        hasattr(getattr(owner, name), "__wrapped__") for _, owner, name in PROFILE_STAGES
    )
