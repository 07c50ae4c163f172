"""The runtimes a model can run on (torch, ONNX Runtime, OpenVINO: issue 13) give the same regions,
for every control type, on the packaged models; model_version follows the weights, not the runtime;
threads follow the CPUs the process really gets, cgroup quota included."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from prelabel_backend import cpus, memory, results, runtimes
from prelabel_backend.label_config import parse
from prelabel_backend.media import MediaFetcher
from prelabel_backend.metrics import Metrics
from prelabel_backend.model_store import ModelStore
from prelabel_backend.predictor import Predictor
from prelabel_backend.settings import PACKAGED_WEIGHTS, Settings
from tests.conftest import scenes

CGROUPS = Path(__file__).parent / "cgroup"
LABELS = ('<Label value="Square" predicted_values="square"/><Label value="Circle" predicted_values="circle"/>'
          '<Label value="Triangle" predicted_values="triangle"/>')
IMAGE = '<Image name="image" value="$image"/>'
# One config per control type, each with the scenes its model was trained on.
CONTROLS = {
    "rectangle": (f'<View>{IMAGE}<RectangleLabels name="c" toName="image">{LABELS}</RectangleLabels></View>', {}),
    "oriented rectangle": (f'<View>{IMAGE}<RectangleLabels name="c" toName="image" model_obb="true">{LABELS}</RectangleLabels></View>',
                           {"rotate": True}),
    "polygon": (f'<View>{IMAGE}<PolygonLabels name="c" toName="image">{LABELS}</PolygonLabels></View>', {}),
    "brush": (f'<View>{IMAGE}<BrushLabels name="c" toName="image">{LABELS}</BrushLabels></View>', {}),
    "keypoints": (f"""<View>{IMAGE}<KeyPointLabels name="c" toName="image">
        <Label value="apex" predicted_values="triangle" model_index="0"/>
        <Label value="base-left" predicted_values="triangle" model_index="1"/>
        <Label value="base-right" predicted_values="triangle" model_index="2"/></KeyPointLabels>
        <RectangleLabels name="c_bbox" toName="image"><Label value="triangle"/></RectangleLabels></View>""", {"classes": ("triangle",)}),
    "choices": ((f'<View>{IMAGE}<Choices name="c" toName="image"><Choice value="Square"/><Choice value="Circle"/>'
                '<Choice value="Triangle"/></Choices></View>'), {"width": 128, "height": 128, "count": (1, 1), "size": (32.0, 80.0)}),
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelStore]:
    """One store per runtime, batch 1 (nothing measured), sharing the packaged exports."""
    folder = tmp_path_factory.mktemp("runtimes")
    return {runtime: ModelStore(Settings(model_dir=folder / runtime, runtime=runtime, batch_size=1)) for runtime in runtimes.RUNTIMES}


def region_mask(region: dict, width: int, height: int) -> np.ndarray:
    """The pixels a Label Studio region covers (drawn at 1/8 pixel)."""
    v, mask = region["value"], np.zeros((height, width), np.uint8)
    kind = region["type"]
    if kind == "rectanglelabels":
        x, y, w, h = v["x"] * width / 100, v["y"] * height / 100, v["width"] * width / 100, v["height"] * height / 100
        a = math.radians(v.get("rotation", 0))
        corners = np.array([[0, 0], [w, 0], [w, h], [0, h]]) @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) + [x, y]
        cv2.fillPoly(mask, [np.round(corners * 8).astype(np.int32)], 1, shift=3)
    elif kind == "polygonlabels":
        cv2.fillPoly(mask, [np.round(np.array(v["points"]) * [width / 100 * 8, height / 100 * 8]).astype(np.int32)], 1, shift=3)
    elif kind == "brushlabels":
        mask = (np.reshape(decode_rle(v["rle"]), (height, width, 4))[:, :, 3] > 0).astype(np.uint8)
    return mask.astype(bool)


def similarity(a: dict, b: dict, width: int, height: int) -> float:
    """IoU of two regions; a keypoint has no area: 1.0 within 1% of the image's longer side, else 0."""
    if a["type"] == "keypointlabels":
        distance = math.dist((a["value"]["x"] * width / 100, a["value"]["y"] * height / 100),
                             (b["value"]["x"] * width / 100, b["value"]["y"] * height / 100))
        return 1.0 if distance <= 0.01 * max(width, height) else 0.0
    if a["type"] == "choices":
        return 1.0
    mask_a, mask_b = region_mask(a, width, height), region_mask(b, width, height)
    return float((mask_a & mask_b).sum() / max(1, (mask_a | mask_b).sum()))


def label(region: dict) -> list[str]:
    return list(region["value"][region["type"]])


def assert_same_regions(expected: list[dict], got: list[dict], width: int, height: int, where: str) -> None:
    """Every region has a partner of the same label and type with IoU >= 0.95, and no region is extra."""
    assert len(got) == len(expected), f"{where}: {len(got)} regions, torch {len(expected)}"
    free = list(got)
    for want in expected:
        best, best_iou = None, -1.0
        for candidate in free:
            if candidate["type"] != want["type"] or candidate["from_name"] != want["from_name"] or label(candidate) != label(want):
                continue
            iou = similarity(want, candidate, width, height)
            if iou > best_iou:
                best, best_iou = candidate, iou
        assert best is not None and best_iou >= 0.95, f"{where}: {want['type']} {label(want)} best IoU {best_iou:.3f}"
        assert abs(best["score"] - want["score"]) < 0.05, (where, best["score"], want["score"])
        free.remove(best)


@pytest.mark.parametrize("control", list(CONTROLS))
def test_every_runtime_gives_the_same_regions(stores: dict[str, ModelStore], settings: Settings, control: str) -> None:
    xml, scene_args = CONTROLS[control]
    batch = scenes(1300 + list(CONTROLS).index(control), 6, **scene_args)
    config = parse(xml, settings)
    regions: dict[str, list[list[dict]]] = {}
    for runtime, store in stores.items():
        loaded = store.get(config.controls[0].model_file)
        assert (loaded.runtime, loaded.batch) == (runtime, 1)
        outputs = store.predict(loaded, [s.image for s in batch], conf=config.controls[0].threshold)
        regions[runtime] = [results.convert(config.controls[0], config, out, loaded.names) for out in outputs]
    assert sum(map(len, regions["torch"])) >= len(batch), "the torch path found too little to compare"
    for runtime in runtimes.RUNTIMES[1:]:
        for i, scene in enumerate(batch):
            assert_same_regions(regions["torch"][i], regions[runtime][i], scene.width, scene.height, f"{control}, {runtime}, image {i}")


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """OpenVINO at batch 4 on 2 threads: 2 streams, a batch's images run two at a time (OpenVINOStreams)."""
    return ModelStore(Settings(model_dir=tmp_path_factory.mktemp("streamed"), runtime="openvino", batch_size=4, torch_threads=2))


@pytest.mark.parametrize("control", list(CONTROLS))
def test_openvino_streams_give_the_same_regions(stores: dict[str, ModelStore], streamed: ModelStore, settings: Settings,
                                                control: str) -> None:
    """7 images at batch 4: a full batch over both streams, then 3 (two at once, then one alone)."""
    xml, scene_args = CONTROLS[control]
    batch = scenes(1320 + list(CONTROLS).index(control), 7, **scene_args)
    config = parse(xml, settings)
    regions: dict[str, list[list[dict]]] = {}
    for name, store in (("torch", stores["torch"]), ("streams", streamed)):
        loaded = store.get(config.controls[0].model_file)
        outputs = store.predict(loaded, [s.image for s in batch], conf=config.controls[0].threshold)
        regions[name] = [results.convert(config.controls[0], config, out, loaded.names) for out in outputs]
    backend = loaded.model.predictor.model.backend
    assert (streamed.streams, loaded.batch, int(backend.ov_compiled_model.get_property("NUM_STREAMS"))) == (2, 4, 2)
    assert isinstance(backend.forward, runtimes.OpenVINOStreams)
    assert sum(map(len, regions["torch"])) >= len(batch), "the torch path found too little to compare"
    for i, scene in enumerate(batch):
        assert_same_regions(regions["torch"][i], regions["streams"][i], scene.width, scene.height, f"{control}, streams, image {i}")


def test_openvino_twins_run_at_once_and_give_what_one_call_at_a_time_gives(streamed: ModelStore, settings: Settings) -> None:
    """Two calls at once, each on its own model object (twins sharing the compiled network and its
    streams), answer as the same calls one after the other do, box for box."""
    xml, _ = CONTROLS["rectangle"]
    config = parse(xml, settings)
    loaded = streamed.get(config.controls[0].model_file)
    assert len(loaded.instances) == 2 and loaded.instances[1].predictor is not loaded.model.predictor
    assert loaded.instances[1].predictor.model is loaded.model.predictor.model, "one network, not two"
    images = [[s.image for s in scenes(1330 + k, 7)] for k in range(4)]
    alone = [[r.boxes.data.numpy() for r in streamed.predict(loaded, batch, conf=0.25)] for batch in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda batch: [r.boxes.data.numpy() for r in streamed.predict(loaded, batch, conf=0.25)], images))
    assert sum(len(boxes) for call in alone for boxes in call) >= 28, "too few boxes to compare"
    for one, other in zip(alone, together, strict=True):
        for a, b in zip(one, other, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    assert loaded.idle.qsize() == 2 and not loaded.running()


def test_model_version_follows_the_weights_not_the_runtime(stores: dict[str, ModelStore], settings: Settings) -> None:
    xml = ("<View>" + IMAGE + "".join(x.split(IMAGE, 1)[1].removesuffix("</View>").replace('name="c', f'name="c{i}')
                                   for i, (x, _) in enumerate(CONTROLS.values())) + "</View>")
    config = parse(xml, settings)
    assert {c.task for c in config.controls} == {"detect", "obb", "segment", "pose", "classify"}
    versions = {runtime: Predictor(store.settings, store, MediaFetcher(store.settings), Metrics()).model_version(config)
                for runtime, store in stores.items()}
    assert len(set(versions.values())) == 1, versions
    assert {s.get("shapes-detect.pt").sha256 for s in stores.values()} == {
        runtimes_sha(PACKAGED_WEIGHTS / "shapes-detect.pt")}


def runtimes_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exported_files_are_served_as_they_are(stores: dict[str, ModelStore], settings: Settings, tmp_path: Path) -> None:
    """MODEL_DETECT=x.onnx or an *_openvino_model/ folder: ultralytics runs it with the .pt's pre- and
    post-processing, and reads the task, classes and input size from the export's metadata."""
    sha = runtimes_sha(PACKAGED_WEIGHTS / "shapes-detect.pt")
    onnx = runtimes.cached(sha, "onnx", settings.runtime_caches)
    openvino = runtimes.cached(sha, "openvino", settings.runtime_caches)
    assert onnx is not None and openvino is not None, "the packaged exports are missing (python -m prelabel_backend.runtimes)"
    shutil.copyfile(onnx, tmp_path / "mine.onnx")
    shutil.copytree(openvino, tmp_path / "mine_openvino_model")
    store = ModelStore(Settings(model_root=tmp_path, model_dir=tmp_path / "dir", runtime="torch", batch_size=1))
    batch = scenes(1310, 4)
    xml = CONTROLS["rectangle"][0]
    expected = None
    for name, runtime in (("shapes-detect.pt", "torch"), ("mine.onnx", "onnx"), ("mine_openvino_model", "openvino")):
        config = parse(xml.replace('name="c"', f'name="c" model_path="{name}"'), settings)
        loaded = store.get(name)
        assert (loaded.runtime, loaded.task, loaded.names) == (runtime, "detect", ["square", "circle", "triangle"])
        found = [results.convert(config.controls[0], config, out, loaded.names) for out in store.predict(loaded, [s.image for s in batch], 0.5)]
        if expected is None:
            expected = found
            continue
        for i, scene in enumerate(batch):
            assert_same_regions(expected[i], found[i], scene.width, scene.height, f"{name}, image {i}")
    assert not (tmp_path / "dir" / "runtimes").exists() or not any((tmp_path / "dir" / "runtimes").glob("*/model*")), \
        "an exported file is never exported again"


def test_a_mounted_pt_is_exported_once_at_first_load_keyed_by_its_sha256(tmp_path: Path) -> None:
    from ultralytics import YOLO

    YOLO(str(PACKAGED_WEIGHTS / "shapes-detect.pt")).save(str(tmp_path / "mine.pt"))  # same network, another file
    sha = runtimes_sha(tmp_path / "mine.pt")
    settings = Settings(model_root=tmp_path, model_dir=tmp_path / "dir", runtime="openvino", batch_size=1)
    loaded = ModelStore(settings).get("mine.pt")
    export = tmp_path / "dir" / "runtimes" / sha / "model_openvino_model"
    assert loaded.runtime == "openvino" and loaded.sha256 == sha and export.is_dir()
    assert sorted(p.name for p in (tmp_path / "dir" / "runtimes").iterdir()) == [sha], "no half-written export left"
    stamp = (export / "model.xml").stat().st_mtime_ns
    again = ModelStore(dataclasses.replace(settings)).get("mine.pt")
    assert again.runtime == "openvino" and (export / "model.xml").stat().st_mtime_ns == stamp


def test_auto_serves_at_once_then_measures_every_runtime_and_keeps_the_fastest(tmp_path: Path) -> None:
    """The cold start: a packaged model serves on its ready ONNX export (no torch model opened, nothing
    timed) until the measurement, held while the default models load, switches it to the fastest."""
    from ultralytics import YOLO  # after the store made ultralytics offline (here, at import, it would go online)

    store = ModelStore(Settings(model_dir=tmp_path))
    opened: list[str] = []  # the runtimes this process opened the model on
    open_here = store._open
    store._open = lambda path, runtime, *args: (opened.append(runtime), open_here(path, runtime, *args))[1]  # type: ignore[method-assign]
    with store.measurements_held():
        loaded = store.get("shapes-detect.pt")
        assert (loaded.runtime, loaded.batch, loaded.measured, loaded.timings) == ("onnx", 1, False, {})
        assert loaded.imgsz == YOLO(str(PACKAGED_WEIGHTS / "shapes-detect.pt")).overrides.get("imgsz")
    store.settle()
    assert loaded.measured and set(loaded.timings) == {f"{r}/{b}" for r in runtimes.RUNTIMES for b in (1, 4)}
    assert loaded.timings[f"{loaded.runtime}/{loaded.batch}"] == min(loaded.timings.values())
    # The timing ran in a child process: this one opened the provisional runtime and the chosen one, no other.
    assert opened == ["onnx", loaded.runtime], opened
    assert runtimes.runtime_of(Path(str(loaded.model.ckpt_path or loaded.model.model_name))) == loaded.runtime
    # A restart in the same pod (MODEL_DIR is kept) takes the measured choice instead of measuring again.
    again = ModelStore(Settings(model_dir=tmp_path)).get("shapes-detect.pt")
    assert (again.runtime, again.batch, again.timings, again.measured) == (loaded.runtime, loaded.batch, loaded.timings, True)


@pytest.mark.parametrize(("cgroup", "available", "expected"), [
    ("v2-1.5cpu", 8, 1),  # 1.5 CPUs of quota: one thread (the half CPU is throttled time)
    ("v2-4cpu", 64, 4),  # a 4-CPU limit on a 64-core node
    ("v2-4cpu", 2, 2),  # the affinity mask is smaller than the quota
    ("v2-max", 16, 16),  # no limit
    ("v1-3cpu", 16, 3),
    ("v1-unlimited", 6, 6),
    ("absent", 5, 5),  # no cgroup filesystem (not Linux, or not mounted)
])
def test_threads_follow_the_cgroup_cpu_quota(cgroup: str, available: int, expected: int) -> None:
    assert cpus.usable_cpus(CGROUPS / cgroup, available=available) == expected


@pytest.mark.parametrize(("cpus_", "batch", "expected"), [
    (2, 4, 2),  # this machine: a stream per core, 2 of a batch's images at once
    (1, 4, 1),  # a 1-CPU quota: one image at a time on the one thread
    (16, 4, 4),  # more CPUs than images in a batch: 4 streams of 4 threads
    (8, 1, 1),  # BATCH_SIZE=1: every thread on the one image
    (3, 16, 3),
])
def test_streams_follow_the_cpus_and_the_batch(cpus_: int, batch: int, expected: int) -> None:
    assert cpus.inference_streams(cpus_, batch) == expected


def test_a_store_under_a_quota_runs_its_models_on_that_many_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(cpus, "CGROUP_ROOT", CGROUPS / "v2-1.5cpu")
    store = ModelStore(Settings(model_dir=tmp_path, runtime="openvino", batch_size=1))
    loaded = store.get("shapes-detect.pt")
    compiled = loaded.model.predictor.model.backend.ov_compiled_model
    try:
        assert store.threads == 1 and torch.get_num_threads() == 1
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert store.streams == 1 and int(compiled.get_property("NUM_STREAMS")) == 1
        assert not isinstance(loaded.model.predictor.model.backend.forward, runtimes.OpenVINOStreams)
    finally:
        torch.set_num_threads(cpus.usable_cpus())


def test_idle_models_are_unloaded_and_come_back(tmp_path: Path) -> None:
    store = ModelStore(Settings(model_dir=tmp_path, runtime="torch", batch_size=1, model_idle_unload=3600))
    first = store.get("shapes-classify.pt")
    assert store.unload_idle(now=first.last_used + 10) == []
    # A second past the limit: (t + 3600) - t is 3599.9999999999927 for some monotonic t (float rounding).
    assert store.unload_idle(now=first.last_used + 3601) == ["shapes-classify.pt"] and store.loaded() == []
    assert store.get("shapes-classify.pt") is not first


ARENAS_SCRIPT = """
import ctypes, sys, threading
from prelabel_backend import memory
print(memory.limit_arenas())
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
start = threading.Barrier(8)
def allocate():
    start.wait()
    for _ in range(20000):
        libc.malloc(256)  # kept: each thread's blocks stay in its arena
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
out = libc.fopen(sys.argv[1].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
"""


@pytest.mark.parametrize(("env", "limited"), [({}, True), ({"MALLOC_ARENA_MAX": "16"}, False)])
def test_malloc_arenas_are_limited_unless_the_operator_set_them(tmp_path: Path, env: dict[str, str], limited: bool) -> None:
    """Eight threads allocating at once get glibc arenas of their own (up to 8 per core) unless
    memory.limit_arenas held them to 2; an operator's MALLOC_ARENA_MAX stands (the memory bound)."""
    info = tmp_path / "malloc_info.xml"
    done = subprocess.run([sys.executable, "-c", ARENAS_SCRIPT, str(info)], env={**os.environ, **env},
                          capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split() == [str(limited)]
    heaps = info.read_text().count("<heap nr=")
    assert (heaps <= memory.ARENAS) if limited else (heaps > memory.ARENAS), info.read_text()[:500]
