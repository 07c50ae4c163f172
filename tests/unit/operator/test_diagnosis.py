"""Why a backend is not available, read from pods as the kubelet and scheduler write them
(diagnosis.diagnose): each kind of fault gets its stable reason and a message that names the cause and
the fix. The pod bodies follow what Kubernetes 1.36 reported on the local node for each fault."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from prelabel_operator.diagnosis import Diagnosis, diagnose, health_endpoint, running_unready

DEPLOYMENT = {"status": {"conditions": [{"type": "Available", "status": "False", "message": "Deployment does not have minimum availability."}]}}


def pod(statuses: list[dict[str, Any]] | None = None, conditions: list[dict[str, Any]] | None = None, name: str = "shapes-backend-7d9-abc",
        created: str = "2026-12-06T06:00:00Z", limits: dict[str, str] | None = None) -> dict[str, Any]:
    container = {"name": "backend", "image": "registry.invalid/backend:1", "ports": [{"name": "http", "containerPort": 9090}],
                 "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}}, "resources": {"limits": limits or {}}}
    return {"metadata": {"name": name, "namespace": "team", "creationTimestamp": created},
            "spec": {"containers": [container]},
            "status": {"phase": "Pending", "podIP": "10.244.0.12", "conditions": conditions or [], "containerStatuses": statuses or []}}


def status(state: dict[str, Any], last: dict[str, Any] | None = None, ready: bool = False, restarts: int = 0) -> dict[str, Any]:
    return {"name": "backend", "image": "registry.invalid/backend:1", "ready": ready, "restartCount": restarts,
            "state": state, "lastState": last or {}}


PULL = pod([status({"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "registry.invalid/backend:1": '
                                                                        "dial tcp: lookup registry.invalid: no such host"}})])
UNSCHEDULABLE = pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available."}])
CRASHING = pod([status({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s restarting failed container"}},
                       {"terminated": {"exitCode": 3, "reason": "Error", "message": "MODEL_DIR /nope is not writable\n"}}, restarts=2)])
# An image built to run as root (the ML SDK's Dockerfile has no USER), run as 10001 on a read-only root.
ROOT_ONLY = pod([status({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                        {"terminated": {"exitCode": 1, "reason": "Error", "message": "Traceback ...\nPermissionError: [Errno 13] "
                                                                                     "Permission denied: '/app/cache.db'\n"}}, restarts=1)])
READ_ONLY = pod([status({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                         {"terminated": {"exitCode": 1, "reason": "Error", "message": "OSError: [Errno 30] Read-only file system: '/app/cache'\n"}},
                         restarts=2)])
OOM = pod([status({"running": {}}, {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, restarts=1)], limits={"memory": "128Mi"})
CONFIG = pod([status({"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "ls-key" not found'}})])
RUNNING = pod([status({"running": {"startedAt": "2026-12-06T06:00:05Z"}})], limits={"memory": "300Mi"})
PROBE_EVENT = {"involvedObject": {"kind": "Pod", "name": "shapes-backend-7d9-abc"}, "reason": "Unhealthy", "lastTimestamp": "2026-12-06T06:01:00Z",
               "message": "Readiness probe failed: HTTP probe failed with statuscode: 503"}


@pytest.mark.parametrize(("pods", "reason", "words"), [
    ([PULL], "ImagePullFailed", ["registry.invalid/backend:1", "no such host", "spec.image"]),
    ([UNSCHEDULABLE], "Unschedulable", ["1 Insufficient cpu", "spec.resources.requests"]),
    ([CRASHING], "CrashLoopBackOff", ["exit code 3", "2 restart(s)", "MODEL_DIR /nope is not writable", "--previous"]),
    ([OOM], "OOMKilled", ["limit 128Mi", "spec.resources.limits.memory"]),
    ([CONFIG], "ContainerConfigError", ['secret "ls-key" not found']),
    ([ROOT_ONLY], "PermissionDenied", ["[Errno 13] Permission denied: '/app/cache.db'", "spec.backend.runAsUser to their owner (0 for root)",
                                       "chmod -R a+rX", "spec.backend.port", "spec.backend.writableDirs"]),
    ([READ_ONLY], "PermissionDenied", ["Read-only file system: '/app/cache'", "spec.backend.writableDirs"]),
])
def test_each_kind_of_fault_has_its_reason_and_says_what_to_fix(pods: list[dict[str, Any]], reason: str, words: list[str]) -> None:
    found = diagnose(DEPLOYMENT, pods, [])
    assert found is not None and found.reason == reason
    assert all(w in found.message for w in words), found.message


def test_a_write_refused_by_the_read_only_root_is_told_to_declare_the_directory_only() -> None:
    found = diagnose(DEPLOYMENT, [READ_ONLY], [])
    assert found is not None and "runAsUser" not in found.message.split("its last words")[1], found.message


def test_permission_denied_names_the_user_the_container_ran_as() -> None:
    as_user = copy.deepcopy(ROOT_ONLY)
    as_user["spec"]["containers"][0]["securityContext"] = {"runAsUser": 10001}
    found = diagnose(DEPLOYMENT, [as_user], [])
    assert found is not None and "runAsUser 10001" in found.message, found
    found = diagnose(DEPLOYMENT, [ROOT_ONLY], [])
    assert found is not None and "the image's user" in found.message, found


def test_a_running_pod_that_is_not_ready_is_explained_by_its_own_health_answer() -> None:
    assert running_unready(RUNNING) and health_endpoint(RUNNING) == "http://10.244.0.12:9090/health"
    name = RUNNING["metadata"]["name"]
    killed = diagnose(DEPLOYMENT, [RUNNING], [PROBE_EVENT], {name: {"status": "LOADING", "reason": "loading", "oom_kills": 2}})
    assert killed is not None and killed.reason == "OOMKilled" and "2 time(s)" in killed.message and "limit 300Mi" in killed.message
    assert diagnose(DEPLOYMENT, [RUNNING], [], {name: {"status": "LOADING", "reason": "loading the default models"}}) == \
        Diagnosis("BackendStarting", "the backend is loading its models (loading the default models)")
    broken = diagnose(DEPLOYMENT, [RUNNING], [], {name: {"status": "ERROR", "reason": "MODEL_WEIGHTS: /models/x.pt does not exist"}})
    assert broken is not None and broken.reason == "BackendError" and "/models/x.pt does not exist" in broken.message
    silent = diagnose(DEPLOYMENT, [RUNNING], [PROBE_EVENT], {name: None})  # no answer: the kubelet's probe output
    assert silent is not None and silent.reason == "ReadinessProbeFailing" and "statuscode: 503" in silent.message


def test_the_newest_pod_speaks_first_and_a_deleted_one_not_at_all() -> None:
    old = copy.deepcopy(CRASHING)
    new = copy.deepcopy(PULL)
    new["metadata"].update(name="shapes-backend-8e1-new", creationTimestamp="2026-12-06T06:05:00Z")
    assert diagnose(DEPLOYMENT, [old, new], []) == diagnose(DEPLOYMENT, [new], [])
    new["metadata"]["deletionTimestamp"] = "2026-12-06T06:06:00Z"
    found = diagnose(DEPLOYMENT, [old, new], [])
    assert found is not None and found.reason == "CrashLoopBackOff"


def test_a_stalled_rollout_past_its_deadline_is_said_when_no_pod_says_more() -> None:
    stalled = {"status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                          "message": 'ReplicaSet "shapes-backend-7d9" has timed out progressing.'}]}}
    found = diagnose(stalled, [], [])
    assert found is not None and found.reason == "ProgressDeadlineExceeded" and "timed out progressing" in found.message
    assert diagnose(stalled, [PULL], []) == diagnose(DEPLOYMENT, [PULL], [])  # the pod's cause is the more useful


def test_nothing_known_is_none_and_long_messages_are_cut() -> None:
    assert diagnose(DEPLOYMENT, [], []) is None
    assert diagnose(DEPLOYMENT, [pod([status({"waiting": {"reason": "ContainerCreating"}})])], []) is None
    long = copy.deepcopy(CRASHING)
    long["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"] = "x" * 5000 + " the end"
    found = diagnose(DEPLOYMENT, [long], [])
    assert found is not None and found.message.count("x") <= 310 and "the end" in found.message
