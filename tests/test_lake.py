"""The lake behaves the same on a local folder and on a real S3 API server."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest

from tasks.config import load_settings
from tasks.lake import Lake, LakeError


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, recsys_env: Path) -> Lake:
    if request.param == "s3":
        request.getfixturevalue("s3_lake_env")
    return Lake.from_settings(load_settings())


def test_bytes_round_trip(lake: Lake) -> None:
    lake.put_bytes("a/b/c.bin", b"\x00\x01payload")

    assert lake.get_bytes("a/b/c.bin") == b"\x00\x01payload"
    assert lake.exists("a/b/c.bin") and not lake.exists("a/b/missing.bin")
    assert lake.size("a/b/c.bin") == 9


def test_sha256_is_the_content_hash(lake: Lake) -> None:
    lake.put_bytes("x.txt", b"abc")

    assert (
        lake.sha256("x.txt") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_stream_copy_returns_its_hash_and_leaves_no_temporaries(lake: Lake) -> None:
    digest = lake.put_stream("raw/f.dat", io.BytesIO(b"abc"))

    assert digest == lake.sha256("raw/f.dat")
    assert lake.list("raw") == ["raw/f.dat"]


def test_list_is_relative_and_sorted(lake: Lake) -> None:
    for key in ("p/2.txt", "p/1.txt", "p/q/3.txt", "other/4.txt"):
        lake.put_bytes(key, b"x")

    assert lake.list("p") == ["p/1.txt", "p/2.txt", "p/q/3.txt"]
    assert lake.list("nothing-here") == []


def test_json_and_parquet_round_trip(lake: Lake) -> None:
    frame = pl.DataFrame({"user_id": [1, 2], "title": ["Café", "Noël"]})

    lake.put_json("m.json", {"files": [1, 2]})
    lake.write_parquet("t.parquet", frame)

    assert lake.get_json("m.json") == {"files": [1, 2]}
    assert lake.read_parquet("t.parquet").equals(frame)


def test_delete_removes_a_prefix(lake: Lake) -> None:
    lake.put_bytes("d/1", b"1")
    lake.put_bytes("d/2", b"2")

    lake.delete("d")
    lake.delete("d")  # absent: no error

    assert lake.list("d") == []


def test_missing_object_names_its_url(lake: Lake) -> None:
    with pytest.raises(LakeError, match=r"nope\.bin does not exist"):
        lake.get_bytes("nope.bin")


def test_failed_local_write_leaves_the_old_content(recsys_env: Path) -> None:
    lake = Lake.from_settings(load_settings())
    lake.put_bytes("f.txt", b"old")

    class Exploding(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("disk on fire")

    with pytest.raises(OSError):
        lake.put_stream("f.txt", Exploding())

    assert lake.get_bytes("f.txt") == b"old"
    assert lake.list() == ["f.txt"]


@pytest.mark.parametrize("action", ["size", "delete"])
def test_an_unreachable_s3_endpoint_is_one_lake_error_naming_it(action: str) -> None:
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    lake = Lake(
        url="s3://bucket/lake",
        storage_options={"endpoint_url": closed, "key": "k", "secret": "s",
                         "config_kwargs": {"retries": {"max_attempts": 1}}},
    )  # fmt: skip

    with pytest.raises(LakeError) as caught:
        getattr(lake, action)("raw/file")

    message = str(caught.value)
    assert closed in message and "RECSYS_S3_ENDPOINT_URL" in message
    assert "s3://bucket/lake/raw/file" in message and len(message.splitlines()) == 1
    assert caught.value.__cause__ is not None  # the original error is kept
