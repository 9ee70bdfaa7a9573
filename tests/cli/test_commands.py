"""``recsys`` as a user runs it: subprocesses on a fresh project home."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.request import Request, urlopen

import psutil
import pytest

from bench.synth import SyntheticSize, write_ml100k
from tests.cli.conftest import fresh_env, recsys
from tests.conftest import free_port

TINY = SyntheticSize(ratings=2_000, users=60, items=80)


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ml100k(tmp_path_factory.mktemp("cli-data") / "ml-100k", TINY, seed=3)


@pytest.mark.slow
def test_ingest_stores_a_local_folder_and_says_where(
    synthetic_folder: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"

    done = recsys("ingest", "--source", str(synthetic_folder), env=fresh_env(home), cwd=tmp_path)

    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"Raw ml-100k stored at {(home / 'lake').as_uri()}/raw/ml-100k/")
    assert last.endswith("files)")
    assert "nanobind" not in done.stderr


@pytest.mark.slow
def test_an_offline_download_ends_in_three_lines_without_retries(tmp_path: Path) -> None:
    home = tmp_path / "home"
    url = "http://nonexistent-host.invalid/ml-100k.zip"

    done = recsys("ingest", "--source", url, env=fresh_env(home), cwd=tmp_path)

    assert done.returncode == 1
    err = done.stderr.strip().splitlines()
    ours = err[next(i for i, line in enumerate(err) if line.startswith("recsys ingest failed")) :]
    assert ours == [
        f"recsys ingest failed: {url}: cannot resolve the host 'nonexistent-host.invalid'"
        " (offline?)",
        "  Set RECSYS_MOVIELENS_SOURCE to a local copy: the extracted folder or the zip",
        f"  Full traceback: {home / 'logs' / 'recsys.log'} (or rerun with --debug)",
    ]
    assert "Traceback" not in done.stderr and "Retry" not in done.stderr
    assert "Traceback" in (home / "logs" / "recsys.log").read_text()


@pytest.mark.slow
def test_a_stage_run_too_early_says_which_command_comes_first(tmp_path: Path) -> None:
    """A new user's ``recsys report`` and ``recsys train`` on a fresh home."""
    home = tmp_path / "home"

    report = recsys("report", env=fresh_env(home), cwd=tmp_path)
    train = recsys("train", "--folds", "1", env=fresh_env(home), cwd=tmp_path)

    assert (report.returncode, train.returncode) == (1, 1)
    told = [
        next(line for line in done.stderr.splitlines() if line.startswith(f"recsys {name} failed"))
        for name, done in (("report", report), ("train", train))
    ]
    assert told[0].endswith("train first (recsys train, or recsys run for the whole pipeline)")
    assert told[1].endswith(
        "the warehouse holds no ml-100k: load it first (recsys ingest, then recsys transform;"
        " or recsys run for the whole pipeline)"
    )


@pytest.mark.slow
def test_local_runs_use_the_projects_running_server(synthetic_folder: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = fresh_env(home)
    port = free_port()
    started = recsys("server", "start", "--port", str(port), env=env, cwd=tmp_path, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        status = recsys("server", "status", env=env, cwd=tmp_path)
        assert status.returncode == 0
        assert f"up at http://127.0.0.1:{port}" in status.stdout
        assert f"PREFECT_HOME={home / 'prefect'}" in status.stdout

        done = recsys("ingest", "--source", str(synthetic_folder), env=env, cwd=tmp_path)

        assert done.returncode == 0, done.stderr[-3000:]
        assert "Starting temporary server" not in done.stderr + done.stdout
        runs = flow_runs(f"http://127.0.0.1:{port}")
        assert [(run["name"], run["state_type"]) for run in runs] == [
            (runs[0]["name"], "COMPLETED")
        ]
        # its task runs are recorded in batches (PREFECT_SERVER_SETTINGS), within seconds
        pid = json.loads((home / "prefect" / "server.json").read_text())["pid"]
        assert (
            psutil.Process(pid).environ()["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"]
            == "100"
        )
        deadline = time.monotonic() + 20
        while len(task_runs := flow_runs(f"http://127.0.0.1:{port}", "task_runs")) < 2:
            assert time.monotonic() < deadline, task_runs
            time.sleep(0.5)
        assert {run["state_type"] for run in task_runs} == {"COMPLETED"}
        assert (home / "logs" / "prefect-server.log").is_file()
    finally:
        stopped = recsys("server", "stop", env=env, cwd=tmp_path)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    after = recsys("server", "status", env=env, cwd=tmp_path)
    assert after.returncode == 1 and "not running" in after.stdout
    assert not (home / "prefect" / "server.json").exists()


def flow_runs(url: str, kind: str = "flow_runs") -> list[dict[str, object]]:
    request = Request(f"{url}/api/{kind}/filter", data=b"{}", method="POST",
                      headers={"Content-Type": "application/json"})  # fmt: skip
    with urlopen(request, timeout=10) as response:
        runs: list[dict[str, object]] = json.load(response)
    return runs


@pytest.mark.slow
def test_a_flow_script_takes_the_commands_options(synthetic_folder: Path, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(repo / "flows" / "ingest.py"), "--source", str(synthetic_folder)],
        env=fresh_env(tmp_path / "home"), cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("Raw ml-100k stored at")
