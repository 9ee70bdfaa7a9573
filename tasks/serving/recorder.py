"""Every answer of the service as a row of ``serving.predictions``, written off the request path.

Requests append rows to a queue; a background thread writes what queued every
``recorder_flush_seconds`` in one COPY. A batch PostgreSQL refuses goes to a spool file under
``RECSYS_HOME/spool/`` and is replayed when the database answers again; stopping flushes what is
queued. Rows are keyed by request id and inserted with ``ON CONFLICT DO NOTHING``, so a replayed
batch never counts twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from tasks.serving.periodic import PeriodicFlush
from tasks.warehouse.connection import connect

logger = logging.getLogger(__name__)

COLUMNS = (
    "request_id", "answered_at", "endpoint", "dataset", "user_id", "items", "scores",
    "model_version", "strategy", "latency_ms",
)  # fmt: skip
_STAGE = "CREATE TEMPORARY TABLE predictions_batch (LIKE serving.predictions) ON COMMIT DROP"
_COPY = f"COPY predictions_batch ({', '.join(COLUMNS)}) FROM STDIN"
_MERGE = (
    f"INSERT INTO serving.predictions ({', '.join(COLUMNS)})"
    f" SELECT {', '.join(COLUMNS)} FROM predictions_batch ON CONFLICT (request_id) DO NOTHING"
)


@dataclass(frozen=True)
class AnswerRow:
    """One answer as stored: the request, the items and scores given, by which model and how."""

    request_id: str
    answered_at: datetime
    endpoint: str
    dataset: str
    user_id: int | None
    items: list[int]
    scores: list[float]
    model_version: str
    strategy: str
    latency_ms: float

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in COLUMNS)

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "answered_at": self.answered_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> AnswerRow:
        stamp = datetime.fromisoformat(str(data["answered_at"]))
        return cls(**{**data, "answered_at": stamp})  # type: ignore[arg-type]


def write_rows(url: str, rows: list[AnswerRow]) -> int:
    """Insert ``rows`` in one transaction (COPY into a staging table, then merge on request id);
    returns how many were new."""
    with connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute(_STAGE)
        with cur.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row.values())
        cur.execute(_MERGE)
        return cur.rowcount


@dataclass
class AnswerRecorder(PeriodicFlush):
    """Queues answers and writes them in batches from a background thread."""

    url: str
    spool_dir: Path
    flush_seconds: float = 0.2
    written: int = 0
    spooled: int = 0  # rows this process wrote to the spool
    replayed: int = 0  # rows written from spool files (this process's or an earlier one's)
    last_error: str | None = None
    _queue: deque[AnswerRow] = field(default_factory=deque, repr=False)
    _write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, row: AnswerRow) -> None:
        """Queue one answer (a deque append: safe from any thread, never blocks)."""
        self._queue.append(row)

    @property
    def pending(self) -> int:
        return len(self._queue)

    name = "answer-recorder"

    @property
    def interval(self) -> float:
        return self.flush_seconds

    def start(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        super().start()

    def flush(self) -> None:
        """Write the queued rows, then replay spooled batches if the database is back."""
        with self._write_lock:
            batch = self._drain()
            if batch and not self._write(batch):
                self._spool(batch)
            elif self.last_error is None:
                self._replay()

    def _drain(self) -> list[AnswerRow]:
        batch: list[AnswerRow] = []
        while self._queue:
            batch.append(self._queue.popleft())
        return batch

    def _write(self, batch: list[AnswerRow]) -> bool:
        try:
            write_rows(self.url, batch)
        except (psycopg.Error, OSError) as error:
            if self.last_error is None:
                logger.warning(
                    "answers cannot be written to PostgreSQL, spooling them under %s: %s",
                    self.spool_dir, error,
                )  # fmt: skip
            self.last_error = f"{type(error).__name__}: {error}"
            return False
        if self.last_error is not None:
            logger.info("PostgreSQL answers again: writing the spooled answers")
        self.last_error = None
        self.written += len(batch)
        return True

    def _spool(self, batch: list[AnswerRow]) -> None:
        """One file per batch, complete or absent: written under a temporary name, renamed."""
        name = f"predictions-{batch[0].answered_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
        target = self.spool_dir / f"{name}.jsonl"
        partial = self.spool_dir / f".{name}.tmp"
        with open(partial, "w", encoding="utf-8") as handle:
            for row in batch:
                handle.write(json.dumps(row.as_json()) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(target)
        self.spooled += len(batch)

    def spool_files(self) -> list[Path]:
        return sorted(self.spool_dir.glob("predictions-*.jsonl"))

    def _replay(self) -> None:
        for path in self.spool_files():
            lines = path.read_text(encoding="utf-8").splitlines()
            rows = [AnswerRow.from_json(json.loads(line)) for line in lines if line.strip()]
            if rows and not self._write(rows):
                return
            path.unlink()
            self.replayed += len(rows)
            logger.info("replayed %d spooled answers from %s", len(rows), path.name)
