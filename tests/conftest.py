"""Shared fixtures: the project's own models, synthetic scenes, and real servers on loopback."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prelabel_backend import synthetic
from prelabel_backend.settings import Settings
from prelabel_local.backend import BackendProcess
from prelabel_local.demo import SEED_LABEL_CONFIG

REPO = Path(__file__).resolve().parents[1]
SEED_CONFIG = SEED_LABEL_CONFIG  # the seed's labeling config, as the demo uses it


@contextlib.contextmanager
def serve_files(files: dict[str, bytes], token: str | None = None, content_type: str | None = None) -> Iterator[str]:
    """A loopback HTTP server answering GET <path> with files[path] (404 otherwise); yields its base URL.
    With `token`, it answers 401 without `Authorization: Token <token>`, as Label Studio's /data/upload/ does."""

    class Files(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

        def do_GET(self) -> None:
            if token is not None and self.headers.get("Authorization") != f"Token {token}":
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def stop_real_node(request: pytest.FixtureRequest, worker, cluster, *servers) -> None:  # noqa: ANN001, ANN002
    """A real-node fixture's teardown: its servers (None: not started), then the node and its control
    plane, logs kept (and said where) when a test of the session failed."""
    failed = getattr(request.session, "prelabel_failed", False)
    for server in servers:
        if server is not None:
            server.stop(keep=failed)
    worker.stop(keep_logs=failed)
    cluster.stop(keep_logs=failed)
    if failed:
        print(f"\nlogs kept in {worker.log_dir} and {cluster.workdir / 'logs'}")


def wait_for(what: str, check, timeout: float = 120, why=None):  # noqa: ANN001, ANN201
    """Polls check() each second until it returns something truthy, which it returns; on timeout,
    the AssertionError adds what why() says (logs, say), if given."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last: {last}" + (f"; {why()}" if why else ""))


def grants(role: dict) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) a Role or ClusterRole grants."""
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


# The rules only the training loop uses: test_training asserts them, test_operator's scenario never trains.
TRAINING_RULES = {("batch", "jobs", v) for v in ("create", "get", "patch")} | {("", "configmaps", v) for v in ("create", "patch", "delete")}


def assert_least_privilege(cluster: Any, role: str, *, skip: frozenset | set = frozenset(), only: frozenset | set | None = None) -> None:
    """Every request the operator's service account made was allowed, and every permission the
    ClusterRole `role` grants was used: a rule removed from the chart shows up as a 403 here (or fails
    the scenario), an unused one as surplus. `skip` leaves out rules another test exercises; `only`
    checks just those. A server-side apply that created an object (HTTP 201) needed `create` besides `patch`."""
    from prelabel_local import chart

    used: set[tuple[str, str, str]] = set()
    denied = []
    for event in cluster.audit_events(chart.SERVICE_ACCOUNT_USER):
        ref, code = event.get("objectRef"), event["responseStatus"]["code"]
        if not ref:
            continue  # discovery (/api, /apis/...): open to every authenticated user
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        if code == 403:
            denied.append(f"{event['verb']} {resource} ({ref.get('apiGroup', '')}) in {ref.get('namespace')}")
        used.add((ref.get("apiGroup", ""), resource, event["verb"]))
        if event["verb"] == "patch" and code == 201:
            used.add((ref.get("apiGroup", ""), resource, "create"))
    assert not denied, f"the operator was denied (a rule missing from charts/prelabel-operator): {denied}"
    granted = grants(json.loads(cluster.kubectl("get", "clusterrole", role, "-o", "json").stdout))
    if only is not None:
        granted, used = granted & set(only), used & set(only)
    granted, used = granted - set(skip), used - set(skip)
    assert granted == used, f"granted but unused: {granted - used}; used but not granted: {used - granted}"


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(synthetic.encode_png(image)).decode()


@pytest.fixture(scope="session", autouse=True)
def packaged_runtimes() -> None:
    """The packaged models' ONNX and OpenVINO exports, as the image makes them at build time (once
    per checkout, about 40 s; then found): without them each backend would export at its first start."""
    from prelabel_backend import runtimes

    runtimes.export_all(runtimes.PACKAGED_WEIGHTS_DIR, runtimes.PACKAGED_RUNTIMES)


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model_dir=tmp_path_factory.mktemp("model-dir"))


@pytest.fixture(scope="session")
def store(settings: Settings):  # noqa: ANN201
    from prelabel_backend.model_store import ModelStore

    return ModelStore(settings)


def annotations_fingerprint(ls_client, project_id: int) -> tuple[int, str]:  # noqa: ANN001
    """A sha256 of every annotation of the project as Label Studio stores it: ids, tasks, results,
    authors, flags and both timestamps (an edit of any of them changes it)."""
    fields = ("id", "task", "result", "completed_by", "was_cancelled", "ground_truth", "lead_time", "created_at", "updated_at")
    rows = [{f: getattr(a, f, None) for f in fields}
            for task in ls_client.tasks.list(project=project_id, fields="all") for a in ls_client.annotations.list(task.id)]
    return len(rows), hashlib.sha256(json.dumps(sorted(rows, key=lambda r: r["id"]), default=str, sort_keys=True).encode()).hexdigest()


def scenes(seed: int, n: int, **kwargs) -> list[synthetic.Scene]:  # noqa: ANN003
    """n fresh scenes: the training data used seed 0, tests use other seeds."""
    rng = np.random.default_rng(seed)
    return [synthetic.make_scene(rng, **kwargs) for _ in range(n)]


@pytest.fixture
def start_backend(tmp_path: Path) -> Iterator:
    started: list[BackendProcess] = []

    def start(env: dict[str, str] | None = None) -> BackendProcess:
        backend = BackendProcess(env or {}, tmp_path / f"backend-{len(started)}" / "backend.log")
        started.append(backend)
        return backend.wait_ready()

    yield start
    for backend in started:
        backend.stop()


@pytest.fixture(scope="session")
def label_studio(request: pytest.FixtureRequest) -> Iterator:
    """One real Label Studio per version and worker: the newest supported release, or each one for the
    version matrix's modules (pytest_generate_tests); "<version>/postgresql" on a PostgreSQL of its own.
    The first of a version on a machine migrates (about 70 s); the others start from that migrated template."""
    from prelabel_local.label_studio_server import LabelStudio

    version, _, database = request.param.partition("/")
    server = LabelStudio(version=version, database=database or "sqlite").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ls_client(label_studio):  # noqa: ANN001, ANN201
    from label_studio_sdk import LabelStudio as Client

    return Client(base_url=label_studio.url, api_key=label_studio.token)


@pytest.fixture(scope="session")
def personal_access_token(ls_client) -> str:  # noqa: ANN001
    """The admin's personal access token: Label Studio allows one valid token per user, so it is shared."""
    return str(ls_client.tokens.create().token)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stops what a killed earlier run left (prelabel_local.processes records every server the harness
    starts), and turns SIGTERM and SIGHUP into Ctrl-C, on which pytest still tears the fixtures down."""
    from prelabel_local import processes

    for record in processes.stop_orphans():
        print(f"stopped {record.name} (pid {record.pid}), left running by a killed run (pid {record.owner_pid})")

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


# Modules that run this machine's one real node (a lock) or build the images: one worker runs them, with
# the tests marked real_node elsewhere (the demo killed in test_lifecycle).
REAL_NODE_MODULES = {"test_node", "test_real_node", "test_demo", "test_images", "test_training", "test_ml_sdk_backend"}


def module_name(item: pytest.Item) -> str:
    return item.module.__name__.rsplit(".", 1)[-1] if item.module else item.nodeid


def on_real_node(item: pytest.Item) -> bool:
    return module_name(item) in REAL_NODE_MODULES or item.get_closest_marker("real_node") is not None


# The version matrix (docs/label-studio-versions.md): these modules run on every supported Label Studio
# release (label_studio_server.SUPPORTED) on SQLite, and on the newest on PostgreSQL as production runs it:
# registration, drift repair, deletion, predictions stored and refused, pre-labeling counted, by the
# operator on a control plane. The rest of the suite runs on the newest, on SQLite.
VERSION_MATRIX_MODULES = {"test_registration_in_label_studio", "test_label_studio_faults", "test_prelabel_driver", "test_operator"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses Label Studio names its version: one parameter value per release, so a worker
    keeps one server per version (pytest caches a session fixture by its parameter's value)."""
    if "label_studio" not in metafunc.fixturenames:
        return
    from prelabel_local.label_studio_server import SUPPORTED, VERSION

    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    versions = (*SUPPORTED, f"{VERSION}/postgresql") if module in VERSION_MATRIX_MODULES else (VERSION,)
    metafunc.parametrize("label_studio", versions, indirect=True, scope="session", ids=[f"ls{v.replace('/', '-')}" for v in versions])


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`make test` runs three pytest-xdist workers (--dist loadgroup): the tests wait on servers far more
    than they compute. A module's tests run in order in one worker, on its module-scoped cluster; the
    real-node modules share one group, and so do the version matrix's tests of each older Label Studio."""
    from prelabel_local.label_studio_server import VERSION

    for item in items:
        module = module_name(item)
        callspec = getattr(item, "callspec", None)
        version = callspec.params.get("label_studio", VERSION) if callspec else VERSION
        # The version matrix's other Label Studios: one group each, so each starts once (about a minute).
        group = "real-node" if on_real_node(item) else module if version == VERSION else f"label-studio-{version.replace('/', '-')}"
        item.add_marker(pytest.mark.xdist_group(group))
    # The real-node group is the longest (one node, its tests in turn): first in the collection, xdist
    # hands it to a worker at once instead of after the groups collected before it.
    items.sort(key=lambda item: not on_real_node(item))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stops any server this session started that a fixture or test left running."""
    from prelabel_local import processes

    processes.stop_owned()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    report = yield
    if report.failed:
        item.session.prelabel_failed = True  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def operator_image_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """An interpreter with only what Dockerfile.operator installs (operator/requirements.lock, --no-deps) and the
    operator's code on PYTHONPATH as in the image: a dependency missing from the lock fails here."""
    from prelabel_local import venv

    python = venv.create(tmp_path_factory.mktemp("operator-image") / "venv", "--no-deps", "-r", str(REPO / "operator" / "requirements.lock"),
                         python="python3.11")
    return str(python), {"PYTHONPATH": str(REPO / "operator"), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="session")
def cluster_bin() -> Path:
    from prelabel_local.cluster import build

    return build(quiet=True)


@pytest.fixture(scope="module")
def cluster(cluster_bin: Path, request: pytest.FixtureRequest) -> Iterator:
    """A real control plane with controller-manager, scheduler and kwok nodes, for one test module."""
    from prelabel_local.cluster import LocalCluster

    local = LocalCluster(cluster_bin, with_controllers=True).start()
    yield local
    failed = getattr(request.session, "prelabel_failed", False)
    local.stop(keep_logs=failed)
    if failed:
        print(f"\ncontrol-plane logs kept in {local.workdir / 'logs'}")
