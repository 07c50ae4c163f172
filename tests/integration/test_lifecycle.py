"""The local mode ends cleanly, however it ends: SIGINT, SIGTERM and SIGHUP stop exactly what a run
started (every recorded PID gone, every port it listened on free again); after a `kill -9` of the
run itself, `prelabel down` stops what it left, from the records (prelabel_local.processes), and a
reused PID is never taken for a recorded one. First on a small harness (etcd, kube-apiserver and a
gunicorn backend, started by the harness's own classes), then on `prelabel demo --keep` itself
(killed; its SIGTERM is test_demo.py's).

Each run gets its own PRELABEL_RUN_DIR, so these tests see only their own records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

from prelabel_local import node, processes

from .lifecycle import Output, alive, assert_gone, free, groups, snapshot

pytestmark = pytest.mark.cluster

PRELABEL = str(Path(sys.executable).parent / "prelabel")

# A small run shaped as `prelabel demo`: a control plane (etcd, kube-apiserver) and a backend
# (gunicorn: a master and its worker in one group), stopped in a `finally`.
HARNESS = """
import sys, time
from pathlib import Path
from prelabel_local import node, processes
from prelabel_local.backend import BackendProcess
from prelabel_local.cluster import LocalCluster

work = Path(sys.argv[2])
with processes.exit_on_signals():
    cluster, backend = LocalCluster(Path(sys.argv[1]), workdir=work / "cluster"), None
    try:
        cluster.start()
        backend = BackendProcess({"WORKERS": "1"}, work / "backend" / "backend.log").wait_ready()
        print("ready", flush=True)
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, processes.Stopped):
        pass
    finally:
        if backend is not None:
            backend.stop()
        cluster.stop()
        processes.stop_owned()
"""


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "run"
    monkeypatch.setenv("PRELABEL_RUN_DIR", str(path))
    return path


def start_harness(cluster_bin: Path, work: Path) -> tuple[subprocess.Popen[str], Output]:
    popen = subprocess.Popen([sys.executable, "-c", HARNESS, str(cluster_bin), str(work)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = Output(popen)
    out.wait_for("ready", 180)
    return popen, out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_stops_everything_the_run_started(cluster_bin: Path, tmp_path: Path, run_dir: Path, signum: int) -> None:
    popen, out = start_harness(cluster_bin, tmp_path / "work")
    names, pids, addresses = snapshot(popen.pid)
    assert set(names) == {"etcd", "kube-apiserver", "backend"}, names
    assert len(names["backend"]) >= 2, "gunicorn's master and worker"
    assert len(addresses) >= 4, addresses  # etcd (client, peer), the API server, the backend
    os.kill(popen.pid, signum)
    assert popen.wait(timeout=90) == 0, "".join(out.lines)[-3000:]
    assert_gone(pids, addresses, run_dir)


def test_after_kill_9_prelabel_down_stops_what_was_left(cluster_bin: Path, tmp_path: Path, run_dir: Path) -> None:
    popen, _ = start_harness(cluster_bin, tmp_path / "work")
    _, pids, addresses = snapshot(popen.pid)
    count = groups(popen.pid)
    popen.kill()
    popen.wait()
    time.sleep(1)
    assert sorted(alive(pids)) == sorted(pids), "each server runs in its own session: SIGKILL of the run leaves them all"
    assert not any(free(a) for a in addresses)
    down = subprocess.run([PRELABEL, "down"], capture_output=True, text=True, timeout=120, check=True)
    assert f"{count} process group(s) stopped; 0 still running" in down.stdout, down.stdout
    assert_gone(pids, addresses, run_dir)


def test_a_new_test_session_stops_what_a_killed_one_left(cluster_bin: Path, tmp_path: Path, run_dir: Path) -> None:
    """pytest killed (-9) mid-run: the next session's start (conftest.py) stops what it had started."""
    popen, _ = start_harness(cluster_bin, tmp_path / "work")  # stands in for the killed session
    _, pids, addresses = snapshot(popen.pid)
    popen.kill()
    popen.wait()
    test = tmp_path / "test_nothing.py"
    test.write_text("def test_nothing():\n    pass\n")
    conftest = Path(__file__).resolve().parents[1] / "conftest.py"
    (tmp_path / "conftest.py").write_text(conftest.read_text())
    session = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, check=False)
    assert session.returncode == 0, session.stdout[-3000:]
    assert_gone(pids, addresses, run_dir)


def test_a_group_leader_gone_its_other_members_still_stop(tmp_path: Path, run_dir: Path) -> None:
    """A process that left the group (setsid) but carries the marker, and group members whose leader
    exited, are found and stopped."""
    popen = processes.spawn("shell", ["bash", "-c", "setsid sleep 300 & sleep 300 & exit 0"], log=tmp_path / "log")
    popen.wait()
    time.sleep(0.5)
    (record,) = processes.records()
    pids = processes.members(record)
    assert len(pids) == 2, pids  # both sleeps, the leader gone
    processes.stop(popen, grace=5)
    assert not alive(pids)
    assert not processes.records()


def test_a_reused_pid_is_never_stopped(tmp_path: Path, run_dir: Path) -> None:
    """A record whose leader PID now belongs to another process (another start time, no marker) is
    dropped without a signal to that process."""
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    started = processes.start_time(stranger.pid)
    assert started is not None
    record = processes.Record(uuid.uuid4().hex, "etcd", stranger.pid, started - 1, ["etcd"], str(tmp_path / "log"),
                              owner_pid=2**22 + 1, owner_start_time=0)  # above pid_max: never a live owner
    run_dir.mkdir(parents=True, exist_ok=True)
    record.path.write_text(json.dumps(asdict(record)))
    try:
        assert processes.stop_orphans(grace=1) == []
        assert stranger.poll() is None, "an unrelated process was signalled"
        assert not record.path.exists()
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.labelstudio
@pytest.mark.real_node
def test_prelabel_demo_keep_killed_then_prelabel_down(run_dir: Path) -> None:
    """As a new user tried it: `prelabel demo --keep`, then `kill -9` of the demo itself, then
    `prelabel down`: every recorded server stops, and what the real node left (containers whose shims
    outlive containerd, mounts, cgroups, chains, the bridge) is removed. (SIGTERM: test_demo.py.)"""
    popen = subprocess.Popen([PRELABEL, "demo", "--keep", "--images", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    out = Output(popen)
    try:
        out.wait_for("Everything keeps running", 900)
    except AssertionError:
        popen.kill()
        subprocess.run([PRELABEL, "down"], check=False, timeout=300)
        raise
    names, pids, addresses = snapshot(popen.pid)
    count = groups(popen.pid)
    assert set(names) == DEMO_SERVERS, names
    assert len(addresses) >= 6, addresses
    os.kill(popen.pid, signal.SIGKILL)
    popen.wait(timeout=60)
    assert sorted(alive(pids)) == sorted(pids), "SIGKILL of the demo alone leaves its servers"
    assert node.leftovers(), "the node's containers, mounts and bridge outlive the demo"
    down = subprocess.run([PRELABEL, "down"], capture_output=True, text=True, timeout=300, check=True)
    assert f"{count} process group(s) stopped; 0 still running" in down.stdout, down.stdout
    assert "removed what a real node left" in down.stdout, down.stdout
    assert_gone(pids, addresses, run_dir)
    assert node.leftovers() == []


# What `prelabel demo` starts on this machine: the control plane, Label Studio and a real node (the
# operator and the backend run as its pods, under containerd).
DEMO_SERVERS = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "label-studio",
                "node-containerd", "node-kubelet", "node-kube-proxy"}
