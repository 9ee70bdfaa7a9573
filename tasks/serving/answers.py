"""The service's answers: top-N for users the model knows (from the precomputed lists), for
users with ratings given to the service (fold-in, no refit), and for users it has never seen
(the cold-start strategies); predicted ratings marked where they fell back to a baseline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tasks.serving.champion import ServedModel

PERSONAL = "personal"  # a user the model was trained on, with no ratings given since
FOLD_IN = "fold_in"  # a user's ratings given to the service, folded in without a refit
BASELINE = "baseline"  # a prediction for an unknown user or item: the bias baseline


@dataclass(frozen=True)
class Answer:
    """One user's answer: items best first with their scores, and how it was made."""

    user_id: int | None
    items: list[int]
    scores: list[float]
    strategy: str
    model_version: str


@dataclass(frozen=True)
class Predictions:
    """Predicted ratings of (user, item) pairs; ``fallback`` marks the baseline ones."""

    scores: np.ndarray
    fallback: np.ndarray
    strategies: list[str]
    model_version: str


def user_history(served: ServedModel, user_id: int) -> dict[int, float]:
    """The training ratings of a user the model knows, as ``{item_id: rating}``."""
    ratings = served.model.ratings_  # type: ignore[attr-defined]
    row = served.user_rows.get(user_id)
    if row is None:
        return {}
    matrix = ratings.matrix
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    items = ratings.item_ids[matrix.indices[start:end]]
    return dict(zip(items.tolist(), matrix.data[start:end].tolist(), strict=True))


def recommend(
    served: ServedModel, user_id: int, n: int, given: Mapping[int, float] | None = None
) -> Answer:
    """Top-``n`` unseen items of one user. ``given``: ratings the user gave the service."""
    if not given and served.knows_user(user_id):
        return personal_answers(served, [user_id], n)[0]
    if not given:
        return newcomer_answer(served, user_id, n)
    # given ratings (here always some) folded in with the training ones: one fold-in
    pairs = served.model.recommend_for(  # type: ignore[attr-defined]
        {**user_history(served, user_id), **given}, n
    )
    return Answer(
        user_id=user_id,
        items=[int(item) for item, _ in pairs],
        scores=[float(score) for _, score in pairs],
        strategy=FOLD_IN,
        model_version=served.version,
    )


def newcomer_answer(served: ServedModel, user_id: int, n: int) -> Answer:
    """A user neither trained on nor with given ratings: the model's answer to an empty
    history, computed once per model (the same for every such user)."""
    return Answer(
        user_id=user_id,
        items=served.newcomer_items[:n].tolist(),
        scores=served.newcomer_scores[:n].tolist(),
        strategy=served.newcomer_strategy,
        model_version=served.version,
    )


def needs_fold_in(given: Mapping[int, float] | None) -> bool:
    """Whether answering a user folds ratings in (milliseconds) rather than reads a list."""
    return bool(given)


def personal_answers(served: ServedModel, user_ids: Sequence[int], n: int) -> list[Answer]:
    """The precomputed top-``n`` of users the model knows, sliced from one array."""
    rows = np.fromiter((served.user_rows[u] for u in user_ids), np.int64, len(user_ids))
    items, scores = served.top_items[rows, :n], served.top_scores[rows, :n]
    answers = []
    for user_id, user_items, user_scores in zip(user_ids, items, scores, strict=True):
        found = user_items >= 0
        answers.append(
            Answer(
                user_id=int(user_id),
                items=user_items[found].tolist(),
                scores=user_scores[found].tolist(),
                strategy=PERSONAL,
                model_version=served.version,
            )
        )
    return answers


def recommend_many(
    served: ServedModel,
    user_ids: Sequence[int],
    n: int,
    given: Mapping[int, Mapping[int, float]],
) -> list[Answer]:
    """Answers for a batch of users in their order: the known ones without given ratings in
    one vectorised slice, the others one by one."""
    plain = [u for u in user_ids if served.knows_user(u) and u not in given]
    answers = dict(zip(plain, personal_answers(served, plain, n), strict=True))
    for user_id in user_ids:
        if user_id not in answers:
            answers[user_id] = recommend(served, user_id, n, given.get(user_id))
    return [answers[u] for u in user_ids]


def predict_pairs(
    served: ServedModel,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    given: Mapping[int, Mapping[int, float]],
    times: np.ndarray | None = None,
) -> Predictions:
    """Predicted ratings of each (user, item) pair, clipped to the scale. A pair of a known
    user and item is the model's (at ``times``, Unix seconds, when given: the session
    offset); a user with ratings given to the service is folded in; a pair whose user or
    item the model does not know falls back to the baseline (marked)."""
    model = served.model
    scores = np.asarray(model.predict(user_ids, item_ids, times=times), dtype=np.float64)
    known_items = served.knows_items(item_ids)
    known_users = np.fromiter((served.knows_user(int(u)) for u in user_ids), bool, len(user_ids))
    strategies = np.where(known_users, PERSONAL, BASELINE).astype(object)
    for user_id in {int(u) for u in user_ids if int(u) in given}:
        rows = np.flatnonzero(user_ids == user_id)
        ratings = {**user_history(served, user_id), **given[user_id]}
        scores[rows] = model.predict_for(ratings, item_ids[rows])  # type: ignore[attr-defined]
        strategies[rows] = FOLD_IN
        known_users[rows] = True
    fallback = ~(known_users & known_items)
    strategies[~known_items] = BASELINE
    return Predictions(
        scores=scores,
        fallback=fallback,
        strategies=[str(s) for s in strategies],
        model_version=served.version,
    )
