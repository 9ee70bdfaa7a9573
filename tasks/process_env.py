"""Imported first by every entry point (flows/*.py, ``recsys``, ``python -m api``): the process
environment that keeps every write inside RECSYS_HOME. Prefect creates its home when it is
imported, so PREFECT_HOME must point into RECSYS_HOME before then (``~/.prefect`` otherwise);
MLflow's usage telemetry is off (it writes ``~/.config/mlflow`` and calls out to the internet).
A value set in the environment (a worker's PREFECT_HOME, say) wins."""

from __future__ import annotations

import os
import sys

from tasks.config import load_settings

# Prefect imported already: too late; under pytest, the tests choose each run's home themselves
if "prefect" not in sys.modules and "pytest" not in sys.modules:
    os.environ.setdefault("PREFECT_HOME", str(load_settings().resolved_prefect_home))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
