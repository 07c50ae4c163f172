"""One version for the project (VERSION at the repository root) and one license (Apache-2.0): the
packages read the version from VERSION; what cannot read it (the chart, the CRD's default image,
the example) must state the same one."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import prelabel_backend
import prelabel_local
import prelabel_operator
from prelabel_operator.spec import MLBackendSpec

REPO = Path(__file__).resolve().parents[2]
VERSION = (REPO / "VERSION").read_text().strip()
CHART = yaml.safe_load((REPO / "charts" / "prelabel-operator" / "Chart.yaml").read_text())


def _tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def test_version_is_semantic() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", VERSION), VERSION


def test_the_packages_read_the_one_version() -> None:
    assert prelabel_operator.__version__ == prelabel_backend.__version__ == prelabel_local.__version__ == VERSION
    # The installed metadata (make env reinstalls when VERSION changes).
    assert metadata.version("prelabel-operator") == metadata.version("prelabel-backend") == metadata.version("prelabel-local") == VERSION


def test_the_chart_and_the_default_images_state_the_same_version() -> None:
    assert CHART["appVersion"] == VERSION  # the operator image's default tag (values.yaml image.tag: "")
    images = {i["name"]: i["image"] for i in yaml.safe_load(CHART["annotations"]["artifacthub.io/images"])}
    assert {name: _tag(image) for name, image in images.items()} == {"prelabel-operator": VERSION, "prelabel-backend": VERSION,
                                                                      "prelabel-backend-lean": VERSION}
    crd = yaml.safe_load((REPO / "crds" / "mlbackend.yaml").read_text())
    spec_schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    # The operator picks the backend image (spec.default_image); the CRD says which, by name and version.
    explained = spec_schema["properties"]["image"]["description"]
    assert "default" not in spec_schema["properties"]["image"]
    assert images["prelabel-backend"] in explained and images["prelabel-backend-lean"] in explained
    minimal = {"labelStudio": {"url": "http://ls", "apiKeySecretRef": {"name": "s"}, "projects": [{"id": 1}]}}
    assert MLBackendSpec.parse(minimal).image == images["prelabel-backend-lean"]
    assert MLBackendSpec.parse({**minimal, "model": {"device": "cuda"}}).image == images["prelabel-backend"]
    example = yaml.safe_load((REPO / "examples" / "mlbackend.yaml").read_text())
    assert _tag(example["spec"]["image"]) == VERSION


def test_one_license_everywhere() -> None:
    assert (REPO / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for package in ("operator", "backend_image"):
        assert tomllib.loads((REPO / package / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert CHART["annotations"]["artifacthub.io/license"] == "Apache-2.0"
