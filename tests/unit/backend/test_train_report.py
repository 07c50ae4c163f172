"""The training Job's report as a termination message (train.fit_message): Kubernetes keeps 4096
bytes of it, and a model of many classes reports more. What is cut must not change the gate's verdict."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from prelabel_backend.train import MAX_MESSAGE, fit_message
from prelabel_operator import training


def report(classes: int, fallen: dict[str, float], seed: int = 0) -> dict[str, Any]:
    """A report of `classes` classes whose recall barely moves, but for `fallen` (name -> candidate's recall)."""
    rng = random.Random(seed)
    current = {f"class number {i}": round(rng.uniform(0.5, 0.9), 4) for i in range(classes)}
    candidate = {name: round(max(0.0, value + rng.uniform(-0.02, 0.03)), 4) for name, value in current.items()}
    candidate.update(fallen)

    def side(map50_95: float, recall: dict[str, float]) -> dict[str, Any]:
        return {"map50_95": map50_95, "map50": map50_95 + 0.2, "recall": recall, "images": 40}

    return {"run": "shapes-train-3-7c1a2b3d", "candidate": "20261206T101500.123Z-3f2a9c1b", "parent": "packaged", "task": "detect",
            "snapshot": "sha256:" + "0" * 64, "samples": {"train": 160, "validation": 40},
            "metrics": {"candidate": side(0.52, candidate), "current": side(0.41, current)}}


def verdict(message: dict[str, Any]) -> training.Verdict:
    def metrics(raw: dict[str, Any]) -> training.Metrics:
        return training.Metrics(map50_95=raw["map50_95"], map50=raw["map50"], recall=raw["recall"], split="s", images=raw["images"])

    m = message["metrics"]
    return training.judge(metrics(m["candidate"]), metrics(m["current"]), training.Gate(margin=0.01, max_recall_drop=0.05))


def test_a_short_report_is_written_whole() -> None:
    message = report(5, {})
    assert json.loads(fit_message(message)) == message


@pytest.mark.parametrize(("classes", "fallen"), [
    (80, {"class number 37": 0.1}),
    (300, {"class number 137": 0.2, "class number 3": 0.0}),
    (600, {}),
    (1000, {"class number 999": 0.3}),
])
def test_a_long_report_fits_stays_json_and_the_gate_decides_as_on_the_whole(classes: int, fallen: dict[str, float]) -> None:
    message = report(classes, fallen)
    text = fit_message(message)
    cut = json.loads(text)
    assert len(text.encode()) <= MAX_MESSAGE and "truncated" in cut and cut["candidate"] == message["candidate"]
    kept = cut["metrics"]["current"]["recall"]
    assert set(fallen) <= set(kept) and 0 < len(kept) < classes and set(cut["metrics"]["candidate"]["recall"]) == set(kept)
    whole, part = verdict(message), verdict(cut)
    assert (whole.promote, whole.reason) == (part.promote, part.reason)
    assert whole.promote == (not fallen)


def test_a_class_the_candidate_lost_counts_as_fallen_to_zero() -> None:
    message = report(400, {})
    del message["metrics"]["candidate"]["recall"]["class number 5"]
    cut = json.loads(fit_message(message))
    assert "class number 5" in cut["metrics"]["current"]["recall"] and not verdict(cut).promote


def test_a_report_without_a_current_model_or_too_long_without_recall_is_still_json() -> None:
    message = report(400, {})
    message["metrics"]["current"] = None
    assert len(fit_message(message).encode()) <= MAX_MESSAGE
    huge = {"run": "r", "candidate": "c", "note": "x" * 5000}
    said = json.loads(fit_message(huge))
    assert said["run"] == "r" and "over 4096 bytes" in said["error"]
