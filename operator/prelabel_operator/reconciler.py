"""The operator's use cases over injected clients (ports.py): reconcile an MLBackend (apply its
objects, register it in its projects, say so in status), wake it when its Deployment changes,
deregister it, and find where its pre-labeling goes. kopf-free: each returns an Outcome (the status
keys that changed, Events, and whether to retry) that the handlers hand to kopf, so unit tests run
them with fakes in milliseconds (tests/unit/operator/test_reconciler.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import diagnosis, drift, keys, manifests, metrics, prelabel, sleep, support
from .configcheck import ConfigCheck
from .errors import BackendUnreachable, KubeError, LabelStudioError, SecretMissing
from .memory import Memory, Remembered
from .ports import Backend, Kube, LabelStudio, LabelStudioFor
from .registration import Desired, marker, ours, unchanged, webhook_actions, webhook_unchanged, webhook_url
from .spec import MLBackendSpec, ProjectRef, ProjectSelector, SpecError
from .status import Event, Observed, ProjectStatus, condition, deployment_available, rolled_out, trained
from .status import status as status_body

log = logging.getLogger(__name__)
FATAL = {"Unauthorized", "LabelStudioUnreachable"}  # stop trying the other projects this round
ORPHAN_HINT = "; to let go without deregistering, set spec.deletionPolicy: Orphan"
DEREGISTER_TIMEOUT = 120.0  # seconds a deletion retries while Label Studio or the API cannot be reached
VERSION_CHECK = 600.0  # seconds a Label Studio's release is trusted before it is read again (an upgrade shows within this)
RETRY_WHILE_DELETING = 15.0  # at most this many seconds between two tries during a deletion
# Label Studio brings a deleted registration back when a request it was answering meanwhile (a list of
# the project's ML backends, the UI's model page) saves it after its /health and /setup calls: Django's
# save() inserts the row again, and Label Studio makes its webhook again. Those calls time out within
# 6 s (ML_TIMEOUT_HEALTH 1 s, ML_TIMEOUT_SETUP 3 s, each with a 1 s connect timeout), so a deletion
# looks again this long after and removes what came back, at most DEREGISTER_RECHECKS times.
DEREGISTER_SETTLE = 8.0
DEREGISTER_RECHECKS = 3


def leftovers(status: Mapping[str, Any]) -> str:
    """What the registrations listed in a status would leave in Label Studio: each project's ML
    backend and the webhook Label Studio made for it ("" when status lists none)."""
    url = status.get("url")
    hook = f", webhook {webhook_url(str(url))}" if url else ""
    return "; ".join(f"project {p['id']}: ML backend {p['mlBackendId']}{hook}" for p in status.get("projects") or []
                     if p.get("id") is not None and p.get("mlBackendId") is not None)


def backoff(retry: int) -> float:
    """Seconds before retry number `retry` + 1: 5, 10, 20, ... capped at 300."""
    return float(min(300, 5 * 2 ** min(retry, 6)))


@dataclass(frozen=True)
class Resource:
    """An MLBackend as a handler received it."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    body: Mapping[str, Any] = field(default_factory=dict)  # the whole object: the owner of what it makes
    deleting: bool = False
    deleted_at: float | None = None  # metadata.deletionTimestamp, epoch seconds


@dataclass
class Outcome:
    """What a use case wants said and done: `status`, the status keys that changed (a merge patch;
    a None value removes a key); `events`; `retry_in` seconds, when it is not done (kopf's
    TemporaryError, with `error`); `permanent`: it cannot be done as declared (kopf's PermanentError);
    `again_in` seconds, when it is done so far and wants to look once more (no error: a deletion's
    recheck, DEREGISTER_SETTLE)."""

    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    retry_in: float | None = None
    again_in: float | None = None
    error: str = ""
    permanent: bool = False
    ready: bool = False


def _carried(said: Mapping[str, Any]) -> ProjectStatus:
    """A project as status said it, kept when a pass could not look at it."""
    return ProjectStatus(said.get("id"), said.get("title"), said.get("mlBackendId"), str(said.get("state") or "Pending"), str(said.get("message") or ""))


def _said(resource: Resource, ref: ProjectRef) -> Mapping[str, Any]:
    """What status last said of a declared project ({} when nothing)."""
    return next((p for p in resource.status.get("projects") or [] if (ref.id is not None and p.get("id") == ref.id)
                 or (ref.title is not None and p.get("title") == ref.title)), {})


def _changed(before: Mapping[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Only what changed: a resync that finds everything as it was writes nothing."""
    return drift.changed(dict(before), after)


class Reconciler:
    """The use cases, over the clients it is given; `memory` holds what they remember per resource.
    `adopt(obj, owner)` makes a child object owned by its MLBackend (kopf.adopt); `clock` is monotonic
    (drift checks), `wall` epoch seconds (how long a deletion has waited)."""

    def __init__(self, kube: Kube, label_studio: LabelStudioFor, backend: Backend, memory: Memory,
                 adopt: Callable[[dict[str, Any], Mapping[str, Any]], None], clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, deregister_timeout: float = DEREGISTER_TIMEOUT,
                 deregister_settle: float = DEREGISTER_SETTLE) -> None:
        self.kube, self.label_studio, self.backend, self.memory = kube, label_studio, backend, memory
        self.adopt, self.clock, self.wall, self.deregister_timeout = adopt, clock, wall, deregister_timeout
        self.deregister_settle = deregister_settle
        self._versions: dict[str, tuple[str, float]] = {}  # Label Studio URL -> (its release, when read)

    # -- reconcile -------------------------------------------------------------------------------
    def reconcile(self, resource: Resource, retry: int = 0, timer: bool = False, light: bool = False) -> Outcome:
        """Brings the backend's objects and registrations to the spec and says so in status.
        timer: a resync or a wake-up (not Ready is rechecked at the next tick rather than retried);
        light: a drift check that trusts what the last full pass found while nothing changed."""
        with self.memory.lock(resource.uid), metrics.RECONCILE_SECONDS.time():
            if self.memory.deleted(resource.uid):
                return Outcome()  # deregistered while this pass waited for the lock: nothing to bring back
            try:
                outcome = self._reconcile(resource, retry, timer, light)
            except Exception:
                metrics.RECONCILES.labels("error").inc()
                raise
            metrics.RECONCILES.labels("ready" if outcome.ready else "not-ready").inc()
            return outcome

    def _reconcile(self, resource: Resource, retry: int, timer: bool, light: bool) -> Outcome:
        name, namespace, uid = resource.name, resource.namespace, resource.uid
        observed = Observed(generation=resource.generation)
        previous = list(resource.status.get("conditions") or [])
        try:
            if problem := manifests.name_problem(name):
                raise SpecError(problem)
            parsed = MLBackendSpec.parse(dict(resource.spec))
            observed.foreign = parsed.foreign
            if (selector := parsed.label_studio.selector) is not None:
                observed.selector = ", ".join([f"titlePattern {selector.title_pattern!r}" if selector.title_pattern else "every project",
                                               *(["compatibleOnly"] if selector.compatible_only else [])])
        except SpecError as exc:
            observed.spec_error = str(exc)
            return Outcome(_changed(resource.status, status_body(observed, previous)), retry_in=None, error=str(exc), permanent=True)
        try:
            found = keys.read(self.kube.secret_data, namespace, parsed)
            version = manifests.serving_version(parsed, (resource.status.get("training") or {}).get("version"))
            observed.asleep = sleep.asleep(parsed, resource.status, resource.generation) is not None
            waking = bool(resource.status.get("sleep")) and not observed.asleep  # a new generation ends the sleep
            replicas = 0 if observed.asleep else sleep.awake_replicas(parsed) if waking else None
            deployment, service = self._apply_objects(resource, parsed, found.digest, version, replicas)
        except KubeError as exc:  # a missing Secret, a denied or failed API call: shown, retried with backoff
            observed.kube_error = (exc.reason, exc.message)
            metrics.ERRORS.labels(exc.reason).inc()
            return Outcome(_changed(resource.status, status_body(observed, previous)), retry_in=backoff(retry), error=exc.message)
        observed.available, observed.available_message = deployment_available(deployment)
        outcome = Outcome()
        observed.sleeping = sleep.condition(parsed, resource.status, resource.generation)
        if observed.available:
            self.memory.waiting.discard(uid)
        else:
            self.memory.waiting.add(uid)  # its Deployment becoming available reconciles at once (woken too)
            if observed.asleep and observed.sleeping:  # zero replicas on purpose: nothing to diagnose
                observed.available_reason, observed.available_message = "Sleeping", observed.sleeping.message
            else:
                outcome.events += self._diagnose(observed, resource, deployment)
        cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP")
        observed.url = manifests.backend_url(name, namespace, parsed, cluster_ip)
        if observed.available and observed.url:
            # A finished rollout is part of the fingerprint: the next check then asks the new pods'
            # /setup for the model version (a promotion or a pin changes it while the old pods serve).
            fingerprint = (observed.generation, found.digest, observed.url, version, rolled_out(deployment))
            outcome.events += self._register(observed, parsed, found, resource, fingerprint, light)
        if not observed.projects and (observed.label_studio_error or not (observed.available and observed.url)):
            # Label Studio not looked at (or not reachable) this pass: status keeps the projects it last
            # found, whose registrations a later release or a deletion must still find.
            observed.projects = [_carried(p) for p in resource.status.get("projects") or []]
        if not light:
            # A backend of spec.backend's checks read the webhooks too: counted as twice the projects;
            # a selector's check lists the projects first (one request more).
            projects = len(parsed.label_studio.projects) or len(observed.projects)
            cost = projects * (2 if parsed.foreign else 1) + (1 if parsed.label_studio.selector else 0)
            self.memory.drift.track(uid, cost, self.clock())
        observed.training = trained(resource.status.get("training"))
        observed.label_studio_version = observed.label_studio_version or resource.status.get("labelStudioVersion")
        if observed.label_studio_version:
            observed.supported = support.supported(observed.label_studio_version)
            said = condition(dict(resource.status), observed.supported.type)
            if observed.supported.status != "True" and said.get("reason") != observed.supported.reason:
                outcome.events.append(Event(observed.supported.reason, observed.supported.message, warning=True))
        if parsed.prelabel is not None:
            current = resource.status.get("prelabel")
            observed.prelabel = prelabel.condition(current, parsed.prelabel.paused)
            if parsed.prelabel.paused and current and current.get("phase") != "Paused":
                outcome.status["prelabel"] = {"phase": "Paused"}
        elif resource.status.get("prelabel"):
            outcome.status["prelabel"] = None  # the section was removed: pre-labeling is off
        if resource.status.get("sleep") and not observed.asleep:  # a spec change wakes it
            outcome.status["sleep"] = None
            outcome.events.append(Event("Woken", observed.sleeping.message if observed.sleeping else "woken: scaleToZero is off"))
        body = status_body(observed, previous)
        outcome.status.update(_changed(resource.status, body))
        ready = condition(body, "Ready")
        outcome.ready = ready["status"] == "True"
        metrics.READY.labels(namespace, name).set(1 if outcome.ready else 0)
        for cond in body["conditions"]:
            if cond["status"] == "False" and cond["type"] not in ("Ready", sleep.CONDITION) and cond["reason"] != "Sleeping":
                metrics.ERRORS.labels(cond["reason"]).inc()
        if not outcome.ready and not observed.asleep:
            if timer or not observed.available:  # checked again at the timer's next tick, not a drift period later
                self.memory.drift.recheck(uid)  # (and a Deployment becoming Available wakes it at once)
            else:  # retried with backoff; the resync timer keeps checking afterwards too
                outcome.retry_in = min(backoff(retry), 30)
                outcome.error = f"not ready: {ready['reason']}: {ready['message']}"
        return outcome

    def _apply_objects(self, resource: Resource, spec: MLBackendSpec, digest: str, version: str | None, replicas: int | None = None
                       ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Applies the Deployment (with `replicas` when given: scale to zero), Service and (when enabled)
        autoscaler; returns the Deployment and Service as the API server answered them, status included."""
        name, namespace = resource.name, resource.namespace
        objects = [manifests.deployment(name, spec, digest, version, replicas), manifests.service(name, spec)]
        hpa = manifests.autoscaler(name, spec)
        if hpa:
            objects.append(hpa)
        applied = {}
        for obj in objects:
            self.adopt(obj, resource.body)
            applied[obj["kind"]] = self.kube.apply(obj, namespace)
        if not hpa:
            self.kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", manifests.object_name(name), namespace)
        return applied.get("Deployment"), applied.get("Service")

    def _diagnose(self, observed: Observed, resource: Resource, deployment: dict[str, Any] | None) -> list[Event]:
        """Why the Deployment is not available, from its pods (diagnosis), into `observed`; an Event
        when the cause changed since status last said. Reading the pods may fail (the chart's RBAC
        not upgraded): then the Deployment's own message stands, and it says so."""
        try:
            pods = self.kube.pods(resource.namespace, manifests.selector(resource.name))
            events = self.kube.pod_events(resource.namespace) if pods else []
        except KubeError as exc:
            observed.available_message += f" (the pods could not be read: {exc.message})"
            return []
        health = {str(p["metadata"]["name"]): self.backend.health(url) for p in pods
                  if diagnosis.running_unready(p) and (url := diagnosis.health_endpoint(p))}
        found = diagnosis.diagnose(deployment, pods, events, health)
        if found is None:
            return []
        observed.available_reason, observed.available_message = found.reason, found.message
        said = condition(dict(resource.status), "Available")
        if said.get("reason") == found.reason and said.get("status") == "False":
            return []  # the same cause: one Event when it starts, not one per resync
        return [Event(found.reason, found.message, warning=found.reason != "BackendStarting")]

    def _check_config(self, url: str, project_id: int, label_config: str, auth: tuple[str, str] | None) -> ConfigCheck:
        try:
            return self.backend.check_config(url, project_id, label_config, auth)
        except BackendUnreachable as exc:
            return ConfigCheck(None, str(exc))

    def _register(self, observed: Observed, spec: MLBackendSpec, found: keys.Keys, resource: Resource,
                  fingerprint: tuple[int, str, str, str | None, bool], light: bool) -> list[Event]:
        """Registers in every declared project; returns the Events of what changed. `light`: where the
        last full pass found a project Connected under the same fingerprint, only list its
        registrations (one request) and keep what that pass found when ours is there as desired; a
        full pass for that project otherwise."""
        assert observed.url
        uid, auth = resource.uid, found.auth
        client = self.label_studio(spec.label_studio.url, found.api_key)
        observed.label_studio_version = self._version(client, spec.label_studio.url)
        desired = Desired(url=observed.url, title=spec.label_studio.title, description=marker(resource.namespace, resource.name, uid),
                          is_interactive=spec.label_studio.interactive, timeout=spec.label_studio.timeout_seconds,
                          auth_user=auth[0] if auth else None, webhook_actions=webhook_actions(spec.foreign))
        before = self.memory.remembered.get(uid)
        known = before.projects if before is not None and before.fingerprint == fingerprint and light else {}
        remembered = Remembered(fingerprint, observed.model_version)
        events: list[Event] = []
        try:
            refs = self._refs(client, spec)
        except LabelStudioError as exc:
            observed.label_studio_error = (exc.reason, exc.message)
            self.memory.remembered.pop(uid, None)
            return events
        selector = spec.label_studio.selector
        for ref in refs:
            try:
                last = known.get(ref)
                if last is not None and last.state == "Connected" and last.id is not None and last.ml_backend_id is not None:
                    # A backend that learns from the webhook's events (webhook_actions) also needs it
                    # active and as set: Label Studio switches a failing webhook off (one request more).
                    if unchanged(client.registrations(last.id), desired, uid, last.ml_backend_id) and (
                            not desired.webhook_actions or webhook_unchanged(client.webhooks(last.id), desired, uid)):
                        observed.projects.append(last)
                        remembered.projects[ref] = last
                        observed.model_version = (before.model_version if before else None) or observed.model_version
                        continue
                    metrics.ERRORS.labels("RegistrationDrift").inc()
                project = client.resolve(ref)
                check = self._check_config(observed.url, project.id, project.label_config, auth)
                if check.compatible is False and check.registrable and selector is not None and selector.compatible_only:
                    continue  # not selected: left alone (and released below if it was registered)
                if not check.registrable:
                    observed.projects.append(ProjectStatus(project.id, project.title, _said(resource, ref).get("mlBackendId"), state="Error",
                                                           message=check.message, compatible=False))
                    continue
                # A config with nothing to serve yet is still registered (Label Studio connects the
                # backend, as HumanSignal's example); ConfigCompatible says why it predicts nothing.
                observed.model_version = check.model_version or observed.model_version
                registration_id, decided = client.ensure(project.id, desired, uid, auth[1] if auth else None)
                if not observed.asleep:  # asleep, the project names the version its tasks hold (Driver.go_to_sleep) until woken
                    client.set_model_version(project, spec.label_studio.title)
                for action, happened in (("create", decided.create), ("update", bool(decided.update_id)), ("delete", bool(decided.delete_ids))):
                    if happened:
                        metrics.REGISTRATIONS.labels(action).inc()
                if decided.create or decided.update_id or decided.delete_ids:
                    what = "registered" if decided.create else "updated the registration"
                    events.append(Event("Registered", f"{what} {observed.url} in project {project.id} (ML backend {registration_id})"))
                connected = ProjectStatus(project.id, project.title, registration_id, "Connected", message=check.message, compatible=check.compatible)
                observed.projects.append(connected)
                remembered.projects[ref] = connected
            except LabelStudioError as exc:
                if exc.reason in FATAL:
                    observed.label_studio_error = (exc.reason, exc.message)
                    self.memory.remembered.pop(uid, None)
                    return events
                said = _said(resource, ref)  # the registration status last saw stays named, for a release or a deletion
                observed.projects.append(ProjectStatus(ref.id if ref.id is not None else said.get("id"), ref.title or said.get("title"),
                                                       said.get("mlBackendId"), state="Error", message=exc.message))
        events += self._release(client, observed, resource, selector)
        remembered.model_version = observed.model_version
        self.memory.remembered[uid] = remembered
        return events

    def _refs(self, client: LabelStudio, spec: MLBackendSpec) -> list[ProjectRef]:
        """The projects to serve: those listed, or those the selector matches (one paged list, by id)."""
        selector = spec.label_studio.selector
        if selector is None:
            return list(spec.label_studio.projects)
        return [ProjectRef(id=p.id) for p in sorted(client.list_projects(), key=lambda p: p.id) if selector.matches(p.title)]

    def _release(self, client: LabelStudio, observed: Observed, resource: Resource, selector: ProjectSelector | None) -> list[Event]:
        """Deregisters from the projects status listed as registered that this pass no longer serves
        (removed from spec.labelStudio.projects, or no longer matching its selector). Skipped while a
        served project could not be resolved this pass (its id unknown, it might be one of them). A
        failure keeps the project in status as an Error, so the next pass tries again."""
        if any(p.id is None for p in observed.projects):
            return []
        served = {p.id for p in observed.projects}
        how = "selected" if selector else "listed"
        events: list[Event] = []
        for previous in resource.status.get("projects") or []:
            project_id, registration = previous.get("id"), previous.get("mlBackendId")
            if project_id is None or registration is None or project_id in served:
                continue
            try:
                if (selector is not None and not selector.compatible_only
                        and selector.matches(client.resolve(ProjectRef(id=int(project_id))).title)):
                    # Missed by a paged list (a project deleted meanwhile shifts the pages): kept until a
                    # pass serves it or it really leaves the selection. (compatibleOnly left it out on purpose.)
                    observed.projects.append(_carried(previous))
                    continue
                mine = ours(client.registrations(int(project_id)), resource.uid)
                for registration_id in mine:
                    client.remove(int(project_id), registration_id)
                    metrics.REGISTRATIONS.labels("delete").inc()
            except LabelStudioError as exc:
                if exc.reason in ("ProjectNotFound", "NotFound"):
                    continue  # the project is gone, and its registrations with it
                observed.projects.append(ProjectStatus(int(project_id), previous.get("title"), int(registration), "Error",
                                                       f"no longer {how}, and deregistering from it failed (retried): {exc.message}"))
                continue
            events.append(Event("Deregistered", f"removed the registration from project {project_id}, which is no longer {how}"))
        return events

    def _version(self, client: LabelStudio, url: str) -> str | None:
        """The server's release, read once per VERSION_CHECK per Label Studio; None while it cannot be
        read (a registration's own requests then say why Label Studio failed)."""
        known = self._versions.get(url)
        if known is not None and self.clock() - known[1] < VERSION_CHECK:
            return known[0]
        try:
            version = client.server_version()
        except LabelStudioError:
            version = known[0] if known else ""  # tried again after VERSION_CHECK, not at every reconcile
        self._versions[url] = (version, self.clock())
        return version or None

    # -- a backend Deployment changed ---------------------------------------------------------------
    def wakes(self, owner_uid: str, deployment: dict[str, Any], backend: Resource) -> bool:
        """Whether a change of `backend`'s Deployment calls for a reconcile now: it became Available
        while the MLBackend waited for it (then it registers), or stopped being Available while the
        MLBackend says it is (then its status says so). Call with memory.lock(owner_uid) held."""
        if backend.deleting:
            return False  # being deregistered: nothing to bring up
        if (deployment.get("spec") or {}).get("replicas") == 0:
            # Scaled to zero on purpose (the sleep): a reconcile now, from an MLBackend as the index last saw
            # it (status.sleep not there yet under load), would scale it up again; the resync timer says it.
            return False
        available = deployment_available(deployment)[0]
        said = condition(dict(backend.status), "Available").get("status") == "True"
        waiting = owner_uid in self.memory.waiting
        return (available and waiting) or (not available and said and not waiting)

    def wake(self, backend: Resource, patch_status: Callable[[dict[str, Any]], None]) -> Outcome:
        """A reconcile outside kopf's handling of the MLBackend: its status written with `patch_status`
        (errors.KubeError, e.g. deleted meanwhile: rechecked at the timer's next tick)."""
        metrics.WAKEUPS.inc()
        outcome = self.reconcile(backend, timer=True)
        if outcome.retry_in is not None or outcome.permanent:
            self.memory.drift.recheck(backend.uid)  # the status says why; the timer tries again
        if outcome.status:
            try:
                patch_status(outcome.status)
            except KubeError as exc:  # the timer or kopf's own handlers take it from here
                log.warning("status of %s/%s not written: %s", backend.namespace, backend.name, exc.message)
                self.memory.drift.recheck(backend.uid)
        return outcome

    # -- deletion -------------------------------------------------------------------------------
    def deregister(self, resource: Resource, retry: int = 0, recheck: int = 0) -> Outcome:
        """Removes the resource's registrations (and their webhooks) unless deletionPolicy is Orphan.

        Done once a look finds nothing to remove: when this one removed something (or status says
        something was registered: a killed predecessor may have removed it just now), `again_in` asks
        to be called again with `recheck` + 1 after `deregister_settle` seconds, for what Label Studio
        saved back (DEREGISTER_SETTLE); at most DEREGISTER_RECHECKS times.

        Never holds the deletion hostage: when it cannot deregister, it says what may be left in Label
        Studio (an Event, a log line) and lets go: at once when the API key cannot be had (the Secret
        or its key missing, a namespace being torn down) or is refused; after `deregister_timeout`
        seconds since the deletion began while Label Studio or the Kubernetes API cannot be reached
        (retried meanwhile every RETRY_WHILE_DELETING s at most)."""
        # Under the resource's lock: a reconcile already running (a resync tick, a Deployment's event,
        # started before the deletion was seen) finishes first, and none after it registers again.
        with self.memory.lock(resource.uid):
            self.memory.forget(resource.uid)
            return self._deregister_locked(resource, retry, recheck)

    def _deregister_locked(self, resource: Resource, retry: int, recheck: int) -> Outcome:
        try:
            parsed = MLBackendSpec.parse(dict(resource.spec))
        except SpecError:
            return Outcome()  # never registered anything
        if parsed.deletion_policy == "Orphan":
            return Outcome(events=[Event("Orphaned", "left the Label Studio registrations in place (deletionPolicy: Orphan)")])
        try:
            api_key = keys.read(self.kube.secret_data, resource.namespace, parsed).api_key
            removed = self._deregister(resource, parsed, api_key)
        except SecretMissing as exc:
            return self._let_go(resource, "SecretMissing", exc.message)
        except LabelStudioError as exc:
            if not exc.retryable:  # the key refused, a project gone: trying again changes nothing
                return self._let_go(resource, exc.reason, exc.message)
            return self._retry_or_let_go(resource, retry, exc.reason, exc.message, condition=True)
        except KubeError as exc:
            return self._retry_or_let_go(resource, retry, exc.reason, exc.message, condition=False)
        with contextlib.suppress(KeyError):  # never reconciled by this process
            metrics.READY.remove(resource.namespace, resource.name)
        if recheck == 0:
            events = [Event("Deregistered", f"removed {removed} registration(s) from Label Studio")]
        elif removed:
            events = [Event("Deregistered", f"removed {removed} registration(s) again: Label Studio saved them back after their deletion "
                                            "(a request it was answering meanwhile, such as a list of the project's ML backends)", warning=True)]
        else:
            events = []
        look_again = removed > 0 or (recheck == 0 and bool(leftovers(resource.status)))
        return Outcome(events=events, again_in=self.deregister_settle if look_again and recheck < DEREGISTER_RECHECKS else None)

    def _deregister(self, resource: Resource, spec: MLBackendSpec, api_key: str) -> int:
        client = self.label_studio(spec.label_studio.url, api_key)
        removed = 0
        # The listed projects, and every project status says it registered in (a selector's, or one
        # a crash left between its registration and the status write: the marker finds ours).
        listed = {p.get("id") for p in resource.status.get("projects") or [] if p.get("id") is not None}
        refs = [*spec.label_studio.projects, *(ProjectRef(id=int(i)) for i in sorted(listed) if ProjectRef(id=int(i)) not in spec.label_studio.projects)]
        for ref in refs:
            try:
                project_id = client.resolve(ref).id
            except LabelStudioError as exc:
                if exc.reason == "ProjectNotFound":
                    continue
                raise
            existing = client.registrations(project_id)
            mine = ours(existing, resource.uid)
            for registration_id in mine:
                client.remove(project_id, registration_id)
                metrics.REGISTRATIONS.labels("delete").inc()
                removed += 1
            if not mine:
                # An earlier pass died between deleting the registration and its webhook (a killed
                # operator): the webhook is still ours, by its owner header or its address.
                url = resource.status.get("url")
                client.tidy_webhooks(project_id, resource.uid, {r.url for r in existing}, {str(url)} if url else set(), None)
        return removed

    def _retry_or_let_go(self, resource: Resource, retry: int, reason: str, message: str, condition: bool) -> Outcome:
        waited = self.wall() - resource.deleted_at if resource.deleted_at is not None else 0.0
        if waited >= self.deregister_timeout:
            return self._let_go(resource, reason, f"{message} (still failing {waited:.0f} s after the deletion began)")
        left = self.deregister_timeout - waited
        why = f"{message}; retrying for {left:.0f} s more, then letting go{ORPHAN_HINT}"
        deregistering = {"type": "Ready", "status": "False", "reason": "Deregistering", "message": why}
        return Outcome({"conditions": [deregistering]} if condition else {}, retry_in=min(backoff(retry), RETRY_WHILE_DELETING, max(1.0, left)),
                       error=why)

    def _let_go(self, resource: Resource, reason: str, message: str) -> Outcome:
        """Deletion goes on without deregistering: what may be left, said where a person looks."""
        left = leftovers(resource.status)
        what = f"may be left in Label Studio: {left}; remove it there by hand" if left else "nothing was registered, per its status"
        text = f"deregistration skipped ({reason}: {message}); {what}"
        log.warning("%s/%s: %s", resource.namespace, resource.name, text)
        with contextlib.suppress(KeyError):
            metrics.READY.remove(resource.namespace, resource.name)
        metrics.ERRORS.labels("DeregistrationSkipped").inc()
        return Outcome(events=[Event("DeregistrationSkipped", text, warning=bool(left))])

    # -- pre-labeling ------------------------------------------------------------------------------
    def prelabel_keys(self, namespace: str, spec: MLBackendSpec) -> keys.Keys:
        """The keys the pre-labeling driver calls Label Studio and the backend with."""
        return keys.read(self.kube.secret_data, namespace, spec)

