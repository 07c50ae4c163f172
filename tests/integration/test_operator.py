"""The operator on a real control plane with a real Label Studio, installed by its Helm chart and
running with exactly the chart's ServiceAccount permissions: apply -> Deployment and Service as the
seed's YAML had them (key from its Secret) -> Ready -> registered exactly once -> Label Studio
reaches the backend at its ClusterIP and stores predictions; drift repaired; a restart makes no
duplicate; delete removes registration and webhook; the API server's audit log shows the chart
grants exactly what the operator used. Every namespace enforces the restricted Pod Security Standard."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml

from prelabel_backend import synthetic
from prelabel_local import chart
from prelabel_local.kubelet import BackendKubelet
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, TRAINING_RULES, assert_least_privilege, scenes, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]


@pytest.fixture(scope="module")
def env(cluster, label_studio, tmp_path_factory, operator_image_python) -> Iterator:  # noqa: ANN001
    service_account = chart.install(cluster)  # the CRD comes with the chart
    work = tmp_path_factory.mktemp("operator")
    kubelet = BackendKubelet(cluster.kubeconfig, work).start()
    python, image_env = operator_image_python  # the image's locked dependencies only: its SDK calls need nothing left out
    operator = OperatorProcess(service_account, work / "operator.log", python=python, env=image_env).start()
    yield cluster, operator, kubelet
    operator.stop()
    kubelet.stop()
    if kubelet.errors:
        print("kubelet errors:", kubelet.errors[-5:])
    print("operator log tail:\n", (work / "operator.log").read_text()[-3000:])


def test_apply_register_predict_repair_restart_delete(env, label_studio, ls_client, personal_access_token: str) -> None:  # noqa: ANN001
    cluster, operator, _ = env
    ns = f"ml-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={label_studio.token}")
    project = ls_client.projects.create(title=f"operator project {ns}", label_config=SEED_CONFIG)
    second = ls_client.projects.create(title=f"second project {ns}", label_config=SEED_CONFIG)
    projects = [{"id": project.id}, {"title": second.title}]  # one backend, two projects: by id and by title
    resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "shapes", "namespace": ns},
                "spec": {"labelStudio": {"url": label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": projects,
                                         "publicUrls": ["https://labelstudio.example.com"]},
                         "model": {"scoreThreshold": 0.3}, "image": "prelabel-backend:test"}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))

    status = wait_for("Ready", lambda: (s := cluster.status("mlb", ns, "shapes")) and condition(s, "Ready").get("status") == "True" and s)
    deployment = json.loads(cluster.kubectl("get", "deployment", "shapes-backend", "-n", ns, "-o", "json").stdout)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env_vars = {e["name"]: e for e in container["env"]}
    assert env_vars["LABEL_STUDIO_URL"]["value"] == label_studio.url
    assert env_vars["LABEL_STUDIO_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "ls-key", "key": "api-key"}
    assert env_vars["MODEL_SCORE_THRESHOLD"]["value"] == "0.3"
    assert env_vars["LABEL_STUDIO_PUBLIC_URLS"]["value"] == "https://labelstudio.example.com"
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "MLBackend"
    assert label_studio.token not in json.dumps(deployment) and label_studio.token not in json.dumps(status)
    cluster_ip = cluster.kubectl("get", "service", "shapes-backend", "-n", ns, "-o", "jsonpath={.spec.clusterIP}").stdout
    assert status["url"] == f"http://{cluster_ip}:9090"
    assert status["projectsSummary"] == "2/2" and status["observedGeneration"] == 1
    registrations = list(ls_client.ml.list(project=project.id))
    assert [(m.url, m.state) for m in registrations] == [(status["url"], "CO")]
    assert [(m.url, m.state) for m in ls_client.ml.list(project=second.id)] == [(status["url"], "CO")]
    assert {p["id"]: p["state"] for p in status["projects"]} == {project.id: "Connected", second.id: "Connected"}

    scraped = operator.metrics()
    created = [line for line in scraped.splitlines() if line.startswith("prelabel_operator_registration_changes_total")]
    assert created == ['prelabel_operator_registration_changes_total{action="create"} 2.0'], created
    assert f'prelabel_operator_ready_backends{{name="shapes",namespace="{ns}"}} 1.0' in scraped
    assert "prelabel_operator_reconcile_seconds_count" in scraped

    # Label Studio reaches the backend at its ClusterIP and stores its predictions.
    batch = scenes(501, 3)
    task_ids = list(label_studio.upload_images(project.id, {f"op-{i}.png": synthetic.encode_png(s.image) for i, s in enumerate(batch)}).values())
    ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": False, "included": task_ids})
    stored = {t: list(ls_client.predictions.list(task=t)) for t in task_ids}
    assert all(len(p) == 1 and p[0].result for p in stored.values()), stored

    # Drift: the registration deleted in the UI comes back within a resync period.
    ls_client.ml.delete(registrations[0].id)
    restored = wait_for("re-registration", lambda: [m for m in ls_client.ml.list(project=project.id) if m.url == status["url"]], 120)
    assert len(restored) == 1

    # A spec update is applied to the Deployment and reported for its generation.
    cluster.kubectl("patch", "mlb", "shapes", "-n", ns, "--type=merge", "-p", '{"spec": {"model": {"scoreThreshold": 0.4}}}')
    wait_for("the new threshold", lambda: "0.4" in cluster.kubectl("get", "deployment", "shapes-backend", "-n", ns, "-o",
             "jsonpath={.spec.template.spec.containers[0].env[?(@.name=='MODEL_SCORE_THRESHOLD')].value}").stdout, 60)
    wait_for("generation 2", lambda: cluster.status("mlb", ns, "shapes").get("observedGeneration") == 2, 60)

    # Autoscaling on: an autoscaler appears (and is re-applied on resyncs); off: it is removed.
    def autoscaler_max() -> str:
        return cluster.kubectl("get", "hpa", "shapes-backend", "-n", ns, "-o", "jsonpath={.spec.maxReplicas}", check=False).stdout
    cluster.kubectl("patch", "mlb", "shapes", "-n", ns, "--type=merge", "-p", '{"spec": {"autoscaling": {"enabled": true, "maxReplicas": 2}}}')
    wait_for("the autoscaler", lambda: autoscaler_max() == "2", 60)
    wait_for("generation 3", lambda: cluster.status("mlb", ns, "shapes").get("observedGeneration") == 3, 60)

    def reapplied() -> bool:  # by a resync: a server-side apply to the existing autoscaler
        return any(e["verb"] == "patch" and e["responseStatus"]["code"] == 200 and e["objectRef"]["resource"] == "horizontalpodautoscalers"
                   for e in cluster.audit_events(chart.SERVICE_ACCOUNT_USER) if e.get("objectRef"))
    wait_for("the autoscaler re-applied", reapplied, 30)
    cluster.kubectl("patch", "mlb", "shapes", "-n", ns, "--type=merge", "-p", '{"spec": {"autoscaling": {"enabled": false}}}')
    wait_for("the autoscaler removed", lambda: autoscaler_max() == "", 60)

    # A rotated key rolls the pods (the template's secrets hash changes), and the backend keeps serving.
    def secrets_hash() -> str:
        return cluster.kubectl("get", "deployment", "shapes-backend", "-n", ns, "-o",
                               "jsonpath={.spec.template.metadata.annotations.prelabel\\.dev/secrets-hash}").stdout
    before = secrets_hash()
    rotated = personal_access_token  # a personal access token replaces the legacy one
    cluster.kubectl("apply", "-f", "-", input=cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={rotated}",
                                                             "--dry-run=client", "-o", "yaml").stdout)
    wait_for("a rollout for the rotated key", lambda: secrets_hash() not in ("", before), 60)
    wait_for("Ready after rotation", lambda: condition(cluster.status("mlb", ns, "shapes"), "Ready").get("status") == "True", 180)
    # The restarted backend fetches Label Studio's uploads with the rotated key.
    late = label_studio.upload_images(project.id, {"after-rotation.png": synthetic.encode_png(scenes(502, 1)[0].image)})["after-rotation.png"]

    def predicted_after_rotation() -> bool:
        ls_client.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": False, "included": [late]})
        return any(p.result for p in ls_client.predictions.list(task=late))

    wait_for("a prediction made with the rotated key", predicted_after_rotation, 120)

    # The operator killed and restarted leaves no duplicate.
    operator.kill()
    operator.start()
    time.sleep(15)
    assert len(list(ls_client.ml.list(project=project.id))) == 1
    assert len(list(ls_client.ml.list(project=second.id))) == 1

    # Delete: the finalizer removes the registration and its webhook; children are garbage-collected.
    cluster.kubectl("delete", "mlb", "shapes", "-n", ns, "--timeout=90s")
    assert list(ls_client.ml.list(project=project.id)) == [] and list(ls_client.ml.list(project=second.id)) == []
    assert not [h for h in ls_client.webhooks.list(project=str(project.id)) if h.url.startswith(status["url"])]
    wait_for("garbage collection", lambda: cluster.kubectl("get", "deployment", "shapes-backend", "-n", ns, check=False).returncode != 0, 60)
    assert_least_privilege(cluster, chart.RELEASE, skip=TRAINING_RULES)  # test_training uses those


def test_missing_secret_and_incompatible_config_are_reported(env, label_studio, ls_client) -> None:  # noqa: ANN001
    cluster, _, _ = env
    ns = f"ml-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    text = ls_client.projects.create(title=f"text {ns}",
                                     label_config='<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="PER"/></Labels></View>')
    resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "texts", "namespace": ns},
                "spec": {"labelStudio": {"url": label_studio.url, "apiKeySecretRef": {"name": "absent"}, "projects": [{"id": text.id}]}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))
    ready = wait_for("SecretMissing", lambda: (c := condition(cluster.status("mlb", ns, "texts"), "Ready")).get("reason") == "SecretMissing" and c)
    assert "Secret " + ns + "/absent does not exist" in ready["message"]

    cluster.kubectl("create", "secret", "generic", "absent", "-n", ns, f"--from-literal=api-key={label_studio.token}")
    compat = wait_for("IncompatibleLabelConfig",
                      lambda: (c := condition(cluster.status("mlb", ns, "texts"), "ConfigCompatible")).get("reason") == "IncompatibleLabelConfig" and c)
    assert compat["status"] == "False" and '<Labels name="l">: Labels is not a control this backend predicts' in compat["message"]
    # Case 7: registered all the same (Label Studio connects, as with HumanSignal's example), so the
    # project predicts as soon as its config is set, with no step in between.
    status = wait_for("Registered", lambda: (s := cluster.status("mlb", ns, "texts")) and condition(s, "Registered").get("status") == "True" and s)
    assert [(m.url, m.state) for m in ls_client.ml.list(project=text.id)] == [(status["url"], "CO")]
    assert condition(status, "Ready")["reason"] == "IncompatibleLabelConfig"

    # Case 10: labels no model class maps to are named, and the config is compatible all the same.
    star = '<Label value="Star" predicted_values="star"/></RectangleLabels>'
    ls_client.projects.update(text.id, label_config=SEED_CONFIG.replace("</RectangleLabels>", star))
    compat = wait_for("Compatible", lambda: (c := condition(cluster.status("mlb", ns, "texts"), "ConfigCompatible")).get("status") == "True" and c, 90)
    assert "labels no model class maps to: Star" in compat["message"] and "Square<-square" in compat["message"]
    assert condition(cluster.status("mlb", ns, "texts"), "Ready")["status"] == "True"
    cluster.kubectl("delete", "mlb", "texts", "-n", ns, "--timeout=90s")
    assert list(ls_client.ml.list(project=text.id)) == [] and list(ls_client.webhooks.list(project=str(text.id))) == []


def test_an_unreachable_label_studio_is_retried_and_shown(env, label_studio) -> None:  # noqa: ANN001
    cluster, _, _ = env
    ns = f"ml-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={label_studio.token}")
    resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "offline", "namespace": ns},
                "spec": {"labelStudio": {"url": "http://127.0.0.1:9", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}]}}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))
    registered = wait_for("LabelStudioUnreachable",
                          lambda: (c := condition(cluster.status("mlb", ns, "offline"), "Registered")).get("reason") == "LabelStudioUnreachable" and c)
    assert registered["status"] == "False" and "could not reach Label Studio" in registered["message"]
    assert condition(cluster.status("mlb", ns, "offline"), "Available")["status"] == "True"  # the backend itself runs
    # Deleting while Label Studio is down would wait for it; Orphan lets go at once.
    cluster.kubectl("patch", "mlb", "offline", "-n", ns, "--type=merge", "-p", '{"spec": {"deletionPolicy": "Orphan"}}')
    cluster.kubectl("delete", "mlb", "offline", "-n", ns, "--timeout=60s")
