"""The backend registered in a real Label Studio: tasks with uploaded images, "Retrieve
predictions" through the API, and what Label Studio really stored, against the synthetic truth."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from prelabel_backend import synthetic
from prelabel_local.backend import BackendProcess
from tests.conftest import SEED_CONFIG, scenes, wait_for

pytestmark = pytest.mark.labelstudio
AUTH = ("ls", "train-pass")  # the basic auth of the backend that is trained from Label Studio


def upload_tasks(label_studio, project_id: int, batch: list[synthetic.Scene]) -> dict[int, synthetic.Scene]:  # noqa: ANN001
    """Uploads one PNG per scene; returns task id -> scene."""
    names = {f"scene-{i:03d}.png": scene for i, scene in enumerate(batch)}
    task_ids = label_studio.upload_images(project_id, {name: synthetic.encode_png(s.image) for name, s in names.items()})
    assert sorted(task_ids) == sorted(names)
    return {task_ids[name]: scene for name, scene in names.items()}


def prelabel(ls_client, project_id: int, backend_url: str, task_ids: list[int]) -> dict[int, list]:  # noqa: ANN001
    ml = ls_client.ml.create(project=project_id, url=backend_url, title="prelabel", is_interactive=False)
    assert ml.state == "CO", ml  # connected: Label Studio called /health and /setup
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": False, "included": task_ids})
    stored: dict[int, list] = {}
    for task_id in task_ids:
        stored[task_id] = list(ls_client.predictions.list(task=task_id))
    return stored


def test_seed_config_rectangles_are_stored_in_label_studio(label_studio, ls_client, start_backend) -> None:  # noqa: ANN001
    backend = start_backend({"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token})
    project = ls_client.projects.create(title="seed rectangles", label_config=SEED_CONFIG)
    truth = upload_tasks(label_studio, project.id, scenes(301, 6))
    stored = prelabel(ls_client, project.id, backend.url, list(truth))
    version = requests.post(f"{backend.url}/setup", json={"project": f"{project.id}.0", "schema": SEED_CONFIG}, timeout=30).json()["model_version"]
    titles = {"square": "Square", "circle": "Circle", "triangle": "Triangle"}
    for task_id, scene in truth.items():
        (prediction,) = stored[task_id]
        assert prediction.model_version == version
        assert 0.25 <= prediction.score <= 1
        regions = prediction.result
        assert len(regions) == len(scene.shapes)
        for shape in scene.shapes:
            x1, y1, x2, y2 = shape.box()
            near = [r for r in regions if r["value"]["rectanglelabels"] == [titles[shape.cls]]
                    and abs(r["value"]["x"] - x1 / scene.width * 100) < 5 and abs(r["value"]["y"] - y1 / scene.height * 100) < 5
                    and abs(r["value"]["width"] - (x2 - x1) / scene.width * 100) < 6 and abs(r["value"]["height"] - (y2 - y1) / scene.height * 100) < 6]
            assert near, (shape, regions)


def test_polygons_choices_and_keypoints_are_stored(label_studio, ls_client, start_backend) -> None:  # noqa: ANN001
    backend = start_backend({"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token})
    configs = {
        "polygon": """<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image">
            <Label value="Square" predicted_values="square"/><Label value="Circle" predicted_values="circle"/>
            <Label value="Triangle" predicted_values="triangle"/></PolygonLabels></View>""",
        "choices": """<View><Image name="image" value="$image"/><Choices name="shape" toName="image">
            <Choice value="square"/><Choice value="circle"/><Choice value="triangle"/></Choices></View>""",
        "keypoints": """<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image">
            <Label value="apex" predicted_values="triangle" model_index="0"/></KeyPointLabels></View>""",
    }
    batches = {
        "polygon": scenes(302, 4),
        "choices": scenes(303, 4, width=128, height=128, count=(1, 1), size=(32.0, 80.0)),
        "keypoints": scenes(304, 4, classes=("triangle",)),
    }
    for kind, xml in configs.items():
        project = ls_client.projects.create(title=f"{kind} project", label_config=xml)
        truth = upload_tasks(label_studio, project.id, batches[kind])
        stored = prelabel(ls_client, project.id, backend.url, list(truth))
        for task_id, scene in truth.items():
            (prediction,) = stored[task_id]
            regions = prediction.result
            if kind == "polygon":
                assert sorted(r["value"]["polygonlabels"][0].lower() for r in regions) == sorted(s.cls for s in scene.shapes)
                assert all(len(r["value"]["points"]) >= 3 for r in regions)
            elif kind == "choices":
                assert [r["value"]["choices"] for r in regions] == [[scene.shapes[0].cls]]
            else:
                apexes = [r for r in regions if r["value"]["keypointlabels"] == ["apex"]]
                for shape in scene.shapes:
                    ax, ay = shape.keypoints()[0]
                    assert any(math.dist((r["value"]["x"] * scene.width / 100, r["value"]["y"] * scene.height / 100), (ax, ay)) < 0.2 * shape.size
                               for r in apexes), (shape, regions)


def test_personal_access_token_fetches_uploads(label_studio, ls_client, start_backend, personal_access_token: str) -> None:  # noqa: ANN001
    """A PAT (a JWT refresh token) works as LABEL_STUDIO_API_KEY: the backend exchanges it for an access token."""
    backend = start_backend({"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": personal_access_token})
    project = ls_client.projects.create(title="pat project", label_config=SEED_CONFIG)
    truth = upload_tasks(label_studio, project.id, scenes(305, 2))
    stored = prelabel(ls_client, project.id, backend.url, list(truth))
    assert all(len(stored[t][0].result) == len(s.shapes) for t, s in truth.items())


def test_label_studio_connects_before_the_config_is_set_and_predicts_once_it_is(label_studio, ls_client, start_backend) -> None:  # noqa: ANN001
    """Case 7: a new project (<View></View>) or a text-only one connects, as with HumanSignal's
    example; /setup's answer says why nothing is predicted (the operator's ConfigCompatible reads it);
    once the config is set, "Retrieve predictions" works without registering again."""
    from prelabel_operator.configcheck import interpret

    backend = start_backend({"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token})
    text = '<View><Text name="text" value="$text"/><Labels name="ner" toName="text"><Label value="PER"/></Labels></View>'
    for title, xml in (("new project", None), ("text project", text)):
        project = ls_client.projects.create(title=title, **({"label_config": xml} if xml else {}))
        ml = ls_client.ml.create(project=project.id, url=backend.url, title="prelabel")
        assert ml.state == "CO", ml
        schema = ls_client.projects.get(project.id).label_config
        answer = requests.post(f"{backend.url}/setup", json={"project": f"{project.id}.0", "schema": schema}, timeout=30)
        check = interpret(answer.status_code, answer.json())
        assert check.compatible is False and check.registrable and "no control in the labeling config can be served" in check.message
    ls_client.projects.update(project.id, label_config=SEED_CONFIG)
    truth = upload_tasks(label_studio, project.id, scenes(306, 2))
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": False, "included": list(truth)})
    for task_id, scene in truth.items():
        (prediction,) = ls_client.predictions.list(task=task_id)
        assert len(prediction.result) == len(scene.shapes)


@pytest.fixture(scope="module")
def public_label_studio(tmp_path_factory):  # noqa: ANN001, ANN201
    """A Label Studio whose LABEL_STUDIO_HOST is a public name this machine cannot reach, serving
    local files: it writes `https://labelstudio.example.com/data/local-files/?d=<quoted path>`."""
    from prelabel_local.label_studio_server import LabelStudio

    root = tmp_path_factory.mktemp("local-files")
    server = LabelStudio(extra_env={"LABEL_STUDIO_HOST": "https://labelstudio.example.com",
                                    "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
                                    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root)}).start()
    yield server, root
    server.stop()


def test_label_studio_links_on_its_public_host_and_local_files(public_label_studio, start_backend) -> None:  # noqa: ANN001
    """Cases 2 and 3 against the real thing: Label Studio writes local-file links on its public host
    name, percent-encoded; the backend fetches them through LABEL_STUDIO_URL with the key (learning the
    public host from /setup's hostname), or reads them from disk with LOCAL_FILES_DOCUMENT_ROOT."""
    from label_studio_sdk import LabelStudio as Client

    server, root = public_label_studio
    client = Client(base_url=server.url, api_key=server.token)
    folder = root / "set 1"
    folder.mkdir()
    batch = scenes(307, 3)
    names = ["a b+c.png", "plain.png", "R&D #1.png"]
    for name, scene in zip(names, batch, strict=True):
        (folder / name).write_bytes(synthetic.encode_png(scene.image))
    backends = {
        "over HTTP": start_backend({"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.token}),
        "from disk": start_backend({"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.token,
                                    "LOCAL_FILES_DOCUMENT_ROOT": str(root)}),
    }
    for how, backend in backends.items():
        project = client.projects.create(title=f"local files {how}", label_config=SEED_CONFIG)
        storage = client.import_storage.local.create(project=project.id, path=str(folder), use_blob_urls=True, regex_filter=r".*\.png")
        client.import_storage.local.sync(id=storage.id)
        tasks = requests.get(f"{server.url}/api/tasks", params={"project": project.id}, headers={"Authorization": f"Token {server.token}"},
                             timeout=60).json()["tasks"]
        links = {t["id"]: next(iter(t["data"].values())) for t in tasks}
        assert len(links) == 3 and all(link.startswith("https://labelstudio.example.com/data/local-files/?d=set%201/") for link in links.values()), links
        stored = prelabel(client, project.id, backend.url, list(links))
        for task_id, link in links.items():
            scene = batch[names.index(next(n for n in names if link.endswith(quote(n))))]
            (prediction,) = stored[task_id]
            assert len(prediction.result) == len(scene.shapes), (how, link, prediction.result)


@pytest.fixture
def backend_with_auth(label_studio, tmp_path: Path) -> Iterator[BackendProcess]:  # noqa: ANN001
    """A backend with basic auth and two gunicorn workers (BackendProcess.wait_ready polls /health without auth)."""
    backend = BackendProcess({"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token, "WORKERS": "2",
                              "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1]}, tmp_path / "backend" / "backend.log")
    try:
        wait_for("the backend", lambda: _up(backend))
        yield backend
    finally:
        backend.stop()


def _up(backend: BackendProcess, workers: int = 2) -> bool:
    """/health is 200 and every gunicorn worker has loaded its default models: each worker loads its own
    and answers 503 until then, and Label Studio's connect check fails on a 503 from a worker still loading."""
    assert backend.proc.poll() is None, backend.log.read_text()[-2000:]
    try:
        answer = requests.get(f"{backend.url}/health", auth=AUTH, timeout=5)
    except requests.RequestException:
        return False
    log = backend.log.read_text()
    return answer.status_code == 200 and all(log.count(f"loaded model {name} ") >= workers for name in answer.json()["models"])


def test_start_training_in_label_studio_is_recorded_and_annotations_change_nothing(label_studio, ls_client, backend_with_auth) -> None:  # noqa: ANN001
    """The ML backend card's "Start Training" (the call the UI makes: POST /api/ml/<id>/train) reaches
    the backend, with its basic auth, as START_TRAINING on /webhook, and shows in /health (two gunicorn
    workers: one record); a human annotation's webhook event reaches it too and changes nothing."""
    auth, backend = AUTH, backend_with_auth
    project = ls_client.projects.create(title="start training", label_config=SEED_CONFIG)
    (task_id,) = upload_tasks(label_studio, project.id, scenes(308, 1))
    ml = ls_client.ml.create(project=project.id, url=backend.url, title="prelabel", auth_method="BASIC_AUTH",
                             basic_auth_user=auth[0], basic_auth_pass=auth[1])
    assert ml.state == "CO", ml

    def health() -> dict:
        return requests.get(f"{backend.url}/health", auth=auth, timeout=30).json()["training"]

    assert health() == {"requested_at": None, "requests": 0, "project": None}
    ls_client.ml.train(id=ml.id)
    recorded = health()
    assert recorded["requests"] == 1 and recorded["project"] == project.id and recorded["requested_at"], recorded
    assert '"POST /webhook HTTP/1.1" 201' in backend.log.read_text()  # not /train: Label Studio 1.23's flag is on

    region = {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
              "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["Square"]}}
    ls_client.annotations.create(id=task_id, result=[region])
    wait_for("the ANNOTATION_CREATED webhook", lambda: backend.log.read_text().count('"POST /webhook HTTP/1.1" 201') >= 2, timeout=60)
    assert health() == recorded
    ls_client.ml.train(id=ml.id)
    assert health()["requests"] == 2
