"""The command line's tests: a fresh environment for ``recsys`` subprocesses, and in-process
runs that leave no log handler behind."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

FOREIGN = ("RECSYS_", "PREFECT_", "MLFLOW_", "THINGSBOARD_", "AWS_")
RECSYS = Path(sys.executable).parent / "recsys"


@pytest.fixture(autouse=True)
def no_leftover_log_handlers() -> Iterator[None]:
    """main() adds a file handler to the root logger; remove the ones a test added."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        root.removeHandler(handler)
        handler.close()


def fresh_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any project, Prefect or service setting, and a new home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    # a busy test machine starts Prefect's temporary server slower than its 20 s default
    env |= {"RECSYS_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    return env | extra


def recsys(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [str(RECSYS)] if RECSYS.exists() else [sys.executable, "-m", "cli"]
    return subprocess.run(
        [*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    return free_port()
