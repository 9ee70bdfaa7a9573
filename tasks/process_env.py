"""Imported first by every entry point (flows/*.py, ``recsys``, ``python -m api``): the process
environment that keeps every write inside RECSYS_HOME. Prefect creates its home when it is
imported, so PREFECT_HOME must point into RECSYS_HOME before then (``~/.prefect`` otherwise);
MLflow's usage telemetry is off (it writes ``~/.config/mlflow`` and calls out to the internet).
A value set in the environment (a worker's PREFECT_HOME, say) wins."""

from __future__ import annotations

import sys

from tasks.config import set_process_environment

# Prefect imported already: too late; under pytest, the tests choose each run's home themselves
set_process_environment(prefect_home="prefect" not in sys.modules and "pytest" not in sys.modules)
