"""Train-sweep benchmark: the default grid on ml-100k, all five folds, cold and cached.

    python bench/train_sweep.py [--data ../shared/data/ml-100k]

Runs `flows/transform.py` once to prepare a fresh project home, then `flows/train.py` twice
(cold, then the all-cached rerun), each as its own process the way a user runs it, plus an
empty flow to measure Prefect's own start-up. Prints per-configuration seconds from the sweep
table next to Surprise's KNNBaseline per-fold time, measured in the same run when the optional
`scikit-surprise` package imports.
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
sys.path.insert(0, str(REPO))

EMPTY_FLOW = """
from prefect import flow
from tasks.orchestration import prefect_environment

@flow
def empty() -> None:
    pass

with prefect_environment():
    empty()
"""


# Runs the train flow like `python flows/train.py`, then prints (last line, JSON) each task's
# summed run time and the flow run's own duration, as the Prefect API recorded them.
TRAIN_RUNNER = """
import json, time
from prefect.client.orchestration import get_client
from flows.train import train
from tasks.orchestration import prefect_environment

with prefect_environment():
    started = time.time()
    train()
    with get_client(sync_client=True) as client:
        tasks = {}
        runs, offset = [], 0
        while page := client.read_task_runs(limit=200, offset=offset):
            runs, offset = runs + page, offset + len(page)
        for run in runs:
            if run.start_time and run.end_time and run.start_time.timestamp() >= started - 1:
                name = run.name.rsplit("-", 1)[0]
                tasks[name] = tasks.get(name, 0.0) + (run.end_time - run.start_time).total_seconds()
        flows = [r for r in client.read_flow_runs(limit=10)
                 if r.start_time and r.start_time.timestamp() >= started - 1]
        flow_seconds = sum((r.end_time - r.start_time).total_seconds() for r in flows)
print(json.dumps({"tasks": tasks, "flow": flow_seconds}))
"""


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return time.perf_counter() - started, done.stdout + done.stderr


def sweep_table(home: Path) -> str:
    """The latest sweep table from the project's MLflow store."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["movielens-recommender"],
        filter_string="attributes.run_name LIKE 'sweep%'",
        order_by=["attributes.start_time DESC"],
    )
    return str(mlflow.artifacts.load_text(f"runs:/{runs.iloc[0]['run_id']}/sweep.csv"))


def surprise_seconds_per_fold(data: Path) -> float | None:
    try:
        from surprise import Dataset, KNNBaseline, Reader
    except ImportError:
        return None
    reader = Reader(line_format="user item rating timestamp", sep="\t")
    folds = [(str(data / f"u{i}.base"), str(data / f"u{i}.test")) for i in range(1, 6)]
    dataset = Dataset.load_from_folds(folds, reader=reader)
    from surprise.model_selection import PredefinedKFold

    seconds = []
    for train, test in PredefinedKFold().split(dataset):
        started = time.perf_counter()
        model = KNNBaseline(sim_options={"name": "pearson_baseline", "user_based": False},
                            verbose=False)  # fmt: skip
        model.fit(train)
        model.test(test)
        seconds.append(time.perf_counter() - started)
    return sum(seconds) / len(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    args = parser.parse_args()
    import polars as pl

    with tempfile.TemporaryDirectory(prefix="bench-train-", dir="/tmp") as folder:
        home = Path(folder) / "home"
        env = {**os.environ, "RECSYS_HOME": str(home),
               "RECSYS_MOVIELENS_SOURCE": str(args.data.resolve())}  # fmt: skip
        prepare, _ = run([sys.executable, "flows/transform.py"], env)
        startup, _ = run([sys.executable, "-c", EMPTY_FLOW], env)
        cold, cold_log = run([sys.executable, "-c", TRAIN_RUNNER], env)
        warm, log = run([sys.executable, "flows/train.py"], env)
        table = pl.read_csv(sweep_table(home).encode())
    surprise = surprise_seconds_per_fold(args.data)
    cached = log.count("Cached(type=COMPLETED)")
    print(f"transform (setup, not part of the sweep)   {prepare:7.1f} s")
    print(f"Prefect start-up (an empty flow)           {startup:7.1f} s")
    print(f"train, cold (default grid, 5 folds)        {cold:7.1f} s")
    print(f"train, rerun ({cached} tasks Cached)           {warm:7.1f} s   "
          f"rerun/cold {warm / cold:.2f}; beyond start-up "
          f"{max(warm - startup, 0) / max(cold - startup, 1e-9):.2f}")  # fmt: skip
    lines = [line for line in cold_log.splitlines() if line.startswith('{"tasks"')]
    breakdown = json.loads(lines[-1]) if lines else {}
    if breakdown:
        print(f"\nCold run: the train flow run itself {breakdown['flow']:.1f} s; task run seconds"
              " summed over runs (tasks overlap in the thread pool):")  # fmt: skip
        for name, seconds in sorted(breakdown["tasks"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:32}{seconds:8.1f} s")
    per_config = table.with_columns(
        (pl.col("fit_seconds") + pl.col("predict_seconds")).alias("s_per_fold")
    ).select("kind", "n_clusters", "n_neighbors", "rmse", "ndcg_at_10", "s_per_fold")
    print("\nPer configuration (mean over folds; KNN neighbour counts share one fit):")
    with pl.Config(tbl_rows=100, tbl_hide_dataframe_shape=True, float_precision=4):
        print(per_config)
    if surprise is None:
        print("\nSurprise KNNBaseline: not installed (pip install '.[compare]')")
    else:
        print(
            f"\nSurprise KNNBaseline (item, pearson_baseline): {surprise:.3f} s/fold, same machine"
        )


if __name__ == "__main__":
    main()
