"""Label Studio's "Start Training" reaches the backend as /webhook START_TRAINING (Label Studio 1.23) or
/train (older, or with its flag off): whatever the payload's shape it answers 2xx and records a request
that /health reports for the operator; annotation events answer 2xx and change nothing. The record
is shared by gunicorn's worker processes (tests/integration/test_backend_in_label_studio.py: through
a real Label Studio)."""

from __future__ import annotations

import base64
import dataclasses
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from prelabel_backend import training_requests
from prelabel_backend.app import Backend, create_app
from prelabel_backend.settings import Settings

# What Label Studio 1.23 sends (label_studio/ml/api_connector.py, MLApi.train): the project as its
# webhooks serialize it (ProjectWebhookSerializer: every field, with counts), trimmed here.
START_TRAINING = {"action": "START_TRAINING", "project": {"id": 12, "title": "shapes", "label_config": "<View></View>",
                                                          "task_number": 40, "total_annotations_number": 31, "created_by": 1}}
# What it sent before 1.4.1 (and sends with the flag off) to /train.
OLD_TRAIN = {"annotations": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}, "annotations": [{"result": []}]}],
             "project": "12.1700000000", "label_config": "<View></View>", "params": {"login": None, "password": None}}


@pytest.fixture
def backend(settings: Settings, store: Any, tmp_path: Path) -> Backend:
    """The session's loaded models, with this test's own MODEL_DIR (the requests count from zero)."""
    backend = Backend(dataclasses.replace(settings, model_dir=tmp_path / "model-dir"), store)
    backend.load_defaults()
    return backend


def client_for(backend: Backend, **changes: Any) -> FlaskClient:
    return create_app(dataclasses.replace(backend.settings, **changes), backend, load="none").test_client()


def training(client: FlaskClient) -> dict[str, Any]:
    body = client.get("/health").get_json()
    assert body["status"] == "UP"
    result: dict[str, Any] = body["training"]
    return result


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_health_reports_no_training_request_at_first_even_while_loading(backend: Backend, settings: Settings, store: Any, tmp_path: Path) -> None:
    assert training(client_for(backend)) == {"requested_at": None, "requests": 0, "project": None}
    loading = create_app(dataclasses.replace(settings, model_dir=tmp_path / "other"), Backend(settings, store), load="none").test_client()
    response = loading.get("/health")
    assert response.status_code == 503 and response.get_json()["training"]["requests"] == 0


@pytest.mark.parametrize(("project", "recorded"), [
    (START_TRAINING["project"], 12),  # Label Studio 1.23's object
    (12, 12),
    ("12.1700000000", 12),  # the "<id>.<created>" of /setup and /predict
    ({}, None),
    (None, None),
    ("not a project", None),
    ([12], None),
    (True, None),
    (-3, None),
    (10**30, None),
])
def test_start_training_is_recorded_whatever_the_project_shape(backend: Backend, project: Any, recorded: int | None) -> None:
    client = client_for(backend)
    before = datetime.now(UTC)
    response = client.post("/webhook", json={**START_TRAINING, "project": project})
    assert response.status_code == 201
    body = response.get_json()
    assert body["status"] == "ok" and body["event"] == "START_TRAINING" and "job" not in body  # a job would be polled at /job_status
    state = training(client)
    assert state["requests"] == 1 and state["project"] == recorded and body["training"] == state
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(state["requested_at"]) <= datetime.now(UTC)


def test_start_training_without_a_project_key_is_recorded(backend: Backend) -> None:
    client = client_for(backend)
    assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 201
    assert training(client)["requests"] == 1


def test_train_is_recorded_with_any_body(backend: Backend) -> None:
    client = client_for(backend)
    assert client.post("/train", json=OLD_TRAIN).status_code == 201
    assert training(client)["project"] == 12
    for body in (b"", b"{not json", b"[1, 2]", b'{"project": {"id": "7"}}'):
        answer = client.post("/train", data=body, content_type="application/json")
        assert answer.status_code == 201 and answer.get_json()["event"] == "START_TRAINING"
    assert training(client)["requests"] == 5 and training(client)["project"] == 7  # {"id": "7"}: the last one


def test_annotation_and_unknown_events_change_nothing(backend: Backend) -> None:
    client = client_for(backend)
    client.post("/webhook", json=START_TRAINING)
    recorded = training(client)
    for event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"):
        answer = client.post("/webhook", json={"action": event, "project": {"id": 12}, "annotation": {"id": 3, "result": []}})
        assert answer.status_code == 201 and answer.get_json() == {"status": "ok", "event": event, "trained": False}
    for body in ({"action": "PROJECT_UPDATED", "project": 12}, {"action": "TASKS_CREATED"}):
        answer = client.post("/webhook", json=body)
        assert answer.status_code == 200 and answer.get_json() == {"status": "Unknown event"}
    assert client.post("/webhook", json={"project": {"id": 12}}).status_code == 400  # no action: not an event
    assert training(client) == recorded


def test_with_basic_auth_only_label_studio_credentials_request_training(backend: Backend) -> None:
    """Label Studio sends "Start Training" with the ML backend's basic auth; its auto-created webhook
    (annotation events) sends none, and stays open unless WEBHOOK_REQUIRE_AUTH."""
    client = client_for(backend, basic_auth_user="ls", basic_auth_pass="s3cret-pass")
    assert client.post("/webhook", json=START_TRAINING).status_code == 401
    assert client.post("/webhook", json=START_TRAINING, headers=basic("ls", "wrong")).status_code == 401
    assert client.post("/train", json=OLD_TRAIN).status_code == 401
    assert client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 12}}).status_code == 201
    assert client.get("/health", headers=basic("ls", "s3cret-pass")).get_json()["training"]["requests"] == 0
    assert client.post("/webhook", json=START_TRAINING, headers=basic("ls", "s3cret-pass")).status_code == 201
    assert client.post("/train", json=OLD_TRAIN, headers=basic("ls", "s3cret-pass")).status_code == 201
    assert client.get("/health", headers=basic("ls", "s3cret-pass")).get_json()["training"]["requests"] == 2


def test_an_unwritable_model_dir_is_a_503_with_the_reason(backend: Backend, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    client = client_for(backend, model_dir=tmp_path / "a-file" / "model-dir")
    answer = client.post("/webhook", json=START_TRAINING)
    assert answer.status_code == 503
    assert answer.get_json()["error"].startswith(f"could not record the training request under MODEL_DIR ({tmp_path / 'a-file' / 'model-dir'}): ")
    assert training(client)["requests"] == 0


def test_worker_processes_share_one_count(tmp_path: Path) -> None:
    """gunicorn's WORKERS are processes: 4 of them recording 25 requests each at once lose none."""
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.starmap(training_requests.record, [(tmp_path, i % 3) for i in range(100)], chunksize=5)
    state = training_requests.read(tmp_path)
    assert state.requests == 100 and state.project in (0, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".training-requests.lock", "training-requests.json"]  # no partial left
