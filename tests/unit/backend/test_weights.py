"""Declared weights: MODEL_WEIGHTS becomes the default of its own task; fetched weights are checked."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from prelabel_backend.app import Backend
from prelabel_backend.fetch_weights import fetch
from prelabel_backend.label_config import parse
from prelabel_backend.model_store import ModelStore
from prelabel_backend.settings import PACKAGED_WEIGHTS, Settings
from tests.conftest import SEED_CONFIG, serve_files


def test_model_weights_serve_every_control_of_their_task(tmp_path: Path) -> None:
    shutil.copyfile(PACKAGED_WEIGHTS / "shapes-obb.pt", tmp_path / "my-obb.pt")
    settings = Settings(model_root=tmp_path, model_weights="my-obb.pt", model_dir=tmp_path / "dir")
    backend = Backend(settings, ModelStore(settings))
    backend.load_defaults()
    assert backend.state == "UP" and backend.settings.default_models["obb"] == "my-obb.pt"
    xml = SEED_CONFIG.replace('model_score_threshold="0.25"', 'model_obb="true"')
    assert parse(xml, backend.settings).controls[0].model_file == "my-obb.pt"


def test_missing_model_weights_keep_the_backend_unready_with_a_reason(tmp_path: Path) -> None:
    settings = Settings(model_root=tmp_path, model_weights="absent.pt", model_dir=tmp_path / "dir")
    backend = Backend(settings, ModelStore(settings))
    backend.load_defaults()
    assert backend.state == "ERROR" and "MODEL_WEIGHTS" in backend.reason and "absent.pt" in backend.reason


def test_fetch_weights_installs_only_a_matching_file(tmp_path: Path) -> None:
    payload = (PACKAGED_WEIGHTS / "shapes-detect.pt").read_bytes()

    with serve_files({"/best.pt": payload}) as base:
        url = f"{base}/best.pt"
        good = fetch(url, hashlib.sha256(payload).hexdigest(), tmp_path / "models" / "best.pt")
        assert good.read_bytes() == payload
        with pytest.raises(ValueError, match="expected 0000"):
            fetch(url, "0" * 64, tmp_path / "models" / "other.pt")
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["best.pt"]
