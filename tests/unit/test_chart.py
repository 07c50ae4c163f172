"""The Helm chart as rendered by the real helm binary: lint, the CRD copy, the values schema's
messages, RBAC in both modes, the hardened Deployment, optional objects. Installing it on a real API
server is tests/integration/test_chart.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from prelabel_local.chart import CHART
from prelabel_operator import __version__
from tests.conftest import REPO, grants

KUBE_VERSION = "1.36.3"


@pytest.fixture(scope="module")
def helm(cluster_bin: Path):  # noqa: ANN201
    def run(*args: str, values: dict | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        flags = ["--values", "-"] if values is not None else []
        return subprocess.run([str(cluster_bin / "helm"), *args, *flags], input=yaml.safe_dump(values) if values else "",
                              capture_output=True, text=True, check=check)

    return run


@pytest.fixture(scope="module")
def render(helm):  # noqa: ANN001, ANN201
    def run(values: dict | None = None) -> dict[tuple[str, str | None], dict]:
        out = helm("template", "prelabel-operator", str(CHART), "-n", "prelabel-system", "--kube-version", KUBE_VERSION, values=values or {}).stdout
        docs = [d for d in yaml.safe_load_all(out) if d]
        return {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}  # type: ignore[misc]

    return run


def of_kind(objects: dict, kind: str) -> list[dict]:
    return [o for (k, *_), o in objects.items() if k == kind]


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a", "team-b"], "metrics": {"serviceMonitor": {"enabled": True}},
                                        "podDisruptionBudget": {"enabled": True}, "networkPolicy": {"enabled": True}}])
def test_lint_strict_passes(helm, values: dict) -> None:  # noqa: ANN001
    done = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, values=values, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# The fields of a JSONSchemaProps node the CRD uses (apiextensions.k8s.io/v1).
SCHEMA_FIELDS = {"type", "description", "properties", "items", "required", "default", "enum", "format", "minimum", "maximum",
                 "minLength", "maxLength", "minItems", "maxItems", "pattern", "additionalProperties", "nullable", "anyOf", "oneOf",
                 "allOf", "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
                 "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "exclusiveMinimum",
                 "exclusiveMaximum", "multipleOf", "uniqueItems", "example", "title"}


def test_every_schema_node_is_well_formed() -> None:
    """Each node holds only JSONSchemaProps fields, with a string description. A comma in an unquoted
    flow-mapping description (`{type: string, description: a, b}`) makes a stray field `b`: the API
    server drops it silently, but Argo CD's server-side apply refuses the whole CRD ("field not
    declared in schema"), and the description is cut."""
    def walk(node: dict, path: str) -> None:
        assert set(node) <= SCHEMA_FIELDS, f"{path}: not schema fields: {set(node) - SCHEMA_FIELDS}"
        assert isinstance(node.get("description", ""), str), path
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")

    for version in yaml.safe_load((REPO / "crds" / "mlbackend.yaml").read_text())["spec"]["versions"]:
        walk(version["schema"]["openAPIV3Schema"], version["name"])


def test_the_chart_crd_is_the_repository_crd(render) -> None:  # noqa: ANN001
    source = (REPO / "crds" / "mlbackend.yaml").read_text()
    assert (CHART / "files" / "mlbackend.crd.yaml").read_text() == source, "copy crds/mlbackend.yaml to charts/prelabel-operator/files/"
    crd = of_kind(render(), "CustomResourceDefinition")[0]
    expected = yaml.safe_load(source)
    assert crd["spec"] == expected["spec"] and crd["metadata"]["name"] == expected["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    unkept = of_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition")[0]
    assert not unkept["metadata"].get("annotations")
    assert of_kind(render({"crds": {"install": False}}), "CustomResourceDefinition") == []


@pytest.mark.parametrize(("values", "message"), [
    ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace' not allowed"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ({"operator": {"logLevel": "verbose"}}, "at '/operator/logLevel'"),
    ({"operator": {"resyncSeconds": 1}}, "at '/operator/resyncSeconds': minimum: got 1, want 5"),
    ({"image": {"digest": "latest"}}, "at '/image/digest'"),
    ({"metrics": {"port": 8080}}, "metrics.port must not be 8080: the operator's liveness endpoint listens there"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name must name an existing ServiceAccount"),
    ({"replicaCount": 2}, "replicaCount above 1 needs peering.enabled=true"),
])
def test_bad_values_are_refused_with_their_path(helm, values: dict, message: str) -> None:  # noqa: ANN001
    done = helm("template", "x", str(CHART), "--kube-version", KUBE_VERSION, values=values, check=False)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_every_value_is_documented_and_declared() -> None:
    """Each key the schema declares has a `# --` comment right above it in values.yaml, and the
    schema declares every key values.yaml has (additionalProperties: false everywhere it lists them)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented, path = [], []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z]\w*):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        path = [*path[:depth], match.group(2)]
        node = schema
        for key in path[:-1]:
            node = node.get("properties", {}).get(key, {})
        if "properties" not in node:
            continue  # inside a free-form Kubernetes object (resources, securityContext...)
        assert path[-1] in node["properties"], f"values.yaml key {'.'.join(path)} is not in values.schema.json"
        top = number  # the first line of the comment block right above the key
        while top > 0 and lines[top - 1].strip().startswith("#"):
            top -= 1
        if top == number or not lines[top].strip().startswith("# --"):
            undocumented.append(".".join(path))
    assert not undocumented, f"values without a '# --' comment: {undocumented}"


def test_cluster_wide_mode_has_one_cluster_role_with_no_wildcards(render) -> None:  # noqa: ANN001
    objects = render()
    (role,), (binding,) = of_kind(objects, "ClusterRole"), of_kind(objects, "ClusterRoleBinding")
    assert of_kind(objects, "Role") == [] and of_kind(objects, "RoleBinding") == []
    granted = grants(role)
    assert not [r for r in granted if "*" in r], granted
    assert ("", "secrets", "get") in granted and ("", "secrets", "list") not in granted  # reads the Secrets it is pointed at, lists none
    assert not {r for r in granted if r[1] in ("nodes", "namespaces", "customresourcedefinitions", "clusterroles", "roles", "pods/exec", "pods/log")}
    assert {r for r in granted if r[1] == "pods"} == {("", "pods", "list")}  # why a backend is not available: listed, nothing more
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prelabel-operator", "namespace": "prelabel-system"}]


def test_namespaced_mode_grants_only_in_the_listed_namespaces(render) -> None:  # noqa: ANN001
    objects = render({"watchNamespaces": ["team-a", "team-b"]})
    assert of_kind(objects, "ClusterRole") == [] and of_kind(objects, "ClusterRoleBinding") == []
    roles, bindings = of_kind(objects, "Role"), of_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    assert grants(roles[0]) == grants(of_kind(render(), "ClusterRole")[0])  # the same rules, only narrower in scope
    args = of_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_the_operator_pod_is_hardened(render) -> None:  # noqa: ANN001
    (deployment,) = of_kind(render(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}  # the only writable path
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"health": 8080, "metrics": 9100}
    assert container["image"] == f"ghcr.io/prelabel/prelabel-operator:{__version__}"  # the chart's appVersion
    digest = "sha256:" + "a" * 64
    pinned = of_kind(render({"image": {"digest": digest}}), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pinned == f"ghcr.io/prelabel/prelabel-operator@{digest}"


def test_optional_objects_render_only_when_enabled(render) -> None:  # noqa: ANN001
    default = render()
    assert {k for k, *_ in default} == {"ServiceAccount", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"}
    extra = render({"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}, "podDisruptionBudget": {"enabled": True},
                    "networkPolicy": {"enabled": True, "metricsFrom": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}]}})
    (monitor,), (budget,), (policy,) = of_kind(extra, "ServiceMonitor"), of_kind(extra, "PodDisruptionBudget"), of_kind(extra, "NetworkPolicy")
    assert monitor["metadata"]["labels"]["release"] == "prom" and monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert budget["spec"]["maxUnavailable"] == 1
    assert policy["spec"]["policyTypes"] == ["Ingress"] and policy["spec"]["ingress"][0]["ports"] == [{"port": "metrics"}]
    quiet = render({"metrics": {"enabled": False}})
    assert of_kind(quiet, "Service") == []
    assert "--metrics-port=0" in of_kind(quiet, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("namespaces", [[], ["team-a", "team-b"]], ids=["cluster-wide", "namespaced"])
def test_replicas_with_peering_get_its_crd_rbac_and_name(render, namespaces: list[str]) -> None:  # noqa: ANN001
    objects = render({"replicaCount": 2, "peering": {"enabled": True}, "watchNamespaces": namespaces})
    kind, scope = ("KopfPeering", "Namespaced") if namespaces else ("ClusterKopfPeering", "Cluster")
    crd = next(c for c in of_kind(objects, "CustomResourceDefinition") if c["spec"]["group"] == "kopf.dev")
    assert (crd["spec"]["names"]["kind"], crd["spec"]["scope"]) == (kind, scope)
    plural = crd["spec"]["names"]["plural"]
    for role in of_kind(objects, "Role" if namespaces else "ClusterRole"):
        peering = {r for r in grants(role) if r[0] == "kopf.dev"}
        assert peering == {("kopf.dev", plural, v) for v in ("list", "watch", "patch", "create")}, peering
    (deployment,) = of_kind(objects, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PRELABEL_PEERING"] == "prelabel-operator"
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert not [c for c in of_kind(render(), "CustomResourceDefinition") if c["spec"]["group"] == "kopf.dev"]


def test_the_packaged_chart_carries_the_crd_and_the_schema(helm, tmp_path: Path) -> None:  # noqa: ANN001
    import tarfile

    helm("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("prelabel-operator-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"prelabel-operator/files/mlbackend.crd.yaml", "prelabel-operator/values.schema.json", "prelabel-operator/templates/NOTES.txt"} <= names
    rendered = helm("template", "x", str(archive), "--kube-version", KUBE_VERSION).stdout
    assert "name: mlbackends.prelabel.dev" in rendered


def declared_metrics() -> dict[str, set[str]]:
    """The series names the operator's metrics module exposes (a counter's _total, a histogram's
    _bucket/_sum/_count), each with its labels (and `le` for a histogram's buckets)."""
    from prometheus_client.metrics import MetricWrapperBase

    from prelabel_operator import metrics

    series: dict[str, set[str]] = {}
    for wrapper in vars(metrics).values():
        if not isinstance(wrapper, MetricWrapperBase):
            continue
        labels = set(wrapper._labelnames)  # prometheus_client keeps them there (no public getter)
        for family in wrapper.describe():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            for suffix in suffixes:
                series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def test_the_grafana_dashboard_is_off_by_default_and_queries_only_declared_metrics(render) -> None:  # noqa: ANN001
    """Every query of the dashboard (panels and variables) names metrics the operator declares, and
    uses only their labels (in matchers, `by (...)` and the legend): a renamed metric or label fails."""
    assert of_kind(render(), "ConfigMap") == []
    objects = render({"grafanaDashboard": {"enabled": True, "labelValue": "yes", "namespace": "monitoring",
                                           "annotations": {"grafana_folder": "Prelabel"}}})
    (config_map,) = of_kind(objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "yes" and config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Prelabel"}
    dashboard = json.loads(config_map["data"]["prelabel.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "prelabel.json").read_text())
    declared = declared_metrics()
    assert "prelabel_operator_training_runs_total" in declared and "prelabel_operator_prelabel_tasks_total" in declared
    queries = [(p["title"], t["expr"], t.get("legendFormat", "")) for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [(v["name"], v["query"]["query"], "") for v in dashboard["templating"]["list"] if v["type"] == "query"]
    titles = {title for title, *_ in queries}
    assert {"Training runs by outcome", "Precision per model version", "Recall per model version", "Training run time",
            "Tasks still to pre-label", "Pre-labeling throughput"} <= titles
    named: set[str] = set()
    for title, expr, legend in queries:
        names = set(re.findall(r"\bprelabel_\w+", expr))
        assert names and names <= set(declared), f"{title}: {sorted(names - set(declared))} not declared in metrics.py"
        named |= names
        allowed = set().union(*(declared[n] for n in names))
        used = set(re.findall(r"(\w+)\s*=~?\s*\"", expr)) | set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        used |= {label.strip() for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in group.split(",")}
        used |= set(re.findall(r"label_values\([^,]+,\s*(\w+)\)", expr))
        assert used <= allowed, f"{title}: labels {sorted(used - allowed)} are not labels of {sorted(names)}"
    assert {"prelabel_operator_prelabel_pending_tasks", "prelabel_operator_prelabel_tasks_total", "prelabel_operator_training_runs_total",
            "prelabel_operator_training_last_map50_95", "prelabel_operator_training_run_seconds_bucket",
            "prelabel_operator_training_samples", "prelabel_operator_agreement_precision", "prelabel_operator_agreement_recall"} <= named
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_the_crd_yaml_has_no_key_twice() -> None:
    """YAML keeps the last of two equal keys without a word: a property written under the wrong parent
    (a second `x-kubernetes-validations:`) vanished from the schema that way once."""

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:  # type: ignore[type-arg]
        keys = [loader.construct_object(k) for k, _ in node.value]
        twice = {k for k in keys if keys.count(k) > 1}
        assert not twice, f"line {node.start_mark.line + 1}: {sorted(map(str, twice))} twice"
        return loader.construct_mapping(node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    yaml.load((REPO / "crds" / "mlbackend.yaml").read_text(), Loader=Strict)
