"""The shared fit / predict / recommend interface of every model, with the bias fallback."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np

from recommender.bias import Biases, fit_biases
from recommender.config import ModelConfig, Param
from recommender.data import Ratings
from recommender.foldin import (
    COLD_START_POPULAR,
    FOLD_IN,
    FoldedUser,
    Strategy,
    folded_user_bias,
    known_ratings,
    top_unseen,
)
from recommender.temporal import as_seconds

MIN_RATING = 1.0
MAX_RATING = 5.0

ConfigT = TypeVar("ConfigT", bound=ModelConfig)


_NOT_FITTED: list[type[Exception]] = []
_NOT_FITTED_LOCK = threading.Lock()


def not_fitted_error() -> type[Exception]:
    """``ModelNotFittedError`` (a model was used before ``fit``), made once, on first use: it
    subclasses scikit-learn's ``NotFittedError``, so code that catches that catches it, and
    importing scikit-learn takes about a second that a process which never meets the error
    (``recsys train --help``, a fully cached run) should not pay."""
    with _NOT_FITTED_LOCK:  # one class, even when threads ask first together
        if not _NOT_FITTED:
            from sklearn.exceptions import NotFittedError

            doc = "A model was used before ``fit``."
            namespace = {"__doc__": doc, "__module__": __name__}
            _NOT_FITTED.append(type("ModelNotFittedError", (NotFittedError,), namespace))
        return _NOT_FITTED[0]


def __getattr__(name: str) -> Any:
    if name == "ModelNotFittedError":
        return not_fitted_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def as_ratings(ratings: Any, items: Any | None = None) -> Ratings:
    """Accept a :class:`Ratings` or a polars/pandas frame; attach item genres when given."""
    train = ratings if isinstance(ratings, Ratings) else Ratings.from_frame(ratings)
    return train if items is None else train.with_items(items)


class RecommenderModel(ABC, Generic[ConfigT]):
    """fit / predict / recommend on raw MovieLens ids, configured by one validated config.

    Subclasses implement ``_fit``, ``_predict_index`` (known user/item positions) and may
    override ``_score_users`` (ranking scores; default: the predicted ratings).
    """

    config_class: ClassVar[type[ModelConfig]]
    predicts_ratings: ClassVar[bool] = True
    """False for models that only rank (their RMSE is reported as NaN)."""

    # Damping of the shared fallback baseline; models with their own fields override it.
    fallback_damping: ClassVar[tuple[float, float]] = (5.0, 5.0)

    def __init__(self, config: ConfigT | None = None, **params: Any) -> None:
        if config is not None and params:
            raise TypeError("pass either a config or keyword hyper-parameters, not both")
        self.config: ConfigT = config if config is not None else self.config_class(**params)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def get_params(self) -> dict[str, Param]:
        """The flat hyper-parameters (same as ``config.as_params()``)."""
        return self.config.as_params()

    # -- fitting -------------------------------------------------------------------------

    def fit(self, ratings: Any, *, items: Any | None = None, users: Any | None = None) -> Self:
        """Learn from ``ratings`` (Ratings or frame). ``items``: ``item_id`` + genre flag
        columns (needed by the paper model, used by the forest); ``users``: ``user_id, age,
        gender, occupation`` (used by the forest). Both are data, not hyper-parameters."""
        train = as_ratings(ratings, items)
        if len(train) == 0:
            raise ValueError("cannot fit on zero ratings")
        self.ratings_ = train
        # the 1..5 stars, widened to half-star sets' 0.5 when the ratings hold one
        self.rating_range_ = (
            min(MIN_RATING, float(train.values.min())),
            max(MAX_RATING, float(train.values.max())),
        )
        user_damping, item_damping = self._damping()
        self.baseline_ = fit_biases(train, user_damping, item_damping)
        self._fit(train, users=users)
        return self

    def _damping(self) -> tuple[float, float]:
        return (
            float(getattr(self.config, "user_damping", self.fallback_damping[0])),
            float(getattr(self.config, "item_damping", self.fallback_damping[1])),
        )

    @abstractmethod
    def _fit(self, train: Ratings, *, users: Any | None) -> None: ...

    @property
    def ranking_depends_on_neighbors(self) -> bool:
        """Whether ``recommend`` changes with ``n_neighbors`` (re-ranked in a sweep)."""
        return False

    def _check_fitted(self) -> None:
        if not hasattr(self, "ratings_"):
            raise not_fitted_error()(
                f"{type(self).__name__} is not fitted yet; call fit(ratings) first"
            )

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "ratings_")

    # -- rating prediction ---------------------------------------------------------------

    def predict(
        self, user_ids: Any, item_ids: Any, *, n_neighbors: int | None = None,
        times: Any | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Predicted ratings for parallel arrays of raw ids, clipped to the rating scale (1..5,
        or 0.5..5 for half-star sets); unknown users or items get the bias baseline, never
        NaN. ``n_neighbors`` overrides the configured neighbour count after fitting
        (neighbourhood models reuse their similarities). ``times``: when each rating is made
        (Unix seconds or datetimes), for models with a time offset (``KMeansKNN``: how the
        user rated near then); None predicts without it."""
        users, items = self._positions(user_ids, item_ids)
        return self.predict_positions(users, items, n_neighbors, self._times(times, users))

    def _positions(self, user_ids: Any, item_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Row and column positions of raw ids in ``ratings_`` (-1 = unknown)."""
        self._check_fitted()
        users = self.ratings_.user_positions(np.atleast_1d(np.asarray(user_ids)))
        items = self.ratings_.item_positions(np.atleast_1d(np.asarray(item_ids)))
        if users.shape != items.shape:
            raise ValueError("user_ids and item_ids must have the same length")
        return users, items

    @staticmethod
    def _times(times: Any | None, users: np.ndarray) -> np.ndarray | None:
        if times is None:
            return None
        seconds = as_seconds(times)
        if seconds.shape != users.shape:
            raise ValueError("times must have one entry per (user_id, item_id) pair")
        return seconds

    def predict_for_neighbors(
        self, user_ids: Any, item_ids: Any, n_neighbors: Sequence[int], *,
        times: Any | None = None,
    ) -> dict[int, np.ndarray]:  # fmt: skip
        """``{k: predict(user_ids, item_ids, n_neighbors=k, times=times)}``; neighbourhood
        models compute all counts from one similarity matrix and one partial sort."""
        users, items = self._positions(user_ids, item_ids)
        return self.predict_positions_for_neighbors(
            users, items, n_neighbors, self._times(times, users)
        )

    def predict_positions(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None,
        times: np.ndarray | None = None,
    ) -> np.ndarray:  # fmt: skip
        """:meth:`predict` on row/column positions of ``ratings_`` (-1 = unknown)."""
        fallback = self.baseline_.predict(users, items)
        known = (users >= 0) & (items >= 0)
        predictions = fallback.copy()
        if known.any():
            predictions[known] = self._predict_index(users[known], items[known], n_neighbors)
            if times is not None:
                offsets = self._time_offsets(users[known], times[known], [n_neighbors])
                predictions[known] += offsets[n_neighbors]
        return self._finish(predictions, fallback)

    def predict_positions_for_neighbors(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: Sequence[int],
        times: np.ndarray | None = None,
    ) -> dict[int, np.ndarray]:  # fmt: skip
        """:meth:`predict_positions` at every count of ``n_neighbors``."""
        fallback = self.baseline_.predict(users, items)
        known = (users >= 0) & (items >= 0)
        counts = sorted({int(k) for k in n_neighbors})
        index = (
            self._predict_index_for_neighbors(users[known], items[known], counts)
            if known.any()
            else {}
        )
        offsets = (
            self._time_offsets(users[known], times[known], counts)
            if times is not None and known.any()
            else dict.fromkeys(counts, 0.0)
        )
        results = {}
        for k in counts:
            predictions = fallback.copy()
            if known.any():
                predictions[known] = index[k] + offsets[k]
            results[k] = self._finish(predictions, fallback)
        return results

    def _time_offsets(
        self, users: np.ndarray, times: np.ndarray, counts: Sequence[int | None]
    ) -> dict[int | None, np.ndarray | float]:
        """``{k: what each rating's time adds to the prediction at neighbour count k}`` for
        known user positions (nothing here; ``KMeansKNN`` has a session offset)."""
        return dict.fromkeys(counts, 0.0)

    def _predict_index_for_neighbors(
        self, users: np.ndarray, items: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """:meth:`_predict_index` per count; neighbourhood models serve all from one pass."""
        return {k: self._predict_index(users, items, k) for k in counts}

    def _finish(self, predictions: np.ndarray, fallback: np.ndarray) -> np.ndarray:
        predictions = np.where(np.isfinite(predictions), predictions, fallback)
        # models pickled before rating_range_ existed were all fit on 1..5 stars
        low, high = getattr(self, "rating_range_", (MIN_RATING, MAX_RATING))
        return np.clip(predictions, low, high)

    @abstractmethod
    def _predict_index(
        self, users: np.ndarray, items: np.ndarray, n_neighbors: int | None = None
    ) -> np.ndarray:
        """Predictions for known user/item positions (NaN allowed: the baseline fills in)."""

    # -- ranking -------------------------------------------------------------------------

    def _score_users(self, users: np.ndarray, n_neighbors: int | None = None) -> np.ndarray:
        """Ranking scores (len(users) x n_items) for known user positions; higher is better.
        By default the predicted ratings of every item."""
        n_items = self.ratings_.n_items
        rows = np.repeat(users, n_items)
        cols = np.tile(np.arange(n_items), len(users))
        return self.predict_positions(rows, cols, n_neighbors).reshape(len(users), n_items)

    def _score_users_for_neighbors(
        self, users: np.ndarray, counts: Sequence[int]
    ) -> dict[int, np.ndarray]:
        """:meth:`_score_users` per neighbour count; predicted ratings come from one pass."""
        if type(self)._score_users is not RecommenderModel._score_users:
            return {k: self._score_users(users, k) for k in counts}
        return self._predicted_scores(users, counts)

    def _predicted_scores(self, users: np.ndarray, counts: Sequence[int]) -> dict[int, np.ndarray]:
        """The predicted rating of every item for each user, at each neighbour count."""
        n_items = self.ratings_.n_items
        rows = np.repeat(users, n_items)
        cols = np.tile(np.arange(n_items), len(users))
        predicted = self.predict_positions_for_neighbors(rows, cols, counts)
        return {k: scores.reshape(len(users), n_items) for k, scores in predicted.items()}

    def recommend_positions(
        self,
        users: np.ndarray,
        n: int = 10,
        *,
        n_neighbors: int | None = None,
        batch_size: int = 256,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` unrated item positions and scores per user position, best first.
        Rows are padded with -1 / -inf when a user has fewer than ``n`` candidates."""
        scored = self._top_unseen(
            users, n, batch_size, [0], lambda batch: {0: self._score_users(batch, n_neighbors)}
        )
        return scored[0]

    def recommend_positions_for_neighbors(
        self, users: np.ndarray, n: int, n_neighbors: Sequence[int], *, batch_size: int = 256
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """:meth:`recommend_positions` at every neighbour count, scoring each batch once."""
        counts = sorted({int(k) for k in n_neighbors})
        return self._top_unseen(
            users,
            n,
            batch_size,
            counts,
            lambda batch: self._score_users_for_neighbors(batch, counts),
        )

    def _top_unseen(
        self,
        users: np.ndarray,
        n: int,
        batch_size: int,
        keys: Sequence[int],
        score: Callable[[np.ndarray], dict[int, np.ndarray]],
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """For each key of ``score``'s scores, the top-``n`` unrated items of every user."""
        self._check_fitted()
        users = np.asarray(users, dtype=np.int64)
        width = min(n, self.ratings_.n_items)
        results = {
            key: (np.full((len(users), n), -1, np.int64), np.full((len(users), n), -np.inf))
            for key in keys
        }
        rated = self.ratings_.matrix
        for start in range(0, len(users), batch_size):
            batch = users[start : start + batch_size]
            seen = rated[batch].toarray() != 0
            for key, batch_scores in score(batch).items():
                top, top_scores = results[key]
                scores = np.array(batch_scores, dtype=np.float64)
                scores[seen] = -np.inf
                best = np.argpartition(-scores, width - 1, axis=1)[:, :width]
                order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
                best = np.take_along_axis(best, order, axis=1)
                best_scores = np.take_along_axis(scores, best, axis=1)
                best[~np.isfinite(best_scores)] = -1
                top[start : start + len(batch), :width] = best
                top_scores[start : start + len(batch), :width] = best_scores
        return results

    def recommend(self, user_id: int, n: int = 10) -> list[tuple[int, float]]:
        """The ``n`` best items the user has not rated, as ``(item_id, score)`` best first.
        An unknown user gets the items with the highest bias-baseline rating."""
        self._check_fitted()
        user = int(self.ratings_.user_positions(np.array([user_id]))[0])
        if user < 0:
            scores = self.baseline_.item_bias
            order = np.argsort(-scores, kind="stable")[:n]
            return [(int(self.ratings_.item_ids[i]), float(scores[i])) for i in order]
        top, top_scores = self.recommend_positions(np.array([user]), n)
        keep = top[0] >= 0
        return [
            (int(item_id), float(score))
            for item_id, score in zip(
                self.ratings_.item_ids[top[0][keep]], top_scores[0][keep], strict=True
            )
        ]

    # -- fold-in of users not in the training data ----------------------------------------

    def fold_in(
        self, ratings: Mapping[int, float], *, demographics: Mapping[str, Any] | None = None
    ) -> FoldedUser:
        """Read one new user's ``{item_id: rating}`` (possibly empty) against the fitted model,
        without a refit. Item ids the model never saw are ignored (``n_ignored`` counts them);
        a non-finite rating raises ValueError. ``demographics`` (``{"age": 25, "gender": "M",
        "occupation": "student"}``, any subset) is used by models fit with ``users=``."""
        self._check_fitted()
        items, values, n_ignored = known_ratings(ratings, self.ratings_)
        bias = folded_user_bias(self.baseline_, items, values, self._damping()[0])
        return self._fold_in(items, values, n_ignored, bias, demographics)

    def _fold_in(
        self, items: np.ndarray, values: np.ndarray, n_ignored: int, user_bias: float,
        demographics: Mapping[str, Any] | None,
    ) -> FoldedUser:  # fmt: skip
        """The folded user; models with cold-start clusters override it."""
        strategy = FOLD_IN if len(items) else COLD_START_POPULAR
        return FoldedUser(items, values, n_ignored, user_bias, strategy)

    def fold_in_strategy(
        self, ratings: Mapping[int, float], *, demographics: Mapping[str, Any] | None = None
    ) -> Strategy:
        """Which strategy answers this user: ``cold_start_popular``, ``cold_start_cluster`` or
        ``fold_in`` (see :mod:`recommender.foldin`)."""
        return self.fold_in(ratings, demographics=demographics).strategy

    def predict_for(
        self, ratings: Mapping[int, float], item_ids: Any, *,
        demographics: Mapping[str, Any] | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Predicted ratings of ``item_ids`` for a user not in the training data, from their
        ``{item_id: rating}`` (possibly empty); clipped to the rating scale, never NaN
        (unknown items get the baseline with the user's folded bias)."""
        user = self.fold_in(ratings, demographics=demographics)
        items = self.ratings_.item_positions(np.atleast_1d(np.asarray(item_ids)))
        fallback = (
            self.baseline_.mean
            + user.user_bias
            + np.where(items >= 0, self.baseline_.item_bias[np.maximum(items, 0)], 0.0)
        )
        predictions = fallback.copy()
        known = items >= 0
        if known.any():
            predictions[known] = self._predict_folded(user, items[known])
        return self._finish(predictions, fallback)

    def recommend_for(
        self, ratings: Mapping[int, float], n: int = 10, *,
        demographics: Mapping[str, Any] | None = None,
    ) -> list[tuple[int, float]]:  # fmt: skip
        """The ``n`` best items for a user not in the training data, as ``(item_id, score)``
        best first, the rated items excluded; ``ratings`` may be empty."""
        user = self.fold_in(ratings, demographics=demographics)
        return top_unseen(self._score_folded(user), user.items, n, self.ratings_.item_ids)

    def _predict_folded(self, user: FoldedUser, items: np.ndarray) -> np.ndarray:
        """Predictions of known item positions for a folded user (NaN allowed); by default
        the bias baseline with the user's folded bias."""
        return self.baseline_.mean + user.user_bias + self.baseline_.item_bias[items]

    def _score_folded(self, user: FoldedUser) -> np.ndarray:
        """Ranking scores of every item for a folded user; by default its predictions."""
        return self._predict_folded(user, np.arange(self.ratings_.n_items))


__all__ = ["Biases", "RecommenderModel", "as_ratings"]  # and ModelNotFittedError (__getattr__)
