"""How well a model's pre-labels agree with what people then submitted on the same tasks: precision
and recall per model version, pure (no I/O, no numpy: the operator's image has neither numpy nor cv2).

Shapes are Label Studio's result JSON, as the backend writes them (backend_image/prelabel_backend/
results.py): each region has `from_name`, `type` and `value`; coordinates are percent (0-100) of the
image's width and height; a rectangle's `rotation` is in degrees, clockwise on screen, about its
top-left corner (x, y) (label_studio_sdk.converter.utils.convert_annotation_to_yolo_obb reads it so).

A match (a true positive) pairs one predicted region with one annotated region of the same control
(`from_name`) and the same labels; pairs are made greedily, best first, each region in at most one:

- rectanglelabels (rectangle): IoU >= `IOU_THRESHOLD` (0.5), exact, by convex polygon clipping
  (Sutherland-Hodgman) of the two boxes. A rotation needs the image's aspect ratio: a region's
  `original_width`/`original_height`, else the first region of either result that has them, else
  square pixels are assumed (width and height percent as equal units).
- polygonlabels (polygon): IoU >= 0.5 of simple polygons, concave ones included, by scanlines: the
  pair's bounding box is cut into `SCANLINES` (256) rows, each row's centre line is intersected with
  both polygons exactly (even-odd rule) and the row counts as that length times its height. An
  approximation (the midpoint rule): exact where no vertex falls inside a row, off by a fraction of a
  row's area per vertex otherwise. IoU is unchanged by the image's aspect ratio, so percent is used.
- keypointlabels (keypoint): within `KEYPOINT_DISTANCE` (2.0) of each other, Euclidean, in percent
  (x in percent of the width, y in percent of the height); the nearest pairs first.
- choices and taxonomy: per control, the same set of choices (taxonomy paths) is one true positive;
  different sets are one false positive and one false negative; a control on one side only is a
  false positive (predicted) or a false negative (annotated). Precision and recall are then over
  classifications.
- Not compared (`skipped`): brushlabels (RLE masks; decoding them is left out), hidden regions (the
  pose model's grouping boxes, `<name>_bbox`, which the editor hides), and every other type
  (video, timeline, text...).

Unmatched predicted regions are false positives, unmatched annotated regions false negatives.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import training

IOU_THRESHOLD = 0.5
KEYPOINT_DISTANCE = 2.0  # percent, see the module's docstring
SCANLINES = 256

Point = tuple[float, float]
Result = Sequence[Mapping[str, Any]]
HumanRule = Callable[[training.Annotation, Mapping[int, Result]], bool]

_KINDS = {"rectanglelabels": "rectangle", "rectangle": "rectangle", "polygonlabels": "polygon", "polygon": "polygon",
          "keypointlabels": "keypoint", "keypoint": "keypoint", "choices": "choices", "taxonomy": "choices"}


@dataclass(frozen=True)
class Counts:
    """True positives, false positives (predicted, unmatched), false negatives (annotated, unmatched);
    `compared`: regions of both sides of a compared kind; `skipped`: regions of both sides not compared."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    compared: int = 0
    skipped: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.compared + other.compared,
                      self.skipped + other.skipped)


@dataclass(frozen=True)
class Agreement:
    """One model version's agreement over `tasks` tasks (each with a prediction of that version and a
    human annotation)."""

    tasks: int
    counts: Counts

    @property
    def precision(self) -> float | None:
        """tp / (tp + fp); None when the version predicted no compared region on these tasks."""
        predicted = self.counts.tp + self.counts.fp
        return self.counts.tp / predicted if predicted else None

    @property
    def recall(self) -> float | None:
        """tp / (tp + fn); None when people annotated no compared region on these tasks."""
        annotated = self.counts.tp + self.counts.fn
        return self.counts.tp / annotated if annotated else None


# -- geometry ---------------------------------------------------------------------------------------
def _area(polygon: Sequence[Point]) -> float:
    """Signed area (shoelace): positive when the vertices turn counter-clockwise in (x right, y up)."""
    if len(polygon) < 3:
        return 0.0
    return sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(polygon, [*polygon[1:], polygon[0]], strict=True)) / 2


def _clip(subject: Sequence[Point], clipper: Sequence[Point]) -> list[Point]:
    """Sutherland-Hodgman: the part of `subject` inside the convex `clipper` (both counter-clockwise)."""
    output = list(subject)
    for (ax, ay), (bx, by) in zip(clipper, [*clipper[1:], clipper[0]], strict=True):
        if not output:
            break
        def side(p: Point, ax: float = ax, ay: float = ay, bx: float = bx, by: float = by) -> float:
            return (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)  # >= 0: left of a->b, inside

        points, output = output, []
        for current, following in zip(points, [*points[1:], points[0]], strict=True):
            s1, s2 = side(current), side(following)
            if s1 >= 0:
                output.append(current)
            if (s1 >= 0) != (s2 >= 0):
                t = s1 / (s1 - s2)
                output.append((current[0] + t * (following[0] - current[0]), current[1] + t * (following[1] - current[1])))
    return output


def convex_iou(a: Sequence[Point], b: Sequence[Point]) -> float:
    """Exact IoU of two convex polygons (any orientation), 0.0 when their union has no area."""
    area_a, area_b = _area(a), _area(b)
    a = a if area_a >= 0 else a[::-1]
    b = b if area_b >= 0 else b[::-1]
    inter = abs(_area(_clip(a, b))) if abs(area_a) and abs(area_b) else 0.0
    union = abs(area_a) + abs(area_b) - inter
    return inter / union if union > 0 else 0.0


def rectangle_corners(value: Mapping[str, Any], width: float, height: float) -> list[Point]:
    """A Label Studio rectangle's corners in pixels of a `width` x `height` image: top-left, top-right,
    bottom-right, bottom-left before rotation, turned by `rotation` degrees about the top-left corner."""
    x, y = float(value["x"]) / 100 * width, float(value["y"]) / 100 * height
    w, h = float(value["width"]) / 100 * width, float(value["height"]) / 100 * height
    angle = math.radians(float(value.get("rotation") or 0))
    cos, sin = math.cos(angle), math.sin(angle)
    return [(x, y), (x + w * cos, y + w * sin), (x + w * cos - h * sin, y + w * sin + h * cos), (x - h * sin, y + h * cos)]


def _spans(polygon: Sequence[Point], y: float) -> list[tuple[float, float]]:
    """Where the horizontal line at `y` is inside `polygon` (even-odd rule), as sorted intervals."""
    xs = sorted(x1 + (y - y1) * (x2 - x1) / (y2 - y1)
                for (x1, y1), (x2, y2) in zip(polygon, [*polygon[1:], polygon[0]], strict=True)
                if (y1 <= y < y2) or (y2 <= y < y1))
    return list(zip(xs[::2], xs[1::2], strict=True))


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


def polygon_iou(a: Sequence[Point], b: Sequence[Point], rows: int = SCANLINES) -> float:
    """IoU of two simple polygons (concave ones included), by `rows` scanlines across the pair's
    bounding box (the module's docstring: an approximation). 0.0 when either has fewer than 3 points."""
    if len(a) < 3 or len(b) < 3:
        return 0.0
    top, bottom = min(p[1] for p in (*a, *b)), max(p[1] for p in (*a, *b))
    if bottom <= top:
        return 0.0
    step = (bottom - top) / rows
    inter = area_a = area_b = 0.0
    for row in range(rows):
        y = top + (row + 0.5) * step
        spans_a, spans_b = _spans(a, y), _spans(b, y)
        area_a += sum(x2 - x1 for x1, x2 in spans_a)
        area_b += sum(x2 - x1 for x1, x2 in spans_b)
        inter += _overlap(spans_a, spans_b)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


# -- regions ----------------------------------------------------------------------------------------
def _size(regions: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
    for region in regions:
        width, height = region.get("original_width"), region.get("original_height")
        if width and height:
            return float(width), float(height)
    return 100.0, 100.0  # square pixels: percent of the width and of the height as equal units


def _labels(region: Mapping[str, Any]) -> tuple[Any, ...]:
    value = region.get("value") or {}
    labels = value.get(region.get("type")) or value.get("labels") or ()
    return tuple(sorted(tuple(label) if isinstance(label, list) else label for label in labels))  # taxonomy: paths


def _need(region: Mapping[str, Any], *keys: str) -> Mapping[str, Any]:
    value = region.get("value")
    missing = [k for k in keys if not isinstance(value, Mapping) or value.get(k) is None]
    if missing:
        raise ValueError(f"a {region.get('type')} region of {region.get('from_name')!r} has no value.{', value.'.join(missing)}")
    assert isinstance(value, Mapping)
    return value


def _greedy(scores: Iterable[tuple[float, int, int]]) -> int:
    """Greedy one-to-one matching: (score, predicted index, annotated index) pairs, best first (ties
    by index), each index used once. Returns the number of pairs matched."""
    used_p: set[int] = set()
    used_a: set[int] = set()
    for _, i, j in sorted(scores, key=lambda s: (-s[0], s[1], s[2])):
        if i not in used_p and j not in used_a:
            used_p.add(i)
            used_a.add(j)
    return len(used_p)


def _match(kind: str, predicted: list[Mapping[str, Any]], annotated: list[Mapping[str, Any]], fallback: Mapping[str, Any]) -> int:
    """Matched pairs among regions of one kind, one control and one set of labels. `fallback`: the
    image size to use for a rectangle without its own (original_width/height, possibly empty)."""
    scores: list[tuple[float, int, int]] = []
    if kind == "rectangle":
        p_shapes = [rectangle_corners(_need(r, "x", "y", "width", "height"), *_size([r, fallback])) for r in predicted]
        a_shapes = [rectangle_corners(_need(r, "x", "y", "width", "height"), *_size([r, fallback])) for r in annotated]
        scores = [(iou, i, j) for i, p in enumerate(p_shapes) for j, a in enumerate(a_shapes)
                  if (iou := convex_iou(p, a)) >= IOU_THRESHOLD]
    elif kind == "polygon":
        p_polys = [[(float(x), float(y)) for x, y in _need(r, "points")["points"]] for r in predicted]
        a_polys = [[(float(x), float(y)) for x, y in _need(r, "points")["points"]] for r in annotated]
        scores = [(iou, i, j) for i, p in enumerate(p_polys) for j, a in enumerate(a_polys)
                  if (iou := polygon_iou(p, a)) >= IOU_THRESHOLD]
    elif kind == "keypoint":
        p_points = [(float(_need(r, "x", "y")["x"]), float(r["value"]["y"])) for r in predicted]
        a_points = [(float(_need(r, "x", "y")["x"]), float(r["value"]["y"])) for r in annotated]
        scores = [(-distance, i, j) for i, p in enumerate(p_points) for j, a in enumerate(a_points)
                  if (distance := math.dist(p, a)) <= KEYPOINT_DISTANCE]
    return _greedy(scores)


def _choices(region: Mapping[str, Any]) -> frozenset[Any]:
    return frozenset(_labels(region))


def compare(prediction_result: Result, annotation_result: Result) -> Counts:
    """Counts of one prediction's `result` against one annotation's `result` on the same task (the
    module's rules). Raises ValueError naming the region when a compared region lacks a coordinate."""
    sized = next((r for r in (*prediction_result, *annotation_result) if r.get("original_width") and r.get("original_height")), None)
    fallback = {"original_width": sized["original_width"], "original_height": sized["original_height"]} if sized else {}
    groups: dict[tuple[str, Any, tuple[Any, ...]], tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]] = defaultdict(lambda: ([], []))
    choices: dict[Any, tuple[set[Any] | None, set[Any] | None]] = {}
    skipped = compared = 0
    for side, result in enumerate((prediction_result, annotation_result)):
        for region in result:
            kind = _KINDS.get(str(region.get("type", "")).lower())
            if kind is None or region.get("hidden"):
                skipped += 1
                continue
            compared += 1
            if kind == "choices":
                sets = list(choices.get(region.get("from_name"), (None, None)))
                sets[side] = (sets[side] or set()) | _choices(region)
                choices[region.get("from_name")] = (sets[0], sets[1])
            else:
                groups[(kind, region.get("from_name"), _labels(region))][side].append(region)
    tp = fp = fn = 0
    for (kind, _, _), (predicted, annotated) in groups.items():
        matched = _match(kind, predicted, annotated, fallback)
        tp, fp, fn = tp + matched, fp + len(predicted) - matched, fn + len(annotated) - matched
    for predicted_set, annotated_set in choices.values():
        if predicted_set is not None and predicted_set == annotated_set:
            tp += 1
        else:
            fp += predicted_set is not None
            fn += annotated_set is not None
    return Counts(tp, fp, fn, compared, skipped)


# -- per model version ------------------------------------------------------------------------------
def by_version(tasks: Iterable[Mapping[str, Any]], is_human: HumanRule = training.is_human) -> dict[str, Agreement]:
    """Agreement per model version over Label Studio tasks (the API's or an export's JSON: `id`,
    `predictions` [{id, model_version, result}], `annotations` [{id, result, updated_at, was_cancelled,
    ground_truth, parent_prediction}]).

    Each task counts once per model version that predicted it: that version's latest prediction
    (greatest id) against the task's one human annotation (`training.pick` among those `is_human`
    accepts, skipped ones never). Tasks without a human annotation are left out. Raises ValueError
    naming the task for an annotation or region it cannot read.

    Bias to know: with `training.is_human`, a prediction submitted unchanged is not a human
    annotation (it may be a script's copy), so tasks where a person accepted the model's regions as
    they were are left out and the agreement reads lower than a person would judge it. Pass another
    rule (e.g. any submitted annotation) to count them."""
    totals: dict[str, tuple[int, Counts]] = {}
    for task in tasks:
        task_id = task.get("id")
        try:
            predictions = [p for p in task.get("predictions") or [] if isinstance(p, Mapping)]
            by_id = {int(p["id"]): list(p.get("result") or []) for p in predictions if p.get("id") is not None}
            annotations = [training.from_label_studio({**raw, "task": raw.get("task", 0) if task_id is None else task_id})
                           for raw in task.get("annotations") or []]
            human = [a for a in annotations if not a.was_cancelled and is_human(a, by_id)]
            picked = training.pick(human)
            if not picked:
                continue
            (annotation,) = picked.values()
            latest: dict[str, Mapping[str, Any]] = {}
            for p in predictions:
                version = str(p.get("model_version") or "")
                if version not in latest or int(p.get("id") or 0) >= int(latest[version].get("id") or 0):
                    latest[version] = p
            for version, prediction in latest.items():
                counts = compare(list(prediction.get("result") or []), annotation.result)
                seen, total = totals.get(version, (0, Counts()))
                totals[version] = (seen + 1, total + counts)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"task {task_id}: {e}") from e
    return {version: Agreement(tasks=seen, counts=counts) for version, (seen, counts) in sorted(totals.items())}
