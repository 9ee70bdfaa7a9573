"""Random Forest features from the training fold only, with named importances."""

from __future__ import annotations

import pytest

from recommender import RandomForestRatings, Ratings


def test_feature_importances_are_named(synthetic_folds: list) -> None:
    users = {"user_id": list(range(1, 41)), "age": [20 + u for u in range(40)],
             "gender": ["F", "M"] * 20, "occupation": ["a", "b", "c", "d"] * 10}  # fmt: skip
    model = RandomForestRatings(n_estimators=10, n_jobs=1).fit(
        synthetic_folds[0].train, users=users
    )
    names = [name for name, _ in model.feature_importances_]
    assert {"user_mean", "item_bias", "genre_Drama", "user_age", "user_genre_taste"} <= set(names)
    assert sum(value for _, value in model.feature_importances_) == pytest.approx(1.0)
    values = [value for _, value in model.feature_importances_]
    assert values == sorted(values, reverse=True)


@pytest.mark.filterwarnings("ignore:Using the fractional value")
def test_training_means_leave_the_own_rating_out(tiny: Ratings) -> None:
    model = RandomForestRatings(n_estimators=2, n_jobs=1).fit(tiny)
    design = model.features_.design(tiny.user_index[:1], tiny.item_index[:1], tiny.values[:1])
    # User 1 rated 5, 3, 4: without the 5 the mean is 3.5 (column 1 is user_mean).
    assert design[0, 1] == pytest.approx(3.5)
    served = model.features_.design(tiny.user_index[:1], tiny.item_index[:1], None)
    assert served[0, 1] == pytest.approx(4.0)


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_demographics_that_are_all_missing_are_left_out(synthetic_folds: list) -> None:
    # ml-10m and the CSV sets publish no demographics: the users frame has only nulls there
    users = {"user_id": list(range(1, 41)), "age": [None] * 40,
             "gender": [None] * 40, "occupation": [None, "a"] * 20}  # fmt: skip
    model = RandomForestRatings(n_estimators=5, n_jobs=1).fit(synthetic_folds[0].train, users=users)

    names = {name for name, _ in model.feature_importances_}
    assert "user_occupation" in names
    assert not {"user_age", "user_gender"} & names
