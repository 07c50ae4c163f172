"""Scale to zero (spec.prelabel.scaleToZero): when the backend sleeps, what wakes it, and what status says.

The pre-labeling daemon decides (it knows the counts and when it last sent a /predict); the reconcile
applies the Deployment with zero replicas while status.sleep holds (asleep()), so the two agree.
Asleep, the daemon reads only Label Studio, every pollSeconds: tasks to predict, a changed labeling
config, a promoted training version or a changed spec wake the backend.

What people see (Label Studio 1.21-1.23, tasks/models.py get_predictions_for_prelabeling): with the
registration's title as a project's model_version, its label stream asks the backend at each task
opened; a sleeping one answers nothing, so no pre-label would show. Asleep, each project's
model_version names the version its tasks hold instead (Driver.go_to_sleep), and Label Studio shows
their pre-labels from its database; woken, the title again. A task holding no prediction at all makes
Label Studio call the backend on open (its task API); such a task is one to predict and wakes the
backend at the next check. An interactive backend (called at each click) is never put to sleep (the
CRD refuses it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .spec import MLBackendSpec, PrelabelSpec
from .status import Condition
from .status import condition as condition_of

CONDITION = "Sleeping"
SLEEPY_PHASES = ("Complete", "Failed")  # nothing left to predict (a failed task has had its tries)


@dataclass(frozen=True)
class Asleep:
    """status.sleep: when the backend went to sleep and what it slept over (a change of any wakes it)."""

    since: str  # RFC 3339
    generation: int  # metadata.generation of the spec it slept under
    label_configs: str  # configs_digest() of the projects then
    serving_version: str  # status.training.version then ("" without one)
    model_version: str  # status.prelabel.modelVersion then: the version(s) every task in scope held
    selection: str = ""  # with a projectSelector: selection_digest() of the projects matching its title pattern then

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Asleep | None:
        raw = status.get("sleep")
        if not raw:
            return None
        return cls(str(raw.get("since") or ""), int(raw.get("generation") or 0), str(raw.get("labelConfigs") or ""),
                   str(raw.get("servingVersion") or ""), str(raw.get("modelVersion") or ""), str(raw.get("selection") or ""))

    def as_status(self) -> dict[str, Any]:
        return {"since": self.since, "generation": self.generation, "labelConfigs": self.label_configs,
                "servingVersion": self.serving_version, "modelVersion": self.model_version, "selection": self.selection}

    def versions(self) -> list[str]:
        return [v for v in self.model_version.split(",") if v]


def configs_digest(configs: Mapping[int, str]) -> str:
    """A sha256 of each project's labeling config (project id -> XML), order-free."""
    text = "\n".join(f"{project}:{hashlib.sha256(xml.encode()).hexdigest()}" for project, xml in sorted(configs.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def selection_digest(project_ids: Iterable[int]) -> str:
    """A sha256 of the ids of the projects a projectSelector's title pattern matches (order-free)."""
    return hashlib.sha256(",".join(str(p) for p in sorted(project_ids)).encode()).hexdigest()


def shown_version(current: str, served: list[str], counts: Mapping[str, int]) -> str | None:
    """The model version a project names while the backend sleeps (Label Studio shows one version's
    predictions, and accepts only a version the project holds): the current one if any task holds it,
    else the version this resource served that most tasks hold; None (keep the title) when it holds none."""
    if current and counts.get(current, 0) > 0:
        return current
    held = [v for v in served if counts.get(v, 0) > 0]
    return max(held, key=lambda v: counts[v]) if held else None


def serving_version(status: Mapping[str, Any]) -> str:
    """The model version training promoted (status.training.version; "" without one)."""
    return str((status.get("training") or {}).get("version") or "")


def awake_replicas(spec: MLBackendSpec) -> int:
    """The replicas a woken backend starts with: autoscaling's minimum with an HPA (which does not scale
    a Deployment at zero), spec.replicas otherwise."""
    return spec.autoscaling.min_replicas if spec.autoscaling.enabled else spec.replicas


def asleep(spec: MLBackendSpec, status: Mapping[str, Any], generation: int) -> Asleep | None:
    """status.sleep while it still holds: scaleToZero still asked for, pre-labeling not paused and the
    spec unchanged since (a new generation wakes the backend: it may be a new model or image)."""
    found = Asleep.from_status(status)
    section = spec.prelabel
    if found is None or section is None or section.scale_to_zero is None or section.paused or found.generation != generation:
        return None
    return found


def time_to_sleep(section: PrelabelSpec, phase: str, idle_seconds: float, status: Mapping[str, Any]) -> bool:
    """Whether the backend may go to sleep now: scaleToZero asked for, pre-labeling Complete (or
    Failed: the rest done), no /predict for idleSeconds, and no training Job running."""
    if section.scale_to_zero is None or phase not in SLEEPY_PHASES:
        return False
    training = str((status.get("training") or {}).get("phase") or "")
    return idle_seconds >= section.scale_to_zero.idle_seconds and training != "Training"


def wake_reason(found: Asleep, label_configs: str, status: Mapping[str, Any], pending: int, selection: str = "") -> str:
    """Why the backend must wake ("" to sleep on): tasks to predict, a changed labeling config, other
    projects matching the selector, a new promoted training version."""
    if pending:
        return f"{pending} task(s) to predict"
    if label_configs != found.label_configs:
        return "a project's labeling config changed (its model version may have)"
    if selection != found.selection:
        return "the projects matching spec.labelStudio.projectSelector changed"
    if serving_version(status) != found.serving_version:
        return f"training promoted model version {serving_version(status) or '(none)'}"
    return ""


def sleeping_condition(found: Asleep, section: PrelabelSpec) -> Condition:
    idle = section.scale_to_zero.idle_seconds if section.scale_to_zero else 0
    return Condition(CONDITION, "True", "Idle",
                     f"scaled to zero at {found.since}: pre-labeling complete and no /predict for {idle}s (spec.prelabel.scaleToZero); "
                     "wakes for tasks to predict, a changed labeling config, a promoted model or a spec change")


def woken_condition(why: str) -> Condition:
    return Condition(CONDITION, "False", "Woken", f"woken: {why}")


def condition(spec: MLBackendSpec, status: Mapping[str, Any], generation: int) -> Condition | None:
    """The Sleeping condition as the reconcile writes it: Idle while asleep(); awake, what the
    daemon last said (Woken and why), else Awake; None without scaleToZero and never asleep."""
    found = asleep(spec, status, generation)
    section = spec.prelabel
    if found is not None and section is not None:
        return sleeping_condition(found, section)
    if section is None or section.scale_to_zero is None:
        return None  # off: no condition (a sleep it ends says so in an Event)
    if status.get("sleep"):
        return woken_condition("the spec changed")
    said = condition_of(dict(status), CONDITION)
    if said.get("status") == "False" and said.get("reason") == "Woken":
        return Condition(CONDITION, "False", "Woken", str(said.get("message") or ""))
    return Condition(CONDITION, "False", "Awake",
                     f"serving; scales to zero after {section.scale_to_zero.idle_seconds}s without a /predict once pre-labeling is complete")


def now() -> str:
    """The time now as status holds it (RFC 3339, UTC, seconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
