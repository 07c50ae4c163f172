"""The images, built from this checkout's Dockerfiles by podman (prelabel_local.images), run as the
chart and the operator run them: user 10001, a read-only root filesystem with only /tmp writable (the
pods' emptyDir), every capability dropped, no privilege escalation, and no network but loopback. Each
starts, answers its probe, logs no error line, and stops cleanly on SIGTERM.

The backend runs with no network at all (its own loopback: the image's HEALTHCHECK runs inside it).
The lean backend (no torch, no ultralytics: issue 28) also answers /predict for every control type.
The operator needs the local apiserver: it shares the host's network namespace and binds its
liveness endpoint to 127.0.0.1. The real node's scenario runs the same images as pods.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from prelabel_local import images
from prelabel_local.cluster import free_port
from tests.conftest import REPO, wait_for

# A line that reports a failure: a log level, a traceback, an OS error ([Errno 30] Read-only file system).
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL|Traceback|Errno \d+)\b|\berror:", re.IGNORECASE)
HARDENED = ("--read-only", "--tmpfs", "/tmp", "--user", "10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--no-healthcheck")  # podman's healthcheck timers need systemd; the test runs the check itself


@pytest.fixture(scope="session")
def built() -> Iterator[dict[str, str]]:
    """The images, built (or found unchanged in the layer cache: `make images` prebuilds them)."""
    images.ensure_tools()
    yield {which: images.build(which) for which in images.IMAGES}
    images.remove_empty_cgroups()


@contextlib.contextmanager
def container(ref: str, *options: str, command: tuple[str, ...] = ()) -> Iterator[str]:
    cid = images.podman("run", "--detach", *HARDENED, *options, ref, *command).stdout.strip()
    try:
        yield cid
    finally:
        images.podman("rm", "--force", "--time", "5", cid, check=False)


def stop(cid: str) -> tuple[int, str]:
    """SIGTERM, as a kubelet stops a pod: (exit code, the whole log)."""
    images.podman("stop", "--time", "30", cid, timeout=60)
    code = int(images.podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip())
    return code, images.podman("logs", cid).stdout + images.podman("logs", cid).stderr


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if ERROR_LINE.search(line)]


def test_the_backend_image_serves_read_only_as_user_10001_and_stops_cleanly(built: dict[str, str]) -> None:
    ref = built["backend"]
    inspected = json.loads(images.podman("image", "inspect", ref).stdout)[0]
    healthcheck = inspected["Healthcheck"]["Test"]
    assert healthcheck[0] == "CMD" and inspected["Config"]["User"] == "10001"  # --format docker keeps HEALTHCHECK
    with container(ref, "--network", "none") as cid:
        wait_for("the image's HEALTHCHECK (/health: models loaded)",
                 lambda: images.podman("exec", cid, *healthcheck[1:], check=False).returncode == 0, 180)
        whoami = images.podman("exec", cid, "python", "-c", "import os; print(os.getuid(), os.access('/app', os.W_OK))").stdout.split()
        assert whoami == ["10001", "False"]
        code, log = stop(cid)
    assert "loaded model shapes-detect.pt" in log
    assert not error_lines(log), error_lines(log)  # e.g. gunicorn's control socket under a $HOME that is not there
    assert code == 0, log[-2000:]


@pytest.mark.cluster
def test_the_operator_image_passes_its_liveness_probe_read_only_as_user_10001(built: dict[str, str], cluster, tmp_path: Path) -> None:  # noqa: ANN001
    cluster.kubectl("apply", "-f", str(REPO / "crds" / "mlbackend.yaml"))  # else it waits for its CRD before serving liveness
    cluster.kubectl("wait", "--for=condition=Established", "crd/mlbackends.prelabel.dev", "--timeout=30s")
    # A kubeconfig with its certificates inline, readable by user 10001, mounted read-only.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubectl("config", "view", "--raw", "--flatten", "--minify").stdout)
    kubeconfig.chmod(0o644)
    port = free_port()
    args = ("--network", "host", "--volume", f"{kubeconfig}:/etc/prelabel/kubeconfig:ro", "--env", "KUBECONFIG=/etc/prelabel/kubeconfig")
    with container(built["operator"], *args, command=(f"--liveness=http://127.0.0.1:{port}/healthz", "--metrics-port=0")) as cid:

        def live() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for("the operator's liveness endpoint", live, 120)
        code, log = stop(cid)
    assert not error_lines(log), error_lines(log)
    assert code == 0, log[-2000:]


def test_the_operator_image_carries_none_of_the_sdks_converter_packages(built: dict[str, str]) -> None:
    """What the lock leaves out is not in the image either, and neither are pip and setuptools."""
    found = images.podman("run", "--rm", "--network", "none", *HARDENED, "--entrypoint", "python", built["operator"], "-c",
                          "import importlib.util as u; print(' '.join(m for m in ('pandas', 'numpy', 'cv2', 'nltk', 'black', 'faker', "
                          "'lxml', 'PIL', 'pip', 'setuptools') if u.find_spec(m)))").stdout.split()
    assert found == []


# Run inside the lean container (no network): /setup and /predict for a project with every control type.
LEAN_PREDICT = """
import json, sys, urllib.request
request = json.loads(sys.stdin.read())
def post(path, body):
    call = urllib.request.Request("http://127.0.0.1:9090" + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=300) as answer:
        return json.loads(answer.read())
setup = post("/setup", {"project": "1.1", "schema": request["config"]})
print(json.dumps({"setup": setup["model_version"], "predict": post("/predict", {"tasks": request["tasks"], "label_config": request["config"],
                                                                               "project": "1.1"})}))
"""


def test_the_lean_backend_image_serves_every_control_type_read_only_without_torch(built: dict[str, str], settings) -> None:  # noqa: ANN001
    from prelabel_backend.label_config import parse
    from prelabel_backend.media import MediaFetcher
    from prelabel_backend.metrics import Metrics
    from prelabel_backend.model_store import ModelStore
    from prelabel_backend.predictor import Predictor
    from tests.conftest import data_uri, scenes
    from tests.unit.backend.test_lean_serving import every_control

    ref = built["backend-lean"]
    size = images.size_mb(ref)
    assert size <= 600, f"the lean image is {size} MB"  # issue 28: a tenth of the full image
    absent = images.podman("run", "--rm", "--network", "none", *HARDENED, "--entrypoint", "python", ref, "-c",
                           "import importlib.util as u; print(' '.join(m for m in ('torch', 'torchvision', 'ultralytics', 'onnx', 'pandas', "
                           "'pip') if u.find_spec(m)))").stdout.split()
    assert absent == []
    healthcheck = json.loads(images.podman("image", "inspect", ref).stdout)[0]["Healthcheck"]["Test"]
    xml = every_control(settings)
    tasks = [{"id": i + 1, "data": {"image": data_uri(s.image)}} for i, s in enumerate(scenes(2900, 3, width=320, height=240))]
    with container(ref, "--network", "none") as cid:
        wait_for("the lean image's HEALTHCHECK (/health: models loaded)",
                 lambda: images.podman("exec", cid, *healthcheck[1:], check=False).returncode == 0, 120)
        done = images.podman("exec", "--interactive", cid, "python", "-c", LEAN_PREDICT, input_text=json.dumps({"config": xml, "tasks": tasks}),
                             timeout=300)
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        code, log = stop(cid)
    store = ModelStore(settings)
    expected = Predictor(settings, store, MediaFetcher(settings), Metrics()).model_version(parse(xml, settings))
    predictions = answer["predict"]["results"]
    assert answer["setup"] == expected and [p["model_version"] for p in predictions] == [expected] * len(tasks)
    kinds = {r["type"] for p in predictions for r in p["result"]}
    assert kinds >= {"rectanglelabels", "polygonlabels", "brushlabels", "keypointlabels", "choices"}, kinds
    assert re.search(r"loaded model shapes-detect\.pt \(task detect, .*\) on (onnx|openvino)", log), log[-2000:]
    assert not error_lines(log), error_lines(log)
    assert code == 0, log[-2000:]
