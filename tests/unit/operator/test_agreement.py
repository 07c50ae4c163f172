"""Agreement of pre-labels with human annotations (prelabel_operator.agreement): IoU of known shapes
computed by hand, the matching rules per kind of region, and the per-version totals over tasks."""

from __future__ import annotations

import math
from typing import Any

import pytest

from prelabel_operator import agreement
from prelabel_operator.agreement import Agreement, Counts, compare


def box(x: float, y: float, w: float, h: float, label: str = "square", rotation: float = 0, size: tuple[int, int] | None = None,
        **extra: Any) -> dict[str, Any]:
    region: dict[str, Any] = {"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                              "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation, "rectanglelabels": [label]}, **extra}
    if size:
        region |= {"original_width": size[0], "original_height": size[1]}
    return region


def polygon(points: list[tuple[float, float]], label: str = "square") -> dict[str, Any]:
    return {"from_name": "poly", "to_name": "image", "type": "polygonlabels",
            "value": {"points": [list(p) for p in points], "closed": True, "polygonlabels": [label]}}


def point(x: float, y: float, label: str = "nose") -> dict[str, Any]:
    return {"from_name": "kp", "to_name": "image", "type": "keypointlabels", "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]}}


def choices(*labels: str, name: str = "class") -> dict[str, Any]:
    return {"from_name": name, "to_name": "image", "type": "choices", "value": {"choices": list(labels)}}


# -- geometry ---------------------------------------------------------------------------------------
def test_iou_of_two_half_overlapping_boxes_is_one_third() -> None:
    a = agreement.rectangle_corners({"x": 0, "y": 0, "width": 10, "height": 10}, 100, 100)
    b = agreement.rectangle_corners({"x": 5, "y": 0, "width": 10, "height": 10}, 100, 100)
    assert agreement.convex_iou(a, b) == pytest.approx(1 / 3)  # 50 / (100 + 100 - 50)
    assert agreement.convex_iou(a, a) == pytest.approx(1.0)
    far = agreement.rectangle_corners({"x": 50, "y": 50, "width": 10, "height": 10}, 100, 100)
    assert agreement.convex_iou(a, far) == 0.0


def test_iou_of_a_square_and_itself_turned_45_degrees_about_its_corner() -> None:
    """Intersection: the unit square's half above y = x, less the corner beyond x + y = sqrt(2):
    sqrt(2) - 1; union 2 - (sqrt(2) - 1); IoU (sqrt(2) - 1) / (3 - sqrt(2)) = 0.2612."""
    square = agreement.rectangle_corners({"x": 0, "y": 0, "width": 1, "height": 1}, 100, 100)
    turned = agreement.rectangle_corners({"x": 0, "y": 0, "width": 1, "height": 1, "rotation": 45}, 100, 100)
    assert agreement.convex_iou(square, turned) == pytest.approx((math.sqrt(2) - 1) / (3 - math.sqrt(2)))


def test_rotation_is_clockwise_about_the_top_left_corner() -> None:
    """Label Studio's convention (label_studio_sdk's convert_annotation_to_yolo_obb): 90 degrees turns
    the width onto +y (down on screen) and the height onto -x."""
    corners = agreement.rectangle_corners({"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 90}, 100, 100)
    assert [tuple(round(c, 9) for c in p) for p in corners] == [(10, 20), (10, 50), (-30, 50), (-30, 20)]


def test_polygon_iou_of_a_concave_l_and_its_square_is_three_quarters() -> None:
    square = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
    ell = [(0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (5.0, 5.0), (5.0, 10.0), (0.0, 10.0)]  # area 75
    assert agreement.polygon_iou(square, ell) == pytest.approx(0.75)
    assert agreement.convex_iou(square, ell) != pytest.approx(0.75, abs=0.01)  # why polygons are not clipped


def test_polygon_iou_approximates_the_exact_iou_of_convex_shapes() -> None:
    a = agreement.rectangle_corners({"x": 20, "y": 10, "width": 30, "height": 20, "rotation": 30}, 100, 100)
    b = agreement.rectangle_corners({"x": 25, "y": 12, "width": 25, "height": 25, "rotation": 10}, 100, 100)
    exact = agreement.convex_iou(a, b)
    assert 0.2 < exact < 0.9
    assert agreement.polygon_iou(a, b) == pytest.approx(exact, abs=0.005)


# -- one prediction against one annotation -----------------------------------------------------------
def test_the_same_box_matches_and_a_wrong_label_does_not() -> None:
    assert compare([box(10, 10, 20, 20)], [box(10, 10, 20, 20)]) == Counts(tp=1, compared=2)
    assert compare([box(10, 10, 20, 20, "circle")], [box(10, 10, 20, 20)]) == Counts(fp=1, fn=1, compared=2)
    other_control = box(10, 10, 20, 20) | {"from_name": "label2"}
    assert compare([box(10, 10, 20, 20)], [other_control]) == Counts(fp=1, fn=1, compared=2)


def test_iou_threshold_is_one_half_inclusive() -> None:
    assert compare([box(0, 0, 10, 10)], [box(0, 0, 10, 20)]).tp == 1  # IoU 100 / 200 = 0.5
    assert compare([box(0, 0, 10, 10)], [box(0, 0, 10, 20.1)]).tp == 0


def test_empty_prediction_against_empty_annotation_counts_nothing() -> None:
    assert compare([], []) == Counts()
    assert compare([], [box(0, 0, 10, 10)]) == Counts(fn=1, compared=1)
    assert compare([box(0, 0, 10, 10)], []) == Counts(fp=1, compared=1)


def test_a_rotated_box_equal_to_an_axis_aligned_one_matches() -> None:
    assert compare([box(10, 20, 30, 40, rotation=90)], [box(-30, 20, 40, 30)]) == Counts(tp=1, compared=2)


def test_rotation_uses_the_image_aspect_ratio_when_known() -> None:
    """On a 200x100 image, 15% x 40% is 30 x 40 px; turned 90 degrees about (20, 20) px it covers
    x -20..20 px, y 20..50 px: -10%, 20%, 20% x 30%. Assuming square pixels instead, it would not match."""
    turned, upright = box(10, 20, 15, 40, rotation=90, size=(200, 100)), box(-10, 20, 20, 30, size=(200, 100))
    assert compare([turned], [upright]).tp == 1
    assert compare([turned | {"original_width": None}], [upright]).tp == 1  # the other region's size serves
    unsized = {k: v for k, v in turned.items() if not k.startswith("original")}
    assert compare([unsized], [{k: v for k, v in upright.items() if not k.startswith("original")}]).tp == 0


def test_matching_is_greedy_one_to_one_highest_iou_first() -> None:
    annotated = [box(0, 0, 10, 10), box(1, 0, 10, 10)]
    # Both predictions overlap both annotations; each annotation is matched once.
    assert compare([box(0, 0, 10, 10), box(0.5, 0, 10, 10)], annotated) == Counts(tp=2, compared=4)
    # Two predictions on one annotation: the better one is the match, the other a false positive.
    assert compare([box(3, 0, 10, 10), box(0, 0, 10, 10)], annotated[:1]) == Counts(tp=1, fp=1, compared=3)
    # Greedy, not an optimal assignment: P1 takes A1 (IoU 0.9+), so P2 (which overlaps only A1) is left.
    p1, p2, a1, a2 = box(0, 0, 10, 10), box(-4, 0, 10, 10), box(0.2, 0, 10, 10), box(3, 0, 10, 10)
    assert compare([p1, p2], [a1, a2]) == Counts(tp=1, fp=1, fn=1, compared=4)


def test_polygons_match_by_iou_of_their_outlines() -> None:
    square = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0)]
    ell = [(0.0, 0.0), (10.0, 0.0), (10.0, 5.0), (5.0, 5.0), (5.0, 10.0), (0.0, 10.0)]
    sliver = [(0.0, 0.0), (10.0, 0.0), (10.0, 4.0), (0.0, 4.0)]
    assert compare([polygon(square)], [polygon(ell)]) == Counts(tp=1, compared=2)
    assert compare([polygon(square)], [polygon(sliver)]) == Counts(fp=1, fn=1, compared=2)  # IoU 0.4
    assert compare([polygon(square, "circle")], [polygon(ell)]) == Counts(fp=1, fn=1, compared=2)


def test_keypoints_match_within_two_percent_and_the_same_label() -> None:
    assert compare([point(50, 50)], [point(51.2, 51.5)]).tp == 1  # 1.92 away
    assert compare([point(50, 50)], [point(51.5, 51.5)]).tp == 0  # 2.12 away
    assert compare([point(50, 50, "eye")], [point(50, 50)]) == Counts(fp=1, fn=1, compared=2)
    # The nearest pairs first: (50, 50) goes with (50.5, 50), not with (51, 50) it reaches first in order.
    assert compare([point(50, 50), point(52.5, 50)], [point(51, 50), point(50.5, 50)]) == Counts(tp=2, compared=4)


def test_choices_match_as_a_set() -> None:
    assert compare([choices("cat")], [choices("cat")]) == Counts(tp=1, compared=2)
    assert compare([choices("cat")], [choices("dog")]) == Counts(fp=1, fn=1, compared=2)
    assert compare([choices("cat", "dog")], [choices("dog", "cat")]) == Counts(tp=1, compared=2)
    assert compare([choices("cat", "dog")], [choices("cat")]) == Counts(fp=1, fn=1, compared=2)
    assert compare([], [choices("cat")]) == Counts(fn=1, compared=1)
    assert compare([choices("cat")], [choices("cat", name="other")]) == Counts(fp=1, fn=1, compared=2)


def test_brushes_hidden_regions_and_other_types_are_skipped_not_compared() -> None:
    brush = {"from_name": "mask", "to_name": "image", "type": "brushlabels", "value": {"format": "rle", "rle": [1, 2], "brushlabels": ["square"]}}
    hidden = box(0, 0, 10, 10, hidden=True) | {"from_name": "kp_bbox"}  # the pose model's grouping box
    text = {"from_name": "note", "to_name": "image", "type": "textarea", "value": {"text": ["hi"]}}
    assert compare([brush, hidden, box(0, 0, 10, 10)], [brush, text, box(0, 0, 10, 10)]) == Counts(tp=1, compared=2, skipped=4)


def test_a_region_without_its_coordinates_is_named() -> None:
    broken = box(0, 0, 10, 10)
    del broken["value"]["width"]
    with pytest.raises(ValueError, match=r"rectanglelabels region of 'label' has no value.width"):
        compare([broken], [box(0, 0, 10, 10)])


# -- per model version ------------------------------------------------------------------------------
def annotation(aid: int, result: list[dict[str, Any]], minutes: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": aid, "result": result, "updated_at": f"2026-11-30T06:{minutes:02d}:00Z", **extra}


def prediction(pid: int, version: str, result: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": pid, "model_version": version, "result": result}


def test_by_version_counts_each_version_latest_prediction_against_the_human_annotation() -> None:
    right, wrong = box(10, 10, 20, 20), box(60, 60, 20, 20)
    drawn = box(10, 10, 20, 20, origin="manual")  # a person drew what the model predicted: human (training's rule 4)
    tasks = [
        # v1 predicted twice (the later one counts), v2 once; a person corrected the task.
        {"id": 1, "predictions": [prediction(10, "v1", [wrong]), prediction(11, "v1", [right]), prediction(12, "v2", [wrong])],
         "annotations": [annotation(100, [right, box(40, 40, 10, 10)])]},
        # A skipped annotation and a later real one: only the real one counts.
        {"id": 2, "predictions": [prediction(20, "v1", [right])],
         "annotations": [annotation(200, [drawn], 1), annotation(201, [], 5, was_cancelled=True)]},
        # Only a skipped annotation: the task is left out.
        {"id": 3, "predictions": [prediction(30, "v1", [wrong])], "annotations": [annotation(300, [], was_cancelled=True)]},
        # No annotation: left out.
        {"id": 4, "predictions": [prediction(40, "v1", [wrong])], "annotations": []},
    ]
    result = agreement.by_version(tasks)
    assert result == {"v1": Agreement(tasks=2, counts=Counts(tp=2, fn=1, compared=5)),
                      "v2": Agreement(tasks=1, counts=Counts(fp=1, fn=2, compared=3))}
    assert result["v1"].precision == 1.0 and result["v1"].recall == pytest.approx(2 / 3)
    assert result["v2"].precision == 0.0 and result["v2"].recall == 0.0


def test_an_unchanged_copy_is_not_human_unless_the_rule_says_so() -> None:
    right = box(10, 10, 20, 20)
    tasks = [{"id": 1, "predictions": [prediction(10, "v1", [right])], "annotations": [annotation(100, [right], parent_prediction=10)]}]
    assert agreement.by_version(tasks) == {}
    submitted = agreement.by_version(tasks, is_human=lambda a, predictions: True)
    assert submitted["v1"].precision == 1.0 and submitted["v1"].tasks == 1


def test_ground_truth_is_the_annotation_compared() -> None:
    right, wrong = box(10, 10, 20, 20), box(60, 60, 20, 20)
    tasks = [{"id": 1, "predictions": [prediction(10, "v1", [right])],
              "annotations": [annotation(100, [right | {"origin": "manual"}], 1, ground_truth=True), annotation(101, [wrong], 9)]}]
    assert agreement.by_version(tasks)["v1"].counts == Counts(tp=1, compared=2)


def test_empty_against_empty_gives_no_precision_or_recall() -> None:
    """A person who confirmed "nothing here" in the editor (training's rule would call an empty copy of
    an empty prediction a script's, so the rule here accepts every submitted annotation)."""
    tasks = [{"id": 1, "predictions": [prediction(10, "v1", [])], "annotations": [annotation(100, [])]}]
    (only,) = agreement.by_version(tasks, is_human=lambda a, predictions: True).values()
    assert only.tasks == 1 and only.precision is None and only.recall is None


def test_an_unreadable_annotation_names_its_task() -> None:
    tasks = [{"id": 7, "predictions": [prediction(10, "v1", [])], "annotations": [{"id": 100, "result": []}]}]
    with pytest.raises(ValueError, match="task 7: annotation 100 has no updated_at"):
        agreement.by_version(tasks)
