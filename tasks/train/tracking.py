"""MLflow: the sweep as a parent run with a nested run per configuration, the registry, and
the champion alias, which moves only when a new model beats the current champion.

Runs are addressed by id through ``MlflowClient`` (never MLflow's thread-local active run), so
the sweep's tasks may log from any thread.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from recommender import RecommenderModel
from tasks.config import Settings, environment_unchanged
from tasks.lake import Lake
from tasks.train.units import LOWER_IS_BETTER, METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.entities.model_registry import ModelVersion

# MLflow is imported where it is used: importing it takes about two seconds that a process
# which does not touch the store (``recsys train --help``, ``recsys ingest``) should not pay.

EXPERIMENT = "movielens-recommender"
# MLflow 3's UI opens an experiment on the page of its kind; without this tag it guesses a
# GenAI experiment and shows an empty traces overview instead of the training runs.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
REGISTERED_MODEL = "movielens-recommender"
CHAMPION, CHALLENGER = "champion", "challenger"
REFERENCE_DATASET = "ml-100k"  # its champion is plain ``@champion``
REPO = Path(__file__).resolve().parents[2]
SERVING_MODEL = REPO / "tasks" / "train" / "serving_model.py"
LIBRARY = REPO / "recommender"
SERVING_REQUIREMENTS = ("mlflow", "numpy", "scipy", "scikit-learn", "pandas", "pyarrow", "polars")


def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store (default: SQLite under the project home)."""
    import mlflow

    uri = settings.resolved_mlflow_tracking_uri
    if settings.mlflow_tracking_uri is None:
        (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    # MLflow exports the URIs it is given as MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, which
    # Settings reads as the user's choice: left so, every later load_settings() of this process
    # would take the embedded store for a configured one, stay on it when RECSYS_HOME changes
    # and create the experiment without the project's artifact location.
    with environment_unchanged("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


SQLITE = "sqlite:///"


def store_stamp(settings: Settings) -> str | None:
    """A fingerprint of the MLflow store's content that every write to it changes, read
    without MLflow: for a local SQLite store (the embedded default), its file's identity, size,
    modification time and SQLite's change counter (and its write-ahead log's, if any). None
    for any other store (a tracking server's content cannot be fingerprinted from here) and
    for a file that does not exist.

    What was read from the store while its stamp is unchanged still holds, so a cached rerun
    checks the store without importing MLflow (two to three seconds) or opening it."""
    uri = settings.resolved_mlflow_tracking_uri
    if not uri.startswith(SQLITE):
        return None
    path = Path(uri.removeprefix(SQLITE).split("?", 1)[0]).expanduser().resolve()
    parts = [str(path)]
    for file in (path, path.with_name(path.name + "-wal")):
        try:
            with file.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                header = handle.read(28)  # SQLite's file change counter: bytes 24-27
        except FileNotFoundError:
            if file == path:
                return None
            continue
        parts.append(
            f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{header[24:].hex()}"
        )
    return "|".join(parts)


def experiment_id(client: MlflowClient, settings: Settings) -> str:
    """The project's experiment, created on first use (local artifacts by default) and marked
    as model training, so that the MLflow UI opens it on its runs."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG) is None:  # made before the tag was set
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return str(found.experiment_id)
    location = settings.mlflow_artifact_location if settings.mlflow_tracking_uri is None else None
    try:
        return str(
            client.create_experiment(
                EXPERIMENT,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )  # fmt: skip
        )
    except MlflowException:  # created meanwhile by a concurrent run
        return str(client.get_experiment_by_name(EXPERIMENT).experiment_id)  # type: ignore[union-attr]


LOCAL_UI = "http://127.0.0.1:5000"  # where ``mlflow ui`` serves by default


def experiment_url(tracking_uri: str, experiment: str) -> str:
    """The experiment's page in the MLflow UI, on its training runs: MLflow 3.17's UI picks the
    page from a global GenAI / model-training switch (``workflowType``, kept in the browser)
    before the experiment's kind tag, so the link sets it. A local store's UI is
    ``mlflow ui`` at its default address."""
    base = (
        tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    )
    return f"{base}/#/experiments/{experiment}?workflowType=machine_learning"


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def start_sweep_run(
    client: MlflowClient, experiment: str, tags: dict[str, str], grid: dict[str, Any]
) -> str:
    """The parent run of one sweep, with the grid as its parameters."""
    from mlflow.entities import Param

    run = client.create_run(
        experiment, run_name=f"sweep {tags['dataset']}", tags={**tags, "run_kind": "sweep"}
    )
    client.log_batch(run.info.run_id, params=[Param(k, json.dumps(v)) for k, v in grid.items()])
    return str(run.info.run_id)


def log_configurations(
    client: MlflowClient,
    experiment: str,
    parent_run_id: str,
    records: list[dict[str, Any]],
    tags: dict[str, str],
) -> dict[tuple[Any, ...], str]:
    """One nested run per configuration: params, the mean over folds of each metric, and each
    fold's value as ``fold_<metric>`` at step ``fold``."""
    from mlflow.entities import Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["kind"], record["n_clusters"], record["n_neighbors"]), []).append(
            record
        )
    run_ids = {}
    for key, folds in groups.items():
        name = "-".join(str(part) for part in key if part is not None)
        run = client.create_run(
            experiment, run_name=name, tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id}
        )
        client.log_batch(
            run.info.run_id,
            metrics=_fold_metrics(folds),
            params=[Param(k, str(v)) for k, v in folds[0]["params"].items()],
        )
        client.set_terminated(run.info.run_id)
        run_ids[key] = str(run.info.run_id)
    return run_ids


def _fold_metrics(folds: list[dict[str, Any]]) -> list[Metric]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for name in (*METRICS, "fit_seconds", "predict_seconds"):
        values = [(r["fold"], float(r[name])) for r in folds if _finite(r[name])]
        # (not the same key: MLflow shows a metric's value at its highest step)
        metrics += [Metric(f"fold_{name}", value, now, fold) for fold, value in values]
        if values:
            metrics.append(Metric(name, sum(v for _, v in values) / len(values), now, 0))
    return metrics


def _finite(value: Any) -> bool:
    return value is not None and value == value and abs(float(value)) != float("inf")


def log_sweep_artifacts(
    client: MlflowClient, run_id: str, figures: dict[str, Figure], table: pl.DataFrame
) -> None:
    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"plots/{name}.png")
    client.log_text(run_id, table.write_csv(), "sweep.csv")


@dataclass(frozen=True)
class Champion:
    """A registered model version and the alias it took."""

    version: str
    alias: str
    run_id: str
    model_uri: str
    metric: str
    value: float


def log_model_version(
    client: MlflowClient,
    experiment: str,
    parent_run_id: str,
    model: RecommenderModel[Any],
    titles: pl.DataFrame,
    summary: dict[str, Any],
    tags: dict[str, str],
) -> tuple[str, str]:
    """Log the refitted model as an ``mlflow.pyfunc`` model from code; returns (run, uri)."""
    import mlflow
    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run = client.create_run(
        experiment,
        run_name="champion candidate",
        tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id},
    )
    run_id = str(run.info.run_id)
    client.log_batch(
        run_id,
        metrics=[
            Metric(k, float(v), int(time.time() * 1000), 0) for k, v in summary["metrics"].items()
        ],
        params=[Param(k, str(v)) for k, v in summary["params"].items()],
    )
    with tempfile.TemporaryDirectory() as folder:
        model_path, titles_path = Path(folder) / "model.pkl", Path(folder) / "titles.parquet"
        model_path.write_bytes(pickle.dumps(model))
        titles.select("item_id", "title").write_parquet(titles_path)
        with mlflow.start_run(run_id=run_id):  # this thread only; ended on leaving
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(SERVING_MODEL),
                artifacts={"model": str(model_path), "titles": str(titles_path)},
                code_paths=[str(LIBRARY)],
                signature=serving_signature(),
                input_example=pl.DataFrame({"user_id": [1], "n": [5]}).to_pandas(),
                pip_requirements=[f"{p}=={installed_version(p)}" for p in SERVING_REQUIREMENTS],
            )
    return run_id, str(info.model_uri)


def serving_signature() -> Any:
    """The registered model's signature: user ids (and n) in, ranked items out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("long", "user_id"), ColSpec("long", "n", required=False)]),
        outputs=Schema(
            [
                ColSpec("long", "user_id"),
                ColSpec("long", "rank"),
                ColSpec("long", "item_id"),
                ColSpec("string", "title"),
                ColSpec("double", "score"),
            ]
        ),
    )


def alias_for(role: str, dataset: str) -> str:
    """``champion``/``challenger`` of the reference dataset, ``champion-ml-1m`` of others:
    models of different datasets (other users, items and rating scales) never compete."""
    return role if dataset == REFERENCE_DATASET else f"{role}-{dataset}"


@dataclass(frozen=True)
class Comparison:
    """A challenger against the champion on the folds both were evaluated on."""

    better: bool
    folds: tuple[int, ...]
    challenger: float | None
    champion: float | None
    champion_version: str | None
    reason: str


def register_and_promote(
    client: MlflowClient,
    run_id: str,
    model_uri: str,
    metric: str,
    value: float,
    tags: dict[str, str],
    per_fold: dict[int, float] | None = None,
    description: str = "",
) -> Champion:
    """Register the model; it becomes its dataset's champion (``tags["dataset"]``, default the
    reference set) only if it beats that dataset's current champion: on the folds both were
    evaluated on when ``per_fold`` (fold -> ``metric``) is given, else by ``value``. The
    version's description is ``description`` and the outcome of the comparison."""
    import mlflow

    dataset = tags.get("dataset", REFERENCE_DATASET)
    comparison = (
        compare_on_folds(client, metric, per_fold, dataset)
        if per_fold is not None
        else compare_by_value(client, metric, value, dataset)
    )
    folds_tag = {"cv_folds": ",".join(map(str, sorted(per_fold)))} if per_fold else {}
    registered = mlflow.register_model(
        model_uri, REGISTERED_MODEL, tags={**tags, **folds_tag, f"cv_{metric}": str(value)}
    )
    version = str(registered.version)
    role = CHAMPION if comparison.better else CHALLENGER
    alias = alias_for(role, dataset)
    client.set_registered_model_alias(REGISTERED_MODEL, alias, version)
    client.set_model_version_tag(REGISTERED_MODEL, version, "selection_metric", metric)
    outcome = f"Registered as {alias}: {comparison.reason}."
    text = f"{description}\n\n{outcome}" if description else outcome
    client.update_model_version(REGISTERED_MODEL, version, description=text)
    return Champion(version, alias, run_id, f"models:/{REGISTERED_MODEL}/{version}", metric, value)


def compare_by_value(
    client: MlflowClient, metric: str, value: float, dataset: str = REFERENCE_DATASET
) -> Comparison:
    """For a model without per-fold figures (uploaded, say): its ``value`` against the
    champion's ``cv_<metric>`` tag."""
    current = champion_model_version(client, dataset)
    better = beats_champion(client, metric, value, dataset)
    figure = current.tags.get(f"cv_{metric}") if current is not None else None
    if figure is None:
        return Comparison(better, (), value, None, None, "no champion figure to beat")
    return Comparison(
        better, (), value, float(figure), str(current.version),  # type: ignore[union-attr]
        f"{metric} {value:.4f} against champion v{current.version}'s {float(figure):.4f}",  # type: ignore[union-attr]
    )  # fmt: skip


def compare_on_folds(
    client: MlflowClient, metric: str, per_fold: dict[int, float], dataset: str = REFERENCE_DATASET
) -> Comparison:
    """The challenger's mean ``metric`` over the folds the champion was also evaluated on,
    against the champion's mean over the same folds (its ``fold_<metric>`` figures in MLflow).
    No shared fold: no comparison, so the challenger does not win. A champion without any
    per-fold figure (uploaded, not swept) is compared by its ``cv_<metric>`` tag."""
    current = champion_model_version(client, dataset)
    if current is None:
        return Comparison(True, tuple(sorted(per_fold)), None, None, None, "no champion yet")
    theirs = champion_fold_metrics(client, current, metric)
    version = str(current.version)
    if not theirs:  # registered without a sweep (uploaded): its stated figure is all there is
        mine = sum(per_fold.values()) / len(per_fold)
        by_value = compare_by_value(client, metric, mine, dataset)
        reason = f"champion v{version} has no per-fold figures; {by_value.reason}"
        return Comparison(by_value.better, (), mine, by_value.champion, version, reason)
    shared = tuple(sorted(set(per_fold) & set(theirs)))
    if not shared:
        return Comparison(False, (), None, None, version,
                          f"no fold in common with champion v{version} to compare {metric} on")  # fmt: skip
    mine = sum(per_fold[f] for f in shared) / len(shared)
    champion = sum(theirs[f] for f in shared) / len(shared)
    better = mine < champion if metric in LOWER_IS_BETTER else mine > champion
    folds = ", ".join(map(str, shared))
    reason = f"{metric} {mine:.4f} against champion v{version}'s {champion:.4f} on folds {folds}"
    return Comparison(better, shared, mine, champion, version, reason)


def champion_fold_metrics(
    client: MlflowClient, version: ModelVersion, metric: str
) -> dict[int, float]:
    """Fold -> ``metric`` of the sweep configuration a registered version was refitted from:
    the ``fold_<metric>`` steps of its nested run (tag ``configuration_run_id``, or found
    beside the version's run under the same sweep by its parameters)."""
    run_id = version.tags.get("configuration_run_id") or configuration_run_of(
        client, str(version.run_id)
    )
    if run_id is None:
        return {}
    history = client.get_metric_history(run_id, f"fold_{metric}")
    return {int(m.step): float(m.value) for m in history}


def configuration_run_of(client: MlflowClient, candidate_run_id: str) -> str | None:
    """The nested sweep run with the same parameters as a refitted model's run."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    candidate = client.get_run(candidate_run_id)
    parent = candidate.data.tags.get(MLFLOW_PARENT_RUN_ID)
    if parent is None:
        return None
    siblings = client.search_runs(
        [candidate.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'",
        max_results=1000,
    )
    for run in siblings:
        if run.info.run_id != candidate_run_id and run.data.params == candidate.data.params:
            return str(run.info.run_id)
    return None


def identical_version(
    client: MlflowClient, identity: dict[str, str], dataset: str = REFERENCE_DATASET
) -> ModelVersion | None:
    """The dataset's champion or challenger when its ``identity`` tags (dataset version,
    configuration, code version) are all equal to ``identity``: the same model again."""
    from mlflow.exceptions import MlflowException

    for role in (CHAMPION, CHALLENGER):
        try:
            version = client.get_model_version_by_alias(REGISTERED_MODEL, alias_for(role, dataset))
        except MlflowException:
            continue
        if all(version.tags.get(key) == value for key, value in identity.items()):
            return version
    return None


def champion_model_version(
    client: MlflowClient, dataset: str = REFERENCE_DATASET
) -> ModelVersion | None:
    """The registered version holding the dataset's champion alias, if any."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(REGISTERED_MODEL, alias_for(CHAMPION, dataset))
    except MlflowException:
        return None


def beats_champion(
    client: MlflowClient, metric: str, value: float, dataset: str = REFERENCE_DATASET
) -> bool:
    """True when the dataset has no champion, or it has no ``metric`` figure, or ``value`` is
    better."""
    current = champion_model_version(client, dataset)
    figure = current.tags.get(f"cv_{metric}") if current is not None else None
    if figure is None:
        return True
    return value < float(figure) if metric in LOWER_IS_BETTER else value > float(figure)


def current_champion(client: MlflowClient, dataset: str = REFERENCE_DATASET) -> str | None:
    """The version number holding the dataset's champion alias, if any."""
    current = champion_model_version(client, dataset)
    return str(current.version) if current is not None else None


def export_to_lake(lake: Lake, champion: Champion, summary: dict[str, Any]) -> str:
    """Copy the model's files and a JSON of its metrics and parameters to the lake."""
    import mlflow

    prefix = f"models/{REGISTERED_MODEL}/v{champion.version}"
    with tempfile.TemporaryDirectory() as folder:
        local = Path(mlflow.artifacts.download_artifacts(champion.model_uri, dst_path=folder))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            with open(path, "rb") as handle:
                lake.put_stream(f"{prefix}/{path.relative_to(local).as_posix()}", handle)
    lake.put_json(
        f"{prefix}/model.json",
        {
            "name": REGISTERED_MODEL,
            "version": champion.version,
            "alias": champion.alias,
            "run_id": champion.run_id,
            "selection_metric": champion.metric,
            **summary,
        },
    )
    return lake.uri(prefix)
