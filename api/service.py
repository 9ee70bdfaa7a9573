"""What one API process holds: the settings, the served model, the given ratings, the answer
recorder and the telemetry, started and stopped with the application."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import Request

from tasks.config import Settings
from tasks.report.thingsboard import device_from_settings
from tasks.serving.answers import Answer
from tasks.serving.champion import ModelHolder, NoChampionError, ServedModel
from tasks.serving.recorder import AnswerRecorder, AnswerRow
from tasks.serving.telemetry import ServiceTelemetry
from tasks.serving.user_ratings import UserRatings
from tasks.warehouse.connection import database_url, release_embedded_server
from tasks.warehouse.schema import migrate

logger = logging.getLogger(__name__)


class ModelUnavailable(RuntimeError):
    """No model is loaded yet; the message says what to do."""


@dataclass
class Service:
    settings: Settings
    database: str
    models: ModelHolder
    ratings: UserRatings
    recorder: AnswerRecorder
    telemetry: ServiceTelemetry
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        url = database_url(settings)
        migrate(url)
        return cls(
            settings=settings,
            database=url,
            models=ModelHolder.from_settings(settings),
            ratings=UserRatings(url, settings.dataset),
            recorder=AnswerRecorder(url, settings.home / "spool", settings.recorder_flush_seconds),
            telemetry=ServiceTelemetry(
                url, device_from_settings(settings), settings.telemetry_interval_seconds
            ),
        )

    def start(self) -> None:
        try:
            self.models.reload()
        except NoChampionError as error:  # served once a training registers a champion
            logger.warning("%s", error)
        self.ratings.refresh()
        self.recorder.start()
        self.telemetry.start()
        for target, name in ((self._poll_models, "model-poll"), (self._poll_ratings, "ratings")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.recorder.stop()
        self.telemetry.stop()
        # after the last flush: the embedded PostgreSQL stops with its last user even when
        # uvicorn's re-raised SIGTERM skips the exit handlers (docker stop, kill, systemd)
        release_embedded_server(self.settings)

    def _poll_models(self) -> None:
        self.models.poll(self._stop)

    def _poll_ratings(self) -> None:
        """Ratings other workers stored: folded in here within a poll interval."""
        while not self._stop.wait(min(1.0, self.settings.model_poll_seconds)):
            try:
                self.ratings.refresh()
            except Exception as error:
                logger.warning("reading given ratings failed: %s", error)

    def served(self) -> ServedModel:
        """The model to answer one whole request with (read once per request)."""
        current = self.models.current
        if current is None:
            raise ModelUnavailable(
                self.models.error
                or "no model loaded yet: run the train flow (python flows/train.py) first"
            )
        return current

    def record(self, endpoint: str, answer: Answer, started: float, dataset: str) -> str:
        """Queue one answer for ``serving.predictions`` and the telemetry; its request id."""
        request_id = str(uuid.uuid4())
        row = AnswerRow(
            request_id=request_id,
            answered_at=datetime.now(UTC),
            endpoint=endpoint,
            dataset=dataset,
            user_id=answer.user_id,
            items=answer.items,
            scores=answer.scores,
            model_version=answer.model_version,
            strategy=answer.strategy,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        self.recorder.record(row)
        self.telemetry.observe(row)
        return request_id


def service_of(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]
