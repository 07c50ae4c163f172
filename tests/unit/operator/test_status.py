"""Status from observations: conditions with reasons a person can act on, stable transition times."""

from __future__ import annotations

import datetime as dt

import pytest

from prelabel_operator import status as status_module
from prelabel_operator.status import Observed, ProjectStatus, rolled_out

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def by_type(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def connected(i: int) -> ProjectStatus:
    return ProjectStatus(i, f"p{i}", 10 + i, "Connected", compatible=True)


def test_all_true_is_ready() -> None:
    status = status_module.status(Observed(3, available=True, url="http://127.99.0.5:9090", model_version="prelabel-x",
                                       projects=[connected(1), connected(2)]), None, T0)
    conds = by_type(status)
    assert [c["status"] for c in status["conditions"]] == ["True"] * 4 and conds["Ready"]["reason"] == "Ready"
    assert status["projectsSummary"] == "2/2" and status["observedGeneration"] == 3 and status["url"] == "http://127.99.0.5:9090"
    assert status["projects"][0] == {"id": 1, "title": "p1", "mlBackendId": 11, "state": "Connected"}


def test_invalid_spec_and_missing_secret_mark_every_condition() -> None:
    for observed, reason in ((Observed(1, spec_error="bad"), "InvalidSpec"), (Observed(1, kube_error=("SecretMissing", "no Secret")), "SecretMissing"),
                             (Observed(1, kube_error=("Forbidden", "may not apply")), "Forbidden")):
        conds = by_type(status_module.status(observed, None, T0))
        assert {c["reason"] for c in conds.values()} == {reason} and conds["Ready"]["status"] == "False"


def test_waiting_for_the_deployment_is_unknown_registration() -> None:
    conds = by_type(status_module.status(Observed(1, available=False, available_message="0/1 backend pods ready"), None, T0))
    assert conds["Available"]["message"] == "0/1 backend pods ready"
    assert conds["Registered"]["status"] == "Unknown" and conds["Ready"]["reason"] == "DeploymentNotAvailable"


def test_label_studio_errors_and_failing_projects_are_named() -> None:
    outage = Observed(1, available=True, url="http://x", label_studio_error=("LabelStudioUnreachable", "could not reach Label Studio"))
    assert by_type(status_module.status(outage, None, T0))["Registered"]["reason"] == "LabelStudioUnreachable"
    partial = Observed(1, available=True, url="http://x",
                       projects=[connected(1), ProjectStatus(None, "Cars", state="Error", message="no project titled 'Cars'")])
    registered = by_type(status_module.status(partial, None, T0))["Registered"]
    assert registered["status"] == "False" and "project Cars: no project titled 'Cars'" in registered["message"]


def test_an_incompatible_config_is_its_own_condition() -> None:
    observed = Observed(1, available=True, url="http://x", projects=[ProjectStatus(4, "text", state="Error", message="found Labels", compatible=False)])
    compat = by_type(status_module.status(observed, None, T0))["ConfigCompatible"]
    assert (compat["status"], compat["reason"]) == ("False", "IncompatibleLabelConfig") and "project 4: found Labels" in compat["message"]


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = status_module.status(Observed(1, available=False), None, T0)
    same = status_module.status(Observed(2, available=False), first["conditions"], T1)
    assert by_type(same)["Available"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = status_module.status(Observed(2, available=True, url="http://x", projects=[connected(1)]), first["conditions"], T1)
    assert by_type(flipped)["Available"]["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_deployment_availability_needs_a_ready_pod() -> None:
    assert status_module.deployment_available(None) == (False, "the Deployment does not exist yet")
    up = {"spec": {"replicas": 2}, "status": {"readyReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]}}
    assert status_module.deployment_available(up) == (True, "1/2 backend pods ready")
    down = {"spec": {"replicas": 1}, "status": {"conditions": [{"type": "Available", "status": "False", "message": "minimum not met"}]}}
    assert status_module.deployment_available(down) == (False, "minimum not met")


def test_config_compatible_names_unmapped_labels_without_failing_and_unconfigured_projects_fail_it() -> None:
    """Cases 7 and 10 in the status: warnings keep ConfigCompatible True; a connected project whose
    config has nothing to serve yet makes it False while Registered stays True."""
    warned = ProjectStatus(1, "p1", 11, "Connected", compatible=True,
                           message='<RectangleLabels name="label"> with yolov8n.pt: labels no model class maps to: Coach; mapped: Car<-truck')
    conds = by_type(status_module.status(Observed(1, available=True, url="http://u", projects=[warned, connected(2)]), None, T0))
    assert conds["ConfigCompatible"]["status"] == "True" and "project 1: <RectangleLabels" in conds["ConfigCompatible"]["message"]
    assert "Car<-truck" in conds["ConfigCompatible"]["message"] and conds["Ready"]["status"] == "True"
    empty = ProjectStatus(3, "new", 13, "Connected", message="no control in the labeling config can be served: it has no control tags yet", compatible=False)
    conds = by_type(status_module.status(Observed(1, available=True, url="http://u", projects=[empty]), None, T0))
    assert conds["Registered"]["status"] == "True"
    assert (conds["ConfigCompatible"]["status"], conds["ConfigCompatible"]["reason"]) == ("False", "IncompatibleLabelConfig")
    assert "project 3: no control" in conds["ConfigCompatible"]["message"]


def test_the_setup_answer_is_read_into_a_config_check() -> None:
    from prelabel_operator.configcheck import ConfigCheck, interpret

    assert interpret(200, {"model_version": "prelabel-1", "compatible": True}) == ConfigCheck(True, "", "prelabel-1", True)
    assert interpret(200, {"model_version": "prelabel-1"}) == ConfigCheck(True, "", "prelabel-1", True)  # an older backend
    warned = interpret(200, {"model_version": "v", "compatible": True, "warnings": ["a", "b"]})
    assert warned.compatible and warned.message == "a; b"
    unconfigured = interpret(200, {"model_version": "prelabel-unconfigured", "compatible": False, "error": "no control"})
    assert unconfigured == ConfigCheck(False, "no control", None, True)  # registered all the same
    assert interpret(422, {"error": "bad model_path"}) == ConfigCheck(False, "bad model_path", None, False)
    assert interpret(503, None) == ConfigCheck(None, "backend answered HTTP 503 to /setup", None, True)


@pytest.mark.parametrize(("deployment", "done"), [
    (None, False),
    ({"metadata": {"generation": 3}, "spec": {"replicas": 2}, "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2}}, True),
    ({"metadata": {"generation": 4}, "spec": {"replicas": 2}, "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2}}, False),
    ({"metadata": {"generation": 4}, "spec": {"replicas": 2}, "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 2}}, False),
    ({"metadata": {"generation": 4}, "spec": {"replicas": 2}, "status": {"observedGeneration": 4, "replicas": 2, "updatedReplicas": 1}}, False),
    ({"metadata": {"generation": 5}, "spec": {"replicas": 0}, "status": {"observedGeneration": 5}}, True),
])
def test_a_rollout_is_done_when_the_latest_template_runs_alone(deployment: dict | None, done: bool) -> None:
    assert rolled_out(deployment) is done
