"""The champion's comparison against a real (SQLite) MLflow store: on the folds both models
were evaluated on, from the champion's per-fold figures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from tasks.config import load_settings
from tasks.train.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    REGISTERED_MODEL,
    compare_on_folds,
    configure_mlflow,
    experiment_url,
    identical_version,
    store_stamp,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> MlflowClient:
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(REGISTERED_MODEL)
    return client


def champion_with_folds(
    client: MlflowClient, per_fold: dict[int, float], tags: dict[str, str] | None = None
) -> str:
    """A registered champion whose configuration run holds ``fold_rmse`` per fold (none: a
    version registered without a sweep, with only its ``cv_rmse`` tag)."""
    experiment = client.create_experiment(f"e{time.monotonic_ns()}")
    sweep = client.create_run(experiment).info.run_id
    configuration = client.create_run(experiment, tags={MLFLOW_PARENT_RUN_ID: sweep}).info.run_id
    now = int(time.time() * 1000)
    client.log_batch(configuration, metrics=[Metric("fold_rmse", v, now, f)
                                             for f, v in per_fold.items()])  # fmt: skip
    candidate = client.create_run(experiment).info.run_id
    version_tags = {"cv_rmse": "0.9", **(tags or {})}
    if per_fold:
        version_tags["configuration_run_id"] = configuration
    version = client.create_model_version(
        REGISTERED_MODEL, str(Path("/tmp/model")), run_id=candidate, tags=version_tags
    ).version
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", str(version))
    return str(version)


def test_compared_on_the_shared_folds_only(store: MlflowClient) -> None:
    champion_with_folds(store, {1: 0.90, 2: 0.80, 3: 0.85})

    # 0.88 loses to the champion's mean over its three folds (0.85) but beats its fold 1 (0.90)
    on_one = compare_on_folds(store, "rmse", {1: 0.88}, "ml-100k")
    on_two = compare_on_folds(store, "rmse", {1: 0.88, 2: 0.84}, "ml-100k")

    assert (on_one.better, on_one.folds, on_one.champion) == (True, (1,), pytest.approx(0.90))
    assert (on_two.better, on_two.folds, on_two.champion) == (False, (1, 2), pytest.approx(0.85))
    assert "on folds 1, 2" in on_two.reason


def test_no_shared_fold_is_no_win(store: MlflowClient) -> None:
    champion_with_folds(store, {1: 0.90, 2: 0.80})

    comparison = compare_on_folds(store, "rmse", {4: 0.1}, "ml-100k")

    assert (comparison.better, comparison.folds) == (False, ())


def test_a_champion_without_fold_figures_is_compared_by_its_stated_value(
    store: MlflowClient,
) -> None:
    version = champion_with_folds(store, {})

    better = compare_on_folds(store, "rmse", {1: 0.85, 2: 0.89}, "ml-100k")
    worse = compare_on_folds(store, "rmse", {1: 0.95}, "ml-100k")

    assert better.better and not worse.better
    assert f"champion v{version} has no per-fold figures" in better.reason


def test_identical_means_the_same_data_configuration_and_code(store: MlflowClient) -> None:
    identity = {"dataset_version": "v1", "config": '{"kind": "bias"}', "code_version": "c1"}
    version = champion_with_folds(store, {1: 0.9}, tags=identity)

    same = identical_version(store, identity, "ml-100k")
    newer_code = identical_version(store, {**identity, "code_version": "c2"}, "ml-100k")

    assert same is not None and str(same.version) == version
    assert newer_code is None


def test_the_experiment_link_opens_the_training_runs() -> None:
    assert experiment_url("http://mlflow:5000/", "7") == (
        "http://mlflow:5000/#/experiments/7?workflowType=machine_learning"
    )
    assert experiment_url("sqlite:///x.db", "1").startswith("http://127.0.0.1:5000/#/")
    assert (EXPERIMENT_KIND_TAG, EXPERIMENT_KIND) == (
        "mlflow.experimentKind", "custom_model_development"
    )  # fmt: skip


def test_configuring_the_embedded_store_leaves_the_environment_as_the_user_set_it(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(recsys_env / "first"))
    first = configure_mlflow(load_settings())
    monkeypatch.setenv("RECSYS_HOME", str(recsys_env / "second"))

    second = configure_mlflow(load_settings())

    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert load_settings().mlflow_tracking_uri is None  # still the embedded default
    assert first.tracking_uri == f"sqlite:///{recsys_env / 'first' / 'mlflow' / 'mlflow.db'}"
    assert second.tracking_uri == f"sqlite:///{recsys_env / 'second' / 'mlflow' / 'mlflow.db'}"


def test_a_store_the_user_set_stays_set(recsys_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{recsys_env / 'theirs.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    client = configure_mlflow(load_settings())

    assert client.tracking_uri == uri
    assert os.environ["MLFLOW_TRACKING_URI"] == uri


def test_the_store_stamp_changes_with_every_write_and_only_then(
    recsys_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings()
    assert store_stamp(settings) is None  # no store yet: nothing read from it may be reused
    client = configure_mlflow(settings)
    experiment = client.create_experiment("stamped")
    before = store_stamp(settings)

    assert before is not None and store_stamp(settings) == before  # reads leave it
    client.get_experiment(experiment)
    assert store_stamp(settings) == before
    client.set_experiment_tag(experiment, "note", "a write")
    after = store_stamp(settings)
    assert after is not None and after != before

    # another file at the same address (a store restored or replaced) is another stamp
    database = recsys_env / "mlflow" / "mlflow.db"
    copy = database.with_name("copy.db")
    copy.write_bytes(database.read_bytes())
    copy.replace(database)
    assert store_stamp(settings) not in (None, after)


def test_a_tracking_server_has_no_stamp(recsys_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")

    assert store_stamp(load_settings()) is None
