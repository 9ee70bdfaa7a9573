"""Scale benchmark: ml-25m-shaped synthetic data through transform + load and the hybrid's fit.

    python bench/scale.py [--sizes 1M,5M,25M] [--clusters 1,8,32,128] [--cluster-sizes 5M]
                          [--keep DIR] [--memory-limit-gib 16] [--fit-timeout 1800]

Per size: the synthetic ml-25m folder (``bench/synth.py``'s fast sampler; kept in ``--keep`` by
size and seed, so a rerun reuses it), then two stages, each in its own process for its own
peak RSS: "transform+load" (this project's CSV parsing, features and binary-COPY load into a
fresh database of the embedded PostgreSQL, whose own memory is not counted) and "fit+eval"
(``KMeansKNN(**SCALE_CONFIG)`` fit on the ratings but a seeded 1% hold-out, RMSE on it). At the
``--cluster-sizes``, one more fit per cluster count. A stage that fails, goes over
``--memory-limit-gib`` of resident memory or over its time is stopped and reported as
such in the table; the goals are judged on the 25M row. The memory cap is on resident memory,
watched from here: Polars reserves far more address space than it touches, so an
address-space limit (RLIMIT_AS) would abort a transform well within its memory.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `bench`, `tasks`, `recommender` importable

SEED = 0
HOLD_OUT_SHARE = 0.01
DATASET = "ml-25m"
GOAL_SIZE = "25M"
GOAL_TRANSFORM_S, GOAL_FIT_S, GOAL_RSS_MIB = 180.0, 600.0, 8192.0
WATCH_SECONDS = 0.5
MULTIPLIERS = {"k": 1_000, "M": 1_000_000}
EXACT_SIZES = {"25M": 25_000_095}  # ml-25m's own count
# The tuned hybrid (its defaults: user and item neighbourhoods, 30 latent factors, the blend
# fit on a validation share and the parts fit again on every rating, the item-KNN ranker of
# the sparse engine) on the sparse engine, its neighbour search restricted to 32 clusters.
SCALE_CONFIG: dict[str, Any] = {
    "engine": "sparse",
    "n_clusters": 32,
}


def ratings_of(label: str) -> int:
    """``"1M"`` -> 1_000_000, ``"25M"`` -> ml-25m's 25_000_095, ``"300k"`` -> 300_000."""
    if label in EXACT_SIZES:
        return EXACT_SIZES[label]
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kM]?)", label)
    if match is None:
        raise SystemExit(f"size {label!r}: expected a count such as 500k, 1M or 25M")
    return int(float(match[1]) * MULTIPLIERS.get(match[2], 1))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(record: dict[str, Any]) -> None:
    """Child side: the figures so far, as the last JSON line (a later failure keeps them)."""
    record["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(record), flush=True)


# --- the stages, each run in a child process ---------------------------------------------------
def generate(folder: Path, label: str) -> None:
    from bench.synth import SyntheticSize, write_scaled_csv

    size = SyntheticSize.like_ml25m(ratings_of(label))
    started = time.perf_counter()
    write_scaled_csv(folder, size, SEED, DATASET)
    record = {"seconds": time.perf_counter() - started, "users": size.users, "items": size.items}
    emit(record)
    (folder / "synth.json").write_text(json.dumps({**record, "ratings": size.ratings}))


def transform_and_load(folder: Path, url: str) -> None:
    """The transform flow's work without Prefect or the lake: parse, features, load."""
    from tasks.features import item_features, user_features
    from tasks.movielens.catalog import movielens_set
    from tasks.movielens.folds import FoldRule
    from tasks.movielens.formats import curate_files
    from tasks.warehouse.loads import load_dataset, warehouse_tables
    from tasks.warehouse.schema import migrate

    member = movielens_set(DATASET)
    record: dict[str, Any] = {"stages": {}, "detail": {}}
    migrate(url)
    started = time.perf_counter()
    files = {name: (folder / name).read_bytes() for name in member.required_files}
    record["detail"]["read files"] = time.perf_counter() - started
    curated = curate_files(member, files, FoldRule("random", SEED))
    del files
    record["stages"]["parse"] = time.perf_counter() - started
    record["detail"]["curate"] = record["stages"]["parse"] - record["detail"]["read files"]
    record["rows"], record["rejects"] = curated.ratings.height, curated.rejects.height
    emit(record)
    began = time.perf_counter()
    items = item_features(curated.ratings, curated.items, curated.item_genres, curated.genres)
    record["detail"]["item features"] = time.perf_counter() - began
    users = user_features(curated.ratings, curated.users, curated.item_genres, curated.genres)
    record["stages"]["features"] = time.perf_counter() - began
    record["detail"]["user features"] = (
        record["stages"]["features"] - record["detail"]["item features"]
    )
    emit(record)
    began = time.perf_counter()
    tables = warehouse_tables(curated.tables(), items, users)
    del curated
    record["detail"]["shape tables"] = time.perf_counter() - began
    result = load_dataset(url, "synthetic", "v1", tables, on_step=lambda _: None)
    record["stages"]["load"] = time.perf_counter() - began
    copies = {name: s for name, s in result.seconds.items() if name.startswith("copy ")}
    record["detail"]["copy ratings"] = copies.pop("copy movielens.ratings")
    record["detail"]["copy the rest"] = sum(copies.values())
    record["detail"]["keys"] = sum(v for k, v in result.seconds.items() if k.startswith("keys "))
    record["detail"]["swap (indexes, keys)"] = result.seconds["swap"]
    emit(record)


def fit_and_evaluate(folder: Path, config_json: str) -> None:
    """Fit the hybrid on all ratings but a seeded 1% hold-out; RMSE/MAE on the hold-out."""
    import numpy as np

    from recommender import BiasBaseline, BiasConfig, KMeansKNN, KMeansKNNConfig, Ratings, mae, rmse

    params = json.loads(config_json)
    record: dict[str, Any] = {"config": params}
    started = time.perf_counter()
    train, test = hold_out_split(folder / "ratings.csv")
    record["read_s"], record["train_rows"], record["test_rows"] = (
        time.perf_counter() - started,
        train.height,
        test.height,
    )
    emit(record)
    started = time.perf_counter()
    ratings = Ratings.from_frame(train)
    del train
    record["ratings_s"] = time.perf_counter() - started
    config = KMeansKNNConfig(**params)
    baseline = BiasBaseline(
        BiasConfig(user_damping=config.user_damping, item_damping=config.item_damping)
    ).fit(ratings)
    users, items = test["user_id"].to_numpy(), test["item_id"].to_numpy()
    actual = test["rating"].to_numpy().astype(np.float64)
    record["baseline_rmse"] = rmse(baseline.predict(users, items), actual)
    emit(record)
    began = time.perf_counter()
    model = KMeansKNN(config).fit(ratings)
    record["fit_s"] = record["ratings_s"] + time.perf_counter() - began
    emit(record)
    began = time.perf_counter()
    predicted = model.predict(users, items)
    record["eval_s"] = time.perf_counter() - began
    record["rmse"], record["mae"] = rmse(predicted, actual), mae(predicted, actual)
    # at the held-out ratings' times: the session offset (none where the data has no sessions)
    timed = model.predict(users, items, times=test["timestamp"].to_numpy())
    record["rmse_at_times"] = rmse(timed, actual)
    emit(record)


def hold_out_split(path: Path) -> tuple[Any, Any]:
    """(train, test): a seeded 1% of the ratings, less those of users or items not in train."""
    import numpy as np
    import polars as pl

    schema = {"userId": pl.Int32, "movieId": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64}
    ratings = pl.read_csv(path, schema=schema).rename({"userId": "user_id", "movieId": "item_id"})
    held = np.random.default_rng(SEED).random(ratings.height) < HOLD_OUT_SHARE
    train, test = ratings.filter(pl.Series(~held)), ratings.filter(pl.Series(held))
    test = test.join(train.select("user_id").unique(), on="user_id", how="semi").join(
        train.select("item_id").unique(), on="item_id", how="semi"
    )
    return train, test


CHILDREN: dict[str, Callable[..., None]] = {
    "generate": lambda folder, label: generate(Path(folder), label),
    "transform": lambda folder, url: transform_and_load(Path(folder), url),
    "fit": lambda folder, config: fit_and_evaluate(Path(folder), config),
}


# --- the parent: run the children, tabulate ----------------------------------------------------
@dataclass
class Outcome:
    """The last figures a child printed, and why it stopped early if it did."""

    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float = 0.0


def run_child(args: list[str], memory_limit: int, timeout: float | None = None) -> Outcome:
    """Run one child stage; stop it when its resident memory or its time goes over the cap."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", *args],
            stdout=out,
            stderr=err,
            cwd=REPO,
            text=True,
        )
        stopped = watch(child, memory_limit, timeout)
        out.seek(0)
        err.seek(0)
        outcome = Outcome(last_json(out.read()), stopped, time.perf_counter() - started)
        if stopped is None and child.returncode != 0:
            outcome.error = failure(child.returncode, err.read())
    return outcome


def watch(child: subprocess.Popen[str], memory_limit: int, timeout: float | None) -> str | None:
    """Wait for ``child``; kill it and say why when it goes over ``memory_limit`` bytes of
    resident memory (0: no cap) or ``timeout`` seconds."""
    started = time.perf_counter()
    while child.poll() is None:
        resident = resident_bytes(child.pid)
        if memory_limit and resident > memory_limit:
            child.kill()
            child.wait()
            return (
                f"stopped at {resident / 2**30:.1f} GiB resident (cap {memory_limit / 2**30:g} GiB)"
            )
        if timeout is not None and time.perf_counter() - started > timeout:
            child.kill()
            child.wait()
            return f"timed out after {timeout:g} s"
        time.sleep(WATCH_SECONDS)
    return None


def resident_bytes(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # it has just ended
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match[1]) * 1024 if match else 0


def last_json(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return dict(json.loads(lines[-1])) if lines else {}


def failure(returncode: int, stderr: str) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode}" + (" (out of memory?)" if returncode == -9 else "")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1][:160] if lines else f"exit code {returncode}"


def synthetic_folder(keep: Path, label: str, memory_limit: int) -> tuple[Path, Outcome]:
    """The kept folder of ``label``, generated when it is not there yet."""
    folder = keep / f"{DATASET}-{label}-seed{SEED}"
    marker = folder / "synth.json"
    if marker.is_file():
        return folder, Outcome({**json.loads(marker.read_text()), "cached": True})
    return folder, run_child(["generate", str(folder), label], memory_limit)


def fresh_database(server_url: str, name: str) -> str:
    import psycopg
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@dataclass
class SizeRow:
    label: str
    generated: Outcome
    transformed: Outcome
    fitted: Outcome


def cell(value: Any, width: int, digits: int = 1) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:,.{digits}f}".rjust(width)
    return f"{value:,}".rjust(width)


SIZE_HEADER = (
    f"{'ratings':>11} {'users':>8} {'items':>7} {'gen s':>6} {'parse s':>8} {'feat s':>7}"
    f" {'load s':>7} {'T+L s':>7} {'T+L MiB':>8} {'fit s':>7} {'eval s':>7} {'fit MiB':>8}"
    f" {'RMSE':>7} {'base RMSE':>9}"
)


def size_line(row: SizeRow) -> str:
    gen, tl, fit = row.generated.figures, row.transformed.figures, row.fitted.figures
    stages = tl.get("stages", {})
    total = sum(stages.values()) if len(stages) == 3 else None
    return " ".join(
        [
            cell(ratings_of(row.label), 11),
            cell(gen.get("users"), 8),
            cell(gen.get("items"), 7),
            cell(gen.get("seconds"), 6),
            cell(stages.get("parse"), 8),
            cell(stages.get("features"), 7),
            cell(stages.get("load"), 7),
            cell(total, 7),
            cell(tl.get("peak_rss_mib"), 8, 0),
            cell(fit.get("fit_s"), 7),
            cell(fit.get("eval_s"), 7),
            cell(fit.get("peak_rss_mib"), 8, 0),
            cell(fit.get("rmse"), 7, 4),
            cell(fit.get("baseline_rmse"), 9, 4),
        ]
    )


def print_sizes(rows: list[SizeRow]) -> None:
    print("\nratings, seconds per stage, peak RSS (each stage its own process)")
    print(SIZE_HEADER)
    for row in rows:
        print(size_line(row))
    for row in rows:
        for stage, outcome in (
            ("generate", row.generated),
            ("transform+load", row.transformed),
            ("fit+eval", row.fitted),
        ):
            if outcome.error:
                print(f"  {row.label} {stage} FAILED: {outcome.error}")
        detail = row.transformed.figures.get("detail", {})
        if detail:
            parts = ", ".join(f"{name} {seconds:.1f}" for name, seconds in detail.items())
            print(f"  {row.label} transform detail (s): {parts}")
        fit = row.fitted.figures
        if "read_s" in fit:
            print(
                f"  {row.label} fit detail: read + split {fit['read_s']:.1f} s"
                f" ({fit['train_rows']:,} train, {fit['test_rows']:,} hold-out),"
                f" Ratings {fit.get('ratings_s', math.nan):.1f} s (in fit s)"
            )
        if "rmse_at_times" in fit:
            print(f"  {row.label} RMSE at the hold-out's times (session offset):"
                  f" {fit['rmse_at_times']:.4f}")  # fmt: skip


def print_clusters(label: str, results: list[tuple[int, Outcome]]) -> None:
    print(f"\nfit time against cluster count at {label} (each fit its own process)")
    print(f"{'clusters':>8} {'fit s':>8} {'eval s':>7} {'fit MiB':>8} {'RMSE':>7}  note")
    for clusters, outcome in results:
        fit = outcome.figures
        print(
            f"{clusters:>8} {cell(fit.get('fit_s'), 8)} {cell(fit.get('eval_s'), 7)}"
            f" {cell(fit.get('peak_rss_mib'), 8, 0)} {cell(fit.get('rmse'), 7, 4)}"
            f"  {('FAILED: ' + outcome.error) if outcome.error else ''}".rstrip()
        )


def print_goals(rows: list[SizeRow]) -> None:
    goal_row = next((row for row in rows if row.label == GOAL_SIZE), None)
    print(f"\ngoals at {GOAL_SIZE}")
    if goal_row is None:
        print(f"  not judged: no {GOAL_SIZE} row (add it to --sizes)")
        return
    transformed, fitted = goal_row.transformed, goal_row.fitted
    transform_s = None if transformed.error else sum(transformed.figures["stages"].values())
    fit_s = None if fitted.error else fitted.figures["fit_s"] + fitted.figures["eval_s"]
    peak = (
        None
        if transformed.error or fitted.error
        else max(transformed.figures["peak_rss_mib"], fitted.figures["peak_rss_mib"])
    )
    for name, value, limit, unit in (
        ("transform + load", transform_s, GOAL_TRANSFORM_S, "s"),
        ("fit + evaluation", fit_s, GOAL_FIT_S, "s"),
        ("peak RSS", peak, GOAL_RSS_MIB, "MiB"),
    ):
        verdict = "n/a (stage failed)" if value is None else ("PASS" if value <= limit else "FAIL")
        shown = "-" if value is None else f"{value:,.0f} {unit}"
        print(f"  {name:<17} {shown:>12}  <= {limit:,.0f} {unit}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,5M,25M")
    parser.add_argument("--clusters", default="1,8,32,128")
    parser.add_argument("--cluster-sizes", default="5M", help="sizes that get the cluster sweep")
    parser.add_argument(
        "--keep",
        type=Path,
        default=Path(tempfile.gettempdir()) / "recsys-scale-data",
        help="where the synthetic folders are kept between runs (25M: 0.7 GB)",
    )
    parser.add_argument(
        "--memory-limit-gib", type=float, default=16.0, help="resident memory per stage; 0: no cap"
    )
    parser.add_argument("--fit-timeout", type=float, default=1800.0, help="seconds per fit")
    args = parser.parse_args()
    labels = args.sizes.split(",")
    memory = int(args.memory_limit_gib * 2**30)
    from recommender import KMeansKNNConfig

    KMeansKNNConfig(**SCALE_CONFIG)  # an invalid config stops here, not after an hour of runs
    print(f"KMeansKNN config: {SCALE_CONFIG}, the rest its defaults")
    from tasks.warehouse.connection import embedded_server

    rows: list[SizeRow] = []
    sweeps: list[tuple[str, list[tuple[int, Outcome]]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir="/tmp") as scratch:
        server = embedded_server(Path(scratch) / "pg", cleanup_mode="delete")
        for label in labels:
            folder, generated = synthetic_folder(args.keep, label, memory)
            print(f"{label}: data in {folder} ({generated.figures.get('seconds', 0):.1f} s)")
            name = f"scale_{label.lower()}"
            url = fresh_database(server.get_uri(), name)
            transformed = run_child(["transform", str(folder), url], memory)
            drop_database(server.get_uri(), name)
            print(f"{label}: transform+load done in {transformed.wall_s:.0f} s")
            config = json.dumps(SCALE_CONFIG)
            fitted = run_child(["fit", str(folder), config], memory, args.fit_timeout)
            print(f"{label}: fit+eval done in {fitted.wall_s:.0f} s")
            rows.append(SizeRow(label, generated, transformed, fitted))
            if label in args.cluster_sizes.split(","):
                sweep = []
                for clusters in (int(c) for c in args.clusters.split(",")):
                    swept = json.dumps({**SCALE_CONFIG, "n_clusters": clusters})
                    outcome = run_child(["fit", str(folder), swept], memory, args.fit_timeout)
                    print(f"{label}: {clusters} clusters done in {outcome.wall_s:.0f} s")
                    sweep.append((clusters, outcome))
                sweeps.append((label, sweep))
        server.cleanup()
    print_sizes(rows)
    for label, sweep in sweeps:
        print_clusters(label, sweep)
    print_goals(rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        CHILDREN[sys.argv[2]](*sys.argv[3:])
    else:
        main()
