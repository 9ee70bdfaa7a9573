"""Downloading the archive when the server encodes the body (a proxy may gzip the zip)."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from bench.synth import SyntheticSize, write_ml100k
from flows.ingest import ingest
from tasks.config import load_settings
from tasks.lake import Lake
from tasks.movielens.errors import DownloadError, IngestError
from tests.conftest import loopback_http, md5, server_url, zip_of

pytestmark = pytest.mark.usefixtures("prefect_harness")

SMALL = SyntheticSize(ratings=300, users=20, items=40)


@dataclass(frozen=True)
class Answer:
    """What the server sends for one path: the body as it goes on the wire, its headers."""

    wire: bytes
    encoding: str
    content_length: int


@dataclass
class EncodingServer:
    url: str
    answers: dict[str, Answer] = field(default_factory=dict)

    def serve(self, path: str, answer: Answer) -> str:
        self.answers[path] = answer
        return f"{self.url}{path}"


@pytest.fixture(scope="module")
def encoding_server() -> Iterator[EncodingServer]:
    """A loopback server that sends each body with the Content-Encoding it was given."""
    state = EncodingServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            answer = state.answers.get(self.path)
            if answer is None:
                self.send_error(404, "not found")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Encoding", answer.encoding)
            self.send_header("Content-Length", str(answer.content_length))
            self.end_headers()
            self.wfile.write(answer.wire)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with loopback_http(Handler) as httpd:
        state.url = server_url(httpd)
        yield state


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small ml-100k zip laid out like GroupLens's (every file under ``ml-100k/``)."""
    return zip_of(write_ml100k(tmp_path_factory.mktemp("synthetic") / "ml-100k", SMALL, seed=5))


def gzip_answer(body: bytes) -> Answer:
    wire = gzip.compress(body)
    return Answer(wire=wire, encoding="gzip", content_length=len(wire))


def test_gzip_encoded_archive_is_not_called_truncated(
    recsys_env: Path, encoding_server: EncodingServer, archive: bytes
) -> None:
    answer = gzip_answer(archive)
    url = encoding_server.serve("/gzip/ml-100k.zip", answer)
    assert answer.content_length != len(archive)  # the wire and the body differ in length

    raw = ingest(source=url, md5=md5(archive))

    assert raw.sha256 == hashlib.sha256(archive).hexdigest()


def test_gzip_encoded_download_is_written_as_the_archive_itself(
    recsys_env: Path, encoding_server: EncodingServer, archive: bytes
) -> None:
    url = encoding_server.serve("/gzip-file/ml-100k.zip", gzip_answer(archive))

    ingest(source=url, md5="")

    assert (load_settings().downloads_dir / "ml-100k.zip").read_bytes() == archive


def test_gzip_encoded_download_cut_on_the_wire_is_truncated(
    recsys_env: Path, encoding_server: EncodingServer, archive: bytes
) -> None:
    whole = gzip_answer(archive)
    cut = Answer(whole.wire[: len(whole.wire) // 2], "gzip", whole.content_length)
    url = encoding_server.serve("/gzip-cut/ml-100k.zip", cut)

    with pytest.raises(DownloadError, match="gzip-cut/ml-100k.zip"):
        ingest(source=url, md5="")

    assert Lake.from_settings(load_settings()).list() == []
    assert list(load_settings().downloads_dir.glob("*")) == []


def test_an_encoding_that_cannot_be_decoded_is_refused_by_name(
    recsys_env: Path, encoding_server: EncodingServer, archive: bytes
) -> None:
    answer = Answer(wire=archive, encoding="compress", content_length=len(archive))
    url = encoding_server.serve("/compress/ml-100k.zip", answer)

    with pytest.raises(IngestError, match="Content-Encoding 'compress'"):
        ingest(source=url, md5="")

    assert list(load_settings().downloads_dir.glob("*")) == []
