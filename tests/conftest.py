"""Shared fixtures: the project's own models, synthetic scenes, and real servers on loopback."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from prelabel_backend import synthetic
from prelabel_backend.settings import Settings

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" model_score_threshold="0.25">
    <Label value="Square" background="red" predicted_values="square"/>
    <Label value="Circle" background="blue" predicted_values="circle"/>
    <Label value="Triangle" background="green" predicted_values="triangle"/>
  </RectangleLabels>
</View>"""


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(synthetic.encode_png(image)).decode()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model_dir=tmp_path_factory.mktemp("model-dir"))


@pytest.fixture(scope="session")
def store(settings: Settings):  # noqa: ANN201
    from prelabel_backend.models import ModelStore

    return ModelStore(settings)


def scenes(seed: int, count: int, **kwargs) -> list[synthetic.Scene]:  # noqa: ANN003
    """Fresh scenes: the training data used seed 0, tests use other seeds."""
    rng = np.random.default_rng(seed)
    return [synthetic.make_scene(rng, **kwargs) for _ in range(count)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackendProcess:
    """`python -m prelabel_backend` as a real gunicorn process on 127.0.0.1."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        full_env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port), "MODEL_DIR": str(log.parent / "model-dir"), **env}
        self.proc = subprocess.Popen([sys.executable, "-m", "prelabel_backend"], env=full_env, stdout=log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # refused while binding, slow while models load
                pass
            time.sleep(0.3)
        raise RuntimeError(f"backend not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator:
    started: list[BackendProcess] = []

    def start(env: dict[str, str] | None = None, wait: bool = True) -> BackendProcess:
        backend = BackendProcess(env or {}, tmp_path / f"backend-{len(started)}.log")
        started.append(backend)
        if wait:
            backend.wait_ready()
        return backend

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture(scope="session")
def label_studio() -> Iterator:
    """One real Label Studio for the session (first start ~70 s: migrations on a fresh SQLite)."""
    from prelabel_operator.dev.labelstudio import LabelStudio

    server = LabelStudio().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio):  # noqa: ANN001, ANN201
    from label_studio_sdk import LabelStudio as Client

    return Client(base_url=label_studio.url, api_key=label_studio.token)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    report = yield
    if report.failed:
        item.session.prelabel_failed = True  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def cluster_bin() -> Path:
    from prelabel_operator.dev.cluster import build

    return build(quiet=True)


@pytest.fixture(scope="module")
def cluster(cluster_bin: Path, request: pytest.FixtureRequest) -> Iterator:
    """A real control plane with controller-manager, scheduler and kwok nodes, for one test module."""
    from prelabel_operator.dev.cluster import LocalCluster

    local = LocalCluster(cluster_bin, with_controllers=True).start()
    yield local
    failed = getattr(request.session, "prelabel_failed", False)
    local.stop(keep_logs=failed)
    if failed:
        print(f"\ncontrol-plane logs kept in {local.workdir / 'logs'}")
