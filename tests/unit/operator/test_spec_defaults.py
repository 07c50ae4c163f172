"""The spec's defaults are stated once: the CRD's schema defaults (what the API server fills in) and
MLBackendSpec.parse's (what a spec read from anywhere means) say the same thing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from prelabel_operator.spec import FULL_IMAGE, LEAN_IMAGE, MLBackendSpec
from tests.conftest import REPO

STORE = {"s3": {"url": "s3://models", "credentialsSecretRef": {"name": "s3"}}}
MINIMAL = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}]}}
SELECTOR = {"titlePattern": "^Street"}
SUBSET = {"filters": {"items": [{"filter": "filter:tasks:data.city", "operator": "equal", "type": "String", "value": "Paris"}]}}


def spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds" / "mlbackend.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def defaulted(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's defaults filled in, as the API server's structural defaulting does:
    a missing property with a default gets it, then defaults apply inside what is there."""
    if isinstance(value, dict) and "properties" in schema:
        value = dict(value)
        for name, sub in schema["properties"].items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = defaulted(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        value = [defaulted(schema["items"], item) for item in value]
    return value


def schema_defaults(schema: dict[str, Any], path: str = "spec") -> list[str]:
    found = [path] if "default" in schema else []
    for name, sub in (schema.get("properties") or {}).items():
        found += schema_defaults(sub, f"{path}.{name}")
    return found


def test_the_parser_means_what_the_schema_defaults_to() -> None:
    schema = spec_schema()
    by_selector = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projectSelector": SELECTOR}}
    for raw in (MINIMAL, by_selector, {**MINIMAL, "prelabel": {}}, {**MINIMAL, "prelabel": {"subset": SUBSET}},
                {**MINIMAL, "prelabel": {"scaleToZero": {}, "retention": {"keepModelVersions": 2}}},
                {**MINIMAL, "basicAuthSecretRef": {"name": "auth"}},
                {**MINIMAL, "model": {}, "service": {}, "autoscaling": {}},
                {**MINIMAL, "model": {"store": STORE}, "training": {}}, {**MINIMAL, "image": "team/sdk-backend:1", "backend": {}}):
        filled = defaulted(schema, raw)
        assert filled != raw  # the schema did fill something in
        assert MLBackendSpec.parse(copy.deepcopy(raw)) == MLBackendSpec.parse(filled), raw


def test_every_schema_default_is_exercised() -> None:
    """Each default of the schema lies on a path the test above fills in: a new default is compared too."""
    schema = spec_schema()
    selected = {**MINIMAL["labelStudio"], "projectSelector": SELECTOR}  # (beside projects: schema only)
    filled = defaulted(schema, {**MINIMAL, "labelStudio": selected, "prelabel": {"subset": SUBSET, "scaleToZero": {}}, "basicAuthSecretRef": {"name": "auth"},
                                "model": {"store": STORE}, "service": {}, "autoscaling": {}, "training": {}, "backend": {}})
    # (backend and training exclude each other, as projects and projectSelector do: schema only)

    def present(obj: Any, parts: list[str]) -> bool:
        for part in parts:
            if isinstance(obj, list):
                obj = obj[0] if obj else {}
            if not isinstance(obj, dict) or part not in obj:
                return False
            obj = obj[part]
        return True

    missing = [p for p in schema_defaults(schema) if p != "spec" and not present(filled, p.split(".")[1:])]
    assert not missing, f"defaults the comparison never fills in: {missing}"


@pytest.mark.parametrize(("extra", "image"), [
    ({}, LEAN_IMAGE),  # CPU, the image's own models: the lean image serves them (their exports are in it)
    ({"model": {"weights": {"file": "yolov8n.pt"}}}, LEAN_IMAGE),  # baked into the image: exported at its build
    ({"model": {"weights": {"url": {"href": "https://models.example/best.onnx", "sha256": "a" * 64}}}}, LEAN_IMAGE),
    ({"model": {"device": "cuda"}}, FULL_IMAGE),
    ({"model": {"weights": {"pvc": {"claimName": "models", "file": "best.pt"}}}}, FULL_IMAGE),  # a .pt the lean image cannot export
    ({"model": {"weights": {"url": {"href": "https://models.example/best.pt", "sha256": "a" * 64}}}}, FULL_IMAGE),
    ({"model": {"store": STORE}}, FULL_IMAGE),  # stored versions are .pt files
    ({"model": {"store": STORE}, "training": {}}, FULL_IMAGE),
    ({"image": "team/backend:2"}, "team/backend:2"),  # set: as it is
])
def test_the_operator_picks_the_lean_image_on_cpu_and_the_full_one_where_torch_is_needed(extra: dict[str, Any], image: str) -> None:
    assert MLBackendSpec.parse({**MINIMAL, **extra}).image == image
