"""``POST /ingest`` and ``POST /etl/run`` against the real uvicorn server: 503 saying how to start
Prefect when no server is configured or it is down, auth, body validation, and on a real
``prefect server start`` a flow run the server knows."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.api.conftest import API_TOKEN, Api, Project, start_api
from tests.conftest import free_port
from tests.test_deployments import PREFECT, PrefectServer, stop_group, wait_for_health

ENDPOINTS = ["/ingest", "/etl/run"]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free loopback port with a temporary home."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    server = PrefectServer(api_url=f"http://127.0.0.1:{port}/api", home=home)
    env = server.env()
    env.pop("PREFECT_API_URL")
    with (home / "server.log").open("w") as log:
        process = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_health(server, process, home / "server.log")
            yield server
        finally:
            stop_group(process)


@pytest.fixture(scope="module")
def ingest_deployment(prefect_server: PrefectServer) -> dict[str, Any]:
    """Only ``ingest/on-demand`` (as prefect.yaml declares it); ``transform`` is not deployed."""
    flow = prefect_server.api("POST", "/flows/", {"name": "ingest"})
    deployment: dict[str, Any] = prefect_server.api(
        "POST",
        "/deployments/",
        {
            "name": "on-demand",
            "flow_id": flow["id"],
            "entrypoint": "flows/ingest.py:ingest",
            "parameters": {"source": None, "md5": None},
        },
    )
    return deployment


@pytest.fixture(scope="module")
def prefect_api(
    project: Project, prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    log = tmp_path_factory.mktemp("api-prefect-log") / "api.log"
    server = start_api(project, log, PREFECT_API_URL=prefect_server.api_url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def unreachable_api(project: Project, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    log = tmp_path_factory.mktemp("api-unreachable-log") / "api.log"
    server = start_api(project, log, PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    try:
        yield server
    finally:
        server.stop()


# --- no server ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ENDPOINTS)
def test_without_a_prefect_server_503_says_how_to_start_one(
    api: Api, project: Project, path: str
) -> None:
    assert "PREFECT_API_URL" not in project.env, "the api fixture must run without a server"

    with api.client(API_TOKEN) as client:
        response = client.post(path)

    body = response.json()
    assert response.status_code == 503
    assert body["fields"] == [{"field": "prefect", "problem": "unavailable"}]
    for step in ("prefect server start", "prefect deploy --all", "RECSYS_WORK_POOL",
                 "prefect worker start"):  # fmt: skip
        assert step in body["error"]


@pytest.mark.parametrize("path", ENDPOINTS)
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_starting_a_run_needs_the_token(api: Api, path: str, token: str | None) -> None:
    with api.client(token) as client:
        response = client.post(path)

    assert response.status_code == 401
    assert response.json()["fields"][0]["field"] == "header.authorization"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"md5": "not-an-md5"}, "md5"), ({"source": ""}, "source"), ({"sauce": "x"}, "sauce")],
)
def test_ingest_parameters_are_validated(api: Api, body: dict[str, Any], field: str) -> None:
    with api.client(API_TOKEN) as client:
        response = client.post("/ingest", json=body)

    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == [field]


def test_an_unreachable_prefect_server_is_503(unreachable_api: Api) -> None:
    with unreachable_api.client(API_TOKEN) as client:
        response = client.post("/ingest")

    assert response.status_code == 503
    assert "does not answer" in response.json()["error"]
    assert "prefect server start" in response.json()["error"]


# --- a real Prefect server ----------------------------------------------------------------
@pytest.mark.slow
def test_ingest_starts_a_flow_run_the_server_knows(
    prefect_api: Api, prefect_server: PrefectServer, ingest_deployment: dict[str, Any]
) -> None:
    source = f"/data/ml-100k-{uuid.uuid4().hex[:6]}.zip"

    with prefect_api.client(API_TOKEN) as client:
        response = client.post("/ingest", json={"source": source})

    started = response.json()
    run = prefect_server.api("GET", f"/flow_runs/{started['flow_run_id']}")
    base = prefect_server.api_url.removesuffix("/api")
    assert response.status_code == 202
    assert started == {
        "flow_run_id": run["id"],
        "url": f"{base}/runs/flow-run/{run['id']}",
        "deployment": "ingest/on-demand",
        "state": "SCHEDULED",
    }
    assert run["deployment_id"] == ingest_deployment["id"]
    assert run["parameters"] == {"source": source, "md5": None}


@pytest.mark.slow
def test_a_flow_not_deployed_is_503_saying_how_to_deploy(
    prefect_api: Api, ingest_deployment: dict[str, Any]
) -> None:
    with prefect_api.client(API_TOKEN) as client:
        response = client.post("/etl/run")

    assert response.status_code == 503
    assert "no deployment 'transform/on-demand'" in response.json()["error"]
    assert "prefect deploy --all" in response.json()["error"]
    assert response.json()["fields"] == [{"field": "deployment", "problem": "not deployed"}]


@pytest.mark.slow
def test_etl_run_starts_the_transform_deployment(
    prefect_api: Api, prefect_server: PrefectServer, ingest_deployment: dict[str, Any]
) -> None:
    flow = prefect_server.api("POST", "/flows/", {"name": "transform"})
    deployment = prefect_server.api(
        "POST",
        "/deployments/",
        {"name": "on-demand", "flow_id": flow["id"], "entrypoint": "flows/transform.py:transform"},
    )

    try:
        with prefect_api.client(API_TOKEN) as client:
            response = client.post("/etl/run")
        run = prefect_server.api("GET", f"/flow_runs/{response.json()['flow_run_id']}")
    finally:  # the test above needs transform undeployed (its scheduled runs go with it)
        requests.delete(f"{prefect_server.api_url}/deployments/{deployment['id']}", timeout=30)

    assert response.status_code == 202
    assert response.json()["deployment"] == "transform/on-demand"
    assert run["flow_id"] == flow["id"]
    assert run["deployment_id"] == deployment["id"]
    assert run["state"]["type"] == "SCHEDULED"
