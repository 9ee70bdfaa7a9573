"""The served model: a registered version loaded from MLflow by alias, with every known user's
top-N computed once, and a holder that swaps it atomically when the alias moves."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from recommender import RecommenderModel
from tasks.config import Settings
from tasks.train.tracking import CHAMPION, REGISTERED_MODEL, alias_for, configure_mlflow

logger = logging.getLogger(__name__)

TOP_CACHED = 100  # each known user's top-N kept in memory: answers up to api_max_n need no scoring


class NoChampionError(RuntimeError):
    """The registry has no version under the alias the service serves."""


@dataclass(frozen=True)
class ServedModel:
    """One registered version, ready to answer: the fitted model, its titles, its metadata,
    and the best ``TOP_CACHED`` unseen items of every user it was trained on."""

    version: str
    alias: str
    dataset: str
    model: RecommenderModel[Any]
    titles: dict[int, str]
    run_id: str
    trained_at: str
    tags: dict[str, str]
    top_items: np.ndarray  # users x TOP_CACHED raw item ids, -1 past a user's candidates
    top_scores: np.ndarray
    user_rows: dict[int, int]  # raw user id -> row of top_items
    item_ids: np.ndarray  # raw ids of the items the model knows, sorted
    rating_scale: tuple[float, float]
    newcomer_items: np.ndarray  # the answer to a user with no ratings: the same for every one
    newcomer_scores: np.ndarray
    newcomer_strategy: str

    def knows_user(self, user_id: int) -> bool:
        return user_id in self.user_rows

    def knows_items(self, item_ids: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(self.item_ids, item_ids)
        positions = np.clip(positions, 0, max(len(self.item_ids) - 1, 0))
        return self.item_ids[positions] == item_ids if len(self.item_ids) else positions < 0

    def title(self, item_id: int) -> str:
        return self.titles.get(item_id, "")


def serving_alias(settings: Settings) -> str:
    """The alias the service follows: the dataset's champion."""
    return alias_for(CHAMPION, settings.dataset)


def champion_version(client: MlflowClient, alias: str) -> ModelVersion:
    try:
        return client.get_model_version_by_alias(REGISTERED_MODEL, alias)
    except MlflowException as error:
        raise NoChampionError(
            f"no model version of {REGISTERED_MODEL!r} holds the alias {alias!r} in "
            f"{client.tracking_uri}: run the train flow (python flows/train.py) first"
        ) from error


def load_version(client: MlflowClient, version: ModelVersion, alias: str) -> ServedModel:
    """Load a registered version's model and titles and precompute its users' top-N."""
    uri = f"models:/{REGISTERED_MODEL}/{version.version}"
    wrapper = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    model: RecommenderModel[Any] = wrapper.model  # type: ignore[attr-defined]
    ratings = model.ratings_  # type: ignore[attr-defined]
    users = np.asarray(ratings.user_ids)
    top, scores = model.recommend_positions(  # type: ignore[attr-defined]
        np.arange(len(users)), min(TOP_CACHED, len(ratings.item_ids))
    )
    item_ids = np.asarray(ratings.item_ids)
    top_items = np.where(top >= 0, item_ids[np.clip(top, 0, None)], -1)
    values = np.asarray(ratings.values)
    newcomer = model.recommend_for({}, TOP_CACHED)  # type: ignore[attr-defined]
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat()
    return ServedModel(
        version=str(version.version),
        alias=alias,
        dataset=version.tags.get("dataset", ""),
        model=model,
        titles={int(k): str(v) for k, v in wrapper.titles.items()},  # type: ignore[attr-defined]
        run_id=str(version.run_id),
        trained_at=created,
        tags=dict(version.tags),
        top_items=top_items.astype(np.int64),
        top_scores=np.asarray(scores, dtype=np.float64),
        user_rows={int(user): row for row, user in enumerate(users)},
        item_ids=np.sort(item_ids).astype(np.int64),
        rating_scale=(float(values.min()), float(values.max())) if len(values) else (1.0, 5.0),
        newcomer_items=np.array([item for item, _ in newcomer], dtype=np.int64),
        newcomer_scores=np.array([score for _, score in newcomer], dtype=np.float64),
        newcomer_strategy=str(model.fold_in_strategy({})),  # type: ignore[attr-defined]
    )


@dataclass
class ModelHolder:
    """Holds the served model; ``current`` is swapped in one assignment, so a request that reads
    it once answers from one model from start to end, and no request waits for a reload."""

    settings: Settings
    alias: str
    current: ServedModel | None = None
    checked_at: float = 0.0
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelHolder:
        return cls(settings=settings, alias=serving_alias(settings))

    def client(self) -> MlflowClient:
        return configure_mlflow(self.settings)

    def reload(self, force: bool = False) -> bool:
        """Load the version the alias points at when it differs from the served one (or always
        with ``force``); True when a new model was swapped in. Concurrent calls load once."""
        with self._lock:
            self.checked_at = time.monotonic()
            try:
                version = champion_version(self.client(), self.alias)
            except NoChampionError as error:
                self.error = str(error)
                raise
            served = self.current
            if not force and served is not None and served.version == str(version.version):
                return False
            started = time.perf_counter()
            loaded = load_version(self.client(), version, self.alias)
            self.current, self.error = loaded, None
            logger.info(
                "serving %s version %s (%s) after %.2f s of loading",
                REGISTERED_MODEL, loaded.version, self.alias, time.perf_counter() - started,
            )  # fmt: skip
            return True

    def poll(self, stop: threading.Event) -> None:
        """Reload whenever the alias moves, every ``model_poll_seconds``, until ``stop``."""
        while not stop.wait(self.settings.model_poll_seconds):
            try:
                self.reload()
            except Exception as error:  # the served model stays; the next poll tries again
                self.error = f"{type(error).__name__}: {error}"
                logger.warning("model poll failed: %s", self.error, exc_info=True)
