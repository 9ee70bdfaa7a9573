"""Every MovieLens layout parses from synthetic files into the same tables, with the same
rejects; each member runs through ingest and transform (and one through train) on the real
services, side by side with the others."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import polars as pl
import pytest

from bench.synth import SyntheticSize, write_archive, write_csv_member, write_dataset
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.movielens.catalog import DATASETS, movielens_set
from tasks.movielens.errors import ArchiveError, ChecksumMismatchError, ValidationError
from tasks.movielens.folds import FoldRule
from tasks.movielens.formats import CuratedTables, curate_files
from tasks.warehouse.loads import LoadResult
from tasks.warehouse.queries import read_table, table_counts
from tests.conftest import HttpServer

SMALL = SyntheticSize(ratings=600, users=30, items=60)
RANDOM = FoldRule("random", 0)
MEMBERS = [name for name in DATASETS if name != "ml-100k"]


def member_files(tmp_path: Path, dataset: str, seed: int = 5) -> dict[str, bytes]:
    folder = write_dataset(tmp_path / dataset, dataset, SMALL, seed=seed)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def curate(dataset: str, files: dict[str, bytes], rule: FoldRule = RANDOM) -> CuratedTables:
    return curate_files(movielens_set(dataset), files, rule)


def with_line(data: bytes, line: str, encoding: str = "utf-8") -> tuple[bytes, int]:
    """``data`` with ``line`` appended; returns the new bytes and the line's number."""
    return data + line.encode(encoding) + b"\n", data.count(b"\n") + 1


def rejects_of(dataset: str, files: dict[str, bytes]) -> list[tuple[str, int, str, str]]:
    rejects = curate(dataset, files).rejects
    return [(r["file"], r["line"], r["field"], r["reason"]) for r in rejects.iter_rows(named=True)]


def unrated_item(curated: CuratedTables, user_id: int) -> int:
    rated = set(curated.ratings.filter(pl.col("user_id") == user_id)["item_id"].to_list())
    return next(i for i in range(1, SMALL.items + 1) if i not in rated)


# --- every layout parses into the same tables -------------------------------------------------
@pytest.mark.parametrize("dataset", MEMBERS)
def test_every_member_parses_clean_into_the_curated_tables(tmp_path: Path, dataset: str) -> None:
    curated = curate(dataset, member_files(tmp_path, dataset))

    reference = curate("ml-100k", member_files(tmp_path, "ml-100k"))
    assert curated.rejects.height == 0
    assert curated.ratings.height == SMALL.ratings
    assert curated.items.height == SMALL.items
    assert curated.users.height == curated.ratings["user_id"].n_unique()
    for name, frame in curated.tables().items():
        expected = reference.tables()[name].schema
        if name == "ratings":  # half stars are Float32, whole stars Int8 as in ml-100k
            expected = pl.Schema({**expected, "rating": curated.ratings.schema["rating"]})
        assert frame.schema == expected, name
    assert curated.folds.height == SMALL.ratings


def test_ml1m_latin1_titles_users_and_occupation_codes(tmp_path: Path) -> None:
    files = member_files(tmp_path, "ml-1m")
    files["movies.dat"], _ = with_line(
        files["movies.dat"], "900::Noël à Zürich (1995)::Drama", "latin-1"
    )
    files["users.dat"], _ = with_line(files["users.dat"], "900::F::56::12::55455")

    curated = curate("ml-1m", files)

    movie = curated.items.filter(pl.col("item_id") == 900)
    assert movie.select("title", "release_year").row(0) == ("Noël à Zürich (1995)", 1995)
    assert curated.items["title"].str.contains("é").any()
    user = curated.users.filter(pl.col("user_id") == 900)
    assert user.select("age", "gender", "occupation", "zip_code").row(0) == (
        56, "F", "programmer", "55455",
    )  # fmt: skip
    assert curated.occupations.height == 21
    assert curated.occupations["name"][0] == "other or not specified"
    assert set(curated.users["occupation"]) <= set(curated.occupations["name"])
    assert curated.ratings.schema["rating"] == pl.Int8
    assert curated.genres.height == 18 and "Children's" in curated.genres["name"].to_list()


def test_ml10m_half_stars_and_later_genres(tmp_path: Path) -> None:
    files = member_files(tmp_path, "ml-10m")

    curated = curate("ml-10m", files)

    stars = set(curated.ratings["rating"].to_list())
    assert {0.5, 1.5, 4.5, 5.0} <= stars and stars <= {x / 2 for x in range(1, 11)}
    assert {"IMAX", "(no genres listed)"} <= set(curated.genres["name"])
    alone = curated.item_genres.filter(pl.col("item_id") == 41)  # synth: no genres listed
    assert alone.join(curated.genres, on="genre_id")["name"].to_list() == ["(no genres listed)"]
    assert curated.users.select(pl.col("age", "gender", "occupation").null_count().sum()).row(
        0
    ) == (SMALL.users, SMALL.users, SMALL.users)  # ids only
    assert curated.occupations.height == 0


def test_csv_quoting_years_and_imdb_links(tmp_path: Path) -> None:
    curated = curate("ml-25m", member_files(tmp_path, "ml-25m"))

    items = {row["item_id"]: row for row in curated.items.iter_rows(named=True)}
    assert items[7]["title"].endswith(", The (" + str(items[7]["release_year"]) + ")")
    assert items[11]["title"].startswith('"') and items[11]["release_year"] is not None
    assert items[53]["release_year"] is None  # synth: a title without a year
    assert items[1]["imdb_url"].startswith("https://www.imdb.com/title/tt")
    assert len(items[1]["imdb_url"].removeprefix("https://www.imdb.com/title/tt")) == 8  # 7 + /


def test_optional_files_may_be_missing(tmp_path: Path) -> None:
    member = movielens_set("ml-latest-small")
    folder = write_csv_member(tmp_path / "bare", member, SMALL, seed=5, optional=False)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    ten = member_files(tmp_path, "ml-10m")
    del ten["tags.dat"]

    curated = curate("ml-latest-small", files)

    assert sorted(files) == ["movies.csv", "ratings.csv"]
    assert curated.rejects.height == 0 and curated.items["imdb_url"].null_count() == SMALL.items
    assert curate("ml-10m", ten).ratings.height == SMALL.ratings


@pytest.mark.parametrize(
    ("dataset", "missing"),
    [("ml-1m", "users.dat"), ("ml-10m", "movies.dat"), ("ml-32m", "ratings.csv")],
)
def test_missing_required_file_is_the_ingest_error(
    tmp_path: Path, dataset: str, missing: str
) -> None:
    files = member_files(tmp_path, dataset)
    del files[missing]

    with pytest.raises(ArchiveError, match=rf"{dataset} file\(s\) {missing} missing"):
        curate(dataset, files)


def test_wrong_csv_header_fails_with_file_and_line(tmp_path: Path) -> None:
    files = member_files(tmp_path, "ml-20m")
    files["ratings.csv"] = files["ratings.csv"].replace(b"userId,", b"user,", 1)

    with pytest.raises(ValidationError, match=r"ratings\.csv line 1: header 'user,movieId"):
        curate("ml-20m", files)


def test_bytes_that_are_not_the_files_encoding_name_the_file_and_line(tmp_path: Path) -> None:
    files = member_files(tmp_path, "ml-latest-small")
    data, line = with_line(files["movies.csv"], "999999,Caf\xe9 (1999),Drama", "latin-1")
    files["movies.csv"] = data

    with pytest.raises(ValidationError, match=rf"movies\.csv line {line}: not utf-8 text"):
        curate("ml-latest-small", files)


# --- bad rows are rejected with their file, line, field and reason ------------------------------
@pytest.mark.parametrize(
    ("dataset", "file", "line", "field", "reason"),
    [
        ("ml-1m", "ratings.dat", "1::{item}::3.5::978300760", "rating", "rating must be an integer 1..5"),
        ("ml-1m", "ratings.dat", "999::{item}::3::978300760", "user_id", "user not in users.dat"),
        ("ml-1m", "ratings.dat", "1::{item}::3", "line", "expected 4 fields separated by '::'"),
        ("ml-1m", "ratings.dat", "1\t{item}\t3\t978300760", "line",
         "expected 4 fields separated by '::'"),
        ("ml-1m", "users.dat", "900::X::25::3::12345", "gender", "gender must be M or F"),
        ("ml-1m", "users.dat", "900::M::30::3::12345", "age",
         "age must be an age group of 1, 18, 25, 35, 45, 50, 56"),
        ("ml-1m", "users.dat", "900::M::25::21::12345", "occupation", "occupation must be a code 0..20"),
        ("ml-1m", "movies.dat", "900::Untitled (1995)::", "genres",
         "genres is empty (a movie without any says (no genres listed))"),
        ("ml-10m", "ratings.dat", "1::{item}::3.3::1230000000", "rating",
         "rating must be 0.5..5.0 in half stars"),
        ("ml-10m", "ratings.dat", "1::{item}::0::1230000000", "rating",
         "rating must be 0.5..5.0 in half stars"),
        ("ml-10m", "ratings.dat", "1::9999::4::1230000000", "item_id", "item not in movies.dat"),
        ("ml-25m", "ratings.csv", "1,{item},5.5,1230000000", "rating",
         "rating must be 0.5..5.0 in half stars"),
        ("ml-25m", "ratings.csv", "1,{item},4.0,yesterday", "timestamp",
         "timestamp must be unix seconds from 1970 to 9999"),
        ("ml-25m", "movies.csv", '900,"Unclosed (1995),Drama', "line",
         "expected 3 comma-separated fields"),
        ("ml-25m", "movies.csv", "900,,Drama", "title", "title is empty"),
        ("ml-25m", "movies.csv", "1,Again (1995),Drama", "item_id", "duplicate item id"),
        ("ml-25m", "links.csv", "900,tt0114709,862", "imdb_id", "IMDb id must be digits"),
    ],
)  # fmt: skip
def test_bad_lines_are_rejected_with_their_line(
    tmp_path: Path, dataset: str, file: str, line: str, field: str, reason: str
) -> None:
    files = member_files(tmp_path, dataset)
    item = unrated_item(curate(dataset, files), 1)
    files[file], number = with_line(files[file], line.format(item=item))

    assert rejects_of(dataset, files) == [(file, number, field, reason)]


def test_duplicate_pair_rejects_the_later_line(tmp_path: Path) -> None:
    files = member_files(tmp_path, "ml-latest-small")
    first = files["ratings.csv"].split(b"\n")[1].decode().split(",")
    files["ratings.csv"], number = with_line(
        files["ratings.csv"], f"{first[0]},{first[1]},1.0,{first[3]}"
    )

    assert rejects_of("ml-latest-small", files) == [
        ("ratings.csv", number, "item_id",
         "duplicate (user, item) pair: the user rated this item on an earlier line"),
    ]  # fmt: skip


# --- ingest: the registry's archive and MD5 ------------------------------------------------------
def zip_bytes(folder: Path, dataset: str, tmp_path: Path) -> bytes:
    return write_archive(folder, dataset, tmp_path / f"{dataset}.zip").read_bytes()


@pytest.mark.usefixtures("prefect_harness")
def test_wrong_md5_from_the_registry_fails_the_ingest(
    recsys_env: Path, tmp_path: Path, http_server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ingest import ingest

    folder = write_dataset(tmp_path / "ml-1m", "ml-1m", SMALL, seed=5)
    url = http_server.serve("/datasets/movielens/ml-1m.zip", zip_bytes(folder, "ml-1m", tmp_path))
    monkeypatch.setenv("RECSYS_DATASET", "ml-1m")
    monkeypatch.setenv("RECSYS_MOVIELENS_SOURCE", url)

    with pytest.raises(ChecksumMismatchError, match="expected c4d9eecfca2ab87c1945afe126590906"):
        ingest()


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_strips_the_members_top_folder(
    recsys_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ingest import ingest

    folder = write_dataset(tmp_path / "ml-10m", "ml-10m", SMALL, seed=5)
    archive = tmp_path / "ml-10m.zip"
    archive.write_bytes(zip_bytes(folder, "ml-10m", tmp_path))
    monkeypatch.setenv("RECSYS_DATASET", "ml-10m")

    raw = ingest(source=str(archive), md5="")

    with zipfile.ZipFile(io.BytesIO(archive.read_bytes())) as handle:
        assert handle.namelist()[0].startswith("ml-10M100K/")
    assert raw.dataset == "ml-10m" and raw.prefix.startswith("raw/ml-10m/")
    assert sorted(f.file for f in raw.files) == ["movies.dat", "ratings.dat", "tags.dat"]


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_without_a_required_file_fails(
    recsys_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ingest import ingest

    folder = write_dataset(tmp_path / "ml-25m", "ml-25m", SMALL, seed=5)
    (folder / "movies.csv").unlink()
    monkeypatch.setenv("RECSYS_DATASET", "ml-25m")

    with pytest.raises(ArchiveError, match=r"ml-25m file\(s\) movies\.csv missing"):
        ingest(source=str(folder))


# --- the pipeline per member, side by side ------------------------------------------------------
def transform_member(
    tmp_path: Path, dataset: str, monkeypatch: pytest.MonkeyPatch, seed: int = 5
) -> LoadResult:
    """Ingest a synthetic archive of ``dataset`` (laid out like GroupLens's) and transform it."""
    from flows.ingest import ingest
    from flows.transform import transform

    folder = write_dataset(tmp_path / f"{dataset}-{seed}", dataset, SMALL, seed=seed)
    archive = write_archive(folder, dataset, tmp_path / f"{dataset}-{seed}.zip")
    monkeypatch.setenv("RECSYS_DATASET", dataset)
    return transform(raw=ingest(source=str(archive), md5=""))


def folds_in_warehouse(url: str, dataset: str) -> list[int]:
    folds = read_table(
        url,
        "SELECT DISTINCT test_fold FROM movielens.folds WHERE dataset = %s ORDER BY 1",
        (dataset,),
    )
    return [int(f) for f in folds["test_fold"]]


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("dataset", MEMBERS)
def test_each_member_runs_ingest_and_transform(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dataset: str
) -> None:
    result = transform_member(tmp_path, dataset, monkeypatch)

    counts = table_counts(database_url, dataset)
    assert result.loaded and result.dataset == dataset
    assert counts["movielens.ratings"] == SMALL.ratings
    assert counts["movielens.items"] == SMALL.items
    assert counts["features.user_features"] == counts["movielens.users"] > 0
    assert counts["features.item_features"] == SMALL.items
    assert folds_in_warehouse(database_url, dataset) == [1, 2, 3, 4, 5]
    stars = read_table(
        database_url, "SELECT DISTINCT rating FROM movielens.ratings WHERE dataset = %s", (dataset,)
    )["rating"].to_list()
    assert any(star % 1 for star in stars) == movielens_set(dataset).half_stars
    lake = Lake.from_settings(load_settings())
    assert len(lake.list(f"curated/{dataset}/{result.version}")) == 7
    assert len(lake.list(f"features/{dataset}/{result.version}")) == 2


@pytest.mark.usefixtures("prefect_harness")
def test_members_live_side_by_side_in_one_lake_and_warehouse(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = transform_member(tmp_path, "ml-1m", monkeypatch)
    monkeypatch.setenv("RECSYS_FOLD_SCHEME", "temporal")
    second = transform_member(tmp_path, "ml-latest-small", monkeypatch, seed=6)

    loaded = read_table(database_url, "SELECT dataset, version FROM movielens.datasets ORDER BY 1")
    assert loaded.rows() == [("ml-1m", first.version), ("ml-latest-small", second.version)]
    for dataset in ("ml-1m", "ml-latest-small"):
        assert table_counts(database_url, dataset)["movielens.ratings"] == SMALL.ratings
    assert folds_in_warehouse(database_url, "ml-1m") == [1, 2, 3, 4, 5]
    assert folds_in_warehouse(database_url, "ml-latest-small") == [0, 1]  # temporal hold-out
    users = read_table(
        database_url,
        "SELECT dataset, count(occupation) AS known FROM features.user_features GROUP BY 1"
        " ORDER BY 1",
    )
    assert users.rows() == [("ml-1m", SMALL.users), ("ml-latest-small", 0)]
    lake = Lake.from_settings(load_settings())
    for layer in ("raw", "curated", "features"):
        assert {key.split("/")[1] for key in lake.list(layer)} == {"ml-1m", "ml-latest-small"}


@pytest.mark.usefixtures("prefect_harness")
def test_another_fold_scheme_is_another_version(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    random = transform_member(tmp_path, "ml-20m", monkeypatch)
    monkeypatch.setenv("RECSYS_FOLD_SCHEME", "temporal")

    temporal = transform_member(tmp_path, "ml-20m", monkeypatch)

    assert temporal.loaded and temporal.version != random.version
    assert folds_in_warehouse(database_url, "ml-20m") == [0, 1]
    held = read_table(
        database_url,
        "SELECT count(*) AS n FROM movielens.folds WHERE dataset = 'ml-20m' AND test_fold = 1",
    )["n"][0]
    assert 0.15 * SMALL.ratings < held < 0.25 * SMALL.ratings


def test_migrations_upgrade_a_loaded_warehouse(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from tasks.features import item_features, user_features
    from tasks.warehouse import loads, schema
    from tasks.warehouse.connection import connect

    def tables(dataset: str, rule: FoldRule) -> dict[str, pl.DataFrame]:
        curated = curate(dataset, member_files(tmp_path, dataset), rule)
        items = item_features(curated.ratings, curated.items, curated.item_genres, curated.genres)
        users = user_features(curated.ratings, curated.users, curated.item_genres, curated.genres)
        return loads.warehouse_tables(curated.tables(), items, users)

    before = tmp_path / "sql"
    before.mkdir()
    # (and V005's build column, which today's loader writes)
    for name in ("V001__warehouse.sql", "V002__outbox_keys.sql", "V005__load_build.sql"):
        shutil.copy(schema.MIGRATIONS / name, before / name)
    monkeypatch.setattr(schema, "MIGRATIONS", before)
    monkeypatch.setattr(loads, "PARTITION_KEYS", {})  # the loader before V004
    schema.migrate(database_url)
    loads.load_dataset(database_url, "ml-1m", "v1", tables("ml-1m", RANDOM))
    monkeypatch.undo()

    applied = schema.migrate(database_url)
    old_partition = loads.partition_name("movielens.ratings", "ml-1m", "v1")
    migrated_keys = read_table(
        database_url,
        "SELECT contype::text AS kind FROM pg_constraint WHERE conrelid = %s::regclass"
        " AND contype IN ('p', 'f') ORDER BY 1",
        (old_partition,),
    )
    temporal = loads.load_dataset(
        database_url, "ml-25m", "v1", tables("ml-25m", FoldRule("temporal"))
    )
    reloaded = loads.load_dataset(database_url, "ml-1m", "v2", tables("ml-1m", RANDOM))

    later = sorted(path.stem for path in schema.MIGRATIONS.glob("V*.sql") if path.stem[:4] > "V005")
    assert applied == ["V003__fold_zero", "V004__ratings_keys_on_ids", *later]
    assert migrated_keys["kind"].to_list() == ["f", "f", "p"]  # V004 keyed the loaded partition
    assert temporal.loaded and reloaded.loaded
    assert folds_in_warehouse(database_url, "ml-25m") == [0, 1]
    with (
        pytest.raises(Exception, match="ratings_test_fold_range"),
        connect(database_url) as conn,
    ):
        conn.execute("INSERT INTO movielens.ratings VALUES ('ml-1m', 1, 1, 3, now(), 6)")


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("dataset", "scheme"), [("ml-1m", "random"), ("ml-10m", "random"), ("ml-32m", "temporal")]
)
def test_train_on_each_layout(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dataset: str,
    scheme: str,
) -> None:
    from flows.train import train
    from tasks.train.units import prepare_training_set

    monkeypatch.setenv("RECSYS_FOLD_SCHEME", scheme)
    loaded = transform_member(tmp_path, dataset, monkeypatch)

    # the temporal hold-out has one test fold (fold 0 is never tested): default folds
    folds = None if scheme == "temporal" else [1]
    champion = train(
        kinds=["kmeans_knn", "forest", "bias", "popularity"], n_clusters=[1, 2],
        n_neighbors=[5], folds=folds, dataset_version=loaded.version,
        register_model=True,  # a partial grid registers only when asked
    )  # fmt: skip

    assert champion.version
    training = prepare_training_set.fn(dataset, loaded.version, load_settings().resolved_lake_url)
    assert training.folds == ((1,) if scheme == "temporal" else (1, 2, 3, 4, 5))
    served = read_table(
        database_url,
        "SELECT count(DISTINCT user_id) AS users FROM serving.recommendations WHERE dataset = %s",
        (dataset,),
    )
    assert served["users"][0] == SMALL.users
