"""Why a run failed, in a person's words: what failed and which setting (environment variable)
to change, from an exception and its causes. The command line prints it; tracebacks go to a log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

from pydantic import SecretStr
from pydantic import ValidationError as PydanticValidationError

from tasks.config import Settings

MAX_DETAIL = 240  # characters of a library's own message kept in the one-line summary


@dataclass(frozen=True)
class Explanation:
    """One line saying what failed and, when a person can fix it, one saying what to do."""

    what: str
    action: str | None = None

    def lines(self) -> list[str]:
        return [self.what] + ([self.action] if self.action else [])


def explain_failure(exc: BaseException, settings: Settings | None = None) -> Explanation:
    """The first known cause in the exception's chain, explained; else its own first line."""
    for cause in exception_chain(exc):
        for explain in (
            _invalid_settings,
            _database_unreachable,
            _mlflow_unreachable,
            _s3_unreachable,
            _ingest_failed,
            _stack_unhealthy,
            _prefect_unavailable,
        ):
            explanation = explain(cause, settings)
            if explanation is not None:
                return explanation
    reached = _endpoint_in_message(exc, settings)
    return reached or Explanation(f"{type(exc).__name__}: {first_line(exc)}")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, then what it was raised from (or during), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


def setting_variable(field: str) -> str:
    """The environment variable of a Settings field: its first alias, else RECSYS_<FIELD>."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    if isinstance(alias, str):
        return alias
    return f"RECSYS_{field.upper()}" if info is not None else field.upper()


def _invalid_settings(exc: BaseException, settings: Settings | None) -> Explanation | None:
    if not isinstance(exc, PydanticValidationError) or exc.title != Settings.__name__:
        return None
    problems, variables = [], []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else "?"
        variable = setting_variable(field)
        variables.append(variable)
        message = error["msg"].removeprefix("Value error, ")
        shown = "" if _is_secret(field) else f"={error.get('input')!r}"
        problems.append(f"{variable}{shown}: {message}")
    return Explanation(
        f"invalid setting {'; '.join(problems)}",
        f"Set {', '.join(dict.fromkeys(variables))} (environment or .env) to a valid value, "
        "or unset it for the default.",
    )


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is not None and "SecretStr" in str(info.annotation or SecretStr)


def _database_unreachable(exc: BaseException, settings: Settings | None) -> Explanation | None:
    import psycopg

    if not isinstance(exc, psycopg.OperationalError):
        return None
    detail = first_line(exc)
    if settings is not None and settings.database_url is None:
        return Explanation(
            f"the embedded PostgreSQL under {settings.home / 'postgres'} failed: {detail}",
            "Set RECSYS_DATABASE_URL to a running server (postgresql://user:password@host:port/db)"
            ", or check that folder (its log is postgres/log).",
        )
    return Explanation(
        f"cannot reach PostgreSQL: {detail}",
        "Start that server, or set RECSYS_DATABASE_URL to one that runs"
        " (postgresql://user:password@host:port/db); unset, an embedded server is used.",
    )


def _mlflow_unreachable(exc: BaseException, settings: Settings | None) -> Explanation | None:
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or "API request to" not in str(exc):
        return None
    uri = settings.mlflow_tracking_uri if settings is not None else None
    return Explanation(
        f"cannot reach the MLflow tracking server{f' {uri}' if uri else ''}: {first_line(exc)}",
        "Start it, or set MLFLOW_TRACKING_URI to one that runs"
        " (unset: a local SQLite store under RECSYS_HOME).",
    )


def _s3_unreachable(exc: BaseException, settings: Settings | None) -> Explanation | None:
    try:
        from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError
    except ImportError:  # pragma: no cover - s3fs brings botocore
        return None
    if not isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return None
    endpoint = settings.s3_endpoint_url if settings is not None else None
    return Explanation(
        f"cannot reach the S3 endpoint{f' {endpoint}' if endpoint else ''}: {first_line(exc)}",
        "Start it (MinIO: docker compose up -d minio), or set RECSYS_S3_ENDPOINT_URL to one that"
        " runs (and RECSYS_LAKE_URL to file://... for a local lake).",
    )


def _ingest_failed(exc: BaseException, settings: Settings | None) -> Explanation | None:
    from tasks.movielens.catalog import UnknownDatasetError
    from tasks.movielens.errors import IngestError

    if isinstance(exc, UnknownDatasetError):
        return Explanation(f"{first_line(exc)}", "Set RECSYS_DATASET to a known member.")
    if not isinstance(exc, IngestError):
        return None
    message = str(exc).strip()
    # the ingest's messages carry their own hint ("Set RECSYS_..."); keep it on its own line
    what, _, action = message.partition(". Set ")
    if action:
        return Explanation(what.strip(), f"Set {action.strip()}")
    return Explanation(
        first_line(exc),
        "Check RECSYS_MOVIELENS_SOURCE (a URL, a local zip or an extracted folder).",
    )


def _stack_unhealthy(exc: BaseException, settings: Settings | None) -> Explanation | None:
    from tasks.health import UnhealthyStackError

    if not isinstance(exc, UnhealthyStackError):
        return None
    return Explanation(first_line(exc), "The table above names each part's reason.")


def _prefect_unavailable(exc: BaseException, settings: Settings | None) -> Explanation | None:
    text = str(exc)
    if "ephemeral Prefect API server" in text:
        return Explanation(
            "Prefect's temporary API server did not start in time (a busy machine?)",
            "Start the project's server once (recsys server start; local runs then use it), or"
            " raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
            f"{f' (now {settings.prefect_startup_timeout_seconds})' if settings else ''}.",
        )
    if "Failed to reach API at" in text or "Cannot connect to API" in text:
        return Explanation(
            f"cannot reach the Prefect API: {first_line(exc)}",
            "Start that server, or set PREFECT_API_URL to one that runs (unset: the project's"
            " own server when `recsys server start` runs it, else a temporary one).",
        )
    return None


ENDPOINTS = (
    ("MLFLOW_TRACKING_URI", "mlflow_tracking_uri"),
    ("RECSYS_S3_ENDPOINT_URL", "s3_endpoint_url"),
    ("PREFECT_API_URL", "prefect_api_url"),
    ("THINGSBOARD_URL", "thingsboard_url"),
)
CONNECTION_WORDS = re.compile(
    r"refused|Max retries|timed out|Failed to establish|Could not connect|unreachable", re.I
)


def _endpoint_in_message(exc: BaseException, settings: Settings | None) -> Explanation | None:
    """A connection failure whose message names a configured endpoint's host and port."""
    if settings is None:
        return None
    for cause in exception_chain(exc):
        text = str(cause)
        if not CONNECTION_WORDS.search(text):
            continue
        for variable, field in ENDPOINTS:
            value = getattr(settings, field)
            parsed = urlparse(value) if value else None
            if parsed and parsed.hostname and _names_endpoint(text, parsed.hostname, parsed.port):
                return Explanation(
                    f"cannot reach {value}: {first_line(cause)}",
                    f"Start that service, or set {variable} to one that runs.",
                )
    return None


def _names_endpoint(text: str, host: str, port: int | None) -> bool:
    if host not in text:
        return False
    return port is None or str(port) in text
