"""The contract every model kind passes: fit returns self, unfitted use raises, predictions
are finite and in 1..5 even for unknown ids, recommend excludes rated items."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from recommender import MODELS, Fold, ModelNotFittedError, build_model, make_config

# Small, fast settings per kind so the contract runs in a second.
FAST = {
    "forest": {"n_estimators": 5, "n_jobs": 1},
    "paper": {"max_clusters": 6},
    "kmeans_knn": {"n_factors": 4, "n_clusters": 2},
    "implicit_knn": {"n_neighbors": 5, "n_clusters": 2},
}


@pytest.fixture(params=sorted(MODELS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_fit_returns_self_and_exposes_config(kind: str, synthetic_folds: list[Fold]) -> None:
    model = build_model(kind, **FAST.get(kind, {}))
    assert model.config == make_config(kind, **FAST.get(kind, {}))
    assert model.fit(synthetic_folds[0].train) is model
    assert model.is_fitted


def test_unfitted_model_raises(kind: str) -> None:
    model = build_model(kind)
    with pytest.raises(ModelNotFittedError, match="not fitted"):
        model.predict([1], [101])
    with pytest.raises(NotFittedError):
        model.recommend(1)


def test_predictions_are_finite_and_in_range(kind: str, synthetic_folds: list[Fold]) -> None:
    fold = synthetic_folds[0]
    model = build_model(kind, **FAST.get(kind, {})).fit(fold.train)
    users = np.concatenate([fold.test.raw_users(), [999, 1, 999]])
    items = np.concatenate([fold.test.raw_items(), [101, 9999, 9999]])
    predicted = model.predict(users, items)
    assert predicted.shape == users.shape
    assert np.isfinite(predicted).all()
    assert predicted.min() >= 1.0 and predicted.max() <= 5.0


def test_recommend_excludes_rated_items_sorted(kind: str, synthetic_folds: list[Fold]) -> None:
    train = synthetic_folds[0].train
    model = build_model(kind, **FAST.get(kind, {})).fit(train)
    for user_id in (1, 7, 23):
        recommended = model.recommend(user_id, n=5)
        assert len(recommended) == 5
        rated = set(train.raw_items()[train.raw_users() == user_id].tolist())
        items = [item for item, _ in recommended]
        assert not rated & set(items)
        assert len(set(items)) == 5
        scores = [score for _, score in recommended]
        assert scores == sorted(scores, reverse=True)
    assert len(model.recommend(424242, n=3)) == 3  # unknown user: the baseline's best items


def test_fit_accepts_frames_and_is_deterministic(kind: str, synthetic_folds: list[Fold]) -> None:
    train = synthetic_folds[1].train
    frame = train.to_dict()
    first = build_model(kind, **FAST.get(kind, {})).fit(frame, items=_items(train))
    second = build_model(kind, **FAST.get(kind, {})).fit(train)
    users, items = train.raw_users()[:50], train.raw_items()[::-1][:50]
    assert first.predict(users, items) == pytest.approx(second.predict(users, items))
    assert first.recommend(3) == second.recommend(3)


def _items(train: object) -> dict[str, np.ndarray]:
    genres = train.genres  # type: ignore[attr-defined]
    names = train.genre_names  # type: ignore[attr-defined]
    columns = {"item_id": train.item_ids}  # type: ignore[attr-defined]
    columns.update({name: genres[:, g] for g, name in enumerate(names)})
    return columns


def test_the_lazy_error_class_is_listed_like_the_rest() -> None:
    import recommender

    assert "ModelNotFittedError" in dir(recommender)
    assert set(recommender.__all__) <= set(dir(recommender))
