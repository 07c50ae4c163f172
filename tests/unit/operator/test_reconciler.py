"""The operator's use cases (reconciler.Reconciler) over fake clients: what a reconcile applies,
registers, remembers and reports, how it waits and retries, how a Deployment's change wakes it,
and what deregistration removes. No cluster, no Label Studio: milliseconds each."""

from __future__ import annotations

import copy
import threading
from dataclasses import replace
from typing import Any

import kopf
import pytest

from prelabel_operator import drift
from prelabel_operator.configcheck import ConfigCheck
from prelabel_operator.errors import KubeError, LabelStudioError
from prelabel_operator.memory import Memory
from prelabel_operator.reconciler import DEREGISTER_RECHECKS, DEREGISTER_SETTLE, DEREGISTER_TIMEOUT, Outcome, Reconciler, Resource, backoff
from prelabel_operator.registration import Registration, marker
from prelabel_operator.status import condition
from tests.unit.operator.fakes import FakeBackend, FakeKube, FakeLabelStudio, Project, b64

UID = "0b5e7c1a-uid"
SPEC = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": 1}, {"title": "Cars"}]}}
URL = "http://10.96.0.7:9090"


class World:
    """A Reconciler over fakes, and a resource whose status follows what each Outcome patches (as kopf does)."""

    def __init__(self, spec: dict[str, Any] | None = None, **kube: Any) -> None:
        self.kube, self.ls, self.backend = FakeKube(**kube), FakeLabelStudio(), FakeBackend()
        self.memory = Memory(drift.Schedule(rate=0.8, interval=30))
        self.clock = 1000.0
        self.reconciler = Reconciler(self.kube, self.ls.client, self.backend, self.memory,
                                     adopt=lambda obj, owner: kopf.adopt(obj, owner=owner), clock=lambda: self.clock)
        self.spec = copy.deepcopy(spec if spec is not None else SPEC)
        self.status: dict[str, Any] = {}
        self.generation = 1

    def resource(self, deleting: bool = False) -> Resource:
        meta = {"name": "shapes", "namespace": "team", "uid": UID, "generation": self.generation}
        body = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {**meta, "labels": {"team": "vision"}}, "spec": self.spec}
        return Resource("shapes", "team", UID, self.generation, self.spec, copy.deepcopy(self.status), body, deleting)

    def follow(self, outcome: Outcome) -> Outcome:
        for key, value in outcome.status.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        return outcome

    def reconcile(self, **kwargs: Any) -> Outcome:
        return self.follow(self.reconciler.reconcile(self.resource(), **kwargs))

    def ours(self, project_id: int) -> list[Registration]:
        return [r for r in self.ls.registered.get(project_id, []) if UID in r.description]


def test_a_new_resource_is_applied_owned_registered_once_per_project_and_ready() -> None:
    world = World()
    outcome = world.reconcile()
    assert world.kube.kinds() == ["Deployment", "Service"]
    assert ("HorizontalPodAutoscaler", "shapes-backend", "team") in world.kube.deleted  # autoscaling off: none left
    for obj in world.kube.applied:  # owned by the MLBackend, so Kubernetes collects them with it
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID and obj["metadata"]["namespace"] == "team"
    assert world.ls.keys_seen == ["token-1"]  # the key from its Secret
    for project_id in (1, 2):
        (registration,) = world.ours(project_id)
        assert registration.url == URL and registration.description == marker("team", "shapes", UID) and registration.title == "prelabel"
        assert world.ls.projects[project_id].model_version == "prelabel"  # the project's predictions view follows the backend
    assert [e.reason for e in outcome.events] == ["Registered", "Registered"]
    assert outcome.ready and outcome.retry_in is None and not outcome.permanent
    assert condition(world.status, "Ready")["status"] == "True"
    assert world.status["url"] == URL and world.status["modelVersion"] == "prelabel-0123456789ab"
    assert world.status["projectsSummary"] == "2/2"
    assert [p["mlBackendId"] for p in world.status["projects"]] == [world.ours(1)[0].id, world.ours(2)[0].id]


def test_a_second_reconcile_changes_nothing_and_writes_nothing() -> None:
    world = World()
    world.reconcile()
    registrations = copy.deepcopy(world.ls.registered)
    again = world.reconcile()
    assert again.status == {} and again.events == [] and again.ready  # a quiet resource costs the API server no write
    assert world.ls.registered == registrations


def test_a_deployment_not_available_waits_for_its_event_and_registers_nothing() -> None:
    world = World(available=False)
    outcome = world.reconcile()
    assert world.ls.calls == [] and not world.ls.registered
    assert UID in world.memory.waiting
    assert outcome.retry_in is None  # not a retry backoff: the Deployment's event wakes it
    assert condition(world.status, "Available")["reason"] == "DeploymentNotAvailable"
    assert condition(world.status, "Registered")["reason"] == "WaitingForBackend"
    assert condition(world.status, "Ready")["status"] == "False"
    # The Deployment becomes Available: its event wakes the resource, which registers.
    world.kube.available = True
    deployment = world.kube.apply(world.kube.applied[0], "team")
    assert world.reconciler.wakes(UID, deployment, world.resource())
    woken = world.reconciler.wake(world.resource(), world.kube.patched.append)
    assert woken.ready and UID not in world.memory.waiting
    assert condition(world.kube.patched[-1], "Ready")["status"] == "True" and world.ours(1)


def test_wakes_only_when_availability_changed_against_what_status_says() -> None:
    world = World()
    world.reconcile()
    up = world.kube.apply(world.kube.applied[0], "team")
    world.kube.available = False
    down = world.kube.apply(world.kube.applied[0], "team")
    assert not world.reconciler.wakes(UID, up, world.resource())  # Available, and status says so
    assert world.reconciler.wakes(UID, down, world.resource())  # it stopped: status must say so now
    assert not world.reconciler.wakes(UID, down, world.resource(deleting=True))  # being deregistered
    asleep = {**down, "spec": {**down["spec"], "replicas": 0}}
    assert not world.reconciler.wakes(UID, asleep, world.resource())  # scaled to zero on purpose: the resync timer follows it


def test_a_missing_secret_is_shown_and_retried_with_backoff_without_calling_label_studio() -> None:
    world = World(secrets={})
    outcome = world.reconcile(retry=2)
    assert outcome.retry_in == backoff(2) == 20 and "Secret team/ls-key does not exist" in outcome.error
    assert condition(world.status, "Ready")["reason"] == "SecretMissing"
    assert world.kube.applied == [] and world.ls.calls == []


def test_a_key_missing_from_its_secret_names_the_key() -> None:
    world = World(secrets={("team", "ls-key"): {"token": b64("x")}})
    outcome = world.reconcile()
    assert "has no key 'api-key'" in outcome.error and condition(world.status, "Ready")["reason"] == "SecretMissing"


def test_an_invalid_spec_is_permanent_and_says_which_field() -> None:
    world = World(spec={"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projects": []}})
    outcome = world.reconcile()
    assert outcome.permanent and "spec.labelStudio.projects" in outcome.error
    assert condition(world.status, "Ready")["reason"] == "InvalidSpec" and world.kube.applied == []


@pytest.mark.parametrize("reason", ["Unauthorized", "LabelStudioUnreachable"])
def test_a_fatal_label_studio_error_stops_the_round_and_forgets_what_was_found(reason: str) -> None:
    world = World()
    world.reconcile()
    assert UID in world.memory.remembered
    world.ls.fail = LabelStudioError(reason, f"{reason}: fix it")
    world.ls.calls.clear()
    outcome = world.reconcile(retry=1)
    assert world.ls.calls == ["resolve"]  # the second project is not tried this round
    assert condition(world.status, "Registered")["reason"] == reason
    assert outcome.retry_in == min(backoff(1), 30) and outcome.error.startswith(f"not ready: {reason}")
    assert UID not in world.memory.remembered


def test_a_project_error_fails_that_project_only() -> None:
    world = World(spec={**SPEC, "labelStudio": {**SPEC["labelStudio"], "projects": [{"id": 1}, {"title": "Nope"}]}})
    world.reconcile()
    assert world.ours(1)
    assert condition(world.status, "Registered")["reason"] == "RegistrationFailed"
    assert "no project titled 'Nope'" in condition(world.status, "Registered")["message"]
    assert world.status["projectsSummary"] == "1/2"


def test_a_config_the_backend_refuses_is_not_registered() -> None:
    world = World()
    world.backend.check = ConfigCheck(False, "model_path 'x.pt' does not exist", None, registrable=False)
    world.reconcile()
    assert not world.ls.registered.get(1) and not world.ls.registered.get(2)
    assert condition(world.status, "ConfigCompatible")["reason"] == "IncompatibleLabelConfig"
    assert "model_path 'x.pt'" in condition(world.status, "Registered")["message"]


def test_an_unreachable_backend_config_check_still_registers_and_says_not_checked() -> None:
    world = World()
    world.backend.unreachable = True
    world.reconcile()
    assert world.ours(1) and world.ours(2)
    assert condition(world.status, "ConfigCompatible")["reason"] == "NotChecked"


def test_a_light_drift_check_lists_only_and_a_deleted_registration_is_made_again() -> None:
    world = World()
    world.reconcile()
    world.ls.calls.clear()
    quiet = world.reconcile(timer=True, light=True)
    assert world.ls.calls == ["registrations", "registrations"] and quiet.status == {}  # one request a project
    world.ls.registered[2] = []  # someone deleted it in Label Studio
    world.ls.calls.clear()
    repaired = world.reconcile(timer=True, light=True)
    assert "ensure" in world.ls.calls and len(world.ours(2)) == 1
    assert [e.reason for e in repaired.events] == ["Registered"]


def test_an_inactive_webhook_of_a_backend_that_learns_from_it_is_restored_at_the_next_light_check() -> None:
    """Label Studio switches a failing webhook off (label-studio-sdk: consecutive_failures, auto-disable
    after 50). An ML SDK backend learns from its events: the light check reads the webhooks too (one
    request more a project) and a full pass for that project restores it. Prelabel's own backend,
    which its webhook sends nothing, keeps one request a project."""
    world = World(spec={**SPEC, "image": "team/sdk:1", "backend": {}})
    world.reconcile()
    [hook] = world.ls.hooks[1]
    assert hook.active and not hook.all_actions and set(hook.actions) == {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
    world.ls.calls.clear()
    world.reconcile(timer=True, light=True)
    assert world.ls.calls == ["registrations", "webhooks", "registrations", "webhooks"]
    world.ls.hooks[1] = [replace(hook, active=False)]  # Label Studio gave up on it
    world.reconcile(timer=True, light=True)
    assert [h.active for h in world.ls.hooks[1]] == [True] and [h.id for h in world.ls.hooks[1]] == [hook.id]
    own = World()
    own.reconcile()
    own.ls.calls.clear()
    own.reconcile(timer=True, light=True)
    assert own.ls.calls == ["registrations", "registrations"]


def test_a_finished_rollout_asks_the_new_pods_for_the_model_version() -> None:
    """A promotion or a pin rolls the pods: the full pass at the change hears /setup from an old pod;
    the first check after the rollout finished asks again, and the status says the version served."""
    world = World()
    world.kube.rolling = True
    world.backend.check = ConfigCheck(True, "", "v1-old")
    world.reconcile()
    assert world.status["modelVersion"] == "v1-old"
    world.backend.check = ConfigCheck(True, "", "v2-new")
    world.reconcile(timer=True, light=True)  # still rolling: nothing changed, one list a project
    assert world.status["modelVersion"] == "v1-old"
    world.kube.rolling = False
    world.reconcile(timer=True, light=True)
    assert world.status["modelVersion"] == "v2-new"
    world.ls.calls.clear()
    world.reconcile(timer=True, light=True)  # and light again after that
    assert world.ls.calls == ["registrations", "registrations"]


def test_a_changed_spec_updates_the_registration_in_place() -> None:
    world = World()
    world.reconcile()
    first = world.ours(1)[0].id
    world.spec["labelStudio"]["title"] = "yolo"
    world.generation = 2
    outcome = world.reconcile()
    assert [(r.id, r.title) for r in world.ours(1)] == [(first, "yolo")]
    assert "updated the registration" in outcome.events[0].message


def test_a_full_reconcile_tracks_its_drift_check_and_not_ready_is_rechecked_at_the_next_tick() -> None:
    world = World()
    world.reconcile()
    assert world.memory.drift.costs[UID] == 2 and world.memory.drift.checked[UID] == world.clock
    world.ls.fail = LabelStudioError("LabelStudioUnreachable", "down")
    world.reconcile(timer=True)
    assert UID not in world.memory.drift.checked  # due again at the timer's next tick


def test_prelabel_section_carries_its_condition_and_pausing_says_so() -> None:
    world = World(spec={**SPEC, "prelabel": {"paused": True}})
    world.status["prelabel"] = {"phase": "Progressing", "summary": "3/10"}
    outcome = world.reconcile()
    assert outcome.status["prelabel"] == {"phase": "Paused"}
    assert condition(world.status, "Prelabeled")["reason"] == "Paused"
    world.spec.pop("prelabel")
    assert world.reconcile().status["prelabel"] is None  # the section removed: status.prelabel goes


def test_deregister_removes_only_this_resources_registrations_and_forgets_it() -> None:
    world = World()
    world.reconcile()
    theirs = Registration(7, "http://elsewhere:9090", "other", "someone else's backend")
    world.ls.registered[1].append(theirs)
    outcome = world.reconciler.deregister(world.resource(deleting=True))
    assert world.ls.registered[1] == [theirs] and world.ls.registered[2] == []
    assert [e.reason for e in outcome.events] == ["Deregistered"] and "removed 2 registration(s)" in outcome.events[0].message
    assert outcome.retry_in is None and outcome.again_in == DEREGISTER_SETTLE
    assert UID not in world.memory.remembered and UID not in world.memory.drift.costs


def test_a_reconcile_that_started_before_the_deletion_registers_nothing_after_deregister() -> None:
    """The chaos test's leftover (seed 808758): a resync tick started from a body without
    deletionTimestamp, deregister ran beside it, and the tick's `ensure` registered again."""
    world = World()
    world.reconcile()
    stale = world.resource()  # the timer's body, read before the deletion
    in_ensure, deregistered = threading.Event(), threading.Event()
    ensure = world.ls.ensure

    def slow_ensure(*args: Any, **kwargs: Any) -> Any:
        in_ensure.set()
        deregistered.wait(0.5)  # deregister, if it did not wait for this pass, finishes meanwhile
        return ensure(*args, **kwargs)

    world.ls.ensure = slow_ensure  # type: ignore[method-assign]
    tick = threading.Thread(target=world.reconciler.reconcile, args=(stale,), kwargs={"timer": True})
    world.memory.remembered.pop(UID)  # a full pass: it calls ensure
    tick.start()
    assert in_ensure.wait(5)
    world.reconciler.deregister(world.resource(deleting=True))
    deregistered.set()
    tick.join(5)
    assert world.ours(1) == [] and world.ours(2) == []
    late = world.reconciler.reconcile(stale, timer=True)  # a tick that only now got the lock
    assert late.status == {} and late.events == [] and world.ours(1) == [] and world.ours(2) == []


def test_deregister_removes_a_duplicate_a_crashed_create_left_too() -> None:
    world = World()
    world.reconcile()
    (ours,) = world.ours(1)
    world.ls.registered[1].append(Registration(55, ours.url, ours.title, ours.description))
    outcome = world.reconciler.deregister(world.resource(deleting=True))
    assert world.ours(1) == [] and "removed 3 registration(s)" in outcome.events[0].message


def test_deregister_looks_again_and_removes_what_label_studio_saved_back_then_finishes() -> None:
    """The chaos test's leftover (seed 374868): a list of the project's ML backends that Label Studio
    was answering during the deletion saved the registration back (Django's save() inserts a deleted
    row again) with a new webhook. The deletion looks again DEREGISTER_SETTLE s later."""
    world = World()
    world.reconcile()
    (ours,) = world.ours(1)
    first = world.reconciler.deregister(world.resource(deleting=True))
    assert first.again_in == DEREGISTER_SETTLE and first.retry_in is None and world.ours(1) == []
    world.ls.registered[1].append(ours)  # saved back by the list Label Studio was answering
    again = world.reconciler.deregister(world.resource(deleting=True), recheck=1)
    (event,) = again.events
    assert world.ours(1) == [] and event.warning and "removed 1 registration(s) again" in event.message
    assert again.again_in == DEREGISTER_SETTLE  # it came back once: look once more
    done = world.reconciler.deregister(world.resource(deleting=True), recheck=2)
    assert done.again_in is None and done.events == [] and done.retry_in is None


def test_deregister_looks_again_after_a_killed_predecessor_removed_everything_and_at_most_so_often() -> None:
    world = World()
    world.reconcile()
    for project in (1, 2):  # removed by an operator killed right after: this pass finds nothing
        world.ls.registered[project] = []
    first = world.reconciler.deregister(world.resource(deleting=True))
    assert "removed 0 registration(s)" in first.events[0].message and first.again_in == DEREGISTER_SETTLE  # status says it registered
    never = World(secrets={})
    never.reconcile()
    assert never.reconciler.deregister(never.resource(deleting=True)).again_in is None  # nothing was ever registered
    world = World()
    world.reconcile()
    (kept,) = world.ours(1)
    for recheck in range(1, DEREGISTER_RECHECKS + 1):  # saved back at every look: bounded all the same
        world.ls.registered[1].append(kept)
        outcome = world.reconciler.deregister(world.resource(deleting=True), recheck=recheck)
        assert world.ours(1) == [] and outcome.again_in == (DEREGISTER_SETTLE if recheck < DEREGISTER_RECHECKS else None)


def test_deregister_with_orphan_policy_touches_nothing() -> None:
    world = World()
    world.reconcile()
    world.spec["deletionPolicy"] = "Orphan"
    world.ls.calls.clear()
    outcome = world.reconciler.deregister(world.resource(deleting=True))
    assert world.ls.calls == [] and [e.reason for e in outcome.events] == ["Orphaned"] and world.ours(1)


def test_deregister_while_label_studio_is_down_retries_then_lets_go_within_the_bound_saying_what_is_left() -> None:
    world = World()
    world.reconcile()
    world.ls.fail = LabelStudioError("LabelStudioUnreachable", "could not reach Label Studio")
    deleting = world.resource(deleting=True)
    deleting = Resource(**{**deleting.__dict__, "deleted_at": 5000.0})
    world.reconciler.wall = lambda: 5030.0  # 30 s into the deletion: retried
    outcome = world.reconciler.deregister(deleting, retry=3)
    assert outcome.retry_in == 15 and "spec.deletionPolicy: Orphan" in outcome.error and "retrying for 90 s more" in outcome.error
    assert outcome.status["conditions"][0]["reason"] == "Deregistering"
    world.reconciler.wall = lambda: 5000.0 + DEREGISTER_TIMEOUT  # the bound: let go
    outcome = world.reconciler.deregister(deleting, retry=9)
    assert outcome.retry_in is None and not outcome.permanent
    (event,) = outcome.events
    assert event.reason == "DeregistrationSkipped" and event.warning
    for project in world.status["projects"]:  # each leftover named, so a person can remove it
        assert f"project {project['id']}: ML backend {project['mlBackendId']}, webhook {URL}/webhook" in event.message


def test_deregister_with_its_secret_gone_lets_go_at_once_naming_what_is_left() -> None:
    world = World()
    world.reconcile()
    world.kube.secrets.clear()
    outcome = world.reconciler.deregister(world.resource(deleting=True))
    assert outcome.retry_in is None
    (event,) = outcome.events
    assert event.reason == "DeregistrationSkipped" and "SecretMissing" in event.message and f"ML backend {world.ours(1)[0].id}" in event.message
    assert world.ours(1)  # nothing removed without the key


def test_deregister_with_its_secret_missing_from_the_start_lets_go_with_nothing_left() -> None:
    world = World(secrets={})
    world.reconcile()
    outcome = world.reconciler.deregister(world.resource(deleting=True))
    assert outcome.retry_in is None and "nothing was registered" in outcome.events[0].message and not outcome.events[0].warning


def test_deregister_with_the_key_refused_lets_go_at_once() -> None:
    world = World()
    world.reconcile()
    world.ls.fail = LabelStudioError("Unauthorized", "Label Studio refused the API key", retryable=False)
    outcome = world.reconciler.deregister(world.resource(deleting=True))
    assert outcome.retry_in is None and "Unauthorized" in outcome.events[0].message


def test_deregister_while_the_api_fails_retries_within_the_bound() -> None:
    world = World()
    world.reconcile()
    world.kube.secrets = FailingSecrets()
    world.reconciler.wall = lambda: 0.0
    deleting = Resource(**{**world.resource(deleting=True).__dict__, "deleted_at": 0.0})
    outcome = world.reconciler.deregister(deleting)
    assert outcome.retry_in == backoff(0) and "HTTP 500" in outcome.error and outcome.status == {}


class FailingSecrets(dict):  # type: ignore[type-arg]
    def __contains__(self, key: object) -> bool:
        raise KubeError("KubernetesAPIError", "get secrets in namespace team: HTTP 500 Internal Server Error")


def test_deregister_of_an_invalid_spec_lets_go_at_once() -> None:
    world = World(spec={"labelStudio": {}})
    assert world.reconciler.deregister(world.resource(deleting=True)) == Outcome()


def test_a_deployment_not_available_says_why_from_its_pods_once_per_cause_and_clears_when_available() -> None:
    from tests.unit.operator.test_diagnosis import CRASHING, PULL

    world = World(available=False)
    labelled = {"app.kubernetes.io/name": "prelabel-backend", "app.kubernetes.io/instance": "shapes"}
    world.kube.pod_list = [{**PULL, "metadata": {**PULL["metadata"], "labels": labelled}}]
    first = world.reconcile()
    available = condition(world.status, "Available")
    assert (available["reason"], condition(world.status, "Ready")["reason"]) == ("ImagePullFailed", "ImagePullFailed")
    assert "registry.invalid/backend:1" in available["message"]
    assert [(e.reason, e.warning) for e in first.events] == [("ImagePullFailed", True)]
    assert world.reconcile(timer=True).events == []  # the same cause: no second Event at the next resync
    world.kube.pod_list = [{**CRASHING, "metadata": {**CRASHING["metadata"], "labels": labelled}}]
    assert [e.reason for e in world.reconcile(timer=True).events] == ["CrashLoopBackOff"]  # a new cause: said
    world.kube.available = True
    world.reconcile()
    assert condition(world.status, "Available")["reason"] == "DeploymentAvailable"
    assert condition(world.status, "Ready")["status"] == "True"


def test_pods_that_cannot_be_read_leave_the_deployments_own_message() -> None:
    world = World(available=False)

    def forbidden(namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        raise KubeError("Forbidden", "the operator may not list pods in namespace team")

    world.kube.pods = forbidden  # type: ignore[method-assign]
    outcome = world.reconcile()
    available = condition(world.status, "Available")
    assert available["reason"] == "DeploymentNotAvailable" and "may not list pods" in available["message"] and outcome.events == []


def test_a_secret_deleted_while_the_backend_runs_is_seen_at_the_next_check() -> None:
    world = World()
    world.reconcile()
    world.kube.secrets.clear()
    outcome = world.reconcile(timer=True, light=True)  # a drift check: the Secret is read each time
    assert condition(world.status, "Ready")["reason"] == "SecretMissing" and outcome.retry_in is not None


def test_label_studio_s_release_is_read_once_per_check_and_an_old_one_is_said_once() -> None:
    world = World()
    world.ls.version = "1.19.0"
    outcome = world.reconcile()
    supported = condition(world.status, "LabelStudioSupported")
    assert (supported["status"], supported["reason"]) == ("False", "UnsupportedVersion") and "1.19.0" in supported["message"]
    assert world.status["labelStudioVersion"] == "1.19.0"
    assert condition(world.status, "Ready")["status"] == "True"  # an untested server is still served
    assert [e.reason for e in outcome.events if e.warning] == ["UnsupportedVersion"]
    assert world.ls.version_reads == 1
    again = world.reconcile(timer=True, light=True)
    assert world.ls.version_reads == 1 and not again.events and "labelStudioVersion" not in again.status
    # Label Studio upgraded: the next read after VERSION_CHECK says so.
    world.ls.version = "1.23.2"
    world.clock += 601
    world.reconcile()
    assert world.ls.version_reads == 2 and world.status["labelStudioVersion"] == "1.23.2"
    assert condition(world.status, "LabelStudioSupported")["status"] == "True"


def test_a_version_that_cannot_be_read_keeps_what_status_said() -> None:
    world = World()
    world.reconcile()
    world.ls.fail = LabelStudioError("LabelStudioUnreachable", "down")
    world.clock += 601
    world.reconcile()
    assert world.status["labelStudioVersion"] == "1.23.2"
    assert condition(world.status, "LabelStudioSupported")["reason"] == "Supported"


# -- spec.labelStudio.projectSelector, and projects no longer served -------------------------------------
SELECTED = {"labelStudio": {"url": "http://ls:8080", "apiKeySecretRef": {"name": "ls-key"}, "projectSelector": {"titlePattern": "^Street"}}}


def test_a_selector_serves_matching_projects_new_ones_included_and_lets_go_of_one_renamed() -> None:
    world = World(spec=SELECTED)
    world.ls.projects = {1: Project(1, "Street day"), 2: Project(2, "Cars"), 3: Project(3, "Street night")}
    world.ls.registered[1] = [Registration(7, "http://other:9090", "someone else's", "", False, 100)]
    world.reconcile()
    assert [p["id"] for p in world.status["projects"]] == [1, 3] and world.status["projectsSummary"] == "2/2"
    assert world.ours(1) and world.ours(3) and not world.ls.registered.get(2)
    # A project created later is registered at the next drift check (a light one lists the projects too).
    world.ls.projects[4] = Project(4, "Street dusk")
    world.ls.calls.clear()
    found = world.reconcile(timer=True, light=True)
    assert world.ls.calls[0] == "list_projects" and world.ours(4) and world.status["projectsSummary"] == "3/3"
    assert [e.reason for e in found.events] == ["Registered"]
    # Renamed out of the selection: deregistered; the other backend's registration there stays.
    world.ls.projects[1] = Project(1, "Archive")
    gone = world.reconcile(timer=True, light=True)
    assert not world.ours(1) and [r.id for r in world.ls.registered[1]] == [7]
    assert [p["id"] for p in world.status["projects"]] == [3, 4]
    assert [e.message for e in gone.events if e.reason == "Deregistered"] == ["removed the registration from project 1, which is no longer selected"]
    # Deleting the resource removes the registrations in every project status lists.
    world.reconciler.deregister(world.resource(deleting=True))
    assert not world.ours(3) and not world.ours(4)


def test_a_selector_with_compatible_only_leaves_other_configs_alone() -> None:
    world = World(spec={"labelStudio": {**SELECTED["labelStudio"], "projectSelector": {"compatibleOnly": True}}})
    world.backend.incompatible = {2}
    world.reconcile()
    assert [p["id"] for p in world.status["projects"]] == [1] and not world.ls.registered.get(2)
    assert condition(world.status, "Ready")["status"] == "True"


def test_a_project_removed_from_the_list_is_deregistered() -> None:
    world = World()
    world.reconcile()
    assert world.ours(2)
    world.spec["labelStudio"]["projects"] = [{"id": 1}]
    world.generation += 1
    outcome = world.reconcile()
    assert not world.ours(2) and world.ours(1) and world.status["projectsSummary"] == "1/1"
    assert "removed the registration from project 2, which is no longer listed" in [e.message for e in outcome.events]


def test_a_project_that_cannot_be_resolved_this_pass_releases_nothing() -> None:
    """A project named by title fails to resolve (its id unknown): it might be one status lists, so no
    registration is removed on that pass."""
    world = World()
    world.reconcile()
    world.ls.projects[2] = Project(2, "Cars renamed")  # {"title": "Cars"} no longer resolves
    world.generation += 1
    world.reconcile()
    assert world.ours(2) and world.ours(1)


def test_a_pass_that_cannot_look_at_label_studio_keeps_the_projects_a_release_and_a_deletion_need() -> None:
    """Review finding: status.projects was emptied by a pass with the backend unavailable (or Label
    Studio down), and a selector's project renamed after it was never deregistered; nor was it on deletion."""
    world = World(spec=SELECTED)
    world.ls.projects = {1: Project(1, "Street day"), 3: Project(3, "Street night")}
    world.reconcile()
    world.kube.available = False
    world.reconcile()
    assert [p["id"] for p in world.status["projects"]] == [1, 3]  # kept, as the last pass found them
    assert condition(world.status, "Registered")["reason"] == "WaitingForBackend"
    world.ls.fail = LabelStudioError("LabelStudioUnreachable", "down")
    world.kube.available = True
    world.reconcile()
    assert [p["id"] for p in world.status["projects"]] == [1, 3] and condition(world.status, "Registered")["reason"] == "LabelStudioUnreachable"
    world.ls.fail = None
    world.ls.projects[1] = Project(1, "Archive")
    world.reconcile()
    assert not world.ours(1) and world.ours(3)
    world.kube.available = False
    world.reconcile()
    world.reconciler.deregister(world.resource(deleting=True))
    assert not world.ours(3)


def test_compatible_only_never_lets_go_of_projects_because_the_backend_s_setup_fails() -> None:
    """A /setup that answers 4xx (a broken rollout) is not 'incompatible': the project stays served."""
    world = World(spec={"labelStudio": {**SELECTED["labelStudio"], "projectSelector": {"compatibleOnly": True}}})
    world.reconcile()
    assert world.ours(1) and world.ours(2)
    world.backend.check = ConfigCheck(False, "the backend answered HTTP 422 to /setup", None, registrable=False)
    world.generation += 1
    world.reconcile()
    assert world.ours(1) and world.ours(2)


def test_a_selector_that_matches_no_project_yet_is_ready_and_says_so() -> None:
    world = World(spec=SELECTED)
    world.ls.projects = {2: Project(2, "Cars")}
    outcome = world.reconcile()
    registered = condition(world.status, "Registered")
    assert (registered["status"], registered["reason"]) == ("True", "NoProjectSelected") and "'^Street'" in registered["message"]
    assert condition(world.status, "Ready")["status"] == "True" and outcome.retry_in is None
    world.ls.projects[5] = Project(5, "Street new")
    world.reconcile(timer=True, light=True)
    assert world.ours(5) and condition(world.status, "Registered")["reason"] == "Registered"


def test_a_served_project_a_paged_list_missed_is_read_again_and_kept() -> None:
    world = World(spec=SELECTED)
    world.ls.projects = {1: Project(1, "Street day"), 3: Project(3, "Street night")}
    world.reconcile()
    world.ls.list_projects = lambda: [world.ls.projects[3]]  # type: ignore[method-assign]  # a page shifted under the list
    outcome = world.reconcile(timer=True, light=True)
    assert world.ours(1) and not [e for e in outcome.events if e.reason == "Deregistered"]
    assert [p["id"] for p in world.status["projects"]] == [3, 1]


def test_asleep_the_deployment_is_at_zero_the_registrations_stay_and_a_spec_change_wakes_it() -> None:
    world = World({**SPEC, "prelabel": {"scaleToZero": {"idleSeconds": 60}}})
    world.reconcile()
    assert (condition(world.status, "Sleeping")["status"], condition(world.status, "Sleeping")["reason"]) == ("False", "Awake")
    registered = copy.deepcopy(world.ls.registered)
    world.status["sleep"] = {"since": "2026-12-07T03:00:00Z", "generation": 1, "labelConfigs": "", "servingVersion": "", "modelVersion": "v1"}
    outcome = world.reconcile()
    def replicas() -> int:
        return int(next(o for o in reversed(world.kube.applied) if o["kind"] == "Deployment")["spec"]["replicas"])

    assert replicas() == 0
    sleeping = condition(world.status, "Sleeping")
    assert (sleeping["status"], sleeping["reason"]) == ("True", "Idle") and "scaled to zero at 2026-12-07T03:00:00Z" in sleeping["message"]
    assert (condition(world.status, "Ready")["status"], condition(world.status, "Ready")["reason"]) == ("True", "Sleeping")
    assert (condition(world.status, "Available")["status"], condition(world.status, "Available")["reason"]) == ("False", "Sleeping")
    assert condition(world.status, "Registered")["status"] == "True" and "the registrations stay" in condition(world.status, "Registered")["message"]
    assert outcome.retry_in is None and outcome.events == [] and world.ls.registered == registered  # a state, not a failure
    assert world.status["sleep"]["generation"] == 1
    # Just scaled to zero, its pods still count as ready (seen in CI): a reconcile then registers again (a
    # new rollout), and the project keeps naming the version its tasks hold (Driver.go_to_sleep set it;
    # with the title, Label Studio would ask the sleeping backend for each task opened).
    world.ls.projects[1] = replace(world.ls.projects[1], model_version="v1")
    world.ls.registered[1] = []
    terminating = world.kube.apply

    def apply(body: dict, namespace: str) -> dict:
        answer = terminating(body, namespace)
        if body["kind"] == "Deployment":
            answer["status"]["readyReplicas"] = 1
        return answer

    world.kube.apply = apply  # type: ignore[method-assign]
    world.reconcile()
    world.kube.apply = terminating  # type: ignore[method-assign]
    assert world.ours(1) and world.ls.projects[1].model_version == "v1"
    # A new generation (here, more replicas) is not slept over: the reconcile wakes it.
    world.generation, world.spec["replicas"] = 2, 2
    outcome = world.reconcile()
    assert "sleep" not in world.status and replicas() == 2
    woken = condition(world.status, "Sleeping")
    assert (woken["status"], woken["reason"], woken["message"]) == ("False", "Woken", "woken: the spec changed")
    assert [e.reason for e in outcome.events] == ["Woken"]


def test_woken_by_a_spec_change_with_an_autoscaler_the_deployment_gets_its_minimum() -> None:
    """An HPA leaves a Deployment at zero alone, and an apply that omits replicas may leave the zero."""
    world = World({**SPEC, "prelabel": {"scaleToZero": {}}, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4}})
    world.status["sleep"] = {"since": "2026-12-07T03:00:00Z", "generation": 1, "labelConfigs": "", "servingVersion": "", "modelVersion": "v1"}
    world.reconcile()
    deployments = [o for o in world.kube.applied if o["kind"] == "Deployment"]
    assert deployments[-1]["spec"]["replicas"] == 0
    world.generation = 2
    world.reconcile()
    assert [o for o in world.kube.applied if o["kind"] == "Deployment"][-1]["spec"]["replicas"] == 2 and "sleep" not in world.status
    world.reconcile()  # awake: the autoscaler owns the count again
    assert "replicas" not in [o for o in world.kube.applied if o["kind"] == "Deployment"][-1]["spec"]
