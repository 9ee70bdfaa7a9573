"""One run of the README's main command, ``python flows/pipeline.py``, on the embedded defaults
(embedded PostgreSQL, SQLite MLflow, local lake, Prefect's ephemeral API) and the real ml-100k,
shared by every test of the session that needs a project home the pipeline filled: it costs
minutes. The test packages that use it import the fixture in their ``conftest.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOREIGN = ("RECSYS_", "PREFECT_", "MLFLOW_", "THINGSBOARD_", "AWS_")


@dataclass(frozen=True)
class PipelineRun:
    """The finished run: its project home, the folder it ran in, the environment it had."""

    home: Path
    workdir: Path
    env: dict[str, str]
    done: subprocess.CompletedProcess[str]


def clean_environment(home: Path, source: Path) -> dict[str, str]:
    """This process's environment without any setting of ours, then only the home and source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    return env | {"RECSYS_HOME": str(home), "RECSYS_MOVIELENS_SOURCE": str(source)}


def run_pipeline(workdir: Path, source: Path) -> PipelineRun:
    env = clean_environment(workdir / "home", source)
    done = subprocess.run(
        [sys.executable, str(REPO / "flows" / "pipeline.py")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    return PipelineRun(home=workdir / "home", workdir=workdir, env=env, done=done)


# Each conftest that imports the fixture holds its own copy of it, so the run itself is kept
# here: once per session, whichever package asks first.
_RUNS: dict[Path, PipelineRun] = {}


@pytest.fixture(scope="session")
def pipeline_run(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The pipeline run on a fresh home (under the session's temp folder) with nothing but
    ``RECSYS_HOME`` and ``RECSYS_MOVIELENS_SOURCE`` set; run once, whatever its outcome."""
    if ml100k_dir not in _RUNS:
        _RUNS[ml100k_dir] = run_pipeline(tmp_path_factory.mktemp("pipeline"), ml100k_dir)
    return _RUNS[ml100k_dir]
