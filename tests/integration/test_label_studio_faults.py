"""Label Studio as it really behaves (issue 29), with the pre-labeling driver against a real Label Studio
and a stand-in backend (a loopback server answering /setup and /predict with chosen results): predictions
Label Studio refuses on import (fault 5), foreign predictions (fault 10)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from prelabel_operator.prelabel import Progress
from prelabel_operator.prelabel_driver import Driver, Target
from prelabel_operator.spec import PrelabelSpec
from tests.conftest import SEED_CONFIG

pytestmark = pytest.mark.labelstudio

VERSION = "prelabel-0123456789ab"
CONFIG = SEED_CONFIG.replace("</View>", '  <BrushLabels name="brush" toName="image"><Label value="Square"/></BrushLabels>\n</View>')


def box(label: str, x: float = 10) -> dict[str, Any]:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": 96, "original_height": 96,
            "value": {"x": x, "y": 10, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": [label]}}


BRUSH = {"from_name": "brush", "to_name": "image", "type": "brushlabels", "original_width": 96, "original_height": 96,
         "value": {"format": "rle", "rle": [0, 1, 2, 3, 4], "brushlabels": ["Square"]}}  # an odd-length RLE


class Running:
    def __bool__(self) -> bool:
        return False


async def _no_report(progress: Progress) -> None:
    pass


@contextlib.contextmanager
def stand_in_backend(results: dict[int, list[dict[str, Any]]]) -> Iterator[str]:
    """A loopback backend: /setup answers VERSION for any config, /predict answers results[task id]."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/setup":
                answer: dict[str, Any] = {"model_version": VERSION, "compatible": True}
            else:
                answer = {"results": [{"result": results[t["id"]], "score": 0.5, "model_version": VERSION} for t in body["tasks"]]}
            data = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def project(label_studio, ls_client, request):  # noqa: ANN001, ANN201
    created = ls_client.projects.create(title=f"faults {request.node.name[:40]}", label_config=CONFIG)
    ls_client.projects.import_tasks(created.id, request=[{"image": f"/data/upload/{created.id}/{i}.png"} for i in range(6)])
    tasks = sorted(int(t.id) for t in ls_client.tasks.list(project=created.id))
    return created.id, tasks


def stored(ls_client, project_id: int) -> collections.Counter:  # noqa: ANN001
    return collections.Counter((p.task, p.model_version) for p in ls_client.predictions.list(project=project_id))


def run_pass(label_studio, project_id: int, results: dict[int, list[dict[str, Any]]], spec: PrelabelSpec) -> Driver:  # noqa: ANN001
    driver = Driver("ns", "faults", _no_report)
    with stand_in_backend(results) as url:
        asyncio.run(driver.run_pass(Target(label_studio.url, label_studio.token, url, None, (project_id,)), spec, Running()))
    return driver


@pytest.mark.parametrize("batch_size", [6, 1])
def test_a_prediction_label_studio_refuses_fails_its_task_with_the_reason_and_the_others_are_stored(
        label_studio, ls_client, project, batch_size: int) -> None:  # noqa: ANN001
    """Fault 5, on every supported version: Label Studio's import validator refuses a prediction (a label
    the config does not have), and drops it from the bulk with a smaller `created`. That task counts as
    failed with the reason, never as stored; the rest of the bulk is stored once: an empty result, a brush
    RLE, several regions, a rectangle. Before 1.23 the validator also refuses valid brush masks (an RLE of
    odd length or with a zero at an odd place; label-studio 8711e39): those tasks fail the same way, and
    their reason says to upgrade."""
    project_id, tasks = project
    brushes = {tasks[1], tasks[5]}
    refused = {tasks[2]} | (brushes if label_studio.release < (1, 23) else set())
    results = {tasks[0]: [], tasks[1]: [BRUSH], tasks[2]: [box("NoSuchLabel")], tasks[3]: [box("Square"), box("Circle", 50)],
               tasks[4]: [box("Triangle")], tasks[5]: [box("Square"), BRUSH]}
    driver = run_pass(label_studio, project_id, results, PrelabelSpec(batch_size=batch_size, max_attempts=1))
    assert stored(ls_client, project_id) == collections.Counter({(t, VERSION): 1 for t in tasks if t not in refused})
    assert (driver.progress.predicted, driver.progress.failed, driver.progress.total) == (6 - len(refused), len(refused), 6)
    reasons = {f["task"]: f["reason"] for f in driver.progress.failures}
    assert set(reasons) == refused and all(r.startswith("Label Studio refused the prediction") for r in reasons.values())
    assert {t for t, r in reasons.items() if "needs Label Studio 1.23 or later" in r} == refused & brushes


def test_foreign_predictions_are_left_alone_and_every_task_gets_one_of_prelabel_s(label_studio, ls_client, project) -> None:  # noqa: ANN001
    """Fault 10 (label-studio #9717): predictions of another model version, an empty model_version and
    the literal "undefined" stay as they are; every task still gets exactly one prediction of the
    backend's version, and a second pass adds none."""
    project_id, tasks = project
    foreign = {tasks[0]: "", tasks[1]: "undefined", tasks[2]: "someone-elses-model", tasks[3]: "prelabel-ffffffffffff"}
    ls_client.projects.import_predictions(project_id, request=[{"task": t, "result": [], "model_version": v} for t, v in foreign.items()])
    results = {t: [box("Square")] for t in tasks}
    driver = run_pass(label_studio, project_id, results, PrelabelSpec(batch_size=2))
    run_pass(label_studio, project_id, results, PrelabelSpec(batch_size=2))
    expected = collections.Counter({(t, VERSION): 1 for t in tasks}) + collections.Counter(dict.fromkeys(foreign.items(), 1))
    assert stored(ls_client, project_id) == expected
    assert (driver.progress.predicted, driver.progress.total, driver.progress.failed) == (6, 6, 0)
