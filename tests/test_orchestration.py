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


SLEEPER = """
import time
from prefect import flow, task
from tasks.config import load_settings
from tasks.orchestration import prefect_environment
from tasks.warehouse.connection import database_url

@task
def nap() -> None:
    print("napping", flush=True)
    time.sleep(600)

@flow
def sleeper() -> None:
    database_url(load_settings())  # starts the embedded PostgreSQL
    nap()

with prefect_environment():
    sleeper()
"""
QUICK = """
from prefect import flow
from tasks.config import load_settings
from tasks.orchestration import prefect_environment
from tasks.warehouse.connection import database_url

@flow
def quick() -> int:
    database_url(load_settings())
    return 1

with prefect_environment():
    assert quick() == 1
"""


def processes_of(home: Path) -> list[str]:
    """Command lines of the temporary Prefect servers and PostgreSQL servers of ``home``."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            line = " ".join(process.info["cmdline"] or [])
            ours = str(home / "postgres") in line or (
                "prefect.server.api.server:create_app" in line
                and process.environ().get("PREFECT_HOME") == str(home / "prefect")
            )
            if ours:
                found.append(line)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_the_next_run_cleans_up_what_a_killed_run_owned(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    env["RECSYS_HOME"] = str(home)
    killed = subprocess.Popen(
        [sys.executable, "-c", SLEEPER], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert killed.stdout is not None
    for line in killed.stdout:  # its temporary server and PostgreSQL are up once it naps
        if "napping" in line:
            break
    killed.kill()  # SIGKILL: nothing of its own cleanup runs
    killed.wait()
    left = processes_of(home)

    done = subprocess.run(
        [sys.executable, "-c", QUICK], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip

    assert len(left) == 2, left  # what the killed run left: its server and PostgreSQL
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert processes_of(home) == []  # the next run stopped both, as their last user
