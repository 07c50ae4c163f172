"""lean.py runs the packaged models' ONNX and OpenVINO exports without torch or ultralytics (issue 28) and
gives what ultralytics gives for the same export, images, conf and imgsz, for every task; results.py
converts its results unchanged."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from prelabel_backend import lean, results, runtimes
from prelabel_backend.label_config import parse
from prelabel_backend.lean import Export, Result
from prelabel_backend.settings import Settings
from tests.conftest import scenes

TASKS = ("detect", "obb", "segment", "pose", "classify")
THREADS = 1  # the machine is shared: one thread each for both sides
LABELS = (
    '<Label value="Square" predicted_values="square"/><Label value="Circle" predicted_values="circle"/>'
    '<Label value="Triangle" predicted_values="triangle"/>'
)
IMAGE = '<Image name="image" value="$image"/>'
# One control per task, threshold 0: every region of both sides goes through results.py's converter.
CONTROLS = {
    "detect": f'<View>{IMAGE}<RectangleLabels name="c" toName="image" model_score_threshold="0">{LABELS}</RectangleLabels></View>',
    "obb": (
        f'<View>{IMAGE}<RectangleLabels name="c" toName="image" model_obb="true" model_score_threshold="0">{LABELS}'
        "</RectangleLabels></View>"
    ),
    "segment": f'<View>{IMAGE}<BrushLabels name="c" toName="image" model_score_threshold="0">{LABELS}</BrushLabels></View>',
    "pose": f"""<View>{IMAGE}<KeyPointLabels name="c" toName="image" model_score_threshold="0">
        <Label value="apex" predicted_values="triangle" model_index="0"/><Label value="corner" predicted_values="square" model_index="0"/>
        <Label value="centre" predicted_values="circle" model_index="0"/></KeyPointLabels>
        <RectangleLabels name="c_bbox" toName="image"><Label value="triangle"/></RectangleLabels></View>""",
    "classify": (
        f'<View>{IMAGE}<Choices name="c" toName="image" model_score_threshold="0"><Choice value="Square"/>'
        '<Choice value="Circle"/><Choice value="Triangle"/></Choices></View>'
    ),
}


def export_path(task: str, runtime: str) -> Path:
    """The packaged model's export (made by the session's packaged_runtimes fixture, in conftest.py)."""
    pt = runtimes.PACKAGED_WEIGHTS_DIR / f"shapes-{task}.pt"
    found = runtimes.cached(runtimes.file_sha256(pt), runtime, [runtimes.PACKAGED_RUNTIMES])
    assert found is not None, f"no {runtime} export of {pt.name}"
    return found


def batches(task: str) -> list[tuple[list[np.ndarray], int | None]]:
    """(images, imgsz) pairs, each one predict call: 8 photo-sized images (one shape: ultralytics' minimal
    letterbox), odd sizes alone, a mixed list (every image padded to imgsz), and 4 images of the training size
    at the export's own imgsz (lean's default, what model_store passes to ultralytics)."""
    rotate = task == "obb"
    if task == "classify":  # one shape per image, as the classifier was trained
        big, training = {"count": (1, 1), "size": (60.0, 200.0)}, {"width": 128, "height": 128, "count": (1, 1), "size": (32.0, 80.0)}
    else:
        big, training = {"count": (3, 8), "size": (24.0, 110.0), "rotate": rotate}, {"rotate": rotate}
    photos = [s.image for s in scenes(2800 + TASKS.index(task), 8, width=640, height=480, **big)]
    odd = [s.image for s in scenes(2810 + TASKS.index(task), 3, width=333, height=517, **big)]
    odd[1] = cv2.rotate(odd[1], cv2.ROTATE_90_CLOCKWISE)  # 517 wide, 333 high
    odd[2] = odd[2][:211, :97]  # 97 wide, 211 high: no multiple of anything
    small = [s.image for s in scenes(2820 + TASKS.index(task), 4, **training)]
    return [(photos, 640), ([odd[0]], 640), ([odd[1]], 640), ([odd[2]], 320), ([photos[0], odd[0], odd[2]], 640), (small, None)]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 1.0


def polygon_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two convex polygons (oriented boxes' corners)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    inter = cv2.intersectConvexConvex(a, b)[0]
    union = cv2.contourArea(a) + cv2.contourArea(b) - inter
    return float(inter / union) if union > 0 else 1.0


def outline_iou(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> float:
    """IoU of two outlines (masks.xy) filled at 1/8 pixel on the image."""
    masks = []
    for outline in (a, b):
        mask = np.zeros(shape, np.uint8)
        if len(outline) >= 3:
            cv2.fillPoly(mask, [np.round(np.asarray(outline) * 8).astype(np.int32)], 1, shift=3)
        masks.append(mask.astype(bool))
    union = (masks[0] | masks[1]).sum()
    return float((masks[0] & masks[1]).sum() / union) if union else 1.0


def labels(region: dict) -> list[str]:
    return next(v for k, v in region["value"].items() if k.endswith("labels") or k in {"choices", "taxonomy"})


def compare(task: str, want: Any, got: Result, where: str) -> float:
    """Asserts lean's result matches ultralytics' (the same regions, classes, scores within 1e-3, matched
    greedily by IoU >= 0.95); returns the worst IoU (classify: the largest probability difference)."""
    assert got.orig_shape == tuple(want.orig_shape), where
    if task == "classify":
        probs = want.probs.data.numpy()
        assert int(got.probs.data.argmax()) == int(probs.argmax()), where
        difference = float(np.abs(got.probs.data - probs).max())
        assert difference < 1e-3, (where, difference)
        return difference
    theirs, ours = (want.obb, got.obb) if task == "obb" else (want.boxes, got.boxes)
    assert ours is not None and len(ours) == len(theirs), f"{where}: {len(ours or [])} regions, ultralytics {len(theirs)}"
    assert sorted(ours.cls.tolist()) == sorted(theirs.cls.tolist()), where
    if task == "obb":
        corners, mine, iou = theirs.xyxyxyxy.numpy(), ours.xyxyxyxy, polygon_iou
        assert got.boxes is None and mine.shape == corners.shape, where
    else:
        corners, mine, iou = theirs.xyxy.numpy(), ours.xyxy, box_iou
    free, worst = list(range(len(ours))), 1.0
    for i in range(len(theirs)):
        j = max((j for j in free if ours.cls[j] == theirs.cls[i]), key=lambda j: iou(corners[i], mine[j]))
        overlap = iou(corners[i], mine[j])
        assert overlap >= 0.95, f"{where}: region {i} best IoU {overlap:.4f}"
        assert abs(float(ours.conf[j]) - float(theirs.conf[i])) < 1e-3, (where, i, float(ours.conf[j]), float(theirs.conf[i]))
        if task == "segment":
            overlap = min(overlap, outline_iou(want.masks.xy[i], got.masks.xy[j], got.orig_shape))
            assert overlap >= 0.95, f"{where}: mask {i} IoU {overlap:.4f}"
        if task == "pose":
            distance = np.abs(got.keypoints.xy[j] - want.keypoints.xy[i].numpy()).max()
            assert distance <= 1.5, (where, i, distance)
            assert np.abs(got.keypoints.conf[j] - want.keypoints.conf[i].numpy()).max() < 1e-3, (where, i)
        worst = min(worst, overlap)
        free.remove(j)
    if task == "segment":
        assert (got.masks is None) == (want.masks is None), where
    return worst


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
@pytest.mark.parametrize("task", TASKS)
def test_lean_gives_what_ultralytics_gives(task: str, runtime: str, settings: Settings) -> None:
    from ultralytics.models import YOLO

    path = export_path(task, runtime)
    export = Export.open(path, threads=THREADS)
    # The reference as the backend runs it today (model_store._open): warmed up, then set to its threads, and
    # OpenVINO to f32 (on bf16 CPUs its default precision moves boxes by percents).
    model = YOLO(str(path), task=task)
    model.predict([np.zeros((64, 64, 3), np.uint8)], verbose=False, imgsz=export.imgsz[0])
    runtimes.set_threads(model, runtime, THREADS)
    assert (export.task, export.names) == (task, list(model.names.values()))
    assert export.imgsz == ((96, 96) if task == "classify" else (192, 192))
    config = parse(CONTROLS[task], settings)
    control, worst, found = config.controls[0], 1.0 if task != "classify" else 0.0, 0
    for number, (images, imgsz) in enumerate(batches(task)):
        where = f"{task}/{runtime}, call {number} (imgsz {imgsz})"
        wanted = model.predict(images, conf=0.25, imgsz=imgsz or export.imgsz[0], verbose=False)
        got = export.predict(images, conf=0.25, imgsz=imgsz)
        assert len(got) == len(images), where
        for i, (want, ours) in enumerate(zip(wanted, got, strict=True)):
            figure = compare(task, want, ours, f"{where}, image {i}")
            worst = max(worst, figure) if task == "classify" else min(worst, figure)
            found += len(want.obb if task == "obb" else want.boxes or [])
            # results.py reads lean's results as it reads ultralytics'.
            regions = [results.convert(control, config, out, export.names) for out in (want, ours)]
            assert sorted(map(labels, regions[0])) == sorted(map(labels, regions[1])), where
    assert task == "classify" or found >= 40, f"{task}: too little found to compare ({found})"
    print(f"\n{task}/{runtime}: {'largest probability difference' if task == 'classify' else 'min IoU'} {worst:.6f}, {found} regions")


NO_TORCH = """
import sys
from pathlib import Path
import numpy as np
from prelabel_backend import synthetic
from prelabel_backend.lean import Export
rng = np.random.default_rng(3)
images = [synthetic.make_scene(rng, width=640, height=480, count=(3, 6)).image for _ in range(2)]
for line in sys.stdin.read().split():
    task, runtime, path = line.split(",")
    export = Export.open(Path(path), threads=1)
    out = export.predict(images, conf=0.25)
    assert export.task == task and len(out) == 2 and (out[0].probs is not None) == (task == "classify"), (task, runtime)
loaded = sorted(m for m in ("torch", "torchvision", "ultralytics") if m in sys.modules)
assert not loaded, loaded
print("ok")
"""


def test_lean_imports_no_torch_nor_ultralytics() -> None:
    """A process that imports lean and predicts with every task on both runtimes never loads torch,
    torchvision or ultralytics (the lean serving image has none of them)."""
    exports = "\n".join(f"{task},{runtime},{export_path(task, runtime)}" for task in TASKS for runtime in ("onnx", "openvino"))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", NO_TORCH], input=exports, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
    print(f"\nno torch: 10 exports opened and run in {time.monotonic() - started:.1f}s")


def test_mask_outlines_join_several_contours_as_ultralytics() -> None:
    """A mask of several pieces gives ultralytics' one outline (masks2segments' merge_multi_segment), point for point."""
    from ultralytics.utils.ops import masks2segments

    rng = np.random.default_rng(2900)
    for _ in range(30):
        mask = np.zeros((120, 160), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            x, y, r = (int(v) for v in rng.integers((10, 10, 3), (150, 110, 20)))
            cv2.circle(mask, (x, y), r, 1, -1)
        assert np.array_equal(lean._mask_outline(mask), masks2segments(mask[None])[0])
