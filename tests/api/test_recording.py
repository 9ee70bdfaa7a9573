"""Nothing answered goes unrecorded: rows == answered requests across a PostgreSQL restart under
load and across API restarts (spooled, then replayed); telemetry delivered once after
ThingsBoard was down."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import psycopg

from tests.api.conftest import (
    Api,
    Postgres,
    Project,
    known_user,
    start_api,
    unknown_user,
)
from tests.report.test_thingsboard import FakeThingsBoard


def recorded(project: Project, ids: list[str], timeout: float = 15.0) -> int:
    """How many of ``ids`` are rows of serving.predictions, once all are (or at the timeout)."""
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(project.env["RECSYS_DATABASE_URL"], connect_timeout=2) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM serving.predictions WHERE request_id = ANY(%s::uuid[])",
                    (ids,),
                ).fetchone()
            count = int(row[0]) if row else 0
        except psycopg.OperationalError:
            count = 0
        if count >= len(ids):
            return count
        time.sleep(0.2)
    return count


def spool_emptied(folder: Path, timeout: float = 10.0) -> bool:
    """Whether the spool files are all gone (a replayed file is removed just after its rows
    are written: a moment after they can be read)."""
    deadline = time.monotonic() + timeout
    while list(folder.glob("predictions-*.jsonl")):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def answer_ids(api: Api, user: int, count: int) -> list[str]:
    with api.client() as client:
        answers = [client.get(f"/recommendations/{user}") for _ in range(count)]
    assert all(a.status_code == 200 for a in answers)
    return [a.json()["request_id"] for a in answers]


def test_rows_equal_answers_across_a_postgres_restart_under_load(
    api: Api, project: Project, api_postgres: Postgres
) -> None:
    user = known_user(project)
    ids: list[str] = []
    failures: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            while not stop.is_set():
                answer = client.get(f"/recommendations/{user}", params={"n": 5})
                if answer.status_code == 200:
                    ids.append(answer.json()["request_id"])
                else:
                    failures.append(answer.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    api_postgres.stop()
    time.sleep(1.5)  # answered meanwhile: queued, then spooled
    api_postgres.restart()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()

    assert failures == []
    assert len(ids) > 50
    assert recorded(project, ids) == len(ids)
    assert spool_emptied(project.home / "spool")  # all replayed


def test_answers_spooled_at_shutdown_are_replayed_by_the_next_start(
    api: Api, project: Project, api_postgres: Postgres, tmp_path: Path
) -> None:
    # a home of their own (the same MLflow store): the package's server replays only its spool
    home = {
        "RECSYS_HOME": str(tmp_path / "home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project.home / 'mlflow' / 'mlflow.db'}",
    }
    second = start_api(project, tmp_path / "second.log", **home)
    user = known_user(project)
    api_postgres.stop()
    try:
        ids = answer_ids(second, user, 30)
        assert second.stop()  # graceful: the queued answers go to the spool
    finally:
        api_postgres.restart()
    spooled = list((tmp_path / "home" / "spool").glob("predictions-*.jsonl"))

    third = start_api(project, tmp_path / "third.log", **home)
    try:
        assert spooled
        assert recorded(project, ids) == len(ids)
    finally:
        third.stop()


def test_a_graceful_restart_loses_no_answer(api: Api, project: Project, tmp_path: Path) -> None:
    second = start_api(project, tmp_path / "second.log", RECSYS_RECORDER_FLUSH_SECONDS="60")
    ids = answer_ids(second, known_user(project), 25)  # all still queued: flushed every 60 s

    assert second.stop()

    assert recorded(project, ids, timeout=5) == len(ids)


def test_telemetry_is_delivered_once_after_thingsboard_was_down(
    api: Api, project: Project, api_thingsboard: FakeThingsBoard
) -> None:
    user = unknown_user(project) + 7  # a user no other test asks for

    def points_of_user() -> list[dict[str, object]]:
        return [
            point
            for body in api_thingsboard.telemetry()
            if isinstance(body, list)
            for point in body
            if point["values"].get("answer_user") == user
        ]

    api_thingsboard.down = True
    try:
        answer_ids(api, user, 3)
        time.sleep(2.0)  # several intervals: queued in the outbox, not delivered
        assert points_of_user() == []
    finally:
        api_thingsboard.down = False
    deadline = time.monotonic() + 15
    while len(points_of_user()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # later intervals must not send them again

    points = points_of_user()
    assert len(points) == 3
    assert {p["values"]["answer_strategy"] for p in points} == {"cold_start_popular"}
    aggregates = [
        body[0]["values"] for body in api_thingsboard.telemetry()
        if isinstance(body, list) and "api_requests" in body[0]["values"]
    ]  # fmt: skip
    assert all(a["api_latency_p99_ms"] >= a["api_latency_p50_ms"] for a in aggregates)
