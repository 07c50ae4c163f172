"""`helm install` of charts/prelabel-operator on the real control plane, in a namespace enforcing the
restricted Pod Security Standard, and the operator running with exactly the chart's permissions:
a rule taken away shows as Forbidden in the MLBackend's status (and heals when given back);
namespaced mode serves its namespaces and touches nothing else; an operator started before its CRD
waits for it; uninstall keeps the CRD.
The full Label Studio scenario under the chart's ServiceAccount is tests/integration/test_operator.py."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from prelabel_local import chart
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import wait_for

pytestmark = pytest.mark.cluster
UNREACHABLE_LABEL_STUDIO = "http://127.0.0.1:9"  # the backend side still runs; registration waits


def mlbackend(cluster, ns: str, name: str) -> None:  # noqa: ANN001
    cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, "--from-literal=api-key=not-a-real-key")
    body = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": name, "namespace": ns},
            "spec": {"labelStudio": {"url": UNREACHABLE_LABEL_STUDIO, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}]},
                     "deletionPolicy": "Orphan"}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))


def can_i(cluster, verb: str, resource: str, namespace: str | None = None) -> bool:  # noqa: ANN001
    where = ["-n", namespace] if namespace else ["--all-namespaces"]
    out = cluster.kubectl("auth", "can-i", verb, resource, *where, f"--as={chart.SERVICE_ACCOUNT_USER}", check=False)
    return out.stdout.strip() == "yes"


@pytest.fixture(scope="module")
def installed(cluster):  # noqa: ANN001, ANN201
    """The chart installed once for the module; the ServiceAccount's kubeconfig."""
    return chart.install(cluster)


def test_an_operator_started_before_its_crd_waits_for_it_and_then_serves(cluster, operator_image_python, tmp_path) -> None:  # noqa: ANN001
    """It watches no CRDs (no RBAC for that): it waits for its own through discovery, saying what to
    fix. It runs on the image's dependencies only (operator/requirements.lock), as in the container."""
    assert cluster.kubectl("get", "crd", "mlbackends.prelabel.dev", check=False).returncode != 0  # runs first in this module
    log = tmp_path / "operator.log"
    python, env = operator_image_python
    dev_only = subprocess.run([python, "-c", "import pytest"], env={**os.environ, **env}, capture_output=True, check=False)
    assert dev_only.returncode != 0  # the test tools are not in the image
    operator = OperatorProcess(cluster.kubeconfig, log, python=python, env=env).start()
    try:
        wait_for("the waiting message", lambda: "waiting for the mlbackends.prelabel.dev CRD" in log.read_text(), 60)
        assert "crds.install=true" in log.read_text()
        chart.install(cluster)
        chart.restricted_namespace(cluster, "early")
        mlbackend(cluster, "early", "served")
        wait_for("Available", lambda: condition(cluster.status("mlb", "early", "served"), "Available").get("status") == "True", 90)
        cluster.kubectl("delete", "mlb", "served", "-n", "early", "--timeout=60s")
    finally:
        operator.stop()


def test_install_admits_the_operator_pod_under_restricted_and_prints_the_next_step(cluster, installed) -> None:  # noqa: ANN001
    labels = json.loads(cluster.kubectl("get", "namespace", chart.NAMESPACE, "-o", "json").stdout)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = json.loads(cluster.kubectl("get", "pods", "-n", chart.NAMESPACE, "-o", "json").stdout)["items"]
    assert len(pods) == 1 and pods[0]["status"]["phase"] == "Running"
    assert pods[0]["spec"]["serviceAccountName"] == chart.RELEASE
    notes = cluster.helm("status", chart.RELEASE, "-n", chart.NAMESPACE).stdout
    assert "Apply an MLBackend" in notes and "kubectl apply -f mlbackend.yaml" in notes
    cluster.kubectl("wait", "--for=condition=Established", "crd/mlbackends.prelabel.dev", "--timeout=30s")


def test_the_service_account_can_do_what_the_operator_does_and_no_more(cluster, installed) -> None:  # noqa: ANN001
    assert can_i(cluster, "watch", "mlbackends.prelabel.dev") and can_i(cluster, "patch", "mlbackends.prelabel.dev/status", "default")
    assert can_i(cluster, "get", "secrets", "default") and not can_i(cluster, "list", "secrets")
    assert can_i(cluster, "create", "deployments.apps", "default") and not can_i(cluster, "delete", "deployments.apps", "default")
    assert can_i(cluster, "watch", "deployments.apps") and not can_i(cluster, "get", "deployments.apps", "default")
    assert not can_i(cluster, "create", "pods", "default") and not can_i(cluster, "list", "namespaces")
    assert not can_i(cluster, "delete", "mlbackends.prelabel.dev", "default")


def test_every_optional_object_is_valid_on_the_api_server(cluster, installed) -> None:  # noqa: ANN001
    """PodDisruptionBudget, NetworkPolicy and namespaced RBAC, strictly validated by the API server
    (the ServiceMonitor needs prometheus-operator's CRD, absent here: it is checked rendered only)."""
    # Another release name, without the CRD: objects that do not exist yet, so each is "created (server dry run)".
    rendered = cluster.helm("template", "validate", str(chart.CHART), "-n", chart.NAMESPACE, "--kube-version", "1.36.3",
                            "--set", "crds.install=false", "--set", "podDisruptionBudget.enabled=true", "--set", "networkPolicy.enabled=true",
                            "--set", "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
                            "--set", "networkPolicy.egress[0].ports[0].port=443", "--set", "watchNamespaces={default}").stdout
    out = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=rendered, check=False)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
    for created in ("poddisruptionbudget.policy/validate-prelabel-operator", "networkpolicy.networking.k8s.io/validate-prelabel-operator",
                    "role.rbac.authorization.k8s.io/validate-prelabel-operator", "deployment.apps/validate-prelabel-operator"):
        assert f"{created} created (server dry run)" in out.stdout, out.stdout


def test_a_removed_rule_is_shown_as_forbidden_and_heals_when_restored(cluster, installed, tmp_path) -> None:  # noqa: ANN001
    ns = "rbac-check"
    chart.restricted_namespace(cluster, ns)
    role = json.loads(cluster.kubectl("get", "clusterrole", chart.RELEASE, "-o", "json").stdout)
    index = next(i for i, rule in enumerate(role["rules"]) if rule["resources"] == ["services"])
    cluster.kubectl("patch", "clusterrole", chart.RELEASE, "--type=json", "-p", json.dumps([{"op": "remove", "path": f"/rules/{index}"}]))
    operator = OperatorProcess(installed, tmp_path / "operator.log").start()
    try:
        mlbackend(cluster, ns, "denied")
        ready = wait_for("Forbidden", lambda: (c := condition(cluster.status("mlb", ns, "denied"), "Ready")).get("reason") == "Forbidden" and c, 90)
        message = ready["message"]
        assert "may not apply services in namespace rbac-check" in message and "Role or ClusterRole" in message and "helm upgrade" in message
        chart.install(cluster)  # helm upgrade puts the rule back
        wait_for("Available after the rule is back",
                 lambda: condition(cluster.status("mlb", ns, "denied"), "Available").get("status") == "True", 90)
        assert cluster.kubectl("get", "service", "denied-backend", "-n", ns, check=False).returncode == 0
    finally:
        cluster.kubectl("delete", "mlb", "denied", "-n", ns, "--timeout=60s", check=False)
        operator.stop()


def test_namespaced_mode_serves_only_its_namespaces(cluster, installed, tmp_path) -> None:  # noqa: ANN001
    for ns in ("team-a", "team-b"):
        chart.restricted_namespace(cluster, ns)
    kubeconfig = chart.install(cluster, {"watchNamespaces": ["team-a"]})
    try:
        assert cluster.kubectl("get", "clusterrole", chart.RELEASE, check=False).returncode != 0  # no cluster-wide grant left
        assert can_i(cluster, "get", "secrets", "team-a") and not can_i(cluster, "get", "secrets", "team-b")
        deployment = json.loads(cluster.kubectl("get", "deployment", chart.RELEASE, "-n", chart.NAMESPACE, "-o", "json").stdout)
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        namespaces = [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]
        assert namespaces == ["team-a"]
        operator = OperatorProcess(kubeconfig, tmp_path / "operator.log", extra_args=[f"--namespace={n}" for n in namespaces]).start()
        try:
            mlbackend(cluster, "team-a", "served")
            mlbackend(cluster, "team-b", "ignored")
            wait_for("Available in team-a", lambda: condition(cluster.status("mlb", "team-a", "served"), "Available").get("status") == "True", 90)
            assert cluster.status("mlb", "team-b", "ignored") == {}
            assert cluster.kubectl("get", "deployment", "ignored-backend", "-n", "team-b", check=False).returncode != 0
            touched = {e["objectRef"].get("namespace") for e in cluster.audit_events(chart.SERVICE_ACCOUNT_USER) if e.get("objectRef")}
            assert "team-a" in touched and "team-b" not in touched
            cluster.kubectl("delete", "mlb", "served", "-n", "team-a", "--timeout=60s")
        finally:
            operator.stop()
    finally:
        chart.install(cluster)


def test_uninstall_keeps_the_crd_and_the_resources(cluster, installed) -> None:  # noqa: ANN001
    ns = "kept"
    chart.restricted_namespace(cluster, ns)
    mlbackend(cluster, ns, "survivor")
    cluster.helm("uninstall", chart.RELEASE, "-n", chart.NAMESPACE, "--wait")
    assert cluster.kubectl("get", "crd", "mlbackends.prelabel.dev", check=False).returncode == 0
    assert cluster.kubectl("get", "mlb", "survivor", "-n", ns, check=False).returncode == 0
    assert cluster.kubectl("get", "clusterrole", chart.RELEASE, check=False).returncode != 0
