"""The README's main job, run as a person would: `prelabel demo`, end to end, checked by its output
(the operator pre-labels the project, every demo task holds a prediction of the model version it
reported) and its exit code. The operator and the backend run as pods of a real node, from the images
built from the Dockerfiles (the node's Service range: 172.31.251.0/24)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]


def test_prelabel_demo_prelabels_every_task() -> None:
    prelabel = Path(sys.executable).parent / "prelabel"
    done = subprocess.run([str(prelabel), "demo", "--images", "6"], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert re.search(r"6/6 tasks pre-labeled by the backend at http://172\.31\.251\.\d+:9090", done.stdout), done.stdout
    assert "MLBackend Ready=True" in done.stderr
    # The operator pre-labeled the project (spec.prelabel), shown as a progress bar over its status.
    assert "pre-labeling Complete: 6/6 with prelabel-" in done.stderr
    assert re.search(r"pre-labeling: 100%\|.*\| 6/6", done.stderr), done.stderr[-2000:]
