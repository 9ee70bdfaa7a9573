"""The implicit-feedback ranking scorer."""

from __future__ import annotations

import numpy as np
import pytest

from recommender import ImplicitKNN, Ratings, clear_component_cache, component_cache_info
from tests.recommender.conftest import synthetic_frames


def test_user_similarity_by_hand(tiny: Ratings) -> None:
    model = ImplicitKNN(sharpen=1.0, item_weight=0.0).fit(tiny)
    # Users 1 {10,20,30} and 2 {10,20,40} share 2 items: cosine 2 / (sqrt(3) sqrt(3)).
    assert model.similarity_[0, 1] == pytest.approx(2 / 3)
    sharpened = ImplicitKNN(sharpen=2.0, item_weight=0.0).fit(tiny)
    assert sharpened.similarity_[0, 1] == pytest.approx(4 / 9)


def test_user_knn_scores_by_hand(tiny: Ratings) -> None:
    model = ImplicitKNN(sharpen=1.0, item_weight=0.0, n_neighbors=1).fit(tiny)
    # User 1's nearest neighbours all share 2 of 3 items (2/3); ties keep one of them,
    # whose unseen item is the only one user 1 has not rated: item 40.
    assert model.recommend(1, n=1)[0][0] == 40
    scores = model._score_users(np.array([0]))
    assert scores.max() == pytest.approx(1.0)  # scaled per user


def test_ease_weights_have_zero_diagonal(tiny: Ratings) -> None:
    model = ImplicitKNN(item_weight=1.0, item_l2=1.0).fit(tiny)
    assert model.item_weights_ is not None
    assert np.diag(model.item_weights_).tolist() == [0.0] * 4


def test_a_few_users_score_alone_and_as_many_as_every_users_scores() -> None:
    frame, _ = synthetic_frames(n_users=40, n_items=60)
    model = ImplicitKNN(n_neighbors=5).fit(Ratings.from_frame(frame))
    clear_component_cache()

    one = model._score_users(np.array([3]))  # a served request: this user's scores only
    entries = component_cache_info().entries
    many = model._score_users(np.arange(12))  # a quarter of the users or more: every user's

    assert entries == 0  # a served request holds nothing
    assert component_cache_info().entries == 1
    np.testing.assert_allclose(one[0], many[3], rtol=1e-6, atol=1e-7)
