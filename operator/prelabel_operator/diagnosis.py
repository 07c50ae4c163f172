"""Why a backend Deployment is not available, read from its pods, their events and the answer of a
pod's own readiness endpoint, as a pure function: a stable CamelCase reason and a message that says
what is wrong and what to do. Each reason is listed in docs/troubleshooting.md.

Kubernetes writes the causes in several places: a container's `state.waiting` (ErrImagePull,
CrashLoopBackOff, CreateContainerConfigError), its `lastState.terminated` (exit code, OOMKilled,
the termination message), the pod's PodScheduled condition (the scheduler's message), the kubelet's
Unhealthy events (the probe's output) and the Deployment's Progressing condition
(ProgressDeadlineExceeded). A process killed for memory inside a container that keeps running (the
backend's model worker, while gunicorn's master lives on) shows in none of them: the backend's
/health counts its cgroup's OOM kills (`oom_kills`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
# What a process says when the user it runs as may not read or write a file, or bind a port below
# 1024 (Python's OSError texts for EACCES, EROFS, EPERM): an image built to run as root.
DENIED = ("Permission denied", "Read-only file system", "Operation not permitted")
TAIL = 300  # characters of a termination message or probe output kept in the condition's message


@dataclass(frozen=True)
class Diagnosis:
    reason: str
    message: str


def _tail(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= TAIL else "..." + text[-TAIL:]


def _memory_limit(pod: dict[str, Any], container: str) -> str:
    for c in (pod.get("spec") or {}).get("containers", []) + (pod.get("spec") or {}).get("initContainers", []):
        if c.get("name") == container:
            return str(((c.get("resources") or {}).get("limits") or {}).get("memory") or "none")
    return "none"


def _run_as(pod: dict[str, Any], container: str) -> str:
    """The user a container runs as: its own securityContext, else the pod's, else the image's."""
    spec = pod.get("spec") or {}
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        if c.get("name") == container and (c.get("securityContext") or {}).get("runAsUser") is not None:
            return f"runAsUser {c['securityContext']['runAsUser']}"
    pod_user = (spec.get("securityContext") or {}).get("runAsUser")
    return "the image's user" if pod_user is None else f"runAsUser {pod_user}"


def _denied(name: str, run_as: str, restarts: int, said: str) -> str:
    """What to fix for a container the filesystem or kernel refused: a write on the read-only root
    wants an emptyDir there; a file it may not read, a port below 1024 or a privileged call wants
    another user, a readable image, or a port of 1024 or more (all capabilities are dropped, for root too)."""
    head = (f"container {name} exits at start, refused by the filesystem or kernel as the user it runs as ({run_as}, "
            f"read-only root filesystem; {restarts} restart(s)); its last words: {said}; ")
    if "Read-only file system" in said:
        return head + "declare the directories it writes in spec.backend.writableDirs (each an emptyDir)"
    return head + ("if it cannot read its own files, rebuild the image with them readable by all (chmod -R a+rX) or set "
                   "spec.backend.runAsUser to their owner (0 for root); if it binds a port below 1024, set spec.backend.port "
                   "to one of 1024 or more; if it writes a directory, declare it in spec.backend.writableDirs")


def _container(pod: dict[str, Any], status: dict[str, Any]) -> Diagnosis | None:
    """The cause one container status shows, if any."""
    name, image = status.get("name", "?"), status.get("image", "?")
    state, last = status.get("state") or {}, status.get("lastState") or {}
    waiting, terminated = state.get("waiting") or {}, state.get("terminated") or last.get("terminated") or {}
    restarts = int(status.get("restartCount") or 0)
    if waiting.get("reason") in PULL_ERRORS:
        return Diagnosis("ImagePullFailed", f"cannot pull image {image} for container {name} ({waiting['reason']}): {_tail(waiting.get('message'))}; "
                                            "fix spec.image, or give the pod a pull secret (spec.podTemplate.spec.imagePullSecrets)")
    if terminated.get("reason") == "OOMKilled":
        return Diagnosis("OOMKilled", f"container {name} was killed for memory (limit {_memory_limit(pod, name)}), {restarts} restart(s): "
                                      "raise spec.resources.limits.memory, or serve a smaller model")
    if waiting.get("reason") in CONFIG_ERRORS:
        return Diagnosis("ContainerConfigError", f"container {name} cannot be created ({waiting['reason']}): {_tail(waiting.get('message'))}")
    if waiting.get("reason") == "CrashLoopBackOff" or (terminated and terminated.get("exitCode") not in (None, 0) and not status.get("ready")):
        said = _tail(terminated.get("message"))
        if any(sign in said for sign in DENIED):
            return Diagnosis("PermissionDenied", _denied(name, _run_as(pod, name), restarts, said))
        return Diagnosis("CrashLoopBackOff", f"container {name} exits at start: exit code {terminated.get('exitCode', '?')} "
                                             f"({terminated.get('reason') or 'Error'}), {restarts} restart(s)"
                                             + (f"; its last words: {said}" if said else "")
                                             + f"; see `kubectl logs -n {(pod.get('metadata') or {}).get('namespace')} "
                                               f"{(pod.get('metadata') or {}).get('name')} -c {name} --previous`")
    return None


def _unschedulable(pod: dict[str, Any]) -> Diagnosis | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            return Diagnosis("Unschedulable", f"no node can run the backend pod: {_tail(cond.get('message'))}; lower spec.resources.requests, "
                                              "or change spec.nodeSelector, spec.tolerations or spec.affinity")
    return None


def _probe_events(pod: dict[str, Any], events: list[dict[str, Any]]) -> str:
    """The kubelet's last readiness or startup probe failure on this pod (its output), or ""."""
    name = (pod.get("metadata") or {}).get("name")
    failures = [e for e in events if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == "Unhealthy"
                and "probe failed" in str(e.get("message") or "") and not str(e.get("message")).startswith("Liveness")]
    failures.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return _tail(failures[-1].get("message")) if failures else ""


def _health(pod: dict[str, Any], health: dict[str, Any] | None, probe: str) -> Diagnosis | None:
    """What a running, unready pod's own readiness endpoint answered (None: not asked or no answer)."""
    if not isinstance(health, dict):
        return Diagnosis("ReadinessProbeFailing", f"the backend's readiness probe keeps failing: {probe}") if probe else None
    kills = health.get("oom_kills")
    if isinstance(kills, int) and kills > 0:
        container = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name", "?")
        return Diagnosis("OOMKilled", f"a process in container {container} was killed for memory {kills} time(s) while the container kept "
                                      f"running (limit {_memory_limit(pod, container)}): raise spec.resources.limits.memory, or serve a smaller model")
    state, why = str(health.get("status") or ""), _tail(str(health.get("reason") or health.get("error") or ""))
    if state == "LOADING":
        return Diagnosis("BackendStarting", f"the backend is loading its models ({why or 'loading'})")
    if state == "ERROR":
        return Diagnosis("BackendError", f"the backend cannot serve: {why}")
    return Diagnosis("ReadinessProbeFailing",
                     f"the backend's readiness probe keeps failing: {probe or 'no probe output'}; /health answered {_tail(str(health))}")


def running_unready(pod: dict[str, Any]) -> bool:
    """Whether every container of the pod runs and one is not ready: its readiness endpoint says why."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return bool(statuses) and all("running" in (s.get("state") or {}) for s in statuses) and not all(s.get("ready") for s in statuses)


def diagnose(deployment: dict[str, Any] | None, pods: list[dict[str, Any]], events: list[dict[str, Any]],
             health: dict[str, dict[str, Any] | None] | None = None) -> Diagnosis | None:
    """Why the Deployment is not available, or None when nothing more than its own message is known.

    pods: the Deployment's pods (Kubernetes JSON); events: events in their namespace (any; those on
    the pods are read); health: the parsed /health answer of running, unready pods by pod name (None
    where it did not answer). The newest pod speaks first: it is the one the rollout waits for."""
    health = health or {}
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    live.sort(key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""), reverse=True)
    for pod in live:
        status = pod.get("status") or {}
        for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            if found := _container(pod, container):
                return found
        if found := _unschedulable(pod):
            return found
        if running_unready(pod):
            name = (pod.get("metadata") or {}).get("name", "")
            if found := _health(pod, health.get(name), _probe_events(pod, events)):
                return found
    for cond in ((deployment or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return Diagnosis("ProgressDeadlineExceeded", f"{cond.get('message') or 'the rollout made no progress'}: see the pods' "
                                                         "events (`kubectl describe pods -l app.kubernetes.io/managed-by=prelabel-operator`)")
    return None


def health_endpoint(pod: dict[str, Any]) -> str | None:
    """http://<pod IP>:<port><path> of the pod's first container's readiness probe (httpGet), or None."""
    ip = (pod.get("status") or {}).get("podIP")
    containers = (pod.get("spec") or {}).get("containers") or []
    if not ip or not containers:
        return None
    probe = ((containers[0].get("readinessProbe") or {}).get("httpGet")) or {}
    port = probe.get("port")
    if isinstance(port, str):
        port = next((p.get("containerPort") for p in containers[0].get("ports") or [] if p.get("name") == port), None)
    if not isinstance(port, int):
        return None
    scheme = str(probe.get("scheme") or "HTTP").lower()
    host = f"[{ip}]" if ":" in ip else ip
    return f"{scheme}://{host}:{port}{probe.get('path') or '/'}"
