"""Spec parsing and the objects built from it: what the seed's YAML set, the key from its Secret."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from prelabel_operator import manifests
from prelabel_operator.spec import MLBackendSpec, SpecError
from tests.conftest import REPO

RAW = {"labelStudio": {"url": "http://ls.labeling:8080/", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 3}, {"title": "Cars"}]}}


def parsed(**changes) -> MLBackendSpec:  # noqa: ANN003
    raw = copy.deepcopy(RAW)
    raw.update(changes)
    return MLBackendSpec.parse(raw)


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_parse_applies_the_schema_defaults() -> None:
    spec = parsed()
    ls = spec.label_studio
    assert ls.url == "http://ls.labeling:8080" and (ls.api_key.name, ls.api_key.key) == ("ls-key", "api-key")
    assert [p.describe() for p in ls.projects] == ["project 3", "project titled 'Cars'"]
    assert (ls.title, ls.address_mode, spec.service_port, spec.replicas, spec.deletion_policy) == ("prelabel", "ClusterIP", 9090, 1, "Deregister")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"labelStudio": {"apiKeySecretRef": {"name": "k"}, "projects": [{"id": 1}]}}, "spec.labelStudio.url is required"),
        ({"labelStudio": {"url": "http://x", "projects": [{"id": 1}]}}, "apiKeySecretRef.name is required"),
        ({"labelStudio": {"url": "http://x", "apiKeySecretRef": {"name": "k"}, "projects": [{"id": 1, "title": "t"}]}}, r"projects\[0\] needs exactly one"),
        ({"labelStudio": {"url": "http://x", "apiKeySecretRef": {"name": "k"}, "projects": []}},
         "lists at least one project, or spec.labelStudio.projectSelector"),
        ({"labelStudio": {"url": "http://x", "apiKeySecretRef": {"name": "k"}, "projects": [{"id": 1}], "projectSelector": {}}}, "set one of the two"),
        ({"labelStudio": {"url": "http://x", "apiKeySecretRef": {"name": "k"}, "projectSelector": {"titlePattern": "(street"}}},
         "titlePattern is not a regular expression: missing \\)"),
        ({"labelStudio": {"url": "http://x", "apiKeySecretRef": {"name": "k"}, "projectSelector": {}}, "training": {},
          "model": {"store": {"s3": {"url": "s3://m", "credentialsSecretRef": {"name": "s"}}}}}, "spec.training.project: name the project"),
    ],
)
def test_parse_names_the_field_to_fix(raw: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        MLBackendSpec.parse(raw)


def test_deployment_carries_the_seed_settings_with_the_key_from_its_secret() -> None:
    deployment = manifests.deployment("shapes", parsed(model={"scoreThreshold": 0.3}), "abc123")
    env = env_of(deployment)
    assert env["LABEL_STUDIO_URL"] == {"name": "LABEL_STUDIO_URL", "value": "http://ls.labeling:8080"}
    assert env["LABEL_STUDIO_API_KEY"] == {"name": "LABEL_STUDIO_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ls-key", "key": "api-key"}}}
    assert env["MODEL_SCORE_THRESHOLD"]["value"] == "0.3"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [{"name": "http", "containerPort": 9090, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert deployment["spec"]["template"]["metadata"]["annotations"][manifests.SECRETS_HASH_ANNOTATION] == "abc123"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_pods_are_hardened() -> None:
    pod = manifests.deployment("shapes", parsed(), "h")["spec"]["template"]["spec"]
    sc = pod["containers"][0]["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]


def test_basic_auth_and_extra_env_come_through_and_extra_env_wins() -> None:
    spec = parsed(basicAuthSecretRef={"name": "auth"}, model={"env": [{"name": "THREADS", "value": "4"}, {"name": "DEVICE", "value": "cuda:1"}]})
    env = env_of(manifests.deployment("shapes", spec, "h"))
    assert env["BASIC_AUTH_PASS"]["valueFrom"]["secretKeyRef"] == {"name": "auth", "key": "password"}
    assert env["THREADS"]["value"] == "4" and env["DEVICE"]["value"] == "cuda:1"


def test_secret_hash_changes_with_the_data_and_hides_it() -> None:
    one = manifests.secrets_hash({"ls-key": {"api-key": "c2VjcmV0"}})
    two = manifests.secrets_hash({"ls-key": {"api-key": "c2VjcmV1"}})
    assert one != two and "c2VjcmV0" not in one and len(one) == 16


def test_pod_template_escape_hatch_merges_over_the_built_pod() -> None:
    spec = parsed(podTemplate={"metadata": {"annotations": {"team": "cv"}}, "spec": {"priorityClassName": "high"}}, nodeSelector={"gpu": "yes"})
    template = manifests.deployment("shapes", spec, "h")["spec"]["template"]
    assert template["metadata"]["annotations"] == {manifests.SECRETS_HASH_ANNOTATION: "h", "team": "cv"}
    assert template["spec"]["priorityClassName"] == "high" and template["spec"]["nodeSelector"] == {"gpu": "yes"}
    assert template["spec"]["containers"][0]["name"] == "backend"


def test_autoscaling_owns_the_replica_count() -> None:
    spec = parsed(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5})
    assert "replicas" not in manifests.deployment("shapes", spec, "h")["spec"]
    hpa = manifests.autoscaler("shapes", spec)
    assert hpa is not None and (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert manifests.autoscaler("shapes", parsed()) is None


def test_scale_to_zero_sets_the_replicas_with_or_without_an_autoscaler() -> None:
    assert manifests.deployment("shapes", parsed(replicas=3), "h", replicas=0)["spec"]["replicas"] == 0
    spec = parsed(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 5})
    assert manifests.deployment("shapes", spec, "h", replicas=0)["spec"]["replicas"] == 0  # an HPA leaves zero alone


def test_service_and_the_address_label_studio_is_given() -> None:
    svc = manifests.service("shapes", parsed(service={"port": 8000}))
    assert svc["spec"]["ports"][0]["port"] == 8000 and svc["spec"]["selector"] == manifests.selector("shapes")
    assert manifests.backend_url("shapes", "ml", parsed(), "10.0.0.7") == "http://10.0.0.7:9090"
    assert manifests.backend_url("shapes", "ml", parsed(), None) is None
    dns = parsed(labelStudio={**RAW["labelStudio"], "address": {"mode": "ServiceDNS"}})
    assert manifests.backend_url("shapes", "ml", dns, None) == "http://shapes-backend.ml.svc:9090"
    url = parsed(labelStudio={**RAW["labelStudio"], "address": {"mode": "URL", "url": "https://ml.example.com"}})
    assert manifests.backend_url("shapes", "ml", url, "10.0.0.7") == "https://ml.example.com"


def test_weights_from_a_file_in_the_image() -> None:
    deployment = manifests.deployment("shapes", parsed(model={"weights": {"file": "yolov8n.pt"}}), "h")
    assert env_of(deployment)["MODEL_WEIGHTS"]["value"] == "yolov8n.pt"
    assert "MODEL_ROOT" not in env_of(deployment) and "initContainers" not in deployment["spec"]["template"]["spec"]


def test_weights_from_a_pvc_are_mounted_read_only_as_model_root() -> None:
    pod = manifests.deployment("shapes", parsed(model={"weights": {"pvc": {"claimName": "weights", "file": "best.pt"}}}), "h")["spec"]["template"]["spec"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert (env["MODEL_ROOT"], env["MODEL_WEIGHTS"]) == ("/models", "best.pt")


def test_weights_from_a_url_are_fetched_and_checked_by_an_init_container() -> None:
    digest = "a" * 64
    weights = {"url": {"href": "https://models.example.com/v2/best.pt?sig=x", "sha256": digest}}
    pod = manifests.deployment("shapes", parsed(model={"weights": weights}), "h")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["python", "-m", "prelabel_backend.fetch_weights", "https://models.example.com/v2/best.pt?sig=x", digest, "/models/best.pt"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "models", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]
    assert {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}["MODEL_WEIGHTS"] == "best.pt"


def test_two_weight_sources_are_refused() -> None:
    with pytest.raises(SpecError, match="at most one"):
        parsed(model={"weights": {"file": "a.pt", "pvc": {"claimName": "c", "file": "b.pt"}}})


def test_label_studio_public_urls_reach_the_backend_env() -> None:
    """Case 2 with the operator: spec.labelStudio.publicUrls -> LABEL_STUDIO_PUBLIC_URLS."""
    assert "LABEL_STUDIO_PUBLIC_URLS" not in env_of(manifests.deployment("shapes", parsed(), "h"))
    raw = copy.deepcopy(RAW)
    raw["labelStudio"]["publicUrls"] = ["https://labelstudio.example.com/", "https://example.com/ls"]
    spec = MLBackendSpec.parse(raw)
    assert spec.label_studio.public_urls == ("https://labelstudio.example.com", "https://example.com/ls")
    env = env_of(manifests.deployment("shapes", spec, "h"))
    assert env["LABEL_STUDIO_PUBLIC_URLS"] == {"name": "LABEL_STUDIO_PUBLIC_URLS", "value": "https://labelstudio.example.com,https://example.com/ls"}


@pytest.mark.parametrize("name", ["a", "shapes", "yolo-v8", "a" * 55, "b1-" + "c" * 52])
def test_names_whose_service_name_is_valid(name: str) -> None:
    assert manifests.name_problem(name) is None
    assert len(manifests.object_name(name)) <= 63


@pytest.mark.parametrize("name", ["a" * 56, "a" * 253, "1abc", "my.backend", "ends-", "x" * 200 + ".example.com"])
def test_names_the_service_cannot_carry_get_a_message_that_says_what_to_fix(name: str) -> None:
    problem = manifests.name_problem(name)
    assert problem is not None and "at most 55 lowercase letters, digits and '-'" in problem and "DNS-1035" in problem
    assert len(problem) < 600  # a 253-character name is cut short in the message


def test_the_crd_refuses_exactly_the_names_the_operator_cannot_serve() -> None:
    """The CRD's metadata.name rule and manifests.name_problem agree (its regex and length, read from the CRD)."""
    schema = yaml.safe_load((REPO / "crds" / "mlbackend.yaml").read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rule = schema["x-kubernetes-validations"][0]["rule"]
    size = int(re.search(r"size\(\) <= (\d+)", rule).group(1))  # type: ignore[union-attr]
    pattern = re.search(r"matches\('(.*)'\)", rule).group(1)  # type: ignore[union-attr]
    for name in ["a", "a" * 55, "a" * 56, "1abc", "my.backend", "ends-", "mid-dle", "UPPER"]:
        assert (len(name) <= size and re.search(pattern, name) is not None) == (manifests.name_problem(name) is None), name


def test_owner_uid_is_the_owning_mlbackend_from_kopf_adopt() -> None:
    import kopf

    deployment = manifests.deployment("b", MLBackendSpec.parse(copy.deepcopy(RAW)), "digest")
    assert manifests.owner_uid(deployment) is None
    owner = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "b", "namespace": "ns", "uid": "u-1"}}
    kopf.adopt(deployment, owner=owner)
    assert manifests.owner_uid(deployment) == "u-1"
    deployment["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u-2"}]
    assert manifests.owner_uid(deployment) is None  # another kind's owner is no MLBackend's


# -- any Label Studio ML backend (spec.backend, issue 26) --------------------------------------------
def foreign(**backend: object) -> MLBackendSpec:
    return MLBackendSpec.parse({**RAW, "image": "team/sdk-backend:1", "basicAuthSecretRef": {"name": "auth"}, "backend": backend})


def test_a_foreign_backend_runs_as_declared_on_a_read_only_root_with_its_writable_dirs() -> None:
    spec = foreign(command=["gunicorn"], args=["--bind", ":8000", "_wsgi:app"], port=8000, healthPath="/ready",
                   writableDirs=["/home/app/.cache"], gpu=1, env=[{"name": "MODEL_DIR", "value": "/data/m2"}, {"name": "EXTRA", "value": "1"}])
    pod = manifests.deployment("sdk", spec, "digest")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert (container["image"], container["command"], container["args"]) == ("team/sdk-backend:1", ["gunicorn"], ["--bind", ":8000", "_wsgi:app"])
    assert container["ports"][0]["containerPort"] == 8000 and container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp", "/data/models", "/home/app/.cache"} and len(pod["volumes"]) == 3
    assert all("emptyDir" in v for v in pod["volumes"])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and security["runAsUser"] == security["runAsGroup"] == 10001
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MODEL_DIR"] == "/data/m2" and env["EXTRA"] == "1" and env["PORT"] == "8000" and env["HOME"] == "/tmp"  # declared env wins
    assert env["LABEL_STUDIO_API_KEY"] == {"secretKeyRef": {"name": "ls-key", "key": "api-key"}}
    assert env["BASIC_AUTH_PASS"] == {"secretKeyRef": {"name": "auth", "key": "password"}}
    assert "MODEL_SCORE_THRESHOLD" not in env and "DEVICE" not in env  # Prelabel's own variables stay out
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_root_is_only_what_is_declared_and_the_own_backend_is_the_default() -> None:
    root = manifests.deployment("sdk", foreign(runAsUser=0), "d")["spec"]["template"]["spec"]
    assert root["containers"][0]["securityContext"]["runAsUser"] == 0 and root["securityContext"]["runAsNonRoot"] is False
    assert root["containers"][0]["securityContext"]["readOnlyRootFilesystem"]  # still read-only
    own = MLBackendSpec.parse(RAW)
    assert own.backend is None and not own.foreign and own.prelabel is None
    assert manifests.deployment("x", own, "d")["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize(("raw", "words"), [
    ({**RAW, "backend": {}}, "set spec.image"),
    ({**RAW, "image": "team/sdk:1", "backend": {}, "training": {}, "model": {"store": {"pvc": {"claimName": "m"}}}}, "spec.training"),
    ({**RAW, "image": "team/sdk:1", "backend": {"healthPath": "health"}}, "spec.backend.healthPath"),
    ({**RAW, "image": "team/sdk:1", "backend": {"writableDirs": ["cache"]}}, "writableDirs"),
])
def test_a_foreign_spec_that_cannot_run_says_which_field(raw: dict[str, object], words: str) -> None:
    with pytest.raises(SpecError, match=words):
        MLBackendSpec.parse(raw)


def test_a_foreign_backend_keeps_existing_predictions_unless_told_otherwise() -> None:
    assert MLBackendSpec.parse({**RAW, "prelabel": {}}).prelabel.on_new_model_version == "Repredict"  # type: ignore[union-attr]
    sdk = {**RAW, "image": "team/sdk:1", "backend": {}}
    assert MLBackendSpec.parse({**sdk, "prelabel": {}}).prelabel.on_new_model_version == "KeepExisting"  # type: ignore[union-attr]
    told = MLBackendSpec.parse({**sdk, "prelabel": {"onNewModelVersion": "Repredict"}})
    assert told.prelabel.on_new_model_version == "Repredict"  # type: ignore[union-attr]
