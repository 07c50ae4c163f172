"""The training policy (prelabel_operator.training), each rule on its own and at its edges: which
annotations are human, the held-out split, when to train, and the promotion gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from prelabel_operator import training
from prelabel_operator.training import Annotation, Decision, Gate, LastRun, Metrics, Schedule

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


def box(x: float, label: str = "cat", **extra: Any) -> dict[str, Any]:
    return {"id": f"r{x}", "from_name": "label", "to_name": "image", "type": "rectanglelabels",
            "original_width": 640, "original_height": 480, "image_rotation": 0,
            "value": {"x": x, "y": 10.0, "width": 20.0, "height": 30.0, "rotation": 0, "rectanglelabels": [label]}, **extra}


def choice(label: str, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": [label]}, **extra}


def ann(aid: int = 1, task: int = 1, result: list[dict[str, Any]] | None = None, minutes: float = 0, **kw: Any) -> Annotation:
    return Annotation(id=aid, task=task, result=[box(5.0)] if result is None else result,
                      updated_at=T0 + timedelta(minutes=minutes), **kw)


# -- which annotations are human --------------------------------------------------------------------
PRED = {7: [box(5.0, score=0.91, origin="prediction"), box(50.0, "dog", score=0.5)]}


def test_an_annotation_drawn_from_scratch_is_human() -> None:
    assert training.is_human(ann(result=[box(5.0)]), {})
    assert training.is_human(ann(result=[box(5.0, origin="manual")]), {})
    assert training.is_human(ann(result=[box(12.5)]), PRED)  # differs from the task's prediction


def test_a_skipped_annotation_is_not_human() -> None:
    assert not training.is_human(ann(was_cancelled=True), {})
    assert not training.is_human(ann(result=[], was_cancelled=True), {})


def test_a_prediction_copied_without_a_change_is_not_human() -> None:
    copy = [box(50.0, "dog", id="other-id", origin="prediction"), box(5.0, readonly=False)]  # order, ids, scores differ
    assert not training.is_human(ann(result=copy, parent_prediction=7), PRED)
    # Label Studio's "Create annotations from predictions": parent_prediction set, the result verbatim
    assert not training.is_human(ann(result=PRED[7], parent_prediction=7), PRED)
    # equal to within float noise (1e-6): still the same boxes
    assert not training.is_human(ann(result=[box(5.0 + 1e-9), box(50.0, "dog")], parent_prediction=7), PRED)


def test_a_prediction_changed_by_a_person_is_human() -> None:
    moved = [box(5.5, origin="prediction-changed"), box(50.0, "dog", origin="prediction")]
    assert training.is_human(ann(result=moved, parent_prediction=7), PRED)
    relabelled = [box(5.0), box(50.0, "cat")]
    assert training.is_human(ann(result=relabelled, parent_prediction=7), PRED)
    one_removed = [box(5.0, origin="prediction")]  # a false positive deleted: a correction
    assert training.is_human(ann(result=one_removed, parent_prediction=7), PRED)
    one_added = [*PRED[7], box(90.0, origin="manual")]
    assert training.is_human(ann(result=one_added, parent_prediction=7), PRED)


def test_a_parent_prediction_that_is_gone_needs_a_region_a_person_made() -> None:
    assert not training.is_human(ann(result=[box(5.0)], parent_prediction=99), PRED)  # no origin: in doubt, not human
    assert not training.is_human(ann(result=[box(5.0, origin="prediction")], parent_prediction=99), {})
    assert training.is_human(ann(result=[box(5.0, origin="prediction-changed")], parent_prediction=99), {})
    assert training.is_human(ann(result=[box(5.0, origin="prediction"), box(9.0, origin="manual")], parent_prediction=99), {})
    # Deleted with its model version (retention): Label Studio nulls parent_prediction; the origins still tell.
    assert not training.is_human(ann(result=[box(5.0, origin="prediction"), box(9.0, origin="prediction")]), {})
    assert training.is_human(ann(result=[box(5.0, origin="prediction"), box(9.0, origin="prediction-changed")]), {})
    assert training.is_human(ann(result=[]), {})  # an empty result still says "none of the labels"


def test_a_silent_copy_of_a_task_prediction_is_not_human_unless_a_person_drew_it() -> None:
    assert not training.is_human(ann(result=[box(50.0, "dog"), box(5.0)]), PRED)  # no parent named, same content
    cls = {3: [choice("cat", score=0.8)]}
    assert not training.is_human(ann(result=[choice("cat")]), cls)  # by a script: a copy
    assert training.is_human(ann(result=[choice("cat", origin="manual")]), cls)  # picked in the editor
    assert training.is_human(ann(result=[choice("dog")]), cls)
    # started from that prediction and submitted as it was: a copy, whatever the regions' origin says
    assert not training.is_human(ann(result=[choice("cat", origin="manual")], parent_prediction=3), cls)


def test_an_empty_result_is_a_human_negative_unless_it_copies_an_empty_prediction() -> None:
    assert training.is_human(ann(result=[]), PRED)
    assert training.is_human(ann(result=[]), {})
    assert not training.is_human(ann(result=[], parent_prediction=4), {4: []})
    assert not training.is_human(ann(result=[]), {4: []})


def test_ground_truth_does_not_make_a_copy_human_but_wins_the_pick() -> None:
    assert not training.is_human(ann(result=PRED[7], parent_prediction=7, ground_truth=True), PRED)
    older_truth = ann(aid=1, task=5, minutes=0, ground_truth=True)
    newer = ann(aid=2, task=5, minutes=30)
    other_task = [ann(aid=3, task=6, minutes=1), ann(aid=4, task=6, minutes=2)]
    picked = training.pick([newer, older_truth, *other_task])
    assert picked == {5: older_truth, 6: other_task[1]}
    tie = [ann(aid=8, task=9, minutes=1), ann(aid=9, task=9, minutes=1)]
    assert training.pick(tie)[9].id == 9 and training.pick(reversed(tie))[9].id == 9  # the order given does not matter


def test_human_annotations_reads_each_tasks_predictions() -> None:
    annotations = [ann(aid=1, task=1, result=PRED[7], parent_prediction=7), ann(aid=2, task=2, result=PRED[7], parent_prediction=7)]
    assert [a.id for a in training.human_annotations(annotations, {1: PRED})] == []  # task 2's parent is unknown: in doubt
    assert [a.id for a in training.human_annotations(annotations, {2: {8: [box(1.0)], 7: [box(2.0)]}})] == [2]


def test_from_label_studio_reads_the_apis_fields() -> None:
    raw = {"id": 41, "task": 12, "result": [box(5.0)], "was_cancelled": False, "ground_truth": True,
           "parent_prediction": 7, "updated_at": "2026-11-30T06:00:00.123456Z", "created_at": "2026-11-29T00:00:00Z",
           "completed_by": 1, "lead_time": 12.5}
    a = training.from_label_studio(raw)
    assert (a.id, a.task, a.ground_truth, a.parent_prediction, a.was_cancelled) == (41, 12, True, 7, False)
    assert a.updated_at == datetime(2026, 11, 30, 6, 0, 0, 123456, tzinfo=UTC)
    assert training.from_label_studio({**raw, "parent_prediction": None, "result": None}).parent_prediction is None
    with pytest.raises(ValueError, match="no updated_at"):
        training.from_label_studio({"id": 1, "task": 1})


def test_new_since_counts_what_came_after_the_snapshot() -> None:
    annotations = [ann(aid=i, task=i, minutes=i) for i in range(5)]
    assert training.new_since(annotations, None) == 5
    assert training.new_since(annotations, T0 + timedelta(minutes=2)) == 2  # strictly after: the snapshot's own is old
    assert training.new_since(annotations, T0 + timedelta(minutes=4)) == 0
    assert training.snapshot_time(annotations) == T0 + timedelta(minutes=4)
    assert training.snapshot_time([]) is None


# -- the split and the snapshot ---------------------------------------------------------------------
def test_the_validation_split_is_stable_and_near_its_fraction() -> None:
    ids = range(1, 5001)
    held = [t for t in ids if training.in_validation(t, 0.2)]
    assert held == [t for t in ids if training.in_validation(t, 0.2)]  # the same on every run
    assert 900 < len(held) < 1100, len(held)
    assert set(held) <= {t for t in ids if training.in_validation(t, 0.3)}  # a larger fraction only adds tasks
    assert held != [t for t in ids if training.in_validation(t, 0.2, salt="project-2")]
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            training.in_validation(1, bad)


def test_a_task_keeps_its_side_as_more_are_annotated() -> None:
    first = training.split([ann(aid=t, task=t) for t in range(1, 101)], 0.2)
    more = training.split([ann(aid=t, task=t) for t in range(1, 301)], 0.2)
    assert {a.task for a in first.validation} <= {a.task for a in more.validation}
    assert {a.task for a in first.train} <= {a.task for a in more.train}
    assert not {a.task for a in more.train} & {a.task for a in more.validation}
    assert len(more.train) + len(more.validation) == 300


def test_split_takes_one_annotation_per_task_and_says_when_a_side_is_too_small() -> None:
    two_on_one_task = [ann(aid=1, task=1, minutes=0), ann(aid=2, task=1, minutes=1)]
    s = training.split(two_on_one_task, 0.5)
    assert [a.id for a in s.train + s.validation] == [2]
    assert s.problem() is not None
    big = training.split([ann(aid=t, task=t) for t in range(1, 41)], 0.25)
    assert big.problem() is None
    assert big.problem(min_validation=len(big.validation)) is None  # exactly the minimum: enough
    assert "validation tasks, fewer than" in (big.problem(min_validation=len(big.validation) + 1) or "")
    assert "training tasks, fewer than" in (big.problem(min_train=len(big.train) + 1) or "")


def test_the_snapshot_digest_names_the_data_not_its_order() -> None:
    annotations = [ann(aid=i, task=i, minutes=i) for i in range(4)]
    digest = training.snapshot_digest(annotations)
    assert digest.startswith("sha256:") and digest == training.snapshot_digest(reversed(annotations))
    edited = [*annotations[:3], ann(aid=3, task=3, minutes=99)]
    assert training.snapshot_digest(edited) != digest


# -- when to train ----------------------------------------------------------------------------------
EVERY_10 = Schedule(after_annotations=10, min_interval_s=3600)
LAST = LastRun(started_at=1000.0, snapshot_at=T0, on_demand="1")


def decide(schedule: Schedule = EVERY_10, last: LastRun | None = LAST, new: int = 10, on_demand: str | None = "1",
           now: float = 1000.0 + 3600, running: bool = False) -> Decision:
    return training.should_train(schedule, last, new_human=new, on_demand=on_demand, now=now, running=running)


def test_n_new_human_annotations_start_a_run_exactly_at_n() -> None:
    assert decide(new=10).train
    assert decide(new=11).train
    no = decide(new=9)
    assert not no.train and no.reason == "9 of 10 new human annotations since the last run" and no.retry_in_s is None
    assert not decide(new=0).train


def test_the_minimum_interval_holds_an_automatic_run_back_until_it_has_elapsed() -> None:
    held = decide(now=1000.0 + 3599)
    assert not held.train and held.retry_in_s == pytest.approx(1) and "minimum interval" in held.reason
    assert decide(now=1000.0 + 3600).train  # exactly elapsed
    assert decide(last=None, now=0.0).train  # no run yet: nothing to wait for
    assert decide(Schedule(after_annotations=10), now=1000.0).train  # no interval declared


def test_on_demand_starts_a_run_when_its_value_changes_whatever_the_count_and_interval() -> None:
    run = decide(new=0, on_demand="2", now=1001.0)
    assert run.train and "on demand" in run.reason
    assert not decide(new=0, on_demand="1").train  # the value the last run answered: nothing new asked
    assert not decide(new=0, on_demand=None).train and not decide(new=0, on_demand="").train
    assert decide(last=None, new=0, on_demand="1").train  # a first request


def test_on_demand_only_and_a_running_job() -> None:
    only = Schedule(after_annotations=None)
    waiting = decide(only, new=1000)
    assert not waiting.train and waiting.reason == "training runs on demand only"
    assert decide(only, new=0, on_demand="bump").train
    busy = decide(new=1000, on_demand="bump", running=True)
    assert not busy.train and busy.reason == "a training run is in progress"


def test_a_schedule_refuses_nonsense() -> None:
    for bad in ({"after_annotations": 0}, {"after_annotations": -3}, {"min_interval_s": -1}, {"min_interval_s": float("nan")}):
        with pytest.raises(ValueError, match="must be >= "):
            Schedule(**bad)  # type: ignore[arg-type]


# -- the promotion gate -----------------------------------------------------------------------------
SPLIT = "sha256:val"
CURRENT = Metrics(map50_95=0.60, map50=0.80, recall={"cat": 0.90, "dog": 0.70}, split=SPLIT, images=20)


def cand(map50_95: float = 0.65, map50: float = 0.82, recall: dict[str, float] | None = None, split: str = SPLIT,
         images: int = 20) -> Metrics:
    return Metrics(map50_95=map50_95, map50=map50, recall={"cat": 0.90, "dog": 0.72} if recall is None else recall,
                   split=split, images=images)


def test_a_better_candidate_is_promoted_and_the_verdict_says_why() -> None:
    verdict = training.judge(cand(), CURRENT, Gate(margin=0.02))
    assert verdict.promote and "0.600 -> 0.650" in verdict.reason
    assert verdict.deltas["map50_95"] == pytest.approx(0.05) and verdict.deltas["recall/dog"] == pytest.approx(0.02)


@pytest.mark.parametrize(("current", "candidate"), [(0.60, 0.61), (0.0, 0.01), (0.05, 0.06), (0.14, 0.15), (0.2, 0.21)])
def test_a_delta_exactly_at_the_margin_promotes_despite_float_noise(current: float, candidate: float) -> None:
    """0.06 - 0.05 is 0.009999999999999995 in floats: a tie at the margin must not depend on that."""
    now = Metrics(map50_95=current, map50=0.8, split=SPLIT, images=5)
    assert training.judge(Metrics(map50_95=candidate, map50=0.8, split=SPLIT, images=5), now, Gate(margin=0.01)).promote


def test_just_under_the_margin_or_a_tie_keeps_the_current_model() -> None:
    under = training.judge(cand(map50_95=0.6099), CURRENT, Gate(margin=0.01))
    assert not under.promote and "mAP50-95 0.610 vs 0.600 (+0.010, needs +0.01)" in under.reason
    tie = training.judge(cand(map50_95=0.60), CURRENT, Gate(margin=0.01))
    assert not tie.promote and tie.reason.startswith("kept the current model: mAP50-95")
    worse = training.judge(cand(map50_95=0.55), CURRENT, Gate(margin=0.01))
    assert not worse.promote and "(-0.050" in worse.reason
    with pytest.raises(ValueError, match="margin must be > 0"):
        Gate(margin=0)


def test_a_lower_map50_is_refused_even_when_map50_95_rises() -> None:
    verdict = training.judge(cand(map50=0.79), CURRENT, Gate())
    assert not verdict.promote and "mAP50 fell 0.800 -> 0.790" in verdict.reason
    assert training.judge(cand(map50=0.80), CURRENT, Gate()).promote  # equal mAP50 is not a fall
    assert not training.judge(cand(map50=0.7995), CURRENT, Gate()).promote  # any fall, however small


def test_a_class_whose_recall_falls_too_far_is_refused() -> None:
    at_limit = training.judge(cand(recall={"cat": 0.85, "dog": 0.70}), CURRENT, Gate(max_recall_drop=0.05))
    assert at_limit.promote  # exactly the allowed drop
    over = training.judge(cand(recall={"cat": 0.84, "dog": 0.70}), CURRENT, Gate(max_recall_drop=0.05))
    assert not over.promote and "recall fell by more than 0.05 for cat (0.900 -> 0.840)" in over.reason
    lost = training.judge(cand(recall={"cat": 0.95}), CURRENT, Gate())  # a class the candidate no longer finds
    assert not lost.promote and "dog (0.700 -> 0.000)" in lost.reason
    new_class = training.judge(cand(recall={"cat": 0.9, "dog": 0.7, "bird": 0.1}), CURRENT, Gate())
    assert new_class.promote  # a class the current model lacks takes nothing away


def test_every_reason_is_listed_together() -> None:
    verdict = training.judge(cand(map50_95=0.5, map50=0.7, recall={"cat": 0.1, "dog": 0.7}), CURRENT, Gate())
    assert not verdict.promote and verdict.reason.count(";") == 2


def test_only_the_same_split_compares_and_an_empty_evaluation_never_promotes() -> None:
    other = training.judge(cand(map50_95=0.99, split="sha256:other"), CURRENT, Gate())
    assert not other.promote and "same validation split" in other.reason
    assert not training.judge(cand(images=0), CURRENT, Gate()).promote
    assert not training.judge(cand(images=0), None, Gate()).promote
    first = training.judge(cand(), None, Gate())
    assert first.promote and "no current model" in first.reason
