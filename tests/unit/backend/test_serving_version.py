"""Serving a stored version: `python -m prelabel_backend.model_versions fetch STORE VERSION DIR` (the
Deployment's init container) from a folder store and from a real S3 bucket (SeaweedFS), its refusals
with what to fix, and the backend serving the fetched file under MODEL_VERSION's name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from prelabel_backend.app import Backend, create_app
from prelabel_backend.model_store import ModelStore
from prelabel_backend.model_versions import DirectoryStore, ModelVersion, S3Location, S3Store, Store, main, new_version, s3_client
from prelabel_backend.settings import PACKAGED_WEIGHTS, Settings
from prelabel_local.cluster import free_port
from prelabel_local.s3 import SeaweedFS
from tests.conftest import SEED_CONFIG, data_uri, scenes

T0 = datetime(2026, 11, 30, 5, 40, tzinfo=UTC)
DETECT = PACKAGED_WEIGHTS / "shapes-detect.pt"
REPO = Path(__file__).resolve().parents[3]


def put_versions(store: Store, tmp_path: Path, count: int) -> list[ModelVersion]:
    """`count` versions of the packaged detect model, a minute apart, each with other bytes appended
    (ultralytics loads a .pt with trailing bytes: it is a zip archive)."""
    made = []
    for i in range(count):
        weights = tmp_path / "in" / f"w{i}.pt"
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(DETECT.read_bytes() + b"\0" * i)
        made.append(store.put(weights, new_version(weights, task="detect", created=T0 + timedelta(minutes=i), metrics={"map50_95": 0.5})))
    return made


def run_fetch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """main() as the init container runs it: exit status and the printed line or the error message."""
    try:
        main(["fetch", *args])
    except SystemExit as exc:
        return 1 if isinstance(exc.code, str) else int(exc.code or 0), str(exc.code)
    return 0, capsys.readouterr().out


def test_fetch_from_a_folder_writes_verified_weights_and_the_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = DirectoryStore(tmp_path / "store")
    version = put_versions(store, tmp_path, 2)[1]
    models = tmp_path / "models"
    status, out = run_fetch(capsys, str(store.root), version.name, str(models))
    assert status == 0 and out.count("\n") == 1, out
    assert out.startswith(f"fetched {version.name} (detect, fp32, ") and str(models / f"{version.name}.pt") in out
    assert (models / f"{version.name}.pt").read_bytes() == DETECT.read_bytes() + b"\0"
    assert ModelVersion.from_json((models / f"{version.name}.json").read_text()) == version
    assert sorted(p.name for p in models.iterdir()) == [f"{version.name}.json", f"{version.name}.pt"]  # no partial left
    assert (store.root / version.name / "weights.pt").is_file()  # the store's own file is copied, never moved
    # Again (an init container restarted in the same pod): the verified file is kept, the answer the same.
    assert run_fetch(capsys, str(store.root), version.name, str(models)) == (0, out)


def test_fetch_refusals_name_what_to_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = DirectoryStore(tmp_path / "store")
    made = put_versions(store, tmp_path, 7)
    models = tmp_path / "models"
    status, message = run_fetch(capsys, str(store.root), "20201130T054012.123Z-3f2a9c1b", str(models))
    newest = [v.name for v in reversed(made[-5:])]
    assert status == 1 and message == f"version 20201130T054012.123Z-3f2a9c1b is not in {store!r}; the newest there: {', '.join(newest)}"
    assert run_fetch(capsys, str(store.root), "latest", str(models)) == (
        1, "cannot fetch: not a version name: 'latest' (expected like 20261130T054012.123Z-3f2a9c1b)")
    assert run_fetch(capsys, str(tmp_path / "unmounted"), made[0].name, str(models)) == (
        1, f"the model store folder {tmp_path / 'unmounted'} does not exist: is its volume mounted?")
    stored = store.root / made[0].name / "weights.pt"
    stored.write_bytes(stored.read_bytes()[:-100])  # truncated on the volume
    status, message = run_fetch(capsys, str(store.root), made[0].name, str(models))
    assert status == 1 and message.startswith(f"refusing corrupt weights: version {made[0].name}: the stored weights have sha256 ")
    assert not models.exists() or not list(models.iterdir())  # nothing a backend could serve


def test_the_backend_serves_the_fetched_version_under_its_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As the Deployment runs it: the init container's folder as MODEL_ROOT, the file as MODEL_WEIGHTS,
    the name as MODEL_VERSION: /setup's and each prediction's model_version name the store version, and
    still change with the config."""
    store = DirectoryStore(tmp_path / "store")
    version = put_versions(store, tmp_path, 1)[0]
    assert run_fetch(capsys, str(store.root), version.name, str(tmp_path / "models"))[0] == 0
    settings = Settings.from_env({"MODEL_ROOT": str(tmp_path / "models"), "MODEL_WEIGHTS": f"{version.name}.pt",
                                  "MODEL_VERSION": version.name, "MODEL_DIR": str(tmp_path / "dir"), "RUNTIME": "torch"})
    backend = Backend(settings, ModelStore(settings))
    client = create_app(settings, backend, load="now").test_client()
    assert client.get("/health").get_json()["models"][f"{version.name}.pt"] == "detect"
    answer = client.post("/setup", json={"project": "1.1", "schema": SEED_CONFIG}).get_json()
    served = answer["model_version"]
    assert served.startswith(f"{version.name}-") and len(served) == len(version.name) + 7, served
    other = client.post("/setup", json={"project": "1.1", "schema": SEED_CONFIG.replace("0.25", "0.4")}).get_json()["model_version"]
    assert other.startswith(f"{version.name}-") and other != served
    (result,) = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": data_uri(scenes(401, 1)[0].image)}}],
                                              "label_config": SEED_CONFIG}).get_json()["results"]
    assert result["model_version"] == served and result["result"]


@pytest.mark.parametrize("value", ["latest version", "x" * 57, "-leading", "a/b"])
def test_model_version_must_be_a_store_name(value: str) -> None:
    with pytest.raises(ValueError, match="MODEL_VERSION must be a model store version name"):
        Settings.from_env({"MODEL_VERSION": value})
    assert Settings.from_env({"MODEL_VERSION": " "}).model_version is None


# -- a real S3 bucket -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seaweed() -> Iterator[SeaweedFS]:
    server = SeaweedFS().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"AWS_ENDPOINT_URL": seaweed.url, "AWS_ACCESS_KEY_ID": seaweed.access_key,
           "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "AWS_REGION": seaweed.region}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return env


def s3_store(seaweed: SeaweedFS, tmp_path: Path, bucket: str) -> S3Store:
    client = s3_client(seaweed.url, region=seaweed.region, access_key=seaweed.access_key, secret_key=seaweed.secret_key)
    client.create_bucket(Bucket=bucket)
    return S3Store(client, S3Location(bucket, "models"), tmp_path / "writer-cache")


@pytest.mark.s3
def test_fetch_from_s3_as_the_init_container_runs_it(seaweed: SeaweedFS, s3_env: dict[str, str], tmp_path: Path) -> None:
    """The real command, in its own process, with the env the Deployment sets; the line it prints
    names the version and never a credential."""
    store = s3_store(seaweed, tmp_path, "serve")
    version = put_versions(store, tmp_path, 2)[0]
    models = tmp_path / "models"
    env = {**os.environ, **s3_env, "PYTHONPATH": f"{REPO / 'backend_image'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-m", "prelabel_backend.model_versions", "fetch", "s3://serve/models", version.name, str(models)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"fetched {version.name} (detect, ") and "S3Store(s3://serve/models)" in done.stdout
    assert seaweed.secret_key not in done.stdout + done.stderr and seaweed.access_key not in done.stdout + done.stderr
    assert (models / f"{version.name}.pt").read_bytes() == DETECT.read_bytes()
    assert json.loads((models / f"{version.name}.json").read_text())["sha256"] == version.sha256
    assert list((tmp_path / "tmp").iterdir()) == []  # the download cache, under the temp dir, is gone


@pytest.mark.s3
def test_fetch_from_s3_refusals(seaweed: SeaweedFS, s3_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = s3_store(seaweed, tmp_path, "refusals")
    made = put_versions(store, tmp_path, 3)
    models = str(tmp_path / "models")
    status, message = run_fetch(capsys, "s3://refusals/models", "20201130T054012.123Z-3f2a9c1b", models)
    assert status == 1 and message.endswith(f"the newest there: {made[2].name}, {made[1].name}, {made[0].name}"), message

    # Corrupt: the object's bytes changed behind the record's back.
    store.client.put_object(Bucket="refusals", Key=f"models/{made[1].name}/weights.pt", Body=b"not the weights")
    status, message = run_fetch(capsys, "s3://refusals/models", made[1].name, models)
    assert status == 1 and message.startswith(f"refusing corrupt weights: version {made[1].name}: the stored weights have sha256 "), message

    assert run_fetch(capsys, "s3://no-such-bucket/models", made[0].name, models) == (
        1, f"bucket 'no-such-bucket' does not exist at {seaweed.url}: check the store URL")

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-key")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it keeps the credentials it read first (a new process reads them anew)
    status, message = run_fetch(capsys, "s3://refusals/models", made[0].name, models)
    assert status == 1 and message.startswith(f"the S3 server at {seaweed.url} refused the credentials ("), message
    assert "check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message and "not-the-secret-key" not in message

    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    assert run_fetch(capsys, "s3://refusals/models", made[0].name, models) == (
        1, f"cannot reach the S3 server at {closed} (AWS_ENDPOINT_URL): EndpointConnectionError")
    assert not Path(models).exists() or not list(Path(models).iterdir())
