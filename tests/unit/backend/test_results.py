"""Each control's conversion, checked on real output of the project's own models against the
synthetic ground truth of fresh images (drawn with seeds the training never saw)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from prelabel_backend import results
from prelabel_backend.label_config import parse
from prelabel_backend.synthetic import Scene
from tests.conftest import SEED_CONFIG, scenes

LABELS = ('<Label value="Square" predicted_values="square"/><Label value="Circle" predicted_values="circle"/>'
          '<Label value="Triangle" predicted_values="triangle"/>')
TITLE = {"square": "Square", "circle": "Circle", "triangle": "Triangle"}


def run(store, settings, xml: str, batch: list[Scene]):  # noqa: ANN001, ANN201
    config = parse(xml, settings)
    control = config.controls[0]  # the control under test (a keypoint config also has its _bbox control)
    loaded = store.get(control.model_file)
    outputs = store.predict(loaded, [s.image for s in batch], conf=control.threshold)
    return [results.convert(control, config, out, loaded.names) for out in outputs]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / max(1, (a | b).sum()))


def match_rate(batch: list[Scene], regions: list[list[dict]], score) -> tuple[float, float]:  # noqa: ANN001
    """(recall, precision): a truth shape is found when a region with its label scores >= 0.5 with it."""
    found = total = predicted = correct = 0
    for scene, regs in zip(batch, regions, strict=True):
        total += len(scene.shapes)
        predicted += len(regs)
        used: set[int] = set()
        for shape_index, shape in enumerate(scene.shapes):
            for i, region in enumerate(regs):
                if i not in used and region["value"][region["type"]] == [TITLE[shape.cls]] and score(scene, shape_index, region) >= 0.5:
                    used.add(i)
                    found += 1
                    break
        correct += len(used)
    return found / total, correct / max(1, predicted)


def test_rectangles_find_the_shapes(store, settings) -> None:  # noqa: ANN001
    batch = scenes(101, 12)
    regions = run(store, settings, SEED_CONFIG, batch)

    def iou(scene: Scene, index: int, region: dict) -> float:
        v, w, h = region["value"], region["original_width"], region["original_height"]
        assert (w, h) == (scene.width, scene.height) and v["rotation"] == 0
        assert region["from_name"] == "label" and region["to_name"] == "image" and region["type"] == "rectanglelabels"
        assert 0.25 <= region["score"] <= 1
        box = (v["x"] * w / 100, v["y"] * h / 100, (v["x"] + v["width"]) * w / 100, (v["y"] + v["height"]) * h / 100)
        return box_iou(box, scene.shapes[index].box())

    recall, precision = match_rate(batch, regions, iou)
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)


def test_threshold_drops_low_scores(store, settings) -> None:  # noqa: ANN001
    batch = scenes(102, 4)
    strict = SEED_CONFIG.replace('model_score_threshold="0.25"', 'model_score_threshold="0.99"')
    for regs in run(store, settings, strict, batch):
        assert all(r["score"] >= 0.99 for r in regs)


def test_unmapped_classes_are_dropped(store, settings) -> None:  # noqa: ANN001
    xml = '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="Circle"/></RectangleLabels></View>'
    regions = [r for regs in run(store, settings, xml, scenes(103, 6)) for r in regs]
    assert regions and {tuple(r["value"]["rectanglelabels"]) for r in regions} == {("Circle",)}  # mapped case-insensitively


def test_oriented_rectangles_follow_the_rotation(store, settings) -> None:  # noqa: ANN001
    batch = scenes(104, 12, rotate=True)
    xml = f'<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image" model_obb="true">{LABELS}</RectangleLabels></View>'
    regions = run(store, settings, xml, batch)

    def overlap(scene: Scene, index: int, region: dict) -> float:
        v, w, h = region["value"], region["original_width"], region["original_height"]
        # Label Studio's rotated box: (x, y) is the top-left corner before rotation about it, in percent.
        x, y, bw, bh = v["x"] * w / 100, v["y"] * h / 100, v["width"] * w / 100, v["height"] * h / 100
        a = math.radians(v["rotation"])
        corners = np.array([[0, 0], [bw, 0], [bw, bh], [0, bh]]) @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]]) + [x, y]
        predicted = np.zeros((h, w), np.uint8)
        cv2.fillPoly(predicted, [np.round(corners).astype(np.int32)], 1)
        truth = np.zeros((h, w), np.uint8)
        cv2.fillPoly(truth, [np.round(scene.shapes[index].corners()).astype(np.int32)], 1)
        return mask_iou(predicted, truth)

    recall, precision = match_rate(batch, regions, overlap)
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    assert any(abs(r["value"]["rotation"]) > 5 for regs in regions for r in regs)


def test_polygons_outline_the_shapes(store, settings) -> None:  # noqa: ANN001
    batch = scenes(105, 12)
    xml = f'<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image">{LABELS}</PolygonLabels></View>'
    regions = run(store, settings, xml, batch)

    def overlap(scene: Scene, index: int, region: dict) -> float:
        assert region["value"]["closed"] is True
        pts = np.array(region["value"]["points"]) * [scene.width / 100, scene.height / 100]
        predicted = np.zeros((scene.height, scene.width), np.uint8)
        cv2.fillPoly(predicted, [np.round(pts).astype(np.int32)], 1)
        return mask_iou(predicted, scene.mask(index))

    recall, precision = match_rate(batch, regions, overlap)
    assert recall >= 0.85 and precision >= 0.85, (recall, precision)



def test_a_segmentation_control_given_a_detection_model_says_so(store, settings) -> None:  # noqa: ANN001
    """Plain boxes have no outline: the task's error names the control, instead of no regions at all."""
    xml = (f'<View><Image name="image" value="$image"/><PolygonLabels name="poly" toName="image" model_path="shapes-detect.pt">'
           f'{LABELS}</PolygonLabels></View>')
    with pytest.raises(ValueError, match='<PolygonLabels name="poly"> needs a segmentation model'):
        run(store, settings, xml, scenes(105, 2))

def test_brushes_are_label_studio_rle_masks(store, settings) -> None:  # noqa: ANN001
    batch = scenes(106, 8)
    xml = f'<View><Image name="image" value="$image"/><BrushLabels name="brush" toName="image">{LABELS}</BrushLabels></View>'
    regions = run(store, settings, xml, batch)

    def overlap(scene: Scene, index: int, region: dict) -> float:
        assert region["value"]["format"] == "rle"
        decoded = np.reshape(decode_rle(region["value"]["rle"]), (scene.height, scene.width, 4))[:, :, 3]
        return mask_iou(decoded > 0, scene.mask(index))

    recall, precision = match_rate(batch, regions, overlap)
    assert recall >= 0.85 and precision >= 0.85, (recall, precision)


def test_choices_classify_single_shapes(store, settings) -> None:  # noqa: ANN001
    batch = scenes(107, 30, width=128, height=128, count=(1, 1), size=(32.0, 80.0))
    xml = ('<View><Image name="image" value="$image"/><Choices name="shape" toName="image">'
           '<Choice value="Square"/><Choice value="Circle"/><Choice value="Triangle"/></Choices></View>')
    regions = run(store, settings, xml, batch)
    right = sum(regs[0]["value"]["choices"] == [TITLE[s.shapes[0].cls]] for s, regs in zip(batch, regions, strict=True) if regs)
    answered = sum(1 for regs in regions if regs)
    assert answered >= 27 and right / answered >= 0.9, (answered, right)
    assert all(regs[0]["type"] == "choices" and regs[0]["from_name"] == "shape" for regs in regions if regs)


def test_keypoints_land_on_the_triangle_corners(store, settings) -> None:  # noqa: ANN001
    batch = scenes(108, 12, classes=("triangle",))
    xml = """<View><Image name="image" value="$image"/>
      <KeyPointLabels name="kp" toName="image" model_point_size="2">
        <Label value="apex" predicted_values="triangle" model_index="0"/>
        <Label value="base-left" predicted_values="triangle" model_index="1"/>
        <Label value="base-right" predicted_values="triangle" model_index="2"/>
      </KeyPointLabels>
      <RectangleLabels name="kp_bbox" toName="image"><Label value="triangle"/></RectangleLabels></View>"""
    regions = run(store, settings, xml, batch)
    order = ["apex", "base-left", "base-right"]
    hits = total = 0
    for scene, regs in zip(batch, regions, strict=True):
        boxes = [r for r in regs if r["type"] == "rectanglelabels"]
        points = [r for r in regs if r["type"] == "keypointlabels"]
        assert all(r["from_name"] == "kp_bbox" and r["hidden"] for r in boxes)
        assert all(p["parentID"] in {b["id"] for b in boxes} for p in points)
        for shape in scene.shapes:
            truth = shape.keypoints()
            for k, name in enumerate(order):
                total += 1
                near = [p for p in points if p["value"]["keypointlabels"] == [name]
                        and math.dist((p["value"]["x"] * scene.width / 100, p["value"]["y"] * scene.height / 100), truth[k]) < 0.2 * shape.size]
                hits += bool(near)
    assert hits / total >= 0.8, (hits, total)


def test_keypoints_without_bbox_control_have_no_parent(store, settings) -> None:  # noqa: ANN001
    xml = ('<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image">'
           '<Label value="apex" predicted_values="triangle" model_index="0"/></KeyPointLabels></View>')
    regions = [r for regs in run(store, settings, xml, scenes(109, 6, classes=("triangle",))) for r in regs]
    assert regions and all(r["type"] == "keypointlabels" and "parentID" not in r for r in regions)


def test_task_score_is_the_mean_region_score() -> None:
    assert results.task_score([{"score": 0.5}, {"score": 1.0}]) == 0.75
    assert results.task_score([]) == 0.0


@pytest.mark.parametrize("tag", ["RectangleLabels", "PolygonLabels"])
def test_wrong_model_kind_is_a_clear_error(store, settings, tag: str) -> None:  # noqa: ANN001
    """A config asking a detect-only model for oriented boxes names the mismatch."""
    from prelabel_backend.label_config import ConfigError
    from prelabel_backend.predictor import Predictor

    xml = f'<View><Image name="image" value="$image"/><{tag} name="x" toName="image" model_path="shapes-classify.pt"><Label value="a"/></{tag}></View>'
    predictor = Predictor(settings, store, None, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="is a classify model"):
        predictor.check(parse(xml, settings))
