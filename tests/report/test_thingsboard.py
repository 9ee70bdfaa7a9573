"""ThingsBoard telemetry, outbox and provisioning against a loopback ThingsBoard stand-in."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tasks.config import load_settings
from tasks.report.thingsboard import (
    DeliveryReport,
    ThingsBoardAuthError,
    ThingsBoardDevice,
    ThingsBoardError,
    ThingsBoardUnavailable,
    dashboard_keys,
    deliver_pending,
    device_from_settings,
    enqueue,
    provision,
    report_to_thingsboard,
    telemetry_session,
    telemetry_values,
)
from tasks.serving.telemetry import ANSWER_KEYS, INTERVAL_KEYS
from tasks.warehouse.connection import connect
from tasks.warehouse.schema import migrate
from tests.conftest import loopback_http, server_url

DASHBOARD = Path(__file__).resolve().parents[2] / "deployments" / "thingsboard" / "dashboard.json"
TOKEN = "device-token-s3cr3t"
ADMIN = ("tenant@thingsboard.org", "tenant")
METRICS: dict[str, dict[str, float | None]] = {
    "knn_paper": {"rmse": 0.95, "mae": 0.75, "precision_at_10": 0.10, "ndcg_at_10": 0.2},
    "knn_tuned": {"rmse": 0.91, "mae": 0.72, "precision_at_10": 0.12, "recall_at_10": 0.08,
                  "ndcg_at_10": 0.25},
    "random_forest": {"rmse": 0.93, "mae": None, "ndcg_at_10": float("nan")},
    "baseline": {"rmse": 0.98},
}  # fmt: skip
ATTRIBUTES = {"champion_version": "3", "dataset_version": "ab12", "champion_params": "k=40"}


# --- a ThingsBoard stand-in ---------------------------------------------------------------------
@dataclass
class FakeThingsBoard:
    """Device and tenant endpoints; ``fail_next`` answers 503 that many times, ``down`` drops
    every device request unanswered; ``received`` is what was accepted, in order."""

    url: str = ""
    tokens: set[str] = field(default_factory=lambda: {TOKEN})
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    device_hits: int = 0
    fail_next: int = 0
    retry_after: str = "0"  # the Retry-After of the 503s that fail_next answers
    refuse: bool = False  # device posts answered 400, as for a payload ThingsBoard rejects
    down: bool = False
    delay: float = 0.0
    jwt: str = field(default_factory=lambda: f"jwt-{uuid.uuid4().hex}")
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboard_posts: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def telemetry(self) -> list[dict[str, Any]]:
        return [body for kind, body in self.received if kind == "telemetry"]


class Handler(BaseHTTPRequestHandler):
    server: Any

    @property
    def tb(self) -> FakeThingsBoard:
        return self.server.tb  # type: ignore[no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        parts = urlsplit(self.path).path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and len(parts) == 4:
            self.device_post(parts[2], parts[3], self.body())
        elif parts == ["api", "auth", "login"]:
            self.login(self.body())
        elif self.authorised():
            self.tenant_post(parts, self.body())

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path).path.strip("/").split("/")
        if parts[:2] == ["api", "v1"] and parts[3:] == ["attributes"]:  # the device's attributes
            if self.tb.down:
                self.close_connection = True
                return None
            known = parts[2] in self.tb.tokens
            return self.reply(200, {}) if known else self.reply(401, {"message": "Invalid token"})
        if self.authorised():
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            self.tenant_get(url.path.strip("/").split("/"), query)

    # device API
    def device_post(self, token: str, resource: str, body: Any) -> None:
        tb = self.tb
        with tb.lock:
            tb.device_hits += 1
            failing = tb.fail_next > 0
            tb.fail_next -= int(failing)
        if tb.down:
            self.close_connection = True  # no answer at all: the client sees a dropped link
            return
        if failing:
            return self.reply(503, {"message": "busy"}, {"Retry-After": tb.retry_after})
        if tb.refuse:
            return self.reply(400, {"message": "Unable to parse the telemetry"})
        if token not in tb.tokens:
            return self.reply(401, {"message": "Invalid device token"})
        if resource == "telemetry" and isinstance(body, list):  # several points in one post
            if not all(isinstance(e, dict) and isinstance(e.get("values"), dict) and "ts" in e
                       for e in body):  # fmt: skip
                return self.reply(400, {"message": "expected ts and values in every entry"})
        elif resource not in {"telemetry", "attributes"} or not isinstance(body, dict):
            return self.reply(400, {"message": "bad JSON"})
        elif resource == "telemetry" and not (
            isinstance(body.get("values"), dict) and "ts" in body
        ):
            return self.reply(400, {"message": "expected ts and values"})
        time.sleep(tb.delay)
        with tb.lock:
            tb.received.append((resource, body))
        self.reply(200)

    # tenant REST API
    def login(self, body: Any) -> None:
        if not isinstance(body, dict) or (body.get("username"), body.get("password")) != ADMIN:
            return self.reply(401, {"message": "Invalid username or password"})
        self.reply(200, {"token": self.tb.jwt, "refreshToken": "r"})

    def authorised(self) -> bool:
        if self.headers.get("X-Authorization") == f"Bearer {self.tb.jwt}":
            return True
        self.reply(401, {"message": "Authentication failed"})
        return False

    def tenant_get(self, parts: list[str], query: dict[str, str]) -> None:
        tb = self.tb
        if parts == ["api", "tenant", "devices"]:
            device = tb.devices.get(query.get("deviceName", ""))
            return self.reply(200, device) if device else self.reply(404, {"message": "absent"})
        if parts[:2] == ["api", "device"] and parts[3:] == ["credentials"]:
            found = [d for d in tb.devices.values() if d["id"]["id"] == parts[2]]
            if not found:
                return self.reply(404, {"message": "absent"})
            return self.reply(
                200, {"credentialsType": "ACCESS_TOKEN", "credentialsId": found[0]["_token"]}
            )
        if parts == ["api", "tenant", "dashboards"]:
            text = query.get("textSearch", "").lower()
            data = [{"id": d["id"], "title": d["title"]} for d in tb.dashboards.values()
                    if text in d["title"].lower()]  # fmt: skip
            return self.reply(200, {"data": data, "totalPages": 1, "hasNext": False})
        self.reply(404, {"message": "no such endpoint"})

    def tenant_post(self, parts: list[str], body: Any) -> None:
        tb = self.tb
        if not isinstance(body, dict):
            return self.reply(400, {"message": "bad JSON"})
        if parts == ["api", "device"]:
            if body["name"] in tb.devices:
                return self.reply(400, {"message": "Device with such name already exists!"})
            token = f"tok-{uuid.uuid4().hex}"
            device_id = {"entityType": "DEVICE", "id": str(uuid.uuid4())}
            tb.devices[body["name"]] = {**body, "id": device_id, "_token": token}
            tb.tokens.add(token)
            return self.reply(200, tb.devices[body["name"]])
        if parts == ["api", "dashboard"]:
            tb.dashboard_posts.append(body)
            dashboard_id = body.get("id", {}).get("id") or str(uuid.uuid4())
            if "id" in body and dashboard_id not in tb.dashboards:
                return self.reply(404, {"message": "no such dashboard"})
            tb.dashboards[dashboard_id] = {
                **body,
                "id": {"entityType": "DASHBOARD", "id": dashboard_id},
            }
            return self.reply(200, tb.dashboards[dashboard_id])
        self.reply(404, {"message": "no such endpoint"})


@pytest.fixture
def thingsboard() -> Iterator[FakeThingsBoard]:
    with running_thingsboard() as tb:
        yield tb


@contextmanager
def running_thingsboard() -> Iterator[FakeThingsBoard]:
    """The stand-in on a free loopback port, for as long as the block runs."""
    with loopback_http(Handler, poll_interval=0.05) as httpd:
        tb = FakeThingsBoard(url=server_url(httpd))
        httpd.tb = tb  # type: ignore[attr-defined]
        yield tb


def fast_device(url: str, token: str = TOKEN) -> ThingsBoardDevice:
    return ThingsBoardDevice(url, token, telemetry_session(retries=3, backoff=0.01), timeout=5)


@pytest.fixture
def outbox(database_url: str) -> str:
    migrate(database_url)
    return database_url


def outbox_rows(url: str) -> list[tuple[str, int, str | None, bool]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT kind, attempts, last_error, delivered_at IS NOT NULL"
            " FROM ops.telemetry_outbox ORDER BY outbox_id"
        ).fetchall()
    return [(kind, attempts, error, delivered) for kind, attempts, error, delivered in rows]


# --- telemetry values ---------------------------------------------------------------------------
def test_telemetry_values_flatten_metrics_stars_and_counts() -> None:
    values = telemetry_values(
        METRICS, {1: 6110, 2: 11370, 3: 27145, 3.5: 7, 4: 34174, 5: 21201},
        {"users": 943, "items": 1682, "ratings": 100000},
    )  # fmt: skip

    assert values == {
        "rmse_knn_paper": 0.95, "mae_knn_paper": 0.75, "p10_knn_paper": 0.10,
        "ndcg10_knn_paper": 0.2,
        "rmse_knn_tuned": 0.91, "mae_knn_tuned": 0.72, "p10_knn_tuned": 0.12,
        "r10_knn_tuned": 0.08, "ndcg10_knn_tuned": 0.25,
        "rmse_random_forest": 0.93, "rmse_baseline": 0.98,
        "ratings_1": 6110, "ratings_2": 11370, "ratings_3": 27145, "ratings_3_5": 7,
        "ratings_4": 34174, "ratings_5": 21201,
        "users": 943, "items": 1682, "ratings": 100000,
    }  # fmt: skip


def test_post_telemetry_sends_ts_and_values(thingsboard: FakeThingsBoard) -> None:
    device = fast_device(thingsboard.url)

    device.post_telemetry(1_700_000_000_000, {"rmse_knn_tuned": 0.91, "users": 943})
    device.post_attributes(ATTRIBUTES)

    assert thingsboard.received == [
        ("telemetry", {"ts": 1_700_000_000_000, "values": {"rmse_knn_tuned": 0.91, "users": 943}}),
        ("attributes", ATTRIBUTES),
    ]


# --- the dashboard ------------------------------------------------------------------------------
def test_dashboard_reads_only_keys_the_pipeline_sends() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    stars = {star: 1 for star in range(1, 6)}
    produced = telemetry_values(METRICS, stars, {"users": 1, "items": 1, "ratings": 1})

    assert dashboard["title"] == "MovieLens recommender"
    service = {*INTERVAL_KEYS, *ANSWER_KEYS}  # the API's keys: tests/api/test_dashboard.py
    assert dashboard_keys(dashboard, "timeseries") - service <= set(produced)
    assert dashboard_keys(dashboard, "attribute") == set(ATTRIBUTES)
    shown = dashboard_keys(dashboard)
    assert {"rmse_knn_paper", "rmse_knn_tuned", "rmse_random_forest", "rmse_baseline",
            "ndcg10_knn_tuned", "p10_knn_tuned", "ratings_1", "ratings_5"} <= shown  # fmt: skip


def test_dashboard_finds_the_device_by_name_and_places_every_widget() -> None:
    configuration = json.loads(DASHBOARD.read_text())["configuration"]
    aliases = configuration["entityAliases"]
    placed = configuration["states"]["default"]["layouts"]["main"]["widgets"]
    sources = [s for w in configuration["widgets"].values() for s in w["config"]["datasources"]]

    assert [a["filter"] for a in aliases.values()] == [
        {"type": "entityName", "resolveMultiple": False, "entityType": "DEVICE",
         "entityNameFilter": "movielens-recommender"}
    ]  # fmt: skip
    assert {s["entityAliasId"] for s in sources} == set(aliases)
    assert {s["type"] for s in sources} == {"entity"}
    assert set(placed) == set(configuration["widgets"])


# --- delivery through the outbox ---------------------------------------------------------------
def test_transient_503s_are_retried_and_delivered_once(
    outbox: str, thingsboard: FakeThingsBoard
) -> None:
    thingsboard.fail_next = 2

    report = report_to_thingsboard(outbox, fast_device(thingsboard.url), 1000, {"users": 943}, {})

    assert report == DeliveryReport(sent=1, failed=0, pending=0)
    assert thingsboard.device_hits == 3
    assert thingsboard.received == [("telemetry", {"ts": 1000, "values": {"users": 943}})]
    assert outbox_rows(outbox) == [("telemetry", 1, None, True)]


def test_down_server_keeps_rows_then_delivers_old_first_exactly_once(
    outbox: str, thingsboard: FakeThingsBoard, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    device = fast_device(thingsboard.url)
    thingsboard.down = True

    down = report_to_thingsboard(outbox, device, 1000, {"rmse_knn_tuned": 0.93}, ATTRIBUTES)

    assert down == DeliveryReport(sent=0, failed=1, pending=2)
    assert thingsboard.received == []
    assert thingsboard.device_hits == 4  # the first row: one try and three retries, then stop
    rows = outbox_rows(outbox)
    assert [(kind, attempts, delivered) for kind, attempts, _, delivered in rows] == [
        ("telemetry", 1, False),
        ("attributes", 0, False),
    ]
    assert "unreachable" in (rows[0][2] or "") and TOKEN not in (rows[0][2] or "")
    assert "/api/v1/***/" in caplog.text and TOKEN not in caplog.text

    thingsboard.down = False
    up = report_to_thingsboard(outbox, device, 2000, {"rmse_knn_tuned": 0.91}, ATTRIBUTES)
    again = deliver_pending(outbox, device)

    assert up == DeliveryReport(sent=4, failed=0, pending=0)
    assert again == DeliveryReport(sent=0, failed=0, pending=0)
    assert thingsboard.received == [
        ("telemetry", {"ts": 1000, "values": {"rmse_knn_tuned": 0.93}}),
        ("attributes", ATTRIBUTES),
        ("telemetry", {"ts": 2000, "values": {"rmse_knn_tuned": 0.91}}),
        ("attributes", ATTRIBUTES),
    ]
    assert [delivered for *_, delivered in outbox_rows(outbox)] == [True] * 4


def test_the_same_run_reported_twice_is_queued_and_sent_once(
    outbox: str, thingsboard: FakeThingsBoard
) -> None:
    device = fast_device(thingsboard.url)
    thingsboard.down = True
    first = report_to_thingsboard(outbox, device, 1000, {"users": 1}, ATTRIBUTES, key="run-a")
    thingsboard.down = False
    second = report_to_thingsboard(outbox, device, 1000, {"users": 1}, ATTRIBUTES, key="run-a")
    third = report_to_thingsboard(outbox, device, 1000, {"users": 1}, ATTRIBUTES, key="run-a")
    other = report_to_thingsboard(outbox, device, 2000, {"users": 2}, {}, key="run-b")

    assert first.pending == 2 and second == DeliveryReport(sent=2, failed=0, pending=0)
    assert third == DeliveryReport(sent=0, failed=0, pending=0)
    assert other == DeliveryReport(sent=1, failed=0, pending=0)
    assert thingsboard.received == [
        ("telemetry", {"ts": 1000, "values": {"users": 1}}),
        ("attributes", ATTRIBUTES),
        ("telemetry", {"ts": 2000, "values": {"users": 2}}),
    ]
    assert len(outbox_rows(outbox)) == 3


def test_concurrent_deliverers_send_each_row_once(
    outbox: str, thingsboard: FakeThingsBoard
) -> None:
    for ts in range(12):
        enqueue(outbox, "telemetry", {"ts": ts, "values": {"users": ts}})
    thingsboard.delay = 0.02
    reports: list[DeliveryReport] = []
    workers = [
        threading.Thread(
            target=lambda: reports.append(deliver_pending(outbox, fast_device(thingsboard.url)))
        )
        for _ in range(3)
    ]

    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert sorted(body["ts"] for body in thingsboard.telemetry()) == list(range(12))
    assert sum(report.sent for report in reports) == 12
    assert [delivered for *_, delivered in outbox_rows(outbox)] == [True] * 12


# --- errors -------------------------------------------------------------------------------------
def test_rejected_token_raises_auth_error_without_the_token(thingsboard: FakeThingsBoard) -> None:
    device = fast_device(thingsboard.url, token="stolen-or-revoked-token")

    with pytest.raises(ThingsBoardAuthError, match="device token was rejected") as raised:
        device.post_telemetry(1000, {"users": 943})

    assert "stolen-or-revoked-token" not in str(raised.value)
    assert "stolen-or-revoked-token" not in repr(device)


def test_rejected_token_is_recorded_in_the_outbox_then_raised(
    outbox: str, thingsboard: FakeThingsBoard
) -> None:
    device = fast_device(thingsboard.url, token="revoked-token")

    with pytest.raises(ThingsBoardAuthError):
        report_to_thingsboard(outbox, device, 1000, {"users": 943}, ATTRIBUTES)

    rows = outbox_rows(outbox)
    assert [(kind, attempts, delivered) for kind, attempts, _, delivered in rows] == [
        ("telemetry", 1, False),
        ("attributes", 0, False),
    ]
    assert "HTTP 401" in (rows[0][2] or "") and "revoked-token" not in (rows[0][2] or "")


def test_bad_payload_raises_an_error_naming_the_status(thingsboard: FakeThingsBoard) -> None:
    device = fast_device(thingsboard.url)

    with pytest.raises(ThingsBoardError, match="HTTP 400") as raised:
        device._post("telemetry", {"rmse": 0.9})  # no ts/values: the server refuses it

    assert not isinstance(raised.value, ThingsBoardAuthError | ThingsBoardUnavailable)
    assert thingsboard.received == []


def test_server_answering_503_always_is_unavailable(thingsboard: FakeThingsBoard) -> None:
    thingsboard.fail_next = 100

    with pytest.raises(ThingsBoardUnavailable, match="HTTP 503"):
        fast_device(thingsboard.url).post_attributes(ATTRIBUTES)

    assert thingsboard.device_hits == 4


def test_device_comes_from_settings(recsys_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert device_from_settings(load_settings()) is None

    monkeypatch.setenv("THINGSBOARD_URL", "http://tb.example:8080")
    monkeypatch.setenv("RECSYS_THINGSBOARD_DEVICE_TOKEN", TOKEN)
    device = device_from_settings()

    assert device is not None and device.base_url == "http://tb.example:8080"
    assert device._secret() == TOKEN and TOKEN not in repr(device)


# --- provisioning -------------------------------------------------------------------------------
def test_provisioning_twice_creates_one_device_and_one_dashboard(
    thingsboard: FakeThingsBoard,
) -> None:
    session = telemetry_session(retries=1, backoff=0.01)

    first = provision(thingsboard.url, *ADMIN, "recsys-test", DASHBOARD, session=session)
    second = provision(thingsboard.url, *ADMIN, "recsys-test", DASHBOARD, session=session)

    assert list(thingsboard.devices) == ["recsys-test"]
    assert thingsboard.devices["recsys-test"]["type"] == "recsys"
    assert list(thingsboard.dashboards) == [first.dashboard_id]
    assert (second.device_id, second.dashboard_id) == (first.device_id, first.dashboard_id)
    token = first.device_token.get_secret_value()
    assert (
        token
        == thingsboard.devices["recsys-test"]["_token"]
        == second.device_token.get_secret_value()
    )
    assert "id" not in thingsboard.dashboard_posts[0]
    assert thingsboard.dashboard_posts[1]["id"] == {
        "entityType": "DASHBOARD",
        "id": first.dashboard_id,
    }
    stored = thingsboard.dashboards[first.dashboard_id]["configuration"]["entityAliases"]
    assert [a["filter"]["entityNameFilter"] for a in stored.values()] == ["recsys-test"]


def test_provisioning_with_a_wrong_password_is_an_auth_error(thingsboard: FakeThingsBoard) -> None:
    with pytest.raises(ThingsBoardAuthError, match="username or password rejected"):
        provision(thingsboard.url, ADMIN[0], "wrong", "recsys-test", DASHBOARD)

    assert thingsboard.devices == {}


def test_provisioning_retries_its_login_but_never_repeats_a_create(
    thingsboard: FakeThingsBoard,
) -> None:
    """A device or dashboard POST whose reply was lost is not sent again (ThingsBoard would
    make a second dashboard of the same title); the login, harmless to repeat, is retried."""
    from tasks.report.thingsboard import ADMIN_RETRY_METHODS

    thingsboard.fail_next = 1  # the login's first answer: 503

    provision(thingsboard.url, *ADMIN, "recsys-test", DASHBOARD)

    assert list(thingsboard.devices) == ["recsys-test"] and len(thingsboard.dashboards) == 1
    admin = telemetry_session(methods=ADMIN_RETRY_METHODS).get_adapter("http://tb").max_retries
    assert "POST" not in admin.allowed_methods  # type: ignore[operator]
    assert "POST" in telemetry_session().get_adapter("http://tb").max_retries.allowed_methods  # type: ignore[operator]


def given_up_rows(url: str) -> list[tuple[int, str | None, bool]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT attempts, last_error, failed_at IS NOT NULL FROM ops.telemetry_outbox"
            " ORDER BY outbox_id"
        ).fetchall()
    return [(attempts, error, failed) for attempts, error, failed in rows]


def test_a_refused_message_is_marked_failed_after_its_last_attempt(
    outbox: str, thingsboard: FakeThingsBoard
) -> None:
    device = fast_device(thingsboard.url)
    enqueue(outbox, "telemetry", {"ts": 1, "values": {"rmse_knn_tuned": 0.9}})
    thingsboard.refuse = True

    first = deliver_pending(outbox, device, max_attempts=2)
    second = deliver_pending(outbox, device, max_attempts=2)
    hits = thingsboard.device_hits
    third = deliver_pending(outbox, device, max_attempts=2)
    hits_after_third = thingsboard.device_hits
    thingsboard.refuse = False
    enqueue(outbox, "telemetry", {"ts": 2, "values": {"rmse_knn_tuned": 0.8}})
    fourth = deliver_pending(outbox, device, max_attempts=2)

    assert (first.pending, first.given_up) == (1, 0)
    assert (second.pending, second.given_up) == (0, 1)
    assert hits_after_third == hits  # given up: never sent again
    assert (third.sent, third.failed) == (0, 0)
    assert (fourth.sent, fourth.pending, fourth.given_up) == (1, 0, 1)
    attempts, reason, failed = given_up_rows(outbox)[0]
    assert attempts == 2 and failed and reason is not None and "HTTP 400" in reason


def test_retry_after_is_honoured_up_to_its_cap(thingsboard: FakeThingsBoard) -> None:
    device = ThingsBoardDevice(
        thingsboard.url, TOKEN, telemetry_session(retries=2, backoff=0.01, retry_after_cap=0.2)
    )
    thingsboard.fail_next, thingsboard.retry_after = 2, "3600"

    started = time.monotonic()
    device.post_telemetry(1, {"rmse_knn_tuned": 0.9})

    assert time.monotonic() - started < 5  # two waits of 0.2 s, not two hours
    assert thingsboard.telemetry() == [{"ts": 1, "values": {"rmse_knn_tuned": 0.9}}]
