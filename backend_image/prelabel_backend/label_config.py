"""The labeling config (Label Studio's XML) parsed into the controls this backend predicts.

Conventions kept from HumanSignal's YOLO example so a project's config needs no change:
- `predicted_values="a,b"` on a <Label> maps model classes a and b to that label; otherwise a model
  class maps to the label with the same value, exactly, then case-insensitively.
- `model_score_threshold` (legacy `score_threshold`) per control, `model_path`, `model_skip`,
  `model_obb="true"` on RectangleLabels, and on KeyPointLabels `model_index` per <Label>,
  `model_add_bboxes`, `model_point_size`, `model_point_threshold`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from xml.etree.ElementTree import Element  # the type only; parsing is defusedxml's

from defusedxml import ElementTree

from .settings import PACKAGED_WEIGHTS, Settings

# control tag -> the kind of model it needs, and the object tags it can label
SUPPORTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "RectangleLabels": ("detect", ("Image",)),
    "PolygonLabels": ("segment", ("Image",)),
    "BrushLabels": ("segment", ("Image",)),
    "Choices": ("classify", ("Image",)),
    "Taxonomy": ("classify", ("Image",)),  # like Choices (as HumanSignal's example); results as taxonomy paths
    "KeyPointLabels": ("pose", ("Image",)),
    "VideoRectangle": ("detect", ("Video",)),  # tracked through the video; labels from the <Labels> on the same video
    "TimelineLabels": ("classify", ("Video",)),  # each frame classified; runs of one label become ranges
}
TRUE = {"1", "true", "yes"}


class ConfigError(ValueError):
    """The labeling config cannot be served; the message says what to change."""


class UnsupportedConfig(ConfigError):
    """The config is valid XML but has no control this backend can predict. `reasons` says, per
    control, why it cannot be served (its tag, its object, a multi-image valueList, ...)."""

    def __init__(self, found: list[str], reasons: list[str] | None = None) -> None:
        self.found = found
        self.reasons = reasons or []
        self.supported = sorted(SUPPORTED)
        why = "; ".join(self.reasons) if self.reasons else "it has no control tags yet"
        super().__init__(
            f"no control in the labeling config can be served: {why}. "
            f"Supported: {', '.join(self.supported)} on an <Image> with value=\"$<field>\" "
            f"(VideoRectangle and TimelineLabels on a <Video>)"
        )


@dataclass(frozen=True)
class Control:
    tag: str  # e.g. "RectangleLabels"
    name: str  # from_name
    to_name: str
    data_key: str  # the task data field holding the media, "image" for value="$image"
    task: str  # detect, obb, segment, classify or pose
    model_file: str  # file name under MODEL_ROOT (or a packaged weight)
    threshold: float
    labels: tuple[str, ...]
    predicted_values: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> model classes
    point_indexes: dict[str, tuple[str, int]] = field(default_factory=dict)  # label -> (model class, keypoint index)
    attrs: dict[str, str] = field(default_factory=dict)
    media: str = "Image"  # the object tag: Image or Video
    paths: dict[str, tuple[str, ...]] = field(default_factory=dict)  # Taxonomy: label -> its path from the root

    @property
    def result_type(self) -> str:
        return self.tag.lower()

    def flag(self, name: str, default: bool) -> bool:
        raw = self.attrs.get(name)
        return default if raw is None else raw.strip().lower() in TRUE

    def number(self, name: str, default: float) -> float:
        raw = self.attrs.get(name)
        try:
            return float(raw) if raw not in (None, "") else default
        except ValueError as exc:
            raise ConfigError(f'<{self.tag} name="{self.name}">: {name} must be a number, got {raw!r}') from exc

    def label_map(self, model_names: list[str]) -> dict[str, str]:
        """Model class name -> label value: predicted_values first, then exact, then case-insensitive."""
        mapping: dict[str, str] = {}
        for label, classes in self.predicted_values.items():
            for cls in classes:
                mapping.setdefault(cls, label)
        by_lower = {label.lower(): label for label in self.labels}
        for name in model_names:
            if name in mapping:
                continue
            if name in self.labels:
                mapping[name] = name
            elif name.lower() in by_lower:
                mapping[name] = by_lower[name.lower()]
        return mapping


@dataclass(frozen=True)
class LabelConfig:
    controls: tuple[Control, ...]
    found: tuple[str, ...]  # every control tag seen, supported or not
    control_names: frozenset[str]  # every control's name, to know which extra regions may be emitted
    digest: str  # identifies the parts of the config that change predictions
    data_keys: tuple[str, ...] = ()  # the task data fields of every object tag (value="$key")
    skipped: tuple[str, ...] = ()  # controls that are not served, each with the reason

    @property
    def single_object(self) -> bool:
        """Exactly one object tag: Label Studio then reads a task's `$undefined$` value as its data
        (Project.one_object_in_label_config, core/label_config.py)."""
        return len(self.data_keys) == 1

    def has_control(self, name: str, tag: str) -> bool:
        return f"{tag}:{name}" in self.control_names


def _attr_float(attrs: dict[str, str], tag: str, name: str, keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        raw = attrs.get(key)
        if raw not in (None, ""):
            try:
                value = float(raw)
            except ValueError as exc:
                raise ConfigError(f'<{tag} name="{name}">: {key} must be a number, got {raw!r}') from exc
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f'<{tag} name="{name}">: {key} must be between 0 and 1, got {raw}')
            return value
    return default


def resolve_model_file(settings: Settings, requested: str | None, task: str, where: str) -> str:
    """The control's model file, checked to stay under MODEL_ROOT."""
    if not requested or not settings.allow_custom_model_path:
        return settings.default_models[task]
    path = PurePosixPath(requested)
    if path.is_absolute() or ".." in path.parts or requested.startswith("~"):
        raise ConfigError(f"{where}: model_path {requested!r} must be a relative path under MODEL_ROOT")
    return str(path)


def _describe(el: Element) -> str:
    shown = " ".join(f'{k}="{el.get(k)}"' for k in ("name", "value", "valueList") if el.get(k) is not None)
    return f"<{el.tag} {shown}>"


def _labels(el: Element, sources: list[Element]) -> list[tuple[Element, tuple[str, ...]]]:
    """(label element, path) of every <Label>/<Choice>: direct children, or for a Taxonomy every
    nested <Choice>, its path being the values (or aliases, as Label Studio stores them) from the root."""
    out: list[tuple[Element, tuple[str, ...]]] = []

    def walk(parent: Element, path: tuple[str, ...], nested: bool) -> None:
        for child in parent:
            if child.tag not in ("Label", "Choice") or child.get("value") is None:
                continue
            here = (*path, str(child.get("alias") or child.get("value", "")))
            out.append((child, here))
            if nested:
                walk(child, here, nested)

    for source in sources:
        walk(source, (), el.tag == "Taxonomy")
    return out


# Why the lean image serves no VideoRectangle (a skipped control's reason, in /setup's answer).
NO_TRACKER = ("tracking through a video runs ultralytics' trackers, which the lean image (INFERENCE=lean) does not have: "
              "serve video projects with the full image (prelabel-backend, not prelabel-backend-lean: an MLBackend's spec.image)")


def parse(xml: str, settings: Settings, tracking: bool = True) -> LabelConfig:
    """The controls of a labeling config this backend serves. Raises ConfigError (invalid XML, a bad
    attribute) or UnsupportedConfig (nothing to serve: each control's reason in its message).
    tracking: False in the lean image, where a VideoRectangle is skipped with NO_TRACKER as its reason."""
    if not xml or not xml.strip():
        raise UnsupportedConfig([])
    try:
        root = ElementTree.fromstring(xml)
    except Exception as exc:  # defusedxml raises several types; all mean "not a config we accept"
        raise ConfigError(f"the labeling config is not valid XML: {exc}") from exc

    objects = {el.get("name"): el for el in root.iter()
               if el.get("name") and (el.get("value", "").startswith("$") or el.get("valueList", "").startswith("$"))}
    data_keys = tuple(dict.fromkeys(
        (el.get("value") or el.get("valueList") or "$")[1:] for el in objects.values()))
    found: list[str] = []
    names: set[str] = set()
    controls: list[Control] = []
    skipped: list[str] = []
    for el in root.iter():
        to_name = el.get("toName")
        if not to_name or el.get("name") is None:
            continue
        tag, name = el.tag, el.get("name", "")
        found.append(tag)
        names.add(f"{tag}:{name}")
        where = f'<{tag} name="{name}">'
        if tag not in SUPPORTED:
            skipped.append(f"{where}: {tag} is not a control this backend predicts")
            continue
        attrs = dict(el.attrib)
        if attrs.get("model_skip", "").lower() in TRUE:
            skipped.append(f'{where}: model_skip="true"')
            continue
        if tag == "VideoRectangle" and not tracking:
            skipped.append(f"{where}: {NO_TRACKER}")
            continue
        task, object_tags = SUPPORTED[tag]
        target = objects.get(to_name.split(",")[0])
        if target is None:
            skipped.append(f'{where}: toName="{to_name}" names no object tag with a $field value')
            continue
        if target.tag not in object_tags:
            skipped.append(f"{where} on {_describe(target)}: {tag} is served on {' or '.join(f'<{t}>' for t in object_tags)} only")
            continue
        if not target.get("value", "").startswith("$"):
            skipped.append(f"{where} on {_describe(target)}: a multi-image valueList is not supported; "
                           f'use one image per task (value="$field")')
            continue
        if tag == "RectangleLabels" and attrs.get("model_obb", "").lower() in TRUE:
            task = "obb"
        labels, predicted, points, paths = [], {}, {}, {}
        # VideoRectangle has no labels of its own: they are on a <Labels> naming the same video.
        sources = [el] if tag != "VideoRectangle" else [o for o in root.iter("Labels") if o.get("toName") == to_name]
        for child, path in _labels(el, sources):
            value = child.get("value", "")
            labels.append(value)
            paths[value] = path
            if child.get("predicted_values"):
                predicted[value] = tuple(v.strip() for v in child.get("predicted_values", "").split(",") if v.strip())
            if child.get("model_index") not in (None, ""):
                try:
                    index = int(child.get("model_index", ""))
                except ValueError as exc:
                    raise ConfigError(f'{where} <Label value="{value}">: model_index must be an integer') from exc
                source = predicted.get(value, ())
                if not source:
                    raise ConfigError(f'{where} <Label value="{value}">: model_index needs predicted_values (the model class)')
                points[value] = (source[0], index)
        controls.append(
            Control(
                tag=tag,
                media=target.tag,
                name=name,
                to_name=to_name,
                data_key=target.get("value", "$")[1:],
                task=task,
                model_file=resolve_model_file(settings, attrs.get("model_path"), task, where),
                threshold=_attr_float(attrs, tag, name, ("model_score_threshold", "score_threshold"), settings.model_score_threshold),
                labels=tuple(labels),
                predicted_values=predicted,
                point_indexes=points,
                attrs=attrs,
                paths=paths if tag == "Taxonomy" else {},
            )
        )
    if not controls:
        raise UnsupportedConfig(found, skipped)
    identity = sorted((c.name, c.task, c.model_file, c.threshold, sorted(c.predicted_values.items()), c.labels, sorted(c.paths.items()))
                      for c in controls)
    digest = hashlib.sha256(repr(identity).encode()).hexdigest()
    return LabelConfig(controls=tuple(controls), found=tuple(found), control_names=frozenset(names), digest=digest,
                       data_keys=data_keys, skipped=tuple(skipped))


@dataclass(frozen=True)
class Coverage:
    """How one control's labels meet a model's classes (label-studio#6825: a label no class maps to
    silently never gets a region). `mapped`: label -> the model classes that map to it;
    `unmapped`: labels no class maps to; `unknown`: predicted_values names the model does not have."""

    control: str  # '<RectangleLabels name="label">'
    model_file: str
    mapped: dict[str, tuple[str, ...]]
    unmapped: tuple[str, ...]
    unknown: tuple[str, ...]

    def describe(self) -> str:
        pairs = ", ".join(f"{label}<-{'|'.join(classes)}" for label, classes in self.mapped.items()) or "none"
        text = f"{self.control} with {self.model_file}: labels no model class maps to: {', '.join(self.unmapped)}; mapped: {pairs}"
        if self.unknown:
            text += f"; predicted_values the model lacks: {', '.join(self.unknown)}"
        return text


def coverage(control: Control, model_names: list[str]) -> Coverage:
    """Which of the control's labels the model can produce (see Control.label_map; KeyPointLabels
    through model_index)."""
    by_label: dict[str, tuple[str, ...]]
    if control.point_indexes:
        by_label = {label: (cls,) for label, (cls, _) in control.point_indexes.items() if cls in model_names}
    else:
        by_label = {}
        for cls, label in control.label_map(model_names).items():
            if cls in model_names:
                by_label.setdefault(label, ())
                by_label[label] += (cls,)
    mapped = {label: by_label[label] for label in control.labels if label in by_label}
    unmapped = tuple(label for label in control.labels if label not in by_label)
    wanted = {cls for classes in control.predicted_values.values() for cls in classes}
    unknown = tuple(sorted(wanted - set(model_names)))
    return Coverage(f'<{control.tag} name="{control.name}">', control.model_file, mapped, unmapped, unknown)


def model_path(settings: Settings, model_file: str) -> Path:
    """Where a model file lives: under MODEL_ROOT, else among the packaged weights. Never outside."""
    for root in (settings.model_root, PACKAGED_WEIGHTS):
        base = root.resolve()
        candidate = (base / model_file).resolve()
        if not candidate.is_relative_to(base):
            raise ConfigError(f"model_path {model_file!r} resolves outside MODEL_ROOT")
        if candidate.is_file() or (candidate.is_dir() and candidate.name.endswith("_openvino_model")):
            return candidate  # a weight file, or an OpenVINO export (a folder)
    raise ConfigError(f"model file {model_file!r} not found under MODEL_ROOT ({settings.model_root})")
