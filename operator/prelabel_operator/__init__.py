"""Prelabel: a Kubernetes operator that runs YOLO ML backends and registers them in Label Studio."""

__version__ = "0.1.0"
