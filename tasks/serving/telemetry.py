"""The service's telemetry: every ``telemetry_interval_seconds`` one outbox message with the
interval's request count, latency percentiles, cold-start share, strategies and model version,
plus each answer of the interval as a timestamped point; delivered through the PostgreSQL
outbox (queued before it is sent, keyed by interval: nothing lost, nothing sent twice)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tasks.report.thingsboard import (
    ThingsBoardDevice,
    deliver_pending,
    enqueue_all,
)
from tasks.serving.periodic import PeriodicFlush
from tasks.serving.recorder import AnswerRow

logger = logging.getLogger(__name__)

COLD_START = ("cold_start_popular", "cold_start_cluster")
STRATEGY_KEYS = ("personal", "fold_in", "cold_start_popular", "cold_start_cluster", "baseline")
# the telemetry keys the service sends (the dashboard's widgets read exactly these)
INTERVAL_KEYS = (
    "api_requests", "api_latency_p50_ms", "api_latency_p99_ms", "api_cold_start_share",
    "api_model_version", *(f"api_strategy_{s}" for s in STRATEGY_KEYS),
)  # fmt: skip
ANSWER_KEYS = (
    "answer_user", "answer_items", "answer_top_score", "answer_strategy", "answer_latency_ms",
    "answer_endpoint",
)  # fmt: skip


def interval_values(rows: Sequence[AnswerRow]) -> dict[str, float | int | str]:
    """The interval's aggregates (``INTERVAL_KEYS``) of the answers in ``rows``."""
    latencies = np.array([row.latency_ms for row in rows], dtype=np.float64)
    strategies = [row.strategy for row in rows]
    values: dict[str, float | int | str] = {
        "api_requests": len(rows),
        "api_latency_p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "api_latency_p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "api_cold_start_share": round(sum(s in COLD_START for s in strategies) / len(rows), 4),
        "api_model_version": rows[-1].model_version,
    }
    values.update({f"api_strategy_{s}": strategies.count(s) for s in STRATEGY_KEYS})
    return values


def answer_point(row: AnswerRow) -> dict[str, object]:
    """One answer as a telemetry point at the time it was given."""
    return {
        "ts": int(row.answered_at.timestamp() * 1000),
        "values": {
            "answer_user": row.user_id if row.user_id is not None else -1,
            "answer_items": ",".join(str(i) for i in row.items[:10]),
            "answer_top_score": round(row.scores[0], 4) if row.scores else 0.0,
            "answer_strategy": row.strategy,
            "answer_latency_ms": round(row.latency_ms, 3),
            "answer_endpoint": row.endpoint,
        },
    }


def interval_message(rows: Sequence[AnswerRow], ts_ms: int) -> dict[str, object]:
    """The outbox payload of one interval: its aggregates at ``ts_ms`` and each answer."""
    return {"series": [{"ts": ts_ms, "values": interval_values(rows)}, *map(answer_point, rows)]}


@dataclass
class ServiceTelemetry(PeriodicFlush):
    """Collects answers and queues one message per non-empty interval; a background thread
    delivers the outbox when ThingsBoard is configured (the report delivers it otherwise)."""

    url: str
    device: ThingsBoardDevice | None
    interval_seconds: float = 10.0
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    queued: int = 0
    last_error: str | None = None
    _rows: list[AnswerRow] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, row: AnswerRow) -> None:
        self._rows.append(row)  # list.append is atomic; the swap below takes the lock

    name = "service-telemetry"

    @property
    def interval(self) -> float:
        return self.interval_seconds

    def flush(self) -> None:
        """Queue the interval's message (if it had answers), then deliver what is pending."""
        with self._lock:
            rows, self._rows = self._rows, []
        if rows and not self._queue(rows):
            return
        if self.device is None:
            return
        try:
            deliver_pending(self.url, self.device)
            self.last_error = None
        except Exception as error:  # queued: a later interval (or the report) sends it
            self.last_error = f"{type(error).__name__}: {error}"
            logger.warning("service telemetry not delivered yet: %s", self.last_error)

    def _queue(self, rows: list[AnswerRow]) -> bool:
        ts_ms = int(time.time() * 1000)
        try:
            enqueue_all(
                self.url,
                [("telemetry", interval_message(rows, ts_ms))],
                f"api:{self.instance}:{ts_ms}",
            )
        except Exception as error:  # PostgreSQL down: the rows wait for the next interval
            with self._lock:
                self._rows[:0] = rows
            self.last_error = f"{type(error).__name__}: {error}"
            logger.warning("service telemetry not queued yet: %s", self.last_error)
            return False
        self.queued += 1
        return True
