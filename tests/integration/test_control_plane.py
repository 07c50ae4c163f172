"""The local control plane is real Kubernetes: schema validation, RBAC, ClusterIPs, Deployments
made Available by kwok, garbage collection, and watches that outlive an apiserver restart."""

from __future__ import annotations

import ipaddress
import json
import queue
import threading
import time
import uuid

import pytest
import yaml

from prelabel_local.cluster import SERVICE_CIDR

pytestmark = pytest.mark.cluster

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.prelabel.dev"},
    "spec": {
        "group": "test.prelabel.dev", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                "type": "object", "required": ["size"],
                "properties": {"size": {"type": "integer", "minimum": 1}, "min": {"type": "integer"}, "max": {"type": "integer"}},
                "x-kubernetes-validations": [{"rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                                              "message": "min must not exceed max"}],
            }}}},
        }],
    },
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_version_tells_the_truth(cluster) -> None:  # noqa: ANN001
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.36.3"


def test_crd_schema_and_cel_rules_reject_bad_objects(cluster) -> None:  # noqa: ANN001
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(WIDGET_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.test.prelabel.dev", "--timeout=30s")

    def widget(spec: dict) -> str:
        return yaml.safe_dump({"apiVersion": "test.prelabel.dev/v1", "kind": "Widget", "metadata": {"name": unique("w")}, "spec": spec})

    assert cluster.kubectl("apply", "-f", "-", input=widget({"size": 2})).returncode == 0
    too_small = cluster.kubectl("apply", "-f", "-", input=widget({"size": 0}), check=False)
    assert too_small.returncode != 0 and "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in too_small.stderr
    crossed = cluster.kubectl("apply", "-f", "-", input=widget({"size": 1, "min": 5, "max": 2}), check=False)
    assert crossed.returncode != 0 and "min must not exceed max" in crossed.stderr


def test_a_namespaced_role_gives_403_outside_its_namespace(cluster) -> None:  # noqa: ANN001
    home, other = unique("home"), unique("other")
    for ns in (home, other):
        cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("create", "serviceaccount", "reader", "-n", home)
    cluster.kubectl("create", "role", "read-cm", "--verb=get,list", "--resource=configmaps", "-n", home)
    cluster.kubectl("create", "rolebinding", "reader", "--role=read-cm", f"--serviceaccount={home}:reader", "-n", home)
    as_reader = cluster.token_kubeconfig(home, "reader")

    def list_configmaps(ns: str):  # noqa: ANN202
        return cluster.kubectl("--kubeconfig", str(as_reader), "get", "configmaps", "-n", ns, check=False)

    assert list_configmaps(home).returncode == 0
    denied = list_configmaps(other)
    assert denied.returncode != 0
    assert f'User "system:serviceaccount:{home}:reader" cannot list resource "configmaps"' in denied.stderr
    assert "Forbidden" in denied.stderr


def test_a_service_gets_a_loopback_cluster_ip(cluster) -> None:  # noqa: ANN001
    name = unique("svc")
    cluster.kubectl("create", "service", "clusterip", name, "--tcp=9090:9090")
    ip = cluster.kubectl("get", "service", name, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(SERVICE_CIDR)
    assert ipaddress.ip_address(ip).is_loopback  # a process on this machine can bind it: no traffic leaves loopback


def test_a_deployment_becomes_available_on_kwok_nodes(cluster) -> None:  # noqa: ANN001
    name = unique("web")
    cluster.kubectl("create", "deployment", name, "--image=registry.invalid/web:1", "--replicas=3")
    cluster.kubectl("wait", "--for=condition=Available", f"deployment/{name}", "--timeout=60s")
    pods = json.loads(cluster.kubectl("get", "pods", "-l", f"app={name}", "-o", "json").stdout)["items"]
    assert len(pods) == 3
    assert all(p["status"]["phase"] == "Running" and p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)


def test_deleting_an_owner_garbage_collects_its_deployment(cluster) -> None:  # noqa: ANN001
    owner = unique("owner")
    cluster.kubectl("create", "configmap", owner)
    uid = cluster.kubectl("get", "configmap", owner, "-o", "jsonpath={.metadata.uid}").stdout
    child = unique("child")
    deployment = yaml.safe_load(cluster.kubectl("create", "deployment", child, "--image=registry.invalid/x:1", "--dry-run=client", "-o", "yaml").stdout)
    deployment["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": owner, "uid": uid}]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment))
    cluster.kubectl("wait", "--for=condition=Available", f"deployment/{child}", "--timeout=60s")
    cluster.kubectl("delete", "configmap", owner)
    cluster.kubectl("wait", "--for=delete", f"deployment/{child}", "--timeout=60s")
    assert cluster.kubectl("get", "pods", "-l", f"app={child}", "-o", "name").stdout.strip() == ""


def test_a_watch_resumes_across_an_apiserver_restart(cluster) -> None:  # noqa: ANN001
    """A restarted apiserver answers an old resourceVersion with 410 Gone (its watch cache starts
    anew); a watcher that re-lists then, as kopf does, loses no object."""
    from kubernetes import client, config, watch
    from urllib3.exceptions import HTTPError

    ns = unique("watch")
    cluster.kubectl("create", "namespace", ns)
    api = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    seen: queue.Queue[str] = queue.Queue()
    stop = threading.Event()

    def watcher() -> None:
        known: set[str] = set()

        def relist() -> str:
            listing = api.list_namespaced_config_map(ns)
            for item in listing.items:
                if item.metadata.name not in known:
                    known.add(item.metadata.name)
                    seen.put(item.metadata.name)
            return str(listing.metadata.resource_version)

        version = relist()
        while not stop.is_set():
            try:
                for event in watch.Watch().stream(api.list_namespaced_config_map, ns, resource_version=version, timeout_seconds=5):
                    version = event["object"].metadata.resource_version
                    name = event["object"].metadata.name
                    if event["type"] == "ADDED" and name not in known:
                        known.add(name)
                        seen.put(name)
            except client.ApiException as exc:
                if exc.status != 410:
                    raise
                version = relist()
            except (HTTPError, OSError):
                time.sleep(0.5)  # the apiserver is down: retry

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    cluster.kubectl("create", "configmap", "before", "-n", ns)
    assert seen.get(timeout=20) == "before"
    cluster.restart_apiserver()
    cluster.kubectl("create", "configmap", "after", "-n", ns)
    assert seen.get(timeout=30) == "after"
    stop.set()
    thread.join(timeout=10)
    assert seen.empty()  # nothing seen twice
