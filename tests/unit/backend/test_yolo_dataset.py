"""Label Studio annotations into an ultralytics dataset (yolo_dataset): each task type's label lines
from Label Studio's percent coordinates, classes mapped back through the control's label map, labels
no class maps to skipped and counted, an empty annotation a negative image, pose refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prelabel_backend import yolo_dataset
from prelabel_backend.label_config import parse
from prelabel_backend.settings import Settings

NAMES = {0: "square", 1: "circle", 2: "triangle"}
DETECT = """<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">
  <Label value="Box" predicted_values="square"/><Label value="Circle"/><Label value="Dog"/></RectangleLabels></View>"""


def control(xml: str):  # noqa: ANN201
    return parse(xml, Settings()).controls[0]


def box(label: str, x: float, y: float, w: float, h: float, rotation: float = 0) -> dict:
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]}}


def example(result: list[dict], task: int = 1, width: int = 200, height: int = 100) -> yolo_dataset.Example:
    return yolo_dataset.Example(task, b"png", width, height, result)


def test_a_rectangle_becomes_its_centre_and_size_with_the_class_the_label_maps_back_to() -> None:
    skipped: yolo_dataset.Counter[str] = yolo_dataset.Counter()
    lines = yolo_dataset.label_lines(control(DETECT), example([box("Box", 10, 20, 30, 40), box("Circle", 50, 50, 10, 10)]),
                                     yolo_dataset.class_ids(control(DETECT), NAMES), skipped)
    assert lines == ["0 0.250000 0.400000 0.300000 0.400000", "1 0.550000 0.550000 0.100000 0.100000"]
    assert not skipped


def test_a_rotated_rectangle_trains_a_detector_on_its_bounding_box() -> None:
    # 20 x 10 px (10% of 200, 10% of 100) at (100, 50), turned 90 degrees clockwise about its top-left corner:
    # it then spans x 90..100 and y 50..70 in pixels.
    (line,) = yolo_dataset.label_lines(control(DETECT), example([box("Circle", 50, 50, 10, 10, rotation=90)]),
                                       yolo_dataset.class_ids(control(DETECT), NAMES), yolo_dataset.Counter())
    cls, cx, cy, w, h = line.split()
    assert cls == "1" and float(cx) == pytest.approx(0.475) and float(cy) == pytest.approx(0.6)
    assert float(w) == pytest.approx(0.05) and float(h) == pytest.approx(0.2)


def test_an_oriented_box_keeps_its_four_corners() -> None:
    obb = control(DETECT.replace('toName="image">', 'toName="image" model_obb="true">'))
    assert obb.task == "obb"
    (line,) = yolo_dataset.label_lines(obb, example([box("Circle", 50, 50, 10, 10, rotation=90)]), yolo_dataset.class_ids(obb, NAMES),
                                       yolo_dataset.Counter())
    values = [float(v) for v in line.split()[1:]]
    assert values == pytest.approx([0.5, 0.5, 0.5, 0.7, 0.45, 0.7, 0.45, 0.5])


def test_a_label_no_class_maps_to_is_skipped_and_counted_and_other_controls_are_ignored() -> None:
    skipped: yolo_dataset.Counter[str] = yolo_dataset.Counter()
    other = {**box("Box", 1, 1, 5, 5), "from_name": "other"}
    lines = yolo_dataset.label_lines(control(DETECT), example([box("Dog", 1, 1, 5, 5), box("Dog", 2, 2, 5, 5), other]),
                                     yolo_dataset.class_ids(control(DETECT), NAMES), skipped)
    assert lines == [] and skipped == {"Dog": 2}


def test_polygons_for_segmentation_and_an_empty_annotation_is_a_negative_image(tmp_path: Path) -> None:
    seg = control("""<View><Image name="image" value="$image"/><PolygonLabels name="label" toName="image">
      <Label value="triangle"/></PolygonLabels></View>""")
    polygon = {"from_name": "label", "type": "polygonlabels", "value": {"points": [[10, 10], [50, 10], [30, 80]], "polygonlabels": ["triangle"]}}
    data, written = yolo_dataset.write(tmp_path, seg, NAMES, {"train": [example([polygon], task=1)], "val": [example([], task=2)]})
    assert (tmp_path / "labels" / "train" / "task-1.txt").read_text() == "2 0.100000 0.100000 0.500000 0.100000 0.300000 0.800000\n"
    assert (tmp_path / "labels" / "val" / "task-2.txt").read_text() == ""
    assert (tmp_path / "images" / "val" / "task-2.png").read_bytes() == b"png"
    assert yaml.safe_load(data.read_text())["names"] == NAMES and written.images == {"train": 1, "val": 1} and written.regions == 1


def test_choices_become_class_folders_on_both_sides(tmp_path: Path) -> None:
    classify = control("""<View><Image name="image" value="$image"/><Choices name="label" toName="image">
      <Choice value="square"/><Choice value="circle"/></Choices></View>""")
    chosen = {"from_name": "label", "type": "choices", "value": {"choices": ["circle"]}}
    root, written = yolo_dataset.write(tmp_path, classify, NAMES, {"train": [example([chosen])], "val": [example([chosen], task=2)]})
    assert root == tmp_path and (tmp_path / "train" / "circle" / "task-1.png").is_file()
    assert (tmp_path / "val" / "triangle").is_dir() and written.images == {"train": 1, "val": 1}


def test_pose_is_refused_naming_the_field_to_change(tmp_path: Path) -> None:
    pose = control("""<View><Image name="image" value="$image"/><KeyPointLabels name="kp" toName="image">
      <Label value="square" predicted_values="square:0"/></KeyPointLabels></View>""")
    with pytest.raises(yolo_dataset.UnsupportedTask, match=r"spec\.training\.control"):
        yolo_dataset.write(tmp_path, pose, NAMES, {"train": [], "val": []})
