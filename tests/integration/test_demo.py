"""The README's main job, run as a person would: `prelabel demo`, end to end, checked by its output
(the operator pre-labels the project, every demo task holds a prediction of the model version it
reported), and how it ends (SIGTERM). The operator and the backend run as pods of a real node, from the images
built from the Dockerfiles (the node's Service range: 172.31.251.0/24)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prelabel_local import node

from .lifecycle import Output, assert_gone, snapshot

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]


def test_prelabel_demo_prelabels_every_task_and_a_sigterm_stops_all_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`prelabel demo --keep`, as docs/local-mode.md says to look at the result; then SIGTERM (what a closed
    terminal's SIGHUP does too: test_lifecycle.py) stops exactly what it started, the node's too."""
    run_dir = tmp_path / "run"
    monkeypatch.setenv("PRELABEL_RUN_DIR", str(run_dir))  # this run's records only
    prelabel = Path(sys.executable).parent / "prelabel"
    popen = subprocess.Popen([str(prelabel), "demo", "--keep", "--images", "6"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    out = Output(popen)
    try:
        out.wait_for("Everything keeps running", 900)
        names, pids, addresses = snapshot(popen.pid)
    finally:
        os.kill(popen.pid, signal.SIGTERM)
        code = popen.wait(timeout=300)
    text = "".join(out.lines)
    assert re.search(r"6/6 tasks pre-labeled by the backend at http://172\.31\.251\.\d+:9090", text), text[-3000:]
    assert "MLBackend Ready=True" in text
    # The operator pre-labeled the project (spec.prelabel), shown as a progress bar over its status.
    assert "pre-labeling Complete: 6/6 with prelabel-" in text
    assert re.search(r"pre-labeling: 100%\|.*\| 6/6", text), text[-2000:]
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert set(names) >= {"etcd", "kube-apiserver", "label-studio", "node-containerd", "node-kubelet"}, names
    assert_gone(pids, addresses, run_dir)
    assert node.leftovers() == []
