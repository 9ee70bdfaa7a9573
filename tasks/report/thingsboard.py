"""ThingsBoard: the pipeline's metrics as device telemetry, sent through a PostgreSQL outbox,
and the tenant-side provisioning of the device and its dashboard."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
import requests
from psycopg.types.json import Jsonb
from pydantic import SecretStr
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tasks.config import load_settings
from tasks.warehouse.connection import connect

if TYPE_CHECKING:
    from tasks.config import Settings

logger = logging.getLogger(__name__)

OutboxKind = Literal["telemetry", "attributes"]
OUTBOX_KINDS: frozenset[str] = frozenset({"telemetry", "attributes"})
RETRY_STATUSES = (429, 500, 502, 503, 504)
RETRY_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"})
# The admin API's POSTs create a device or a dashboard: one whose reply was lost must not be
# sent again (ThingsBoard allows two dashboards of one title). They are retried only when they
# never reached the server (a refused connection); a rerun then finds what was created.
ADMIN_RETRY_METHODS = RETRY_METHODS - {"POST"}
REQUEST_TIMEOUT = 10.0
DEVICE_TYPE = "recsys"
# metric names of recommender.metrics -> the short suffix-free names of the telemetry keys
METRIC_KEYS: dict[str, str] = {
    "rmse": "rmse",
    "mae": "mae",
    "precision_at_10": "p10",
    "recall_at_10": "r10",
    "ndcg_at_10": "ndcg10",
}
_DEVICE_PATH = re.compile(r"/api/v1/[^/\s'\"]+/")

TelemetryValue = float | int | str


class ThingsBoardError(RuntimeError):
    """ThingsBoard refused a request (a 4xx other than 401, or an unreadable answer)."""


class ThingsBoardAuthError(ThingsBoardError):
    """The device token or the tenant login was rejected (401)."""


class ThingsBoardUnavailable(ThingsBoardError):
    """ThingsBoard could not be reached, or answered 429/5xx, after every retry."""


# --- HTTP ---------------------------------------------------------------------------------------
class _RedactDeviceToken(logging.Filter):
    """urllib3 logs request paths on retries; a device path carries the token, so mask it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "/api/v1/" in message:
            record.msg, record.args = _DEVICE_PATH.sub("/api/v1/***/", message), ()
        return True


def _redact_urllib3_logs() -> None:
    for name in ("urllib3.connectionpool", "urllib3.util.retry"):
        url_logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactDeviceToken) for f in url_logger.filters):
            url_logger.addFilter(_RedactDeviceToken())


class CappedRetry(Retry):
    """urllib3's Retry, honouring a server's Retry-After only up to ``retry_after_cap`` seconds
    (a ThingsBoard asking for an hour must not stall a report or the service's thread)."""

    retry_after_cap: float = 30.0

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, self.retry_after_cap)

    def new(self, **kwargs: Any) -> CappedRetry:
        retry = super().new(**kwargs)
        retry.retry_after_cap = self.retry_after_cap  # type: ignore[attr-defined]
        return retry  # type: ignore[return-value]


def telemetry_session(
    retries: int = 4,
    backoff: float = 0.5,
    methods: frozenset[str] = RETRY_METHODS,
    retry_after_cap: float | None = None,
) -> requests.Session:
    """A session that retries connection errors, and read errors, 429 and 5xx of ``methods``
    (POST included by default), honouring Retry-After; once retries are spent the last
    response is returned, not raised."""
    retry = CappedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=RETRY_STATUSES,
        # telemetry carries its own ts, so a repeated POST overwrites the same point
        allowed_methods=methods,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    retry.retry_after_cap = (
        retry_after_cap if retry_after_cap is not None
        else load_settings().thingsboard_retry_after_cap_seconds
    )  # fmt: skip
    _redact_urllib3_logs()
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _check_response(response: requests.Response, what: str, rejected: str) -> None:
    """Raise the exception matching a non-2xx answer; ``rejected`` explains a 401."""
    status = response.status_code
    if status < 400:
        return
    if status == 401:
        raise ThingsBoardAuthError(f"{what}: {rejected} (HTTP 401)")
    if status in RETRY_STATUSES or status >= 500:
        raise ThingsBoardUnavailable(f"{what}: HTTP {status} {response.reason} after retries")
    detail = _DEVICE_PATH.sub("/api/v1/***/", response.text[:200])
    raise ThingsBoardError(f"{what}: HTTP {status} {response.reason}: {detail}")


def _unreachable(what: str, error: requests.RequestException) -> ThingsBoardUnavailable:
    # the exception's own text holds the request URL, which for a device holds the token
    return ThingsBoardUnavailable(f"{what}: unreachable after retries ({type(error).__name__})")


def _json(response: requests.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ThingsBoardError(f"{what}: answer is not JSON: {response.text[:200]!r}") from None


# --- the device ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThingsBoardDevice:
    """One ThingsBoard device, reached through its access token (device HTTP API)."""

    base_url: str
    token: SecretStr | str = field(repr=False)
    session: requests.Session = field(default_factory=telemetry_session, repr=False)
    timeout: float = REQUEST_TIMEOUT

    def post_telemetry(self, ts_ms: int, values: Mapping[str, TelemetryValue]) -> None:
        """Store ``values`` as time series points at ``ts_ms`` (unix milliseconds)."""
        self._post("telemetry", {"ts": int(ts_ms), "values": dict(values)})

    def post_series(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Store several time series points in one request: ``[{"ts": ms, "values": {...}}]``."""
        self._post_body(
            "telemetry", [{"ts": int(e["ts"]), "values": dict(e["values"])} for e in entries]
        )

    def post_attributes(self, attributes: Mapping[str, Any]) -> None:
        """Set the device's client-side attributes."""
        self._post("attributes", dict(attributes))

    def _post(self, resource: str, body: dict[str, Any]) -> None:
        self._post_body(resource, body)

    def _post_body(self, resource: str, body: dict[str, Any] | list[dict[str, Any]]) -> None:
        what = f"ThingsBoard {resource} to {self.base_url}"
        try:
            response = self.session.post(
                f"{self.base_url.rstrip('/')}/api/v1/{self._secret()}/{resource}",
                json=body,
                timeout=self.timeout,
            )
        except requests.RequestException as error:
            raise _unreachable(what, error) from None
        _check_response(response, what, "the device token was rejected")

    def _secret(self) -> str:
        return self.token.get_secret_value() if isinstance(self.token, SecretStr) else self.token


def device_from_settings(settings: Settings | None = None) -> ThingsBoardDevice | None:
    """The configured device, or None when ThingsBoard is off (URL or token unset)."""
    settings = settings or load_settings()
    if not settings.thingsboard_url or settings.thingsboard_device_token is None:
        return None
    return ThingsBoardDevice(settings.thingsboard_url, settings.thingsboard_device_token)


# --- what the pipeline reports -----------------------------------------------------------------
def rating_key(star: float) -> str:
    """``ratings_4`` for 4 stars, ``ratings_3_5`` for 3.5."""
    return "ratings_" + f"{float(star):g}".replace(".", "_")


def telemetry_values(
    metrics_by_model: Mapping[str, Mapping[str, float | None]],
    rating_counts: Mapping[int, int] | Mapping[float, int],
    dataset_counts: Mapping[str, int],
) -> dict[str, float | int]:
    """Flat telemetry: ``<metric>_<model>`` (missing or NaN skipped), ``ratings_<star>``
    from the star counts, and the dataset's counts (``users``, ``items``, ``ratings``)."""
    values: dict[str, float | int] = {}
    for model, metrics in metrics_by_model.items():
        for name, key in METRIC_KEYS.items():
            value = metrics.get(name)
            if value is not None and math.isfinite(value):
                values[f"{key}_{model}"] = float(value)
    values.update({rating_key(star): int(count) for star, count in rating_counts.items()})
    values.update({name: int(count) for name, count in dataset_counts.items()})
    return values


# --- the outbox ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryReport:
    sent: int
    failed: int
    pending: int
    given_up: int = 0  # refused messages marked failed after their last attempt (all time)


_INSERT = (
    "INSERT INTO ops.telemetry_outbox (kind, payload, message_key) VALUES (%s, %s, %s)"
    " ON CONFLICT (message_key) DO NOTHING RETURNING outbox_id"
)
_NEXT_PENDING = (
    "SELECT outbox_id, kind, payload FROM ops.telemetry_outbox"
    " WHERE delivered_at IS NULL AND failed_at IS NULL AND outbox_id > %s"
    " ORDER BY outbox_id LIMIT 1 FOR UPDATE SKIP LOCKED"
)
_MARK_DELIVERED = (
    "UPDATE ops.telemetry_outbox SET delivered_at = now(), attempts = attempts + 1,"
    " last_error = NULL WHERE outbox_id = %s"
)
_RECORD_FAILURE = (
    "UPDATE ops.telemetry_outbox SET attempts = attempts + 1, last_error = %s WHERE outbox_id = %s"
)
# a refused message (4xx) is given up after max_attempts: failed, with its reason, never resent
_RECORD_REFUSAL = (
    "UPDATE ops.telemetry_outbox SET attempts = attempts + 1, last_error = %s,"
    " failed_at = CASE WHEN attempts + 1 >= %s THEN clock_timestamp() END WHERE outbox_id = %s"
)
_COUNT_PENDING = (
    "SELECT count(*) FILTER (WHERE failed_at IS NULL), count(*) FILTER (WHERE failed_at IS NOT NULL)"
    " FROM ops.telemetry_outbox WHERE delivered_at IS NULL"
)


def enqueue_all(
    url: str,
    messages: Iterable[tuple[OutboxKind, Mapping[str, Any]]],
    key: str | None = None,
) -> list[int]:
    """Store messages in the outbox in one transaction; returns the ids of those stored, in
    order. With a ``key``, each message is keyed ``<key>:<kind>`` and one already queued (sent
    or not) under the same key is skipped."""
    messages = list(messages)
    for kind, _ in messages:
        if kind not in OUTBOX_KINDS:
            raise ValueError(f"outbox kind {kind!r}: expected one of {sorted(OUTBOX_KINDS)}")
    with connect(url) as conn, conn.transaction():
        rows = [
            conn.execute(
                _INSERT, (kind, Jsonb(dict(payload)), f"{key}:{kind}" if key else None)
            ).fetchone()
            for kind, payload in messages
        ]
    return [row[0] for row in rows if row is not None]


def enqueue(url: str, kind: OutboxKind, payload: Mapping[str, Any]) -> int:
    """Store one message in the outbox; returns its ``outbox_id``."""
    return enqueue_all(url, [(kind, payload)])[0]


def _send(device: ThingsBoardDevice, kind: str, payload: dict[str, Any]) -> None:
    if kind == "telemetry" and "series" in payload:  # the service's interval: many points
        device.post_series(payload["series"])
    elif kind == "telemetry":
        device.post_telemetry(payload["ts"], payload["values"])
    else:
        device.post_attributes(payload)


def _deliver_next(
    conn: psycopg.Connection[Any], device: ThingsBoardDevice, after_id: int, max_attempts: int
) -> tuple[int, ThingsBoardError | None] | None:
    """Send the first pending row after ``after_id`` while holding its lock; None when done.

    The row lock spans the POST, so a concurrent deliverer skips the row instead of sending it
    too. A crash between the POST and the commit resends it next time (at least once).
    """
    with conn.transaction():
        row = conn.execute(_NEXT_PENDING, (after_id,)).fetchone()
        if row is None:
            return None
        outbox_id, kind, payload = row
        try:
            _send(device, kind, payload)
        except ThingsBoardError as error:
            reason = str(error)[:1000]
            if isinstance(error, ThingsBoardUnavailable | ThingsBoardAuthError):
                conn.execute(_RECORD_FAILURE, (reason, outbox_id))  # not the message's fault
            else:
                conn.execute(_RECORD_REFUSAL, (reason, max_attempts, outbox_id))
            logger.warning("Outbox row %d (%s) not delivered: %s", outbox_id, kind, error)
            return outbox_id, error
        conn.execute(_MARK_DELIVERED, (outbox_id,))
        return outbox_id, None


def deliver_pending(
    url: str, device: ThingsBoardDevice, max_attempts: int | None = None
) -> DeliveryReport:
    """Send the outbox's pending rows, oldest first, each in its own transaction.

    Stops at the first ``ThingsBoardUnavailable`` (the rest stay pending); re-raises a
    ``ThingsBoardAuthError`` once recorded; a row refused with another 4xx is tried again on
    later deliveries up to ``max_attempts`` in all (``RECSYS_OUTBOX_MAX_ATTEMPTS``), then marked
    failed with its reason, and the next rows go on.
    """
    attempts = max_attempts or load_settings().outbox_max_attempts
    sent = failed = last_id = 0
    with connect(url, autocommit=True) as conn:
        while (outcome := _deliver_next(conn, device, last_id, attempts)) is not None:
            last_id, error = outcome
            if error is None:
                sent += 1
                continue
            failed += 1
            if isinstance(error, ThingsBoardAuthError):
                raise error
            if isinstance(error, ThingsBoardUnavailable):
                break
        pending, given_up = outbox_counts_on(conn)
    report = DeliveryReport(sent=sent, failed=failed, pending=pending, given_up=given_up)
    logger.info(
        "ThingsBoard outbox: %d sent, %d failed, %d pending, %d given up",
        sent, failed, report.pending, given_up,
    )  # fmt: skip
    return report


def outbox_counts_on(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """(pending, given up) messages of the outbox."""
    row = conn.execute(_COUNT_PENDING).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


@dataclass(frozen=True)
class RefusedMessage:
    """An outbox row ThingsBoard refused until it was given up; nothing resends it."""

    outbox_id: int
    kind: str
    attempts: int
    failed_at: datetime
    reason: str


@dataclass(frozen=True)
class OutboxState:
    pending: int
    given_up: int
    refused: list[RefusedMessage]  # the latest given-up messages, newest first


_LATEST_REFUSED = (
    "SELECT outbox_id, kind, attempts, failed_at, coalesce(last_error, '') FROM ops.telemetry_outbox"
    " WHERE delivered_at IS NULL AND failed_at IS NOT NULL ORDER BY failed_at DESC, outbox_id DESC"
    " LIMIT %s"
)


def outbox_state(url: str, latest: int = 5) -> OutboxState:
    """Messages waiting, and the ``latest`` of those given up with their reasons."""
    with connect(url) as conn:
        return outbox_state_on(conn, latest)


def outbox_state_on(conn: psycopg.Connection[Any], latest: int = 5) -> OutboxState:
    pending, given_up = outbox_counts_on(conn)
    rows = conn.execute(_LATEST_REFUSED, (latest,)).fetchall()
    return OutboxState(pending, given_up, [RefusedMessage(*row) for row in rows])


def report_to_thingsboard(
    url: str,
    device: ThingsBoardDevice,
    ts_ms: int,
    values: Mapping[str, TelemetryValue],
    attributes: Mapping[str, Any],
    key: str | None = None,
) -> DeliveryReport:
    """Queue this run's telemetry and attributes, then deliver everything pending, oldest
    first: queued before sending, nothing is lost when ThingsBoard is down. A ``key`` (the
    training run) queues them once however often the same run is reported."""
    enqueue_all(url, telemetry_messages(ts_ms, values, attributes), key)
    return deliver_pending(url, device)


def telemetry_messages(
    ts_ms: int, values: Mapping[str, TelemetryValue], attributes: Mapping[str, Any]
) -> list[tuple[OutboxKind, Mapping[str, Any]]]:
    """A run's outbox messages: its telemetry at ``ts_ms``, then its attributes if any."""
    messages: list[tuple[OutboxKind, Mapping[str, Any]]] = [
        ("telemetry", {"ts": int(ts_ms), "values": dict(values)})
    ]
    if attributes:
        messages.append(("attributes", attributes))
    return messages


# --- the dashboard ------------------------------------------------------------------------------
def dashboard_keys(dashboard: Mapping[str, Any], key_type: str | None = None) -> set[str]:
    """Every data key name the dashboard's widgets read (only ``key_type`` ones if given:
    ``timeseries`` or ``attribute``)."""
    widgets = dashboard.get("configuration", {}).get("widgets", {}).values()
    return {
        key["name"]
        for widget in widgets
        for source in widget.get("config", {}).get("datasources", [])
        for key in source.get("dataKeys", [])
        if key_type is None or key.get("type") == key_type
    }


def dashboard_for_device(dashboard: Mapping[str, Any], device_name: str) -> dict[str, Any]:
    """A copy of ``dashboard`` whose entity-name aliases point at ``device_name``."""
    copy: dict[str, Any] = json.loads(json.dumps(dashboard))
    for alias in copy.get("configuration", {}).get("entityAliases", {}).values():
        if alias.get("filter", {}).get("type") == "entityName":
            alias["filter"]["entityNameFilter"] = device_name
    return copy


# --- provisioning (tenant REST API) ------------------------------------------------------------
@dataclass(frozen=True)
class ProvisionResult:
    device_id: str
    device_token: SecretStr = field(repr=False)
    dashboard_id: str


@dataclass(frozen=True)
class TenantClient:
    """The tenant administrator's REST API, after ``POST /api/auth/login``."""

    base_url: str
    jwt: str = field(repr=False)
    session: requests.Session = field(repr=False)

    @classmethod
    def login(
        cls, base_url: str, username: str, password: SecretStr | str, session: requests.Session
    ) -> TenantClient:
        secret = password.get_secret_value() if isinstance(password, SecretStr) else password
        what = f"ThingsBoard login of {username} at {base_url}"
        try:
            response = session.post(
                f"{base_url.rstrip('/')}/api/auth/login",
                json={"username": username, "password": secret},
                timeout=REQUEST_TIMEOUT,
            )
        except requests.RequestException as error:
            raise _unreachable(what, error) from None
        _check_response(response, what, "username or password rejected")
        return cls(base_url.rstrip("/"), _json(response, what)["token"], session)

    def request(
        self, method: str, path: str, what: str, *, params: Any = None, body: Any = None
    ) -> requests.Response:
        try:
            return self.session.request(
                method,
                f"{self.base_url}{path}",
                params=params,
                json=body,
                headers={"X-Authorization": f"Bearer {self.jwt}"},
                timeout=REQUEST_TIMEOUT,
            )
        except requests.RequestException as error:
            raise _unreachable(f"ThingsBoard {what}", error) from None

    def call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        response = self.request(method, path, what, **kwargs)
        _check_response(response, f"ThingsBoard {what}", "the session token was rejected")
        return _json(response, f"ThingsBoard {what}")

    def find_device(self, name: str) -> str | None:
        what = f"device lookup {name!r}"
        response = self.request("GET", "/api/tenant/devices", what, params={"deviceName": name})
        if response.status_code == 404:
            return None
        _check_response(response, f"ThingsBoard {what}", "the session token was rejected")
        return str(_json(response, what)["id"]["id"])

    def create_device(self, name: str) -> str:
        body = {"name": name, "type": DEVICE_TYPE}
        device = self.call("POST", "/api/device", f"device creation {name!r}", body=body)
        return str(device["id"]["id"])

    def device_token(self, device_id: str) -> SecretStr:
        path = f"/api/device/{device_id}/credentials"
        return SecretStr(self.call("GET", path, f"credentials of {device_id}")["credentialsId"])

    def find_dashboard(self, title: str) -> str | None:
        params = {"pageSize": 100, "page": 0, "textSearch": title}
        page = self.call("GET", "/api/tenant/dashboards", f"dashboards {title!r}", params=params)
        ids = [d["id"]["id"] for d in page.get("data", []) if d.get("title") == title]
        return str(ids[0]) if ids else None

    def save_dashboard(self, dashboard: Mapping[str, Any]) -> str:
        what = f"dashboard save {dashboard.get('title')!r}"
        return str(self.call("POST", "/api/dashboard", what, body=dashboard)["id"]["id"])


def provision(
    base_url: str,
    username: str,
    password: SecretStr | str,
    device_name: str,
    dashboard_path: Path,
    session: requests.Session | None = None,
) -> ProvisionResult:
    """Make sure the device and the dashboard exist (found by name and title, so running it
    again creates nothing new: it updates the dashboard in place); returns their ids."""
    client = TenantClient.login(base_url, username, password, session or telemetry_session())
    if session is None:  # logging in again is harmless; creating again is not
        client = replace(client, session=telemetry_session(methods=ADMIN_RETRY_METHODS))
    device_id = client.find_device(device_name) or client.create_device(device_name)
    dashboard = dashboard_for_device(json.loads(Path(dashboard_path).read_text()), device_name)
    existing = client.find_dashboard(dashboard["title"])
    if existing is not None:
        dashboard["id"] = {"entityType": "DASHBOARD", "id": existing}
    dashboard_id = client.save_dashboard(dashboard)
    logger.info("ThingsBoard device %s and dashboard %s provisioned", device_id, dashboard_id)
    return ProvisionResult(device_id, client.device_token(device_id), dashboard_id)
