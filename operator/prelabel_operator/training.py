"""The training policy, pure: when to train, on which annotations, the held-out split, and the gate
that decides whether a trained candidate replaces the model that serves. No I/O: the caller reads
Label Studio and the Job's results, passes them in, and keeps what `LastRun` remembers in status.

What counts as a human annotation (`is_human`). Label Studio (tasks/models.py, `Annotation`; the
HumanSignal/label-studio repository, 1.23.2 as installed here) stores, for each annotation:
`result` (the regions, a list), `was_cancelled` ("User skipped the task"), `ground_truth` (marked as
ground truth), `parent_prediction` ("the prediction from which this annotation was created": the
editor sends it with the annotation when a person starts from a prediction, LSFWrapper.prepareData
in web/libs/datamanager/src/sdk/lsf-sdk.js, and the Data Manager's "Create annotations from
predictions" action sets it on every annotation it makes, data_manager/actions/
predictions_to_annotations.py) and, on each region of `result`, the editor's `origin`: "manual" (drawn
by the person), "prediction" (taken over from a prediction) or "prediction-changed" (taken over, then
edited). Community's `last_action` stays empty (`add_annotation_fields` is a no-op there), and the
`prediction` snapshot Label Studio keeps is not in the API's answer, so neither is used. The rule:

1. A skipped annotation (`was_cancelled`) is not human: it holds no labels.
2. An annotation made from a prediction (`parent_prediction` set) whose regions equal, as content,
   that prediction's result is a copy without a change: not human. Content is what a region says
   (control, object, type, value, floats rounded to 1e-6), not its id, score, origin or readonly flag.
3. An annotation made from a prediction that is gone (Label Studio nulls the field when it deletes
   a model run's predictions, but a deleted single prediction leaves the id dangling) is human only
   if one of its regions says a person drew or changed it (`origin` "manual" or
   "prediction-changed"): when in doubt, never train on it. Likewise an annotation that names no
   parent but whose regions all say "prediction": its parent was deleted with its model version
   (spec.prelabel.retention, or Label Studio's own delete), which nulls the field.
4. An annotation that names no parent but equals, as content, a prediction of its task (a script
   that copied one without saying so) is human only if a region says a person made it (a person
   who picked the same class as a classifier did, in the editor, is "manual").
5. Anything else submitted is human, an empty result included (a person said the image holds none
   of the labels: a negative for training; an empty copy of an empty prediction falls under 2 or 4).

`ground_truth` does not make a copy human; among a task's human annotations it decides which one
the task is trained on (`pick`): the ground truth first, then the latest updated.

Time: annotations are compared by Label Studio's own `updated_at` (no clock of ours mixed in); the
minimum interval uses the caller's clock (wall seconds) for both the last run's start and now.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

HUMAN_ORIGINS = frozenset({"manual", "prediction-changed"})  # the editor's region origins a person made
_IGNORED_REGION_KEYS = frozenset({"id", "score", "origin", "readonly", "hidden", "parentID", "item_index"})


# -- annotations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Annotation:
    """What the policy reads of one Label Studio annotation (`from_label_studio` makes it from the API's JSON)."""

    id: int
    task: int
    result: Sequence[Mapping[str, Any]]
    updated_at: datetime
    was_cancelled: bool = False
    ground_truth: bool = False
    parent_prediction: int | None = None


def from_label_studio(raw: Mapping[str, Any]) -> Annotation:
    """An annotation as /api/tasks/<id>/annotations/ (or the SDK's model_dump()) answers it."""
    updated = raw.get("updated_at") or raw.get("created_at")
    if isinstance(updated, str):
        updated = datetime.fromisoformat(updated.replace("Z", "+00:00"))
    if not isinstance(updated, datetime):
        raise ValueError(f"annotation {raw.get('id')} has no updated_at")
    return Annotation(id=int(raw["id"]), task=int(raw["task"]), result=list(raw.get("result") or []), updated_at=updated,
                      was_cancelled=bool(raw.get("was_cancelled")), ground_truth=bool(raw.get("ground_truth")),
                      parent_prediction=None if raw.get("parent_prediction") is None else int(raw["parent_prediction"]))


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) + 0.0  # + 0.0: -0.0 and 0.0 are one value
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_canonical(v) for v in value)
    return value


def regions(result: Iterable[Mapping[str, Any]]) -> list[Any]:
    """A result's regions as comparable content, in a stable order: what they say, not who made them."""
    return sorted((_canonical({k: v for k, v in region.items() if k not in _IGNORED_REGION_KEYS}) for region in result), key=repr)


def is_human(annotation: Annotation, predictions: Mapping[int, Sequence[Mapping[str, Any]]]) -> bool:
    """Whether a person made the annotation (the module's rule). `predictions`: the results of the
    task's predictions, by prediction id (the parent's included, when it still exists)."""
    if annotation.was_cancelled:
        return False
    own = regions(annotation.result)
    by_a_person = any(region.get("origin") in HUMAN_ORIGINS for region in annotation.result)
    parent = annotation.parent_prediction
    if parent is None and annotation.result and all(region.get("origin") == "prediction" for region in annotation.result):
        return False  # taken over unchanged from a prediction deleted since (rule 3)
    if parent is not None:
        if parent not in predictions:
            return by_a_person
        if regions(predictions[parent]) == own:
            return False
    if any(regions(result) == own for result in predictions.values()):
        return by_a_person
    return True


def human_annotations(annotations: Iterable[Annotation], predictions: Mapping[int, Mapping[int, Sequence[Mapping[str, Any]]]]
                      ) -> list[Annotation]:
    """The human ones among `annotations`; `predictions`: task id -> {prediction id: result}."""
    return [a for a in annotations if is_human(a, predictions.get(a.task, {}))]


def pick(annotations: Iterable[Annotation]) -> dict[int, Annotation]:
    """The one annotation each task is trained on: its ground truth, else its latest updated (then the
    greatest id). Pass human annotations only."""
    chosen: dict[int, Annotation] = {}
    for a in annotations:
        current = chosen.get(a.task)
        if current is None or (a.ground_truth, a.updated_at, a.id) > (current.ground_truth, current.updated_at, current.id):
            chosen[a.task] = a
    return chosen


def new_since(annotations: Iterable[Annotation], since: datetime | None) -> int:
    """How many of `annotations` (human ones) were made or changed after `since` (the last run's data
    snapshot; None: no run yet, all count)."""
    return sum(1 for a in annotations if since is None or a.updated_at > since)


# -- the data snapshot and the held-out split -------------------------------------------------------
def in_validation(task_id: int, fraction: float, salt: str = "") -> bool:
    """Whether a task is held out: a hash of its id (and `salt`, e.g. the project) below `fraction`.
    Stable across runs and restarts, so candidates and the current model meet on the same tasks, and
    a task never moves between the sides as more are annotated."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation fraction must be between 0 and 1 (exclusive), not {fraction}")
    digest = hashlib.sha256(f"{salt}:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass(frozen=True)
class Split:
    train: tuple[Annotation, ...]
    validation: tuple[Annotation, ...]

    def problem(self, min_train: int = 1, min_validation: int = 1) -> str | None:
        """Why a run cannot start on this split (too few tasks on a side), None when it can."""
        if len(self.train) < min_train:
            return f"{len(self.train)} training tasks, fewer than {min_train}"
        if len(self.validation) < min_validation:
            return f"{len(self.validation)} validation tasks, fewer than {min_validation}"
        return None


def split(annotations: Iterable[Annotation], fraction: float, salt: str = "") -> Split:
    """One annotation per task (`pick`), each task on the side its id hashes to; sorted by task id."""
    chosen = sorted(pick(annotations).values(), key=lambda a: a.task)
    validation = tuple(a for a in chosen if in_validation(a.task, fraction, salt))
    return Split(train=tuple(a for a in chosen if not in_validation(a.task, fraction, salt)), validation=validation)


def snapshot_digest(annotations: Iterable[Annotation]) -> str:
    """The data a run trained on, as one digest (the model version's provenance): task, annotation
    id and update time of each, order-free. The same annotations give the same digest."""
    lines = sorted(f"{a.task}:{a.id}:{a.updated_at.isoformat()}" for a in annotations)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def snapshot_time(annotations: Iterable[Annotation]) -> datetime | None:
    """The latest update among the annotations a run trained on: the next run counts what came after."""
    return max((a.updated_at for a in annotations), default=None)


# -- when to train ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """When to train. `after_annotations`: N new human annotations since the last run (None: only on
    demand). `min_interval_s`: no automatic run sooner than this after the last one started."""

    after_annotations: int | None = None
    min_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.after_annotations is not None and self.after_annotations < 1:
            raise ValueError(f"after_annotations must be >= 1, not {self.after_annotations}")
        if self.min_interval_s < 0 or math.isnan(self.min_interval_s):
            raise ValueError(f"min_interval_s must be >= 0, not {self.min_interval_s}")


@dataclass(frozen=True)
class LastRun:
    """What the operator remembers of the last run (status.training)."""

    started_at: float  # the caller's clock, seconds
    snapshot_at: datetime | None  # snapshot_time() of the data it trained on
    on_demand: str | None = None  # the on-demand value it answered


@dataclass(frozen=True)
class Decision:
    train: bool
    reason: str
    retry_in_s: float | None = None  # when only the interval holds a run back: seconds until it may start


def should_train(schedule: Schedule, last: LastRun | None, *, new_human: int, on_demand: str | None, now: float,
                 running: bool = False) -> Decision:
    """Whether to start a run now.

    - A run in progress: never a second one.
    - On demand: a trigger value (an annotation on the resource, a field) that is set and differs from
      the one the last run answered starts a run whatever the count and the interval: a person asked.
    - Else, with `after_annotations` N: at least N new human annotations (exactly N is enough), and
      the minimum interval elapsed since the last run started (exactly elapsed is enough).
    """
    if running:
        return Decision(False, "a training run is in progress")
    answered = last.on_demand if last else None
    if on_demand and on_demand != answered:
        return Decision(True, f"on demand ({on_demand!r})")
    if schedule.after_annotations is None:
        return Decision(False, "training runs on demand only")
    if new_human < schedule.after_annotations:
        return Decision(False, f"{new_human} of {schedule.after_annotations} new human annotations since the last run")
    if last is not None and schedule.min_interval_s:
        elapsed = now - last.started_at
        if elapsed < schedule.min_interval_s:
            wait = schedule.min_interval_s - elapsed
            return Decision(False, f"{new_human} new human annotations, but the minimum interval "
                                   f"({schedule.min_interval_s:g} s) has {wait:.0f} s to run", retry_in_s=wait)
    return Decision(True, f"{new_human} new human annotations since the last run (threshold {schedule.after_annotations})")


# -- the promotion gate -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Metrics:
    """A model evaluated on the validation split (ultralytics' val: box mAP50-95, mAP50, per-class recall)."""

    map50_95: float
    map50: float
    recall: Mapping[str, float] = field(default_factory=dict)  # class name -> recall
    split: str = ""  # snapshot_digest() of the validation split it was evaluated on
    images: int = 0


@dataclass(frozen=True)
class Gate:
    """Promote a candidate only if its mAP50-95 beats the current model's by at least `margin`
    (absolute, > 0: a tie never promotes), its mAP50 is not lower, and no class's recall falls by
    more than `max_recall_drop`."""

    margin: float = 0.01
    max_recall_drop: float = 0.05

    def __post_init__(self) -> None:
        if not self.margin > 0:
            raise ValueError(f"the gate's margin must be > 0 (a tie must not replace a model), not {self.margin}")
        if not self.max_recall_drop >= 0:
            raise ValueError(f"max_recall_drop must be >= 0, not {self.max_recall_drop}")


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    deltas: Mapping[str, float] = field(default_factory=dict)  # candidate - current: map50_95, map50, recall/<class>


_EPS = 1e-9  # float noise: 0.61 - 0.60 is 0.0099999...; a delta within this of the margin meets it


def judge(candidate: Metrics, current: Metrics | None, gate: Gate) -> Verdict:
    """The gate's verdict, with every reason it refuses (or why it promotes)."""
    if candidate.images <= 0:
        return Verdict(False, "the candidate was evaluated on no validation images")
    if current is None:
        return Verdict(True, f"no current model to compare with: the candidate (mAP50-95 {candidate.map50_95:.3f}) serves")
    if candidate.split != current.split:
        return Verdict(False, "the candidate and the current model were not evaluated on the same validation split")
    deltas: dict[str, float] = {"map50_95": candidate.map50_95 - current.map50_95, "map50": candidate.map50 - current.map50}
    for name, before in sorted(current.recall.items()):
        deltas[f"recall/{name}"] = candidate.recall.get(name, 0.0) - before  # a class the candidate lost: recall 0
    refusals = []
    if deltas["map50_95"] < gate.margin - _EPS:
        refusals.append(f"mAP50-95 {candidate.map50_95:.3f} vs {current.map50_95:.3f} ({deltas['map50_95']:+.3f}, "
                        f"needs +{gate.margin:g})")
    if deltas["map50"] < -_EPS:
        refusals.append(f"mAP50 fell {current.map50:.3f} -> {candidate.map50:.3f}")
    fallen = [(name, current.recall[name], candidate.recall.get(name, 0.0)) for name in sorted(current.recall)
              if deltas[f"recall/{name}"] < -gate.max_recall_drop - _EPS]
    if fallen:
        refusals.append("recall fell by more than " + f"{gate.max_recall_drop:g} for " +
                        ", ".join(f"{name} ({before:.3f} -> {after:.3f})" for name, before, after in fallen))
    if refusals:
        return Verdict(False, "kept the current model: " + "; ".join(refusals), deltas)
    return Verdict(True, f"mAP50-95 {current.map50_95:.3f} -> {candidate.map50_95:.3f} ({deltas['map50_95']:+.3f}, "
                         f"margin {gate.margin:g}), mAP50 {current.map50:.3f} -> {candidate.map50:.3f}", deltas)
