"""The service on the embedded PostgreSQL, started in a home that does not exist yet (the
service before any flow): a SIGTERM (docker stop, kill, systemd) ends it gracefully and the
embedded server stops with its last user."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
from pathlib import Path

from tests.api.conftest import Project, start_api

PG_CTL_SECONDS = 30


def test_a_sigterm_stops_the_embedded_postgresql_with_its_last_user(
    project: Project, tmp_path: Path
) -> None:
    """uvicorn re-raises SIGTERM once its graceful shutdown is done, so the process ends
    without its exit handlers; the service gives the embedded server back before that."""
    home = tmp_path / "home"
    env = {k: v for k, v in project.env.items() if k != "RECSYS_DATABASE_URL"}
    env |= {  # the package's champion, served from this home's own embedded PostgreSQL
        "RECSYS_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project.home / 'mlflow' / 'mlflow.db'}",
    }
    api = start_api(dataclasses.replace(project, env=env), tmp_path / "api.log")
    data = home / "postgres"
    held = json.loads((data / ".handle_pids.json").read_text())

    try:
        assert api.stop()
        deadline = time.monotonic() + PG_CTL_SECONDS
        while (data / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert held == [api.process.pid]
        assert json.loads((data / ".handle_pids.json").read_text()) == []
        assert not (data / "postmaster.pid").exists()  # stopped, not left running
        assert "Failed to create the Prefect home" not in api.log.read_text()
    finally:
        if (data / "postmaster.pid").exists():  # without the fix: stop what the test started
            subprocess.run(["runuser", "-u", "pgserver", "--", "pg_ctl", "-D", str(data),
                            "-m", "fast", "-w", "stop"], check=False)  # fmt: skip
