"""Scale to zero's decisions (sleep.py): when the backend may sleep, what wakes it, what the
Sleeping condition says. Pure functions: no cluster, no Label Studio."""

from __future__ import annotations

from prelabel_operator import sleep
from prelabel_operator.spec import MLBackendSpec, PrelabelSpec

BASE = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}]}}
SLEEPY = MLBackendSpec.parse({**BASE, "prelabel": {"scaleToZero": {"idleSeconds": 60}}})
FOUND = sleep.Asleep("2026-12-07T03:00:00Z", 4, sleep.configs_digest({1: "<View/>", 2: "<View></View>"}), "", "v1,v2")


def test_it_sleeps_only_when_complete_idle_long_enough_and_not_training() -> None:
    section = SLEEPY.prelabel
    assert section is not None and section.scale_to_zero is not None and section.scale_to_zero.idle_seconds == 60
    assert sleep.time_to_sleep(section, "Complete", 60, {})
    assert sleep.time_to_sleep(section, "Failed", 61, {})  # the failed tasks had their tries; nothing left to do
    assert not sleep.time_to_sleep(section, "Complete", 59, {})
    assert not sleep.time_to_sleep(section, "Progressing", 600, {})
    assert not sleep.time_to_sleep(section, "Complete", 600, {"training": {"phase": "Training"}})
    assert not sleep.time_to_sleep(PrelabelSpec(), "Complete", 10**6, {})  # off unless asked for


def test_status_sleep_holds_only_under_the_spec_it_slept_under() -> None:
    status = {"sleep": FOUND.as_status()}
    assert sleep.asleep(SLEEPY, status, 4) == FOUND and FOUND.versions() == ["v1", "v2"]
    assert sleep.asleep(SLEEPY, status, 5) is None  # a new generation
    assert sleep.asleep(MLBackendSpec.parse({**BASE, "prelabel": {"paused": True, "scaleToZero": {}}}), status, 4) is None
    assert sleep.asleep(MLBackendSpec.parse({**BASE, "prelabel": {}}), status, 4) is None  # scaleToZero removed
    assert sleep.asleep(SLEEPY, {}, 4) is None


def test_what_wakes_it() -> None:
    same = sleep.configs_digest({2: "<View></View>", 1: "<View/>"})  # order-free
    assert sleep.wake_reason(FOUND, same, {}, 0) == ""
    assert sleep.wake_reason(FOUND, same, {}, 3) == "3 task(s) to predict"
    assert "labeling config changed" in sleep.wake_reason(FOUND, sleep.configs_digest({1: "<View/>"}), {}, 0)
    assert sleep.wake_reason(FOUND, same, {"training": {"version": "20261207-0300"}}, 0) == "training promoted model version 20261207-0300"
    selected = sleep.Asleep(FOUND.since, 4, same, "", "v1", sleep.selection_digest([3, 1]))
    assert sleep.wake_reason(selected, same, {}, 0, sleep.selection_digest([1, 3])) == ""
    assert "projectSelector changed" in sleep.wake_reason(selected, same, {}, 0, sleep.selection_digest([1, 3, 4]))
    assert sleep.Asleep.from_status({"sleep": selected.as_status()}) == selected


def test_the_sleeping_condition() -> None:
    asleep = sleep.condition(SLEEPY, {"sleep": FOUND.as_status()}, 4)
    assert asleep is not None and (asleep.status, asleep.reason) == ("True", "Idle") and "no /predict for 60s" in asleep.message
    woken = sleep.condition(SLEEPY, {"sleep": FOUND.as_status()}, 5)
    assert woken is not None and (woken.status, woken.reason, woken.message) == ("False", "Woken", "woken: the spec changed")
    said = {"conditions": [{"type": "Sleeping", "status": "False", "reason": "Woken", "message": "woken: 3 task(s) to predict"}]}
    kept = sleep.condition(SLEEPY, said, 4)
    assert kept is not None and kept.message == "woken: 3 task(s) to predict"  # what the daemon said stays
    awake = sleep.condition(SLEEPY, {}, 4)
    assert awake is not None and (awake.status, awake.reason) == ("False", "Awake")
    assert sleep.condition(MLBackendSpec.parse(BASE), {}, 4) is None
    assert sleep.condition(MLBackendSpec.parse(BASE), said, 4) is None  # scaleToZero removed: the condition goes


def test_a_woken_backend_starts_with_its_replicas_or_the_autoscalers_minimum() -> None:
    assert sleep.awake_replicas(MLBackendSpec.parse({**BASE, "replicas": 3})) == 3
    assert sleep.awake_replicas(MLBackendSpec.parse({**BASE, "replicas": 3, "autoscaling": {"enabled": True, "minReplicas": 2}})) == 2


def test_asleep_a_project_names_a_version_it_holds_or_keeps_the_title() -> None:
    assert sleep.shown_version("v3", ["v1", "v2", "v3"], {"v3": 4, "v1": 9}) == "v3"
    assert sleep.shown_version("v3", ["v1", "v2", "v3"], {"v1": 2, "v2": 5, "other": 50}) == "v2"  # KeepExisting: what most hold
    assert sleep.shown_version("v3", ["v1"], {"other": 50}) is None  # an empty project, or only another backend's
    assert sleep.shown_version("", [], {}) is None
