"""The shipped ThingsBoard dashboard reads exactly the keys that are sent: the pipeline report's
keys it shows, and every key of the service's interval telemetry."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tasks.report.summary import FAMILIES
from tasks.report.thingsboard import METRIC_KEYS, dashboard_keys, rating_key, telemetry_values
from tasks.serving.recorder import AnswerRow
from tasks.serving.telemetry import ANSWER_KEYS, INTERVAL_KEYS, STRATEGY_KEYS, interval_message
from tests.report.test_thingsboard import DASHBOARD

SERVICE_KEYS = set(INTERVAL_KEYS) | set(ANSWER_KEYS)
# the pipeline report's keys the dashboard shows (the report sends more: mae, recall, ...)
PIPELINE_SHOWN = {
    "rmse_knn_paper", "rmse_knn_tuned", "rmse_random_forest", "rmse_baseline",
    "ndcg10_knn_tuned", "p10_knn_tuned",
    "ratings_1", "ratings_2", "ratings_3", "ratings_4", "ratings_5", "ratings",
}  # fmt: skip


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def pipeline_keys() -> set[str]:
    """Every key the report can send: each metric of each model family, each half star,
    and the dataset's counts."""
    metrics = {family: dict.fromkeys(METRIC_KEYS, 0.5) for family in FAMILIES.values()}
    stars = {star / 2: 1 for star in range(1, 11)}
    return set(telemetry_values(metrics, stars, {"users": 1, "items": 1, "ratings": 1}))


def answer(n: int, strategy: str, user_id: int | None, endpoint: str) -> AnswerRow:
    return AnswerRow(
        request_id=f"req-{n}",
        answered_at=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(milliseconds=137 * n),
        endpoint=endpoint,
        dataset="ml-100k",
        user_id=user_id,
        items=[10 + n, 20 + n, 30 + n],
        scores=[4.5, 4.1, 3.9],
        model_version="3",
        strategy=strategy,
        latency_ms=1.5 + n,
    )


def test_the_dashboard_reads_the_shown_pipeline_keys_and_every_service_key(
    dashboard: dict[str, Any],
) -> None:
    report = pipeline_keys()
    assert not SERVICE_KEYS & report  # no key is ambiguous between the two senders
    assert PIPELINE_SHOWN - report == set()  # the report does send every shown key
    assert {rating_key(star) for star in range(1, 6)} <= PIPELINE_SHOWN
    assert dashboard_keys(dashboard, "timeseries") == PIPELINE_SHOWN | SERVICE_KEYS
    assert {f"api_strategy_{s}" for s in STRATEGY_KEYS} <= dashboard_keys(dashboard, "timeseries")


def test_every_key_of_a_real_interval_message_resolves(dashboard: dict[str, Any]) -> None:
    rows = [
        answer(0, "personal", 42, "recommendations"),
        answer(1, "fold_in", 7, "recommendations"),
        answer(2, "cold_start_popular", None, "recommendations"),
        answer(3, "baseline", 42, "predict"),
    ]
    message = interval_message(rows, 1_735_689_600_000)

    series = message["series"]
    assert isinstance(series, list) and len(series) == 1 + len(rows)
    sent = {name for point in series for name in point["values"]}
    assert sent == SERVICE_KEYS
    assert sent <= dashboard_keys(dashboard, "timeseries")
    assert not sent & dashboard_keys(dashboard, "attribute")


def test_the_service_widgets_use_the_device_alias_and_do_not_overlap(
    dashboard: dict[str, Any],
) -> None:
    configuration = dashboard["configuration"]
    widgets = configuration["widgets"]
    placed = configuration["states"]["default"]["layouts"]["main"]["widgets"]
    columns = configuration["states"]["default"]["layouts"]["main"]["gridSettings"]["columns"]
    (alias,) = configuration["entityAliases"]

    assert set(placed) == set(widgets)
    cells: dict[tuple[int, int], str] = {}
    for widget_id, spot in placed.items():
        widget = widgets[widget_id]
        assert widget["id"] == widget_id
        assert {k: widget[k] for k in ("sizeX", "sizeY", "row", "col")} == spot
        assert spot["col"] + spot["sizeX"] <= columns
        for source in widget["config"]["datasources"]:
            assert (source["type"], source["entityAliasId"]) == ("entity", alias)
        for row in range(spot["row"], spot["row"] + spot["sizeY"]):
            for col in range(spot["col"], spot["col"] + spot["sizeX"]):
                assert cells.setdefault((row, col), widget_id) == widget_id, (row, col)
    by_title = {w["config"]["title"]: w for w in widgets.values()}
    table = by_title["Recent predictions"]
    assert (table["typeFullFqn"], table["type"]) == ("system.cards.timeseries_table", "timeseries")
    assert {k["name"] for k in table["config"]["datasources"][0]["dataKeys"]} == set(ANSWER_KEYS)
