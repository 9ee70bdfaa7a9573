"""The warehouse against a real PostgreSQL: atomic, serialised, idempotent loads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psycopg
import pytest

from bench.synth import SyntheticSize, write_ml100k
from tasks.config import load_settings
from tasks.features import item_features, user_features
from tasks.movielens.formats import curate_ml100k
from tasks.warehouse.connection import connect, import_pgserver
from tasks.warehouse.connection import database_url as resolve_database_url
from tasks.warehouse.loads import current_load, current_version, load_dataset, warehouse_tables
from tasks.warehouse.queries import read_table, table_counts
from tasks.warehouse.schema import TABLES, migrate

SMALL = SyntheticSize(ratings=3000, users=60, items=120)


def tables_of(folder: Path) -> dict[str, pl.DataFrame]:
    curated = curate_ml100k({p.name: p.read_bytes() for p in folder.iterdir()})
    items = item_features(curated.ratings, curated.items, curated.item_genres, curated.genres)
    users = user_features(curated.ratings, curated.users, curated.item_genres, curated.genres)
    return warehouse_tables(curated.tables(), items, users)


@pytest.fixture(scope="module")
def small_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    return tables_of(write_ml100k(tmp_path_factory.mktemp("wh") / "ml", SMALL, seed=11))


@pytest.fixture(scope="module")
def other_tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    size = SyntheticSize(ratings=2000, users=40, items=90)
    return tables_of(write_ml100k(tmp_path_factory.mktemp("wh2") / "ml", size, seed=12))


def loads_count(url: str) -> int:
    return int(read_table(url, "SELECT count(*) AS n FROM ops.loads")["n"][0])


def partitions(url: str) -> list[str]:
    return read_table(
        url,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('movielens', 'features') AND c.relkind = 'r' ORDER BY 1",
    )["relname"].to_list()


def test_migrations_apply_once(database_url: str) -> None:
    assert migrate(database_url) == [
        "V001__warehouse",
        "V002__outbox_keys",
        "V003__fold_zero",
        "V004__ratings_keys_on_ids",
        "V005__load_build",
        "V006__serving_predictions",
        "V007__outbox_failed",
    ]
    assert migrate(database_url) == []


def test_load_fills_every_table(warehouse: str, small_tables: dict[str, pl.DataFrame]) -> None:
    result = load_dataset(warehouse, "ml-100k", "v1", small_tables)

    counts = table_counts(warehouse, "ml-100k")
    assert result.loaded
    assert counts == {**{t: small_tables[t].height for t in TABLES}, "movielens.folds": 3000}
    assert current_version(warehouse, "ml-100k") == "v1"
    recorded = read_table(warehouse, "SELECT version, row_counts FROM ops.loads")
    assert recorded["version"].to_list() == ["v1"]
    assert recorded["row_counts"][0]["movielens.ratings"] == 3000


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("unknown item", psycopg.errors.ForeignKeyViolation),
        ("user of another dataset", psycopg.errors.ForeignKeyViolation),
        ("pair rated already", psycopg.errors.UniqueViolation),
    ],
)
def test_loaded_ratings_keep_their_keys(
    warehouse: str,
    small_tables: dict[str, pl.DataFrame],
    other_tables: dict[str, pl.DataFrame],
    case: str,
    error: type[Exception],
) -> None:
    load_dataset(warehouse, "ml-100k", "v1", small_tables)
    load_dataset(warehouse, "other", "v1", other_tables)
    first = small_tables["movielens.ratings"].row(0, named=True)
    stranger = int(other_tables["movielens.users"]["user_id"].max()) + 1
    assert stranger in small_tables["movielens.users"]["user_id"]  # known in ml-100k only
    dataset, user, item = {
        "unknown item": ("ml-100k", first["user_id"], 99999),
        "user of another dataset": ("other", stranger, 1),
        "pair rated already": ("ml-100k", first["user_id"], first["item_id"]),
    }[case]

    with pytest.raises(error), connect(warehouse) as conn:
        conn.execute(
            "INSERT INTO movielens.ratings (dataset, user_id, item_id, rating, rated_at, test_fold)"
            " VALUES (%s, %s, %s, 3, now(), 1)",
            (dataset, user, item),
        )


def test_loaded_values_match_the_frames(
    warehouse: str, small_tables: dict[str, pl.DataFrame]
) -> None:
    load_dataset(warehouse, "ml-100k", "v1", small_tables)

    ratings = read_table(
        warehouse,
        "SELECT user_id, item_id, rating, rated_at, test_fold FROM movielens.ratings"
        " WHERE dataset = 'ml-100k' ORDER BY user_id, item_id",
    )
    expected = small_tables["movielens.ratings"].sort("user_id", "item_id")
    assert ratings["rating"].to_list() == expected["rating"].cast(pl.Float64).to_list()
    assert ratings["rated_at"].to_list() == expected["rated_at"].to_list()
    assert ratings["test_fold"].to_list() == expected["test_fold"].to_list()
    titles = read_table(warehouse, "SELECT title FROM movielens.items ORDER BY item_id")["title"]
    assert titles.to_list() == small_tables["movielens.items"].sort("item_id")["title"].to_list()


def test_a_load_finishes_after_its_recorded_stages(
    warehouse: str, small_tables: dict[str, pl.DataFrame]
) -> None:
    result = load_dataset(warehouse, "ml-100k", "timed", small_tables)

    row = read_table(
        warehouse,
        "SELECT extract(epoch FROM finished_at - started_at) AS took FROM ops.loads"
        " WHERE version = 'timed'",
    )
    assert float(row["took"][0]) >= sum(result.seconds.values())


def test_same_version_twice_changes_nothing(
    warehouse: str, small_tables: dict[str, pl.DataFrame]
) -> None:
    load_dataset(warehouse, "ml-100k", "v1", small_tables)
    before = partitions(warehouse)

    again = load_dataset(warehouse, "ml-100k", "v1", small_tables)

    assert not again.loaded
    assert loads_count(warehouse) == 1
    assert partitions(warehouse) == before


def test_new_version_replaces_the_old_one(
    warehouse: str, small_tables: dict[str, pl.DataFrame], other_tables: dict[str, pl.DataFrame]
) -> None:
    load_dataset(warehouse, "ml-100k", "v1", small_tables)

    load_dataset(warehouse, "ml-100k", "v2", other_tables)

    assert table_counts(warehouse, "ml-100k")["movielens.ratings"] == 2000
    assert current_version(warehouse, "ml-100k") == "v2"
    assert [p for p in partitions(warehouse) if p.startswith("ratings")] == ["ratings__ml_100k_v2"]


def test_the_same_version_built_by_other_code_replaces_the_loaded_one(
    warehouse: str, small_tables: dict[str, pl.DataFrame], other_tables: dict[str, pl.DataFrame]
) -> None:
    """Changed parsing or feature code makes other tables of the same raw data: they replace
    the loaded ones, where the version alone would call them loaded."""
    load_dataset(warehouse, "ml-100k", "v1", small_tables, build="code-a")

    rebuilt = load_dataset(warehouse, "ml-100k", "v1", other_tables, build="code-b")
    again = load_dataset(warehouse, "ml-100k", "v1", other_tables, build="code-b")

    assert rebuilt.loaded and not again.loaded
    assert table_counts(warehouse, "ml-100k")["movielens.ratings"] == 2000
    assert current_load(warehouse, "ml-100k") == ("v1", "code-b")
    assert len([p for p in partitions(warehouse) if p.startswith("ratings")]) == 1
    assert loads_count(warehouse) == 2


def test_datasets_live_side_by_side(
    warehouse: str, small_tables: dict[str, pl.DataFrame], other_tables: dict[str, pl.DataFrame]
) -> None:
    load_dataset(warehouse, "ml-100k", "v1", small_tables)
    load_dataset(warehouse, "ml-other", "v1", other_tables)

    assert table_counts(warehouse, "ml-100k")["movielens.ratings"] == 3000
    assert table_counts(warehouse, "ml-other")["movielens.ratings"] == 2000


def test_connection_killed_mid_load_keeps_the_previous_version(
    warehouse: str, small_tables: dict[str, pl.DataFrame], other_tables: dict[str, pl.DataFrame]
) -> None:
    load_dataset(warehouse, "ml-100k", "v1", small_tables)
    before = partitions(warehouse)

    def kill_the_loader(message: str) -> None:
        if message.startswith("copied movielens.ratings"):
            with connect(warehouse, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )

    with pytest.raises(psycopg.OperationalError):
        load_dataset(warehouse, "ml-100k", "v2", other_tables, on_step=kill_the_loader)

    assert current_version(warehouse, "ml-100k") == "v1"
    assert table_counts(warehouse, "ml-100k")["movielens.ratings"] == 3000
    assert partitions(warehouse) == before
    assert loads_count(warehouse) == 1


def test_concurrent_loads_serialise_and_end_consistent(
    warehouse: str, small_tables: dict[str, pl.DataFrame], other_tables: dict[str, pl.DataFrame]
) -> None:
    errors: list[BaseException] = []

    def load(version: str, tables: dict[str, pl.DataFrame]) -> None:
        try:
            load_dataset(warehouse, "ml-100k", version, tables)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [
        threading.Thread(target=load, args=("va", small_tables)),
        threading.Thread(target=load, args=("vb", other_tables)),
        threading.Thread(target=load, args=("vb", other_tables)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    version = current_version(warehouse, "ml-100k")
    expected = {"va": 3000, "vb": 2000}
    assert errors == []
    assert table_counts(warehouse, "ml-100k")["movielens.ratings"] == expected[str(version)]
    assert [p for p in partitions(warehouse) if p.startswith("ratings")] == [
        f"ratings__ml_100k_{version}"
    ]
    assert loads_count(warehouse) in {2, 3}


def test_embedded_postgres_when_no_url_is_set(
    monkeypatch: pytest.MonkeyPatch, small_tables: dict[str, pl.DataFrame]
) -> None:
    import tempfile

    pgserver = import_pgserver()
    home = Path(tempfile.mkdtemp(prefix="recsys-home-", dir="/tmp"))
    monkeypatch.delenv("RECSYS_DATABASE_URL", raising=False)
    monkeypatch.setenv("RECSYS_HOME", str(home))
    try:
        url = resolve_database_url(load_settings())
        migrate(url)
        assert (home / "postgres" / "PG_VERSION").is_file()
        assert current_version(url, "ml-100k") is None
        # set up for bulk loads, and still the same server on the next call
        assert read_table(url, "SHOW wal_level")["wal_level"].to_list() == ["minimal"]
        assert resolve_database_url(load_settings()) == url
        load_dataset(url, "ml-100k", "v1", small_tables)
        assert table_counts(url, "ml-100k")["movielens.ratings"] == SMALL.ratings
    finally:
        pgserver.get_server(home / "postgres").cleanup()


def test_the_embedded_server_is_imported_without_a_runtime_folder_warning() -> None:
    """pgserver looks up the user's runtime folder on import; without XDG_RUNTIME_DIR (root
    shells, containers) platformdirs warns, mid-run. The project's import keeps that quiet."""
    environment = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    repo = str(Path(__file__).resolve().parents[2])

    def imported(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=repo,
                              env=environment, capture_output=True, text=True, timeout=120)  # fmt: skip

    if "XDG_RUNTIME_DIR is not set" not in imported("import pgserver").stderr:
        pytest.skip("this platformdirs does not warn (constraints.txt pins one that does)")
    quiet = imported(
        "from tasks.warehouse.connection import import_pgserver\n"
        "print(import_pgserver().postgres_server.PostgresServer.runtime_path)"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip()  # the fallback folder, which serves


def test_an_advisory_lock_lets_one_holder_in_at_a_time(warehouse: str) -> None:
    from tasks.warehouse.connection import advisory_lock

    inside: list[int] = []
    overlaps: list[bool] = []

    def hold(name: int) -> None:
        with advisory_lock(warehouse, 0x7E57):
            overlaps.append(bool(inside))
            inside.append(name)
            time.sleep(0.3)
            inside.remove(name)

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert overlaps == [False, False, False]


def test_a_released_embedded_server_stops_and_serves_again_on_the_next_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's shutdown gives pgserver's handle back (uvicorn's re-raised SIGTERM skips
    exit handlers): the server stops with its last user, and this process may use it again."""
    import json
    import tempfile

    from tasks.warehouse.connection import release_embedded_server

    home = Path(tempfile.mkdtemp(prefix="recsys-home-", dir="/tmp"))
    monkeypatch.delenv("RECSYS_DATABASE_URL", raising=False)
    monkeypatch.setenv("RECSYS_HOME", str(home))
    data = home / "postgres"
    settings = load_settings()
    migrate(resolve_database_url(settings))

    assert release_embedded_server(settings) is True
    assert json.loads((data / ".handle_pids.json").read_text()) == []
    assert not (data / "postmaster.pid").exists()
    assert release_embedded_server(settings) is False  # nothing held any more

    again = resolve_database_url(settings)
    try:
        assert current_version(again, "ml-100k") is None
        assert json.loads((data / ".handle_pids.json").read_text()) == [os.getpid()]
    finally:
        assert release_embedded_server(settings) is True
