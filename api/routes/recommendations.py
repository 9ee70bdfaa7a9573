"""Recommendations, predictions and the ratings of users: thin routes over
``tasks.serving`` (the answers) and the recorder (every answer a row)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from api.errors import ApiError
from api.responses import JSONAnswer
from api.schemas import (
    BatchRecommendationsIn,
    BatchRecommendationsOut,
    ErrorOut,
    PredictIn,
    PredictOut,
    RatingsIn,
    RatingsOut,
    RecommendationsOut,
)
from api.service import Service, service_of
from tasks.serving.answers import (
    Answer,
    needs_fold_in,
    predict_pairs,
    recommend,
    recommend_many,
)
from tasks.serving.champion import ServedModel
from tasks.serving.user_ratings import check_ratings

router = APIRouter(tags=["recommendations"])
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorOut, "description": "a parameter or the body is invalid"},
    503: {"model": ErrorOut, "description": "no model is loaded yet"},
}
UserId = Annotated[int, Path(ge=1, le=2**31 - 1, description="a MovieLens user id", examples=[42])]


def _check_n(service: Service, n: int) -> None:
    limit = service.settings.api_max_n
    if n > limit:
        raise ApiError(
            422,
            f"invalid request: n: at most {limit} (RECSYS_API_MAX_N)",
            [{"field": "n", "problem": f"must be at most {limit}"}],
        )


def _check_batch(service: Service, field: str, count: int) -> None:
    limit = service.settings.api_max_batch
    if count > limit:
        raise ApiError(
            422,
            f"invalid request: {field}: at most {limit} (RECSYS_API_MAX_BATCH)",
            [{"field": field, "problem": f"{count} given, at most {limit}"}],
        )


def answer_body(served: ServedModel, answer: Answer, request_id: str) -> dict[str, Any]:
    return {
        "user_id": answer.user_id,
        "model_version": answer.model_version,
        "strategy": answer.strategy,
        "request_id": request_id,
        "items": [
            {"rank": rank, "item_id": item, "title": served.title(item), "score": score}
            for rank, (item, score) in enumerate(zip(answer.items, answer.scores, strict=True), 1)
        ],
    }


@router.get(
    "/recommendations/{user_id}",
    response_model=RecommendationsOut,
    responses=ERRORS,
    summary="Top-N unseen movies of one user",
)
async def recommendations(
    request: Request,
    user_id: UserId,
    n: Annotated[int, Query(ge=1, description="how many (at most RECSYS_API_MAX_N)")] = 10,
) -> JSONAnswer:
    """The user's best ``n`` movies they have not rated, best first, with the strategy that
    made them (a user the model does not know is answered by a cold-start strategy, and says
    so)."""
    started = time.perf_counter()
    service = service_of(request)
    _check_n(service, n)
    served = service.served()
    given = service.ratings.given(user_id)
    if needs_fold_in(given):  # milliseconds of work: off the event loop
        answer = await run_in_threadpool(recommend, served, user_id, n, given)
    else:  # a slice of a precomputed list: cheaper than a thread hop
        answer = recommend(served, user_id, n, given)
    request_id = service.record("recommendations", answer, started, served.dataset)
    return JSONAnswer(answer_body(served, answer, request_id))


@router.post(
    "/recommendations",
    response_model=BatchRecommendationsOut,
    responses=ERRORS,
    summary="Top-N of a batch of users",
)
def batch_recommendations(request: Request, body: BatchRecommendationsIn) -> JSONAnswer:
    """One answer per user, in the order asked (each recorded as its own row)."""
    started = time.perf_counter()
    service = service_of(request)
    _check_n(service, body.n)
    _check_batch(service, "user_ids", len(body.user_ids))
    served = service.served()
    given = service.ratings.given_for(body.user_ids)
    answers = recommend_many(served, body.user_ids, body.n, given)
    results = [
        answer_body(served, a, service.record("recommendations", a, started, served.dataset))
        for a in answers
    ]
    return JSONAnswer({"model_version": served.version, "results": results})


@router.post(
    "/predict", response_model=PredictOut, responses=ERRORS, summary="Predicted ratings of pairs"
)
def predict(request: Request, body: PredictIn) -> JSONAnswer:
    """Each (user, item) pair's predicted rating, clipped to the scale; ``fallback`` marks a
    pair whose user or item the model does not know (the bias baseline answered it)."""
    started = time.perf_counter()
    service = service_of(request)
    _check_batch(service, "pairs", len(body.pairs))
    served = service.served()
    users = np.fromiter((p.user_id for p in body.pairs), np.int64, len(body.pairs))
    items = np.fromiter((p.item_id for p in body.pairs), np.int64, len(body.pairs))
    now = int(time.time())
    times = np.fromiter(
        (now if p.timestamp is None else p.timestamp for p in body.pairs), np.int64, len(body.pairs)
    )
    given = service.ratings.given_for(users.tolist())
    result = predict_pairs(served, users, items, given, times)
    strategies = set(result.strategies)
    answer = Answer(
        user_id=int(users[0]) if len(set(users.tolist())) == 1 else None,
        items=items.tolist(),
        scores=result.scores.tolist(),
        strategy=strategies.pop() if len(strategies) == 1 else "mixed",
        model_version=result.model_version,
    )
    request_id = service.record("predict", answer, started, served.dataset)
    predictions = [
        {"user_id": u, "item_id": i, "rating": s, "fallback": f, "strategy": st}
        for u, i, s, f, st in zip(
            users.tolist(),
            items.tolist(),
            result.scores.tolist(),
            result.fallback.tolist(),
            result.strategies,
            strict=True,
        )  # fmt: skip
    ]
    return JSONAnswer(
        {
            "model_version": result.model_version,
            "request_id": request_id,
            "predictions": predictions,
        }
    )


@router.post(
    "/users/{user_id}/ratings",
    response_model=RatingsOut,
    status_code=201,
    responses=ERRORS,
    summary="Ratings of a new or known user, folded in at once",
)
def give_ratings(request: Request, user_id: UserId, body: RatingsIn) -> JSONAnswer:
    """Validate (known items, ratings on the dataset's scale), store in the warehouse
    (``serving.user_ratings``), and fold in: the user's next recommendations use them at once,
    without retraining. Open without a token (see the README): it changes only this user's
    own answers."""
    service = service_of(request)
    _check_batch(service, "ratings", len(body.ratings))
    served = service.served()
    check_ratings(served, body.ratings)
    given = service.ratings.store(user_id, body.ratings)
    ratings = service.ratings.given(user_id) or {}
    strategy = "fold_in" if ratings else "personal"
    return JSONAnswer(
        {"user_id": user_id, "stored": len(body.ratings), "given": given, "strategy": strategy},
        status_code=201,
    )
