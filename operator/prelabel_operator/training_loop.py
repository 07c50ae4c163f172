"""The training loop's use case over injected clients (ports.py): one `step` per check of an
MLBackend with spec.training. kopf-free, like reconciler.py.

A step either follows the run in progress (its Job: running, then the gate's verdict on what the Job
reported) or decides whether to start one: it reads the project's annotated tasks from Label Studio,
keeps the human annotations (training.is_human), counts those new since the last run's data, looks
for an on-demand trigger (spec.training.trigger, the resource's prelabel.dev/train annotation, or
Label Studio's "Start Training", which the backend's pods report in /health), and starts a Job on a
deterministic split. Everything it knows between steps is in status.training: an operator restart
(or another replica taking over) continues from there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import agreement, diagnosis, keys, manifests, metrics, training, training_job
from .errors import KubeError, LabelStudioError
from .memory import Memory
from .ports import Backend, Kube, LabelStudioFor
from .reconciler import Resource
from .spec import MLBackendSpec, SpecError, TrainingSpec
from .status import Event

log = logging.getLogger(__name__)
TRAIN_ANNOTATION = "prelabel.dev/train"  # on demand: a new value starts a run
HISTORY = 5  # runs kept in status.training.history
AGREEMENT_VERSIONS = 5  # model versions whose agreement status.training lists


@dataclass
class Step:
    """What a step wants written: `training`, the new status.training (None: unchanged); `events`;
    `promoted`: a new version serves, so the backend's Deployment must roll (the handler reconciles)."""

    training: dict[str, Any] | None = None
    events: list[Event] = field(default_factory=list)
    promoted: bool = False


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) from `old` to `new`: changed keys, None for the keys `new` drops
    (a merge patch keeps what it does not name), and the same inside objects on both sides (a merge
    patch merges them: lastRun's `deltas` of a promoted run must go when a failed run replaces it).
    Lists are replaced whole, as RFC 7386 does."""
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            if inner := merge_patch(before, value):
                patch[key] = inner
        elif before != value or key not in old:
            patch[key] = value
    return patch


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def summary(current: Mapping[str, Any]) -> str:
    """The printer column: the version training last promoted (cut to its time; "packaged" before any)
    and the last verdict. status.modelVersion says what serves, a pin included."""
    version = str(current.get("version") or "packaged")
    return f"{version[:15] if version != 'packaged' else version} {current.get('phase', 'Waiting')}"


def _metrics(raw: Mapping[str, Any] | None, split: str) -> training.Metrics | None:
    if not raw:
        return None
    return training.Metrics(map50_95=float(raw.get("map50_95", 0.0)), map50=float(raw.get("map50", 0.0)),
                            recall={str(k): float(v) for k, v in (raw.get("recall") or {}).items()}, split=split,
                            images=int(raw.get("images", 0)))


class TrainingLoop:
    """`label_studio`: (url, key) -> client; `backend`: reads a pod's /health (Label Studio's training
    requests); `adopt`: makes the Job and ConfigMap owned by the MLBackend; `wall`: epoch seconds."""

    def __init__(self, kube: Kube, label_studio: LabelStudioFor, backend: Backend, memory: Memory,
                 adopt: Callable[[dict[str, Any], Mapping[str, Any]], None], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.kube, self.label_studio, self.backend, self.memory = kube, label_studio, backend, memory
        self.adopt, self.clock, self.wall = adopt, clock, wall

    def step(self, resource: Resource) -> Step:
        """One check, at the handler's tick: a run in progress is followed at every tick; annotations
        are counted every spec.training.checkSeconds (or at once when the on-demand trigger changed)."""
        try:
            spec = MLBackendSpec.parse(dict(resource.spec))
        except SpecError:
            return Step()  # the reconciler says what is wrong with the spec
        if spec.training is None:
            return Step()
        current = dict(resource.status.get("training") or {})
        try:
            if current.get("job"):
                return self._follow(resource, spec, current)
            now, last = self.clock(), self.memory.training_checked.get(resource.uid)
            asked = spec.training.trigger and spec.training.trigger != (current.get("answered") or {}).get("spec.training.trigger")
            if last is not None and now - last < spec.training.check_seconds and not asked:
                return Step()
            self.memory.training_checked[resource.uid] = now
            return self._consider(resource, spec, spec.training, current)
        except (KubeError, LabelStudioError) as exc:
            message = f"{exc.reason}: {exc.message}; checked again in {spec.training.check_seconds} s"
            if current.get("message") == message:
                return Step()
            return Step({**current, "message": message, "summary": summary(current)})

    # -- deciding ----------------------------------------------------------------------------------
    def _consider(self, resource: Resource, spec: MLBackendSpec, t: TrainingSpec, current: dict[str, Any]) -> Step:
        found = keys.read(self.kube.secret_data, resource.namespace, spec)
        client = self.label_studio(spec.label_studio.url, found.api_key)
        project = t.project or next((p.id for p in spec.label_studio.projects if p.id is not None), None)
        if project is None:
            project = client.resolve(spec.label_studio.projects[0]).id
        tasks = client.annotated_tasks(project)
        annotations = [training.from_label_studio(a) for task in tasks for a in task.get("annotations") or []]
        predictions = {int(task["id"]): {int(p["id"]): p.get("result") or [] for p in task.get("predictions") or [] if p.get("id") is not None}
                       for task in tasks}
        human = training.human_annotations(annotations, predictions)
        snapshot_at = current.get("snapshotAt")
        since = dt.datetime.fromisoformat(snapshot_at.replace("Z", "+00:00")) if snapshot_at else None
        new = training.new_since(human, since)
        triggers = self._triggers(resource, t)
        answered = dict(current.get("answered") or {})
        asked = next((f"{source} {value!r}" for source, value in sorted(triggers.items()) if value and value != answered.get(source)), None)
        started = _epoch(current.get("lastStartedAt"))
        last = training.LastRun(started_at=started, snapshot_at=since) if started is not None else None
        decision = training.should_train(training.Schedule(t.after_annotations, float(t.min_interval_seconds)), last,
                                         new_human=new, on_demand=asked, now=self.wall())
        base = {**current, "humanAnnotations": len(human), "newAnnotations": new, "phase": current.get("phase") or "Waiting",
                "agreement": self._agreement(resource, tasks)}
        if not decision.train:
            return self._changed(current, {**base, "message": decision.reason})
        split = training.split(human, t.validation_fraction, salt=str(project))
        if problem := split.problem(t.min_train, t.min_validation):
            message = f"{decision.reason}, but a run cannot start: {problem} (of {len(human)} human annotations); annotate more tasks"
            step = self._changed(current, {**base, "answered": triggers, "message": message})
            if step.training is not None and asked:
                step.events.append(Event("TrainingNotStarted", message, warning=True))
            return step
        return self._start(resource, spec, project, split, human, base, triggers, decision.reason)

    def _agreement(self, resource: Resource, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """How well each model version's pre-labels agree with what people submitted on the same tasks
        (agreement.by_version), for AGREEMENT_VERSIONS versions by name, greatest first (store versions
        are named by time); into the gauges too.
        Every submitted annotation counts, an unchanged prediction included: a person kept it."""
        try:
            found = agreement.by_version(tasks, is_human=lambda annotation, predictions: True)
        except ValueError as exc:  # an annotation it cannot read: say so rather than stop the loop
            log.warning("[%s/%s] agreement not measured: %s", resource.namespace, resource.name, exc)
            return []
        rows = []
        for version, a in sorted(found.items(), reverse=True)[:AGREEMENT_VERSIONS]:
            row: dict[str, Any] = {"modelVersion": version, "tasks": a.tasks}
            for key, value, gauge in (("precision", a.precision, metrics.AGREEMENT_PRECISION), ("recall", a.recall, metrics.AGREEMENT_RECALL)):
                if value is not None:
                    row[key] = round(value, 4)
                    gauge.labels(resource.namespace, resource.name, version).set(value)
            rows.append(row)
        return rows

    def _triggers(self, resource: Resource, t: TrainingSpec) -> dict[str, str]:
        """The on-demand values now: the spec's, the resource's annotation's, Label Studio's latest
        "Start Training" that a backend pod saw."""
        annotations = ((resource.body.get("metadata") or {}).get("annotations") or {}) if resource.body else {}
        requested = []
        for pod in self.kube.pods(resource.namespace, manifests.selector(resource.name)):
            health = (self.backend.health(url) or {}) if (url := diagnosis.health_endpoint(pod)) else {}
            if at := (health.get("training") or {}).get("requested_at"):
                requested.append(str(at))
        return {"spec.training.trigger": t.trigger, f"annotation {TRAIN_ANNOTATION}": str(annotations.get(TRAIN_ANNOTATION) or ""),
                "Label Studio's Start Training": max(requested, default="")}

    def _start(self, resource: Resource, spec: MLBackendSpec, project: int, split: training.Split, seen: list[training.Annotation],
               base: dict[str, Any], triggers: dict[str, str], why: str) -> Step:
        number = int(base.get("runs") or 0) + 1
        run = training_job.run_name(resource.name, number)
        chosen = [*split.train, *split.validation]
        # The next run counts what came after every human annotation this one saw, picked or not (a
        # task's newer annotation loses to its ground truth, and would count as new at every check).
        at = training.snapshot_time(seen)
        snapshot_at = at.isoformat() if at else ""
        serving = manifests.serving_version(spec, base.get("version"))
        # The store's pruning keeps what serves, the pin, the promoted version a pin overrides (removing
        # the pin rolls back to it), and the versions promoted before it that history lists (the
        # rollback targets): keepLast counts refused candidates too.
        promoted = [h.get("candidate") for h in base.get("history") or [] if h.get("outcome") == "Promoted"]
        pinned = sorted({str(v) for v in (serving, base.get("version"), *promoted) if v})  # serving: the pin, if any
        body = training_job.snapshot(training_job.run_id(run, resource.uid), project, training.snapshot_digest(chosen), snapshot_at,
                                     [(a.task, a.id) for a in split.train], [(a.task, a.id) for a in split.validation])
        if self.kube.get("batch/v1", "Job", run, resource.namespace) is None:  # else a step that made it died before its status was written
            try:
                config_map = training_job.config_map(resource.name, run, body)
            except ValueError as exc:
                return self._changed(base, {**base, "answered": triggers, "message": f"a run cannot start: {exc}"})
            for obj in (config_map, training_job.job(resource.name, spec, run, serving, pinned)):
                self.adopt(obj, resource.body)
                self.kube.apply(obj, resource.namespace)
        for side, chosen_side in (("train", split.train), ("validation", split.validation)):
            metrics.TRAINING_SAMPLES.labels(resource.namespace, resource.name, side).set(len(chosen_side))
        now = self.wall()
        message = f"Job {run} fine-tunes on {len(split.train)} tasks, {len(split.validation)} held out ({why})"
        status = {**base, "phase": "Training", "job": run, "runs": number, "lastStartedAt": _iso(now), "snapshotAt": snapshot_at,
                  "answered": triggers, "newAnnotations": 0, "message": message}
        status["summary"] = summary(status)
        return Step(status, [Event("TrainingStarted", message)])

    # -- following a run -----------------------------------------------------------------------------
    def _follow(self, resource: Resource, spec: MLBackendSpec, current: dict[str, Any]) -> Step:
        run = str(current["job"])
        body = self.kube.get("batch/v1", "Job", run, resource.namespace)
        if body is None:
            return self._finish(resource, current, "Failed", f"the Job {run} was deleted before it finished", {})
        state = training_job.job_state(body)
        if state.phase == "Running":
            return Step()
        said = training_job.termination_message(self.kube.pods(resource.namespace, {"job-name": run})) or {}
        if state.phase == "Failed" or "error" in said or not said.get("candidate"):
            reason = str(said.get("error") or state.message or "the Job failed and its pod said nothing")
            return self._finish(resource, current, "Failed", f"run {run} failed: {reason}", said)
        t = spec.training
        assert t is not None
        split = str(said.get("snapshot") or "")
        got = said.get("metrics") or {}
        candidate, serving = _metrics(got.get("candidate"), split), _metrics(got.get("current"), split)
        if candidate is None:
            return self._finish(resource, current, "Failed", f"run {run} reported no metrics for its candidate", said)
        verdict = training.judge(candidate, serving, training.Gate(t.margin, t.max_recall_drop))
        if verdict.promote:
            step = self._finish(resource, current, "Promoted", f"promoted {said['candidate']}: {verdict.reason}", said, verdict.deltas)
            assert step.training is not None
            step.training["version"] = str(said["candidate"])
            step.training["summary"] = summary(step.training)
            step.promoted = True
            return step
        return self._finish(resource, current, "Refused", f"refused {said['candidate']}: {verdict.reason}", said, verdict.deltas)

    def _finish(self, resource: Resource, current: dict[str, Any], outcome: str, message: str, said: Mapping[str, Any],
                deltas: Mapping[str, float] | None = None) -> Step:
        run = str(current.get("job"))
        started = _epoch(current.get("lastStartedAt"))
        finished = self.wall()
        last = {"run": run, "outcome": outcome, "message": message, "startedAt": current.get("lastStartedAt"), "finishedAt": _iso(finished),
                **{k: said[k] for k in ("candidate", "parent", "task", "samples", "metrics", "seconds", "epochs", "resumed_from_epoch") if k in said}}
        if deltas:
            last["deltas"] = {k: round(v, 4) for k, v in deltas.items()}
        entry: dict[str, Any] = {k: last[k] for k in ("run", "outcome", "candidate", "finishedAt") if k in last}
        if "metrics" in said:
            entry["map50_95"] = (said["metrics"].get("candidate") or {}).get("map50_95")
        status = {k: v for k, v in current.items() if k != "job"}
        status.update(phase=outcome, message=message, lastRun=last, history=[entry, *(current.get("history") or [])][:HISTORY])
        status["summary"] = summary(status)
        with contextlib.suppress(KubeError):  # best effort: a leftover is collected with its MLBackend (owner reference)
            self.kube.delete("v1", "ConfigMap", run, resource.namespace)  # the Job (its ttl) keeps its pods' messages a day
        metrics.TRAINING_RUNS.labels(resource.namespace, resource.name, outcome.lower()).inc()
        if started is not None:
            metrics.TRAINING_SECONDS.observe(max(0.0, finished - started))
        for model in ("candidate", "current"):
            value = ((said.get("metrics") or {}).get(model) or {}).get("map50_95")
            if value is not None:
                metrics.TRAINING_MAP50_95.labels(resource.namespace, resource.name, model).set(float(value))
        reason = {"Promoted": "ModelPromoted", "Refused": "CandidateRefused", "Failed": "TrainingFailed"}[outcome]
        return Step(status, [Event(reason, message, warning=outcome == "Failed")])

    @staticmethod
    def _changed(current: Mapping[str, Any], wanted: dict[str, Any]) -> Step:
        wanted["summary"] = summary(wanted)
        return Step() if wanted == dict(current) else Step(wanted)

