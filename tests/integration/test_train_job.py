"""The training Job's program (`python -m prelabel_backend.train`) as a process, against a real Label
Studio, a real S3 server (SeaweedFS) and real ultralytics: what it trains on, what it puts in the
store, what its termination message says; a process killed after a checkpoint resumes and the run
completes once; a snapshot naming an annotation that does not exist fails with a reason. Tiny
settings (imgsz 96, a few epochs): what is checked is the contract, not the model's quality."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prelabel_backend import synthetic
from prelabel_backend.model_versions import DirectoryStore, S3Location, S3Store, s3_client
from prelabel_local.demo import SEED_LABEL_CONFIG
from prelabel_local.s3 import SeaweedFS
from tests.conftest import wait_for

pytestmark = [pytest.mark.labelstudio, pytest.mark.s3]
LABELS = {"square": "Square", "circle": "Circle", "triangle": "Triangle"}


@pytest.fixture(scope="module")
def s3() -> Iterator[SeaweedFS]:
    server = SeaweedFS().start()
    try:
        s3_client(server.url, server.region, server.access_key, server.secret_key).create_bucket(Bucket="models")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(label_studio, ls_client) -> dict[str, Any]:  # noqa: ANN001
    """A project of 16 shifted-domain images, each annotated with its true boxes."""
    rng = np.random.default_rng(31)
    scenes = [synthetic.make_shifted_scene(rng) for _ in range(16)]
    created = ls_client.projects.create(title="training job", label_config=SEED_LABEL_CONFIG)
    by_name = label_studio.upload_images(created.id, {f"t-{i:02d}.png": synthetic.encode_png(s.image) for i, s in enumerate(scenes)})
    pairs = []
    for i, scene in enumerate(scenes):
        task = by_name[f"t-{i:02d}.png"]
        result = [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "origin": "manual",
                   "value": {"x": x1 * 100 / scene.width, "y": y1 * 100 / scene.height, "width": (x2 - x1) * 100 / scene.width,
                             "height": (y2 - y1) * 100 / scene.height, "rotation": 0, "rectanglelabels": [LABELS[s.cls]]}}
                  for s in scene.shapes for x1, y1, x2, y2 in [s.box()]]
        pairs.append((task, int(ls_client.annotations.create(id=task, result=result).id)))
    return {"id": created.id, "train": pairs[:12], "validation": pairs[12:]}


def run_job(tmp: Path, label_studio, store: str, env: dict[str, str], snapshot: dict[str, Any], **popen: Any) -> subprocess.Popen[str]:  # noqa: ANN001
    (tmp / "snapshot.json").write_text(json.dumps(snapshot))
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "MODEL_", "LABEL_STUDIO"))},
            "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token, "MODEL_STORE": store,
            "MODEL_DIR": str(tmp / "model-dir"), "TRAIN_SNAPSHOT": str(tmp / "snapshot.json"), "TERMINATION_LOG": str(tmp / "termination-log"),
            "TRAIN_EPOCHS": "3", "TRAIN_IMGSZ": "96", "TRAIN_BATCH": "8", **env}
    return subprocess.Popen([sys.executable, "-m", "prelabel_backend.train"], env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def snapshot_of(project: dict[str, Any], run: str) -> dict[str, Any]:
    return {"run": run, "project": project["id"], "digest": "sha256:test", "snapshot_at": "2026-12-06T00:00:00+00:00",
            "train": project["train"], "validation": project["validation"]}


def test_a_run_fine_tunes_evaluates_both_models_on_the_same_tasks_and_stores_the_candidate(tmp_path: Path, label_studio, project, s3) -> None:  # noqa: ANN001
    env = {"AWS_ENDPOINT_URL": s3.url, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key, "AWS_REGION": s3.region}
    job = run_job(tmp_path, label_studio, "s3://models/job", env, snapshot_of(project, "shapes-train-1"))
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    said = json.loads((tmp_path / "termination-log").read_text())
    assert said["run"] == "shapes-train-1" and said["task"] == "detect" and said["parent"] == "shapes-detect.pt"
    assert said["samples"] == {"train": 12, "validation": 4}
    candidate, current = said["metrics"]["candidate"], said["metrics"]["current"]
    assert candidate["images"] == current["images"] == 4 and 0 <= candidate["map50_95"] <= 1 and set(current["recall"]) <= set(LABELS)
    store = S3Store(s3_client(s3.url, s3.region, s3.access_key, s3.secret_key), S3Location.parse("s3://models/job"), tmp_path / "cache")
    (version,) = store.list()
    assert version.name == said["candidate"] and version.provenance.run == "shapes-train-1" and version.parent is None
    assert version.metrics["current_map50_95"] == current["map50_95"] and store.get(version.name).stat().st_size < 3_000_000
    assert not store.client.list_objects_v2(Bucket="models", Prefix="job/runs/").get("KeyCount")  # checkpoints dropped
    for secret in (label_studio.token, s3.secret_key):
        assert secret not in out and secret not in (tmp_path / "termination-log").read_text()
    # The same run again (its pod replaced after it stored the candidate): reported, not trained twice.
    again = run_job(tmp_path, label_studio, "s3://models/job", env, snapshot_of(project, "shapes-train-1"))
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    assert json.loads((tmp_path / "termination-log").read_text())["candidate"] == version.name and len(store.list()) == 1


def test_a_run_killed_after_a_checkpoint_resumes_from_it_and_completes_once(tmp_path: Path, label_studio, project) -> None:  # noqa: ANN001
    store_dir = tmp_path / "store"
    env = {"TRAIN_EPOCHS": "6"}
    first = run_job(tmp_path, label_studio, str(store_dir), env, snapshot_of(project, "shapes-train-2"), start_new_session=True)
    try:
        wait_for("the first checkpoint", (store_dir / "runs" / "shapes-train-2" / "last.pt").is_file, 300)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    time.sleep(1)
    second = run_job(tmp_path, label_studio, str(store_dir), env, snapshot_of(project, "shapes-train-2"))
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    said = json.loads((tmp_path / "termination-log").read_text())
    assert said["resumed_from_epoch"] >= 1, said
    assert [v.provenance.run for v in DirectoryStore(store_dir).list()] == ["shapes-train-2"]


def test_a_snapshot_naming_a_missing_annotation_fails_saying_which(tmp_path: Path, label_studio, project) -> None:  # noqa: ANN001
    snapshot = snapshot_of(project, "shapes-train-3")
    snapshot["validation"] = [[project["validation"][0][0], 99_999_999]]
    job = run_job(tmp_path, label_studio, str(tmp_path / "store"), {}, snapshot)
    job.communicate(timeout=300)
    said = json.loads((tmp_path / "termination-log").read_text())
    assert job.returncode == 1 and said["run"] == "shapes-train-3"
    assert said["error"].startswith("no validation images could be fetched: 1 of 1 failed") and "annotations/99999999" in said["error"], said
    assert not DirectoryStore(tmp_path / "store").list()
