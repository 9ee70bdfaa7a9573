"""The model API and the champion's hot swap, against the real MLflow store and uvicorn."""

from __future__ import annotations

import pickle
import threading
import time
from pathlib import Path

import httpx

from tests.api.conftest import API_TOKEN, Api, Project, fit_model, known_user, register


def test_info_names_the_loaded_version_and_the_registry(api: Api) -> None:
    info = api.client().get("/model/info").json()

    assert info["alias"] == "champion"
    assert info["parameters"]["n_clusters"] == "2"
    assert info["metrics"]["rmse"] == 0.95
    assert info["dataset_version"] == "test"
    champion = next(v for v in info["versions"] if v["version"] == info["loaded_version"])
    assert "champion" in champion["aliases"]


def test_changing_endpoints_need_the_token(api: Api) -> None:
    missing = api.client().post("/model/reload")
    wrong = api.client(token="not-the-token").post("/model/reload")
    right = api.client(token=API_TOKEN).post("/model/reload")

    assert missing.status_code == 401 and wrong.status_code == 401
    assert API_TOKEN not in wrong.text
    assert right.status_code == 200


def test_export_copies_a_version_to_the_lake(api: Api, project: Project) -> None:
    answer = api.client(token=API_TOKEN).post("/model/export", json={"alias": "champion"})

    version = answer.json()["version"]
    folder = project.home / "lake" / "models" / "movielens-recommender" / f"v{version}"
    assert answer.status_code == 200
    assert (folder / "model.json").exists()
    assert (folder / "artifacts" / "model.pkl").exists()


def test_export_of_an_unknown_version_is_404(api: Api) -> None:
    answer = api.client(token=API_TOKEN).post("/model/export", json={"version": "999"})

    assert answer.status_code == 404
    assert answer.json()["fields"][0]["field"] == "version"


def test_upload_registers_a_challenger(api: Api, project: Project, tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(fit_model(project.ratings, n_clusters=3)))

    with open(path, "rb") as handle:
        answer = api.client(token=API_TOKEN).post(
            "/model/upload",
            files={"model": ("model.pkl", handle)},
            data={"description": "three clusters, by hand", "tags": '{"author": "tests"}'},
        )

    info = api.client().get("/model/info").json()
    uploaded = next(v for v in info["versions"] if v["version"] == answer.json()["version"])
    assert answer.status_code == 201
    assert uploaded["aliases"] == ["challenger"]
    assert uploaded["description"] == "three clusters, by hand"
    assert uploaded["tags"]["author"] == "tests"
    assert info["loaded_version"] != uploaded["version"]  # never straight to champion


def test_upload_that_does_not_load_is_refused(api: Api) -> None:
    answer = api.client(token=API_TOKEN).post(
        "/model/upload",
        files={"model": ("model.pkl", b"not a pickle")},
        data={"description": "broken"},
    )

    assert answer.status_code == 422
    assert answer.json()["fields"][0]["field"] == "model"


def test_a_new_champion_is_served_without_a_failed_request(api: Api, project: Project) -> None:
    user = known_user(project)
    failures: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            while not stop.is_set():
                answer = client.get(f"/recommendations/{user}")
                if answer.status_code != 200:
                    failures.append(answer.status_code)
                else:
                    versions.add(answer.json()["model_version"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    new = register(project, fit_model(project.ratings, n_clusters=4))
    deadline = time.monotonic() + 30
    while new not in versions and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join()

    assert new in versions
    assert failures == []
    assert api.client().get("/model/info").json()["loaded_version"] == new
