"""The whole pipeline on ml-100k in a fresh project home: cold, then warm (everything cached).

    python bench/pipeline.py [--data ../shared/data/ml-100k]

Each run is its own process, as `python flows/pipeline.py` runs for a user. Prints the wall
time and peak RSS of each run, the time of each stage (the subflow runs as the Prefect API
recorded them), and Prefect's own share: the process time outside the pipeline flow run
(imports, the ephemeral API's start and stop).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs the pipeline the way `python flows/pipeline.py` does, then reads back from the Prefect
# API how long each flow run took, and prints it as JSON on the last line.
RUNNER = """
import json, resource, time
from prefect.client.orchestration import get_client
from flows.pipeline import pipeline
from tasks.orchestration import prefect_environment

with prefect_environment():
    started = time.time()
    pipeline()
    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
        stages = {}
        for run in client.read_flow_runs(limit=200):
            if run.start_time and run.end_time and run.start_time.timestamp() >= started - 1:
                seconds = (run.end_time - run.start_time).total_seconds()
                stages[names[run.flow_id]] = stages.get(names[run.flow_id], 0.0) + seconds
peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"stages": stages, "peak_rss_mib": peak / 1024}))
"""


def run_pipeline(home: Path, data: Path) -> tuple[float, dict[str, float], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSYS_", "PREFECT_"))}
    env |= {"RECSYS_HOME": str(home), "RECSYS_MOVIELENS_SOURCE": str(data)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER], env=env, cwd=REPO, capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the pipeline failed:\n{done.stderr[-4000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return wall, figures["stages"], figures["peak_rss_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cold = run_pipeline(Path(folder), args.data)
        warm = run_pipeline(Path(folder), args.data)
    stage_names = ["ingest", "transform", "train", "report"]
    print(f"data: {args.data}")
    print(f"{'':28}{'cold':>10}{'warm':>10}")
    print(f"{'wall time (s)':28}{cold[0]:10.1f}{warm[0]:10.1f}")
    for name in stage_names:
        print(f"{'  ' + name + ' flow (s)':28}{cold[1].get(name, 0.0):10.1f}"
              f"{warm[1].get(name, 0.0):10.1f}")  # fmt: skip
    for label, (wall, stages, _) in (("cold", cold), ("warm", warm)):
        outside = wall - stages.get("pipeline", wall)
        print(f"Prefect start-up and teardown, {label}: {outside:.1f} s "
              f"({outside / wall:.0%} of the run)")  # fmt: skip
    print(f"{'peak RSS (MiB)':28}{cold[2]:10.0f}{warm[2]:10.0f}")
    print(f"warm / cold wall time: {warm[0] / cold[0]:.2f}")


if __name__ == "__main__":
    main()
