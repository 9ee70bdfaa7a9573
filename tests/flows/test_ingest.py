"""The ingest flow: zip, folder and URL sources into local and S3 lakes; caching; bad input."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from bench.synth import SyntheticSize, write_ml100k
from flows.ingest import ingest
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.movielens.errors import (
    ArchiveError,
    ChecksumMismatchError,
    DownloadError,
    IngestError,
    SourceNotFoundError,
)
from tasks.movielens.sources import folder_sha256
from tasks.orchestration import prefect_environment
from tests.conftest import HttpServer, S3Server, md5, task_run_states, zip_of

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL = SyntheticSize(ratings=500, users=30, items=60)


@pytest.fixture(scope="module")
def synthetic_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ml100k(tmp_path_factory.mktemp("synthetic") / "ml-100k", SMALL, seed=3)


def lake_keys(lake_url: str) -> list[str]:
    return Lake.from_settings(load_settings(), lake_url).list()


def test_folder_source_stores_every_file_and_a_manifest(
    recsys_env: Path, synthetic_folder: Path
) -> None:
    raw = ingest(source=str(synthetic_folder))

    lake = Lake.from_settings(load_settings())
    manifest = lake.get_json(f"{raw.prefix}/manifest.json")
    expected = sorted(p.name for p in synthetic_folder.iterdir())
    assert raw.sha256 == folder_sha256(synthetic_folder)
    assert sorted(f["file"] for f in manifest["files"]) == expected
    assert lake.list(raw.prefix) == sorted(
        [f"{raw.prefix}/{n}" for n in expected] + [f"{raw.prefix}/manifest.json"]
    )
    u_data = next(f for f in manifest["files"] if f["file"] == "u.data")
    assert (
        u_data["sha256"] == hashlib.sha256((synthetic_folder / "u.data").read_bytes()).hexdigest()
    )
    assert u_data["size"] == (synthetic_folder / "u.data").stat().st_size
    assert manifest["source"] == str(synthetic_folder) and manifest["fetched_at"]


def test_rerun_is_all_cache_hits(recsys_env: Path, synthetic_folder: Path) -> None:
    first = ingest(source=str(synthetic_folder), return_state=True)
    second = ingest(source=str(synthetic_folder), return_state=True)

    assert set(sum(task_run_states(first).values(), [])) == {"Completed"}
    assert task_run_states(second) == {"fetch_archive": ["Cached"], "store_raw_files": ["Cached"]}
    assert second.result() == first.result()


def test_changed_content_is_not_a_cache_hit(recsys_env: Path, tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "changing", SMALL, seed=1)
    first = ingest(source=str(folder))
    (folder / "u.info").write_text("1 users\n")

    second = ingest(source=str(folder), return_state=True)

    assert set(sum(task_run_states(second).values(), [])) == {"Completed"}
    assert second.result().sha256 != first.sha256


def test_zip_from_url_is_downloaded_verified_and_stored_in_s3(
    s3_lake_env: str, s3_server: S3Server, http_server: HttpServer, synthetic_folder: Path
) -> None:
    payload = zip_of(synthetic_folder)
    url = http_server.serve("/good/ml-100k.zip", payload)

    raw = ingest(source=url, md5=md5(payload))

    bucket = s3_lake_env.removeprefix("s3://").split("/")[0]
    keys = s3_server.keys(bucket)
    assert raw.sha256 == hashlib.sha256(payload).hexdigest()
    assert f"lake/{raw.prefix}/manifest.json" in keys
    assert f"lake/{raw.prefix}/u.item" in keys
    assert len([k for k in keys if k.startswith(f"lake/{raw.prefix}/")]) == len(raw.files) + 1
    lake = Lake.from_settings(load_settings())
    assert lake.get_bytes(raw.key("u.item")) == (synthetic_folder / "u.item").read_bytes()


def test_local_zip_source(recsys_env: Path, tmp_path: Path, synthetic_folder: Path) -> None:
    archive = tmp_path / "ml-100k.zip"
    archive.write_bytes(zip_of(synthetic_folder))

    raw = ingest(source=str(archive), md5=md5(archive.read_bytes()))

    assert sorted(f.file for f in raw.files) == sorted(p.name for p in synthetic_folder.iterdir())


def test_transient_server_errors_are_retried(
    recsys_env: Path, http_server: HttpServer, synthetic_folder: Path
) -> None:
    payload = zip_of(synthetic_folder)
    url = http_server.serve("/flaky/ml-100k.zip", payload)
    http_server.fail_first["/flaky/ml-100k.zip"] = 2

    raw = ingest(source=url, md5=md5(payload))

    assert http_server.hits["/flaky/ml-100k.zip"] == 3
    assert raw.sha256 == hashlib.sha256(payload).hexdigest()


def test_checksum_mismatch_fails_and_writes_nothing(
    recsys_env: Path, http_server: HttpServer, synthetic_folder: Path
) -> None:
    url = http_server.serve("/tampered/ml-100k.zip", zip_of(synthetic_folder))

    with pytest.raises(ChecksumMismatchError, match="does not match the expected 0e33842e"):
        ingest(source=url, md5="0e33842e24a9c977be4e0107933c0723")

    assert lake_keys(load_settings().resolved_lake_url) == []
    assert list((recsys_env / "downloads").glob("*")) == []


def test_truncated_download_fails_and_writes_nothing(
    recsys_env: Path, http_server: HttpServer, synthetic_folder: Path
) -> None:
    url = http_server.serve("/cut/ml-100k.zip", zip_of(synthetic_folder))
    http_server.truncate.add("/cut/ml-100k.zip")

    with pytest.raises(DownloadError, match="cut/ml-100k.zip"):
        ingest(source=url, md5="")

    assert lake_keys(load_settings().resolved_lake_url) == []


def test_file_that_is_not_a_zip_is_rejected(recsys_env: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "ml-100k.zip"
    bogus.write_bytes(b"<html>not a zip</html>")

    with pytest.raises(ArchiveError, match="not a zip archive, or truncated"):
        ingest(source=str(bogus), md5="")

    assert lake_keys(load_settings().resolved_lake_url) == []


def test_truncated_zip_file_is_rejected(
    recsys_env: Path, tmp_path: Path, synthetic_folder: Path
) -> None:
    payload = zip_of(synthetic_folder)
    cut = tmp_path / "cut.zip"
    cut.write_bytes(payload[: len(payload) - 200])

    with pytest.raises(ArchiveError, match="cut.zip"):
        ingest(source=str(cut), md5="")


def test_folder_without_ratings_is_rejected(recsys_env: Path, tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "partial", SMALL, seed=2, folds=False)
    (folder / "u.data").unlink()

    with pytest.raises(ArchiveError, match=r"u\.data missing"):
        ingest(source=str(folder))

    assert lake_keys(load_settings().resolved_lake_url) == []


def test_missing_local_source(recsys_env: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no-such-folder"):
        ingest(source=str(tmp_path / "no-such-folder"))


def test_http_404_is_a_clear_error(recsys_env: Path, http_server: HttpServer) -> None:
    with pytest.raises(IngestError, match="HTTP 404"):
        ingest(source=f"{http_server.url}/absent.zip", md5="")


def test_unreachable_url_is_a_clear_error_after_retries(recsys_env: Path) -> None:
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1:9/ml-100k.zip: cannot download"):
        ingest(source="http://127.0.0.1:9/ml-100k.zip", md5="")


def test_s3_lake_keeps_prefect_results_in_the_bucket(
    s3_lake_env: str, s3_server: S3Server, synthetic_folder: Path
) -> None:
    with prefect_environment(load_settings()):
        first = ingest(source=str(synthetic_folder), return_state=True)
        second = ingest(source=str(synthetic_folder), return_state=True)

    bucket = s3_lake_env.removeprefix("s3://").split("/")[0]
    results = [k for k in s3_server.keys(bucket) if k.startswith("lake/prefect-results/")]
    assert len(results) >= 2
    assert set(sum(task_run_states(first).values(), [])) == {"Completed"}
    assert set(sum(task_run_states(second).values(), [])) == {"Cached"}


@pytest.mark.realdata
def test_real_ml100k_folder(recsys_env: Path, ml100k_dir: Path) -> None:
    raw = ingest(source=str(ml100k_dir))

    names = {f.file for f in raw.files}
    assert {"u.data", "u.item", "u.user", "u.genre", "u.occupation", "u1.base", "u5.test"} <= names
    assert len(names) >= 10
    u_data = next(f for f in raw.files if f.file == "u.data")
    assert u_data.size == (ml100k_dir / "u.data").stat().st_size


def test_a_dead_runs_unfinished_version_is_removed_by_the_next_ingest_once_stale(
    recsys_env: Path, synthetic_folder: Path
) -> None:
    import os

    from tasks.movielens.sources import STALE_SECONDS, remove_stale_partials

    lake = Lake.from_settings(load_settings())
    raw = ingest(source=str(synthetic_folder))
    dead = f"raw/{raw.dataset}/{'d' * 64}"
    lake.put_bytes(f"{dead}/u.data", b"1\t1\t5\t1\n")  # a run killed before its manifest
    fresh = f"raw/{raw.dataset}/{'f' * 64}"
    lake.put_bytes(f"{fresh}/u.data", b"1\t1\t5\t1\n")  # a run still writing
    leftover = f"{raw.prefix}/.u1.base.0123.tmp"
    lake.put_bytes(leftover, b"half")  # a temporary file of a killed copy
    old = time.time() - STALE_SECONDS - 60
    for key in (f"{dead}/u.data", leftover):
        os.utime(lake.path(key), (old, old))

    removed = remove_stale_partials(lake, raw.dataset)

    assert sorted(removed) == sorted([dead, leftover])
    assert lake.exists(f"{fresh}/u.data") and lake.exists(f"{raw.prefix}/manifest.json")


def test_temporary_files_in_the_version_just_completed_are_removed_at_once(
    recsys_env: Path, synthetic_folder: Path
) -> None:
    from tasks.movielens.sources import remove_stale_partials

    lake = Lake.from_settings(load_settings())
    raw = ingest(source=str(synthetic_folder))
    leftover = f"{raw.prefix}/.u1.base.4567.tmp"  # a killed copy's, a moment ago
    lake.put_bytes(leftover, b"half")

    removed = remove_stale_partials(lake, raw.dataset, completed=raw.prefix)

    assert removed == [leftover]
    assert not lake.exists(leftover) and lake.exists(f"{raw.prefix}/u.data")
