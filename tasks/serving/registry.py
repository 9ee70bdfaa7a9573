"""The registry as the service sees it: what is loaded and registered, a version exported to
the lake, and an uploaded model registered as a challenger (never straight to champion)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from recommender import RecommenderModel
from tasks.config import Settings
from tasks.lake import Lake
from tasks.serving.champion import ServedModel
from tasks.train.tracking import (
    CHALLENGER,
    REGISTERED_MODEL,
    Champion,
    alias_for,
    experiment_id,
    export_to_lake,
    log_model_version,
)


class ModelRefused(ValueError):
    """An uploaded model that does not load or cannot answer; the message says why."""


class VersionNotFound(LookupError):
    pass


def _created(version: ModelVersion) -> str:
    return datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat()


def registered_versions(client: MlflowClient) -> list[dict[str, Any]]:
    """Every registered version, newest first, with the aliases it holds."""
    try:
        aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    except MlflowException:
        return []
    held: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        held.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name='{REGISTERED_MODEL}'")
    return [
        {
            "version": str(v.version),
            "aliases": sorted(held.get(str(v.version), [])),
            "description": v.description or None,
            "tags": dict(v.tags),
            "created_at": _created(v),
        }
        for v in sorted(versions, key=lambda v: int(v.version), reverse=True)
    ]


def model_info(client: MlflowClient, served: ServedModel) -> dict[str, Any]:
    """The loaded version: its alias, parameters, cross-validated metrics, data and age."""
    run = client.get_run(served.run_id)
    return {
        "name": REGISTERED_MODEL,
        "loaded_version": served.version,
        "alias": served.alias,
        "dataset": served.dataset,
        "dataset_version": served.tags.get("dataset_version"),
        "trained_at": served.trained_at,
        "parameters": dict(run.data.params),
        "metrics": {k: float(v) for k, v in run.data.metrics.items()},
        "versions": registered_versions(client),
    }


def resolve_version(client: MlflowClient, version: str | None, alias: str | None) -> ModelVersion:
    try:
        if alias:
            return client.get_model_version_by_alias(REGISTERED_MODEL, alias)
        return client.get_model_version(REGISTERED_MODEL, str(version))
    except MlflowException as error:
        what = f"alias {alias!r}" if alias else f"version {version!r}"
        raise VersionNotFound(f"{REGISTERED_MODEL} has no {what}") from error


def export_version(
    client: MlflowClient, settings: Settings, version: ModelVersion, alias: str
) -> str:
    """Copy a version's files and its metrics and parameters to the lake, as the train flow
    does for its champion; returns the lake URI of the folder."""
    run = client.get_run(str(version.run_id))
    champion = Champion(
        version=str(version.version),
        alias=alias,
        run_id=str(version.run_id),
        model_uri=f"models:/{REGISTERED_MODEL}/{version.version}",
        metric=version.tags.get("selection_metric", ""),
        value=float("nan"),
    )
    summary = {"params": dict(run.data.params), "metrics": dict(run.data.metrics)}
    return export_to_lake(Lake.from_settings(settings), champion, summary)


@dataclass(frozen=True)
class Upload:
    version: str
    alias: str
    run_id: str


def load_uploaded_model(path: Path) -> RecommenderModel[Any]:
    """Unpickle an uploaded model (the upload endpoint needs the API token: a pickle runs
    code) and check that it is a fitted recommender that answers."""
    try:
        with open(path, "rb") as handle:
            model = pickle.load(handle)  # noqa: S301 (token-protected)
    except Exception as error:
        raise ModelRefused(f"the file does not load as a pickled model ({error})") from None
    if not isinstance(model, RecommenderModel):
        raise ModelRefused(f"the file holds a {type(model).__name__}, not a recommender model")
    if not model.is_fitted:
        raise ModelRefused("the model is not fitted")
    try:
        ratings = model.ratings_  # type: ignore[attr-defined]
        user, item = int(ratings.user_ids[0]), int(ratings.item_ids[0])
        predicted = np.asarray(model.predict(np.array([user]), np.array([item])))
        model.recommend(user, 5)
    except Exception as error:
        raise ModelRefused(f"the model cannot answer a prediction ({error})") from None
    if not np.isfinite(predicted).all():
        raise ModelRefused("the model predicts a non-finite rating")
    return model


def register_upload(
    client: MlflowClient,
    settings: Settings,
    model: RecommenderModel[Any],
    titles: dict[int, str],
    description: str,
    tags: dict[str, str],
) -> Upload:
    """Log the model as the train flow logs its champion and register it as a new version with
    the dataset's ``challenger`` alias, a description and tags."""
    import mlflow

    dataset = tags.get("dataset", settings.dataset)
    tags = {**tags, "dataset": dataset, "source": "upload"}
    experiment = experiment_id(client, settings)
    parent = client.create_run(experiment, run_name="model upload", tags=tags)
    frame = pl.DataFrame(
        {"item_id": list(titles), "title": list(titles.values())},
        schema={"item_id": pl.Int64, "title": pl.String},
    )
    summary = {"params": model.get_params(), "metrics": {}}
    run_id, model_uri = log_model_version(
        client, experiment, parent.info.run_id, model, frame, summary, tags
    )
    client.set_terminated(parent.info.run_id)
    registered = mlflow.register_model(model_uri, REGISTERED_MODEL, tags=tags)
    version = str(registered.version)
    client.update_model_version(REGISTERED_MODEL, version, description=description)
    alias = alias_for(CHALLENGER, dataset)
    client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
    return Upload(version=version, alias=alias, run_id=run_id)
