"""The train flow end to end: sweep -> MLflow runs -> registry -> PostgreSQL -> served model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import polars as pl
import pytest
from mlflow import MlflowClient
from polars.testing import assert_frame_equal

from bench.synth import SyntheticSize
from flows.ingest import ingest
from flows.train import train
from flows.transform import transform
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.train.sweep import ChampionRecord
from tasks.train.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    REGISTERED_MODEL,
    champion_model_version,
    compare_on_folds,
    configure_mlflow,
    current_champion,
    experiment_url,
    register_and_promote,
)
from tasks.train.units import COLD_START_KS, COLD_START_METHODS, display_name
from tasks.warehouse.queries import read_table
from tests.conftest import free_port, synthetic_project, task_run_states

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL = SyntheticSize(ratings=3000, users=60, items=120)
GRID: dict[str, Any] = {
    "kinds": ["kmeans_knn", "bias", "popularity"],
    "n_clusters": [1, 2],
    "n_neighbors": [5, 10],
    "folds": [1, 2],
    "register_model": True,  # a run on two folds and a small grid registers only when asked
}


@dataclass
class Trained:
    home: Path
    database_url: str
    first: Any  # the flow's final state
    champion: ChampionRecord


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Trained]:
    """A project home with a synthetic dataset transformed, then trained once."""
    with synthetic_project(tmp_path_factory, postgres_server, "train", SMALL, 31) as project:
        home, url, folder = project
        transform(raw=ingest(source=str(folder)))
        first = train(**GRID, return_state=True)
        yield Trained(home, url, first, first.result())


def client() -> MlflowClient:
    return configure_mlflow(load_settings())


def sweep_runs() -> list[Any]:
    experiment = client().get_experiment_by_name("movielens-recommender")
    assert experiment is not None
    return client().search_runs([experiment.experiment_id], max_results=1000)


def test_every_configuration_is_a_nested_run_with_fold_steps(trained: Trained) -> None:
    runs = sweep_runs()
    parents = [r for r in runs if r.info.run_name.startswith("sweep")]
    nested = [
        r for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
        and r.info.run_name != "champion candidate"
    ]  # fmt: skip

    assert len(parents) == 1
    # kmeans_knn: 2 cluster counts x 2 neighbour counts; bias and popularity: one each
    assert sorted(r.info.run_name for r in nested) == [
        "bias", "kmeans_knn-1-10", "kmeans_knn-1-5", "kmeans_knn-2-10", "kmeans_knn-2-5",
        "popularity",
    ]  # fmt: skip
    knn = next(r for r in nested if r.info.run_name == "kmeans_knn-1-10")
    history = client().get_metric_history(knn.info.run_id, "fold_rmse")
    per_fold = {m.step: m.value for m in history}
    assert sorted(per_fold) == [1, 2]
    # the run's rmse is the mean over folds (the value MLflow shows and searches)
    assert knn.data.metrics["rmse"] == pytest.approx(sum(per_fold.values()) / 2)
    assert knn.data.params["n_neighbors"] == "10" and knn.data.params["n_clusters"] == "1"
    assert knn.data.tags["dataset_version"] and knn.data.tags["git_commit"]
    for key in ("mae", "precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "coverage",
                "fit_seconds", "predict_seconds"):  # fmt: skip
        assert key in knn.data.metrics


def test_sweep_artifacts_are_on_the_parent_run(trained: Trained) -> None:
    parent = next(r for r in sweep_runs() if r.info.run_name.startswith("sweep"))

    names = {a.path for a in client().list_artifacts(parent.info.run_id, "plots")}

    # (no NDCG@10 heatmap: the tuned model's ranking ignores clusters and neighbours, so it
    # would be one value in every cell)
    assert names == {
        "plots/heatmap_rmse.png", "plots/cluster_tradeoff.png", "plots/elbow.png",
        "plots/cluster_sizes.png", "plots/model_comparison.png", "plots/cold_start.png",
    }  # fmt: skip
    table = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep.csv")
    assert table.splitlines()[0].startswith("kind,n_clusters,n_neighbors,folds,rmse")
    assert len(table.splitlines()) == 1 + 6


def test_first_model_becomes_champion(trained: Trained) -> None:
    version = client().get_model_version_by_alias(REGISTERED_MODEL, "champion")

    assert (trained.champion.version, trained.champion.alias) == ("1", "champion")
    assert str(version.version) == "1"
    assert float(version.tags["cv_rmse"]) == pytest.approx(trained.champion.value)


def test_recommendations_for_every_user(trained: Trained) -> None:
    rows = read_table(
        trained.database_url,
        "SELECT user_id, count(*) AS n, min(rank) AS first, max(rank) AS last"
        " FROM serving.recommendations WHERE model_version = '1' GROUP BY user_id",
    )

    unrated = read_table(
        trained.database_url,
        "SELECT user_id, (SELECT count(DISTINCT item_id) FROM movielens.ratings) - count(*)"
        " AS unrated FROM movielens.ratings GROUP BY user_id",
    )
    expected = {u: min(10, n) for u, n in unrated.iter_rows()}
    assert rows.height == SMALL.users
    assert {u: n for u, n in rows.select("user_id", "n").iter_rows()} == expected
    assert set(rows["first"]) == {1}
    assert rows["last"].to_list() == rows["n"].to_list()
    rated = read_table(
        trained.database_url,
        "SELECT count(*) AS n FROM serving.recommendations s JOIN movielens.ratings r"
        " USING (user_id, item_id)",
    )
    assert rated["n"][0] == 0  # never an item the user has rated


def test_model_files_and_metrics_are_in_the_lake(trained: Trained) -> None:
    lake = Lake.from_settings(load_settings())
    prefix = f"models/{REGISTERED_MODEL}/v1"

    summary = lake.get_json(f"{prefix}/model.json")

    assert f"{prefix}/MLmodel" in lake.list(prefix)
    run_params = client().get_run(trained.champion.run_id).data.params
    assert summary["version"] == "1"
    assert {k: str(v) for k, v in summary["params"].items()} == run_params
    assert summary["metrics"]["rmse"] == pytest.approx(trained.champion.value)


def test_summary_artifact_in_prefect(trained: Trained) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as prefect:
        artifacts = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-summary"]))
        )

    assert artifacts and "## Champion: `movielens-recommender` version 1" in str(artifacts[0].data)


def test_rerun_is_all_cached(trained: Trained) -> None:
    rerun = train(**GRID, return_state=True)

    # Prefect 3 records task states from events, a moment after the flow returns
    deadline = time.monotonic() + 15
    while True:
        states = task_run_states(rerun)
        other = {name for name, runs in states.items() if set(runs) != {"Cached"}}
        if not other or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert other == set()
    assert len(states["evaluate_unit"]) == 4 + 2 + 2


def test_widening_the_grid_runs_only_new_tasks(trained: Trained) -> None:
    before = registered_versions()
    wider = train(**{**GRID, "n_clusters": [1, 2, 4]}, return_state=True)

    units = task_run_states(wider)["evaluate_unit"]
    assert sorted(units) == ["Cached"] * 8 + ["Completed"] * 2
    # the same best configuration of the same data and code is the champion again: it is not
    # registered as a new version (it was registered as a challenger before issue 20)
    assert (wider.result().version, wider.result().alias) == (None, None)
    assert wider.result().champion_version == "1"
    assert "version 1 is the same model" in wider.result().outcome
    assert registered_versions() == before


def registered_versions() -> list[str]:
    return sorted(
        str(v.version) for v in client().search_model_versions(f"name='{REGISTERED_MODEL}'")
    )


def test_a_subset_fold_run_is_recorded_but_not_registered(trained: Trained) -> None:
    before = registered_versions()
    sweeps_before = len([r for r in sweep_runs() if r.info.run_name.startswith("sweep")])
    asked = {k: v for k, v in GRID.items() if k != "register_model"}

    partial = train(**{**asked, "folds": [1], "n_neighbors": [5]})

    assert (partial.version, partial.alias, partial.lake_uri) == (None, None, None)
    assert partial.champion_version == "1"
    assert "not registered" in partial.outcome and "register_model=True" in partial.outcome
    assert registered_versions() == before
    sweeps = [r for r in sweep_runs() if r.info.run_name.startswith("sweep")]
    assert len(sweeps) == sweeps_before + 1  # recorded all the same


def champion_fold_rmse() -> dict[int, float]:
    version = champion_model_version(client())
    assert version is not None
    history = client().get_metric_history(version.tags["configuration_run_id"], "fold_rmse")
    return {m.step: m.value for m in history}


def test_a_challenger_is_compared_on_the_champions_figures_of_the_same_folds(
    trained: Trained,
) -> None:
    per_fold = champion_fold_rmse()
    mean = sum(per_fold.values()) / len(per_fold)
    # between the champion's fold-1 figure and its mean over folds 1 and 2: against the mean
    # it would win (or lose) where on fold 1 alone it loses (or wins)
    value = (per_fold[1] + mean) / 2

    comparison = compare_on_folds(client(), "rmse", {1: value}, "ml-100k")

    assert sorted(per_fold) == [1, 2]
    assert comparison.folds == (1,)
    assert comparison.champion == pytest.approx(per_fold[1])
    assert comparison.better == (value < per_fold[1])
    assert comparison.better != (value < mean)


def test_a_challenger_on_folds_the_champion_never_saw_does_not_win(trained: Trained) -> None:
    comparison = compare_on_folds(client(), "rmse", {5: 0.01}, "ml-100k")

    assert (comparison.better, comparison.folds) == (False, ())
    assert "no fold in common" in comparison.reason


def test_registered_versions_describe_the_model_its_data_and_metrics(trained: Trained) -> None:
    version = client().get_model_version(REGISTERED_MODEL, "1")

    text = version.description
    kind = client().get_run(trained.champion.run_id).data.params["kind"]  # bias, on this data
    assert text.startswith(f"{display_name(kind)} (kind {kind}; ")
    assert f"version {version.tags['dataset_version']}" in text and "3,000 ratings" in text
    assert "folds 1, 2" in text
    for label in ("RMSE", "MAE", "P@10", "R@10", "NDCG@10"):
        assert f"{label} " in text
    assert f"RMSE {trained.champion.value:.4f}" in text
    assert "Registered as champion: no champion yet." in text
    assert version.tags["code_version"] and version.tags["config"]


def test_the_experiment_opens_on_its_training_runs(trained: Trained) -> None:
    experiment = client().get_experiment_by_name("movielens-recommender")

    assert experiment is not None
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_cold_start_metrics_are_on_the_sweep_run(trained: Trained) -> None:
    assert trained.champion.sweep_run_id is not None
    run = client().get_run(trained.champion.sweep_run_id)

    metrics = run.data.metrics
    for k in COLD_START_KS:
        for method in COLD_START_METHODS:
            for metric in ("ndcg_at_10", "precision_at_10", "rmse"):
                assert 0 <= metrics[f"cold_start_{metric}_k{k}_{method}"] < 5
    table = pl.read_csv(
        mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/cold_start.csv").encode()
    )
    assert table.height == len(COLD_START_KS) * len(COLD_START_METHODS)
    assert set(table["folds"]) == {1}  # the sweep's first fold (cold_start_folds=1)
    row = table.filter((pl.col("k") == 3) & (pl.col("method") == "kmeans")).row(0, named=True)
    assert metrics["cold_start_ndcg_at_10_k3_kmeans"] == pytest.approx(row["ndcg_at_10"])


def test_alias_moves_only_on_improvement(trained: Trained) -> None:
    mlflow_client = client()
    run_id = trained.champion.run_id
    model_uri = f"models:/{REGISTERED_MODEL}/1"

    worse = register_and_promote(
        mlflow_client, run_id, model_uri, "rmse", trained.champion.value + 0.01, {}
    )
    better = register_and_promote(
        mlflow_client, run_id, model_uri, "rmse", trained.champion.value - 0.01, {}
    )

    assert worse.alias == "challenger"
    assert better.alias == "champion"
    champion = mlflow_client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert str(champion.version) == better.version


def test_another_datasets_model_never_competes_with_this_champion(trained: Trained) -> None:
    mlflow_client = client()
    before = mlflow_client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version
    model_uri = f"models:/{REGISTERED_MODEL}/1"
    # far better on its own (easier) dataset: it must not take ml-100k's alias
    other = register_and_promote(
        mlflow_client, trained.champion.run_id, model_uri, "rmse", 0.5, {"dataset": "ml-1m"}
    )

    assert other.alias == "champion-ml-1m"
    assert mlflow_client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version == before
    assert current_champion(mlflow_client, "ml-1m") == other.version


@contextmanager
def mlflow_command(what: str, args: list[str], ready: str) -> Iterator[int]:
    """``python -m mlflow <what> <args>`` on a free loopback port (``{port}`` in ``args``),
    once ``GET <ready>`` answers; stopped after the block. Yields the port."""
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": load_settings().resolved_mlflow_tracking_uri,
        # the server starts uvicorn by name: the interpreter's scripts must be on PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", *what.split(), *(a.format(port=port) for a in args)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=2)
                break
            except OSError:
                assert server.poll() is None, f"mlflow {what} exited"
                assert time.monotonic() < deadline, f"mlflow {what} did not start"
                time.sleep(0.5)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_mlflow_models_serve_answers(trained: Trained) -> None:
    serve = ["-m", f"models:/{REGISTERED_MODEL}@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", "{port}"]  # fmt: skip
    with mlflow_command("models serve", serve, "/ping") as port:
        body = json.dumps({"dataframe_split": {"columns": ["user_id", "n"], "data": [[1, 3]]}})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body.encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())

    predictions = answer["predictions"]
    assert [p["rank"] for p in predictions] == [1, 2, 3]
    assert {p["user_id"] for p in predictions} == {1}
    assert all(p["title"] for p in predictions)
    rated = read_table(
        trained.database_url, "SELECT item_id FROM movielens.ratings WHERE user_id = 1"
    )
    assert not {p["item_id"] for p in predictions} & set(rated["item_id"])


def chromium() -> str | None:
    return next(
        (found for name in ("chromium", "chromium-browser", "google-chrome")
         if (found := shutil.which(name))),
        None,
    )  # fmt: skip


@pytest.mark.slow
def test_the_mlflow_ui_opens_the_experiment_on_its_training_runs(
    trained: Trained, tmp_path: Path
) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("no headless Chromium (apt-get install chromium)")
    ui = ["--backend-store-uri", load_settings().resolved_mlflow_tracking_uri,
          "--host", "127.0.0.1", "--port", "{port}"]  # fmt: skip
    with mlflow_command("ui", ui, "/health") as port:
        experiment = client().get_experiment_by_name("movielens-recommender")
        assert experiment is not None
        url = experiment_url(f"http://127.0.0.1:{port}", experiment.experiment_id)
        browse = [browser, "--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-dev-shm-usage", "--virtual-time-budget=15000",
                  "--window-size=1400,900"]  # fmt: skip
        screenshot = tmp_path / "experiment.png"
        subprocess.run([*browse, f"--screenshot={screenshot}", url], capture_output=True,
                       timeout=180, check=True)  # fmt: skip
        dom = subprocess.run([*browse, "--dump-dom", url], capture_output=True, text=True,
                             timeout=180, check=True).stdout  # fmt: skip

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the runs table, not the GenAI overview ("Traces 0", "Detect Issues")
    assert "sweep ml-100k" in dom and "matching runs" in dom
    assert "Detect Issues" not in dom


def sweep_table_of(run: Any) -> pl.DataFrame:
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/sweep.csv")
    return pl.read_csv(text.encode()).drop("fit_seconds", "predict_seconds")


def test_dask_runner_gives_the_same_metrics_as_threads(trained: Trained) -> None:
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings
    from prefect_dask import DaskTaskRunner

    dask = DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": False,
                        "dashboard_address": None}
    )  # fmt: skip
    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}):
        on_dask = train.with_options(task_runner=dask)(**GRID, return_state=True)

    sweeps = sorted(
        (r for r in sweep_runs() if r.info.run_name.startswith("sweep")),
        key=lambda r: r.info.start_time,
    )
    assert set(task_run_states(on_dask)["evaluate_unit"]) == {"Completed"}
    # equal up to floating-point summation order
    assert_frame_equal(sweep_table_of(sweeps[-1]), sweep_table_of(sweeps[0]), rel_tol=1e-9)


@pytest.mark.realdata
def test_real_ml100k_small_grid(
    database_url: str, ml100k_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transform(raw=ingest(source=str(ml100k_dir)))

    champion = train(
        kinds=["kmeans_knn", "paper", "bias"],
        n_clusters=[1],
        n_neighbors=[40],
        folds=[1],
        register_model=True,
    )

    summary = Lake.from_settings(load_settings()).get_json(
        f"models/{REGISTERED_MODEL}/v{champion.version}/model.json"
    )
    assert summary["params"]["kind"] == "kmeans_knn"
    assert champion.value < 0.93  # fold u1, the hardest of the five
    runs = {r.info.run_name: r for r in sweep_runs()}
    assert runs["paper-40"].data.metrics["rmse"] > 1.0  # the paper's configuration: 1.03..1.06
    assert runs["bias"].data.metrics["rmse"] == pytest.approx(0.9533, abs=0.01)
    rows = read_table(
        database_url, "SELECT count(DISTINCT user_id) AS n FROM serving.recommendations"
    )
    assert rows["n"][0] == 943
