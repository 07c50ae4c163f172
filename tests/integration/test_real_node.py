"""The product as users run it, on a real node: the images built from this commit's Dockerfiles
(prelabel_local.images), imported into containerd, `helm install` of the chart, the operator pod
and the backend pods it makes run by the kubelet, reached through kube-proxy; a real Label Studio
on the node's bridge (a host process, where pods reach it).

1. the chart installs the locally built operator image; 2. its pod passes its real liveness probe;
3. an MLBackend starts a real backend pod of the lean image (no torch) that passes its real readiness probe; 4. Label Studio
registers the backend's ClusterIP; 5. predictions are stored, through both paths (the operator's
pre-labeling: pod -> Service -> pod; Label Studio's action: host -> ClusterIP -> pod); 6. a rotated
key rolls the pods; 7. a backend pod deleted by hand is replaced and the registration stays true;
8. restricted Pod Security admission and read-only root filesystems, with nothing in the logs
saying otherwise; 9. no error line in either pod's log. Then each kind of fault (issue 27): an image
that cannot be pulled, a request no node fits, a container that exits at start, one killed for memory
while it loads: the reason in `kubectl get mlb`, an Event, cleared by a patch."""

from __future__ import annotations

import calendar
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from prelabel_backend import synthetic
from prelabel_local import chart, images, node
from prelabel_local.label_studio_server import LabelStudio
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, scenes, stop_real_node, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]
BACKEND_SELECTOR = "app.kubernetes.io/managed-by=prelabel-operator"
# A line that reports a failure, or a write the read-only root filesystem refused.
ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|Traceback)\b|Errno 30|Read-only file system|Permission denied", re.IGNORECASE)


@pytest.fixture(scope="module")
def real(cluster_bin: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Images built and imported, a control plane with a real node, Label Studio on the bridge."""
    refs = {which: images.build(which) for which in images.IMAGES}  # cached layers: seconds when nothing changed
    started = time.monotonic()
    archives = {which: images.archive(ref) for which, ref in refs.items()}
    saved = time.monotonic()
    worker = node.Node(cluster_bin)
    cluster = worker.start_cluster()
    label_studio = None
    try:
        ready = time.monotonic()
        imported = {which: worker.import_image(archive) for which, archive in archives.items()}
        print(f"\nimages saved in {saved - started:.0f}s, node Ready in {ready - saved:.0f}s, "
              f"imported {imported} in {time.monotonic() - ready:.0f}s")
        label_studio = LabelStudio(host=node.GATEWAY).start()
        yield {"cluster": cluster, "node": worker, "label_studio": label_studio, "refs": refs}
    finally:
        stop_real_node(request, worker, cluster, label_studio)
    assert node.leftovers() == []


def pods(cluster, namespace: str, selector: str) -> list[dict[str, Any]]:  # noqa: ANN001
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    return list(json.loads(out)["items"])


def ready_pods(cluster, namespace: str, selector: str) -> list[dict[str, Any]]:  # noqa: ANN001
    return [p for p in pods(cluster, namespace, selector) if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]


def one_ready(cluster, namespace: str, selector: str, other_than: set[str] = frozenset()) -> dict[str, Any] | None:  # noqa: ANN001
    """The only pod of the selector, when it is Ready and not one of `other_than` (names)."""
    found = pods(cluster, namespace, selector)
    ready = ready_pods(cluster, namespace, selector)
    return ready[0] if len(found) == len(ready) == 1 and ready[0]["metadata"]["name"] not in other_than else None


def error_lines(cluster, namespace: str, pod: str) -> list[str]:  # noqa: ANN001
    log = cluster.kubectl("logs", pod, "-n", namespace).stdout
    return [line for line in log.splitlines() if ERROR_LINE.search(line)]


def test_the_chart_and_the_backend_on_a_real_node(real: dict[str, Any]) -> None:
    cluster, label_studio = real["cluster"], real["label_studio"]
    from label_studio_sdk import LabelStudio as Client

    ls_client = Client(base_url=label_studio.url, api_key=label_studio.token)
    repository, tag = real["refs"]["operator"].rsplit(":", 1)

    # 1. helm install with the image built from Dockerfile.operator (never pulled: no registry here).
    chart.install(cluster, {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}})
    operator_selector = f"app.kubernetes.io/instance={chart.RELEASE}"
    operator = wait_for("the operator pod Ready", lambda: one_ready(cluster, chart.NAMESPACE, operator_selector), 120)
    assert operator["spec"]["nodeName"] == node.NODE_NAME
    assert operator["spec"]["containers"][0]["image"] == real["refs"]["operator"]

    # 2. Its real liveness probe: the endpoint answers on the pod's IP, and the kubelet, probing it
    # past the initial delay and a full period, has not restarted it nor reported it Unhealthy.
    container = operator["spec"]["containers"][0]
    probe = container["livenessProbe"]
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["httpGet"]["port"])
    liveness = f"http://{operator['status']['podIP']}:{port}{probe['httpGet']['path']}"  # kopf serves it once started
    wait_for("the liveness endpoint", lambda: answers(liveness), 60)
    time.sleep(max(0.0, probe["initialDelaySeconds"] + probe["periodSeconds"] + 2 - pod_age(operator)))
    operator = one_ready(cluster, chart.NAMESPACE, operator_selector)
    assert operator and operator["status"]["containerStatuses"][0]["restartCount"] == 0
    assert "Unhealthy" not in events(cluster, chart.NAMESPACE, operator["metadata"]["name"])

    # 3. An MLBackend with the lean image (Dockerfile.backend-lean: no torch), pre-labeling a small project.
    ns = f"real-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={label_studio.token}")
    project = ls_client.projects.create(title=f"real node {ns}", label_config=SEED_CONFIG)
    tasks = set(label_studio.upload_images(project.id, {f"real-{i}.png": synthetic.encode_png(s.image)
                                                          for i, s in enumerate(scenes(701, 4))}).values())
    resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "shapes", "namespace": ns},
                "spec": {"labelStudio": {"url": label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": project.id}]},
                         "image": real["refs"]["backend-lean"], "imagePullPolicy": "Never",
                         "prelabel": {"batchSize": 2, "concurrency": 1, "pollSeconds": 5}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))
    backend = wait_for("a backend pod Ready", lambda: one_ready(cluster, ns, BACKEND_SELECTOR), 300)
    assert backend["spec"]["nodeName"] == node.NODE_NAME and backend["spec"]["containers"][0]["image"] == real["refs"]["backend-lean"]
    assert "readinessProbe" in backend["spec"]["containers"][0]

    # 4. Label Studio (a host process) registers the Service's ClusterIP, reached through kube-proxy.
    status = wait_for("Ready", lambda: (s := cluster.status("mlb", ns, "shapes")) and condition(s, "Ready").get("status") == "True" and s, 180)
    cluster_ip = cluster.kubectl("get", "service", "shapes-backend", "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert status["url"] == f"http://{cluster_ip}:9090" and cluster_ip.startswith(node.SERVICE_CIDR.rsplit(".", 1)[0])
    assert [(m.url, m.state) for m in ls_client.ml.list(project=project.id)] == [(status["url"], "CO")]

    # 5. Predictions stored: by the operator's pre-labeling (operator pod -> ClusterIP -> backend pod) ...
    done = wait_for("4/4 pre-labeled", lambda: (p := cluster.status("mlb", ns, "shapes").get("prelabel") or {}).get("phase") == "Complete" and p, 300)
    assert (done["predicted"], done["failed"]) == (4, 0)
    predictions = list(ls_client.predictions.list(project=project.id))
    assert {p.task for p in predictions} == tasks and all(p.result for p in predictions)

    # 6. A rotated key rolls the pods; the new pod serves Label Studio's own action (host -> ClusterIP).
    old = backend["metadata"]["name"]
    rotated = str(ls_client.tokens.create().token)  # a personal access token replaces the legacy one
    cluster.kubectl("apply", "-f", "-", input=cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns,
                                                             f"--from-literal=api-key={rotated}", "--dry-run=client", "-o", "yaml").stdout)
    backend = wait_for("the rolled pod Ready, the old one gone", lambda: one_ready(cluster, ns, BACKEND_SELECTOR, {old}), 300)
    late = label_studio.upload_images(project.id, {"after-rotation.png": synthetic.encode_png(scenes(702, 1)[0].image)})["after-rotation.png"]
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": False, "included": [late]})
    assert any(p.result for p in ls_client.predictions.list(task=late))

    # 7. A backend pod deleted by hand is replaced; the registration stays true.
    old = backend["metadata"]["name"]
    cluster.kubectl("delete", "pod", old, "-n", ns, "--wait=false")
    backend = wait_for("a replacement pod Ready", lambda: one_ready(cluster, ns, BACKEND_SELECTOR, {old}), 300)
    wait_for("Ready again", lambda: condition(cluster.status("mlb", ns, "shapes"), "Ready").get("status") == "True", 120)
    assert [(m.url, m.state) for m in ls_client.ml.list(project=project.id)] == [(status["url"], "CO")]

    # 8. Restricted Pod Security admission let both pods in, with read-only root filesystems.
    both = ((chart.NAMESPACE, operator), (ns, backend))
    for namespace, pod in both:
        labels = json.loads(cluster.kubectl("get", "namespace", namespace, "-o", "json").stdout)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, (namespace, c["name"])
    # 9. ... and neither log has an error line, nor a refused write.
    assert {namespace: error_lines(cluster, namespace, pod["metadata"]["name"]) for namespace, pod in both} == {chart.NAMESPACE: [], ns: []}
    assert cluster.kubectl("logs", backend["metadata"]["name"], "-n", ns).stdout.strip()  # a log to read: the check can fail


# Issue 27: each kind of fault, shown in `kubectl get mlb` within one resync, with an Event, and
# cleared by a patch of the MLBackend. Nothing leaves the machine: the unpullable image names a
# registry on 127.0.0.1 that refuses connections.
SMALL = {"requests": {"cpu": "50m", "memory": "128Mi"}}
FAULTS = {
    "pull": ({"image": "127.0.0.1:1/prelabel/backend:none", "imagePullPolicy": "Always"}, "ImagePullFailed", "127.0.0.1:1/prelabel/backend:none",
             {"image": "BACKEND", "imagePullPolicy": "Never"}),
    "cpu": ({"resources": {"requests": {"cpu": "64", "memory": "128Mi"}}}, "Unschedulable", "Insufficient cpu", {"resources": SMALL}),
    "exit": ({"model": {"env": [{"name": "WORKERS", "value": "abc"}]}}, "CrashLoopBackOff", "WORKERS must be an integer", {"model": {"env": None}}),
    "oom": ({"resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "150Mi"}}}, "OOMKilled", "150Mi",
            {"resources": {**SMALL, "limits": {"memory": "3Gi"}}}),
}


def test_each_kind_of_fault_says_why_in_kubectl_get_and_clears_when_fixed(real: dict[str, Any]) -> None:
    cluster, label_studio = real["cluster"], real["label_studio"]
    ensure_operator(real)
    from label_studio_sdk import LabelStudio as Client

    ls_client = Client(base_url=label_studio.url, api_key=label_studio.token)
    made = {}
    for kind, (fault, _, _, _) in FAULTS.items():  # all at once: their waits overlap
        ns = f"fault-{kind}-{uuid.uuid4().hex[:4]}"
        chart.restricted_namespace(cluster, ns)
        cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={label_studio.token}")
        project = ls_client.projects.create(title=f"fault {ns}", label_config=SEED_CONFIG)
        spec = {"labelStudio": {"url": label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": project.id}]},
                "image": real["refs"]["backend"], "imagePullPolicy": "Never", "resources": SMALL, **fault}
        resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "shapes", "namespace": ns}, "spec": spec}
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))
        made[kind] = ns
    for kind, (_, reason, words, _) in FAULTS.items():
        ns = made[kind]
        # Within one resync (the chart's default, 30 s) of the cause showing on the pod; a crash loop
        # and an OOM kill show after the container's first exits.
        shown = wait_for(f"{kind}: {reason}", lambda ns=ns, reason=reason: (c := condition(cluster.status("mlb", ns, "shapes"), "Ready"))
                         .get("reason") == reason and c, 240)
        assert shown["status"] == "False" and words in shown["message"], shown
        header, row = cluster.kubectl("get", "mlb", "shapes", "-n", ns).stdout.splitlines()
        assert row[header.index("REASON"):].split()[0] == reason, (header, row)  # a column left of it may be empty
        assert reason in events(cluster, ns, "shapes"), kind
        print(f"{kind}: {reason}: {shown['message']}")
    for kind, (_, _, _, fix) in FAULTS.items():
        patch = json.dumps({"spec": fix}).replace('"BACKEND"', json.dumps(real["refs"]["backend"]))
        cluster.kubectl("patch", "mlb", "shapes", "-n", made[kind], "--type=merge", "-p", patch)
    for kind, ns in made.items():
        wait_for(f"{kind}: Ready once fixed", lambda ns=ns: condition(cluster.status("mlb", ns, "shapes"), "Ready").get("status") == "True", 300)
        assert condition(cluster.status("mlb", ns, "shapes"), "Available")["reason"] == "DeploymentAvailable"
        cluster.kubectl("delete", "mlb", "shapes", "-n", ns, "--timeout=120s")


def ensure_operator(real: dict[str, Any]) -> None:
    """The chart installed with the operator image (the first test installs it; alone, this one does)."""
    cluster = real["cluster"]
    selector = f"app.kubernetes.io/instance={chart.RELEASE}"
    if not ready_pods(cluster, chart.NAMESPACE, selector):
        repository, tag = real["refs"]["operator"].rsplit(":", 1)
        chart.install(cluster, {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}})
        wait_for("the operator pod Ready", lambda: one_ready(cluster, chart.NAMESPACE, selector), 120)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def pod_age(pod: dict[str, Any]) -> float:
    return time.time() - calendar.timegm(time.strptime(pod["status"]["startTime"], "%Y-%m-%dT%H:%M:%SZ"))


def events(cluster, namespace: str, name: str) -> list[str]:  # noqa: ANN001
    out = cluster.kubectl("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o",
                          "jsonpath={.items[*].reason}").stdout
    return out.split()
