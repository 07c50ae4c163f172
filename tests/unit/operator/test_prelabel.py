"""Pre-labeling decisions: the Data Manager queries, what is stored from a /predict answer, retries
with backoff, and what status and the Prelabeled condition say."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from prelabel_operator import prelabel
from prelabel_operator import status as status_module
from prelabel_operator.prelabel import Attempts, Progress, sort_results
from prelabel_operator.spec import MLBackendSpec, PrelabelSpec, SpecError

V = "prelabel-0123456789ab"


def items(query: str) -> list[tuple[str, str, object]]:
    return [(f["filter"], f["operator"], f["value"]) for f in json.loads(query)["filters"]["items"]]


def test_pending_query_pages_tasks_lacking_the_current_version_by_id_cursor() -> None:
    query = prelabel.pending_query(PrelabelSpec(), V, after_id=41)
    assert items(query) == [("filter:tasks:predictions_model_versions", "not_contains", [V]), ("filter:tasks:id", "greater", 41)]
    assert json.loads(query)["ordering"] == ["tasks:id"]  # a cursor needs a stable order
    # Label Studio iterates the value: a bare string would be matched letter by letter.
    assert isinstance(items(query)[0][2], list)


def test_unannotated_scope_and_keep_existing_policy() -> None:
    spec = PrelabelSpec(tasks="Unannotated", on_new_model_version="KeepExisting")
    assert items(prelabel.pending_query(spec, V, 0)) == [
        ("filter:tasks:total_annotations", "equal", 0), ("filter:tasks:total_predictions", "equal", 0), ("filter:tasks:id", "greater", 0)]
    assert items(prelabel.scope_query(spec)) == [("filter:tasks:total_annotations", "equal", 0)]
    assert items(prelabel.done_query(spec, V)) == [("filter:tasks:total_annotations", "equal", 0), ("filter:tasks:total_predictions", "greater", 0)]
    assert items(prelabel.done_query(PrelabelSpec(), V)) == [("filter:tasks:predictions_model_versions", "contains", [V])]
    assert items(prelabel.scope_query(PrelabelSpec())) == []


def test_sort_results_stores_good_predictions_fails_errors_and_leaves_other_versions() -> None:
    answer = {"results": [
        {"result": [{"type": "rectanglelabels"}], "score": 0.9, "model_version": V},
        {"result": [], "score": 0.0, "model_version": V, "errors": ["field 'image': GET ... answered HTTP 404"]},
        {"result": [], "score": 0.0, "model_version": "prelabel-old000000000"},
        {"result": [], "score": 0.0, "model_version": V},  # nothing found is a prediction too
        "junk",
    ]}
    out = sort_results([1, 2, 3, 4, 5], answer, V)
    assert out.store == [{"task": 1, "result": [{"type": "rectanglelabels"}], "score": 0.9, "model_version": V},
                         {"task": 4, "result": [], "score": 0.0, "model_version": V}]
    assert out.failed == [(2, "field 'image': GET ... answered HTTP 404"),
                          (5, "the backend's result is not a Label Studio prediction ({\"result\": [regions], ...})")]
    assert out.stale == [3]


@pytest.mark.parametrize("answer", [{"results": [{"result": [], "model_version": V}]}, {"error": "x"}, [], None])
def test_an_answer_of_the_wrong_shape_fails_every_task_with_a_reason(answer: object) -> None:
    out = sort_results([7, 8], answer, V)
    assert [t for t, _ in out.failed] == [7, 8] and not out.store
    assert "results for 2 tasks" in out.failed[0][1]


# -- what any protocol-conforming backend answers (issue 26) -------------------------------------
def test_a_prediction_without_its_own_version_takes_the_answers_then_setups() -> None:
    # Label Studio's ML SDK puts model_version at the top of the answer only, or nowhere.
    top = sort_results([1, 2], {"model_version": V, "results": [{"result": []}, {"result": [], "model_version": V}]}, V)
    assert [p["task"] for p in top.store] == [1, 2] and {p["model_version"] for p in top.store} == {V} and not top.stale
    bare = sort_results([3], {"results": [{"result": [{"type": "choices", "value": {"choices": ["spam"]}}]}]}, V)
    assert bare.store == [{"task": 3, "result": [{"type": "choices", "value": {"choices": ["spam"]}}], "score": None, "model_version": V}]
    other = sort_results([4], {"model_version": "v2", "results": [{"result": []}]}, V)
    assert other.stale == [4] and other.answered == {"v2"}  # the answer's own version still counts


def test_a_version_of_any_json_type_is_a_string() -> None:
    # After the SDK's first fit(), /setup and /predict answer a JSON integer.
    out = sort_results([1], {"model_version": 1796529612, "results": [{"result": [], "score": "high"}]}, "1796529612")
    assert out.store == [{"task": 1, "result": [], "score": None, "model_version": "1796529612"}]  # a non-number score is none
    assert [status_module.version_text(v) for v in (1796529612, 1.5, True, "v1", None, "")] == ["1796529612", "1.5", "true", "v1", None, None]
    body = status_module.status(status_module.Observed(generation=1, model_version=1796529612), None)  # type: ignore[arg-type]
    assert body["modelVersion"] == "1796529612"  # the CRD's type: status is never refused with a 422


def test_keep_existing_stores_a_prediction_of_any_version_under_its_own() -> None:
    out = sort_results([1, 2], {"results": [{"result": [], "model_version": 7}, {"result": []}]}, "", any_version=True)
    assert out.store == [{"task": 1, "result": [], "score": None, "model_version": "7"},
                         {"task": 2, "result": [], "score": None, "model_version": None}]
    assert not out.stale


def test_a_short_results_list_fails_each_task_naming_the_batch_size_fix() -> None:
    out = sort_results([1, 2, 3], {"results": [{"result": [], "model_version": V}]}, V)
    assert [t for t, _ in out.failed] == [1, 2, 3] and not out.store
    assert "answered 1 results for 3 tasks" in out.failed[0][1] and "spec.prelabel.batchSize: 1" in out.failed[0][1]
    regions_not_dicts = sort_results([1], {"results": [{"result": ["a box"]}]}, V)
    assert regions_not_dicts.failed and not regions_not_dicts.store  # Label Studio's import would refuse it


def test_a_version_that_never_matches_backs_off_and_says_so_once_per_fault() -> None:
    mismatch = prelabel.Mismatch()
    assert mismatch.delay() is None and mismatch.fault(V) == ""
    mismatch.record(stored=0, stale=16, answered={"v2"})
    mismatch.record(stored=0, stale=16, answered={"v2"})
    assert mismatch.delay() == 10.0
    fault = mismatch.fault(V)
    assert "answers model version v2 while its /setup reports " + V in fault and "KeepExisting" in fault
    for _ in range(10):
        mismatch.record(stored=0, stale=16, answered={"v2"})
    assert mismatch.delay() == 300.0 and mismatch.fault(V) == fault  # capped; the same text, so one Event
    mismatch.record(stored=3, stale=13, answered={"v2"})  # a rollout: some pods answer the current version
    assert mismatch.delay() is None and mismatch.fault(V) == ""
    progress = Progress(model_version=V, total=5, counted=True, fault=fault, message="project 2 skipped")
    body = prelabel.status(progress, 0.0)
    assert body["message"] == fault + "; project 2 skipped" and body["fault"] == fault
    assert prelabel.condition(body, paused=False) == ("False", "ModelVersionMismatch", f"0/5 pre-labeled with {V}: {fault}")
    cleared = prelabel.status_patch(Progress(model_version=V, total=5, counted=True), 0.0, [], 1)
    assert cleared["prelabel"]["fault"] is None  # the merge patch removes it once the versions agree


def test_attempts_back_off_and_give_up_after_max() -> None:
    attempts = Attempts(max_attempts=3)
    assert attempts.due(5, now=0)
    assert not attempts.fail(1, 5, "broken", now=0)
    assert not attempts.due(5, now=4.9) and attempts.due(5, now=5.0)  # 5 s after the first failure
    assert not attempts.fail(1, 5, "broken", now=5)
    assert not attempts.due(5, now=14.9) and attempts.due(5, now=15.0)  # then 10 s
    assert attempts.next_retry(now=12) == pytest.approx(3)
    assert attempts.fail(1, 5, "still broken", now=15)  # the third try was the last
    assert not attempts.due(5, now=10_000)
    assert attempts.given_up() == {5: prelabel.Attempt(1, 3, "still broken", 15 + 20)}
    assert attempts.next_retry(now=20) is None
    attempts.fail(2, 6, "flaky", now=0)
    attempts.stored(6)
    assert 6 not in attempts.tasks and attempts.given_up(project=2) == {}
    assert prelabel.retry_delay(50) == 300


def test_status_and_condition_follow_the_counts() -> None:
    started = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
    waiting = prelabel.status(Progress(message="waiting for the backend"), now_mono=0)
    assert waiting["phase"] == "Progressing" and "summary" not in waiting  # nothing counted yet is not complete
    progress = Progress(model_version=V, total=200, predicted=180, run_started=started, run_started_mono=100.0, stored_this_run=90, counted=True)
    body = prelabel.status(progress, now_mono=130.0)
    assert body["phase"] == "Progressing" and body["summary"] == "180/200" and body["pending"] == 20
    assert body["tasksPerSecond"] == 3.0 and body["startedAt"] == "2026-11-29T12:00:00Z" and "completedAt" not in body
    assert set(body) <= set(prelabel.STATUS_KEYS)
    status, reason, message = prelabel.condition(body, paused=False)
    assert (status, reason) == ("False", "Progressing") and "180/200" in message and "20 pending" in message

    progress.predicted, progress.completed = 200, started
    done = prelabel.status(progress, now_mono=130.0)
    assert prelabel.condition(done, paused=False)[:2] == ("True", "Complete") and done["completedAt"] == "2026-11-29T12:00:00Z"

    progress.predicted, progress.failed = 199, 1
    progress.failures = [{"project": 1, "task": 17, "reason": "not an image", "attempts": 3}]
    failed = prelabel.status(progress, now_mono=130.0)
    assert failed["phase"] == "Failed" and failed["pending"] == 0
    status, reason, message = prelabel.condition(failed, paused=False)
    assert (status, reason) == ("False", "Failed") and "task 17: not an image" in message

    assert prelabel.condition(failed, paused=True)[:2] == ("False", "Paused")
    assert prelabel.condition(None, paused=False) is None


def test_the_condition_is_carried_by_reconciles_and_set_in_place_by_the_driver() -> None:
    now = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    observed = status_module.Observed(generation=3, prelabel=("False", "Progressing", "10/20"))
    conditions = status_module.status(observed, [], now)["conditions"]
    assert [c["type"] for c in conditions] == ["Ready", "Available", "Registered", "ConfigCompatible", "Prelabeled"]
    assert all(c["type"] != "Prelabeled" for c in status_module.status(status_module.Observed(generation=3), [], now)["conditions"])
    later = now + dt.timedelta(minutes=5)
    updated = status_module.with_condition(conditions, status_module.Condition("Prelabeled", "False", "Progressing", "15/20"), 3, later)
    assert updated[:4] == conditions[:4] and updated[4]["message"] == "15/20"
    assert updated[4]["lastTransitionTime"] == conditions[4]["lastTransitionTime"]  # same status: no transition
    done = status_module.with_condition(updated, status_module.Condition("Prelabeled", "True", "Complete", "20/20"), 3, later)
    assert done[4]["lastTransitionTime"] == "2026-11-29T00:05:00Z"
    assert status_module.with_condition([], status_module.Condition("Prelabeled", "True", "Complete", ""), 1, now)[0]["type"] == "Prelabeled"


def test_spec_prelabel_defaults_and_absence() -> None:
    base = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "k"}, "projects": [{"id": 1}]}}
    assert MLBackendSpec.parse(base).prelabel is None
    assert MLBackendSpec.parse({**base, "prelabel": {}}).prelabel == PrelabelSpec()
    parsed = MLBackendSpec.parse({**base, "prelabel": {"paused": True, "tasks": "Unannotated", "onNewModelVersion": "KeepExisting",
                                                       "batchSize": 8, "concurrency": 4, "pollSeconds": 5, "maxAttempts": 2}}).prelabel
    assert parsed == PrelabelSpec(True, "Unannotated", "KeepExisting", 8, 4, 5, 2)


def test_an_interactive_backend_is_not_bulk_run_unless_said() -> None:
    raw = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "k"}, "projects": [{"id": 1}], "interactive": True},
           "image": "team/sam:1", "backend": {}, "prelabel": {}}
    why = prelabel.bulk_refusal(MLBackendSpec.parse(raw))
    assert "registered as interactive" in why and "spec.prelabel.interactive: true" in why
    assert prelabel.bulk_refusal(MLBackendSpec.parse({**raw, "prelabel": {"interactive": True}})) == ""
    body = prelabel.status(Progress(refused=why), 0.0)
    assert body["phase"] == "Refused" and prelabel.condition(body, paused=False) == ("False", "Refused", why)


def test_a_foreign_backend_says_the_config_check_is_left_out_not_failed() -> None:
    observed = status_module.Observed(generation=1, available=True, url="http://b:9090", foreign=True,
                                      projects=[status_module.ProjectStatus(1, "p", 5, "Connected", compatible=True)])
    conds = {c.type: c for c in status_module.conditions(observed)}
    assert (conds["ConfigCompatible"].status, conds["ConfigCompatible"].reason) == ("True", "NotApplicable")
    assert "Prelabel's own /setup fields" in conds["ConfigCompatible"].message
    assert status_module.ready(list(conds.values())).status == "True"


def test_a_refused_brush_mask_names_the_label_studio_version_that_stores_it() -> None:
    brush = [{"type": "brushlabels", "value": {"format": "rle", "rle": [1, 0, 3], "brushlabels": ["Car"]}}]
    box = [{"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 2, "height": 2, "rectanglelabels": ["Car"]}}]
    assert "needs Label Studio 1.23 or later" in prelabel.refused_reason("", brush)
    assert prelabel.refused_reason("", box) == ("Label Studio refused the prediction: its import stored none of it (created: 0); "
                                                "its validator dropped the result")
    assert prelabel.refused_reason("Invalid label 'Bus'", box) == "Label Studio refused the prediction: Invalid label 'Bus'"


# -- spec.prelabel.subset ------------------------------------------------------------------------------
CITY = {"filter": "filter:tasks:data.city", "operator": "equal", "type": "String", "value": "Paris"}


def test_a_subset_s_filters_join_the_operator_s_own_in_every_query() -> None:
    spec = PrelabelSpec.parse({"tasks": "Unannotated", "subset": {"filters": {"conjunction": "and", "items": [CITY]}}})
    assert spec is not None
    subset = prelabel.subset_filters(spec)
    for query in (prelabel.scope_query(spec, subset), prelabel.done_query(spec, "v1", subset), prelabel.pending_query(spec, "v1", 7, subset)):
        filters = json.loads(query)["filters"]
        assert filters["conjunction"] == "and" and CITY in filters["items"]
        assert {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0} in filters["items"]
    cursor = json.loads(prelabel.scope_query(spec, subset, after_id=41))
    assert cursor["ordering"] == ["tasks:id"]
    assert {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": 41} in cursor["filters"]["items"]


def test_a_view_s_filters_are_used_and_an_or_view_is_refused_with_what_to_do() -> None:
    spec = PrelabelSpec.parse({"subset": {"view": "To pre-label"}})
    assert spec is not None and spec.subset.view == "To pre-label"
    assert prelabel.subset_filters(spec, {"title": "To pre-label", "filters": {"conjunction": "and", "items": [CITY]}}) == [CITY]
    assert prelabel.subset_filters(spec, {"title": "To pre-label"}) == []  # a tab without filters: the whole project
    with pytest.raises(ValueError, match="joined with 'or'"):
        prelabel.subset_filters(spec, {"filters": {"conjunction": "or", "items": [CITY, {**CITY, "value": "Rome"}]}})
    assert PrelabelSpec.parse({"subset": {"view": 12}}).subset.view == 12  # type: ignore[union-attr]


@pytest.mark.parametrize(("subset", "message"), [
    ({"filters": {"items": [CITY]}, "view": "x"}, "set filters or view, not both"),
    ({"filters": {"conjunction": "or", "items": [CITY, CITY]}}, "conjunction 'or'"),
    ({"filters": {"items": []}}, "name at least one Data Manager filter"),
])
def test_a_subset_the_operator_cannot_serve_is_a_spec_error(subset: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        PrelabelSpec.parse({"subset": subset})


def test_a_sample_is_the_same_after_a_restart_differs_per_resource_and_keeps_its_members_as_tasks_arrive() -> None:
    tasks = range(1, 1001)
    first = prelabel.sample(tasks, 50, "team/yolo")
    assert len(first) == 50 and first == prelabel.sample(list(reversed(tasks)), 50, "team/yolo")
    assert first != prelabel.sample(tasks, 50, "team/other")
    assert prelabel.sample(range(1, 11), 50, "team/yolo") == set(range(1, 11))  # fewer tasks than N: all of them
    grown = prelabel.sample(range(1, 2001), 50, "team/yolo")
    assert len(grown) == 50 and all(t in first for t in grown if t <= 1000)  # a member leaves only for a newcomer with a smaller hash


def listed(versions: list[str], database: str) -> str:
    """predictions_model_versions as Label Studio 1.21-1.23's DataManagerTaskSerializer lists it:
    SQLite's GROUP_CONCAT text, or PostgreSQL's ARRAY_AGG as JSON without brackets and quotes; cut at
    500 characters before the quotes go (its CHAR_LIMITS)."""
    text = ",".join(versions) if database == "sqlite" else json.dumps(versions)[1:-1]
    return text[:500].replace(',"', ', "').replace('"', "")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_listed_version_is_read_exactly_in_either_database_s_text(database: str) -> None:
    """Seen in CI on PostgreSQL: "old, new" split on "," gave " new", and a sample never completed."""
    for order in (["prelabel-old", "prelabel-new"], ["prelabel-new", "prelabel-old"]):
        assert prelabel.holds("prelabel-new", listed(order, database)) and prelabel.holds("prelabel-old", listed(order, database))
    assert not prelabel.holds("prelabel-abc", listed(["prelabel-abcd"], database))  # exact, not Label Studio's substring
    assert not prelabel.holds("prelabel-abc", listed([], database)) and not prelabel.holds("prelabel-abc", None)
    # Forty versions: the text is cut, and the newest may be past the cut. Where Label Studio's own
    # filter selected the task, a cut text counts as holding (a read-back then sends nothing twice).
    many = [f"prelabel-{i:012x}" for i in range(40)]
    text = listed(many, database)
    assert not prelabel.holds(many[-1], text) and prelabel.holds(many[-1], text, cut_holds=True)
    assert not prelabel.holds("prelabel-abc", listed(many[:3], database), cut_holds=True)  # short: never cut


# -- retention (spec.prelabel.retention) ---------------------------------------------------------------
def test_served_versions_keep_their_order_a_rollback_becomes_the_newest_and_the_list_is_capped() -> None:
    history: list[str] = []
    for version in ("v1", "v2", "v2", "", "v3", "v1"):
        history = prelabel.served(history, version)
    assert history == ["v2", "v3", "v1"]
    many = [f"v{i}" for i in range(prelabel.MAX_SERVED_VERSIONS)]
    assert prelabel.served(many, "new") == [*many[1:], "new"]


def test_to_prune_lists_only_versions_this_backend_served_older_than_the_kept_ones_and_present() -> None:
    history = ["v1", "v2", "v3", "v4"]
    present = {"v1": 10, "v2": 0, "v3": 7, "v4": 10, "someone-elses": 5}
    assert prelabel.to_prune(history, 1, present, {"v4"}) == ["v1", "v3"]  # v2 holds none; another backend's never
    assert prelabel.to_prune(history, 2, present, {"v4"}) == ["v1"]
    assert prelabel.to_prune(history, 4, present, {"v4"}) == prelabel.to_prune(history, 9, present, {"v4"}) == []
    assert prelabel.to_prune(history, 1, present, {"v3", "v4"}) == ["v1"]  # a version another project serves stays
    # Two projects with their own configs: each keeps its own newest versions.
    both = ["a1", "b1", "a2", "b2"]
    assert prelabel.to_prune(both, 2, {"a1": 5, "a2": 5}, {"a2", "b2"}) == []
    assert prelabel.to_prune(both, 1, {"a1": 5, "a2": 5}, {"a2", "b2"}) == ["a1"]


def test_retention_waits_while_a_task_would_lose_its_only_pre_label() -> None:
    items = json.loads(prelabel.superseded_query("prelabel-old", "prelabel-new"))["filters"]["items"]
    assert [(i["filter"], i["operator"], i["value"]) for i in items] == [
        ("filter:tasks:predictions_model_versions", "contains", ["prelabel-old"]),
        ("filter:tasks:predictions_model_versions", "not_contains", ["prelabel-new"])]  # no scope: Label Studio deletes project-wide


def test_retention_is_carried_in_status_across_a_restart() -> None:
    progress = Progress(served_versions=["v1", "v2"], pruned=12, pruned_versions=["v1"])
    said = prelabel.status(progress, 0.0)
    assert (said["servedVersions"], said["prunedPredictions"], said["prunedVersions"]) == (["v1", "v2"], 12, ["v1"])
    resumed = Progress()
    prelabel.resume(resumed, said)
    assert (resumed.served_versions, resumed.pruned, resumed.pruned_versions) == (["v1", "v2"], 12, ["v1"])
    assert prelabel.pruned(["v1", "v2"], "v1") == ["v2", "v1"]
    assert PrelabelSpec.parse({"retention": {"keepModelVersions": 2}}).keep_model_versions == 2  # type: ignore[union-attr]
    assert PrelabelSpec.parse({}).keep_model_versions is None  # type: ignore[union-attr]
