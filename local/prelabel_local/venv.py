"""Virtualenvs made with uv, its wheel cache under ~/.cache/prelabel/uv (as the Makefile sets it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("PRELABEL_CACHE", Path.home() / ".cache" / "prelabel"))


def uv() -> str:
    """uv on PATH, else where `pip install --user uv` (the Makefile) or the project venv put it."""
    installed = (Path.home() / ".local" / "bin" / "uv", Path(sys.executable).parent / "uv")
    return shutil.which("uv") or next((str(p) for p in installed if p.exists()), "uv")


def create(venv: Path, *install: str, python: str = sys.executable) -> Path:
    """A fresh virtualenv at `venv` with `uv pip install <install...>` in it; returns its python."""
    env = {**os.environ, "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(CACHE / "uv"))}
    shutil.rmtree(venv, ignore_errors=True)  # a half-made venv from an interrupted install
    subprocess.run([uv(), "venv", "-q", "-p", python, str(venv)], check=True, env=env)
    subprocess.run([uv(), "pip", "install", "-q", "-p", str(venv / "bin" / "python"), *install], check=True, env=env)
    return venv / "bin" / "python"
