"""Pure functions: an MLBackend spec in, the Kubernetes objects that run its backend out. No I/O.

The Deployment carries what the seed's hand-written YAML set (LABEL_STUDIO_URL, the API key,
MODEL_SCORE_THRESHOLD, port 9090, probes on /health), with the key read from its Secret instead of
pasted in, a hardened pod, and an annotation hashing the referenced Secrets' data so that rotating
a key rolls the pods.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

from .spec import PVC_STORE_PATH, MLBackendSpec, ModelStore

CONTAINER_PORT = 9090
MODELS_DIR = "/models"
MANAGED_BY = "prelabel-operator"
SECRETS_HASH_ANNOTATION = "prelabel.dev/secrets-hash"


def selector(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "prelabel-backend", "app.kubernetes.io/instance": name}


def labels(name: str) -> dict[str, str]:
    return {**selector(name), "app.kubernetes.io/managed-by": MANAGED_BY}


def owner_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the MLBackend that owns `obj` (its controller ownerReference, set by kopf.adopt), or None."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "MLBackend" and ref.get("apiVersion", "").startswith("prelabel.dev/"):
            uid = ref.get("uid")
            return str(uid) if uid else None
    return None


def object_name(name: str) -> str:
    return f"{name}-backend"


MAX_NAME = 63 - len(object_name(""))  # a Service name is a DNS-1035 label (<= 63 characters): 55
_DNS_1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def name_problem(name: str) -> str | None:
    """Why an MLBackend of this name cannot have its Service (None when it can): the Service, named
    object_name(name), must be a DNS-1035 label. The CRD refuses such names (its metadata.name
    rule); this covers resources made before that rule, or with the CRD applied without it."""
    if len(name) <= MAX_NAME and _DNS_1035_LABEL.fullmatch(name):
        return None
    return (f"metadata.name {name[:70]!r}{'...' if len(name) > 70 else ''} ({len(name)} characters) cannot name the backend's "
            f"Service {object_name('<name>')!r}: a Service name is a DNS-1035 label of at most 63 characters, so the name must be "
            f"at most {MAX_NAME} lowercase letters, digits and '-', starting with a letter and ending with a letter or digit; "
            "create the MLBackend again under such a name")


def secrets_hash(secret_data: dict[str, dict[str, str]]) -> str:
    """A digest of the referenced Secrets' data (name -> key -> base64 value), never the values."""
    digest = hashlib.sha256()
    for secret in sorted(secret_data):
        for key in sorted(secret_data[secret]):
            digest.update(f"{secret}/{key}=".encode())
            digest.update(secret_data[secret][key].encode())
    return digest.hexdigest()[:16]


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def store_env(store: ModelStore | None) -> list[dict[str, Any]]:
    """MODEL_STORE and, for S3, the endpoint, region and key pair (from its Secret) that
    prelabel_backend.model_versions.open_store reads (boto3's own AWS_* variables)."""
    if store is None:
        return []
    out: list[dict[str, Any]] = [{"name": "MODEL_STORE", "value": store.url}]
    if store.s3_endpoint:
        out.append({"name": "AWS_ENDPOINT_URL", "value": store.s3_endpoint})
    if store.s3_region:
        out.append({"name": "AWS_REGION", "value": store.s3_region})
    if store.s3_credentials:
        c = store.s3_credentials
        out += [secret_env("AWS_ACCESS_KEY_ID", c.name, c.access_key_id_key), secret_env("AWS_SECRET_ACCESS_KEY", c.name, c.secret_access_key_key)]
    return out


def store_volume(store: ModelStore | None, read_only: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, mounts) of a PVC store at /store; none for S3."""
    if store is None or not store.pvc_claim:
        return [], []
    return ([{"name": "store", "persistentVolumeClaim": {"claimName": store.pvc_claim, "readOnly": read_only}}],
            [{"name": "store", "mountPath": PVC_STORE_PATH, "readOnly": read_only}])


def serving_version(spec: MLBackendSpec, promoted: str | None) -> str | None:
    """The store version the backend serves: the pinned spec.model.weights.version, else the version
    training promoted (status.training.version), else None (the image's or the declared weights)."""
    if spec.weights.version:
        return spec.weights.version
    return promoted if spec.store is not None else None  # training fine-tuned what serves, whatever its source


def env(spec: MLBackendSpec, version: str | None = None) -> list[dict[str, Any]]:
    ls = spec.label_studio
    out: list[dict[str, Any]] = [
        {"name": "LABEL_STUDIO_URL", "value": ls.url},
        secret_env("LABEL_STUDIO_API_KEY", ls.api_key.name, ls.api_key.key),
        {"name": "MODEL_SCORE_THRESHOLD", "value": str(spec.score_threshold)},
        {"name": "DEVICE", "value": spec.device},
        {"name": "PORT", "value": str(CONTAINER_PORT)},
        {"name": "MODEL_DIR", "value": "/tmp/prelabel"},
    ]
    if ls.public_urls:
        out.append({"name": "LABEL_STUDIO_PUBLIC_URLS", "value": ",".join(ls.public_urls)})
    weights = spec.weights
    if version:  # fetched from the store by the init container; model_version names it
        out += [{"name": "MODEL_WEIGHTS", "value": f"{version}.pt"}, {"name": "MODEL_VERSION", "value": version}]
    elif weights.file_name:
        out.append({"name": "MODEL_WEIGHTS", "value": weights.file_name})
    if version or weights.pvc_claim or weights.url:
        out.append({"name": "MODEL_ROOT", "value": MODELS_DIR})
    if spec.basic_auth:
        out += [secret_env("BASIC_AUTH_USER", spec.basic_auth.name, spec.basic_auth.username_key),
                secret_env("BASIC_AUTH_PASS", spec.basic_auth.name, spec.basic_auth.password_key)]
    declared = {e["name"] for e in spec.env}
    return [e for e in out if e["name"] not in declared] + [dict(e) for e in spec.env]


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Overlay wins; mappings merge recursively; lists are replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


CONTAINER_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "readOnlyRootFilesystem": True,
                      "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def weights_volume(spec: MLBackendSpec, version: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, backend mounts, init containers) that put the declared weights at /models."""
    w = spec.weights
    mount = [{"name": "models", "mountPath": MODELS_DIR, "readOnly": True}]
    if version:
        store_volumes, store_mounts = store_volume(spec.store, read_only=True)
        fetch_version: dict[str, Any] = {
            "name": "fetch-version",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["python", "-m", "prelabel_backend.model_versions", "fetch", spec.store.url if spec.store else "", version, MODELS_DIR],
            "env": store_env(spec.store),
            "securityContext": CONTAINER_SECURITY,
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}, *store_mounts],
        }
        return [{"name": "models", "emptyDir": {"sizeLimit": "2Gi"}}, *store_volumes], mount, [fetch_version]
    if w.pvc_claim:
        return [{"name": "models", "persistentVolumeClaim": {"claimName": w.pvc_claim, "readOnly": True}}], mount, []
    if w.url:
        fetch = {
            "name": "fetch-weights",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy,
            "command": ["python", "-m", "prelabel_backend.fetch_weights", w.url, w.sha256, f"{MODELS_DIR}/{w.file_name}"],
            "securityContext": CONTAINER_SECURITY,
            "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        }
        return [{"name": "models", "emptyDir": {"sizeLimit": "2Gi"}}], mount, [fetch]
    return [], [], []


def foreign_env(spec: MLBackendSpec) -> list[dict[str, Any]]:
    """What any Label Studio ML backend reads (Label Studio's ML SDK: label_studio_ml): where Label
    Studio is and its key (to fetch task media), PORT, MODEL_DIR, basic auth; HOME on the writable
    /tmp (libraries that write ~/.cache); then spec.backend.env, which wins."""
    assert spec.backend is not None
    ls = spec.label_studio
    out: list[dict[str, Any]] = [
        {"name": "LABEL_STUDIO_URL", "value": ls.url},
        secret_env("LABEL_STUDIO_API_KEY", ls.api_key.name, ls.api_key.key),
        {"name": "PORT", "value": str(spec.backend.port)},
        {"name": "MODEL_DIR", "value": spec.backend.model_dir},
        {"name": "HOME", "value": "/tmp"},
    ]
    if spec.basic_auth:
        out += [secret_env("BASIC_AUTH_USER", spec.basic_auth.name, spec.basic_auth.username_key),
                secret_env("BASIC_AUTH_PASS", spec.basic_auth.name, spec.basic_auth.password_key)]
    declared = {e["name"] for e in spec.backend.env}
    return [e for e in out if e["name"] not in declared] + [dict(e) for e in spec.backend.env]


def foreign_security(run_as_user: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(container, pod) securityContext: Kubernetes' restricted Pod Security for any user but 0;
    user 0 (declared: spec.backend.runAsUser) drops runAsNonRoot and only that."""
    if run_as_user == 0:
        container = {**CONTAINER_SECURITY, "runAsNonRoot": False, "runAsUser": 0}
        return container, {"runAsNonRoot": False, "seccompProfile": {"type": "RuntimeDefault"}}
    return ({**CONTAINER_SECURITY, "runAsUser": run_as_user, "runAsGroup": run_as_user},
            {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": run_as_user})


def foreign_pod(spec: MLBackendSpec) -> dict[str, Any]:
    """The pod spec of any Label Studio ML backend (spec.backend): its command, port and health path;
    an emptyDir at /tmp, at MODEL_DIR and at each declared writable directory on a read-only root."""
    b = spec.backend
    assert b is not None
    dirs = list(dict.fromkeys(["/tmp", b.model_dir, *b.writable_dirs]))
    volumes = [{"name": f"writable-{i}", "emptyDir": {"sizeLimit": "2Gi"}} for i in range(len(dirs))]
    mounts = [{"name": f"writable-{i}", "mountPath": d} for i, d in enumerate(dirs)]
    probe = {"httpGet": {"path": b.health_path, "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    resources = copy.deepcopy(spec.resources or {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}})
    if b.gpu:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = b.gpu
    container_security, pod_security = foreign_security(b.run_as_user)
    container: dict[str, Any] = {
        "name": "backend",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "ports": [{"name": "http", "containerPort": b.port, "protocol": "TCP"}],
        "env": foreign_env(spec),
        "resources": resources,
        "readinessProbe": {**probe, "failureThreshold": 3},
        "startupProbe": {**probe, "failureThreshold": 60},
        "livenessProbe": {**probe, "failureThreshold": 6},
        "securityContext": container_security,
        "terminationMessagePolicy": "FallbackToLogsOnError",  # a crash's last lines reach the condition (diagnosis)
        "volumeMounts": mounts,
    }
    if b.command:
        container["command"] = list(b.command)
    if b.args:
        container["args"] = list(b.args)
    return {"containers": [container], "automountServiceAccountToken": False, "securityContext": pod_security, "volumes": volumes}


def deployment(name: str, spec: MLBackendSpec, secrets_digest: str, version: str | None = None, replicas: int | None = None) -> dict[str, Any]:
    """The backend's Deployment; `version`: the store version it serves (serving_version), if any.
    With spec.backend, any Label Studio ML backend's (foreign_pod). `replicas`: set even with an
    autoscaler (scale to zero, sleep.py: 0 asleep, and the autoscaler's minimum when woken, since an
    HPA leaves a Deployment at zero alone)."""
    pod_spec = foreign_pod(spec) if spec.backend is not None else own_pod(spec, version)
    body = _deployment(name, spec, secrets_digest, pod_spec)
    if replicas is not None:
        body["spec"]["replicas"] = replicas
    return body


def own_pod(spec: MLBackendSpec, version: str | None) -> dict[str, Any]:
    """The pod spec of Prelabel's own backend."""
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5}
    weight_volumes, weight_mounts, init_containers = weights_volume(spec, version)
    container = {
        "name": "backend",
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": env(spec, version),
        "resources": spec.resources or {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        # /health is 503 until the models are loaded: not Ready (no traffic, no registration) until then.
        "readinessProbe": {**probe, "failureThreshold": 3},
        "startupProbe": {**probe, "failureThreshold": 60},
        "livenessProbe": {**probe, "failureThreshold": 6},
        "securityContext": CONTAINER_SECURITY,
        # A backend that dies at start leaves its last log lines (the traceback) as its termination
        # message: the MLBackend's CrashLoopBackOff condition quotes them (diagnosis).
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *weight_mounts],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "automountServiceAccountToken": False,  # the backend never talks to the Kubernetes API
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": 10001},
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, *weight_volumes],
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    return pod_spec


def _deployment(name: str, spec: MLBackendSpec, secrets_digest: str, pod_spec: dict[str, Any]) -> dict[str, Any]:
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.affinity:
        pod_spec["affinity"] = dict(spec.affinity)
    template: dict[str, Any] = {
        "metadata": {"labels": labels(name), "annotations": {SECRETS_HASH_ANNOTATION: secrets_digest}},
        "spec": pod_spec,
    }
    template = _merge(template, spec.pod_template)
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": object_name(name), "labels": labels(name)},
        "spec": {"selector": {"matchLabels": selector(name)}, "template": template,
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}},
    }
    if not spec.autoscaling.enabled:
        body["spec"]["replicas"] = spec.replicas  # with an HPA, the HPA owns the count
    return body


def service(name: str, spec: MLBackendSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": object_name(name), "labels": labels(name)},
        "spec": {"type": spec.service_type, "selector": selector(name),
                 "ports": [{"name": "http", "port": spec.service_port, "targetPort": "http", "protocol": "TCP"}]},
    }


def autoscaler(name: str, spec: MLBackendSpec) -> dict[str, Any] | None:
    if not spec.autoscaling.enabled:
        return None
    a = spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": object_name(name), "labels": labels(name)},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(name)},
                 "minReplicas": a.min_replicas, "maxReplicas": a.max_replicas,
                 "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": a.target_cpu}}}]},
    }


def backend_url(name: str, namespace: str, spec: MLBackendSpec, cluster_ip: str | None) -> str | None:
    """The address Label Studio is given: None while it cannot be known yet (no ClusterIP)."""
    mode = spec.label_studio.address_mode
    if mode == "URL":
        return spec.label_studio.address_url
    if mode == "ServiceDNS":
        return f"http://{object_name(name)}.{namespace}.svc:{spec.service_port}"
    if not cluster_ip or cluster_ip == "None":
        return None
    return f"http://{cluster_ip}:{spec.service_port}"
