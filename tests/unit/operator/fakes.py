"""Fake clients for the operator's use cases (ports.Kube, ports.LabelStudio, ports.Backend): in-memory
stores that record every call, so a test sees what a reconcile asked of each, and can make any of them
fail as the real one does (errors.KubeError, errors.LabelStudioError, errors.BackendUnreachable)."""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field, replace
from typing import Any

from prelabel_operator.configcheck import ConfigCheck
from prelabel_operator.errors import BackendUnreachable, LabelStudioError, SecretMissing
from prelabel_operator.registration import OWNER_HEADER, Desired, Plan, Registration, Webhook, plan, plan_webhooks
from prelabel_operator.spec import ProjectRef

VIEW = '<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image"><Label value="circle"/></RectangleLabels></View>'


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class FakeKube:
    """Secrets by (namespace, name); apply answers the object with the status a test sets per kind."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]] | None = None, available: bool = True) -> None:
        self.secrets = secrets if secrets is not None else {("team", "ls-key"): {"api-key": b64("token-1")}}
        self.available = available
        self.rolling = False  # a rollout under way: old pods still serve beside the updated ones
        self.cluster_ip = "10.96.0.7"
        self.applied: list[dict[str, Any]] = []
        self.deleted: list[tuple[str, str, str]] = []
        self.patched: list[dict[str, Any]] = []
        self.pod_list: list[dict[str, Any]] = []
        self.event_list: list[dict[str, Any]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}  # (kind, name) -> what get answers (applied, or set by a test)

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        if (namespace, name) not in self.secrets:
            raise SecretMissing(f"Secret {namespace}/{name} does not exist: create it (see spec.labelStudio.apiKeySecretRef)")
        return self.secrets[(namespace, name)]

    def apply(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        self.applied.append(copy.deepcopy(body))
        answer = copy.deepcopy(body)
        if body["kind"] == "Deployment":
            replicas = body["spec"].get("replicas", 1)
            ready = replicas if self.available else 0
            answer["metadata"]["generation"] = 1
            answer["status"] = {"observedGeneration": 1, "replicas": replicas + (1 if self.rolling else 0),
                                "updatedReplicas": 0 if self.rolling else replicas, "readyReplicas": ready, "conditions": [
                {"type": "Available", "status": "True" if self.available else "False", "message": "Deployment does not have minimum availability."}]}
        if body["kind"] == "Service":
            answer["spec"]["clusterIP"] = self.cluster_ip
        self.objects[(body["kind"], body["metadata"]["name"])] = answer
        return answer

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, name)))

    def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None:
        self.deleted.append((kind, name, namespace))
        self.objects.pop((kind, name), None)

    def patch_status(self, group: str, version: str, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patched.append(status)

    def pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        return [p for p in self.pod_list if selector.items() <= p["metadata"].get("labels", {}).items()]

    def pod_events(self, namespace: str) -> list[dict[str, Any]]:
        return self.event_list

    def kinds(self) -> list[str]:
        return [o["kind"] for o in self.applied]


@dataclass(frozen=True)
class Project:
    id: int
    title: str
    label_config: str = VIEW
    model_version: str = ""


@dataclass
class FakeLabelStudio:
    """One Label Studio: projects, their registrations and webhooks. `fail`: every call raises it."""

    projects: dict[int, Project] = field(default_factory=lambda: {1: Project(1, "Shapes"), 2: Project(2, "Cars")})
    registered: dict[int, list[Registration]] = field(default_factory=dict)
    keys_seen: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    fail: LabelStudioError | None = None
    next_id: int = 100
    tasks: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # project -> annotated tasks (Label Studio's JSON)
    hooks: dict[int, list[Webhook]] = field(default_factory=dict)  # project -> its webhooks
    version: str = "1.23.2"  # what /api/version answers as `release`
    version_reads: int = 0  # not in `calls`: read once per reconciler.VERSION_CHECK, outside the drift budget

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail is not None:
            raise self.fail

    def list_projects(self) -> list[Project]:
        self._call("list_projects")
        return list(self.projects.values())

    def resolve(self, ref: ProjectRef) -> Project:
        self._call("resolve")
        found = [p for p in self.projects.values() if (ref.id is not None and p.id == ref.id) or (ref.title is not None and p.title == ref.title)]
        if len(found) != 1:
            raise LabelStudioError("ProjectNotFound", f"no {ref.describe()} in Label Studio", False)
        return found[0]

    def registrations(self, project_id: int) -> list[Registration]:
        self._call("registrations")
        return list(self.registered.get(project_id, []))

    def ensure(self, project_id: int, desired: Desired, uid: str, auth_password: str | None = None) -> tuple[int, Plan]:
        self._call("ensure")
        existing = self.registered.setdefault(project_id, [])
        decided = plan(existing, desired, uid)
        wanted = Registration(0, desired.url, desired.title, desired.description, desired.is_interactive, desired.timeout, desired.auth_user)
        if decided.create:
            self.next_id += 1
            existing.append(replace(wanted, id=self.next_id))
            registration_id = self.next_id
        else:
            registration_id = int(decided.registration_id or 0)
            if decided.update_id is not None:
                existing[:] = [replace(wanted, id=r.id) if r.id == decided.update_id else r for r in existing]
        existing[:] = [r for r in existing if r.id not in decided.delete_ids]
        self._tidy(project_id, uid, {r.url for r in existing}, set(), desired.url, desired.webhook_actions)  # ensure does, in one call
        return registration_id, decided

    def set_model_version(self, project: Any, model_version: str) -> None:
        self._call("set_model_version")
        self.projects[project.id] = replace(self.projects[project.id], model_version=model_version)

    def remove(self, project_id: int, registration_id: int) -> None:
        self._call("remove")
        self.registered[project_id] = [r for r in self.registered.get(project_id, []) if r.id != registration_id]

    def tidy_webhooks(self, project_id: int, uid: str, in_use: set[str], released: set[str], current: str | None,
                      actions: tuple[str, ...] = ()) -> None:
        """As labelstudio.LabelStudio.tidy_webhooks does it, on `hooks`."""
        self._call("tidy_webhooks")
        self._tidy(project_id, uid, in_use, released, current, actions)

    def _tidy(self, project_id: int, uid: str, in_use: set[str], released: set[str], current: str | None, actions: tuple[str, ...]) -> None:
        hooks = self.hooks.setdefault(project_id, [])
        decided = plan_webhooks(hooks, in_use, uid, released, current, actions)
        stamped = Webhook(0, "", {OWNER_HEADER: uid}, all_actions=False, actions=actions, active=True)
        hooks[:] = [replace(stamped, id=h.id, url=h.url) if h.id in decided.stamp_ids else h for h in hooks if h.id not in decided.delete_ids]
        if decided.create_url:
            self.next_id += 1
            hooks.append(replace(stamped, id=self.next_id, url=decided.create_url))

    def server_version(self) -> str:
        if self.fail is not None:
            raise self.fail
        self.version_reads += 1
        return self.version

    def webhooks(self, project_id: int) -> list[Webhook]:
        self._call("webhooks")
        return list(self.hooks.get(project_id, []))

    def annotated_tasks(self, project_id: int) -> list[dict[str, Any]]:
        self._call("annotated_tasks")
        return copy.deepcopy(self.tasks.get(project_id, []))

    def client(self, url: str, api_key: str) -> FakeLabelStudio:
        """As ports.LabelStudioFor: the same store for any URL, recording the key it was given."""
        self.keys_seen.append(api_key)
        return self


@dataclass
class FakeBackend:
    """The backend's /setup: `check` for every config, or unreachable; a pod's /health: `health_answer`."""

    check: ConfigCheck = field(default_factory=lambda: ConfigCheck(True, "", "prelabel-0123456789ab"))
    unreachable: bool = False
    health_answer: dict[str, Any] | None = None
    asked: list[tuple[str, int]] = field(default_factory=list)
    incompatible: set[int] = field(default_factory=set)  # projects whose config has nothing the backend serves

    def health(self, url: str) -> dict[str, Any] | None:
        self.asked.append((url, 0))
        return self.health_answer

    def check_config(self, url: str, project_id: int, label_config: str, auth: tuple[str, str] | None) -> ConfigCheck:
        self.asked.append((url, project_id))
        if self.unreachable:
            raise BackendUnreachable("backend unreachable for the config check: ConnectError")
        if project_id in self.incompatible:
            return ConfigCheck(False, "no control the backend serves", None)
        return self.check
