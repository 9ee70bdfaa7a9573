"""Issue 21, items 1-3: a refusal names its first bad line and tells causes from consequences;
text edge cases (BOM, NUL, a truncated file, an unknown user, ratings from the future); hostile
archives and folders (unknown members, sizes past the limit, links out, unsafe paths)."""

from __future__ import annotations

import io
import logging
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from bench.synth import SyntheticSize, write_archive, write_dataset, write_ml100k
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.movielens.catalog import movielens_set
from tasks.movielens.curate import _rejects_message, fetched_at, read_raw_files
from tasks.movielens.errors import ArchiveError, ValidationError
from tasks.movielens.folds import FoldRule
from tasks.movielens.formats import curate_files, curate_ml100k
from tasks.movielens.sources import (
    BoundedReader,
    FetchedArchive,
    RawDataset,
    RawFile,
    SourceKind,
    _known_members,
    _open_members,
    resolve_source,
)

SMALL = SyntheticSize(ratings=400, users=25, items=50)
BOM = b"\xef\xbb\xbf"
LOGGER = logging.getLogger(__name__)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, bytes]:
    folder = write_ml100k(tmp_path / "ml", SMALL, seed=5, folds=False)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def files_with_folds(tmp_path: Path) -> dict[str, bytes]:
    folder = write_ml100k(tmp_path / "ml", SMALL, seed=5, folds=True)
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def replace_field(data: bytes, line: int, field: int, value: bytes, separator: bytes) -> bytes:
    """``data`` with field ``field`` (0-based) of line ``line`` (1-based) set to ``value``."""
    lines = data.split(b"\n")
    parts = lines[line - 1].split(separator)
    parts[field] = value
    lines[line - 1] = separator.join(parts)
    return b"\n".join(lines)


def ratings_of(files: dict[str, bytes], column: int, value: int) -> int:
    rows = [line.split(b"\t") for line in files["u.data"].splitlines()]
    return sum(1 for row in rows if int(row[column]) == value)


# --- 1. a refusal names its first bad line; causes apart from consequences ------------------
def test_a_bad_user_line_is_the_cause_and_its_ratings_the_consequence(
    files: dict[str, bytes],
) -> None:
    files["u.user"] = replace_field(files["u.user"], 7, 1, b"0", b"|")  # user 7's age

    rejects = curate_ml100k(files).rejects
    message = _rejects_message(rejects, 0, "lake://rejects.parquet")

    count = ratings_of(files, 0, 7)
    assert count > 0
    assert "1 rejected for themselves, first: u.user line 7 field age ('0'): age must be" in message
    assert f"only because their user or item was rejected, {count} ratings of user 7 (u.data)" in (
        message
    )
    assert set(rejects.filter(pl.col("file") == "u.data")["reason"]) == {"user rejected in u.user"}


def test_a_bad_item_line_is_the_cause_and_its_ratings_the_consequence(
    files: dict[str, bytes],
) -> None:
    files["u.item"] = replace_field(files["u.item"], 3, 2, b"32-Jan-1995", b"|")  # item 3

    message = _rejects_message(curate_ml100k(files).rejects, 0, "lake://rejects.parquet")

    count = ratings_of(files, 1, 3)
    assert "first: u.item line 3 field release_date ('32-Jan-1995'): release date" in message
    assert f"{count} ratings of item 3 (u.data)" in message


def test_a_user_line_with_a_wrong_field_count_still_names_its_ratings_consequences(
    files: dict[str, bytes],
) -> None:
    lines = files["u.user"].split(b"\n")
    lines[6] += b"|extra"  # user 7
    files["u.user"] = b"\n".join(lines)

    rejects = curate_ml100k(files).rejects

    assert set(rejects.filter(pl.col("file") == "u.data")["reason"]) == {"user rejected in u.user"}


def test_a_dat_members_bad_user_line_is_the_cause(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "ml-1m", "ml-1m", SyntheticSize(600, 30, 60), seed=5)
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["users.dat"] = replace_field(files["users.dat"], 2, 2, b"7", b"::")  # not an age group

    rejects = curate_files(movielens_set("ml-1m"), files, FoldRule("random", 0)).rejects

    message = _rejects_message(rejects, 0, "where")
    assert "first: users.dat line 2 field age ('7')" in message
    assert "ratings of user 2 (ratings.dat)" in message


# --- 2. text edge cases -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["u.item", "u.data", "u.user"])
def test_a_byte_order_mark_is_stripped(files: dict[str, bytes], name: str) -> None:
    clean = curate_ml100k(files)
    files[name] = BOM + files[name]

    curated = curate_ml100k(files)

    assert curated.rejects.height == 0
    assert curated.items.equals(clean.items) and curated.ratings.equals(clean.ratings)


def test_a_byte_order_mark_on_a_csv_header_is_stripped(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "small", "ml-latest-small", SyntheticSize(600, 30, 60))
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    files["movies.csv"] = BOM + files["movies.csv"]

    curated = curate_files(movielens_set("ml-latest-small"), files, FoldRule("random", 0))

    assert curated.rejects.height == 0


def test_a_nul_byte_in_a_title_is_rejected_with_file_and_line(files: dict[str, bytes]) -> None:
    files["u.item"] = replace_field(files["u.item"], 4, 1, b"Heat\x00 (1995)", b"|")

    rejects = curate_ml100k(files).rejects.filter(pl.col("file") == "u.item")

    assert rejects.rows() == [
        (
            "u.item",
            4,
            "title",
            "Heat\\0 (1995)",
            "holds a NUL byte (PostgreSQL text cannot store one)",
        )
    ]


def test_a_truncated_last_line_of_u_data_is_named_as_that_line(
    files_with_folds: dict[str, bytes],
) -> None:
    files_with_folds["u.data"] = files_with_folds["u.data"].rstrip(b"\n")[:-12]  # cut mid-line

    with pytest.raises(ValidationError, match=r"^u\.data line 400: the last line .* truncated"):
        curate_ml100k(files_with_folds)


def test_an_unknown_user_only_in_u_data_is_named_before_the_fold_disagreement(
    files_with_folds: dict[str, bytes],
) -> None:
    files_with_folds["u.data"] = replace_field(files_with_folds["u.data"], 5, 0, b"999", b"\t")

    with pytest.raises(ValidationError) as refused:
        curate_ml100k(files_with_folds)

    message = str(refused.value)
    assert message.startswith(
        "u.data's rejected lines first: u.data line 5 field user_id ('999'): user not in u.user"
    )
    assert "u1.test: disagrees" in message


def test_ratings_later_than_the_fetch_are_rejected(files: dict[str, bytes]) -> None:
    fetched = datetime(2024, 5, 1, tzinfo=UTC)
    after = int(datetime(2024, 6, 1, tzinfo=UTC).timestamp())
    files["u.data"] = replace_field(files["u.data"], 9, 3, str(after).encode(), b"\t")

    rejects = curate_ml100k(files, fetched_at=fetched).rejects

    assert rejects.select("file", "line", "field", "reason").rows() == [
        (
            "u.data",
            9,
            "timestamp",
            "timestamp is later than the fetch of the source (2024-05-01 00:00:00 UTC)",
        )
    ]


def test_a_rating_in_2100_is_rejected_without_a_fetch_time(files: dict[str, bytes]) -> None:
    year_2100 = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())
    files["u.data"] = replace_field(files["u.data"], 9, 3, str(year_2100).encode(), b"\t")

    rejects = curate_ml100k(files).rejects

    assert rejects.select("line", "field").rows() == [(9, "timestamp")]


def test_the_fetch_time_is_the_raw_manifests(recsys_env: Path) -> None:
    lake = Lake.from_settings(load_settings())
    raw = RawDataset(dataset="ml-100k", lake_url=lake.url, sha256="abc", files=())
    lake.put_json(f"{raw.prefix}/manifest.json", {"fetched_at": "2024-05-01T10:00:00+00:00"})

    assert fetched_at(lake, raw) == datetime(2024, 5, 1, 10, tzinfo=UTC)


# --- 3. hostile archives and folders --------------------------------------------------------
def zip_with(path: Path, members: dict[str, bytes]) -> FetchedArchive:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return FetchedArchive(kind=SourceKind.ZIP, path=str(path), sha256="x", source=str(path))


def member_names(archive: FetchedArchive, dataset: str = "ml-100k") -> list[str]:
    with _open_members(archive, 1 << 30) as found:
        return [m.name for m in _known_members(dataset, found, archive.source, LOGGER)]


def test_root_level_zip_members_keep_their_names(tmp_path: Path) -> None:
    archive = zip_with(
        tmp_path / "a.zip", {"u.data": b"good", "u.item": b"i", "copy/u.data": b"hostile"}
    )

    with _open_members(archive, 1 << 30) as found:
        names = {m.name: m for m in found}
        assert sorted(names) == ["copy/u.data", "u.data", "u.item"]
        with names["u.data"].open() as stream:
            assert stream.read() == b"good"
    assert member_names(archive) == ["u.data", "u.item"]


def test_the_top_folder_of_grouplens_layout_is_stripped(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "a.zip", {"ml-100k/u.data": b"d", "ml-100k/u.item": b"i"})

    assert member_names(archive) == ["u.data", "u.item"]


def test_only_the_datasets_known_files_are_kept(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "ml-25m", "ml-25m", SyntheticSize(600, 30, 60), seed=5)
    (folder / "zeros.bin").write_bytes(bytes(1000))
    (folder / "genome-tags.csv").write_text("tagId,tag\n")
    archive = write_archive(folder, "ml-25m", tmp_path / "ml-25m.zip")
    fetched = FetchedArchive(kind=SourceKind.ZIP, path=str(archive), sha256="x", source="s")

    assert member_names(fetched, "ml-25m") == [
        "genome-tags.csv",
        "links.csv",
        "movies.csv",
        "ratings.csv",
        "tags.csv",
    ]


@pytest.mark.parametrize(
    "name", ["../u.data", "ml-100k/../../u.data", "/etc/u.data", "..\\u.data", "C:/u.data"]
)
def test_unsafe_zip_member_paths_are_refused(tmp_path: Path, name: str) -> None:
    archive = zip_with(tmp_path / "a.zip", {"ml-100k/u.item": b"i", name: b"x"})

    with pytest.raises(ArchiveError, match="unsafe member path"):
        member_names(archive)


def test_a_zip_member_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    archive = zip_with(tmp_path / "a.zip", {"ml-100k/u.data": bytes(5000)})

    with (
        _open_members(archive, 4096) as found,
        pytest.raises(ArchiveError, match=r"u\.data holds 5000 bytes .* RECSYS_MAX_MEMBER_BYTES"),
    ):
        found[0].open()


def test_a_stream_longer_than_its_limit_fails_as_it_is_read() -> None:
    reader = BoundedReader(io.BytesIO(bytes(5000)), 4096, lambda size: f"{size} is too many")

    assert len(reader.read(4096)) == 4096
    with pytest.raises(ArchiveError, match="4097 is too many"):
        reader.read(4096)


def test_a_symlink_out_of_a_source_folder_is_refused(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml", SMALL, seed=5, folds=False)
    secret = tmp_path / "secret.txt"
    secret.write_text("not MovieLens")
    (folder / "u.info").symlink_to(secret)

    with pytest.raises(ArchiveError, match=r"u\.info is a symbolic link to .*secret\.txt"):
        resolve_source(str(folder), None)


def test_a_symlink_within_a_source_folder_is_followed(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml", SMALL, seed=5, folds=False)
    (folder / "u.data").rename(folder / "ratings.tsv")
    (folder / "u.data").symlink_to(folder / "ratings.tsv")
    fetched = FetchedArchive(kind=SourceKind.FOLDER, path=str(folder), sha256="x", source="s")

    assert "u.data" in member_names(fetched)


def test_curation_refuses_a_raw_file_past_the_limit_before_reading_it(recsys_env: Path) -> None:
    lake = Lake.from_settings(load_settings())
    raw = RawDataset(
        dataset="ml-100k",
        lake_url=lake.url,
        sha256="abc",
        files=(RawFile(file="u.data", size=5000, sha256="0"),),
    )  # no u.data in the lake: reading it would fail otherwise

    with pytest.raises(ArchiveError, match=r"u\.data: 5000 bytes, more than the 4096 allowed"):
        read_raw_files(lake, raw, ["u.data"], 4096)


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_stores_only_known_files_within_the_limit(
    recsys_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ingest import ingest

    folder = write_ml100k(tmp_path / "ml", SMALL, seed=5, folds=False)
    (folder / "zeros.bin").write_bytes(bytes(1 << 20))

    raw = ingest(source=str(folder))

    assert sorted(f.file for f in raw.files) == [
        "u.data",
        "u.genre",
        "u.item",
        "u.occupation",
        "u.user",
    ]
    assert not any("zeros" in key for key in Lake.from_settings(load_settings()).list())
    monkeypatch.setenv("RECSYS_MAX_MEMBER_BYTES", str((folder / "u.data").stat().st_size - 1))
    (folder / "u.info").write_text("changed content: a new raw version\n")
    with pytest.raises(ArchiveError, match=r"u\.data holds .* RECSYS_MAX_MEMBER_BYTES"):
        ingest(source=str(folder))
    assert not any("zeros" in key for key in Lake.from_settings(load_settings()).list())
