"""Transform benchmark: this project's parse + features + load against a pandas reference.

    python bench/transform.py [--sizes 100k,1M,10M] [--data ../shared/data/ml-100k] [--repeat N]

Both sides run on the same machine in one run, each (side, size) in its own process so its
peak RSS is its own, against the same PostgreSQL (pgserver's, started here). The pandas
reference is the straightforward one: read_csv, groupby, DataFrame.to_sql. Prefect is left
out of both: this measures the work, not the orchestration. With ``--repeat N`` the sides
alternate N times (each run on a fresh database) and each side's fastest run is reported,
which steadies the ratio on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make `bench` and `tasks` importable
SIZES = {"100k": 100_000, "1M": 1_000_000, "5M": 5_000_000, "10M": 10_000_000}
GENRES = 19


def ours(folder: Path, url: str) -> dict[str, Any]:
    from tasks.features import item_features, user_features
    from tasks.movielens.formats import curate_ml100k
    from tasks.warehouse.loads import load_dataset, warehouse_tables
    from tasks.warehouse.schema import migrate

    stages: dict[str, float] = {}
    started = time.perf_counter()
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.name.startswith("u.")}
    curated = curate_ml100k(files)
    stages["parse"] = time.perf_counter() - started
    began = time.perf_counter()
    items = item_features(curated.ratings, curated.items, curated.item_genres, curated.genres)
    users = user_features(curated.ratings, curated.users, curated.item_genres, curated.genres)
    stages["features"] = time.perf_counter() - began
    began = time.perf_counter()
    migrate(url)  # a fresh database: the first load creates the schema, as pandas' does
    migrated = time.perf_counter()
    tables = warehouse_tables(curated.tables(), items, users)
    shaped = time.perf_counter()
    result = load_dataset(url, "bench", "v1", tables)
    stages["load"] = time.perf_counter() - began
    copy_seconds = result.seconds["copy movielens.ratings"]
    steps = sum(result.seconds.values())
    detail = {
        "migrate": migrated - began,
        "shape": shaped - migrated,
        "COPY ratings": copy_seconds,
        "COPY rest": sum(v for k, v in result.seconds.items() if k.startswith("copy"))
        - copy_seconds,
        "keys": sum(v for k, v in result.seconds.items() if k.startswith("keys")),
        "swap": result.seconds["swap"],
        # connecting, the lock, the version check, ops.loads and the commit's sync
        "commit": stages["load"] - (shaped - began) - steps,
    }
    return {
        "rows": curated.ratings.height,
        "stages": stages,
        "detail": detail,
        "copy_rows_per_s": curated.ratings.height / copy_seconds,
    }


def pandas_reference(folder: Path, url: str) -> dict[str, Any]:
    import pandas as pd
    import psycopg
    import sqlalchemy

    stages: dict[str, float] = {}
    started = time.perf_counter()
    ratings = pd.read_csv(
        folder / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
    )
    genre_columns = [f"g{i}" for i in range(GENRES)]
    items = pd.read_csv(
        folder / "u.item",
        sep="|",
        encoding="latin-1",
        header=None,
        names=[
            "item_id",
            "title",
            "release_date",
            "video_release_date",
            "imdb_url",
            *genre_columns,
        ],
    )
    users = pd.read_csv(
        folder / "u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip_code"]
    )
    ratings = ratings[ratings["rating"].between(1, 5)].drop_duplicates(["user_id", "item_id"])
    ratings["rated_at"] = pd.to_datetime(ratings["timestamp"], unit="s", utc=True)
    items["release_date"] = pd.to_datetime(items["release_date"], format="%d-%b-%Y")
    stages["parse"] = time.perf_counter() - started

    began = time.perf_counter()
    mean = ratings["rating"].mean()
    item_stats = ratings.groupby("item_id")["rating"].agg(["count", "mean", "sum"])
    item_stats["damped_mean"] = (item_stats["sum"] + 5 * mean) / (item_stats["count"] + 5)
    item_stats["popularity_rank"] = item_stats["count"].rank(ascending=False, method="first")
    item_features = items[["item_id", *genre_columns]].merge(
        item_stats.reset_index(), on="item_id", how="left"
    )
    user_stats = ratings.groupby("user_id")["rating"].agg(["count", "mean", "std"]).reset_index()
    item_genres = items.melt(id_vars="item_id", value_vars=genre_columns, var_name="genre")
    item_genres = item_genres[item_genres["value"] == 1][["item_id", "genre"]]
    per_genre = ratings.merge(item_genres, on="item_id").groupby(["user_id", "genre"])["rating"]
    affinity = per_genre.agg(["count", "sum"]).reset_index().merge(user_stats, on="user_id")
    affinity["affinity"] = (affinity["sum"] + 5 * affinity["mean"]) / (affinity["count_x"] + 5)
    profile = affinity.pivot(index="user_id", columns="genre", values="affinity").reset_index()
    user_features = users.merge(user_stats, on="user_id", how="left").merge(
        profile, on="user_id", how="left"
    )
    stages["features"] = time.perf_counter() - began

    began = time.perf_counter()
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(url))
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS pandas_ref")
    tables = {
        "ratings": ratings.drop(columns="timestamp"),
        "items": items,
        "users": users,
        "item_features": item_features,
        "user_features": user_features,
    }
    for name, frame in tables.items():
        frame.to_sql(name, engine, schema="pandas_ref", if_exists="replace", index=False)
    stages["load"] = time.perf_counter() - began
    return {"rows": len(ratings), "stages": stages}


def run_one(side: str, folder: Path, url: str) -> None:
    """Child process: run one side once and print its figures as JSON."""
    result = (ours if side == "ours" else pandas_reference)(folder, url)
    result["seconds"] = sum(result["stages"].values())
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(side: str, folder: Path, url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", side, str(folder), url],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise SystemExit(f"{side} on {folder} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def fresh_database(server_url: str, name: str) -> str:
    import psycopg
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(server_url, dbname=name)


def dataset_folder(label: str, real: Path, scratch: Path) -> Path:
    if label == "100k" and (real / "u.data").is_file():
        return real
    from bench.synth import SyntheticSize, write_ml100k

    folder = scratch / f"synthetic-{label}"
    if not (folder / ".complete").is_file():
        write_ml100k(folder, SyntheticSize.like_movielens(SIZES[label]), seed=0, folds=False)
        (folder / ".complete").touch()
    return folder


def print_row(label: str, side: str, r: dict[str, Any]) -> None:
    stages = "  ".join(f"{k} {v:6.2f}" for k, v in r["stages"].items())
    detail = ", ".join(f"{k} {v:.2f}" for k, v in r.get("detail", {}).items())
    print(
        f"{label:>5}  {side:<7} {r['seconds']:8.2f} s  {r['rows'] / r['seconds']:>11,.0f} rows/s"
        f"  {r['peak_rss_mb']:7.0f} MB   {stages}" + (f"  (load: {detail})" if detail else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1M,10M")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; the fastest counts")
    parser.add_argument(
        "--keep",
        type=Path,
        help="keep the synthetic files in this folder and reuse them (10M takes minutes to write)",
    )
    args = parser.parse_args()
    from tasks.warehouse.connection import EMBEDDED_SETTINGS, embedded_server

    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as scratch:
        server = embedded_server(Path(scratch) / "pg", cleanup_mode="delete")
        import psycopg

        with psycopg.connect(server.get_uri()) as conn:
            actual = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in EMBEDDED_SETTINGS}  # type: ignore[index]
        print(f"PostgreSQL: the embedded server as the pipeline runs it ({actual})")
        print("size   side    wall time      throughput    peak RSS   stages (s)")
        for label in args.sizes.split(","):
            folder = dataset_folder(label, args.data, args.keep or Path(scratch))
            runs: dict[str, list[dict[str, Any]]] = {"ours": [], "pandas": []}
            for _ in range(args.repeat):
                for side, found in runs.items():
                    url = fresh_database(server.get_uri(), f"{side}_{label}")
                    found.append(measure(side, folder, url))
            mine, ref = (min(found, key=lambda r: r["seconds"]) for found in runs.values())
            if args.repeat > 1:
                for side, found in runs.items():
                    times = ", ".join(f"{r['seconds']:.2f}" for r in found)
                    print(f"{label:>5}  {side:<7} runs: {times} s")
            print_row(label, "ours", mine)
            print_row(label, "pandas", ref)
            print(
                f"{label:>5}  ratio   {ref['seconds'] / mine['seconds']:8.1f}x faster end to end;"
                f" load {ref['stages']['load'] / mine['stages']['load']:.1f}x;"
                f" ratings COPY {mine['copy_rows_per_s']:,.0f} rows/s;"
                f" RSS {mine['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x of pandas"
            )
            budget = ref["seconds"] / 10
            print(
                f"{label:>5}  10x     needs ours <= {budget:.3f} s; our load alone takes"
                f" {mine['stages']['load']:.3f} s ({mine['stages']['load'] / budget:.0%} of that)"
            )
        server.cleanup()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_one(sys.argv[2], Path(sys.argv[3]), sys.argv[4])
    else:
        main()
