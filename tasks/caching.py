"""Cache policies shared by the tasks: content inputs + task source + the code they run."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.logging import get_run_logger

PACKAGE = "movielens-recommender"
ROOT = Path(__file__).resolve().parents[1]
# What a result depends on beyond its task's own source, so that changing it computes anew
# instead of returning a stale result, and changing anything else (the health check, the
# service) keeps every cache.
SHARED_CODE = ("tasks/config.py", "tasks/lake.py", "tasks/caching.py")
DATA_CODE = (
    *SHARED_CODE, "tasks/movielens/*.py", "tasks/features.py", "tasks/warehouse/*.py",
    "deployments/sql/*.sql",
)  # fmt: skip
MODEL_CODE = (
    *SHARED_CODE, "recommender/**/*.py", "tasks/train/*.py",
)  # fmt: skip
REPORT_CODE = (
    *MODEL_CODE, "tasks/report/*.py", "tasks/plots.py", "tasks/warehouse/*.py",
)  # fmt: skip


def package_version() -> str:
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


@lru_cache(maxsize=8)
def code_version(patterns: tuple[str, ...] = MODEL_CODE) -> str:
    """The package version plus a digest of the source files ``patterns`` match."""
    digest = hashlib.sha256()
    for path in sorted({p for pattern in patterns for p in ROOT.glob(pattern)}):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{package_version()}+{digest.hexdigest()[:16]}"


@dataclass
class CodeVersion(CachePolicy):
    """Keys a result to the code that computed it (the files ``patterns`` match)."""

    patterns: tuple[str, ...] = MODEL_CODE

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        return f"{PACKAGE}=={code_version(self.patterns)}"


@dataclass
class Destinations(CachePolicy):
    """Keys a result to the stores it was written to (the MLflow tracking and registry store,
    the warehouse), so that pointing the pipeline at another one writes there anew instead of
    returning references into the old one. Only a digest of them is kept."""

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        from tasks.config import load_settings  # (config is part of SHARED_CODE, not an import

        settings = load_settings()
        database = settings.database_url
        stores = (
            settings.resolved_mlflow_tracking_uri,
            database.get_secret_value() if database else f"embedded:{settings.home}",
        )
        return hashlib.sha256("\0".join(stores).encode()).hexdigest()[:16]


# Inputs are small typed references carrying content hashes, so these are content keys:
# DATA_CONTENT for ingest, curation, features and loads; CONTENT for the models and MLflow.
DATA_CONTENT = INPUTS + TASK_SOURCE + CodeVersion(patterns=DATA_CODE)
CONTENT = INPUTS + TASK_SOURCE + CodeVersion(patterns=MODEL_CODE)
# ... and, for the tasks that write to MLflow or the warehouse, where they wrote
DATA_LOAD = DATA_CONTENT + Destinations()
RECORDED = CONTENT + Destinations()
# ... and the report, from what it shows (its inputs) into the warehouse and MLflow it read
REPORTED = INPUTS + TASK_SOURCE + CodeVersion(patterns=REPORT_CODE) + Destinations()
# A read of a store, keyed to the store's stamp (a ``stamp`` argument; see while_unchanged)
STORE_READ = INPUTS + TASK_SOURCE + CodeVersion(patterns=REPORT_CODE)


P = ParamSpec("P")
R = TypeVar("R")


def while_unchanged(task: Task[..., R], stamp: str | None, *args: Any) -> R:
    """``task(*args, stamp)``, a read of a store whose ``stamp`` fingerprints its content (see
    ``tasks.train.tracking.store_stamp``) and whose cache policy keys on its inputs
    (STORE_READ): what it read is reused while the stamp is unchanged, and read anew after any
    write. A store without a stamp (None) is read every time."""
    if stamp is None:
        return task.with_options(cache_policy=NO_CACHE)(*args, None)
    return task(*args, stamp)


def unless_gone(
    task: Task[P, R], present: Callable[[R], bool], *args: P.args, **kwargs: P.kwargs
) -> R:
    """Run ``task``, its cache allowed; when the result names what its store no longer holds (a
    wiped lake, a reset MLflow store at the same address), run it again without the cache.
    The cache alone would trust the store; asking the store keeps a rerun cached while true."""
    result = task(*args, **kwargs)
    if present(result):
        return result
    get_run_logger().warning(
        "%s: its cached result points at data the store no longer holds; computing it again",
        task.name,
    )
    return task.with_options(refresh_cache=True)(*args, **kwargs)
