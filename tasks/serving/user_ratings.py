"""Ratings given to the service (``POST /users/{id}/ratings``): validated against the served
model, stored in ``serving.user_ratings``, and kept in memory for the fold-in. Every worker
reads the rows the others stored (by ``rating_id``), so all of them fold in the same ratings."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tasks.serving.champion import ServedModel
from tasks.warehouse.connection import connect

_INSERT = (
    "INSERT INTO serving.user_ratings (dataset, user_id, item_id, rating)"
    " SELECT %s, %s, item_id, rating FROM unnest(%s::integer[], %s::real[]) AS r(item_id, rating)"
)
_SINCE = (
    "SELECT rating_id, user_id, item_id, rating FROM serving.user_ratings"
    " WHERE dataset = %s AND rating_id > %s ORDER BY rating_id"
)


class RatingsRejected(ValueError):
    """Given ratings that cannot be used; ``problems`` names each bad item and why."""

    def __init__(self, problems: list[dict[str, object]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems))
        self.problems = problems


def check_ratings(served: ServedModel, ratings: Mapping[int, float]) -> None:
    """Refuse items the model does not know and ratings off its scale (whole stars 1..5, or
    half stars 0.5..5 where the training ratings have halves)."""
    items = np.fromiter(ratings.keys(), np.int64, len(ratings))
    values = np.fromiter(ratings.values(), np.float64, len(ratings))
    low, high = served.rating_scale
    training_values = served.model.ratings_.values  # type: ignore[attr-defined]
    step = 0.5 if np.any(np.mod(training_values, 1.0) != 0) else 1.0
    problems: list[dict[str, object]] = []
    for item, known in zip(items.tolist(), served.knows_items(items).tolist(), strict=True):
        if not known:
            problems.append({"field": f"ratings.{item}", "problem": f"unknown item {item}"})
    off_scale = ~np.isfinite(values) | (values < low) | (values > high)
    off_scale |= np.mod(np.nan_to_num(values), step) != 0
    for item, value in zip(items[off_scale].tolist(), values[off_scale].tolist(), strict=True):
        problems.append(
            {
                "field": f"ratings.{item}",
                "problem": f"rating {value:g} is not on the scale {low:g}..{high:g} "
                f"in steps of {step:g}",
            }
        )
    if problems:
        raise RatingsRejected(problems)


@dataclass
class UserRatings:
    """The ratings users gave the service, by user: ``{user_id: {item_id: rating}}``."""

    url: str
    dataset: str
    by_user: dict[int, dict[int, float]] = field(default_factory=dict)
    last_id: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def given(self, user_id: int) -> dict[int, float] | None:
        return self.by_user.get(user_id)

    def given_for(self, user_ids: object) -> dict[int, dict[int, float]]:
        """The given ratings of those of ``user_ids`` who have some."""
        by_user = self.by_user
        return {u: by_user[u] for u in set(user_ids) if u in by_user}  # type: ignore[call-overload]

    def store(self, user_id: int, ratings: Mapping[int, float]) -> int:
        """Store one user's ratings in one transaction, then fold them in here; returns how many
        ratings the user has given in all."""
        items = list(ratings.keys())
        values = [float(v) for v in ratings.values()]
        with connect(self.url) as conn, conn.transaction():
            conn.execute(_INSERT, (self.dataset, user_id, items, values))
        self.refresh()
        return len(self.by_user.get(user_id, {}))

    def refresh(self) -> int:
        """Read the rows stored since the last read (by any worker); returns how many."""
        with self._lock:
            with connect(self.url) as conn:
                rows = conn.execute(_SINCE, (self.dataset, self.last_id)).fetchall()
            for rating_id, user_id, item_id, rating in rows:
                user = dict(self.by_user.get(user_id, {}))
                user[int(item_id)] = float(rating)
                self.by_user[int(user_id)] = user  # a new dict: readers never see it half-built
                self.last_id = max(self.last_id, int(rating_id))
            return len(rows)
