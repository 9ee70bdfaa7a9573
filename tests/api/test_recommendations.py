"""Recommendations, predictions and fold-in over HTTP, against ``python -m api`` on a real
uvicorn: contracts, unknown users and items, bounds, malformed bodies, and the rows recorded."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest

from tests.api.conftest import (
    Api,
    Project,
    known_user,
    rated_items,
    unknown_user,
    unrated_item,
)


def wait_for_answers(project: Project, ids: list[str], timeout: float = 10.0) -> list[tuple]:
    """The rows of ``serving.predictions`` of these request ids, once all are written."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(project.env["RECSYS_DATABASE_URL"]) as conn:
            rows = conn.execute(
                "SELECT request_id::text, endpoint, user_id, strategy, latency_ms"
                " FROM serving.predictions WHERE request_id = ANY(%s::uuid[])",
                (ids,),
            ).fetchall()
        if len(rows) >= len(ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_known_user_gets_unseen_items_with_titles(api: Api, project: Project) -> None:
    user = known_user(project)

    answer = api.client().get(f"/recommendations/{user}", params={"n": 5})

    loaded = api.client().get("/model/info").json()["loaded_version"]
    body = answer.json()
    assert answer.status_code == 200
    assert body["strategy"] == "personal"
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4, 5]
    assert not {item["item_id"] for item in body["items"]} & rated_items(project, user)
    assert all(item["title"] == project.titles[item["item_id"]] for item in body["items"])
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert body["model_version"] == loaded


def test_unknown_user_is_marked_cold_start(api: Api, project: Project) -> None:
    answer = api.client().get(f"/recommendations/{unknown_user(project)}", params={"n": 3})

    assert answer.status_code == 200
    assert answer.json()["strategy"].startswith("cold_start_")
    assert len(answer.json()["items"]) == 3


def test_n_out_of_bounds_is_a_json_error_naming_n(api: Api, project: Project) -> None:
    user = known_user(project)
    with api.client() as client:
        too_many = client.get(f"/recommendations/{user}", params={"n": 101})
        negative = client.get(f"/recommendations/{user}", params={"n": -3})
        text = client.get(f"/recommendations/{user}", params={"n": "ten"})

    for answer in (too_many, negative, text):
        assert answer.status_code == 422
        assert answer.json()["fields"][0]["field"] == "n"
        assert "Traceback" not in answer.text and "/" not in answer.json()["fields"][0]["field"]


def test_batch_answers_every_user_in_order(api: Api, project: Project) -> None:
    users = [*project.ratings.user_ids[:5].tolist(), unknown_user(project)]

    answer = api.client().post("/recommendations", json={"user_ids": users, "n": 4})

    results = answer.json()["results"]
    assert answer.status_code == 200
    assert [r["user_id"] for r in results] == users
    assert [r["strategy"] for r in results][:5] == ["personal"] * 5
    assert results[5]["strategy"].startswith("cold_start_")


def test_predict_marks_baseline_fallbacks(api: Api, project: Project) -> None:
    user = known_user(project)
    item = unrated_item(project, user)
    pairs = [
        {"user_id": user, "item_id": item},
        {"user_id": unknown_user(project), "item_id": item},
        {"user_id": user, "item_id": 10**6},
    ]

    answer = api.client().post("/predict", json={"pairs": pairs})

    predictions = answer.json()["predictions"]
    assert answer.status_code == 200
    assert [p["fallback"] for p in predictions] == [False, True, True]
    assert all(1.0 <= p["rating"] <= 5.0 for p in predictions)


def served_model(project: Project, version: str) -> Any:
    """The fitted model of a registered version, loaded from MLflow as the service loads it."""
    import mlflow

    from tasks.config import environment_unchanged, load_settings
    from tasks.train.tracking import REGISTERED_MODEL, configure_mlflow

    with environment_unchanged(*project.env):
        os.environ.update(project.env)
        configure_mlflow(load_settings())
        uri = f"models:/{REGISTERED_MODEL}/{version}"
        return mlflow.pyfunc.load_model(uri).unwrap_python_model().model


def test_predict_at_a_time_adds_the_models_session_offset(api: Api, project: Project) -> None:
    user = known_user(project)
    item = unrated_item(project, user)
    when = int(project.ratings.timestamps[project.ratings.raw_users() == user][0])
    pairs = [
        {"user_id": user, "item_id": item, "timestamp": when},  # amid the user's ratings
        {"user_id": user, "item_id": item},  # now: decades after them
        {"user_id": user, "item_id": item, "timestamp": 0},
    ]

    with api.client() as client:
        answer = client.post("/predict", json={"pairs": pairs})
        negative = client.post("/predict", json={"pairs": [{**pairs[0], "timestamp": -1}]})

    body = answer.json()
    model = served_model(project, body["model_version"])
    expected = model.predict([user] * 2, [item] * 2, times=[when, 0])
    ratings = [p["rating"] for p in body["predictions"]]
    assert answer.status_code == 200
    assert ratings == pytest.approx([expected[0], expected[1], expected[1]], abs=1e-9)
    assert ratings[0] != pytest.approx(ratings[1], abs=1e-6)  # the offset did something
    assert negative.status_code == 422
    assert negative.json()["fields"][0]["field"] == "pairs.0.timestamp"


def test_malformed_json_is_a_json_error(api: Api) -> None:
    answer = api.client().post(
        "/predict", content=b'{"pairs": [', headers={"Content-Type": "application/json"}
    )

    assert answer.status_code == 422
    assert "not valid JSON" in answer.json()["error"]


def test_oversized_body_is_refused(api: Api) -> None:
    answer = api.client().post(
        "/predict", content=b" " * 2_000_000, headers={"Content-Type": "application/json"}
    )

    assert answer.status_code == 413
    assert answer.json()["fields"] == [{"field": "body", "problem": "too large"}]


def test_unknown_endpoint_is_json(api: Api) -> None:
    answer = api.client().get("/no/such/thing")

    assert answer.status_code == 404
    assert answer.json()["error"].startswith("no such endpoint")


def test_given_ratings_change_a_new_users_list_at_once(api: Api, project: Project) -> None:
    user = unknown_user(project) + 1
    with api.client() as client:
        before = client.get(f"/recommendations/{user}", params={"n": 10}).json()
        liked = [item["item_id"] for item in before["items"][:3]]
        stored = client.post(f"/users/{user}/ratings", json={"ratings": {str(i): 5 for i in liked}})
        after = client.get(f"/recommendations/{user}", params={"n": 10}).json()

    assert stored.status_code == 201
    assert stored.json()["given"] == 3
    assert after["strategy"] == "fold_in"
    assert not set(liked) & {item["item_id"] for item in after["items"]}
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]


def test_ratings_may_come_as_a_list_of_objects(api: Api, project: Project) -> None:
    user = unknown_user(project) + 2
    item = unrated_item(project, known_user(project))
    with api.client() as client:
        stored = client.post(
            f"/users/{user}/ratings", json={"ratings": [{"item_id": item, "rating": 4}]}
        )
        twice = client.post(
            f"/users/{user}/ratings",
            json={"ratings": [{"item_id": item, "rating": 4}, {"item_id": item, "rating": 2}]},
        )
        after = client.get(f"/recommendations/{user}").json()

    assert stored.status_code == 201 and stored.json()["given"] == 1
    assert twice.status_code == 422
    assert twice.json()["fields"][0]["field"] == "ratings"
    assert f"item(s) {item} given more than once" in twice.json()["fields"][0]["problem"]
    assert after["strategy"] == "fold_in"
    assert item not in {entry["item_id"] for entry in after["items"]}


def test_ratings_of_unknown_items_or_off_scale_are_refused(api: Api, project: Project) -> None:
    user = known_user(project)
    item = unrated_item(project, user)
    with api.client() as client:
        unknown = client.post(f"/users/{user}/ratings", json={"ratings": {"999999": 4}})
        off_scale = client.post(f"/users/{user}/ratings", json={"ratings": {str(item): 7}})
        half = client.post(f"/users/{user}/ratings", json={"ratings": {str(item): 3.5}})

    assert unknown.status_code == 422
    assert unknown.json()["fields"][0]["field"] == "ratings.999999"
    assert off_scale.status_code == 422 and "scale" in off_scale.json()["fields"][0]["problem"]
    assert half.status_code == 422  # ml-100k has whole stars only


def test_every_answer_is_a_row(api: Api, project: Project) -> None:
    user = known_user(project)
    with api.client() as client:
        ids = [client.get(f"/recommendations/{user}").json()["request_id"] for _ in range(20)]
        pairs = {"pairs": [{"user_id": user, "item_id": unrated_item(project, user)}]}
        ids.append(client.post("/predict", json=pairs).json()["request_id"])

    rows = wait_for_answers(project, ids)
    assert len(rows) == 21
    assert {row[1] for row in rows} == {"recommendations", "predict"}
    assert all(row[2] == user and row[3] in {"personal"} and row[4] > 0 for row in rows)


def test_swagger_documents_every_endpoint(api: Api) -> None:
    spec = httpx.get(f"{api.url}/openapi.json").json()

    paths = set(spec["paths"])
    assert {"/recommendations/{user_id}", "/recommendations", "/predict",
            "/users/{user_id}/ratings", "/model/info", "/model/reload", "/model/export",
            "/model/upload", "/health"} <= paths  # fmt: skip
    assert httpx.get(f"{api.url}/docs").status_code == 200
