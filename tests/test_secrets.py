"""Secrets never leak (issue 21, item 5): the pipeline and the service run with marker values
as the database password, the AWS keys, the ThingsBoard device token and the API token, and
no marker appears in a log, a captured output, Prefect's database or results, MLflow, the
lake, a report, the warehouse or an HTTP answer.

Every marker holds an alphanumeric core that URL-encoding, JSON escaping and shell quoting
leave as it is, so searching for the core finds the raw and the encoded forms. Containers are
opened before searching: gzip, zip, Parquet, SQLite, and base64 inside text (Prefect keeps a
pickled result as base64 in a JSON record)."""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import polars as pl
import pytest

from bench.synth import SyntheticSize, write_ml100k
from tests.api.conftest import launch_api
from tests.conftest import S3Server, new_database
from tests.report.test_thingsboard import FakeThingsBoard, running_thingsboard

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FOREIGN = ("RECSYS_", "PREFECT_", "MLFLOW_", "THINGSBOARD_", "AWS_")
SIZE = SyntheticSize(ratings=2000, users=50, items=100)
GRID = ["--kinds", "kmeans_knn", "--n-clusters", "1", "--n-neighbors", "5", "--folds", "1"]
TAG = uuid.uuid4().hex[:10]
SQLITE_HEADER = b"SQLite format 3\x00"
CORRUPT = (OSError, EOFError, ValueError, zlib.error, zipfile.BadZipFile, sqlite3.DatabaseError,
           pl.exceptions.PolarsError)  # fmt: skip
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/\r\n]{40,}={0,2}")


@dataclass(frozen=True)
class Secret:
    """A planted value and its core: the alphanumeric part every encoding of it keeps."""

    name: str
    core: str
    value: str


SECRETS = (
    # '+' and '/' make the URL-encoded password differ from the raw one
    Secret("database password", f"dbpassword{TAG}", f"pw+dbpassword{TAG}/x"),
    Secret("AWS access key id", f"AKIAMARKER{TAG.upper()}", f"AKIAMARKER{TAG.upper()}"),
    Secret("AWS secret key", f"awssecret{TAG}", f"s+awssecret{TAG}/k"),
    Secret("ThingsBoard device token", f"tbtoken{TAG}", f"tbtoken{TAG}"),
    Secret("API token", f"apitoken{TAG}", f"apitoken{TAG}"),
)
DB_PASSWORD, AWS_KEY_ID, AWS_SECRET, TB_TOKEN, API_TOKEN = (s.value for s in SECRETS)


# --- searching ------------------------------------------------------------------------------
def readable_forms(data: bytes, depth: int = 0) -> Iterator[bytes]:
    """``data`` itself and what its containers hold, opened as far as three levels down."""
    yield data
    if depth >= 3 or not data:
        return
    try:
        inner = opened(data)
    except CORRUPT:
        if depth == 0:  # a stored file that cannot be opened: say so
            raise
        inner = []  # bytes decoded off their alignment, which only look like a container
    for payload in inner:
        yield from readable_forms(payload, depth + 1)


def opened(data: bytes) -> list[bytes]:
    """What a gzip, zip, Parquet or SQLite file holds; else the base64 payloads of a text."""
    if data[:2] == b"\x1f\x8b":
        return [gzip.decompress(data)]
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [archive.read(name) for name in archive.namelist()]
    if data[:4] == b"PAR1":
        frame = pl.read_parquet(io.BytesIO(data))
        return [json.dumps(frame.to_dicts(), default=str).encode()]
    if data[:16] == SQLITE_HEADER:
        return [sqlite_dump(data)]
    return list(base64_payloads(data))


def base64_payloads(data: bytes) -> Iterator[bytes]:
    """The decoded base64 runs of a text, or of the strings of a JSON document (binary files
    are searched as they are). A run may be wrapped in lines and may follow other letters, so
    it is decoded from each of the four offsets: one of them is aligned with its start."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return
    try:
        strings = list(json_strings(json.loads(text)))
    except ValueError:
        strings = [text]
    for string in strings:
        for run in BASE64_RUN.findall(string.encode()):
            compact = re.sub(rb"[^A-Za-z0-9+/=]", b"", run)
            for offset in range(4):
                aligned = compact[offset:]
                try:
                    yield base64.b64decode(aligned + b"=" * (-len(aligned) % 4))
                except (binascii.Error, ValueError):
                    continue


def json_strings(document: Any) -> Iterator[str]:
    if isinstance(document, str):
        yield document
    elif isinstance(document, dict):
        for value in document.values():
            yield from json_strings(value)
    elif isinstance(document, list):
        for value in document:
            yield from json_strings(value)


def sqlite_dump(data: bytes) -> bytes:
    """Every row of a SQLite database, as SQL text."""
    with tempfile.NamedTemporaryFile(suffix=".db") as copy:
        copy.write(data)
        copy.flush()
        connection = sqlite3.connect(copy.name)
        try:
            return "\n".join(connection.iterdump()).encode()
        finally:
            connection.close()


def leaks(where: str, data: bytes | str) -> list[str]:
    """``"<where>: <secret name>"`` for each secret whose core ``data`` holds, in any form."""
    raw = data.encode() if isinstance(data, str) else data
    found = set()
    for form in readable_forms(raw):
        lowered = form.lower()
        found |= {s.name for s in SECRETS if s.core.lower().encode() in lowered}
    return [f"{where}: {name}" for name in sorted(found)]


def file_leaks(root: Path) -> list[str]:
    """The leaks of every file under ``root`` (a SQLite database with its write-ahead log)."""
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += leaks(str(path.relative_to(root)), data)
        if data[:16] == SQLITE_HEADER:  # rows still in the -wal file, as SQLite reads them
            found += leaks(f"{path.relative_to(root)} (rows)", live_sqlite_dump(path))
    return found


def live_sqlite_dump(path: Path) -> bytes:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "\n".join(connection.iterdump()).encode()
    finally:
        connection.close()


# --- the run ----------------------------------------------------------------------------------
@dataclass
class SecretsRun:
    """Everything a search needs: the run folder, captured outputs, answers, stores."""

    workdir: Path
    home: Path
    env: dict[str, str]
    admin_url: str  # the warehouse, reached as the server's superuser
    bucket: str
    s3: S3Server
    thingsboard: FakeThingsBoard
    outputs: dict[str, str] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)
    api_url: str = ""
    answers: dict[str, httpx.Response] = field(default_factory=dict)


def warehouse_with_password(postgres_server: str) -> tuple[str, str]:
    """A fresh database owned by a new role whose password is the marker; returns (the URL
    the pipeline gets, with the password, and the superuser's URL of the same database)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    admin_url = new_database(postgres_server, "secrets")
    params = conninfo_to_dict(admin_url)
    role, database = f"recsys_{TAG}", str(params["dbname"])
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        password = DB_PASSWORD.replace("'", "''")
        conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        conn.execute(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
    url = (
        f"postgresql://{role}:{quote(DB_PASSWORD, safe='')}@/{database}"
        f"?host={quote(str(params['host']), safe='')}"
    )
    return url, admin_url


def run_flow(run: SecretsRun, name: str, script: str, *args: str, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, str(REPO / "flows" / script), *args],
        cwd=run.workdir, env=run.env | env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    run.outputs[f"{name} stdout"], run.outputs[f"{name} stderr"] = done.stdout, done.stderr
    run.exit_codes[name] = done.returncode
    return done.returncode


def run_flow_to_success(run: SecretsRun, name: str, script: str, *args: str) -> None:
    if run_flow(run, name, script, *args) != 0:
        output = f"{run.outputs[f'{name} stdout']}\n{run.outputs[f'{name} stderr']}"
        raise AssertionError(f"{name} failed:\n{output}")


def unreachable_database(url: str) -> str:
    """The same URL, password included, with a socket folder where no server listens."""
    return url.split("?host=")[0] + "?host=%2Fnonexistent-recsys"


def start_api(run: SecretsRun, log: Path) -> subprocess.Popen[bytes]:
    api = launch_api(run.env, log, cwd=run.workdir)
    run.api_url = api.url
    return api.process


def ask_the_api(run: SecretsRun) -> None:
    """Answers of every kind: public reads, a protected call with the token, a wrong token
    that holds the real one, a protected call that fails, an unknown user, a bad body."""
    good = {"Authorization": f"Bearer {API_TOKEN}"}
    wrong = {"Authorization": f"Bearer {API_TOKEN}-typo"}
    with httpx.Client(base_url=run.api_url, timeout=60) as client:
        user = int(client.get("/recommendations/1").json().get("user_id", 1))
        requests = {
            "model info": client.get("/model/info"),
            "health": client.get("/health"),
            "recommendations": client.get(f"/recommendations/{user}"),
            "unknown user": client.get("/recommendations/999999"),
            "predict, bad body": client.post("/predict", json={"pairs": "none"}),
            "files": client.get("/files"),
            "reload": client.post("/model/reload", headers=good),
            "reload, wrong token": client.post("/model/reload", headers=wrong),
            "reload, no token": client.post("/model/reload"),
            "ingest, no Prefect server": client.post("/ingest", headers=good),
            "ratings": client.post(
                f"/users/{user}/ratings", headers=good, json={"ratings": {"1": 4}}
            ),  # fmt: skip
        }
    run.answers.update(requests)


def thingsboard_outage_while_serving(run: SecretsRun) -> None:
    """A few telemetry intervals with ThingsBoard down: the service's failures get logged."""
    run.thingsboard.down = True
    time.sleep(3)
    run.thingsboard.down = False
    time.sleep(2)


@pytest.fixture(scope="module")
def secrets_run(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: str, s3_server: S3Server
) -> Iterator[SecretsRun]:
    workdir = tmp_path_factory.mktemp("secrets")
    data = write_ml100k(workdir / "ml-100k", SIZE, seed=11)
    database_url, admin_url = warehouse_with_password(postgres_server)
    # moto takes any credentials: the bucket is made with the markers the pipeline uses
    s3 = S3Server(s3_server.endpoint_url, access_key=AWS_KEY_ID, secret_key=AWS_SECRET)
    bucket = s3.create_bucket()
    with running_thingsboard() as thingsboard:
        thingsboard.tokens = {TB_TOKEN}
        env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)} | {
            "RECSYS_HOME": str(workdir / "home"),
            "RECSYS_MOVIELENS_SOURCE": str(data),
            "RECSYS_DATABASE_URL": database_url,
            "RECSYS_LAKE_URL": f"s3://{bucket}/lake",
            "RECSYS_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "THINGSBOARD_URL": thingsboard.url,
            "THINGSBOARD_DEVICE_TOKEN": TB_TOKEN,
            "RECSYS_API_TOKEN": API_TOKEN,
            "RECSYS_MODEL_POLL_SECONDS": "0.5",
            "RECSYS_TELEMETRY_INTERVAL_SECONDS": "0.5",
        }
        run = SecretsRun(workdir, workdir / "home", env, admin_url, bucket, s3, thingsboard)
        # the pipeline on a small grid (which registers nothing), then a training that
        # registers a champion for the service
        run_flow_to_success(run, "pipeline", "pipeline.py", *GRID)
        run_flow_to_success(
            run, "train", "train.py", *GRID, "--register-model", "--cold-start-folds", "0"
        )
        # a failure with the password in play: the health flow, its database unreachable
        run_flow(run, "failing health", "health.py",
                 RECSYS_DATABASE_URL=unreachable_database(database_url))  # fmt: skip
        log = workdir / "api.log"
        api = start_api(run, log)
        try:
            ask_the_api(run)
            thingsboard_outage_while_serving(run)
        finally:
            api.terminate()
            api.wait(timeout=60)
        run.outputs["api log"] = log.read_text()
        yield run


# --- the positive controls: the secrets were in use -----------------------------------------
def test_the_pipeline_and_the_service_used_every_secret(secrets_run: SecretsRun) -> None:
    import psycopg

    with psycopg.connect(secrets_run.admin_url) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        loads = conn.execute("SELECT count(*) FROM ops.loads").fetchone()
    assert owner == (f"recsys_{TAG}",) and loads is not None and loads[0] >= 1
    assert any(key.startswith("lake/raw/") for key in secrets_run.s3.keys(secrets_run.bucket))
    assert secrets_run.thingsboard.telemetry() != []  # accepted: the token was the marker
    assert secrets_run.exit_codes["failing health"] != 0  # the failing run did fail
    assert secrets_run.answers["reload"].status_code == 200
    assert secrets_run.answers["reload, wrong token"].status_code == 401


def test_the_search_opens_containers() -> None:
    secret = SECRETS[0]
    parquet = io.BytesIO()
    url = f"postgresql://u:{quote(secret.value, safe='')}@/db"
    pl.DataFrame({"url": [url]}).write_parquet(parquet)
    # wrapped in 76-character lines, as Prefect writes a result, inside a JSON record, after
    # letters that make the base64 run start off its alignment
    wrapped = base64.encodebytes(gzip.compress(parquet.getvalue())).decode()
    record = json.dumps({"metadata": {"serializer": "pickle"}, "result": f"abc{wrapped}"})

    assert leaks("record", record) == [f"record: {secret.name}"]


# --- the places searched --------------------------------------------------------------------
def test_no_secret_in_logs_or_captured_output(secrets_run: SecretsRun) -> None:
    found = [hit for name, text in secrets_run.outputs.items() for hit in leaks(name, text)]
    found += file_leaks(secrets_run.home / "logs") if (secrets_run.home / "logs").is_dir() else []

    assert found == []


def test_no_secret_in_prefect_database_or_results(secrets_run: SecretsRun) -> None:
    prefect_home = secrets_run.home / "prefect"
    assert (prefect_home / "prefect.db").is_file()

    s3 = secrets_run.s3.client()
    results = {
        key: s3.get_object(Bucket=secrets_run.bucket, Key=key)["Body"].read()
        for key in secrets_run.s3.keys(secrets_run.bucket)
        if key.startswith("lake/prefect-results/")
    }
    # the control: the lake's URL is in the results only inside their base64-encoded pickles,
    # where the search finds it
    lake_url = secrets_run.env["RECSYS_LAKE_URL"].encode()
    assert any(
        lake_url not in data and any(lake_url in form for form in readable_forms(data))
        for data in results.values()
    )

    found = file_leaks(prefect_home)
    found += [hit for key, data in results.items() for hit in leaks(key, data)]

    assert found == []


def test_no_secret_in_mlflow_params_tags_or_registry(secrets_run: SecretsRun) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    uri = f"sqlite:///{secrets_run.home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    runs = client.search_runs([e.experiment_id for e in experiments], run_view_type=ViewType.ALL)
    versions = client.search_model_versions()
    assert runs and versions
    texts = [f"experiment {e.name}: {e.tags} {e.artifact_location}" for e in experiments]
    texts += [f"run {r.info.run_id}: {r.data.params} {r.data.tags}" for r in runs]
    texts += [f"model {m.name}: {m.tags} {m.aliases} {m.description}"
              for m in client.search_registered_models()]  # fmt: skip
    texts += [f"version {v.version}: {v.tags} {v.source} {v.description}" for v in versions]

    found = [hit for text in texts for hit in leaks(text.split(":")[0], text)]
    found += file_leaks(secrets_run.home / "mlflow")  # the store and every artifact

    assert found == []


def test_no_secret_in_the_lake(secrets_run: SecretsRun) -> None:
    s3 = secrets_run.s3.client()
    keys = secrets_run.s3.keys(secrets_run.bucket)
    assert keys

    found = [
        hit
        for key in keys
        for hit in leaks(key, s3.get_object(Bucket=secrets_run.bucket, Key=key)["Body"].read())
    ]

    assert found == []


def test_no_secret_in_the_reports(secrets_run: SecretsRun) -> None:
    reports = secrets_run.home / "reports"
    assert list(reports.rglob("report.md"))

    assert file_leaks(reports) == []


def test_no_secret_in_the_warehouse(secrets_run: SecretsRun) -> None:
    import psycopg
    from psycopg import sql

    found: list[str] = []
    with psycopg.connect(secrets_run.admin_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert ("ops", "telemetry_outbox") in tables and ("serving", "predictions") in tables
        for schema, table in tables:
            rows = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, table)))
            for row in rows:
                for value in row:
                    data = value if isinstance(value, bytes) else json.dumps(value, default=str)
                    found += leaks(f"{schema}.{table}", data)

    assert sorted(set(found)) == []


def test_no_secret_in_http_answers(secrets_run: SecretsRun) -> None:
    found = [
        hit
        for name, answer in secrets_run.answers.items()
        for hit in leaks(name, f"{answer.headers}\n".encode() + answer.content)
    ]

    assert found == []


def test_no_secret_in_any_file_the_run_wrote(secrets_run: SecretsRun) -> None:
    """The catch-all: every file under the run's folder (home, lake cache, downloads, logs)."""
    assert file_leaks(secrets_run.workdir) == []
