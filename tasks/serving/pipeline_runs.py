"""Start a deployment of prefect.yaml on the configured Prefect server and say where to watch it.

A client of its own per call, pointed at ``settings.prefect_api_url``: Prefect's process-wide
settings are left alone, and without a server nothing is started (never the ephemeral API).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx

from tasks.config import Settings

logger = logging.getLogger(__name__)

INGEST_DEPLOYMENT = "ingest/on-demand"
TRANSFORM_DEPLOYMENT = "transform/on-demand"
REQUEST_SECONDS = 10.0

HOW_TO_START = (
    "start a server with `prefect server start`; then, with "
    "PREFECT_API_URL=http://127.0.0.1:4200/api and RECSYS_WORK_POOL=recsys-process exported: "
    '`prefect work-pool create "$RECSYS_WORK_POOL" --type process`, `prefect deploy --all`, '
    'and a worker: `RECSYS_PROJECT_DIR="$PWD" prefect worker start --pool "$RECSYS_WORK_POOL"`; '
    "start the API with PREFECT_API_URL set (docker compose up does all of this)"
)


class PrefectNotConfigured(RuntimeError):
    """No Prefect server is configured; the message says how to start one and deploy."""

    def __init__(self) -> None:
        super().__init__(f"no Prefect server is configured (PREFECT_API_URL): {HOW_TO_START}")


class PrefectUnreachable(RuntimeError):
    """The configured Prefect server does not answer."""


class DeploymentMissing(LookupError):
    """The server answers but has no such deployment."""

    def __init__(self, deployment: str, api_url: str) -> None:
        super().__init__(
            f"the Prefect server at {api_url} has no deployment {deployment!r}: run "
            "`prefect deploy --all` in the project folder with PREFECT_API_URL pointing at it "
            "and RECSYS_WORK_POOL exported"
        )
        self.deployment = deployment


class RunRefused(ValueError):
    """The server refused to create the run (for instance, parameters the flow does not take)."""


@dataclass(frozen=True)
class StartedRun:
    flow_run_id: str
    url: str
    deployment: str
    state: str


def start_deployment(
    settings: Settings, deployment: str, parameters: dict[str, Any] | None = None
) -> StartedRun:
    """Create a flow run of ``deployment`` (``flow/deployment``) on the configured server; it is
    scheduled now and runs when a worker of its pool picks it up. Returns without waiting."""
    from prefect.exceptions import ObjectNotFound

    if not settings.prefect_api_url:
        raise PrefectNotConfigured()
    api_url = settings.prefect_api_url.rstrip("/")
    try:
        with _client(api_url) as client:
            found = client.read_deployment_by_name(deployment)
            run = client.create_flow_run_from_deployment(found.id, parameters=parameters or {})
    except ObjectNotFound:
        raise DeploymentMissing(deployment, api_url) from None
    except httpx.HTTPStatusError as error:
        status = error.response.status_code
        if 400 <= status < 500:
            raise RunRefused(f"the Prefect server refused the run ({status}): "
                             f"{_detail(error.response)}") from None  # fmt: skip
        raise PrefectUnreachable(f"the Prefect server at {api_url} answered {status}") from None
    except httpx.HTTPError as error:
        raise PrefectUnreachable(
            f"the Prefect server at {api_url} does not answer ({type(error).__name__}); "
            f"is it running? {HOW_TO_START}"
        ) from None
    logger.info("started %s: flow run %s", deployment, run.id)
    state = run.state.type.value if run.state is not None else "SCHEDULED"
    return StartedRun(str(run.id), flow_run_url(api_url, run.id), deployment, state)


def flow_run_url(api_url: str, flow_run_id: UUID | str) -> str:
    """The flow run's page in the Prefect UI served next to the API (``.../api`` dropped)."""
    base = api_url.rstrip("/").removesuffix("/api")
    return f"{base}/runs/flow-run/{flow_run_id}"


def _client(api_url: str) -> Any:
    """A synchronous Prefect client for ``api_url`` only: it reads Prefect's credentials from
    the environment (auth string or API key), and changes no setting of the process."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY

    return SyncPrefectClient(
        api_url,
        auth_string=PREFECT_API_AUTH_STRING.value(),
        api_key=PREFECT_API_KEY.value(),
        httpx_settings={"timeout": httpx.Timeout(REQUEST_SECONDS)},
    )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return str(detail)[:500]
