"""The backend serving through lean.py (INFERENCE=lean, or ultralytics not installed: the lean image,
issue 28): the same regions as the full image's torch path for every control type, the same
model_version, a .pt without an export refused with what to do, and a whole /predict in a process
where torch and ultralytics cannot be imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prelabel_backend import results, runtimes
from prelabel_backend.label_config import ConfigError, parse
from prelabel_backend.media import MediaFetcher
from prelabel_backend.metrics import Metrics
from prelabel_backend.model_store import ModelStore
from prelabel_backend.predictor import Predictor
from prelabel_backend.settings import PACKAGED_WEIGHTS, Settings
from tests.conftest import data_uri, scenes
from tests.unit.backend.test_runtimes import CONTROLS, IMAGE, assert_same_regions

LEAN = ("onnx", "openvino")


@pytest.fixture(scope="module")
def full_and_lean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelStore]:
    """The full image's reference (ultralytics on torch) and lean on each export runtime, batch 1."""
    folder = tmp_path_factory.mktemp("lean-serving")
    stores = {"torch": ModelStore(Settings(model_dir=folder / "torch", runtime="torch", batch_size=1, inference="ultralytics"))}
    for runtime in LEAN:
        stores[runtime] = ModelStore(Settings(model_dir=folder / runtime, runtime=runtime, batch_size=1, inference="lean"))
    return stores


@pytest.mark.parametrize("control", list(CONTROLS))
def test_lean_gives_the_torch_path_s_regions_for_every_control_type(full_and_lean: dict[str, ModelStore], settings: Settings,
                                                                    control: str) -> None:
    xml, scene_args = CONTROLS[control]
    batch = scenes(2800 + list(CONTROLS).index(control), 6, **scene_args)
    config = parse(xml, settings)
    regions = {}
    for name, store in full_and_lean.items():
        loaded = store.get(config.controls[0].model_file)
        assert loaded.runtime == name and store.lean == (name != "torch")
        if store.lean:
            assert type(loaded.model).__module__ == "prelabel_backend.lean"
        outputs = store.predict(loaded, [s.image for s in batch], conf=config.controls[0].threshold)
        regions[name] = [results.convert(config.controls[0], config, out, loaded.names) for out in outputs]
    assert sum(map(len, regions["torch"])) >= len(batch), "the torch path found too little to compare"
    for runtime in LEAN:
        for i, scene in enumerate(batch):
            assert_same_regions(regions["torch"][i], regions[runtime][i], scene.width, scene.height, f"{control}, lean {runtime}, image {i}")


def every_control(settings: Settings) -> str:
    return ("<View>" + IMAGE + "".join(x.split(IMAGE, 1)[1].removesuffix("</View>").replace('name="c', f'name="c{i}')
                                       for i, (x, _) in enumerate(CONTROLS.values())) + "</View>")


def test_model_version_is_the_same_lean_or_full(full_and_lean: dict[str, ModelStore], settings: Settings) -> None:
    config = parse(every_control(settings), settings)
    versions = {name: Predictor(store.settings, store, MediaFetcher(store.settings), Metrics()).model_version(config)
                for name, store in full_and_lean.items()}
    assert len(set(versions.values())) == 1, versions


def test_a_pt_without_an_export_is_refused_saying_what_to_do_and_its_export_serves(tmp_path: Path) -> None:
    """Lean cannot export (no torch): a mounted .pt with no export anywhere is a ConfigError naming the
    ways out; the same weights' export mounted as a file serves as it is."""
    root = tmp_path / "models"
    root.mkdir()
    weights = root / "mine.pt"
    weights.write_bytes((PACKAGED_WEIGHTS / "shapes-detect.pt").read_bytes() + b"\0")  # other bytes: no packaged export matches
    store = ModelStore(Settings(model_root=root, model_dir=tmp_path / "dir", inference="lean"))
    with pytest.raises(ConfigError) as refused:
        store.get("mine.pt")
    assert "'mine.pt' has no onnx export" in str(refused.value) and "full image" in str(refused.value)
    assert not (tmp_path / "dir" / "runtimes").exists() or not any((tmp_path / "dir" / "runtimes").iterdir()), "lean exported"
    packaged = runtimes.cached(runtimes.file_sha256(PACKAGED_WEIGHTS / "shapes-detect.pt"), "onnx", [runtimes.PACKAGED_RUNTIMES])
    assert packaged is not None
    shutil.copy(packaged, root / "mine.onnx")
    loaded = store.get("mine.onnx")
    assert (loaded.runtime, loaded.task, loaded.names) == ("onnx", "detect", ["square", "circle", "triangle"])
    assert len(store.predict(loaded, [s.image for s in scenes(2810, 2)], conf=0.25)) == 2


def test_video_tracking_in_lean_says_it_needs_the_full_image(full_and_lean: dict[str, ModelStore]) -> None:
    store = full_and_lean["onnx"]
    loaded = store.get("shapes-detect.pt")
    with pytest.raises(ConfigError, match="full image"):
        store.track(loaded, [s.image for s in scenes(2811, 2)], 0.25, "bytetrack.yaml")


def test_lean_setup_says_a_tracked_video_is_not_served_and_names_the_full_image(full_and_lean: dict[str, ModelStore]) -> None:
    """What Label Studio and the operator's ConfigCompatible condition see, not a 500 at each task."""
    from prelabel_backend.app import Backend, create_app
    from prelabel_backend.label_config import NO_TRACKER
    from tests.unit.backend.test_video import TIMELINE_CONFIG, VIDEO_CONFIG

    both = VIDEO_CONFIG.replace("</View>", TIMELINE_CONFIG.split("/>", 1)[1])  # a VideoRectangle and a TimelineLabels on one <Video>
    answers = {}
    for name in ("torch", "onnx"):
        store = full_and_lean[name]
        for control in parse(both, store.settings).controls:
            store.get(control.model_file)  # loaded: /setup answers for the config, not "loading"
        client = create_app(store.settings, Backend(store.settings, store), load="none").test_client()
        answers[name] = [client.post("/setup", json={"project": "7.1", "schema": xml}).get_json() for xml in (VIDEO_CONFIG, both)]
        answers[name].append(client.post("/predict", json={"tasks": [{"id": 1, "data": {"video": "/data/upload/7/clip.mp4"}}],
                                                           "label_config": VIDEO_CONFIG, "project": "7.1"}).status_code)
    assert answers["torch"][0]["compatible"] is True and answers["torch"][1]["compatible"] is True
    alone, mixed, predicted = answers["onnx"]
    assert alone["compatible"] is False and f'<VideoRectangle name="box">: {NO_TRACKER}' in alone["reasons"] and "full image" in alone["error"]
    assert mixed["compatible"] is True and f'not served: <VideoRectangle name="box">: {NO_TRACKER}' in mixed["warnings"]
    assert predicted == 422


# A process where torch, torchvision and ultralytics cannot be imported (the lean image has none):
# INFERENCE left unset, the backend goes lean by itself and answers Label Studio's /setup and /predict
# for a project with every control type.
NO_TORCH = """
import json, sys
for name in ("torch", "torchvision", "ultralytics"):
    sys.modules[name] = None  # import fails, importlib.util.find_spec says "not installed"
from pathlib import Path
from prelabel_backend.app import Backend, create_app
from prelabel_backend.model_store import ModelStore
from prelabel_backend.settings import Settings
request = json.loads(sys.stdin.read())
settings = Settings(model_dir=Path(request["model_dir"]))
store = ModelStore(settings)
assert store.lean
client = create_app(settings, Backend(settings, store), load="none").test_client()
setup = client.post("/setup", json={"project": "1.1", "schema": request["config"]}).get_json()
answer = client.post("/predict", json={"tasks": request["tasks"], "label_config": request["config"], "project": "1.1"})
assert answer.status_code == 200, answer.get_data(as_text=True)
print(json.dumps({"setup": setup["model_version"], "predict": answer.get_json(), "health": client.get("/health").get_json(),
                  "runtimes": {m.path.name: m.runtime for m in store.loaded()}}))
"""


def test_a_process_without_torch_or_ultralytics_serves_every_control_type(full_and_lean: dict[str, ModelStore], settings: Settings,
                                                                          tmp_path: Path) -> None:
    xml = every_control(settings)
    tasks = [{"id": i + 1, "data": {"image": data_uri(s.image)}} for i, s in enumerate(scenes(2812, 3, width=320, height=240))]
    request = {"model_dir": str(tmp_path / "dir"), "config": xml, "tasks": tasks}
    done = subprocess.run([sys.executable, "-c", NO_TORCH], input=json.dumps(request), capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    full = full_and_lean["torch"]
    expected = Predictor(full.settings, full, MediaFetcher(full.settings), Metrics()).model_version(parse(xml, settings))
    assert answer["setup"] == expected
    predictions = answer["predict"]["results"]
    assert len(predictions) == len(tasks) and all(p["model_version"] == expected for p in predictions)
    kinds = {r["type"] for p in predictions for r in p["result"]}
    assert kinds >= {"rectanglelabels", "polygonlabels", "brushlabels", "keypointlabels", "choices"}, kinds
    assert any("rotation" in r["value"] for p in predictions for r in p["result"] if r["type"] == "rectanglelabels"), "no oriented box"
    assert answer["health"]["inference"] == "lean"  # what serves, said where a person (or a probe) looks
    assert set(answer["runtimes"]) == {f"shapes-{task}.pt" for task in ("detect", "obb", "segment", "pose", "classify")}
    assert set(answer["runtimes"].values()) <= {"onnx", "openvino"}
