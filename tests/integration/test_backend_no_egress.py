"""While the backend starts, loads its models and predicts, no connection leaves loopback: every
socket connect and name lookup of the real gunicorn process is recorded through audit hooks."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import requests

from prelabel_backend import synthetic
from prelabel_backend.settings import PACKAGED_WEIGHTS
from tests.conftest import SEED_CONFIG, data_uri, scenes, serve_files, wait_for

AUDIT = Path(__file__).parent / "egress_audit"


def is_local(address: object) -> bool:
    if isinstance(address, str):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_no_connection_leaves_loopback(tmp_path: Path, start_backend) -> None:  # noqa: ANN001
    """With a mounted .pt of its own as the detection model, so that the backend exports it to ONNX and
    OpenVINO after its first load, in the background, and measures them (OpenVINO's converter sends
    telemetry unless stopped)."""
    from ultralytics import YOLO

    scene = scenes(401, 1)[0]
    png = synthetic.encode_png(scene.image)
    (tmp_path / "models").mkdir()
    YOLO(str(PACKAGED_WEIGHTS / "shapes-detect.pt")).save(str(tmp_path / "models" / "mine.pt"))  # same network, new sha256

    audit = tmp_path / "audit.log"
    with serve_files({"/a.png": png}) as base:
        backend = start_backend({"PYTHONPATH": str(AUDIT), "PRELABEL_AUDIT_FILE": str(audit), "MEDIA_ALLOWED_HOSTS": "127.0.0.1",
                                 "DEBUG_PLOT": "true", "MODEL_ROOT": str(tmp_path / "models"), "MODEL_DETECT": "mine.pt"})
        tasks = [{"id": 1, "data": {"image": f"{base}/a.png"}}, {"id": 2, "data": {"image": data_uri(scene.image)}}]
        assert requests.post(f"{backend.url}/setup", json={"project": "1.1", "schema": SEED_CONFIG}, timeout=60).status_code == 200
        results = requests.post(f"{backend.url}/predict", json={"tasks": tasks, "label_config": SEED_CONFIG}, timeout=120).json()["results"]
        assert all(len(r["result"]) == len(scene.shapes) for r in results)
        port = base.rsplit(":", 1)[1]
        wait_for("mine.pt exported and its runtimes measured", lambda: "measured model mine.pt" in backend.log.read_text(), 300)
    exports = list((tmp_path / "backend-0" / "model-dir" / "runtimes").glob("*/model*"))
    assert sorted(p.name for p in exports) == ["model.onnx", "model_openvino_model"], "mine.pt was not exported after its load"
    lines = audit.read_text().splitlines()
    media_gets = [line for line in lines if line.startswith("socket.connect") and port in line]
    assert media_gets, "the audit hook saw no connect: it is not recording"
    outside = [line for line in lines if not is_local(ast.literal_eval(line.split(" ", 1)[1]))]
    assert outside == []
