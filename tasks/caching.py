"""Cache policies shared by the tasks: content inputs + task source + the package version."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext

PACKAGE = "movielens-recommender"


def package_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@dataclass
class PackageVersion(CachePolicy):
    """Keys a result to the installed version of this project, so a release invalidates it."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return f"{PACKAGE}=={package_version()}"


# Inputs are small typed references carrying content hashes, so this is a content key.
CONTENT = INPUTS + TASK_SOURCE + PackageVersion()
