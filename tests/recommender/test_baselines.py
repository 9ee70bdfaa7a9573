"""Global mean and damped biases, checked by hand on the tiny ratings."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recommender import BiasBaseline, GlobalMean, Ratings, fit_biases

MEAN = 40 / 12  # 5+3+4 + 4+2+5 + 4+5+1 + 1+2+4


def test_global_mean_predicts_the_mean(tiny: Ratings) -> None:
    model = GlobalMean().fit(tiny)
    assert model.predict([1, 99], [20, 10]).tolist() == pytest.approx([MEAN, MEAN])


def test_undamped_biases_by_hand(tiny: Ratings) -> None:
    biases = fit_biases(tiny, user_damping=0.0, item_damping=0.0, n_iterations=1)
    # Items first: the mean residual of each item's ratings.
    item_10 = (5 + 4 + 1) / 3 - MEAN
    item_20 = (3 + 2 + 4) / 3 - MEAN
    item_30 = (4 + 5 + 2) / 3 - MEAN
    assert biases.item_bias[:3] == pytest.approx([item_10, item_20, item_30])
    # Then user 1: mean of rating - mean - item bias over items 10, 20, 30.
    user_1 = ((5 - MEAN - item_10) + (3 - MEAN - item_20) + (4 - MEAN - item_30)) / 3
    assert biases.user_bias[0] == pytest.approx(user_1)


def test_damping_shrinks_biases(tiny: Ratings) -> None:
    loose = fit_biases(tiny, 0.0, 0.0, 1)
    damped = fit_biases(tiny, 0.0, 3.0, 1)
    # With damping d the sum is divided by (count + d) instead of count (3 ratings each).
    assert damped.item_bias[0] == pytest.approx(loose.item_bias[0] * 3 / 6)


def test_bias_model_falls_back_for_unknown_ids(tiny: Ratings) -> None:
    model = BiasBaseline(user_damping=0.0, item_damping=0.0).fit(tiny)
    known = model.predict([1], [10])[0]
    biases = model.biases_
    assert known == pytest.approx(biases.mean + biases.user_bias[0] + biases.item_bias[0])
    unknown_user = model.predict([999], [10])[0]
    assert unknown_user == pytest.approx(biases.mean + biases.item_bias[0])
    both_unknown = model.predict([999], [999])[0]
    assert both_unknown == pytest.approx(MEAN)


def test_predictions_are_clipped(tiny: Ratings) -> None:
    model = BiasBaseline(user_damping=0.0, item_damping=0.0).fit(tiny)
    everything = model.predict(np.repeat([1, 2, 3, 4], 4), np.tile([10, 20, 30, 40], 4))
    assert everything.min() >= 1.0 and everything.max() <= 5.0


def test_half_star_ratings_are_clipped_at_half_a_star() -> None:
    # user 1 rates everything 0.5 and item 10 is rated 0.5 by all: undamped, the bias model
    # predicts below 0.5 for (1, 10) = mean + user bias + item bias, clipped to 0.5 not 1.
    frame = {"user_id": [1, 1, 2, 2, 3, 3], "item_id": [10, 20, 10, 20, 10, 20],
             "rating": [0.5, 0.5, 0.5, 5.0, 0.5, 4.5]}  # fmt: skip
    half = Ratings.from_frame(pl.DataFrame(frame))
    model = BiasBaseline(user_damping=0.0, item_damping=0.0).fit(half)

    lowest = model.predict([1], [10])[0]

    assert model.rating_range_ == (0.5, 5.0)
    assert lowest == pytest.approx(0.5)
    assert BiasBaseline().fit(Ratings.from_frame(pl.DataFrame(
        {"user_id": [1, 2], "item_id": [1, 1], "rating": [2.0, 3.0]}
    ))).rating_range_ == (1.0, 5.0)  # fmt: skip
