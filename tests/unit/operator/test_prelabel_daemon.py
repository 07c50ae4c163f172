"""The pre-labeling daemon's loop (prelabel_driver.run) over a fake driver, Secrets and status
writer: where it waits, what it passes each pass, how an outage backs off and shows in status, and
the Events at each phase change. No Label Studio, no backend: milliseconds."""

from __future__ import annotations

import asyncio
from typing import Any

from prelabel_operator import metrics
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
        self.status, self.results = status, results
        self.patches: list[dict[str, Any]] = []
        self.events: list[Event] = []
        self.keys_asked: list[MLBackendSpec] = []
        self.keys_fail = keys_fail
        self.drivers: list[FakeDriver] = []

    def keys(self, spec: MLBackendSpec) -> Keys:
        self.keys_asked.append(spec)
        if self.keys_fail:
            raise self.keys_fail
        return Keys("token-1", ("user", "pw"), "digest")

    async def patch(self, body: dict[str, Any]) -> None:
        self.patches.append(body)

    def driver(self, namespace: str, name: str, report: Report) -> FakeDriver:
        self.drivers.append(FakeDriver(namespace, name, report, self.results))
        return self.drivers[-1]

    def run(self, waits: int) -> Stopped:
        stopped = Stopped(waits)
        resource = Resource("team", "shapes", SPEC, self.status, {"generation": 4}, self.keys, self.patch, self.events.append)
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
