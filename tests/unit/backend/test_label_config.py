from __future__ import annotations

from pathlib import Path

import pytest

from prelabel_backend.label_config import ConfigError, UnsupportedConfig, coverage, model_path, parse
from prelabel_backend.settings import Settings
from tests.conftest import SEED_CONFIG

S = Settings()


def test_seed_config_maps_predicted_values_and_threshold() -> None:
    config = parse(SEED_CONFIG, S)
    (control,) = config.controls
    assert (control.tag, control.name, control.to_name, control.data_key, control.task) == ("RectangleLabels", "label", "image", "image", "detect")
    assert control.threshold == 0.25
    assert control.model_file == S.default_models["detect"]
    assert control.label_map(["square", "circle", "triangle", "star"]) == {"square": "Square", "circle": "Circle", "triangle": "Triangle"}


def test_label_map_prefers_predicted_values_then_exact_then_case_insensitive() -> None:
    xml = """<View><Image name="img" value="$photo"/>
      <RectangleLabels name="r" toName="img">
        <Label value="Vehicle" predicted_values="car,truck"/><Label value="car"/><Label value="PERSON"/>
      </RectangleLabels></View>"""
    control = parse(xml, S).controls[0]
    assert control.data_key == "photo"
    assert control.threshold == S.model_score_threshold
    assert control.label_map(["car", "truck", "person", "dog"]) == {"car": "Vehicle", "truck": "Vehicle", "person": "PERSON"}


def test_legacy_score_threshold_and_model_skip() -> None:
    xml = """<View><Image name="i" value="$image"/>
      <PolygonLabels name="p" toName="i" score_threshold="0.7"><Label value="a"/></PolygonLabels>
      <Choices name="c" toName="i" model_skip="true"><Choice value="a"/></Choices></View>"""
    config = parse(xml, S)
    assert [(c.name, c.task, c.threshold) for c in config.controls] == [("p", "segment", 0.7)]


def test_each_control_gets_its_task() -> None:
    xml = """<View><Image name="i" value="$image"/>
      <RectangleLabels name="obb" toName="i" model_obb="true"><Label value="a"/></RectangleLabels>
      <BrushLabels name="b" toName="i"><Label value="a"/></BrushLabels>
      <Choices name="c" toName="i"><Choice value="a"/></Choices>
      <KeyPointLabels name="k" toName="i"><Label value="apex" predicted_values="triangle" model_index="0"/></KeyPointLabels>
    </View>"""
    config = parse(xml, S)
    assert {c.name: c.task for c in config.controls} == {"obb": "obb", "b": "segment", "c": "classify", "k": "pose"}
    assert config.controls[3].point_indexes == {"apex": ("triangle", 0)}


def test_unsupported_config_names_what_was_found() -> None:
    xml = '<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="x"/></Labels></View>'
    with pytest.raises(UnsupportedConfig) as err:
        parse(xml, S)
    assert err.value.found == ["Labels"]
    assert "RectangleLabels" in str(err.value) and '<Labels name="l">: Labels is not a control this backend predicts' in str(err.value)


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<View><Image", "not valid XML"),
        ("", "has no control tags yet"),
        ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" model_score_threshold="high"/></View>', "must be a number"),
        ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" model_score_threshold="3"/></View>', "between 0 and 1"),
        ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" model_path="../../etc/passwd"/></View>', "relative path under MODEL_ROOT"),
        ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" model_path="/etc/passwd"/></View>', "relative path under MODEL_ROOT"),
        ('<View><Image name="i" value="$image"/><KeyPointLabels name="k" toName="i"><Label value="a" model_index="0"/></KeyPointLabels></View>',
         "needs predicted_values"),
    ],
)
def test_bad_configs_are_refused_with_a_reason(xml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(xml, S)


def test_xml_entity_expansion_is_refused() -> None:
    bomb = '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><View>&b;</View>'
    with pytest.raises(ConfigError, match="not valid XML"):
        parse(bomb, S)


def test_custom_model_path_only_when_allowed(tmp_path: Path) -> None:
    xml = '<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" model_path="custom/yolo.pt"/></View>'
    assert parse(xml, Settings(model_root=tmp_path)).controls[0].model_file == "custom/yolo.pt"
    assert parse(xml, Settings(model_root=tmp_path, allow_custom_model_path=False)).controls[0].model_file == S.default_models["detect"]


def test_model_path_resolves_under_model_root_then_packaged_weights(tmp_path: Path) -> None:
    (tmp_path / "mine.pt").write_bytes(b"x")
    settings = Settings(model_root=tmp_path)
    assert model_path(settings, "mine.pt") == (tmp_path / "mine.pt").resolve()
    assert model_path(settings, "shapes-detect.pt").name == "shapes-detect.pt"  # falls back to the packaged weights
    (tmp_path / "link.pt").symlink_to("/etc/hostname")
    with pytest.raises(ConfigError, match="outside MODEL_ROOT"):
        model_path(settings, "link.pt")
    with pytest.raises(ConfigError, match="not found under MODEL_ROOT"):
        model_path(settings, "missing.pt")


@pytest.mark.parametrize("xml", ["<View></View>", "<View/>", "", "   ",
                                 '<View><Text name="t" value="$text"/><TextArea name="a" toName="t"/></View>'])
def test_a_config_with_nothing_to_serve_yet_is_unsupported_not_invalid(xml: str) -> None:
    """Case 7: /setup answers these with 200 and compatible: false (see test_app)."""
    with pytest.raises(UnsupportedConfig):
        parse(xml, S)


@pytest.mark.parametrize(("xml", "reason"), [
    ('<View><Image name="pages" valueList="$images"/><RectangleLabels name="r" toName="pages"><Label value="a"/></RectangleLabels></View>',
     '<RectangleLabels name="r"> on <Image name="pages" valueList="$images">: a multi-image valueList is not supported'),
    ('<View><Image name="pages" valueList="$images"/><Choices name="c" toName="pages"><Choice value="a"/></Choices></View>',
     '<Choices name="c"> on <Image name="pages" valueList="$images">: a multi-image valueList is not supported'),
    ('<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>',
     '<Choices name="c"> on <Text name="t" value="$text">: Choices is served on <Image> only'),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="nope"><Label value="a"/></RectangleLabels></View>',
     '<RectangleLabels name="r">: toName="nope" names no object tag'),
    ('<View><Image name="i" value="$image"/><RectangleLabels name="r" toName="i" model_skip="true"><Label value="a"/></RectangleLabels></View>',
     '<RectangleLabels name="r">: model_skip="true"'),
])
def test_an_unsupported_config_names_what_is_not_supported(xml: str, reason: str) -> None:
    """Case 8: the message names the real cause (a supported control on a multi-image valueList is
    not 'found RectangleLabels; supported are ... RectangleLabels')."""
    with pytest.raises(UnsupportedConfig) as err:
        parse(xml, S)
    assert reason in err.value.reasons[0] and reason in str(err.value)


def test_controls_not_served_beside_served_ones_are_listed() -> None:
    xml = """<View><Image name="i" value="$image"/><Image name="pages" valueList="$pages"/>
      <RectangleLabels name="r" toName="i"><Label value="a"/></RectangleLabels>
      <Choices name="c" toName="pages"><Choice value="a"/></Choices></View>"""
    config = parse(xml, S)
    assert [c.name for c in config.controls] == ["r"] and "multi-image valueList" in config.skipped[0]
    assert config.data_keys == ("image", "pages") and not config.single_object


def test_single_object_configs_read_undefined() -> None:
    """Case 5 (the config side): exactly one object tag."""
    assert parse(SEED_CONFIG, S).single_object


def test_taxonomy_is_served_like_choices_with_paths() -> None:
    """Case 6: flat and nested <Taxonomy> on an image."""
    flat = parse('<View><Image name="image" value="$image"/><Taxonomy name="taxonomy" toName="image">'
                 '<Choice value="square"/><Choice value="circle"/><Choice value="triangle"/></Taxonomy></View>', S)
    (control,) = flat.controls
    assert (control.tag, control.task, control.result_type, control.labels) == ("Taxonomy", "classify", "taxonomy", ("square", "circle", "triangle"))
    assert control.paths == {"square": ("square",), "circle": ("circle",), "triangle": ("triangle",)}
    nested = parse('<View><Image name="image" value="$image"/><Taxonomy name="t" toName="image">'
                   '<Choice value="Shape"><Choice value="Round" alias="round"><Choice value="Circle" predicted_values="circle"/></Choice>'
                   '<Choice value="Square" predicted_values="square"/></Choice></Taxonomy></View>', S).controls[0]
    assert nested.paths["Circle"] == ("Shape", "round", "Circle") and nested.paths["Square"] == ("Shape", "Square")
    assert nested.label_map(["square", "circle", "triangle"]) == {"circle": "Circle", "square": "Square"}


def test_coverage_names_labels_no_model_class_maps_to() -> None:
    """Case 10: the seed's Car with predicted_values jeep,cab,limousine,truck on a COCO model."""
    xml = """<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">
      <Label value="Car" predicted_values="jeep,cab,limousine,truck"/><Label value="Airplane"/>
      <Label value="Coach" predicted_values="motorcoach"/><Label value="Pedestrian"/></RectangleLabels></View>"""
    coco = ["person", "bicycle", "truck", "airplane", "bus"]
    found = coverage(parse(xml, S).controls[0], coco)
    assert found.mapped == {"Car": ("truck",), "Airplane": ("airplane",)}  # exact, then case-insensitive names count too
    assert found.unmapped == ("Coach", "Pedestrian")
    assert found.unknown == ("cab", "jeep", "limousine", "motorcoach")
    text = found.describe()
    assert "labels no model class maps to: Coach, Pedestrian" in text and "Car<-truck" in text and "jeep" in text
    keypoints = parse('<View><Image name="i" value="$image"/><KeyPointLabels name="k" toName="i">'
                      '<Label value="apex" predicted_values="triangle" model_index="0"/>'
                      '<Label value="nose" predicted_values="person" model_index="0"/></KeyPointLabels></View>', S).controls[0]
    assert coverage(keypoints, ["triangle"]).unmapped == ("nose",)
