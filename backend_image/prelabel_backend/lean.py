"""YOLO exports run with numpy, OpenCV and Pillow alone (ONNX through onnxruntime, OpenVINO IR through openvino): what
ultralytics 8.4.190's predict gives for the same export, images, conf and imgsz, without torch, torchvision or
ultralytics at run time (issue 28: a lean CPU serving image). Each step names the ultralytics function it mirrors,
defaults included (iou 0.7, max_det 300, class-aware NMS, one label per box). Results carry what results.py reads
from ultralytics' Results, as numpy arrays, in pixels of the original image:

    export = Export.open(Path(".../model.onnx"), threads=2)   # or a *_openvino_model directory
    for result in export.predict([bgr_image], conf=0.25):     # BGR uint8 H x W x 3, as cv2.imread gives
        result.boxes.xyxy, result.boxes.conf, result.boxes.cls

Accepted: what runtimes.export makes, dynamic exports (any batch and size) without in-graph NMS (end-to-end
exports, YOLO26's default, are refused: their outputs are not decoded here).
"""

from __future__ import annotations

import ast
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

IOU = 0.7  # ultralytics' cfg default `iou`
MAX_DET = 300  # ... `max_det`
MAX_NMS, MAX_WH = 30000, 7680  # non_max_suppression's defaults: boxes into NMS; per-class coordinate offset
LETTERBOX_FILL = 114  # LetterBox's padding_value
TASKS = ("detect", "segment", "pose", "obb", "classify")
# f32: on bf16 CPUs OpenVINO's default precision moves boxes by percents of IoU (see runtimes.set_threads).
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


@dataclass(frozen=True, eq=False)
class Boxes:
    """Axis-aligned boxes: xyxy (N, 4) pixels of the original image; conf (N,); cls (N,) class index as float."""

    xyxy: np.ndarray
    conf: np.ndarray
    cls: np.ndarray

    def __len__(self) -> int:
        return len(self.conf)


@dataclass(frozen=True, eq=False)
class OBB(Boxes):
    """Oriented boxes: also xywhr (N, 5) centre, size (pixels) and angle (radians); xyxyxyxy (N, 4, 2) their corners."""

    xywhr: np.ndarray
    xyxyxyxy: np.ndarray


@dataclass(frozen=True, eq=False)
class Masks:
    """Instance outlines: xy, one (P, 2) float32 array of pixel points per box (the mask's outer contour)."""

    xy: list[np.ndarray]


@dataclass(frozen=True, eq=False)
class Keypoints:
    """xy (N, K, 2) pixels; conf (N, K), or None for a model without keypoint confidences."""

    xy: np.ndarray
    conf: np.ndarray | None


@dataclass(frozen=True, eq=False)
class Probs:
    """data (C,): the probability of each class (the export's softmax)."""

    data: np.ndarray


@dataclass(frozen=True, eq=False)
class Result:
    """One image's predictions; orig_shape is its (height, width). Unset parts are None, as in ultralytics:
    obb models give no boxes, a segmentation without detections gives no masks."""

    orig_shape: tuple[int, int]
    boxes: Boxes | None = None
    obb: OBB | None = None
    masks: Masks | None = None
    keypoints: Keypoints | None = None
    probs: Probs | None = None


@dataclass(frozen=True, eq=False)
class Export:
    """An opened export and what its metadata says (as ultralytics.nn.backends.base.BaseBackend.apply_metadata reads it)."""

    path: Path
    task: str
    names: list[str]  # by class index
    imgsz: tuple[int, int]  # (height, width) the export was made at
    stride: int
    kpt_shape: tuple[int, int] | None  # pose: (keypoints, 2 or 3 values each)
    run: Callable[[np.ndarray], list[np.ndarray]] = field(repr=False)  # (N, 3, H, W) float32 RGB in [0, 1] -> outputs

    @classmethod
    def open(cls, path: Path, threads: int = 1) -> Export:
        """A model.onnx file (ONNX Runtime, CPU, `threads` intra-op threads, no spinning: see runtimes.set_threads)
        or an *_openvino_model directory or its .xml (OpenVINO, CPU, `threads` threads, f32, one stream)."""
        if path.suffix == ".onnx":
            import onnxruntime  # type: ignore[import-untyped]  # ships no types

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            metadata: dict[str, Any] = dict(session.get_modelmeta().custom_metadata_map)
            name = session.get_inputs()[0].name

            def run(x: np.ndarray) -> list[np.ndarray]:
                return list(session.run(None, {name: x}))
        else:
            import yaml

            sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # as runtimes.no_telemetry
            import openvino  # type: ignore[import-untyped]  # ships no types

            xml = path if path.suffix == ".xml" else next(path.glob("*.xml"))
            metadata = yaml.safe_load((xml.parent / "metadata.yaml").read_text())
            compiled = openvino.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": threads, **OPENVINO_CONFIG})

            def run(x: np.ndarray) -> list[np.ndarray]:
                return list(compiled.create_infer_request().infer(x).values())  # a request per call: thread-safe

        # String values are Python literals in ONNX metadata_props, YAML in metadata.yaml (as apply_metadata parses them).
        meta = {
            k: ast.literal_eval(v) if k in {"imgsz", "names", "kpt_shape", "args", "end2end"} and isinstance(v, str) else v
            for k, v in metadata.items()
        }
        args = meta.get("args") or {}
        if meta.get("end2end") or args.get("nms") or not args.get("dynamic") or meta.get("task") not in TASKS:
            raise ValueError(f"{path}: not a dynamic export without NMS of one of {TASKS} (as runtimes.export makes them)")
        names = {int(k): str(v) for k, v in meta["names"].items()}
        kpt_shape = (int(meta["kpt_shape"][0]), int(meta["kpt_shape"][1])) if meta.get("kpt_shape") else None
        imgsz = (int(meta["imgsz"][0]), int(meta["imgsz"][1]))
        return cls(path, meta["task"], [names[i] for i in range(len(names))], imgsz, int(meta.get("stride", 32)), kpt_shape, run)

    def predict(self, images: list[np.ndarray], conf: float = 0.25, imgsz: int | tuple[int, int] | None = None) -> list[Result]:
        """Results for BGR uint8 (H, W, 3) images, as one ultralytics predict(images, conf=conf, imgsz=imgsz) call gives:
        one batch for the list (images of one shape keep their minimal letterbox, mixed shapes are all padded to
        imgsz, as BasePredictor.pre_transform does). imgsz: int or (height, width); None is the export's own (what
        model_store passes to ultralytics, which would take 640 for a dynamic export without it). conf: the least
        confidence kept (strictly above it); classification ignores it."""
        if not images:
            return []
        size = _check_imgsz(imgsz or self.imgsz, self.stride)
        if self.task == "classify":
            x = np.stack([_classify_input(image, size) for image in images])
        else:  # as BasePredictor.pre_transform's LetterBox(auto=same shapes and a dynamic export), then preprocess
            auto = len({image.shape for image in images}) == 1
            x = np.stack([_letterbox(image, size, auto, self.stride) for image in images])
            x = x[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) / 255  # BGR to RGB, BHWC to BCHW, 0-255 to 0-1
        outputs = self.run(np.ascontiguousarray(x))
        if self.task == "classify":
            return [Result(image.shape[:2], probs=Probs(p)) for image, p in zip(images, outputs[0], strict=True)]
        preds = next(o for o in outputs if o.ndim == 3)  # (N, 4 + classes + extra, anchors)
        protos = next((o for o in outputs if o.ndim == 4), None)  # segment: (N, 32, H/4, W/4)
        results = []
        for i, image in enumerate(images):
            rows = _nms(preds[i], conf, len(self.names), rotated=self.task == "obb")
            results.append(self._result(rows, None if protos is None else protos[i], x.shape[2:], image.shape[:2]))
        return results

    def _result(self, rows: np.ndarray, protos: np.ndarray | None, in_shape: tuple[int, ...], orig_shape: tuple[int, ...]) -> Result:
        """One image's NMS rows (box, conf, cls, extra) in letterboxed pixels -> its Result, as the task's predictor's
        construct_result (models/yolo/<task>/predict.py) and Results' properties make it."""
        shape = (int(orig_shape[0]), int(orig_shape[1]))
        if self.task == "obb":  # rows: x, y, w, h, conf, cls, angle; scale_boxes(xywh=True): unpadded, not clipped
            xywhr = np.concatenate([_unletterbox(rows[:, :4].copy(), in_shape, shape, xywh=True), rows[:, 6:7]], 1)
            corners = _xywhr2xyxyxyxy(xywhr)
            enclosing = np.concatenate([corners.min(1), corners.max(1)], 1)  # OBB.xyxy: the corners' enclosing box
            return Result(shape, obb=OBB(enclosing, rows[:, 4], rows[:, 5], xywhr, corners))
        masks = None
        if self.task == "segment" and len(rows):
            assert protos is not None
            bitmaps = _process_mask(protos, rows[:, 6:], rows[:, :4], in_shape)
            keep = bitmaps.reshape(len(bitmaps), -1).any(1)  # SegmentationPredictor drops boxes whose mask is empty
            rows, bitmaps = rows[keep], bitmaps[keep]
            masks = Masks([_unletterbox(_mask_outline(m), in_shape, shape, points=True) for m in bitmaps])
        boxes = Boxes(_unletterbox(rows[:, :4].copy(), in_shape, shape), rows[:, 4], rows[:, 5])
        keypoints = None
        if self.task == "pose":
            assert self.kpt_shape is not None
            kpts = _unletterbox(rows[:, 6:].reshape(len(rows), *self.kpt_shape).copy(), in_shape, shape, points=True)
            keypoints = Keypoints(kpts[..., :2], kpts[..., 2] if self.kpt_shape[1] == 3 else None)
        return Result(shape, boxes=boxes, masks=masks, keypoints=keypoints)


def _check_imgsz(imgsz: int | tuple[int, int] | list[int], stride: int) -> tuple[int, int]:
    """(height, width), each rounded up to a multiple of stride, as ultralytics.utils.checks.check_imgsz(min_dim=2)."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    rounded = [max(math.ceil(s / stride) * stride, stride) for s in sizes]
    return (rounded[0], rounded[-1])


def _letterbox(image: np.ndarray, size: tuple[int, int], auto: bool, stride: int) -> np.ndarray:
    """Resized to fit size keeping its aspect (cv2 bilinear), centred on grey 114 padding; with auto only the
    padding up to a multiple of stride is kept. As ultralytics.data.augment.LetterBox (get_params, apply_image)."""
    h, w = image.shape[:2]
    r = min(size[0] / h, size[1] / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = size[1] - new_w, size[0] - new_h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom, left, right = round(dh / 2 - 0.1), round(dh / 2 + 0.1), round(dw / 2 - 0.1), round(dw / 2 + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(LETTERBOX_FILL,) * 3)


def _unletterbox(
    xy: np.ndarray, in_shape: tuple[int, ...], orig_shape: tuple[int, int], xywh: bool = False, points: bool = False
) -> np.ndarray:
    """Letterboxed pixels -> original pixels, in place, then clipped to the image unless xywh. The last axis is
    x1, y1, x2, y2 (a box), x, y, w, h (xywh), or x, y[, more] (points: as ultralytics.utils.ops.scale_coords).
    Gains and padding recomputed from the two shapes as ultralytics.utils.ops.scale_boxes does."""
    gain = min(in_shape[0] / orig_shape[0], in_shape[1] / orig_shape[1])
    new_h, new_w = (max(round(s * gain), 1) for s in orig_shape)
    gain_x, gain_y = new_w / orig_shape[1], new_h / orig_shape[0]
    pad_x, pad_y = round((in_shape[1] - new_w) / 2 - 0.1), round((in_shape[0] - new_h) / 2 - 0.1)
    xs, ys = (slice(0, 1), slice(1, 2)) if points else (slice(0, 4, 2), slice(1, 4, 2))
    xy[..., 0] -= pad_x
    xy[..., 1] -= pad_y
    if not (points or xywh):
        xy[..., 2] -= pad_x
        xy[..., 3] -= pad_y
    xy[..., xs] /= gain_x
    xy[..., ys] /= gain_y
    if not xywh:  # clip_boxes / clip_coords
        xy[..., xs] = xy[..., xs].clip(0, orig_shape[1])
        xy[..., ys] = xy[..., ys].clip(0, orig_shape[0])
    return xy


def _nms(pred: np.ndarray, conf: float, nc: int, rotated: bool) -> np.ndarray:
    """One image's raw output (4 + nc + extra, anchors) -> kept rows (box, conf, cls, extra...), best first, as
    ultralytics.utils.nms.non_max_suppression: best class only, conf strictly above, xywh -> xyxy (obb keeps
    xywh and its angle, the last extra), at most MAX_NMS in, class-aware by offsetting each class's boxes by
    cls * MAX_WH, greedy IoU NMS (torchvision.ops.nms) or for obb Fast-NMS on probiou (TorchNMS.fast_nms), MAX_DET out."""
    x = pred.T
    scores = x[:, 4 : 4 + nc]
    cls = scores.argmax(1)
    best = np.take_along_axis(scores, cls[:, None], 1)
    box = x[:, :4] if rotated else np.concatenate([x[:, :2] - x[:, 2:4] / 2, x[:, :2] + x[:, 2:4] / 2], 1)
    rows = np.concatenate([box, best, cls[:, None].astype(np.float32), x[:, 4 + nc :]], 1)[best[:, 0] > conf]
    if len(rows) > MAX_NMS:
        rows = rows[np.argsort(-rows[:, 4], kind="stable")[:MAX_NMS]]
    offset = rows[:, 5:6] * MAX_WH
    if rotated:
        keep = _fast_nms_probiou(np.concatenate([rows[:, :2] + offset, rows[:, 2:4], rows[:, -1:]], 1), rows[:, 4])
    else:
        keep = _greedy_nms(rows[:, :4] + offset, rows[:, 4])
    kept: np.ndarray = rows[keep[:MAX_DET]]
    return kept


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices kept, best first: each box suppresses the lower-scored ones with IoU > IOU (torchvision.ops.nms)."""
    order, keep = np.argsort(-scores, kind="stable"), []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = (np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0])).clip(0)
        h = (np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1])).clip(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = w * h / (areas[i] + areas[rest] - w * h)
        order = rest[~(iou > IOU)]  # a NaN (two empty boxes) suppresses nothing, as in torchvision
    return np.array(keep, dtype=np.int64)


def _fast_nms_probiou(xywhr: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices kept, best first: Fast-NMS (a box goes if any better box, kept or not, overlaps it by more than IOU),
    with probiou as overlap, as ultralytics.utils.nms.TorchNMS.fast_nms(iou_func=batch_probiou)."""
    order = np.argsort(-scores, kind="stable")
    ious = np.triu(_probiou(xywhr[order]), 1)
    kept: np.ndarray = order[(ious > IOU).sum(0) <= 0]
    return kept


def _probiou(b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """(N, N) probabilistic IoU of rotated boxes (x, y, w, h, angle), as ultralytics.utils.metrics.batch_probiou."""
    var_w, var_h, cos, sin = b[:, 2] ** 2 / 12, b[:, 3] ** 2 / 12, np.cos(b[:, 4]), np.sin(b[:, 4])
    a, bb, c = var_w * cos**2 + var_h * sin**2, var_w * sin**2 + var_h * cos**2, (var_w - var_h) * cos * sin
    a1, b1, c1, x1, y1 = a[:, None], bb[:, None], c[:, None], b[:, 0:1], b[:, 1:2]
    a2, b2, c2, x2, y2 = a[None], bb[None], c[None], b[None, :, 0], b[None, :, 1]
    denominator = (a1 + a2) * (b1 + b2) - (c1 + c2) ** 2
    t1 = ((a1 + a2) * (y1 - y2) ** 2 + (b1 + b2) * (x1 - x2) ** 2) / (denominator + eps) * 0.25
    t2 = (c1 + c2) * (x2 - x1) * (y1 - y2) / (denominator + eps) * 0.5
    t3 = np.log(denominator / (4 * np.sqrt((a1 * b1 - c1**2).clip(0) * (a2 * b2 - c2**2).clip(0)) + eps) + eps) * 0.5
    distance = np.clip(t1 + t2 + t3, eps, 100.0)
    iou: np.ndarray = 1 - np.sqrt(1.0 - np.exp(-distance) + eps)
    return iou


def _xywhr2xyxyxyxy(xywhr: np.ndarray) -> np.ndarray:
    """(N, 5) -> (N, 4, 2) corners, in ultralytics.utils.ops.xywhr2xyxyxyxy's order."""
    ctr, cos, sin = xywhr[:, None, :2], np.cos(xywhr[:, 4]), np.sin(xywhr[:, 4])
    vec1 = np.stack([xywhr[:, 2] / 2 * cos, xywhr[:, 2] / 2 * sin], -1)[:, None]
    vec2 = np.stack([-xywhr[:, 3] / 2 * sin, xywhr[:, 3] / 2 * cos], -1)[:, None]
    return np.concatenate([ctr + vec1 + vec2, ctr + vec1 - vec2, ctr - vec1 - vec2, ctr - vec1 + vec2], 1)


def _process_mask(protos: np.ndarray, coefficients: np.ndarray, boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, H, W) uint8 masks at the letterboxed size, as ultralytics.utils.ops.process_mask(upsample=True): coefficients @
    prototypes, upsampled bilinearly (cv2's INTER_LINEAR samples as F.interpolate), > 0, cropped to the box (crop_mask)."""
    c, mh, mw = protos.shape
    logits = (coefficients @ protos.reshape(c, -1)).reshape(-1, mh, mw)
    cols, rows = np.arange(shape[1], dtype=np.float32), np.arange(shape[0], dtype=np.float32)
    masks = np.empty((len(logits), shape[0], shape[1]), np.uint8)
    for m, (logit, (x1, y1, x2, y2)) in enumerate(zip(logits, boxes, strict=True)):
        up = cv2.resize(logit, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) > 0
        masks[m] = up & ((rows >= y1) & (rows < y2))[:, None] & ((cols >= x1) & (cols < x2))[None]
    return masks


def _mask_outline(mask: np.ndarray) -> np.ndarray:
    """(P, 2) float32 outline of a mask: its outer contours, several joined into one, as
    ultralytics.utils.ops.masks2segments(strategy="all") with data.converter.merge_multi_segment."""
    contours = [c.reshape(-1, 2) for c in cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]]
    if not contours:
        return np.zeros((0, 2), np.float32)
    if len(contours) == 1:
        return contours[0].astype(np.float32)
    # merge_multi_segment: link neighbours at their closest points (min_index), walk there and back along the chain.
    links: list[list[int]] = [[] for _ in contours]
    for i in range(1, len(contours)):
        distances = ((contours[i - 1][:, None, :] - contours[i][None, :, :]) ** 2).sum(-1)
        a, b = np.unravel_index(np.argmin(distances, axis=None), distances.shape)
        links[i - 1].append(int(a))
        links[i].append(int(b))
    pieces, last = [], len(contours) - 1
    for i in range(len(contours)):
        link = links[i]
        if len(link) == 2 and link[0] > link[1]:  # entered after it is left: walk the contour backwards
            link, contours[i] = [len(contours[i]) - 1 - x for x in link], contours[i][::-1]
        contours[i] = np.roll(contours[i], -link[0], axis=0)
        contours[i] = np.concatenate([contours[i], contours[i][:1]])
        pieces.append(contours[i] if i in {0, last} else contours[i][: link[1] - link[0] + 1])
    pieces += [contours[i][abs(links[i][1] - links[i][0]) :] for i in range(last - 1, 0, -1)]
    return np.concatenate(pieces).astype(np.float32)


def _classify_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(3, h, w) float32 RGB in [0, 1]: as ultralytics.data.augment.classify_transforms on a PIL image, i.e.
    torchvision's Resize (shortest side to size for a square size, else exactly size) with PIL's antialiased
    bilinear filter, CenterCrop, ToTensor; its Normalize (DEFAULT_MEAN 0, DEFAULT_STD 1) changes nothing."""
    h, w = image.shape[:2]
    if size[0] == size[1]:  # torchvision.transforms.functional._compute_resized_output_size
        short, long = min(h, w), max(h, w)
        out_h, out_w = (int(size[0] * long / short), size[0]) if w <= h else (size[0], int(size[0] * long / short))
    else:
        out_h, out_w = size
    # Pillow itself: its antialiased bilinear filter (widened by the reduction factor, rounded between its two
    # passes) is what ultralytics resizes with; OpenCV's INTER_LINEAR/INTER_AREA move probabilities by ~1e-2.
    image = np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.Resampling.BILINEAR))
    top, left = round((out_h - size[0]) / 2.0), round((out_w - size[1]) / 2.0)
    crop = image[top : top + size[0], left : left + size[1]]
    return crop[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255
