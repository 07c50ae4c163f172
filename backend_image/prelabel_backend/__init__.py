"""Prelabel's YOLO ML backend for Label Studio: a drop-in for HumanSignal's YOLO example."""

__version__ = "0.1.0"
