"""``GET /health``: every part with status, latency and reason; 200 only when all are ok."""

from __future__ import annotations

from pathlib import Path

from tests.api.conftest import Api, Project, start_api


def test_health_lists_every_part_and_the_model(api: Api) -> None:
    answer = api.client().get("/health")

    body = answer.json()
    parts = {part["part"]: part for part in body["parts"]}
    assert answer.status_code == 200, body
    assert body["status"] == "ok" and body["checked_at"]
    assert {"lake", "postgresql", "mlflow tracking", "mlflow registry", "prefect api",
            "thingsboard", "model", "answer recorder"} <= set(parts)  # fmt: skip
    assert parts["prefect api"]["status"] == "not configured"
    assert parts["model"]["status"] == "ok" and "version" in parts["model"]["reason"]
    assert all(p["latency_ms"] is not None for p in parts.values() if p["status"] == "ok")


def test_a_part_down_is_503_naming_it(project: Project, tmp_path: Path) -> None:
    down = start_api(project, tmp_path / "api.log", THINGSBOARD_URL="http://127.0.0.1:9")
    try:
        answer = down.client().get("/health")
    finally:
        down.stop()

    failed = [p for p in answer.json()["parts"] if p["status"] == "failed"]
    assert answer.status_code == 503
    assert [p["part"] for p in failed] == ["thingsboard"]
    assert failed[0]["reason"]
