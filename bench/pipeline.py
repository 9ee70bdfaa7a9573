"""The whole pipeline on ml-100k in a fresh project home: cold, then cached against Prefect's
temporary server, then cached against the project's running server (`recsys server start`).

    python bench/pipeline.py [--data ../shared/data/ml-100k]

Each run is its own process, as `recsys run` runs for a user. Prints the wall time and peak RSS
of each run, the time of each stage (the subflow runs as the Prefect API recorded them), and
Prefect's own share: the process time outside the pipeline flow run (imports, the temporary
API's start and stop, or the running server's look-up). Then Prefect's floor: a flow of the
same shape that does nothing but make as many cached task runs, against the same server. Goals
(issue 20): a cached run at most 10% of a cold one, and at most 3 s against a running server.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# Runs the pipeline the way `python flows/pipeline.py` does, then reads back from the Prefect
# API how long each flow run took, and prints it as JSON on the last line.
RUNNER = """
import json, resource, time
from prefect.client.orchestration import get_client
from flows.pipeline import pipeline
from tasks.orchestration import prefect_environment

from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

with prefect_environment():
    started = time.time()
    pipeline()
    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
        stages, ids = {}, []
        for run in client.read_flow_runs(limit=200):
            if run.start_time and run.end_time and run.start_time.timestamp() >= started - 1:
                seconds = (run.end_time - run.start_time).total_seconds()
                stages[names[run.flow_id]] = stages.get(names[run.flow_id], 0.0) + seconds
                ids.append(run.id)
        tasks, page = 0, 200  # the API's largest page
        runs_of = FlowRunFilter(id=FlowRunFilterId(any_=ids))
        while len(read := client.read_task_runs(flow_run_filter=runs_of, limit=page,
                                                offset=tasks)) == page:
            tasks += page
        tasks += len(read)
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"stages": stages, "peak_rss_mib": peak / 1024, "task_runs": tasks}))
"""

# Prefect's own floor for such a run: a flow with four subflows and as many cached task runs as
# the pipeline made (sys.argv[1]), doing nothing else, the way the pipeline runs.
FLOOR = """
import sys
import tasks.process_env
from prefect import flow, task
from prefect.cache_policies import INPUTS
from tasks.orchestration import prefect_environment

@task(cache_policy=INPUTS, persist_result=True)
def unit(stage: int, index: int) -> int:
    return index

@flow(name="prefect-floor-stage")
def stage(number: int, units: int) -> int:
    return sum(unit(number, i) for i in range(units))

@flow(name="prefect-floor")
def floor(task_runs: int) -> None:
    for number in range(4):
        stage(number, task_runs // 4 + (number < task_runs % 4))

with prefect_environment():
    floor(int(sys.argv[1]))
"""


def bench_env(home: Path, data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    # a busy machine starts the temporary server slower than Prefect's 20 s default allows
    return env | {"RECSYS_HOME": str(home), "RECSYS_MOVIELENS_SOURCE": str(data),
                  "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}  # fmt: skip


def run_pipeline(home: Path, data: Path) -> tuple[float, dict[str, float], float, int]:
    """Wall time, seconds per flow, peak RSS and task runs of one pipeline run."""
    wall, done = timed([sys.executable, "-c", RUNNER], home, data)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, figures["stages"], figures["peak_rss_mib"], figures["task_runs"]


def run_floor(home: Path, data: Path, task_runs: int) -> float:
    """Wall time of Prefect's floor (FLOOR) with ``task_runs`` cached task runs."""
    timed([sys.executable, "-c", FLOOR, str(task_runs)], home, data)  # fills its caches
    return timed([sys.executable, "-c", FLOOR, str(task_runs)], home, data)[0]


def timed(command: list[str], home: Path, data: Path) -> tuple[float, Any]:
    started = time.perf_counter()
    done = subprocess.run(
        command, env=bench_env(home, data), cwd=REPO, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stderr[-4000:]}")
    return wall, done


def server(home: Path, data: Path, action: str, *options: str) -> None:
    """``recsys server <action>`` for the project home (the local Prefect server)."""
    done = subprocess.run(
        [sys.executable, "-m", "cli", "server", action, *options], env=bench_env(home, data),
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"recsys server {action} failed:\n{done.stdout}{done.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        cold = run_pipeline(home, args.data)
        warm = run_pipeline(home, args.data)
        server(home, args.data, "start", "--port", str(free_port()))
        try:
            served = run_pipeline(home, args.data)
            served_again = run_pipeline(home, args.data)
            floor = run_floor(home, args.data, served[3])
        finally:
            server(home, args.data, "stop")
    runs = {"cold": cold, "cached": warm, "cached, server": served, "again": served_again}
    stage_names = ["ingest", "transform", "train", "report"]
    print(f"data: {args.data}")
    print(f"{'':28}" + "".join(f"{label:>16}" for label in runs))
    print(f"{'wall time (s)':28}" + "".join(f"{run[0]:16.1f}" for run in runs.values()))
    for name in stage_names:
        print(f"{'  ' + name + ' flow (s)':28}"
              + "".join(f"{run[1].get(name, 0.0):16.1f}" for run in runs.values()))  # fmt: skip
    for label, (wall, stages, *_) in runs.items():
        outside = wall - stages.get("pipeline", wall)
        print(f"Prefect start-up and teardown, {label}: {outside:.1f} s "
              f"({outside / wall:.0%} of the run)")  # fmt: skip
    print(f"{'peak RSS (MiB)':28}" + "".join(f"{run[2]:16.0f}" for run in runs.values()))
    print(f"cached / cold wall time: {warm[0] / cold[0]:.2f} (goal: at most 0.10)")
    print(f"cached against the running server: {served[0]:.1f} s, then {served_again[0]:.1f} s"
          " (goal: at most 3 s)")  # fmt: skip
    print(f"Prefect's floor against the running server (a flow, four subflows and "
          f"{served[3]} cached task runs doing nothing else): {floor:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
