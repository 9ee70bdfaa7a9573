"""Request and answer bodies of the API, with the examples Swagger (/docs) shows."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Problem(BaseModel):
    field: str = Field(examples=["n"])
    problem: str = Field(default="", examples=["Input should be less than or equal to 100"])


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: what failed, and the fields at fault."""

    error: str = Field(examples=["invalid request: n: Input should be less than or equal to 100"])
    fields: list[Problem] = []


class RecommendedItem(BaseModel):
    rank: int = Field(examples=[1])
    item_id: int = Field(examples=[50])
    title: str = Field(examples=["Star Wars (1977)"])
    score: float = Field(examples=[4.62])


STRATEGY_HELP = (
    "personal: a user the model was trained on; fold_in: ratings given to the service folded in "
    "without a refit; cold_start_cluster: a new user placed in K-Means user clusters from "
    "demographics; cold_start_popular: a new user with nothing to go on: the most popular items"
)


class RecommendationsOut(BaseModel):
    user_id: int = Field(examples=[42])
    model_version: str = Field(examples=["3"])
    strategy: str = Field(examples=["personal"], description=STRATEGY_HELP)
    request_id: str = Field(examples=["4b0c1a0e-8d9b-4a53-9d0e-8f1f6f3c2a11"])
    items: list[RecommendedItem]


class BatchRecommendationsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_ids: list[int] = Field(min_length=1, examples=[[1, 2, 3]])
    n: int = Field(default=10, ge=1, examples=[10])


class BatchRecommendationsOut(BaseModel):
    model_version: str
    results: list[RecommendationsOut]


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(examples=[1])
    item_id: int = Field(examples=[50])
    timestamp: int | None = Field(
        default=None, ge=0, examples=[891_000_000],
        description="when the rating would be made (Unix seconds; absent: now): a model with a "
        "session offset adds how the user rated within minutes of then",
    )  # fmt: skip


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pairs: list[Pair] = Field(min_length=1, examples=[[{"user_id": 1, "item_id": 50}]])


class PredictionOut(BaseModel):
    user_id: int
    item_id: int
    rating: float = Field(description="predicted rating, clipped to the rating scale")
    fallback: bool = Field(description="true when the user or item is unknown: the baseline")
    strategy: str


class PredictOut(BaseModel):
    model_version: str
    request_id: str
    predictions: list[PredictionOut]


class RatingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ratings: dict[int, float] = Field(
        min_length=1,
        description="item id -> rating on the dataset's scale; a list of"
        ' {"item_id": ..., "rating": ...} objects is taken too',
        examples=[{"50": 5, "172": 4.0, "181": 3}],
    )

    @field_validator("ratings", mode="before")
    @classmethod
    def _from_a_list(cls, value: Any) -> Any:
        """``[{"item_id": 50, "rating": 5}, ...]`` as the mapping; an item given twice is
        refused (which of the two would count is not the client's to guess)."""
        if not isinstance(value, list):
            return value
        pairs = [RatingIn.model_validate(entry) for entry in value]
        counts = Counter(p.item_id for p in pairs)
        twice = sorted(item for item, n in counts.items() if n > 1)
        if twice:
            raise ValueError(f"item(s) {', '.join(map(str, twice))} given more than once")
        return {p.item_id: p.rating for p in pairs}


class RatingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: int
    rating: float


class RatingsOut(BaseModel):
    user_id: int
    stored: int = Field(description="ratings stored by this request")
    given: int = Field(description="ratings this user has given the service in all")
    strategy: str = Field(description="how this user's next recommendations are made")


class ModelVersionOut(BaseModel):
    version: str
    aliases: list[str]
    description: str | None = None
    tags: dict[str, str] = {}
    created_at: str


class ModelInfoOut(BaseModel):
    name: str
    loaded_version: str
    alias: str
    dataset: str
    dataset_version: str | None
    trained_at: str
    parameters: dict[str, Any]
    metrics: dict[str, float]
    versions: list[ModelVersionOut]
