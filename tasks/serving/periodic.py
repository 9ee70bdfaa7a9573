"""A background thread that calls ``flush`` every ``interval`` seconds and once more on stop:
the answer recorder's and the telemetry's loop."""

from __future__ import annotations

import threading


class PeriodicFlush:
    """Subclasses define ``flush`` and the ``interval`` property; ``start`` and ``stop`` run it."""

    name = "periodic-flush"

    @property
    def interval(self) -> float:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then flush what is left (a graceful shutdown loses nothing)."""
        if getattr(self, "_thread", None) is not None:
            self._stop.set()
            self._thread.join(timeout=30)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()
