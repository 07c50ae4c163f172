"""What the resource's status says, as plain functions of what the operator observed (and the Event
type the operator says things with).

Conditions: Available (the Deployment), Registered (Label Studio), ConfigCompatible (every
project's labeling config has a control the backend serves), and Ready (all three True). With
spec.training, also Trained (trained(): from status.training, written by the training loop). With
spec.prelabel, also Prelabeled: written by the pre-labeling driver as it goes, carried over here
(derived from status.prelabel) so a reconcile never drops it; it is not part of Ready, so a long
run never makes the backend look unready. Once Label Studio's release is read, LabelStudioSupported
(support.supported): not part of Ready either, as an untested server is still served.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

CONDITION_TYPES = ("Available", "Registered", "ConfigCompatible")


def version_text(value: object) -> str | None:
    """A model version as status and Label Studio hold it (a string), from any JSON value a backend
    sends (Label Studio's ML SDK answers an integer after its first fit()): a string as is, any other
    value as its compact JSON text (1796529612 -> "1796529612", true -> "true"); None for null or ""."""
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True", "False", "Unknown"
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event about the resource: Normal, or Warning."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class ProjectStatus:
    id: int | None
    title: str | None
    ml_backend_id: int | None = None
    state: str = "Pending"  # Connected, Error, Pending
    message: str = ""
    compatible: bool | None = None


@dataclass
class Observed:
    generation: int
    spec_error: str | None = None
    kube_error: tuple[str, str] | None = None  # (reason, message): a missing Secret, a denied or failed API call
    available: bool = False
    available_message: str = "waiting for the Deployment"
    available_reason: str = "DeploymentNotAvailable"  # or what diagnosis found in its pods
    url: str | None = None
    model_version: str | None = None
    projects: list[ProjectStatus] = field(default_factory=list)
    label_studio_error: tuple[str, str] | None = None  # (reason, message)
    prelabel: tuple[str, str, str] | None = None  # the Prelabeled condition (status, reason, message), if declared
    training: Condition | None = None  # the Trained condition (trained()), with spec.training or a trained version
    label_studio_version: str | None = None  # the server's release (/api/version), once read
    supported: Condition | None = None  # the LabelStudioSupported condition (support.supported), once read
    selector: str | None = None  # spec.labelStudio.projectSelector, described (none selected is a state, not a failure)
    foreign: bool = False  # spec.backend: any Label Studio ML backend, without Prelabel's /setup fields
    asleep: bool = False  # scaled to zero on purpose (sleep.asleep): the registration stays
    sleeping: Condition | None = None  # the Sleeping condition (sleep.condition), with spec.prelabel.scaleToZero


FOREIGN_CONFIG = ("not checked: spec.backend runs a backend that is not Prelabel's, and the labeling-config check reads "
                  "Prelabel's own /setup fields; the backend's /setup answered 200, so Label Studio connects it")


def none_selected(selector: str) -> str:
    return f"no project matches spec.labelStudio.projectSelector ({selector}) yet: each drift check looks again"


def deployment_available(deployment: dict[str, Any] | None) -> tuple[bool, str]:
    if not deployment:
        return False, "the Deployment does not exist yet"
    status = deployment.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Available":
            ready = int(status.get("readyReplicas") or 0)
            wanted = int((deployment.get("spec") or {}).get("replicas") or 0)
            if cond.get("status") == "True" and ready > 0:
                return True, f"{ready}/{wanted} backend pods ready"
            return False, cond.get("message") or f"{ready}/{wanted} backend pods ready"
    return False, "the Deployment has not reported availability yet"


def rolled_out(deployment: dict[str, Any] | None) -> bool:
    """Whether every pod of the Deployment runs its current template (the test of `kubectl rollout
    status`): the controller saw the latest generation, `spec.replicas` pods are updated and no old
    one is left. Until then, the backend's /setup may answer from an old pod (the model it served)."""
    if not deployment:
        return False
    status, spec = deployment.get("status") or {}, deployment.get("spec") or {}
    generation = (deployment.get("metadata") or {}).get("generation")
    if generation is not None and int(status.get("observedGeneration") or 0) < int(generation):
        return False
    updated = int(status.get("updatedReplicas") or 0)
    return updated >= int(spec.get("replicas", 1)) and int(status.get("replicas") or 0) <= updated


def conditions(observed: Observed) -> list[Condition]:
    if observed.spec_error:
        return [Condition(t, "False", "InvalidSpec", observed.spec_error) for t in CONDITION_TYPES]
    if observed.kube_error:
        reason, message = observed.kube_error
        return [Condition(t, "False", reason, message) for t in CONDITION_TYPES]
    available = Condition("Available", "True" if observed.available else "False",
                          "DeploymentAvailable" if observed.available else observed.available_reason, observed.available_message)
    projects = observed.projects
    if observed.label_studio_error:
        reason, message = observed.label_studio_error
        registered = Condition("Registered", "False", reason, message)
    elif observed.asleep and projects and all(p.state == "Connected" for p in projects):
        registered = Condition("Registered", "True", "Registered",
                               f"registered at {observed.url} in {len(projects)} project(s); the backend sleeps, the registrations stay")
    elif not observed.available or not observed.url:
        registered = Condition("Registered", "Unknown", "WaitingForBackend", "registers once the backend is available and has an address")
    elif not projects and observed.selector is not None:
        registered = Condition("Registered", "True", "NoProjectSelected", none_selected(observed.selector))
    elif projects and all(p.state == "Connected" for p in projects):
        registered = Condition("Registered", "True", "Registered", f"registered at {observed.url} in {len(projects)} project(s)")
    else:
        failing = [p for p in projects if p.state != "Connected"]
        registered = Condition("Registered", "False", "RegistrationFailed", "; ".join(f"project {p.id or p.title}: {p.message}" for p in failing))
    incompatible = [p for p in projects if p.compatible is False]
    unknown = any(p.compatible is None for p in projects)
    if incompatible:
        compat = Condition("ConfigCompatible", "False", "IncompatibleLabelConfig", "; ".join(f"project {p.id}: {p.message}" for p in incompatible))
    elif observed.foreign and projects and not unknown:
        compat = Condition("ConfigCompatible", "True", "NotApplicable", FOREIGN_CONFIG)
    elif not projects and observed.selector is not None and registered.reason == "NoProjectSelected":
        compat = Condition("ConfigCompatible", "True", "NoProjectSelected", none_selected(observed.selector))
    elif unknown or not projects:
        compat = Condition("ConfigCompatible", "Unknown", "NotChecked", "checked once the backend is available")
    else:
        # Warnings of a served config (labels no model class maps to, controls not served) do not fail it.
        notes = "".join(f"; project {p.id}: {p.message}" for p in projects if p.message)
        compat = Condition("ConfigCompatible", "True", "Compatible", "every project's labeling config has controls the backend serves" + notes)
    return [available, registered, compat]


def ready(conds: list[Condition]) -> Condition:
    not_true = [c for c in conds if c.status != "True"]
    if not not_true:
        return Condition("Ready", "True", "Ready", "the backend is running and registered in every project")
    first = not_true[0]
    return Condition("Ready", "False", first.reason, first.message)


def render(c: Condition, old: dict[str, Any] | None, generation: int, now: dt.datetime) -> dict[str, Any]:
    """A condition as status holds it; lastTransitionTime moves only when its status changes."""
    unchanged = old is not None and old.get("status") == c.status
    since = old.get("lastTransitionTime") if unchanged and old is not None else now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message, "observedGeneration": generation,
            "lastTransitionTime": since}


def with_condition(previous: list[dict[str, Any]], c: Condition, generation: int, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """The conditions list with `c` set (added or replaced in place), the others as they were."""
    now = now or dt.datetime.now(dt.UTC)
    old = next((p for p in previous if p.get("type") == c.type), None)
    new = render(c, old, generation, now)
    return [new if p is old else p for p in previous] if old is not None else [*previous, new]


TRAINED_REASONS = {"Waiting": "WaitingForAnnotations", "Training": "Training", "Promoted": "Promoted", "Refused": "CandidateRefused",
                   "Failed": "TrainingFailed"}


def trained(training: dict[str, Any] | None) -> Condition | None:
    """The Trained condition from status.training: True once training has promoted a version (a pin
    may serve another), False before; the reason is the loop's phase (the last verdict, or a run in
    progress), the message what it said. Not part of Ready: a refused or failed run leaves the served
    model serving."""
    if not training:
        return None
    phase = str(training.get("phase") or "Waiting")
    return Condition("Trained", "True" if training.get("version") else "False", TRAINED_REASONS.get(phase, phase),
                     str(training.get("message") or ""))


def condition(status: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """One condition of a status body, by type ({} when it has none)."""
    return next((c for c in (status or {}).get("conditions") or [] if c.get("type") == kind), {})


def status(observed: Observed, previous: list[dict[str, Any]] | None, now: dt.datetime | None = None) -> dict[str, Any]:
    """The status subresource body; lastTransitionTime moves only when a condition's status changes."""
    now = now or dt.datetime.now(dt.UTC)
    before = {c.get("type"): c for c in previous or []}
    conds = conditions(observed)
    extra = [Condition("Prelabeled", *observed.prelabel)] if observed.prelabel else []
    if observed.training:
        extra.append(observed.training)
    if observed.supported:
        extra.append(observed.supported)
    if observed.sleeping:
        extra.append(observed.sleeping)
    top = ready(conds)
    if observed.asleep and observed.sleeping and top.reason == "Sleeping" and all(c.status == "True" for c in conds if c.type == "Registered"):
        # Asleep on purpose, everything else in order: ready for annotators (the project shows its
        # pre-labels without the backend, sleep.py), and woken for any work.
        top = Condition("Ready", "True", "Sleeping", observed.sleeping.message)
    rendered = [render(c, before.get(c.type), observed.generation, now) for c in [top, *conds, *extra]]
    connected = sum(1 for p in observed.projects if p.state == "Connected")
    body: dict[str, Any] = {
        "observedGeneration": observed.generation,
        "conditions": rendered,
        "projectsSummary": f"{connected}/{len(observed.projects)}" if observed.projects else "0/0",
        "projects": [{k: v for k, v in {"id": p.id, "title": p.title, "mlBackendId": p.ml_backend_id, "state": p.state,
                                         "message": p.message}.items() if v not in (None, "")} for p in observed.projects],
    }
    if observed.url:
        body["url"] = observed.url
    if observed.model_version:
        body["modelVersion"] = version_text(observed.model_version)  # the CRD's type: a string, whatever was observed
    if observed.label_studio_version:
        body["labelStudioVersion"] = observed.label_studio_version
    return body
