"""Prelabel's local mode: a Kubernetes control plane, Label Studio, the operator and the backend as
processes on this machine, on loopback (`prelabel demo`), and the harness the tests and benchmarks
start them with. Not part of the operator image: it carries only `prelabel_operator`."""

from __future__ import annotations

from pathlib import Path

# The project's one version (VERSION at the repository root): the local mode runs from a checkout.
__version__ = (Path(__file__).resolve().parents[2] / "VERSION").read_text().strip()
