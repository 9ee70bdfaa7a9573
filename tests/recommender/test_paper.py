"""The paper configuration: genre clusters, cluster-mean profiles, Pearson user KNN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recommender import PaperKNN, Ratings


def test_profiles_and_prediction_by_hand(tiny: Ratings) -> None:
    # Items 10, 20 are Action, 30, 40 Drama: two clusters by construction.
    items = pd.DataFrame(
        {"item_id": [10, 20, 30, 40], "Action": [1, 1, 0, 0], "Drama": [0, 0, 1, 1]}
    )
    model = PaperKNN(n_clusters=2, n_neighbors=2).fit(tiny, items=items)
    action = model.item_labels_[0]
    assert model.item_labels_.tolist() == [action, action, 1 - action, 1 - action]
    # User 1: Action mean (5 + 3) / 2 = 4, Drama mean 4; user 2: Action 3, Drama 5.
    profiles = model.profiles_[:, [action, 1 - action]]
    assert profiles[:2].tolist() == [[4.0, 4.0], [3.0, 5.0]]
    # User 3 rated 30, 40 and 20: Action 4, Drama 3; user 4: Action 1, Drama 3.
    # Pearson over two clusters is +1 or -1: users 2 and 4 both prefer Drama (+1),
    # user 3 prefers Action (-1). User 2's prediction for item 30 = user 4's rating (2).
    assert model.similarity_[1, 3] == pytest.approx(1.0)
    assert model.similarity_[1, 2] == pytest.approx(-1.0)
    assert model.predict([2], [30])[0] == pytest.approx(2.0)


def test_paper_model_needs_genres(tiny: Ratings) -> None:
    with pytest.raises(ValueError, match="genre"):
        PaperKNN().fit(tiny)


def test_elbow_picks_the_cluster_count(synthetic_folds: list) -> None:
    model = PaperKNN(max_clusters=8).fit(synthetic_folds[0].train)
    assert 1 <= model.n_clusters_ <= 8
    assert len(model.inertias_) == 8 and np.all(np.diff(model.inertias_) <= 1e-9)
