"""The pre-labeling daemon's loop (prelabel_driver.run) over a fake driver, Secrets and status
writer: where it waits, what it passes each pass, how an outage backs off and shows in status, and
the Events at each phase change. No Label Studio, no backend: milliseconds."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import Any

from prelabel_operator import metrics, sleep
from prelabel_operator.errors import KubeError, SecretMissing
from prelabel_operator.keys import Keys
from prelabel_operator.prelabel import Progress
from prelabel_operator.prelabel_driver import Outage, Report, Resource, Target, run
from prelabel_operator.spec import MLBackendSpec, PrelabelSpec
from prelabel_operator.status import Event, condition

SPEC = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}]},
        "prelabel": {"pollSeconds": 40}}
REGISTERED = {"url": "http://10.96.0.7:9090", "projects": [{"id": 1, "state": "Connected"}, {"id": 2, "state": "Error"}],
              "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}]}


class Stopped:
    """kopf's DaemonStopped: stops after `waits` waits, recording each wait's seconds."""

    def __init__(self, waits: int) -> None:
        self.left, self.waited = waits, []  # type: list[float]

    def __bool__(self) -> bool:
        return self.left <= 0

    async def wait(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - kopf.DaemonStopped.wait as it is
        self.waited.append(float(timeout or 0))
        self.left -= 1


class FakeDriver:
    """Each pass reports its progress and returns the next of `results` (a delay or an exception)."""

    def __init__(self, namespace: str, name: str, report: Report, results: list[Any]) -> None:
        self.report, self.results = report, results
        self.progress = Progress()
        self.targets: list[Target] = []
        self.last_predict = time.monotonic()
        self.woken_at = -300.0
        self.configs = {1: "<View/>"}
        self.wake_reasons: list[str] = []  # what each check while asleep finds, in turn
        self.asleep: sleep.Asleep | None = None
        self.restore_title = False
        self.model_versions: list[str] = []  # what go_to_sleep and wake_up set the projects' model_version to

    async def wake_reason(self, target: Target, spec: PrelabelSpec, found: sleep.Asleep, status: Any) -> str:
        self.targets.append(target)
        return self.wake_reasons.pop(0)

    async def go_to_sleep(self, target: Target, generation: int, status: Any) -> sleep.Asleep:
        self.model_versions.append(self.progress.model_version)
        return sleep.Asleep(sleep.now(), generation, sleep.configs_digest(self.configs), "", self.progress.model_version)

    async def wake_up(self, target: Target) -> None:
        self.model_versions.append(target.title)

    async def run_pass(self, target: Target, spec: PrelabelSpec, stopped: Any) -> float | None:
        self.targets.append(target)
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        self.progress = Progress(model_version="prelabel-abc", total=10, predicted=10 - result[0], counted=True)
        await self.report(self.progress)
        return result[1]


class Harness:
    def __init__(self, status: dict[str, Any], results: list[Any], keys_fail: Exception | None = None) -> None:
        self.status, self.results = copy.deepcopy(status), results  # the live view: each patch lands in it
        self.patches: list[dict[str, Any]] = []
        self.events: list[Event] = []
        self.keys_asked: list[MLBackendSpec] = []
        self.keys_fail = keys_fail
        self.drivers: list[FakeDriver] = []
        self.scaled: list[int] = []
        self.spec = SPEC
        self.generation = 4
        self.idle_for = 0.0  # seconds since the driver's last /predict, set on each new driver
        self.lagging = False  # kopf's view of status does not follow the patches (a watch event late)
        self.wake_reasons: list[str] = []

    def keys(self, spec: MLBackendSpec) -> Keys:
        self.keys_asked.append(spec)
        if self.keys_fail:
            raise self.keys_fail
        return Keys("token-1", ("user", "pw"), "digest")

    async def patch(self, body: dict[str, Any]) -> None:
        self.patches.append(body)
        for key, value in body.items() if not self.lagging else ():  # a merge patch, one level deep
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value

    def driver(self, namespace: str, name: str, report: Report) -> FakeDriver:
        self.drivers.append(FakeDriver(namespace, name, report, self.results))
        self.drivers[-1].last_predict -= self.idle_for
        self.drivers[-1].wake_reasons = self.wake_reasons
        return self.drivers[-1]

    async def scale(self, replicas: int) -> None:
        self.scaled.append(replicas)

    def run(self, waits: int) -> Stopped:
        stopped = Stopped(waits)
        resource = Resource("team", "shapes", self.spec, self.status, {"generation": self.generation}, self.keys, self.patch,
                            self.events.append, self.scale)
        asyncio.run(run(resource, stopped, make_driver=self.driver))  # type: ignore[arg-type]
        return stopped


def test_waits_for_the_backend_and_says_why() -> None:
    waiting = {"conditions": [{"type": "Ready", "status": "False", "reason": "SecretMissing", "message": "Secret team/ls-key does not exist"}]}
    harness = Harness(waiting, results=[])
    stopped = harness.run(waits=2)
    assert stopped.waited == [5, 5] and harness.keys_asked == []  # no key read, no pass, before it is registered
    message = harness.patches[-1]["prelabel"]["message"]
    assert "waiting for the backend" in message and "SecretMissing: Secret team/ls-key does not exist" in message


def test_each_pass_goes_to_the_connected_projects_with_the_keys_then_polls() -> None:
    harness = Harness(REGISTERED, results=[(4, 1.0), (0, None)])
    stopped = harness.run(waits=2)
    (driver,) = harness.drivers
    assert driver.targets == [Target("http://ls:8080", "token-1", "http://10.96.0.7:9090", ("user", "pw"), (1,))] * 2
    assert stopped.waited == [1.0, 40.0]  # work left: soon; none: spec.prelabel.pollSeconds
    last = harness.patches[-1]
    assert last["prelabel"]["phase"] == "Complete" and condition(last, "Prelabeled")["status"] == "True"
    assert condition(last, "Ready")["status"] == "True"  # the other conditions kept as they were
    assert condition(last, "Prelabeled")["observedGeneration"] == 4
    assert [(e.reason, e.warning) for e in harness.events] == [("PrelabelStarted", False), ("PrelabelComplete", False)]


def test_an_outage_backs_off_shows_in_status_and_counts_no_task_as_failed() -> None:
    before = metrics.ERRORS.labels("PrelabelOutage")._value.get()
    harness = Harness(REGISTERED, results=[Outage("Label Studio unreachable while trying to count tasks: ConnectError"),
                                           Outage("still down"), (0, None)])
    stopped = harness.run(waits=3)
    assert stopped.waited == [2.5, 5.0, 40.0]  # 2.5 s, doubling; reset by the pass that worked
    assert harness.patches[0]["prelabel"]["message"] == "Label Studio unreachable while trying to count tasks: ConnectError; retrying in 2s"
    assert harness.patches[0]["prelabel"]["failed"] == 0
    assert metrics.ERRORS.labels("PrelabelOutage")._value.get() == before + 2


def test_a_pass_that_works_resets_the_backoff() -> None:
    harness = Harness(REGISTERED, results=[Outage("down"), (0, None), Outage("down again")])
    assert harness.run(waits=3).waited == [2.5, 40.0, 2.5]


def test_a_missing_secret_is_an_outage_with_its_message() -> None:
    harness = Harness(REGISTERED, results=[], keys_fail=SecretMissing("Secret team/ls-key does not exist: create it"))
    stopped = harness.run(waits=1)
    assert stopped.waited == [2.5]
    assert harness.patches[-1]["prelabel"]["message"].startswith("Secret team/ls-key does not exist: create it; retrying in")


def test_a_status_write_that_fails_during_an_outage_does_not_end_the_loop() -> None:
    harness = Harness(REGISTERED, results=[Outage("down"), (0, None)])

    async def refuse(body: dict[str, Any]) -> None:
        raise KubeError("KubernetesAPIUnreachable", "patch: ProtocolError")

    harness.patch = refuse  # type: ignore[method-assign]
    stopped = harness.run(waits=1)
    assert stopped.waited == [2.5]


def test_failed_tasks_make_a_warning_event() -> None:
    harness = Harness(REGISTERED, results=[(0, None)])
    harness.run(waits=1)
    assert harness.events[-1].reason == "PrelabelComplete"
    failing = Harness(REGISTERED, results=[])

    class Failing(FakeDriver):
        async def run_pass(self, target: Target, spec: PrelabelSpec, stopped: Any) -> float | None:
            await self.report(Progress(model_version="v", total=2, predicted=1, failed=1, counted=True,
                                       failures=[{"project": 1, "task": 9, "reason": "not an image", "attempts": 3}]))
            return None

    failing.driver = lambda ns, name, report: Failing(ns, name, report, [])  # type: ignore[method-assign]
    failing.run(waits=1)
    assert (failing.events[-1].reason, failing.events[-1].warning) == ("PrelabelFailed", True)
    assert "task 9: not an image" in failing.events[-1].message


def test_a_model_version_fault_is_one_warning_event_while_it_lasts() -> None:
    harness = Harness(REGISTERED, results=[])
    two, three = ("the backend's /predict answers model version 2 while its /setup reports 1",
                  "the backend's /predict answers model version 3 while its /setup reports 1")
    faults = [two, two, "", three]

    class Mismatched(FakeDriver):
        async def run_pass(self, target: Target, spec: PrelabelSpec, stopped: Any) -> float | None:
            await self.report(Progress(model_version="1", total=2, counted=True, fault=faults.pop(0)))
            return 5.0

    harness.driver = lambda ns, name, report: Mismatched(ns, name, report, [])  # type: ignore[method-assign]
    harness.run(waits=4)
    mismatches = [e for e in harness.events if e.reason == "ModelVersionMismatch"]
    assert [e.message[-30:] for e in mismatches] == ["n 2 while its /setup reports 1", "n 3 while its /setup reports 1"]
    assert all(e.warning for e in mismatches)


SLEEPY = {**SPEC, "prelabel": {"pollSeconds": 40, "scaleToZero": {"idleSeconds": 60}}}
ASLEEP = {**REGISTERED, "sleep": {"since": "2026-12-07T03:00:00Z", "generation": 4, "labelConfigs": sleep.configs_digest({1: "<View/>"}),
                                  "servingVersion": "", "modelVersion": "prelabel-abc"}}


def test_complete_and_idle_for_idle_seconds_the_backend_sleeps() -> None:
    harness = Harness(REGISTERED, results=[(0, None), (0, None)])
    harness.spec, harness.idle_for = SLEEPY, 61.0
    harness.wake_reasons += [""]
    stopped = harness.run(waits=2)
    assert harness.scaled == [0, 0]  # on sleeping, and again at the first check while asleep
    asleep = next(p for p in harness.patches if "sleep" in p)
    assert asleep["sleep"]["generation"] == 4 and asleep["sleep"]["modelVersion"] == "prelabel-abc"
    assert asleep["sleep"]["labelConfigs"] == sleep.configs_digest({1: "<View/>"})
    said = condition(asleep, "Sleeping")
    assert (said["status"], said["reason"]) == ("True", "Idle") and "no /predict for 60s" in said["message"]
    assert ("Sleeping", False) in [(e.reason, e.warning) for e in harness.events]
    assert stopped.waited == [40.0, 40.0]  # after sleeping, and the check asleep
    assert harness.drivers[0].model_versions == ["prelabel-abc"]  # the projects show the version their tasks hold


def test_not_idle_long_enough_it_stays_up() -> None:
    harness = Harness(REGISTERED, results=[(0, None)])
    harness.spec, harness.idle_for = SLEEPY, 30.0
    harness.run(waits=1)
    assert harness.scaled == [] and not any("sleep" in p for p in harness.patches)


def test_work_left_or_no_scale_to_zero_it_never_sleeps() -> None:
    busy = Harness(REGISTERED, results=[(3, 1.0)])
    busy.spec, busy.idle_for = SLEEPY, 600.0
    busy.run(waits=1)
    off = Harness(REGISTERED, results=[(0, None)])
    off.idle_for = 600.0
    off.run(waits=1)
    assert busy.scaled == off.scaled == []


def test_asleep_it_reads_only_label_studio_until_work_comes_then_wakes() -> None:
    harness = Harness(ASLEEP, results=[(0, None)])
    harness.spec = SLEEPY
    harness.wake_reasons += ["", "3 task(s) to predict"]
    stopped = harness.run(waits=3)
    assert stopped.waited == [40.0, 1, 40.0]  # asleep: pollSeconds; woken: a pass right after
    assert harness.scaled == [0, 0, 1]  # kept at zero at each check, then spec.replicas
    woken = next(p for p in harness.patches if "sleep" in p)
    assert woken["sleep"] is None and condition(woken, "Sleeping")["reason"] == "Woken"
    assert "woken: 3 task(s) to predict" in condition(woken, "Sleeping")["message"]
    assert [e.reason for e in harness.events if e.reason in ("Woken", "Sleeping")] == ["Woken"]
    assert len(harness.drivers[0].targets) == 3  # two checks, then the pass
    assert harness.drivers[0].model_versions == ["prelabel"]  # the projects' model_version back to the title


def test_the_daemon_trusts_its_own_word_when_kopfs_view_of_status_lags() -> None:
    asleep = Harness(REGISTERED, results=[(0, None), (0, None)])
    asleep.spec, asleep.idle_for, asleep.lagging = SLEEPY, 61.0, True
    asleep.wake_reasons += [""]
    asleep.run(waits=2)
    assert asleep.scaled == [0, 0] and len(asleep.results) == 1  # no pass against pods going away: it checks, asleep
    woken = Harness(ASLEEP, results=[(0, None)])
    woken.spec, woken.lagging = SLEEPY, True
    woken.wake_reasons += ["3 task(s) to predict"]
    woken.run(waits=2)
    assert woken.scaled == [0, 1] and not woken.results  # woken: the next loop passes, it does not put it back to sleep


def test_a_changed_spec_is_not_slept_over_and_autoscaling_wakes_to_its_minimum() -> None:
    changed = Harness(ASLEEP, results=[(0, None)])
    changed.spec, changed.generation = SLEEPY, 5
    changed.run(waits=1)
    assert changed.scaled == []  # a normal pass: the reconcile of generation 5 scales it up
    scaled = Harness(ASLEEP, results=[])
    scaled.spec = {**SLEEPY, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4}}
    scaled.wake_reasons += ["a project's labeling config changed (its model version may have)"]
    scaled.run(waits=1)
    assert scaled.scaled == [0, 2]


def test_just_woken_an_unreachable_backend_is_scaled_up_again() -> None:
    harness = Harness(ASLEEP, results=[Outage("the backend is unreachable (/setup): ConnectError"), (0, None)])
    harness.spec = SLEEPY
    harness.wake_reasons += ["1 task(s) to predict"]
    harness.run(waits=3)
    assert harness.scaled == [0, 1, 1]
