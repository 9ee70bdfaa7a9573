"""Prefect's runtime for local runs: first runs started together on a fresh home."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOW = """
from prefect import flow
from tasks.orchestration import prefect_environment

@flow
def hello() -> int:
    return 1

with prefect_environment():
    assert hello() == 1
"""


@pytest.mark.slow
def test_first_runs_started_together_do_not_race_on_prefects_database(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    env["RECSYS_HOME"] = str(tmp_path / "home")
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", FLOW],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
    # the migrations ran once, before any temporary server: none of them found a table made
    assert not [out for out in outputs if "already exists" in out]
    assert list((tmp_path / "home" / "prefect").glob(".database-ready-*"))


@pytest.mark.slow
def test_a_flow_writes_nothing_outside_recsys_home(tmp_path: Path) -> None:
    home = tmp_path / "user"
    home.mkdir()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_", "MLFLOW_"))
    }
    env |= {"HOME": str(home), "RECSYS_HOME": str(home / "project")}

    done = subprocess.run(
        [sys.executable, str(REPO / "flows" / "health.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # no ~/.prefect (Prefect's home is set before it is imported), no ~/.config/mlflow
    assert sorted(p.name for p in home.iterdir()) == ["project"]
