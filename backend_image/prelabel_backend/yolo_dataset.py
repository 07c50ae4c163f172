"""Label Studio annotations in, an ultralytics dataset out: the inverse of results.py.

Coordinates: Label Studio's regions are in percent of the original image (x, y, width, height of a
rectangle; its rotation in degrees, clockwise, about the top-left corner; polygon points in percent);
ultralytics' labels are normalised to 0-1 (a box as its centre and size, an oriented box as its four
corners, a polygon as its points). The rotated rectangle's corners come from label-studio-sdk's own
converter (convert_annotation_to_yolo_obb), as results.py uses its inverse.

Classes are the model's (its `names`, by index): a region's label is mapped back through the
control's label map (predicted_values, then the exact and case-insensitive matches, as the backend
predicts); a label no model class maps to is skipped and counted, never guessed. An annotation with
no region of the control is a negative image (an empty label file): a person said the image holds
none of the labels. One image per task (a single-image task's data field).

Pose (KeyPointLabels) and brush masks (BrushLabels) are refused with UnsupportedTask: grouping
keypoints into instances, and decoding RLE masks, are not built yet.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .label_config import Control

SPLITS = ("train", "val")
RESULT_TYPES = {"detect": "rectanglelabels", "obb": "rectanglelabels", "segment": "polygonlabels", "classify": "choices"}


class UnsupportedTask(ValueError):
    """The control's task cannot be trained yet."""


@dataclass
class Example:
    """One annotated image: its bytes' file suffix, its size in pixels, the annotation's regions."""

    task: int
    image: bytes
    width: int
    height: int
    result: Sequence[Mapping[str, Any]]
    suffix: str = ".png"


@dataclass
class Written:
    """What a dataset holds: images per split, regions written, labels skipped (label -> regions)."""

    images: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    regions: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


def class_ids(control: Control, names: Mapping[int, str]) -> dict[str, int]:
    """Label value -> the model's class id, through the control's label map (the inverse of what the
    backend predicts: a label several classes map to takes the first class)."""
    ordered = [names[i] for i in sorted(names)]
    ids: dict[str, int] = {}
    for cls, label in control.label_map(ordered).items():
        ids.setdefault(label, ordered.index(cls))
    return ids


def _label(region: Mapping[str, Any], kind: str) -> str | None:
    values = (region.get("value") or {}).get(kind) or []
    return str(values[0]) if values else None


def _corners(value: Mapping[str, Any], width: int, height: int) -> list[tuple[float, float]]:
    """The rectangle's four corners, normalised, rotation included (label-studio-sdk's converter)."""
    from label_studio_sdk.converter.utils import convert_annotation_to_yolo_obb

    corners = convert_annotation_to_yolo_obb({**value, "rotation": float(value.get("rotation") or 0),
                                              "original_width": width, "original_height": height})
    if corners is None:
        raise ValueError(f"a rectangle without x, y, width and height: {dict(value)}")
    return [(float(x), float(y)) for x, y in corners]


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))


def label_lines(control: Control, example: Example, ids: Mapping[str, int], skipped: Counter[str]) -> list[str]:
    """The YOLO label file's lines for one example (detect, obb, segment), skipped labels counted."""
    kind = RESULT_TYPES[control.task]
    lines = []
    for region in example.result:
        if region.get("from_name") != control.name or region.get("type") != kind:
            continue
        label = _label(region, kind)
        if label is None:
            continue
        if label not in ids:
            skipped[label] += 1
            continue
        value = region["value"]
        if control.task == "segment":
            points = [(_clip(float(x) / 100), _clip(float(y) / 100)) for x, y in value.get("points") or []]
            if len(points) >= 3:
                lines.append(" ".join([str(ids[label]), *(f"{c:.6f}" for p in points for c in p)]))
            continue
        corners = [(_clip(x), _clip(y)) for x, y in _corners(value, example.width, example.height)]
        if control.task == "obb":
            lines.append(" ".join([str(ids[label]), *(f"{c:.6f}" for p in corners for c in p)]))
            continue
        xs, ys = [x for x, _ in corners], [y for _, y in corners]
        w, h = max(xs) - min(xs), max(ys) - min(ys)
        if w > 0 and h > 0 and math.isfinite(w + h):
            lines.append(f"{ids[label]} {(min(xs) + max(xs)) / 2:.6f} {(min(ys) + max(ys)) / 2:.6f} {w:.6f} {h:.6f}")
    return lines


def write(root: Path, control: Control, names: Mapping[int, str], splits: Mapping[str, Iterable[Example]]) -> tuple[Path, Written]:
    """Writes the dataset under `root` ("train" and "val" splits) and returns what ultralytics'
    train(data=...) takes (data.yaml, or the folder for classify) and what was written.
    Raises UnsupportedTask for pose and brush controls."""
    if control.task not in RESULT_TYPES:
        raise UnsupportedTask(f'<{control.tag} name="{control.name}">: training a {control.task} model is not supported yet '
                              "(detect, obb, segment and classify are); set spec.training.control to another control")
    ids, written = class_ids(control, names), Written()
    for split, examples in splits.items():
        for example in examples:
            stem = f"task-{example.task}"
            if control.task == "classify":
                chosen = next((_label(r, "choices") for r in example.result if r.get("from_name") == control.name), None)
                if chosen is None or chosen not in ids:
                    if chosen is not None:
                        written.skipped[chosen] += 1
                    continue
                folder = root / split / names[ids[chosen]]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{stem}{example.suffix}").write_bytes(example.image)
                written.images[split] += 1
                written.regions += 1
                continue
            images, labels = root / "images" / split, root / "labels" / split
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            lines = label_lines(control, example, ids, written.skipped)
            (images / f"{stem}{example.suffix}").write_bytes(example.image)
            (labels / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
            written.images[split] += 1
            written.regions += len(lines)
    if control.task == "classify":
        for split in SPLITS:  # ultralytics wants every class folder on both sides
            for name in names.values():
                (root / split / name).mkdir(parents=True, exist_ok=True)
        return root, written
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": {int(i): str(n) for i, n in names.items()}}))
    return data, written
