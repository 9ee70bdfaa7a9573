"""A reset MLflow store at the same address: the train flow's cached records of runs and
versions it no longer holds are made again, not trusted (issue 21.6)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.synth import SyntheticSize
from flows.ingest import ingest
from flows.train import train
from flows.transform import transform
from tasks.config import load_settings
from tasks.train.tracking import REGISTERED_MODEL, configure_mlflow
from tests.conftest import settled_task_states, synthetic_project

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL = SyntheticSize(ratings=2000, users=40, items=90)
GRID = {"kinds": ["kmeans_knn", "bias"], "n_clusters": [1], "n_neighbors": [5], "folds": [1],
        "register_model": True, "cold_start_folds": 0}  # fmt: skip


@pytest.fixture
def project(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Path]:
    """A project home of its own (a store another test reset stays open in MLflow's cache)."""
    with synthetic_project(tmp_path_factory, postgres_server, "reset", SMALL, 41) as made:
        home, _, folder = made
        transform(raw=ingest(source=str(folder)))
        yield home


def test_a_reset_mlflow_store_gets_the_sweep_and_the_model_again(project: Path) -> None:
    first = train(**GRID)
    shutil.rmtree(project / "mlflow")  # the store reset; Prefect's caches still name its runs

    second = train(**GRID)

    client = configure_mlflow(load_settings())
    assert first.version is not None and second.version is not None
    assert client.get_model_version(REGISTERED_MODEL, second.version).run_id == second.run_id
    assert client.get_run(str(second.sweep_run_id)).info.run_id == second.sweep_run_id


def test_a_cached_rerun_asks_the_store_again_only_after_it_changed(project: Path) -> None:
    train(**GRID)

    unchanged = train(**GRID, return_state=True)  # the first rerun: the store as train left it
    configure_mlflow(load_settings()).set_registered_model_tag(REGISTERED_MODEL, "note", "edit")
    changed = train(**GRID, return_state=True)

    assert settled_task_states(unchanged, "record_sweep") == ["Cached"]
    assert settled_task_states(unchanged, "run_in_store") == ["Cached", "Cached"]
    assert settled_task_states(unchanged, "version_in_registry") == ["Cached"]
    assert settled_task_states(changed, "record_sweep") == ["Cached"]
    assert settled_task_states(changed, "run_in_store") == ["Cached", "Completed"]
    assert settled_task_states(changed, "version_in_registry") == ["Completed"]
