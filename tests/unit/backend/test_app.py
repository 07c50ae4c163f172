"""The ML-backend protocol as Label Studio speaks it, through flask's test client, with real models."""

from __future__ import annotations

import base64
import logging

import pytest

from prelabel_backend.app import Backend, create_app
from prelabel_backend.settings import Settings
from tests.conftest import SEED_CONFIG, data_uri, scenes


@pytest.fixture(scope="module")
def backend(settings, store):  # noqa: ANN001, ANN201
    backend = Backend(settings, store)
    backend.load_defaults()
    return backend


@pytest.fixture
def client(backend):  # noqa: ANN001, ANN201
    return create_app(backend.settings, backend, load="none").test_client()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_health_reports_up_with_loaded_models(client) -> None:  # noqa: ANN001
    for path in ("/", "/health"):
        response = client.get(path)
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "UP" and body["model_class"] == "PrelabelYOLO"
        assert body["models"]["shapes-detect.pt"] == "detect"
        assert body["inference"] == "ultralytics" and body["runtimes"]["shapes-detect.pt"] in ("torch", "onnx", "openvino")


def test_health_is_503_with_a_reason_until_models_load(settings, store) -> None:  # noqa: ANN001
    client = create_app(settings, Backend(settings, store), load="none").test_client()
    response = client.get("/health")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "loading the default models"


def test_setup_returns_a_model_version_tied_to_weights_and_config(client) -> None:  # noqa: ANN001
    first = client.post("/setup", json={"project": "3.1700000000", "schema": SEED_CONFIG, "hostname": "http://localhost:8080", "access_token": "x"})
    assert first.status_code == 200
    version = first.get_json()["model_version"]
    assert version.startswith("prelabel-")
    again = client.post("/setup", json={"project": "4.1", "schema": SEED_CONFIG}).get_json()["model_version"]
    other = client.post("/setup", json={"project": "3.1", "schema": SEED_CONFIG.replace("0.25", "0.4")}).get_json()["model_version"]
    assert again == version and other != version


@pytest.mark.parametrize("xml", [
    "<View></View>",  # a new project's config
    "",
    '<View><Text name="t" value="$text"/><Labels name="ner" toName="t"><Label value="PER"/></Labels></View>',
])
def test_setup_lets_label_studio_connect_before_the_config_has_anything_to_serve(client, xml: str) -> None:  # noqa: ANN001
    """Case 7: 200 (Label Studio connects only on 200) with the reason; /predict still refuses."""
    response = client.post("/setup", json={"project": "1.1", "schema": xml})
    assert response.status_code == 200
    body = response.get_json()
    assert body["compatible"] is False and body["model_version"] == "prelabel-unconfigured"
    assert "no control in the labeling config can be served" in body["error"] and "RectangleLabels" in body["supported"]
    if "Labels" in xml:
        assert body["found"] == ["Labels"] and '<Labels name="ner">' in body["error"]
    refused = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "x"}}], "label_config": xml or "<View/>"})
    assert refused.status_code == 422 and "no control" in refused.get_json()["error"]
    assert "Traceback" not in refused.get_data(as_text=True)


def test_a_multi_image_value_list_is_named_as_the_reason(client) -> None:  # noqa: ANN001
    """Case 8."""
    xml = '<View><Image name="pages" valueList="$images"/><RectangleLabels name="label" toName="pages"><Label value="Square"/></RectangleLabels></View>'
    body = client.post("/setup", json={"project": "1.1", "schema": xml}).get_json()
    assert body["compatible"] is False and "multi-image valueList is not supported" in body["error"]
    assert not body["error"].startswith("no control in the labeling config can be served: found")
    refused = client.post("/predict", json={"tasks": [{"id": 1, "data": {"images": ["a.png"]}}], "label_config": xml})
    assert refused.status_code == 422 and "multi-image valueList" in refused.get_json()["error"]
    assert refused.get_json()["reasons"] == [('<RectangleLabels name="label"> on <Image name="pages" valueList="$images">: '
                                              'a multi-image valueList is not supported; use one image per task (value="$field")')]


def test_a_config_that_names_something_impossible_is_still_422(client) -> None:  # noqa: ANN001
    xml = '<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" model_path="missing.pt"/></View>'
    response = client.post("/setup", json={"project": "1.1", "schema": xml})
    assert response.status_code == 422 and "missing.pt" in response.get_json()["error"]


def test_setup_names_labels_no_model_class_maps_to_without_failing(client) -> None:  # noqa: ANN001
    """Case 10: the project's own detector knows square, circle and triangle only."""
    xml = SEED_CONFIG.replace('</RectangleLabels>', '<Label value="Star" predicted_values="star,pentagon"/><Label value="Hexagon"/></RectangleLabels>')
    response = client.post("/setup", json={"project": "2.1", "schema": xml})
    assert response.status_code == 200
    body = response.get_json()
    assert body["compatible"] is True and body["model_version"].startswith("prelabel-")
    (gap,) = body["unmapped_labels"]
    assert gap["control"] == '<RectangleLabels name="label">' and gap["unmapped"] == ["Star", "Hexagon"]
    assert gap["mapped"] == {"Square": ["square"], "Circle": ["circle"], "Triangle": ["triangle"]}
    assert gap["unknown_classes"] == ["pentagon", "star"]
    assert "labels no model class maps to: Star, Hexagon" in body["warnings"][0] and "Square<-square" in body["warnings"][0]
    assert "warnings" not in client.post("/setup", json={"project": "2.1", "schema": SEED_CONFIG}).get_json()


@pytest.mark.parametrize(
    ("route", "payload", "status", "message"),
    [
        ("/setup", b"{not json", 400, "JSON object"),
        ("/setup", b"[1, 2]", 400, "JSON object"),
        ("/setup", b'{"project": "1.1"}', 400, "no labeling config"),
        ("/predict", b'{"tasks": "nope", "label_config": "<View/>"}', 400, "'tasks' must be a list"),
        ("/predict", b'{"tasks": [], "project": "999.1"}', 400, "no labeling config"),
        ("/predict", b'{"tasks": [1], "label_config": "<View/>"}', 400, "'tasks' must be a list"),
        ("/webhook", b'{"project": {}}', 400, "'action'"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_reason(client, route: str, payload: bytes, status: int, message: str) -> None:  # noqa: ANN001
    response = client.post(route, data=payload, content_type="application/json")
    assert response.status_code == status
    assert message in response.get_json()["error"]


def test_predict_answers_one_result_per_task_in_order(client) -> None:  # noqa: ANN001
    batch = scenes(201, 5)
    tasks = [{"id": 10 + i, "data": {"image": data_uri(s.image)}} for i, s in enumerate(batch)]
    response = client.post("/predict", json={"tasks": tasks, "label_config": SEED_CONFIG, "project": "7.1", "params": {"context": None}})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 5
    version = client.post("/setup", json={"project": "7.1", "schema": SEED_CONFIG}).get_json()["model_version"]
    for scene, result in zip(batch, results, strict=True):
        assert result["model_version"] == version
        assert len(result["result"]) == len(scene.shapes)  # each task's own boxes, in the task's order
        assert result["score"] == pytest.approx(sum(r["score"] for r in result["result"]) / len(result["result"]), abs=1e-3)


def test_predict_uses_the_schema_from_setup_when_no_config_is_sent(client) -> None:  # noqa: ANN001
    client.post("/setup", json={"project": "8.1", "schema": SEED_CONFIG})
    task = {"id": 1, "data": {"image": data_uri(scenes(202, 1)[0].image)}}
    response = client.post("/predict", json={"tasks": [task], "project": "8.1"})
    assert response.status_code == 200 and response.get_json()["results"][0]["result"]


def test_a_bad_image_empties_its_task_only(client, caplog) -> None:  # noqa: ANN001
    good = scenes(203, 2)
    tasks = [
        {"id": 1, "data": {"image": data_uri(good[0].image)}},
        {"id": 2, "data": {"image": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}},
        {"id": 3, "data": {"other": "x"}},
        {"id": 4, "data": {"image": "http://169.254.169.254/latest/meta-data"}},
        {"id": 5, "data": {"image": data_uri(good[1].image)}},
    ]
    with caplog.at_level(logging.WARNING):
        results = client.post("/predict", json={"tasks": tasks, "label_config": SEED_CONFIG}).get_json()["results"]
    assert [bool(r["result"]) for r in results] == [True, False, False, False, True]
    # The reason travels in the answer, not only in the log (Label Studio ignores the extra key).
    assert ["errors" in r for r in results] == [False, True, True, True, False]
    assert "not an image OpenCV can decode" in results[1]["errors"][0] and "no field 'image'" in results[2]["errors"][0]
    assert "not an image OpenCV can decode" in caplog.text
    assert "no field 'image'" in caplog.text
    assert "is neither Label Studio's" in caplog.text and "nor in MEDIA_ALLOWED_HOSTS" in caplog.text


def test_undefined_key_is_used_when_the_config_has_one_object(client) -> None:  # noqa: ANN001
    """Case 5: Label Studio's storages write `$undefined$` when the task lacks the config's key."""
    scene = scenes(205, 1)[0]
    tasks = [{"id": 1, "data": {"$undefined$": data_uri(scene.image)}}, {"id": 2, "data": {"image": data_uri(scene.image)}}]
    first, second = client.post("/predict", json={"tasks": tasks, "label_config": SEED_CONFIG}).get_json()["results"]
    assert first["result"] and first["result"] == second["result"]


def test_taxonomy_on_an_image_gives_taxonomy_results(client) -> None:  # noqa: ANN001
    """Case 6: a flat <Taxonomy> answers in Label Studio's taxonomy format."""
    xml = ('<View><Image name="image" value="$image"/><Taxonomy name="taxonomy" toName="image">'
           '<Choice value="square"/><Choice value="circle"/><Choice value="triangle"/></Taxonomy></View>')
    assert client.post("/setup", json={"project": "9.1", "schema": xml}).get_json()["compatible"] is True
    batch = scenes(206, 6, width=128, height=128, count=(1, 1), size=(32.0, 80.0))
    tasks = [{"id": i, "data": {"image": data_uri(s.image)}} for i, s in enumerate(batch)]
    results = client.post("/predict", json={"tasks": tasks, "label_config": xml}).get_json()["results"]
    right = 0
    for scene, result in zip(batch, results, strict=True):
        (region,) = result["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("taxonomy", "image", "taxonomy")
        assert set(region["value"]) == {"taxonomy"} and len(region["value"]["taxonomy"]) == 1
        right += region["value"]["taxonomy"] == [[scene.shapes[0].cls]]
    assert right >= 5


def test_webhook_acknowledges_training_events(client) -> None:  # noqa: ANN001
    for event in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING"):
        assert client.post("/webhook", json={"action": event, "project": {"id": 1}}).status_code == 201
    unknown = client.post("/webhook", json={"action": "PROJECT_UPDATED"})
    assert unknown.status_code == 200 and unknown.get_json() == {"status": "Unknown event"}


def test_metrics_count_requests_and_images(client) -> None:  # noqa: ANN001
    client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": data_uri(scenes(204, 1)[0].image)}}], "label_config": SEED_CONFIG})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'prelabel_backend_requests_total{route="/predict",status="200"}' in text
    assert "prelabel_backend_images_predicted_total" in text
    assert 'prelabel_backend_batch_size_bucket{le="1.0",model="shapes-detect.pt"}' in text
    assert 'prelabel_backend_model_load_seconds{model="shapes-detect.pt"}' in text


def test_basic_auth_guards_every_route_but_the_webhook(backend, caplog) -> None:  # noqa: ANN001
    settings = Settings(basic_auth_user="ls", basic_auth_pass="s3cret-pass", model_dir=backend.settings.model_dir)
    client = create_app(settings, backend, load="none").test_client()
    with caplog.at_level(logging.DEBUG):
        for path in ("/health", "/metrics"):
            denied = client.get(path)
            assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Basic")
            assert client.get(path, headers=basic("ls", "wrong")).status_code == 401
            assert client.get(path, headers=basic("ls", "s3cret-pass")).status_code == 200
        assert client.post("/setup", json={"project": "1.1", "schema": SEED_CONFIG}).status_code == 401
        assert client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 201
        assert client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 401  # Label Studio sends the auth with it
        assert client.post("/webhook", json={"action": "START_TRAINING"}, headers=basic("ls", "s3cret-pass")).status_code == 201
    assert "s3cret-pass" not in caplog.text and "bHM6czNjcmV0" not in caplog.text

    strict = Settings(basic_auth_user="ls", basic_auth_pass="s3cret-pass", webhook_require_auth=True, model_dir=backend.settings.model_dir)
    strict_client = create_app(strict, backend, load="none").test_client()
    assert strict_client.post("/webhook", json={"action": "START_TRAINING"}).status_code == 401
    assert strict_client.post("/webhook", json={"action": "ANNOTATION_CREATED"}).status_code == 401
    assert strict_client.post("/webhook", json={"action": "START_TRAINING"}, headers=basic("ls", "s3cret-pass")).status_code == 201


def test_unknown_routes_and_methods_are_json_4xx(client) -> None:  # noqa: ANN001
    assert client.get("/nope").status_code == 404
    assert client.get("/predict").status_code == 405
    assert "error" in client.get("/nope").get_json()
