"""Pre-labeling decisions, as plain functions and data: which tasks still need a prediction (as a
Label Studio Data Manager query), what to store from a /predict answer, when a failed task is tried
again, and what status.prelabel and the Prelabeled condition say. No I/O: `prelabel_driver` does it.

The declared state: every task in scope (all, or those without annotations; within spec.prelabel.subset:
a Data Manager filter, a saved tab, a stable sample) holds a prediction of
the backend's current model version (`Repredict`), or holds any prediction (`KeepExisting`). The
work left is always read back from Label Studio, so a restart of the operator or of Label Studio
resumes where the stored predictions are, and a task already holding one is never predicted again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import heapq
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .spec import MLBackendSpec, PrelabelSpec
from .status import Condition, Event, version_text, with_condition
from .status import condition as condition_of

CONDITION = "Prelabeled"
MAX_LISTED_FAILURES = 20  # failures shown in status; the count covers all of them
MAX_SERVED_VERSIONS = 50  # status.prelabel.servedVersions: what retention may delete; older ones are forgotten (kept)
MAX_PRUNED_LISTED = 20
STATUS_KEYS = ("phase", "summary", "modelVersion", "total", "predicted", "failed", "pending", "tasksPerSecond",
               "startedAt", "lastProgressAt", "completedAt", "message", "failures", "fault",
               "servedVersions", "prunedPredictions", "prunedVersions")


# -- which tasks: Label Studio Data Manager filters ------------------------------------------------
def _filter(column: str, operator: str, kind: str, value: Any) -> dict[str, Any]:
    return {"filter": f"filter:tasks:{column}", "operator": operator, "type": kind, "value": value}


def _scope(spec: PrelabelSpec, subset: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """spec.prelabel.tasks as a filter, and the subset's filter items (subset_filters())."""
    return [*([_filter("total_annotations", "equal", "Number", 0)] if spec.tasks == "Unannotated" else []), *subset]


def subset_filters(spec: PrelabelSpec, view: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The subset's Data Manager filter items: spec.prelabel.subset.filters, or those of the project's
    view (its `data` as Label Studio stores it: {"filters": {"conjunction", "items"}, ...}). Raises
    ValueError for a view whose items are joined with "or": Label Studio's filters are one flat list."""
    if view is None:
        return list(spec.subset.filters)
    filters = view.get("filters") or {}
    items = [dict(item) for item in filters.get("items") or []]
    if filters.get("conjunction", "and") == "or" and len(items) > 1:
        raise ValueError("its filters are joined with 'or', which cannot be combined with the operator's own: "
                         "save the tab with 'and', or name its filters in spec.prelabel.subset.filters")
    return items


def _done(spec: PrelabelSpec, version: str, negate: bool) -> dict[str, Any]:
    if spec.on_new_model_version == "KeepExisting":  # any prediction will do
        return _filter("total_predictions", "equal" if negate else "greater", "Number", 0)
    # Label Studio matches each listed version as a substring; versions are "prelabel-<12 hex>".
    return _filter("predictions_model_versions", "not_contains" if negate else "contains", "List", [version])


def _query(items: list[dict[str, Any]], ordered: bool = False) -> str:
    query: dict[str, Any] = {"filters": {"conjunction": "and", "items": items}}
    if ordered:
        query["ordering"] = ["tasks:id"]
    return json.dumps(query)


def pending_query(spec: PrelabelSpec, version: str, after_id: int, subset: Sequence[dict[str, Any]] = ()) -> str:
    """Tasks in scope lacking the wanted prediction with id > after_id, by id: a cursor, so a page
    never skips or repeats a task while predictions are being stored (offsets would shift)."""
    return _query([*_scope(spec, subset), _done(spec, version, negate=True), _filter("id", "greater", "Number", after_id)], ordered=True)


def scope_query(spec: PrelabelSpec, subset: Sequence[dict[str, Any]] = (), after_id: int | None = None) -> str:
    """Every task in scope (for the total); with after_id, those past it by id (a cursor)."""
    cursor = [] if after_id is None else [_filter("id", "greater", "Number", after_id)]
    return _query([*_scope(spec, subset), *cursor], ordered=after_id is not None)


def done_query(spec: PrelabelSpec, version: str, subset: Sequence[dict[str, Any]] = (), after_id: int | None = None) -> str:
    """Tasks in scope already holding the wanted prediction (for the predicted count); with after_id,
    those past it by id (a cursor)."""
    cursor = [] if after_id is None else [_filter("id", "greater", "Number", after_id)]
    return _query([*_scope(spec, subset), _done(spec, version, negate=False), *cursor], ordered=after_id is not None)


def sample(task_ids: Iterable[int], n: int, key: str) -> set[int]:
    """The n task ids of a sample (all of them when fewer): those with the smallest sha256 of
    "<key>:<id>". The same ids after any restart; a new task enters only if its hash is smaller.
    key: the resource ("<namespace>/<name>"), so two MLBackends sample differently."""
    return set(heapq.nsmallest(n, task_ids, key=lambda t: hashlib.sha256(f"{key}:{t}".encode()).digest()))


# -- what to store -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sorted:
    """One /predict answer split: predictions to import, failed tasks with reasons, and tasks a pod
    of another model version answered (mid-rollout): left for the next pass, neither stored nor
    failed; `answered` holds those other versions (for the fault a version that never matches is)."""

    store: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)


def _score(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _short(got: int | str, sent: int) -> str:
    hint = ("; a backend that predicts only tasks[0] needs spec.prelabel.batchSize: 1"
            if isinstance(got, int) and 0 < got < sent else "")
    return f"the backend answered {got} results for {sent} tasks (Label Studio's protocol: one per task, in order){hint}"


def sort_results(task_ids: list[int], answer: Any, version: str, any_version: bool = False) -> Sorted:
    """task_ids: the tasks sent, in order; answer: the backend's JSON ({"results": [...]}, one per task,
    in order, Label Studio's ML-backend protocol). Predictions come out in Label Studio's import form
    ({"task", "result", "score", "model_version"}).

    A prediction's model version is its own `model_version`, else the answer's top-level one (Label
    Studio's ML SDK puts it there only), else `version` (what /setup reported), in any JSON type, as a
    string (status.version_text). It must equal `version` unless `any_version` (KeepExisting: any
    prediction will do); else the task is stale. A missing or short `results` list fails every task
    sent: the protocol matches results to tasks by position only, so none can be attributed."""
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != len(task_ids):
        got = len(results) if isinstance(results, list) else "no"
        return Sorted(failed=[(t, _short(got, len(task_ids))) for t in task_ids])
    top = version_text(answer.get("model_version")) if isinstance(answer, dict) else None
    out = Sorted()
    for task_id, result in zip(task_ids, results, strict=True):
        regions = result.get("result") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(regions, list) or not all(isinstance(r, dict) for r in regions):
            out.failed.append((task_id, "the backend's result is not a Label Studio prediction ({\"result\": [regions], ...})"))
            continue
        if result.get("errors"):  # the backend names why it could not read the task's media
            out.failed.append((task_id, "; ".join(str(e) for e in result["errors"])[:300]))
            continue
        own = version_text(result.get("model_version")) or top or version or None
        if not any_version and own != version:
            out.stale.append(task_id)
            out.answered.add(own or "none")
        else:
            out.store.append({"task": task_id, "result": regions, "score": _score(result.get("score")), "model_version": own})
    return out


def holding_query(version: str, first_id: int, last_id: int) -> str:
    """Tasks with first_id <= id <= last_id whose predictions' versions contain `version` (a superset:
    Label Studio matches substrings; `holds` then checks exactly)."""
    return _query([_filter("id", "in", "Number", {"min": first_id, "max": last_id}),
                   _filter("predictions_model_versions", "contains", "List", [version])])


LS_COLUMN_CHARS = 500  # Label Studio's DataManagerTaskSerializer.CHAR_LIMITS: a listed column's text is cut there


def holds(version: str, versions: Any, cut_holds: bool = False) -> bool:
    """Whether a task's `predictions_model_versions`, as Label Studio's Data Manager lists it, holds
    exactly `version`. The text is "a,b" on SQLite (GROUP_CONCAT) and "a, b" on PostgreSQL (its
    ARRAY_AGG as JSON, brackets and quotes removed), in no set order, and cut at LS_COLUMN_CHARS.
    cut_holds: what a text that may have been cut and lacks `version` answers (True where Label
    Studio's own `contains` filter already selected the task)."""
    if not isinstance(versions, str):
        return False
    pieces = [piece.strip() for piece in versions.split(",")]
    if version in pieces:
        return True
    # PostgreSQL's text lost two quotes a version before the cut: a bound for both forms.
    return cut_holds and len(versions) + 2 * len(pieces) >= LS_COLUMN_CHARS - 1


# -- retention: spec.prelabel.retention ---------------------------------------------------------------
def served(history: list[str], version: str) -> list[str]:
    """status.prelabel.servedVersions (oldest first) once `version` served: appended, or moved to the
    end when it served before (a rollback makes an old version the newest again); the oldest beyond
    MAX_SERVED_VERSIONS are forgotten, which keeps their predictions (retention deletes only what it knows)."""
    if not version or (history and history[-1] == version):
        return history
    return [*(v for v in history if v != version), version][-MAX_SERVED_VERSIONS:]


def to_prune(history: list[str], keep: int, present: dict[str, int], current: set[str]) -> list[str]:
    """The model versions whose predictions retention deletes from one project: of the versions this
    resource served (`history`, oldest first) that the project holds (`present`: Label Studio's
    model-versions counts), those older than its newest `keep`, less any version a project serves now
    (`current`). Counted per project: projects with other labeling configs have versions of their
    own. A version this resource never served (another backend's, an import) is never listed."""
    held = [v for v in history if present.get(v, 0) > 0]
    older = held[:-keep] if keep < len(held) else []
    return [v for v in older if v not in current]


def superseded_query(old: str, current: str) -> str:
    """Tasks of the whole project (any scope) holding a prediction of `old` but none of `current`:
    deleting `old` would leave them without their pre-label, so retention waits while there are any."""
    return _query([_filter("predictions_model_versions", "contains", "List", [old]),
                   _filter("predictions_model_versions", "not_contains", "List", [current])])


def resume(progress: Progress, prior: dict[str, Any]) -> None:
    """What a driver takes over from status.prelabel after a restart: the served versions and the pruned counts."""
    progress.served_versions = [str(v) for v in prior.get("servedVersions") or []]
    progress.pruned = int(prior.get("prunedPredictions") or 0)
    progress.pruned_versions = [str(v) for v in prior.get("prunedVersions") or []]


def pruned(listed: list[str], version: str) -> list[str]:
    """status.prelabel.prunedVersions once `version` was deleted from a project (newest last, capped)."""
    return [*(v for v in listed if v != version), version][-MAX_PRUNED_LISTED:]


def refusal(body: Any) -> str:
    """Label Studio's own message from a refused import's body ({"detail", "validation_errors"}), short."""
    if isinstance(body, dict):
        detail, errors = body.get("detail"), body.get("validation_errors")
        text = "; ".join(str(part) for part in (detail, json.dumps(errors) if errors else None) if part)
        return text[:300] or json.dumps(body)[:300]
    return str(body)[:300]


BRUSH_REFUSED = ("; Label Studio before 1.23 refuses most valid brush masks (its validator read the RLE bytes as value/count "
                 "pairs; fixed in label-studio 8711e39): pre-labeling brushes needs Label Studio 1.23 or later")


def refused_reason(message: str, result: Any = None) -> str:
    """Why a stored prediction failed: Label Studio's message, or what its import answered without one
    (every supported version answers 201 with `created: 0` for a prediction its validator drops), and
    for a brush mask (`result`, Label Studio's result list) the validator's known fault before 1.23."""
    said = message or "its import stored none of it (created: 0); its validator dropped the result"
    brush = isinstance(result, list) and any(isinstance(r, dict) and r.get("type") == "brushlabels" for r in result)
    return f"Label Studio refused the prediction: {said}" + (BRUSH_REFUSED if brush else "")


@dataclass
class Mismatch:
    """Passes in a row that stored nothing because every answer was of another model version than
    /setup reports: a backend whose /predict and /setup disagree for good (or a rollout in progress).
    The driver stops a pass at its first batch answered wholly stale, and waits `delay()` before the
    next: one probe batch per wait, never the whole project resent in a loop."""

    passes: int = 0
    answered: tuple[str, ...] = ()

    def record(self, stored: int, stale: int, answered: set[str]) -> None:
        """After a pass: `stored` predictions stored, `stale` tasks answered by another version."""
        if stale and not stored:
            self.passes += 1
            self.answered = tuple(sorted(answered))
        else:
            self.passes, self.answered = 0, ()

    def delay(self) -> float | None:
        """Seconds before the next pass (5, 10, 20, ... capped at 5 minutes); None without a mismatch."""
        return retry_delay(self.passes) if self.passes else None

    def fault(self, wanted: str) -> str:
        """What status says while it lasts ("" without a mismatch)."""
        if not self.passes:
            return ""
        return (f"the backend's /predict answers model version {', '.join(self.answered)} while its /setup reports {wanted}: "
                "nothing is stored as the current version, and each pass now sends one batch, then waits (5 s doubling to 5 min). "
                "A backend whose version changes "
                "per request or per pod needs spec.prelabel.onNewModelVersion: KeepExisting")


# -- retries -----------------------------------------------------------------------------------------
@dataclass
class Attempt:
    project: int
    count: int
    reason: str
    retry_at: float  # monotonic seconds


def retry_delay(count: int) -> float:
    """Seconds before try count+1: 5, 10, 20, ... capped at 5 minutes."""
    return float(min(300, 5 * 2 ** max(0, count - 1)))


@dataclass
class Attempts:
    """Failed tries per task, in memory: after a restart a failed task gets its tries again, which is
    bounded too. A task that reached max_attempts counts as failed and is skipped, never retried."""

    max_attempts: int
    tasks: dict[int, Attempt] = field(default_factory=dict)

    def fail(self, project: int, task_id: int, reason: str, now: float) -> bool:
        """Records a failed try; True when the task has now used all its tries."""
        count = self.tasks[task_id].count + 1 if task_id in self.tasks else 1
        self.tasks[task_id] = Attempt(project, count, reason, now + retry_delay(count))
        return count >= self.max_attempts

    def due(self, task_id: int, now: float) -> bool:
        attempt = self.tasks.get(task_id)
        return attempt is None or (attempt.count < self.max_attempts and attempt.retry_at <= now)

    def stored(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)

    def given_up(self, project: int | None = None) -> dict[int, Attempt]:
        return {t: a for t, a in self.tasks.items() if a.count >= self.max_attempts and project in (None, a.project)}

    def retrying(self) -> list[Attempt]:
        """Failed tasks that still have tries left."""
        return [a for a in self.tasks.values() if a.count < self.max_attempts]

    def next_retry(self, now: float) -> float | None:
        """Seconds until the earliest task still to be retried is due (None: none waits)."""
        waiting = [a.retry_at for a in self.retrying()]
        return max(0.0, min(waiting) - now) if waiting else None


# -- what status says -------------------------------------------------------------------------------
@dataclass
class Progress:
    """Counts over all declared projects, as of the last look at Label Studio plus what was stored since."""

    model_version: str = ""
    total: int = 0
    predicted: int = 0
    failed: int = 0
    stored_this_run: int = 0
    run_started: dt.datetime | None = None
    run_started_mono: float = 0.0
    last_progress: dt.datetime | None = None
    completed: dt.datetime | None = None
    message: str = ""
    fault: str = ""  # a fault of the backend itself (Mismatch.fault): shown in the message, an Event once
    failures: list[dict[str, Any]] = field(default_factory=list)
    counted: bool = False  # the counts were read from Label Studio at least once
    refused: str = ""  # why no task is sent at all (bulk_refusal()): phase Refused
    served_versions: list[str] = field(default_factory=list)  # served(): oldest first
    pruned: int = 0  # predictions deleted by retention, over the resource's life (carried in status)
    pruned_versions: list[str] = field(default_factory=list)


    @property
    def pending(self) -> int:
        return max(0, self.total - self.predicted - self.failed)

    def phase(self) -> str:
        if self.refused:
            return "Refused"
        if self.pending or not self.counted:
            return "Progressing"
        return "Failed" if self.failed else "Complete"

    def rate(self, now_mono: float) -> float:
        elapsed = now_mono - self.run_started_mono
        return round(self.stored_this_run / elapsed, 2) if self.stored_this_run and elapsed > 0 else 0.0


def _time(t: dt.datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def status(progress: Progress, now_mono: float) -> dict[str, Any]:
    """status.prelabel: counts, rate (predictions stored per second over the current run), times."""
    body = {
        "phase": progress.phase(),
        "summary": f"{progress.predicted}/{progress.total}" if progress.counted else None,
        "modelVersion": progress.model_version,
        "total": progress.total, "predicted": progress.predicted, "failed": progress.failed, "pending": progress.pending,
        "tasksPerSecond": progress.rate(now_mono),
        "startedAt": _time(progress.run_started), "lastProgressAt": _time(progress.last_progress),
        "completedAt": _time(progress.completed) if not progress.pending else None,
        "message": "; ".join(m for m in (progress.refused, progress.fault, progress.message) if m), "failures": progress.failures[:MAX_LISTED_FAILURES],
        "fault": progress.fault,
        "servedVersions": progress.served_versions or None, "prunedVersions": progress.pruned_versions or None,
        "prunedPredictions": progress.pruned or None,
    }
    return {k: v for k, v in body.items() if v not in (None, "")}


def condition(prelabel_status: dict[str, Any] | None, paused: bool) -> tuple[str, str, str] | None:
    """(status, reason, message) of the Prelabeled condition from status.prelabel; None without it."""
    if paused:
        done = (prelabel_status or {}).get("summary", "0/0")
        return "False", "Paused", f"paused at {done} (spec.prelabel.paused); set it to false to resume"
    if not prelabel_status:
        return None
    phase = prelabel_status.get("phase", "Progressing")
    summary = prelabel_status.get("summary", "0/0")
    version = prelabel_status.get("modelVersion", "")
    if phase == "Refused":
        return "False", "Refused", str(prelabel_status.get("message") or "")
    if phase == "Complete":
        return "True", "Complete", f"{summary} tasks hold a prediction of {version}"
    if phase == "Failed":
        listed = "; ".join(f"task {f['task']}: {f['reason']}" for f in prelabel_status.get("failures", [])[:3])
        return "False", "Failed", f"{prelabel_status.get('failed', 0)} task(s) failed, the others are pre-labeled ({summary}): {listed}"
    if prelabel_status.get("fault"):  # the backend's versions disagree: a reason of its own, not "Progressing"
        return "False", "ModelVersionMismatch", f"{summary} pre-labeled with {version}: {prelabel_status['fault']}"
    extra = prelabel_status.get("message") or f"{prelabel_status.get('pending', '?')} pending, {prelabel_status.get('tasksPerSecond', 0)} tasks/s"
    return "False", "Progressing", f"{summary} pre-labeled with {version or 'the backend'}: {extra}"


def status_patch(progress: Progress, now_mono: float, conditions: list[dict[str, Any]], generation: int) -> dict[str, Any]:
    """What the driver writes as it goes (a merge patch of the resource's status): status.prelabel
    whole, a None for each key that no longer applies, and `conditions` with Prelabeled set."""
    body_status = status(progress, now_mono)
    cond = condition(body_status, paused=False)
    assert cond is not None
    return {"prelabel": {key: body_status.get(key) for key in STATUS_KEYS},
            "conditions": with_condition(conditions, Condition(CONDITION, *cond), generation)}


def phase_event(patch: dict[str, Any], last_phase: str | None) -> Event | None:
    """The Event a status patch from `status_patch` calls for when its phase differs from the last."""
    prelabel_status = patch["prelabel"]
    phase = prelabel_status["phase"]
    if phase == last_phase:
        return None
    message = condition_of(patch, CONDITION).get("message", "")
    if phase == "Progressing" and last_phase != "Progressing":
        return Event("PrelabelStarted", f"pre-labeling {prelabel_status['pending']} task(s) with {prelabel_status['modelVersion'] or ''}")
    if phase == "Complete":
        return Event("PrelabelComplete", message)
    if phase == "Failed":
        return Event("PrelabelFailed", message, warning=True)
    return None


def bulk_refusal(spec: MLBackendSpec) -> str:
    """Why spec.prelabel sends no task at all ("" when it may): a backend registered as interactive
    (spec.labelStudio.interactive: SAM and the like, which want a person's clicks with each task)
    is not bulk-run unless spec.prelabel.interactive says so."""
    if spec.label_studio.interactive and spec.prelabel is not None and not spec.prelabel.interactive:
        return ("refused: the backend is registered as interactive (spec.labelStudio.interactive), and an interactive backend "
                "predicts from a person's clicks while labeling; set spec.prelabel.interactive: true to pre-label every task with it "
                "anyway, or remove spec.prelabel")
    return ""


def target(status: dict[str, Any]) -> tuple[str | None, tuple[int, ...], str]:
    """Where to pre-label, from the resource's status: (the registered backend URL, the ids of the
    projects it is connected in, ""), or (None, (), why not yet) while the backend is not there."""
    url = status.get("url")
    projects = tuple(int(p["id"]) for p in status.get("projects") or [] if p.get("state") == "Connected" and p.get("id") is not None)
    if not url or not projects:
        ready = condition_of(status, "Ready")
        why = f" ({ready.get('reason')}: {ready.get('message')})" if ready.get("status") == "False" else ""
        return None, (), f"waiting for the backend to be available and registered{why}; retrying in 5s"
    return str(url), projects, ""
