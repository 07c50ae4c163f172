"""Images and packaging: Dockerfiles pass hadolint; the backend's pinned lock covers its deps."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in REPO.glob("Dockerfile.*")))
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(REPO / dockerfile)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("package", ["backend_image", "operator"])
def test_image_locks_pin_every_declared_dependency(package: str) -> None:
    declared = tomllib.loads((REPO / package / "pyproject.toml").read_text())["project"]["dependencies"]
    locked = {line.split("==")[0].lower() for line in (REPO / package / "requirements.lock").read_text().splitlines() if "==" in line}
    names = {d.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower() for d in declared}
    assert names <= locked, names - locked


def test_packaged_weights_exist_for_every_default_model() -> None:
    from prelabel_backend.settings import DEFAULT_MODEL_ENV, PACKAGED_WEIGHTS

    for _, filename in DEFAULT_MODEL_ENV.values():
        weight = PACKAGED_WEIGHTS / filename
        assert weight.is_file() and weight.stat().st_size < 2 * 1024 * 1024, weight


def _locked(package: str) -> set[str]:
    return {line.split("==")[0].lower() for line in (REPO / package / "requirements.lock").read_text().splitlines() if "==" in line}


def test_the_operator_lock_holds_none_of_the_sdks_converter_only_packages() -> None:
    """label-studio-sdk declares pandas, numpy, opencv, nltk, black (via datamodel-code-generator),
    faker (via jsf), requests-mock ... for code the operator never calls: the lock leaves them out
    (operator/requirements-excludes.txt), and the image installs it with --no-deps so pip cannot
    pull them back through the SDK's metadata."""
    excluded = {line.strip().lower() for line in (REPO / "operator" / "requirements-excludes.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    converter_only = {"pandas", "numpy", "opencv-python-headless", "nltk", "black", "faker", "requests-mock", "datamodel-code-generator",
                      "jsf", "lxml", "pillow", "isort", "jinja2", "typer", "rich", "watchfiles"}
    locked = _locked("operator")
    assert "label-studio-sdk" in locked  # still the client
    assert not locked & (converter_only | excluded), locked & (converter_only | excluded)
    install = next(line for line in (REPO / "Dockerfile.operator").read_text().splitlines() if "requirements.lock" in line and "RUN" in line)
    assert "--no-deps" in install, install


def test_the_backend_wheel_carries_every_file_the_package_reads(tmp_path: Path) -> None:
    """`pip install ./backend_image` must serve as the image does: a wheel without openapi.yaml answered
    /openapi.yaml and /openapi.json with 500. Built from a copy (the build writes into its source)."""
    import zipfile

    source = tmp_path / "backend_image"
    shutil.copytree(REPO / "backend_image", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "runtimes", "__pycache__"))
    shutil.copy(REPO / "VERSION", tmp_path / "VERSION")
    built = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))",
                            str(tmp_path / "dist")], cwd=source, capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr[-2000:]
    names = set(zipfile.ZipFile(tmp_path / "dist" / built.stdout.split()[-1]).namelist())
    tracked = subprocess.run(["git", "ls-files", "backend_image/prelabel_backend"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    data = {path.removeprefix("backend_image/") for path in tracked.split() if not path.endswith((".py", ".gitignore"))}
    assert data and data <= names, sorted(data - names)
