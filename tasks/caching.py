"""Cache policies shared by the tasks: content inputs + task source + the code version."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

PACKAGE = "movielens-recommender"
ROOT = Path(__file__).resolve().parents[1]
# What a task's result depends on beyond its own source: the model library (its defaults
# decide what a sweep unit fits), the task helpers, and the warehouse schema.
CODE = ("recommender/**/*.py", "tasks/**/*.py", "deployments/sql/*.sql")


def package_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a digest of the library, task and schema sources."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in CODE for p in ROOT.glob(pattern)}):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{package_version()}+{digest.hexdigest()[:16]}"


@dataclass
class CodeVersion(CachePolicy):
    """Keys a result to the code that computed it: a changed model default or helper, not
    only the task's own source, computes anew instead of returning a stale result."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return f"{PACKAGE}=={code_version()}"


# Inputs are small typed references carrying content hashes, so this is a content key.
CONTENT = INPUTS + TASK_SOURCE + CodeVersion()
