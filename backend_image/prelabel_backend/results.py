"""ultralytics Results -> Label Studio result JSON, one function per kind of control.

Regions are in percent of the original image (x, y, width, height; rotation for oriented boxes),
each with original_width/original_height, a score, and the label mapped by the control's
label map. Detections below the control's threshold or with no mapped label are dropped.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from .label_config import Control, LabelConfig

log = logging.getLogger(__name__)
Region = dict[str, Any]


def _region(control: Control, value: dict[str, Any], score: float, width: int, height: int, **extra: Any) -> Region:
    return {
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": value,
        "score": round(score, 4),
        **extra,
    }


def _kept(control: Control, names: list[str], label_map: dict[str, str], cls: int, score: float) -> str | None:
    if score < control.threshold:
        return None
    return label_map.get(names[cls])


def rectangles(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    height, width = result.orig_shape
    label_map = control.label_map(names)
    regions = []
    for (x1, y1, x2, y2), cls, score in zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), result.boxes.conf.tolist(), strict=True):
        label = _kept(control, names, label_map, int(cls), score)
        if label is None:
            continue
        value = {"x": x1 / width * 100, "y": y1 / height * 100, "width": (x2 - x1) / width * 100,
                 "height": (y2 - y1) / height * 100, "rotation": 0, "rectanglelabels": [label]}
        regions.append(_region(control, value, score, width, height))
    return regions


def oriented_rectangles(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    if result.obb is None:
        raise ValueError(f'<RectangleLabels name="{control.name}"> has model_obb="true" but its model gives plain boxes')
    height, width = result.orig_shape
    label_map = control.label_map(names)
    regions = []
    for corners, cls, score in zip(result.obb.xyxyxyxy.tolist(), result.obb.cls.tolist(), result.obb.conf.tolist(), strict=True):
        label = _kept(control, names, label_map, int(cls), score)
        if label is None:
            continue
        # Imported here: label_studio_sdk's converter package imports nltk (0.7 s of cold start).
        from label_studio_sdk.converter.utils import convert_yolo_obb_to_annotation

        value = dict(convert_yolo_obb_to_annotation(np.asarray(corners).reshape(-1).tolist(), width, height))
        value = {k: float(v) for k, v in value.items()} | {"rectanglelabels": [label]}
        regions.append(_region(control, value, score, width, height))
    return regions


def _masks(control: Control, result: Any) -> list[np.ndarray]:
    if result.masks is None:
        if len(result.boxes):
            raise ValueError(f'<{control.tag} name="{control.name}"> needs a segmentation model but its model gives plain boxes')
        return []
    return [np.asarray(p) for p in result.masks.xy]


def polygons(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    height, width = result.orig_shape
    label_map = control.label_map(names)
    regions = []
    for outline, cls, score in zip(_masks(control, result), result.boxes.cls.tolist(), result.boxes.conf.tolist(), strict=True):
        label = _kept(control, names, label_map, int(cls), score)
        if label is None or len(outline) < 3:
            continue
        points = [[float(x) / width * 100, float(y) / height * 100] for x, y in outline]
        regions.append(_region(control, {"points": points, "closed": True, "polygonlabels": [label]}, score, width, height))
    return regions


def brushes(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    height, width = result.orig_shape
    label_map = control.label_map(names)
    regions = []
    for outline, cls, score in zip(_masks(control, result), result.boxes.cls.tolist(), result.boxes.conf.tolist(), strict=True):
        label = _kept(control, names, label_map, int(cls), score)
        if label is None or len(outline) < 3:
            continue
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 255)
        from label_studio_sdk.converter.brush import mask2rle  # lazily, as above

        value = {"format": "rle", "rle": mask2rle(mask), "brushlabels": [label]}
        regions.append(_region(control, value, score, width, height))
    return regions


def _picked(control: Control, result: Any, names: list[str]) -> list[tuple[float, str]]:
    """(probability, label) chosen from a classification: the best one, or with choice="multiple"
    every label at or over the threshold (HumanSignal's example reads `choice` the same way)."""
    label_map = control.label_map(names)
    probs = result.probs.data.tolist()
    ranked = sorted(((p, label_map[names[i]]) for i, p in enumerate(probs) if names[i] in label_map), reverse=True)
    if control.attrs.get("choice") == "multiple":
        return [(p, label) for p, label in ranked if p >= control.threshold]
    return ranked[:1] if ranked and ranked[0][0] >= control.threshold else []


def choices(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    height, width = result.orig_shape
    picked = _picked(control, result, names)
    if not picked:
        return []
    score = float(picked[0][0])
    return [_region(control, {"choices": [label for _, label in picked]}, score, width, height)]


def taxonomy(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    """Like choices, in Label Studio's Taxonomy format: `{"taxonomy": [[root, ..., choice], ...]}`,
    one path per picked choice (its ancestors' values first)."""
    height, width = result.orig_shape
    picked = _picked(control, result, names)
    if not picked:
        return []
    paths = [list(control.paths.get(label, (label,))) for _, label in picked]
    return [_region(control, {"taxonomy": paths}, float(picked[0][0]), width, height)]


def keypoints(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    """One region per keypoint, grouped under a hidden parent box when the config has `<name>_bbox`."""
    if result.keypoints is None:
        raise ValueError(f'<KeyPointLabels name="{control.name}"> needs a pose model')
    height, width = result.orig_shape
    point_labels = {(cls, index): label for label, (cls, index) in control.point_indexes.items()}
    classes_with_points = {cls for cls, _ in point_labels}
    bbox_name = f"{control.name}_bbox"
    with_boxes = control.flag("model_add_bboxes", True) and config.has_control(bbox_name, "RectangleLabels")
    point_size = control.number("model_point_size", 1.0)
    point_threshold = control.number("model_point_threshold", 0.0)
    regions: list[Region] = []
    xy = result.keypoints.xy.tolist()
    conf = result.keypoints.conf.tolist() if result.keypoints.conf is not None else [[1.0] * len(p) for p in xy]
    for i, (box, cls, score) in enumerate(zip(result.boxes.xyxy.tolist(), result.boxes.cls.tolist(), result.boxes.conf.tolist(), strict=True)):
        model_class = names[int(cls)]
        if score < control.threshold or model_class not in classes_with_points:
            continue
        group = f"{control.name}-{i}"
        if with_boxes:
            x1, y1, x2, y2 = box
            value = {"x": x1 / width * 100, "y": y1 / height * 100, "width": (x2 - x1) / width * 100,
                     "height": (y2 - y1) / height * 100, "rotation": 0, "rectanglelabels": [model_class]}
            regions.append({**_region(control, value, score, width, height), "id": group, "from_name": bbox_name,
                            "type": "rectanglelabels", "hidden": True, "meta": {"text": [group]}})
        for index, ((x, y), point_conf) in enumerate(zip(xy[i], conf[i], strict=True)):
            label = point_labels.get((model_class, index))
            if label is None or point_conf < point_threshold:
                continue
            value = {"x": x / width * 100, "y": y / height * 100, "width": point_size / width * 100, "keypointlabels": [label]}
            extra: dict[str, Any] = {"meta": {"text": [group]}}
            if with_boxes:
                extra["parentID"] = group
            regions.append(_region(control, value, float(point_conf), width, height, **extra))
    return regions


CONVERTERS: dict[tuple[str, str], Callable[[Control, LabelConfig, Any, list[str]], list[Region]]] = {
    ("RectangleLabels", "detect"): rectangles,
    ("RectangleLabels", "obb"): oriented_rectangles,
    ("PolygonLabels", "segment"): polygons,
    ("BrushLabels", "segment"): brushes,
    ("Choices", "classify"): choices,
    ("Taxonomy", "classify"): taxonomy,
    ("KeyPointLabels", "pose"): keypoints,
}


def video_rectangles(control: Control, results: list[Any], names: list[str], fps: float) -> list[Region]:
    """Tracked boxes -> one videorectangle region per track: a keyframe per frame the track was seen,
    `enabled: false` where it disappears (ends its lifespan line), labels from the linked <Labels>."""
    label_map = control.label_map(names)
    tracks: dict[int, list[dict[str, Any]]] = {}
    track_label: dict[int, str] = {}
    for index, result in enumerate(results):
        boxes = result.boxes
        if boxes is None or boxes.id is None:
            continue
        for track_id, (x, y, w, h), cls, score in zip(boxes.id.int().tolist(), boxes.xywhn.tolist(), boxes.cls.tolist(), boxes.conf.tolist(), strict=True):
            label = _kept(control, names, label_map, int(cls), score)
            if label is None:
                continue
            track_label.setdefault(track_id, label)
            tracks.setdefault(track_id, []).append({
                "frame": index + 1, "enabled": True, "rotation": 0, "x": (x - w / 2) * 100, "y": (y - h / 2) * 100,
                "width": w * 100, "height": h * 100, "time": index / fps, "score": round(float(score), 4)})
    regions = []
    for track_id, sequence in tracks.items():
        for before, after in itertools.pairwise(sequence):
            if after["frame"] - before["frame"] > 1:
                before["enabled"] = False  # a gap: the track is not interpolated through it
        sequence[-1]["enabled"] = False
        regions.append({
            "id": f"track-{track_id}", "from_name": control.name, "to_name": control.to_name, "type": "videorectangle",
            "value": {"framesCount": len(results), "duration": len(results) / fps, "sequence": sequence, "labels": [track_label[track_id]]},
            "score": max(k["score"] for k in sequence), "origin": "prediction",
        })
    return regions


def timeline(control: Control, results: list[Any], names: list[str], fps: float) -> list[Region]:
    """Per-frame classification -> one timelinelabels region per run of frames with the same label."""
    label_map = control.label_map(names)
    per_frame: list[tuple[str | None, float]] = []
    for result in results:
        probs = result.probs.data.tolist()
        ranked = sorted(((p, label_map[names[i]]) for i, p in enumerate(probs) if names[i] in label_map), reverse=True)
        per_frame.append((ranked[0][1], ranked[0][0]) if ranked and ranked[0][0] >= control.threshold else (None, 0.0))
    regions: list[Region] = []
    start = 0
    for index in range(1, len(per_frame) + 1):
        if index < len(per_frame) and per_frame[index][0] == per_frame[start][0]:
            continue
        label = per_frame[start][0]
        if label is not None:
            scores = [score for _, score in per_frame[start:index]]
            regions.append({"from_name": control.name, "to_name": control.to_name, "type": "timelinelabels",
                            "value": {"ranges": [{"start": start + 1, "end": index}], "timelinelabels": [label]},
                            "score": round(sum(scores) / len(scores), 4)})
        start = index
    return regions


def convert(control: Control, config: LabelConfig, result: Any, names: list[str]) -> list[Region]:
    return CONVERTERS[(control.tag, control.task)](control, config, result, names)


def task_score(regions: list[Region]) -> float:
    scores = [r["score"] for r in regions if "score" in r]
    return round(float(sum(scores) / len(scores)), 4) if scores else 0.0
