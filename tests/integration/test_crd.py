"""The MLBackend CRD on a real apiserver: defaults filled in, malformed resources rejected with a
message a person understands, and `kubectl explain` teaching the fields."""

from __future__ import annotations

import copy
import json
import uuid

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.cluster

MINIMAL = {
    "apiVersion": "prelabel.dev/v1alpha1",
    "kind": "MLBackend",
    "metadata": {"name": "shapes"},
    "spec": {"labelStudio": {"url": "http://label-studio.labeling:8080", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}]}},
}


CITY = {"filter": "filter:tasks:data.city", "operator": "equal", "type": "String", "value": "Paris"}


@pytest.fixture(scope="module")
def crd(cluster):  # noqa: ANN001, ANN201
    # Strict: a schema node with a field JSONSchemaProps does not know (a YAML slip) is an error.
    cluster.kubectl("apply", "--validate=strict", "-f", str(REPO / "crds" / "mlbackend.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/mlbackends.prelabel.dev", "--timeout=30s")
    return cluster


@pytest.mark.parametrize("example", ["examples/label-studio-secret.yaml", "examples/mlbackend.yaml",
                                     *sorted(str(p.relative_to(REPO)) for p in (REPO / "examples" / "argocd" / "mlbackends").glob("*.yaml"))])
def test_the_examples_are_valid(crd, example: str) -> None:  # noqa: ANN001
    namespace = yaml.safe_load((REPO / example).read_text())["metadata"]["namespace"]
    if crd.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        crd.kubectl("create", "namespace", namespace)
    out = crd.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(REPO / example), check=False)
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr


def apply(cluster, body: dict):  # noqa: ANN001, ANN201
    body = copy.deepcopy(body)
    body["metadata"]["name"] = f"mlb-{uuid.uuid4().hex[:6]}"
    return cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False), body["metadata"]["name"]


def with_spec(**changes) -> dict:  # noqa: ANN003
    body = copy.deepcopy(MINIMAL)
    for path, value in changes.items():
        node = body["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return body


def test_a_minimal_resource_gets_every_default(crd) -> None:  # noqa: ANN001
    done, name = apply(crd, MINIMAL)
    assert done.returncode == 0, done.stderr
    spec = json.loads(crd.kubectl("get", "mlb", name, "-o", "json").stdout)["spec"]
    assert spec["labelStudio"]["apiKeySecretRef"] == {"name": "ls-key", "key": "api-key"}
    assert spec["labelStudio"]["title"] == "prelabel" and spec["labelStudio"]["address"] == {"mode": "ClusterIP"}
    assert spec["labelStudio"]["interactive"] is False and spec["labelStudio"]["timeoutSeconds"] == 100
    assert spec["model"] == {"scoreThreshold": 0.5, "device": "cpu"}
    assert spec["service"] == {"type": "ClusterIP", "port": 9090}
    assert (spec["replicas"], spec["deletionPolicy"], spec["imagePullPolicy"]) == (1, "Deregister", "IfNotPresent")
    assert "prelabel" not in spec  # pre-labeling is asked for, never on by default


def test_prelabel_turned_on_with_an_empty_section_gets_its_defaults(crd) -> None:  # noqa: ANN001
    body = copy.deepcopy(MINIMAL)
    body["spec"]["prelabel"] = {}
    done, name = apply(crd, body)
    assert done.returncode == 0, done.stderr
    spec = json.loads(crd.kubectl("get", "mlb", name, "-o", "json").stdout)["spec"]
    # No onNewModelVersion: the operator's default depends on spec.backend (Repredict for Prelabel's
    # own backend, KeepExisting for any other), which a CRD default cannot see.
    assert spec["prelabel"] == {"paused": False, "tasks": "All", "batchSize": 16, "concurrency": 2, "pollSeconds": 15, "maxAttempts": 3,
                                "interactive": False}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (with_spec(labelStudio__projects=[{"id": 1, "title": "both"}]), "each project needs exactly one of id or title"),
        (with_spec(labelStudio__projects=[{}]), "each project needs exactly one of id or title"),
        (with_spec(labelStudio__projects=[]), "spec.labelStudio.projects: Invalid value: 0: spec.labelStudio.projects in body should have at least 1 items"),
        (with_spec(labelStudio__projectSelector={"titlePattern": "^Street"}), "lists at least one project, or spec.labelStudio.projectSelector"),
        (with_spec(labelStudio={"url": "http://ls:8080", "apiKeySecretRef": {"name": "k"}}), "set one of the two"),
        (with_spec(labelStudio__url="ftp://ls"), "spec.labelStudio.url in body should match"),
        (with_spec(labelStudio__apiKeySecretRef={}), "spec.labelStudio.apiKeySecretRef.name: Required value"),
        (with_spec(labelStudio__address={"mode": "URL"}), "address.url is required when address.mode is URL, and only then"),
        (with_spec(labelStudio__address={"mode": "ClusterIP", "url": "http://x"}), "address.url is required when address.mode is URL, and only then"),
        (with_spec(labelStudio__address={"mode": "NodeIP"}), 'supported values: "ClusterIP", "ServiceDNS", "URL"'),
        (with_spec(model={"scoreThreshold": 1.5}), "spec.model.scoreThreshold in body should be less than or equal to 1"),
        (with_spec(model={"weights": {"file": "a.pt", "url": {"href": "https://x/a.pt", "sha256": "0" * 64}}}),
         "set at most one of weights.file, weights.pvc, weights.url and weights.version"),
        (with_spec(model={"weights": {"url": {"href": "https://x/a.pt", "sha256": "nothex"}}}), "spec.model.weights.url.sha256 in body should match"),
        (with_spec(training={"afterAnnotations": 50}), "training puts its candidates in a model store; set model.store (s3 or pvc)"),
        (with_spec(model={"store": {"s3": {"url": "s3://models/a"}, "pvc": {"claimName": "models"}}}), "set exactly one of store.s3 and store.pvc"),
        (with_spec(model={"weights": {"version": "v3"}}), "model.weights.version names a stored version; set model.store too"),
        (with_spec(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}), "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
        (with_spec(replicas=-1), "spec.replicas in body should be greater than or equal to 0"),
        (with_spec(deletionPolicy="Keep"), 'supported values: "Deregister", "Orphan"'),
        (with_spec(prelabel={"tasks": "Unlabeled"}), 'spec.prelabel.tasks: Unsupported value: "Unlabeled": supported values: "All", "Unannotated"'),
        (with_spec(prelabel={"onNewModelVersion": "Never"}), 'supported values: "Repredict", "KeepExisting"'),
        (with_spec(prelabel={"batchSize": 0}), "spec.prelabel.batchSize in body should be greater than or equal to 1"),
        (with_spec(prelabel={"concurrency": 500}), "spec.prelabel.concurrency in body should be less than or equal to 64"),
        (with_spec(prelabel={"paused": "yes"}), 'spec.prelabel.paused: Invalid value: "string": spec.prelabel.paused in body must be of type boolean'),
        (with_spec(prelabel={"subset": {"filters": {"items": [CITY]}, "view": "To pre-label"}}),
         "spec.prelabel.subset: set filters or view, not both"),
        (with_spec(prelabel={"subset": {"filters": {"conjunction": "or", "items": [CITY, CITY]}}}),
         "conjunction 'or' over several items cannot be combined with the operator's own filters"),
        (with_spec(prelabel={"subset": {"filters": {"items": [{**CITY, "filter": "data.city"}]}}}),
         'spec.prelabel.subset.filters.items[0].filter: Invalid value: "data.city"'),
        (with_spec(prelabel={"subset": {"sample": 0}}), "spec.prelabel.subset.sample in body should be greater than or equal to 1"),
        (with_spec(prelabel={"retention": {"keepModelVersions": 0}}), "spec.prelabel.retention.keepModelVersions in body should be greater than or equal to 1"),
        (with_spec(prelabel={"retention": {}}), "spec.prelabel.retention.keepModelVersions: Required value"),
        (with_spec(prelabel={"scaleToZero": {"idleSeconds": 1}}), "spec.prelabel.scaleToZero.idleSeconds in body should be greater than or equal to 10"),
        (with_spec(labelStudio__interactive=True, prelabel={"interactive": True, "scaleToZero": {}}),
         "prelabel.scaleToZero cannot sleep an interactive backend: Label Studio calls it at each click"),
        # Absurd sizes (issue 15): refused here, with the limit named, rather than half-applied by the operator.
        (with_spec(labelStudio__projects=[{"id": i} for i in range(1, 1001)]), "spec.labelStudio.projects: Too many: 1000: must have at most 50 items"),
        (with_spec(model={"env": [{"name": f"V{i}", "value": "x"} for i in range(65)]}), "spec.model.env: Too many: 65: must have at most 64 items"),
        (with_spec(model={"env": [{"name": "BIG", "value": "x" * 2049}]}), "spec.model.env[0].value: Too long: may not be more than 2048 bytes"),
        (with_spec(labelStudio__projects=[{"title": "t" * 501}]), "spec.labelStudio.projects[0].title: Too long: may not be more than 500 bytes"),
    ],
)
def test_malformed_resources_are_rejected_with_a_readable_message(crd, body: dict, message: str) -> None:  # noqa: ANN001
    done, _ = apply(crd, body)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


NAME_RULE = "metadata.name must be at most 55 characters of lowercase letters, digits and '-', start with a letter"


@pytest.mark.parametrize("name", ["a" * 56, "a" * 253, "1-backend", "my.backend", "x" * 240 + ".example.com"])
def test_names_the_backend_service_cannot_carry_are_refused(crd, name: str) -> None:  # noqa: ANN001
    """Valid object names (DNS-1123 subdomains, up to 253 characters) whose Service, <name>-backend,
    would not be a DNS-1035 label of at most 63 characters."""
    body = copy.deepcopy(MINIMAL)
    body["metadata"]["name"] = name
    done = crd.kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert done.returncode != 0 and NAME_RULE in done.stderr, done.stderr


def test_the_longest_name_allowed_is_accepted(crd) -> None:  # noqa: ANN001
    body = copy.deepcopy(MINIMAL)
    body["metadata"]["name"] = "n" * 55
    done = crd.kubectl("apply", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert done.returncode == 0, done.stderr


def test_training_on_demand_only_is_0_since_null_brings_the_default_back(crd) -> None:  # noqa: ANN001
    """afterAnnotations: null does not survive kubectl apply nor a merge patch (the field is dropped and
    the API server defaults it to 50), so "on demand only" is 0, which does."""
    body = with_spec(model={"store": {"s3": {"url": "s3://models/a"}}}, training={"afterAnnotations": None})
    done, name = apply(crd, body)
    assert done.returncode == 0, done.stderr

    def after() -> object:
        return json.loads(crd.kubectl("get", "mlb", name, "-o", "json").stdout)["spec"]["training"].get("afterAnnotations", "absent")

    assert after() == 50
    for value, expected in ((0, 0), (60, 60), (None, 50), (0, 0)):
        crd.kubectl("patch", "mlb", name, "--type", "merge", "-p", json.dumps({"spec": {"training": {"afterAnnotations": value}}}))
        assert after() == expected, value


def test_kubectl_explain_teaches_the_fields(crd) -> None:  # noqa: ANN001
    explained = crd.kubectl("explain", "mlbackend.spec.labelStudio").stdout
    assert "The Label Studio server and the projects this backend serves." in explained
    assert "apiKeySecretRef" in explained and "Never put a key in this resource." in explained
    explained = crd.kubectl("explain", "mlbackend.spec.prelabel").stdout
    assert all(field in explained for field in ("paused", "tasks", "onNewModelVersion", "batchSize", "concurrency", "pollSeconds", "maxAttempts"))


def test_printer_columns_and_short_name(crd) -> None:  # noqa: ANN001
    apply(crd, MINIMAL)
    header = crd.kubectl("get", "mlb").stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "URL", "PROJECTS", "PRELABELED", "TRAINED", "REASON", "AGE"]


def test_the_built_backend_pods_are_admitted_under_restricted_pod_security(crd) -> None:  # noqa: ANN001
    """The Deployment and Service the operator builds, applied for real in a namespace that enforces
    the restricted Pod Security Standard: admitted, scheduled on kwok, Available."""
    from prelabel_operator import manifests
    from prelabel_operator.spec import MLBackendSpec

    ns = f"restricted-{uuid.uuid4().hex[:6]}"
    crd.kubectl("create", "namespace", ns)
    crd.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    plain = MLBackendSpec.parse(MINIMAL["spec"])
    # With weights from a URL the pod also has an init container and a second volume.
    fetched = MLBackendSpec.parse({**MINIMAL["spec"], "model": {"weights": {"url": {"href": "https://x/best.pt", "sha256": "a" * 64}}}})
    for name, spec in (("shapes", plain), ("fetched", fetched)):
        for body in (manifests.deployment(name, spec, "h"), manifests.service(name, spec)):
            crd.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(body))
    for name in ("shapes", "fetched"):
        crd.kubectl("wait", "-n", ns, "--for=condition=Available", f"deployment/{name}-backend", "--timeout=60s")
    events = crd.kubectl("get", "events", "-n", ns, "-o", "jsonpath={.items[*].message}").stdout
    assert "violates PodSecurity" not in events
    # A pod that is not hardened is refused there: the namespace really enforces.
    bare = crd.kubectl("run", "bare", "-n", ns, "--image=registry.invalid/x:1", check=False)
    assert bare.returncode != 0 and 'violates PodSecurity "restricted:latest"' in bare.stderr
