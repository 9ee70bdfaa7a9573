"""The lake's file endpoints against the real uvicorn server: the round trip, listing, streamed
download, the upload limit, auth, and path traversal refused (raw request lines, as an attacker
sends them, not normalised by a client)."""

from __future__ import annotations

import hashlib
import http.client
import io
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from tasks.lake import Lake
from tasks.serving.lake_files import UploadTooLarge, store_upload
from tests.api.conftest import API_TOKEN, Api, Project, start_api
from tests.conftest import S3Server

SMALL_LIMIT = 4096
TRAVERSALS = [
    "../outside.txt",
    "%2e%2e/outside.txt",
    "%2E%2E%2Foutside.txt",
    "%252e%252e%252foutside.txt",  # double-encoded
    "lake/../../outside.txt",
    "..%5coutside.txt",
    "..\\outside.txt",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "a%00b.txt",
    "~/outside.txt",
    "./outside.txt",
]


def lake_root(project: Project) -> Path:
    return project.home / "lake"


def raw_request(
    api: Api, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    """Send ``path`` exactly as written (http.client keeps '..' and backslashes)."""
    url = urlsplit(api.url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("content-type") or ""
    finally:
        connection.close()


def multipart(name: str, content: bytes) -> tuple[bytes, dict[str, str]]:
    request = httpx.Request("POST", "http://x/", files={"file": (name, content)})
    return request.read(), {"Content-Type": request.headers["content-type"]}


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_TOKEN}"}


def assert_refused(status: int, body: bytes, content_type: str, project: Project) -> Any:
    assert 400 <= status < 500, (status, body)
    assert content_type.startswith("application/json")
    text = body.decode()
    assert str(project.home) not in text and "Traceback" not in text
    return httpx.Response(status, content=body).json()


@pytest.fixture
def outside(project: Project) -> Iterator[Path]:
    """A file next to the lake folder, which no request may read, replace or delete."""
    lake_root(project).mkdir(parents=True, exist_ok=True)
    sentinel = project.home / "outside.txt"
    sentinel.write_text("not for the API")
    yield sentinel
    sentinel.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def small_api(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    log = tmp_path_factory.mktemp("api-small-log") / "api.log"
    server = start_api(project, log, RECSYS_API_MAX_UPLOAD_BYTES=str(SMALL_LIMIT))
    try:
        yield server
    finally:
        server.stop()


def unique_folder() -> str:
    return f"uploads/{uuid.uuid4().hex[:8]}"


# --- the round trip -----------------------------------------------------------------------
def test_upload_list_download_delete_round_trip(api: Api, project: Project) -> None:
    folder, content = unique_folder(), b"user_id,item_id\n1,50\n"

    with api.client(API_TOKEN) as client:
        stored = client.post(f"/files/{folder}", files={"file": ("ratings.csv", content)})
        listed = client.get("/files", params={"prefix": folder})
        downloaded = client.get(f"/files/{folder}/ratings.csv")
        deleted = client.delete(f"/files/{folder}/ratings.csv")
        after = client.get(f"/files/{folder}/ratings.csv")
        listed_after = client.get("/files", params={"prefix": folder})

    key = f"{folder}/ratings.csv"
    assert stored.status_code == 201
    assert stored.json() == {
        "key": key,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    assert listed.json() == {"prefix": folder, "files": [{"key": key, "size": len(content)}]}
    assert downloaded.status_code == 200 and downloaded.content == content
    assert downloaded.headers["content-disposition"] == "attachment; filename*=UTF-8''ratings.csv"
    assert deleted.json() == {"deleted": key}
    assert after.status_code == 404 and after.json()["fields"] == [
        {"field": "key", "problem": "no such file in the lake"}
    ]
    assert listed_after.json()["files"] == []
    assert not (lake_root(project) / key).exists()


def test_upload_lands_in_the_lake_folder(api: Api, project: Project) -> None:
    folder = unique_folder()

    with api.client(API_TOKEN) as client:
        client.post(f"/files/{folder}", files={"file": ("notes.txt", b"hello")})

    assert (lake_root(project) / folder / "notes.txt").read_bytes() == b"hello"
    assert list((lake_root(project) / folder).iterdir()) == [
        lake_root(project) / folder / "notes.txt"
    ]


def test_upload_replaces_a_file_of_the_same_key(api: Api) -> None:
    folder = unique_folder()

    with api.client(API_TOKEN) as client:
        client.post(f"/files/{folder}", files={"file": ("a.txt", b"first")})
        client.post(f"/files/{folder}", files={"file": ("a.txt", b"second")})
        downloaded = client.get(f"/files/{folder}/a.txt")

    assert downloaded.content == b"second"


def test_download_streams_a_file_larger_than_a_chunk(api: Api, project: Project) -> None:
    content = bytes(range(256)) * 12_000  # ~3 MB: several 1 MiB chunks
    target = lake_root(project) / unique_folder() / "big.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(content)
    key = target.relative_to(lake_root(project)).as_posix()

    with api.client() as client, client.stream("GET", f"/files/{key}") as response:
        chunks = list(response.iter_raw())
        length = response.headers["content-length"]

    assert b"".join(chunks) == content
    assert length == str(len(content))


def test_list_without_prefix_covers_the_whole_lake(api: Api) -> None:
    folder = unique_folder()
    with api.client(API_TOKEN) as client:
        client.post(f"/files/{folder}", files={"file": ("x.txt", b"x")})

        listed = client.get("/files")

    assert {"key": f"{folder}/x.txt", "size": 1} in listed.json()["files"]


def test_list_of_an_absent_folder_is_empty(api: Api) -> None:
    with api.client() as client:
        listed = client.get("/files", params={"prefix": "no/such/folder"})

    assert listed.status_code == 200
    assert listed.json() == {"prefix": "no/such/folder", "files": []}


def test_download_of_an_absent_key_is_404_json(api: Api) -> None:
    with api.client() as client:
        response = client.get("/files/no/such/file.csv")

    assert response.status_code == 404
    assert response.json() == {
        "error": "'no/such/file.csv': no such file in the lake",
        "fields": [{"field": "key", "problem": "no such file in the lake"}],
    }


def test_a_folder_is_neither_downloaded_nor_deleted(api: Api, project: Project) -> None:
    folder = unique_folder()
    with api.client(API_TOKEN) as client:
        client.post(f"/files/{folder}", files={"file": ("x.txt", b"x")})

        downloaded = client.get(f"/files/{folder}")
        deleted = client.delete(f"/files/{folder}")

    assert downloaded.status_code == 404 and deleted.status_code == 404
    assert deleted.json()["fields"] == [
        {"field": "key", "problem": "a folder: only files are deleted"}
    ]
    assert (lake_root(project) / folder / "x.txt").exists()


def test_delete_of_an_absent_key_is_404(api: Api) -> None:
    with api.client(API_TOKEN) as client:
        response = client.delete("/files/no/such/file.csv")

    assert response.status_code == 404
    assert response.json()["fields"][0]["field"] == "key"


# --- auth ---------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_upload_needs_the_token(api: Api, project: Project, token: str | None) -> None:
    folder = unique_folder()

    with api.client(token) as client:
        response = client.post(f"/files/{folder}", files={"file": ("x.txt", b"x")})

    assert response.status_code == 401
    assert response.json()["fields"][0]["field"] == "header.authorization"
    assert not (lake_root(project) / folder).exists()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_delete_needs_the_token(api: Api, project: Project, token: str | None) -> None:
    folder = unique_folder()
    with api.client(API_TOKEN) as client:
        client.post(f"/files/{folder}", files={"file": ("x.txt", b"x")})

    with api.client(token) as client:
        response = client.delete(f"/files/{folder}/x.txt")

    assert response.status_code == 401
    assert (lake_root(project) / folder / "x.txt").exists()


def test_reading_needs_no_token(api: Api) -> None:
    with api.client() as client:
        listed = client.get("/files")

    assert listed.status_code == 200


# --- path traversal -----------------------------------------------------------------------
@pytest.mark.parametrize("path", TRAVERSALS)
def test_download_outside_the_lake_is_refused(
    api: Api, project: Project, outside: Path, path: str
) -> None:
    status, body, content_type = raw_request(api, "GET", f"/files/{path}")

    answer = assert_refused(status, body, content_type, project)
    assert answer["fields"][0]["field"] == "key"
    assert b"not for the API" not in body


@pytest.mark.parametrize("path", TRAVERSALS)
def test_delete_outside_the_lake_is_refused(
    api: Api, project: Project, outside: Path, path: str
) -> None:
    status, body, content_type = raw_request(api, "DELETE", f"/files/{path}", headers=auth())

    answer = assert_refused(status, body, content_type, project)
    assert answer["fields"][0]["field"] == "key"
    assert outside.read_text() == "not for the API"


@pytest.mark.parametrize("path", TRAVERSALS)
def test_listing_outside_the_lake_is_refused(
    api: Api, project: Project, outside: Path, path: str
) -> None:
    status, body, content_type = raw_request(api, "GET", f"/files?prefix={path}")

    answer = assert_refused(status, body, content_type, project)
    assert answer["fields"][0]["field"] == "prefix"


@pytest.mark.parametrize("folder", [p.removesuffix("outside.txt") + "sub" for p in TRAVERSALS])
def test_upload_to_a_folder_outside_the_lake_is_refused(
    api: Api, project: Project, folder: str
) -> None:
    name = f"escaped-{uuid.uuid4().hex}.txt"
    body, headers = multipart(name, b"payload")

    status, answer_body, content_type = raw_request(
        api, "POST", f"/files/{folder}", body, {**headers, **auth()}
    )

    answer = assert_refused(status, answer_body, content_type, project)
    assert answer["fields"][0]["field"] == "folder"
    assert list(project.home.parent.rglob(name)) == []


@pytest.mark.parametrize(
    "name", ["../escaped.txt", "..%2fescaped.txt", "/tmp/escaped.txt", "..\\escaped.txt",
             "a\x01b.txt", ".", "..", "~"],
)  # fmt: skip
def test_upload_with_an_unsafe_file_name_is_refused(api: Api, project: Project, name: str) -> None:
    folder = unique_folder()

    with api.client(API_TOKEN) as client:
        response = client.post(f"/files/{folder}", files={"file": (name, b"payload")})

    assert response.status_code == 422
    assert response.json()["fields"][0]["field"] == "file"
    assert not (lake_root(project) / folder).exists()
    assert not (project.home / "escaped.txt").exists()


def test_refusal_names_the_key_and_the_problem(api: Api) -> None:
    status, body, _ = raw_request(api, "GET", "/files/%2e%2e/outside.txt")

    assert status == 422
    assert httpx.Response(status, content=body).json() == {
        "error": "refused key '../outside.txt': '..' segment: keys cannot leave the lake root",
        "fields": [{"field": "key", "problem": "'..' segment: keys cannot leave the lake root"}],
    }


def test_a_symbolic_link_out_of_the_lake_is_not_followed(
    api: Api, project: Project, outside: Path
) -> None:
    link = lake_root(project) / f"link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(project.home)

    try:
        with api.client() as client:
            response = client.get(f"/files/{link.name}/outside.txt")
    finally:
        link.unlink()

    assert response.status_code == 422
    assert response.json()["fields"] == [{"field": "key", "problem": "leads outside the lake root"}]


# --- the size limit -----------------------------------------------------------------------
def test_upload_past_the_limit_is_413_and_leaves_nothing(small_api: Api, project: Project) -> None:
    folder = unique_folder()

    with small_api.client(API_TOKEN) as client:
        response = client.post(f"/files/{folder}", files={"file": ("big.bin", b"x" * 5000)})

    assert response.status_code == 413
    assert "RECSYS_API_MAX_UPLOAD_BYTES" in response.json()["error"]
    assert not (lake_root(project) / folder).exists()


def chunked_upload(api: Api, folder: str, size: int) -> httpx.Response:
    """A multipart upload sent without Content-Length (chunked), so only counting stops it."""
    body, headers = multipart("big.bin", b"x" * size)
    with api.client(API_TOKEN) as client:
        return client.post(
            f"/files/{folder}",
            content=iter([body[i : i + 1000] for i in range(0, len(body), 1000)]),
            headers=headers,
        )


def test_chunked_upload_past_the_limit_is_refused_and_leaves_nothing(
    small_api: Api, project: Project
) -> None:
    folder = unique_folder()

    response = chunked_upload(small_api, folder, 5000)

    assert response.status_code in {400, 413}
    assert response.headers["content-type"].startswith("application/json")
    assert not (lake_root(project) / folder).exists()


def test_chunked_upload_past_the_limit_is_413(small_api: Api) -> None:
    response = chunked_upload(small_api, unique_folder(), 5000)

    assert response.status_code == 413


def test_upload_under_the_limit_is_stored(small_api: Api, project: Project) -> None:
    folder = unique_folder()

    with small_api.client(API_TOKEN) as client:
        response = client.post(f"/files/{folder}", files={"file": ("ok.bin", b"x" * 1000)})

    assert response.status_code == 201
    assert (lake_root(project) / folder / "ok.bin").stat().st_size == 1000


def test_store_upload_past_the_limit_leaves_no_object_on_s3(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    lake = Lake(
        url=f"s3://{bucket}/lake",
        storage_options={
            "endpoint_url": s3_server.endpoint_url,
            "key": s3_server.access_key,
            "secret": s3_server.secret_key,
        },
    )

    with pytest.raises(UploadTooLarge):
        store_upload(lake, "uploads/big.bin", io.BytesIO(b"x" * 3_000_000), limit=2_000_000)

    assert s3_server.keys(bucket) == []


def test_store_upload_on_s3_keeps_only_the_complete_file(s3_server: S3Server) -> None:
    bucket = s3_server.create_bucket()
    lake = Lake(
        url=f"s3://{bucket}/lake",
        storage_options={
            "endpoint_url": s3_server.endpoint_url,
            "key": s3_server.access_key,
            "secret": s3_server.secret_key,
        },
    )

    stored = store_upload(lake, "uploads/a b.bin", io.BytesIO(b"y" * 1000), limit=2_000_000)

    assert stored.size == 1000
    assert s3_server.keys(bucket) == ["lake/uploads/a b.bin"]


def test_keys_with_spaces_and_unicode_round_trip(api: Api) -> None:
    folder, name = unique_folder(), "année 2024 (v2).csv"

    with api.client(API_TOKEN) as client:
        stored = client.post(f"/files/{folder}", files={"file": (name, b"ok")})
        downloaded = client.get(f"/files/{quote(folder)}/{quote(name)}")

    assert stored.json()["key"] == f"{folder}/{name}"
    assert downloaded.content == b"ok"
