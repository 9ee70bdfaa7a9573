"""The transform flow end to end: lake -> curated Parquet -> features -> PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from bench.synth import SyntheticSize, write_ml100k
from flows.ingest import ingest
from flows.transform import transform
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.movielens.errors import ValidationError
from tasks.warehouse.loads import current_version
from tasks.warehouse.queries import read_table, table_counts
from tasks.warehouse.schema import TABLES, migrate
from tests.conftest import task_run_states

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL = SyntheticSize(ratings=2000, users=50, items=100)


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ml100k(tmp_path_factory.mktemp("transform") / "ml-100k", SMALL, seed=21)


def warehouse_snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    return {
        table: sorted(read_table(url, f"SELECT * FROM {table}").rows(), key=repr)
        for table in TABLES
    }


def append_bad_rating(folder: Path, *lines: bytes) -> None:
    with open(folder / "u.data", "ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))


def unrated_pair(folder: Path) -> bytes:
    """A (user, item) of known ids that has no rating yet, as the start of a u.data line."""
    ratings = pl.read_csv(folder / "u.data", separator="\t", has_header=False)
    rated = set(ratings.filter(pl.col("column_1") == 1)["column_2"].to_list())
    item = next(i for i in range(1, SMALL.items + 1) if i not in rated)
    return f"1\t{item}".encode()


@pytest.mark.realdata
def test_real_ml100k_end_to_end(database_url: str, ml100k_dir: Path) -> None:
    first = transform(raw=ingest(source=str(ml100k_dir)))
    rerun = transform(raw=ingest(source=str(ml100k_dir)), return_state=True)

    counts = table_counts(database_url, "ml-100k")
    assert first.loaded
    assert counts["movielens.ratings"] == 100_000
    assert counts["movielens.users"] == 943
    assert counts["movielens.items"] == 1682
    assert counts["movielens.genres"] == 19 and counts["features.user_features"] == 943
    folds = read_table(
        database_url,
        "SELECT test_fold, count(*) AS n FROM movielens.folds GROUP BY 1 ORDER BY 1",
    )
    assert folds["n"].to_list() == [20_000] * 5
    title = read_table(database_url, "SELECT title FROM movielens.items WHERE item_id = 543")
    assert title["title"][0] == "Misérables, Les (1995)"
    assert task_run_states(rerun) == {
        "curate_dataset": ["Cached"],
        "build_features": ["Cached"],
        "load_warehouse": ["Cached"],
    }
    assert read_table(database_url, "SELECT count(*) AS n FROM ops.loads")["n"][0] == 1
    assert rerun.result().loaded is False  # the rerun loaded nothing, and says so


def test_curated_and_feature_parquet_in_the_lake(database_url: str, synthetic_folder: Path) -> None:
    result = transform(raw=ingest(source=str(synthetic_folder)))

    lake = Lake.from_settings(load_settings())
    curated = lake.list(f"curated/ml-100k/{result.version}")
    features = lake.list(f"features/ml-100k/{result.version}")
    names = ["folds", "genres", "item_genres", "items", "occupations", "ratings", "users"]
    assert curated == [f"curated/ml-100k/{result.version}/{n}.parquet" for n in names]
    assert features == [
        f"features/ml-100k/{result.version}/{n}.parquet" for n in ("item_features", "user_features")
    ]
    ratings = lake.read_parquet(f"curated/ml-100k/{result.version}/ratings.parquet")
    assert ratings.schema == pl.Schema(
        {"user_id": pl.Int32, "item_id": pl.Int32, "rating": pl.Int8, "timestamp": pl.Int64}
    )
    assert ratings.height == 2000


def test_bad_rows_fail_the_flow_and_land_in_rejects(database_url: str, tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "bad", SMALL, seed=22)
    append_bad_rating(folder, unrated_pair(folder) + b"\t9\t881250949")

    with pytest.raises(ValidationError, match=r"u\.data line 2001 field rating \('9'\)"):
        transform(raw=ingest(source=str(folder)))

    lake = Lake.from_settings(load_settings())
    [key] = lake.list("rejects/ml-100k")
    rejects = lake.read_parquet(key)
    assert rejects.select("file", "line", "field", "value").rows() == [
        ("u.data", 2001, "rating", "9")
    ]
    migrate(database_url)
    assert current_version(database_url, "ml-100k") is None


def test_rejects_within_the_threshold_load_the_good_rows(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_ml100k(tmp_path / "tolerated", SMALL, seed=23, folds=False)
    append_bad_rating(folder, unrated_pair(folder) + b"\t9\t881250949", b"not a rating line")
    monkeypatch.setenv("RECSYS_MAX_REJECTS", "2")

    result = transform(raw=ingest(source=str(folder)))

    assert result.row_counts["movielens.ratings"] == 2000


def test_s3_and_local_lakes_give_identical_tables(
    database_url: str,
    postgres_server: str,
    synthetic_folder: Path,
    s3_lake_env: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_s3 = transform(raw=ingest(source=str(synthetic_folder)))
    s3_tables = warehouse_snapshot(database_url)
    monkeypatch.delenv("RECSYS_LAKE_URL")
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"local_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    local_url = make_conninfo(postgres_server, dbname=name)
    monkeypatch.setenv("RECSYS_DATABASE_URL", local_url)

    on_local = transform(raw=ingest(source=str(synthetic_folder)))

    assert on_s3.version == on_local.version
    assert warehouse_snapshot(local_url) == s3_tables


def test_a_wiped_lake_is_noticed_and_filled_again(
    database_url: str, synthetic_folder: Path
) -> None:
    import shutil

    first = transform(raw=ingest(source=str(synthetic_folder)))
    lake = Lake.from_settings(load_settings())
    shutil.rmtree(lake.path(""))  # the lake wiped; Prefect's caches still name its files

    raw = ingest(source=str(synthetic_folder))
    again = transform(raw=raw)

    assert lake.exists(f"{raw.prefix}/manifest.json")
    assert lake.list(f"curated/{raw.dataset}/{first.version}")
    assert lake.list(f"features/{raw.dataset}/{first.version}")
    assert again.version == first.version and not again.loaded  # the warehouse still held it
