"""Pure functions for a training run's Kubernetes objects: the Job that fine-tunes (the backend image
running `python -m prelabel_backend.train`), the ConfigMap holding its data snapshot, and what the
Job's pod said when it ended (its termination message). No I/O.

The Job's contract (env, snapshot, termination message) is docs/backend.md's "Training Job".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .manifests import CONTAINER_SECURITY, labels, secret_env, store_env, store_volume, weights_volume
from .spec import MLBackendSpec

SNAPSHOT_DIR = "/etc/prelabel"
SNAPSHOT_FILE = "snapshot.json"
RUN_LABEL = "prelabel.dev/training-run"
MAX_SNAPSHOT_BYTES = 900_000  # a ConfigMap holds at most 1 MiB
BACKOFF_LIMIT = 4  # a killed pod is retried: the next one resumes from the run's checkpoint
TTL_SECONDS = 86_400  # a finished Job (and its pod's termination message) stays a day
# What the Job's pod takes from spec.podTemplate.spec; not the rest of it, which is the backend's.
POD_TEMPLATE_KEYS = ("serviceAccountName", "imagePullSecrets")


def run_name(name: str, number: int) -> str:
    """The run's Job and ConfigMap name, `<name>-train-<n>`: a label value and object name of at most
    63 characters (a long MLBackend name is cut and made unique by a hash)."""
    suffix = f"-train-{number}"
    if len(name) + len(suffix) <= 63:
        return name + suffix
    cut = 63 - len(suffix) - 7
    return f"{name[:cut].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:6]}{suffix}"


def run_id(run: str, uid: str) -> str:
    """The run's name in the model store (its checkpoints, its version's provenance): the Job's name and
    the MLBackend's uid, since a store outlives a resource and may be shared. A resource deleted and
    made again counts its runs from 1: its `-train-1` must neither resume the old one's checkpoint nor
    be taken for a run already done."""
    return f"{run}-{uid[:8]}"


def snapshot(run: str, project: int, digest: str, snapshot_at: str, train: Sequence[tuple[int, int]],
             validation: Sequence[tuple[int, int]]) -> str:
    """The snapshot file's JSON: (task id, annotation id) pairs the Job trains and evaluates on; `run`
    is the run's name in the store (run_id)."""
    return json.dumps({"run": run, "project": project, "digest": digest, "snapshot_at": snapshot_at,
                       "train": [list(p) for p in train], "validation": [list(p) for p in validation]}, separators=(",", ":"))


def config_map(name: str, run: str, snapshot_json: str) -> dict[str, Any]:
    """The snapshot's ConfigMap. Raises ValueError when the snapshot is too large for one (about 60,000
    annotated tasks)."""
    if len(snapshot_json.encode()) > MAX_SNAPSHOT_BYTES:
        raise ValueError(f"the data snapshot is {len(snapshot_json) // 1000} KB, more than a ConfigMap holds: "
                         "lower spec.training's project size or split the project")
    return {"apiVersion": "v1", "kind": "ConfigMap", "immutable": True,
            "metadata": {"name": run, "labels": {**labels(name), RUN_LABEL: run}}, "data": {SNAPSHOT_FILE: snapshot_json}}


def job(name: str, spec: MLBackendSpec, run: str, parent: str | None, pinned: Sequence[str]) -> dict[str, Any]:
    """The run's Job. `parent`: the store version it fine-tunes (None: the model the backend serves
    by default, with the same weights volume); `pinned`: versions the Job's pruning keeps.
    spec.model.env reaches the Job as it reaches the backend (media hosts, the model file of a task),
    but for the names the Job's contract sets (TRAIN_*, the store, the key); so do the pod template's
    serviceAccountName and imagePullSecrets (POD_TEMPLATE_KEYS)."""
    training, store = spec.training, spec.store
    assert training is not None and store is not None, "spec.training needs spec.model.store (spec.parse checks)"
    ls = spec.label_studio
    weight_volumes, weight_mounts, init_containers = weights_volume(spec, None) if parent is None else ([], [], [])
    store_volumes, store_mounts = store_volume(store, read_only=False)
    env = [
        {"name": "LABEL_STUDIO_URL", "value": ls.url},
        secret_env("LABEL_STUDIO_API_KEY", ls.api_key.name, ls.api_key.key),
        {"name": "TRAIN_SNAPSHOT", "value": f"{SNAPSHOT_DIR}/{SNAPSHOT_FILE}"},
        {"name": "TRAIN_PARENT", "value": parent or ""},
        {"name": "TRAIN_EPOCHS", "value": str(training.epochs)},
        {"name": "TRAIN_IMGSZ", "value": str(training.image_size)},
        {"name": "TRAIN_BATCH", "value": str(training.batch)},
        {"name": "TRAIN_KEEP_LAST", "value": str(store.keep_last)},
        {"name": "TRAIN_PINNED", "value": ",".join(p for p in pinned if p)},
        {"name": "DEVICE", "value": training.device},
        {"name": "MODEL_DIR", "value": "/tmp/prelabel"},
        *store_env(store),
    ]
    if training.control:
        env.append({"name": "TRAIN_CONTROL", "value": training.control})
    if ls.public_urls:
        env.append({"name": "LABEL_STUDIO_PUBLIC_URLS", "value": ",".join(ls.public_urls)})
    if parent is None and spec.weights.file_name:  # the same default model as the backend's
        env.append({"name": "MODEL_WEIGHTS", "value": spec.weights.file_name})
    if parent is None and (spec.weights.pvc_claim or spec.weights.url):
        env.append({"name": "MODEL_ROOT", "value": "/models"})
    own = {e["name"] for e in env}
    env += [dict(e) for e in spec.env if e["name"] not in own]
    container = {
        "name": "train",
        "image": training.image or spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["python", "-m", "prelabel_backend.train"],
        "env": env,
        "resources": training.resources or {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}},
        "securityContext": CONTAINER_SECURITY,
        # The program writes its result (or error) as JSON to /dev/termination-log; a crash leaves its last log lines.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "snapshot", "mountPath": SNAPSHOT_DIR, "readOnly": True},
                         *store_mounts, *weight_mounts],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a new pod per try, each with its own termination message
        "containers": [container],
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": 10001},
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "8Gi"}}, {"name": "snapshot", "configMap": {"name": run}},
                    *store_volumes, *weight_volumes],
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    template = spec.pod_template.get("spec") or {}
    for key in POD_TEMPLATE_KEYS:  # the backend pods' identity (an S3 store without keys) and pull secrets
        if template.get(key):
            pod_spec[key] = template[key]
    if training.node_selector:
        pod_spec["nodeSelector"] = dict(training.node_selector)
    if training.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in training.tolerations]
    run_labels = {**labels(name), RUN_LABEL: run}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": run, "labels": run_labels},
        "spec": {"backoffLimit": BACKOFF_LIMIT, "activeDeadlineSeconds": training.active_deadline_seconds,
                 "ttlSecondsAfterFinished": TTL_SECONDS,
                 "template": {"metadata": {"labels": run_labels}, "spec": pod_spec}},
    }


# -- what the Job said ------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobState:
    """A Job's state: "Running", "Complete" or "Failed", with the Job's own message when it failed."""

    phase: str
    message: str = ""


def job_state(body: dict[str, Any]) -> JobState:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return JobState(str(cond["type"]), str(cond.get("message") or cond.get("reason") or ""))
    return JobState("Running")


def termination_message(pods: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest ended pod's termination message, as the JSON the program wrote ({"error": <text>}
    when it is not JSON: a crash's last log lines); None when no pod has ended."""
    ended = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            done = (cs.get("state") or {}).get("terminated")
            if done:
                ended.append((str(done.get("finishedAt") or ""), done))
    if not ended:
        return None
    done = max(ended, key=lambda e: e[0])[1]
    text = str(done.get("message") or "").strip()
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return parsed
    except ValueError:
        pass
    return {"error": text[-600:] or f"the training container exited with code {done.get('exitCode')} ({done.get('reason')}) and said nothing"}

