"""Prelabel's YOLO ML backend for Label Studio: a drop-in for HumanSignal's YOLO example."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path


def _version() -> str:
    """The project's one version: VERSION at the repository root, which the image copies beside the
    package (/app/VERSION); an installed wheel carries it in its metadata."""
    package = Path(__file__).resolve().parent
    for path in (package.parent.parent / "VERSION", package.parent / "VERSION"):  # a checkout, an image
        if path.is_file():
            return path.read_text().strip()
    return metadata.version("prelabel-backend")


__version__ = _version()
