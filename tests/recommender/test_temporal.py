"""The session offset (recommender.temporal): hand-checked offsets and what it does to a model."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from recommender import Fold, KMeansKNN, KMeansKNNConfig, Ratings, rmse
from recommender.temporal import SESSION_PRIOR, SESSION_WINDOW, Sessions, as_seconds

SECONDS = 120.0


def sessions(
    users: list[int], times: list[int], residuals: list[float], n_users: int = 2
) -> tuple[Sessions, np.ndarray]:
    return Sessions.fit(np.array(users), np.array(times), np.array(residuals), n_users, SECONDS)


def damped(pairs: list[tuple[float, float]]) -> float:
    """The offset by hand: sum of exp(-gap/120) * residual over (sum of weights + prior)."""
    weights = [math.exp(-gap / SECONDS) for gap, _ in pairs]
    total = sum(w * r for w, (_, r) in zip(weights, pairs, strict=True))
    return total / (sum(weights) + SESSION_PRIOR)


def test_an_offset_is_the_damped_time_weighted_mean_residual_of_the_users_ratings() -> None:
    # user 0 rated at 0 s, 60 s and 10,000 s (out of order); user 1 once, at 30 s
    found, _ = sessions([0, 0, 0, 1], [10_000, 0, 60, 30], [-2.0, 1.0, 0.5, 4.0])
    offsets = found.offsets(np.array([0, 0, 1]), np.array([30, 20_000, 30]))
    assert offsets[0] == pytest.approx(damped([(30, 1.0), (30, 0.5), (9_970, -2.0)]))
    assert offsets[1] == pytest.approx(damped([(20_000, 1.0), (19_940, 0.5), (10_000, -2.0)]))
    assert abs(offsets[1]) < 1e-30  # long after the user's last rating: no offset
    assert offsets[2] == pytest.approx(damped([(0, 4.0)]))  # never another user's ratings


def test_a_training_ratings_offset_leaves_the_rating_itself_out() -> None:
    found, positions = sessions([0, 0, 0, 1], [10_000, 0, 60, 30], [-2.0, 1.0, 0.5, 4.0])
    # the rating at 60 s: its neighbours are the ones at 0 s and 10,000 s only
    offset = found.offsets(np.array([0]), positions=positions[[2]])
    assert offset[0] == pytest.approx(damped([(60, 1.0), (9_940, -2.0)]))
    alone = found.offsets(np.array([1]), positions=positions[[3]])
    assert alone[0] == 0.0  # user 1's only rating has no other


def test_an_offset_reads_the_window_of_ratings_either_side() -> None:
    n = 3 * SESSION_WINDOW
    residuals = [1.0] * SESSION_WINDOW + [0.0] * (n - SESSION_WINDOW)
    found, _ = sessions([0] * n, list(range(n)), residuals, n_users=1)
    # at the last second every one of the SESSION_WINDOW ratings before it is 0
    assert found.offsets(np.array([0]), np.array([n]))[0] == 0.0
    assert found.offsets(np.array([0]), np.array([0]))[0] > 0.0


def test_users_without_ratings_and_empty_queries_get_no_offset() -> None:
    found, _ = sessions([0], [100], [1.0], n_users=2)
    assert found.offsets(np.array([1]), np.array([100]))[0] == 0.0
    assert found.offsets(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).shape == (0,)


def test_times_may_be_datetimes() -> None:
    stamps = np.array(["1998-01-01T00:00:00", "1998-01-01T00:02:00"], dtype="datetime64[s]")
    assert as_seconds(stamps).tolist() == [883612800, 883612920]
    assert as_seconds(stamps.astype("datetime64[ns]")).tolist() == [883612800, 883612920]


def session_data(seed: int = 0) -> tuple[Fold, np.ndarray]:
    """Ratings of 60 users x 80 items in sessions of 10 ratings a minute apart, each session
    with a mood (-1, 0 or +1 star) on top of taste; a random 20% is the test."""
    rng = np.random.default_rng(seed)
    taste, style = rng.normal(size=(60, 2)), rng.normal(size=(80, 2))
    users, items, times, values = [], [], [], []
    for user in range(60):
        rated = rng.choice(80, 40, replace=False)
        for session in range(4):
            mood = rng.choice([-1.0, 0.0, 1.0])
            start = 10**6 * (session + 1) + user * 10**4
            for step, item in enumerate(rated[session * 10 : (session + 1) * 10]):
                score = 3.0 + taste[user] @ style[item] + mood + rng.normal(0, 0.3)
                users.append(user + 1)
                items.append(item + 1)
                times.append(start + 60 * step)
                values.append(float(np.clip(np.round(score), 1, 5)))
    ratings = Ratings.from_arrays(users, items, values, times)
    test = np.random.default_rng(seed + 1).random(len(ratings)) < 0.2
    return Fold("sessions", ratings.subset(~test), ratings.subset(test)), test


@pytest.mark.parametrize("blend_fit", ["loo", "holdout"])
def test_the_offset_finds_the_mood_of_a_session(blend_fit: str) -> None:
    fold, _ = session_data()
    model = KMeansKNN(blend_fit=blend_fit, n_factors=5).fit(fold.train)
    users, items = fold.test.raw_users(), fold.test.raw_items()
    blind = rmse(model.predict(users, items), fold.test.values)
    timed = rmse(model.predict(users, items, times=fold.test.timestamps), fold.test.values)
    assert model.session_weights_[model.config.n_neighbors] > 0.3
    assert timed < blind - 0.1, (timed, blind)


def test_without_times_predictions_are_those_of_a_model_without_the_offset() -> None:
    fold, _ = session_data()
    users, items = fold.test.raw_users(), fold.test.raw_items()
    model = KMeansKNN(n_factors=5).fit(fold.train)
    plain = KMeansKNN(n_factors=5, session_seconds=0).fit(fold.train)
    assert plain.sessions_ is None
    np.testing.assert_allclose(model.predict(users, items), plain.predict(users, items))
    # a query long after every rating: the offset has faded to nothing
    later = np.full(len(users), fold.train.timestamps.max() + 10**7)
    np.testing.assert_allclose(
        model.predict(users, items, times=later), plain.predict(users, items), atol=1e-9
    )


def test_a_model_fit_without_timestamps_ignores_times() -> None:
    fold, _ = session_data()
    train = Ratings.from_arrays(fold.train.raw_users(), fold.train.raw_items(), fold.train.values)
    model = KMeansKNN(n_factors=5).fit(train)
    users, items = fold.test.raw_users(), fold.test.raw_items()
    np.testing.assert_array_equal(
        model.predict(users, items, times=fold.test.timestamps), model.predict(users, items)
    )


def test_times_must_match_the_pairs() -> None:
    fold, _ = session_data()
    model = KMeansKNN(n_factors=5).fit(fold.train)
    with pytest.raises(ValueError, match="times must have one entry"):
        model.predict([1, 2], [1, 2], times=[0])


def test_every_neighbour_count_and_a_pickle_keep_the_offset() -> None:
    fold, _ = session_data()
    model = KMeansKNN(n_factors=5).fit(fold.train)
    users, items, times = fold.test.raw_users(), fold.test.raw_items(), fold.test.timestamps
    swept = model.predict_for_neighbors(users, items, [10, 40], times=times)
    for k in (10, 40):
        np.testing.assert_allclose(
            swept[k], model.predict(users, items, n_neighbors=k, times=times)
        )
    served = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(
        served.predict(users, items, times=times), model.predict(users, items, times=times)
    )


def test_a_model_pickled_before_the_offset_predicts_without_it() -> None:
    fold, _ = session_data()
    model = KMeansKNN(n_factors=5).fit(fold.train)
    state = model.__getstate__()
    del state["sessions_"], state["session_weights_"]
    old = KMeansKNN.__new__(KMeansKNN)
    old.__setstate__(state)
    users, items = fold.test.raw_users(), fold.test.raw_items()
    np.testing.assert_array_equal(
        old.predict(users, items, times=fold.test.timestamps), model.predict(users, items)
    )


def test_the_default_configuration_reads_sessions() -> None:
    assert KMeansKNNConfig().session_seconds == SECONDS
