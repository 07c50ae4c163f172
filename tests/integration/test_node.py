"""The real node (prelabel_local.node): a pod runs on containerd behind the kubelet, is reached
through kube-proxy, and the node leaves nothing on the machine, after a clean stop or a crash."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import subprocess
from pathlib import Path

from prelabel_local import node
from tests.conftest import wait_for


def pause_pod(name: str, ref: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"containers": [{"name": "pause", "image": ref, "imagePullPolicy": "Never"}], "terminationGracePeriodSeconds": 1},
    })


def test_pod_runs_and_the_node_leaves_nothing(cluster_bin: Path, tmp_path: Path) -> None:
    before = {key: (Path("/proc/sys") / key).read_text() for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")}
    real = node.Node(cluster_bin)
    cluster = real.start_cluster()
    try:
        ref, archive = node.pause_image()
        assert real.import_image(archive) is False  # start imported it: same image ID, skipped
        cluster.kubectl("apply", "-f", "-", input=pause_pod("p", ref))
        wait_for("pod p Running", lambda: cluster.kubectl("get", "pod", "p", "-o", "jsonpath={.status.phase}").stdout == "Running", 120)
        pod = json.loads(cluster.kubectl("get", "pod", "p", "-o", "json").stdout)
        assert pod["spec"]["nodeName"] == node.NODE_NAME
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(node.POD_CIDR)
        # The API server reaches the kubelet on the node's InternalIP (kubectl logs goes through it).
        assert cluster.kubectl("logs", "p").returncode == 0
        # The `kubernetes` Service, the node's own Service range, is routed to the API server by kube-proxy.
        service = cluster.kubectl("get", "service", "kubernetes", "-o", "jsonpath={.spec.clusterIP}").stdout
        assert ipaddress.ip_address(service) in ipaddress.ip_network(node.SERVICE_CIDR)
        wait_for("kube-proxy's rule for the kubernetes Service",
                 lambda: service in subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout, 60)
        assert node.leftovers()  # while it runs, there is something to find: the check can fail

        # Importing a rebuilt image under the same tag removes the one it replaces, with its layers.
        archives = []
        for version in (b"1", b"2"):
            archive = tmp_path / f"image-{version.decode()}.tar"
            archive.write_bytes(node.docker_archive("localhost/prelabel/test:1", [node._tar({"version": (version, 0o644)})], {}))
            archives.append((archive, *node.archive_image(archive)))
        assert real.import_image(archives[0][0]) is True
        first_layer = hashlib.sha256(node._tar({"version": (b"1", 0o644)})).hexdigest()
        assert first_layer in real.ctr("content", "ls", "-q").stdout.decode()
        assert real.import_image(archives[1][0]) is True
        assert real.images()["localhost/prelabel/test:1"] == archives[1][1]
        assert archives[0][1] not in real.ctr("images", "ls", "-q").stdout.decode()
        assert first_layer not in real.ctr("content", "ls", "-q").stdout.decode()
    finally:
        real.stop()
        cluster.stop()
    assert node.leftovers() == []
    assert {key: (Path("/proc/sys") / key).read_text() for key in before} == before


def test_a_crashed_node_is_cleaned_by_the_next_start(cluster_bin: Path) -> None:
    real = node.Node(cluster_bin)
    cluster = real.start_cluster()
    try:
        ref, _ = node.pause_image()
        cluster.kubectl("apply", "-f", "-", input=pause_pod("q", ref))
        wait_for("pod q Running", lambda: cluster.kubectl("get", "pod", "q", "-o", "jsonpath={.status.phase}").stdout == "Running", 120)
        for process in real.processes.values():  # the harness dies: nothing stops the node
            os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()
        real.processes.clear()
        if real._lock is not None:  # the dead harness's lock goes with its process
            real._lock.close()
            real._lock = None
        left = node.leftovers()
        assert any(item.startswith("mount ") for item in left) and f"bridge {node.BRIDGE}" in left
        node.Node(cluster_bin).prepare()  # finds the remains by path and name, and removes them
        # What remains is what prepare() makes: the bridge and its FORWARD guard.
        assert set(node.leftovers()) == {f"bridge {node.BRIDGE}", f"iptables filter {node.GUARD_CHAIN}"}
    finally:
        node.Node(cluster_bin).stop()
        cluster.stop()
    assert node.leftovers() == []
