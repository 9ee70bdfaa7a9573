"""Two trainings that finish at once on one registry (issue 21.6): the registration is atomic,
so the second compares itself with the first and the two can never both become champion."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest

import tasks.train.tracking as tracking
from bench.synth import SyntheticSize
from flows.ingest import ingest
from flows.train import train
from flows.transform import transform
from tasks.config import load_settings
from tasks.train.sweep import ChampionRecord
from tasks.train.tracking import REGISTERED_MODEL, configure_mlflow
from tests.conftest import synthetic_project

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL = SyntheticSize(ratings=3000, users=60, items=120)
RENDEZVOUS_SECONDS = 8.0  # how long a comparison waits for the other training's


def race_grid(n_neighbors: int) -> dict[str, Any]:
    return {"kinds": ["kmeans_knn"], "n_clusters": [1], "n_neighbors": [n_neighbors],
            "folds": [1, 2], "register_model": True}  # fmt: skip


def test_two_trainings_registering_at_once_never_both_become_champion(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each training's comparison with the champion waits (up to RENDEZVOUS_SECONDS) until the
    other's has been made too. Without the registration lock both compare with no champion and
    both take the alias; with it, the second waits for the first's registration and is
    compared with it."""
    rendezvous = threading.Barrier(2, timeout=RENDEZVOUS_SECONDS)
    compare = tracking.compare_on_folds

    def compare_then_meet(*args: Any, **kwargs: Any) -> tracking.Comparison:
        comparison = compare(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):  # the other waits on the lock
            rendezvous.wait()
        return comparison

    monkeypatch.setattr(tracking, "compare_on_folds", compare_then_meet)
    with synthetic_project(tmp_path_factory, postgres_server, "race", SMALL, 53) as project:
        _, _, folder = project
        transform(raw=ingest(source=str(folder)))
        records: dict[int, ChampionRecord] = {}
        errors: list[BaseException] = []

        def training(n_neighbors: int) -> None:
            try:
                records[n_neighbors] = train(**race_grid(n_neighbors))
            except BaseException as error:  # noqa: BLE001 (re-raised by the test below)
                errors.append(error)

        threads = [threading.Thread(target=training, args=(k,)) for k in (5, 20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        assert not errors, errors
        client = configure_mlflow(load_settings())
        versions = sorted(client.search_model_versions(f"name = '{REGISTERED_MODEL}'"),
                          key=lambda v: int(v.version))  # fmt: skip
        champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")

    assert sorted(str(r.version) for r in records.values()) == [str(v.version) for v in versions]
    first, second = versions
    assert "Registered as champion: no champion yet." in first.description
    assert "no champion yet" not in second.description  # it saw the first's registration
    assert f"against champion v{first.version}'s" in second.description
    won = "Registered as champion:" in second.description
    assert str(champion.version) == str(second.version if won else first.version)
