"""prefect.yaml on a real Prefect server: deploy every flow, run ingest through a process worker,
and see the cron deployments scheduled. The server, the CLI and the worker are real processes
(the venv's ``prefect``), on loopback, with a temporary PREFECT_HOME; all are stopped after.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from bench.synth import SyntheticSize, write_ml100k
from tasks.lake import Lake
from tasks.orchestration import RESULT_STORAGE_BLOCK
from tests.conftest import S3Server, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
POOL = "recsys-test-pool"  # not the default: prefect.yaml takes RECSYS_WORK_POOL
SERVER_START_SECONDS = 90
WORKER_SECONDS = 180
SERVER_BUSY_RETRY = Retry(
    total=6, status_forcelist=[503], allowed_methods=None, backoff_factor=0.5,
    raise_on_status=False,
)  # fmt: skip
FLOW_NAMES = {"ingest", "transform", "train", "report", "pipeline", "health"}


@dataclass(frozen=True)
class PrefectServer:
    api_url: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for the CLI: this server, no project or cloud settings."""
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PREFECT_", "RECSYS_", "AWS_", "MLFLOW_", "THINGSBOARD_"))
        }
        return {
            **inherited,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **extra,
        }

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One call to the server's REST API. A 503 is retried, as Prefect's own client does:
        the server answers it for a busy SQLite file (its services write at startup)."""
        with requests.Session() as session:
            session.mount("http://", HTTPAdapter(max_retries=SERVER_BUSY_RETRY))
            response = session.request(method, f"{self.api_url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def cli(self, *args: str, cwd: Path = REPO, timeout: float = 180, **env: str) -> str:
        done = run_group([PREFECT, *args], cwd, self.env(**env), timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}"
        return done.stdout


def run_group(
    command: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group; on timeout the whole group is killed."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        stop_group(process)
    return subprocess.CompletedProcess(command, process.returncode, stdout, "")


def stop_group(process: subprocess.Popen[Any], grace: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader exited; children of the group may linger
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free loopback port, its scheduler looping every second."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home)
    env = server.env(
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="1",
    )
    env.pop("PREFECT_API_URL")
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for_health(server, process, home / "server.log")
        yield server
    finally:
        stop_group(process)
        log.close()


def wait_for_health(server: PrefectServer, process: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prefect server exited {process.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{server.api_url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_START_SECONDS} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer) -> dict[str, dict[str, Any]]:
    """The pool created and prefect.yaml deployed, as the README and the worker container do;
    returns ``flow/deployment`` -> the server's deployment record."""
    prefect_server.cli("work-pool", "create", POOL, "--type", "process")
    prefect_server.cli("--no-prompt", "deploy", "--all", RECSYS_WORK_POOL=POOL)
    flows = {f["id"]: f["name"] for f in prefect_server.api("POST", "/flows/filter", {})}
    return {
        f"{flows[d['flow_id']]}/{d['name']}": d
        for d in prefect_server.api("POST", "/deployments/filter", {})
    }


def scheduled_runs(server: PrefectServer, deployment_id: str) -> list[dict[str, Any]]:
    return server.api(  # type: ignore[no-any-return]
        "POST",
        "/flow_runs/filter",
        {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        },
    )


def test_every_flow_is_deployed_from_its_file_to_the_pool(
    deployed: dict[str, dict[str, Any]],
) -> None:
    assert {name.split("/")[0] for name in deployed} == FLOW_NAMES
    for name, deployment in deployed.items():
        flow = name.split("/")[0]
        assert deployment["entrypoint"] == f"flows/{flow}.py:{flow}"
        assert deployment["work_pool_name"] == POOL
        assert deployment["description"] and "movielens" in deployment["tags"]


def test_pull_step_keeps_the_project_folder_for_the_worker_to_say(
    deployed: dict[str, dict[str, Any]],
) -> None:
    step = {
        "prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $RECSYS_PROJECT_DIR }}"
        }
    }

    assert all(d["pull_steps"] == [step] for d in deployed.values())


def test_pipeline_runs_daily_and_train_weekly_in_utc(
    prefect_server: PrefectServer, deployed: dict[str, dict[str, Any]]
) -> None:
    crons = {
        name: [
            (s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in d["schedules"]
        ]
        for name, d in deployed.items()
        if d["schedules"]
    }
    assert crons == {
        "pipeline/daily": [("0 3 * * *", "UTC", True)],
        "train/weekly": [("0 4 * * 0", "UTC", True)],
    }
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = {name: scheduled_runs(prefect_server, deployed[name]["id"]) for name in crons}
        if all(runs.values()):
            break
        time.sleep(1)
    assert all(runs.values()), f"no scheduled runs yet: { {n: len(r) for n, r in runs.items()} }"
    for run in runs["pipeline/daily"]:
        assert run["expected_start_time"].split("T")[1].startswith("03:00:00")


def test_ingest_deployment_runs_through_a_process_worker(
    prefect_server: PrefectServer, deployed: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    source = write_ml100k(
        tmp_path / "ml-100k", SyntheticSize(ratings=300, users=20, items=40), seed=7
    )
    home = tmp_path / "recsys-home"
    elsewhere = tmp_path / "worker-cwd"  # the pull step, not the worker's folder, finds the code
    elsewhere.mkdir()

    started = prefect_server.cli(
        "deployment", "run", "ingest/on-demand", "--param", f"source={source}"
    )
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started)
    assert flow_run_id, started
    worker = run_group(
        [PREFECT, "worker", "start", "--pool", POOL, "--run-once"],
        elsewhere,
        prefect_server.env(
            RECSYS_HOME=str(home),
            RECSYS_PROJECT_DIR=str(REPO),
            PREFECT_RESULTS_PERSIST_BY_DEFAULT="true",
        ),
        WORKER_SECONDS,
    )

    run = prefect_server.api("GET", f"/flow_runs/{flow_run_id.group(1)}")
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{worker.stdout}"
    lake = Lake(url=(home / "lake").resolve().as_uri())
    manifests = [key for key in lake.list("raw/ml-100k") if key.endswith("manifest.json")]
    assert len(manifests) == 1
    assert lake.get_json(manifests[0])["source"] == str(source)


def test_worker_container_entrypoint_saves_results_block_creates_pool_deploys_and_serves(
    prefect_server: PrefectServer,
    deployed: dict[str, dict[str, Any]],
    s3_lake_env: str,
    s3_server: S3Server,
) -> None:
    """deployments/worker-entrypoint.sh, the compose worker's command, run here without Docker."""
    port = free_port()
    process = subprocess.Popen(
        ["sh", str(REPO / "deployments" / "worker-entrypoint.sh")],
        cwd=REPO, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=prefect_server.env(
            RECSYS_PROJECT_DIR=str(REPO), RECSYS_WORK_POOL="entrypoint-pool",
            RECSYS_LAKE_URL=s3_lake_env, RECSYS_S3_ENDPOINT_URL=s3_server.endpoint_url,
            AWS_ACCESS_KEY_ID=s3_server.access_key, AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
            PREFECT_WORKER_WEBSERVER_PORT=str(port),
        ),
    )  # fmt: skip
    try:
        healthy = wait_for_worker_health(port, process, timeout=WORKER_SECONDS)
    finally:
        stop_group(process)
    output = process.stdout.read() if process.stdout else ""
    assert healthy, output

    pool = prefect_server.api("GET", "/work_pools/entrypoint-pool")
    pooled = prefect_server.api(
        "POST", "/deployments/filter", {"work_pools": {"name": {"any_": ["entrypoint-pool"]}}}
    )
    block = prefect_server.api(
        "GET", f"/block_types/slug/s3-bucket/block_documents/name/{RESULT_STORAGE_BLOCK}"
    )
    assert pool["type"] == "process"
    assert len(pooled) == len(deployed)
    assert all(d["pull_steps"] == deployed[next(iter(deployed))]["pull_steps"] for d in pooled)
    assert block["data"]["bucket_name"] == s3_lake_env.removeprefix("s3://").split("/")[0]
    assert block["data"]["bucket_folder"] == "lake/prefect-results"


def wait_for_worker_health(port: int, process: subprocess.Popen[Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(1)
    return False
