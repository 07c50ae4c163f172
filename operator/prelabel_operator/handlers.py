"""Thin kopf handlers: observe, call the pure builders and decisions, apply, write status and events.

create/update/resume, a resync timer and a backend Deployment's availability change run the same
reconcile; delete deregisters (finalizer).
A daemon per MLBackend with spec.prelabel (and not paused) drives pre-labeling; kopf stops it
when the section is removed or paused, or the resource is deleted.
A Label Studio or API outage is retried with backoff and shown in status, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
import requests

from . import configcheck, drift, kube, manifests, metrics, prelabel, reconcile
from .labelstudio import Client, LabelStudioError
from .prelabel_driver import Driver, Outage, Target
from .registration import Desired, marker, ours, unchanged
from .spec import MLBackendSpec, PrelabelSpec, SpecError

GROUP, VERSION, PLURAL = "prelabel.dev", "v1alpha1", "mlbackends"
RESYNC_SECONDS = float(os.environ.get("PRELABEL_RESYNC_SECONDS", "30"))
FATAL = {"Unauthorized", "LabelStudioUnreachable"}  # stop trying the other projects this round
# Drift checks share a budget of Label Studio requests (drift.py): each resource is checked every
# max(RESYNC_SECONDS, its share of the budget) seconds; the timer ticks every RESYNC_SECONDS.
DRIFT = drift.Schedule(rate=float(os.environ.get("PRELABEL_DRIFT_REQUESTS_PER_SECOND", "0.8")), interval=RESYNC_SECONDS,
                       full_every=int(os.environ.get("PRELABEL_DRIFT_FULL_EVERY", "10")))


@dataclass
class _Remembered:
    """What the last full reconcile of a resource found in Label Studio, for the light checks that
    follow: valid while the resource's generation, Secrets digest and backend URL stay the same."""

    fingerprint: tuple[int, str, str]
    model_version: str | None = None
    projects: dict[Any, reconcile.ProjectStatus] = field(default_factory=dict)  # ProjectRef -> its status


_remembered: dict[str, _Remembered] = {}


# kopf runs a resource's timer beside its change handlers; one reconcile at a time per resource keeps
# two passes from both creating a registration. Reentrant: a Deployment's event holds it while it
# decides, then reconciles.
_reconciling: dict[str, threading.RLock] = {}
_reconciling_guard = threading.Lock()

# Resources whose last reconcile found all in order but their Deployment not yet Available: the
# Deployment's watch event wakes them (deployment_event) instead of a retry backoff (5, 10, 20, 30 s:
# most of the time to Ready of 500 resources applied at once). The resync timer rechecks them too.
_waiting: set[str] = set()


def _lock_for(uid: str) -> threading.RLock:
    with _reconciling_guard:
        return _reconciling.setdefault(uid, threading.RLock())


@functools.lru_cache(maxsize=64)
def _client(url: str, api_key: str) -> Client:
    """One client (one pool of kept-alive connections) per Label Studio and key, shared by all
    resources: a new one per reconcile opened a connection per pass."""
    return Client(url, api_key)


def backoff(retry: int) -> float:
    return float(min(300, 5 * 2 ** min(retry, 6)))


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's record of the last handled spec (an annotation), as a digest of what kopf would record.

    kopf stores the whole spec (and the user's labels and annotations) in an annotation, and
    `kubectl apply` stores the whole object in another: a resource of about 128 KiB made both exceed
    Kubernetes' 256 KiB for all annotations together, every patch of kopf's was refused (HTTP 422),
    and the finalizer stayed for good. The handlers here reconcile the whole spec and never read
    kopf's old/new/diff, so a digest tells a change as well as the copy did."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        essence = super().build(body=body, extra_fields=extra_fields)
        # What the progress storage's clear() would drop afterwards (its annotations share our prefix),
        # dropped before hashing: a handler's progress is no change of the resource.
        self.remove_annotations(essence, {k for k in (essence.get("metadata") or {}).get("annotations") or {} if k.startswith(f"{self.prefix}/")})
        self.remove_empty_stanzas(essence)
        digest = hashlib.sha256(json.dumps(essence, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        return cast(kopf.BodyEssence, {"sha256": digest})


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.INFO
    # A watch that went silent (its connection dropped by a NAT, a load balancer, a stalled proxy;
    # kopf #787, #996, #1276) is abandoned after 70 s without any event, not even the bookmark the API
    # server sends about every 60 s, and kopf lists and watches again: a resource created meanwhile
    # is seen within about 70 s (tests/integration/test_outages.py). The server ends each watch
    # after 5 minutes anyway, and the client after 330 s, should both of those fail.
    settings.watching.inactivity_timeout = 70
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 30  # a call on a silent pooled connection fails after 30 s, and is retried
    # Peering (several replicas, PRELABEL_PEERING): a replica that stops refreshing its record (a
    # killed pod) is presumed dead after 30 s, and the standby of the next priority takes over then.
    settings.peering.lifetime = 30
    settings.peering.stealth = True  # no log line per keep-alive
    settings.persistence.finalizer = "prelabel.dev/deregister"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="prelabel.dev")
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix="prelabel.dev", key="last-handled-configuration")
    settings.execution.max_workers = int(os.environ.get("PRELABEL_MAX_WORKERS", "8"))
    # A resource deleted while its resync timer runs keeps its finalizer until kopf next polls the
    # timer: 60 s by default, which makes deletions hang for a minute. Poll every 2 s.
    settings.background.cancellation_polling = 2
    # No watching of CRDs and namespaces: that would need cluster-wide RBAC the operator has no other
    # use for. __main__ waits for the MLBackend CRD before starting instead.
    settings.scanning.disabled = True


def _secrets(namespace: str, spec: MLBackendSpec) -> tuple[str, tuple[str, str] | None, str]:
    """(api key, basic auth, a digest of the referenced Secret data). Raises kube.KubeError (SecretMissing, Forbidden...)."""
    ref = spec.label_studio.api_key
    data = kube.secret_data(namespace, ref.name)
    api_key = kube.decode(data, ref.key, f"{namespace}/{ref.name}")
    digest_input = {ref.name: {ref.key: data[ref.key]}}
    auth = None
    if spec.basic_auth:
        b = spec.basic_auth
        auth_data = kube.secret_data(namespace, b.name)
        auth = (kube.decode(auth_data, b.username_key, f"{namespace}/{b.name}"), kube.decode(auth_data, b.password_key, f"{namespace}/{b.name}"))
        digest_input[b.name] = {b.username_key: auth_data[b.username_key], b.password_key: auth_data[b.password_key]}
    return api_key, auth, manifests.secrets_hash(digest_input)


def _check_config(url: str, project_id: int, label_config: str, auth: tuple[str, str] | None) -> configcheck.ConfigCheck:
    """Asks the backend itself (POST /setup) whether it serves this labeling config."""
    try:
        answer = requests.post(f"{url}/setup", json={"project": f"{project_id}.0", "schema": label_config}, auth=auth, timeout=30)
    except requests.RequestException as exc:
        return configcheck.ConfigCheck(None, f"backend unreachable for the config check: {type(exc).__name__}")
    try:
        body = answer.json()
    except ValueError:
        body = None
    return configcheck.interpret(answer.status_code, body)


def _apply_objects(body: kopf.Body, name: str, namespace: str, spec: MLBackendSpec, digest: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    objects = [manifests.deployment(name, spec, digest), manifests.service(name, spec)]
    hpa = manifests.autoscaler(name, spec)
    if hpa:
        objects.append(hpa)
    applied = {}
    for obj in objects:
        kopf.adopt(obj, owner=body)
        applied[obj["kind"]] = kube.apply(obj, namespace)  # the object as it is now, status included: no get after it
    if not hpa:
        kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", manifests.object_name(name), namespace)
    return applied.get("Deployment"), applied.get("Service")


def _register(body: kopf.Body, observed: reconcile.Observed, spec: MLBackendSpec, api_key: str,
              auth: tuple[str, str] | None, uid: str, name: str, namespace: str, fingerprint: tuple[int, str, str], light: bool) -> None:
    """Registers in every declared project. `light`: where the last full pass found this project
    Connected under the same fingerprint, only list its registrations (one request) and keep what
    that pass found when ours is there as desired; a full pass for that project otherwise."""
    assert observed.url
    client = _client(spec.label_studio.url, api_key)
    desired = Desired(url=observed.url, title=spec.label_studio.title, description=marker(namespace, name, uid),
                      is_interactive=spec.label_studio.interactive, timeout=spec.label_studio.timeout_seconds,
                      auth_user=auth[0] if auth else None)
    before = _remembered.get(uid)
    known = before.projects if before is not None and before.fingerprint == fingerprint and light else {}
    remembered = _Remembered(fingerprint, observed.model_version)
    for ref in spec.label_studio.projects:
        try:
            last = known.get(ref)
            if last is not None and last.state == "Connected" and last.id is not None and last.ml_backend_id is not None:
                if unchanged(client.registrations(last.id), desired, uid, last.ml_backend_id):
                    observed.projects.append(last)
                    remembered.projects[ref] = last
                    observed.model_version = (before.model_version if before else None) or observed.model_version
                    continue
                metrics.ERRORS.labels("RegistrationDrift").inc()
            project = client.resolve(ref)
            project_id, title = project.id, project.title
            check = _check_config(observed.url, project_id, project.label_config, auth)
            if not check.registrable:
                observed.projects.append(reconcile.ProjectStatus(project_id, title, state="Error", message=check.message, compatible=False))
                continue
            # A config with nothing to serve yet is still registered (Label Studio connects the
            # backend, as HumanSignal's example); ConfigCompatible says why it predicts nothing.
            observed.model_version = check.model_version or observed.model_version
            registration_id, decided = client.ensure(project_id, desired, uid, auth[1] if auth else None)
            client.set_model_version(project, spec.label_studio.title)
            for action, happened in (("create", decided.create), ("update", bool(decided.update_id)), ("delete", bool(decided.delete_ids))):
                if happened:
                    metrics.REGISTRATIONS.labels(action).inc()
            if decided.create or decided.update_id or decided.delete_ids:
                what = "registered" if decided.create else "updated the registration"
                kopf.info(body, reason="Registered", message=f"{what} {observed.url} in project {project_id} (ML backend {registration_id})")
            connected = reconcile.ProjectStatus(project_id, title, registration_id, "Connected", message=check.message, compatible=check.compatible)
            observed.projects.append(connected)
            remembered.projects[ref] = connected
        except LabelStudioError as exc:
            if exc.reason in FATAL:
                observed.label_studio_error = (exc.reason, exc.message)
                _remembered.pop(uid, None)
                return
            observed.projects.append(reconcile.ProjectStatus(ref.id, ref.title, state="Error", message=exc.message))
    remembered.model_version = observed.model_version
    _remembered[uid] = remembered


def reconcile_backend(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
                      retry: int, timer: bool = False, light: bool = False) -> None:
    with _lock_for(meta["uid"]), metrics.RECONCILE_SECONDS.time():
        try:
            _reconcile(body, meta, spec, status, patch, retry, timer, light)
        except (kopf.TemporaryError, kopf.PermanentError):
            metrics.RECONCILES.labels("not-ready").inc()
            raise
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            raise
        metrics.RECONCILES.labels("ready" if _ready(status, patch) else "not-ready").inc()


def _ready(status: kopf.Status, patch: kopf.Patch) -> bool:
    """Ready as the status will be after the patch (which holds only what changed)."""
    return reconcile.condition({**dict(status), **(patch.get("status") or {})}, "Ready").get("status") == "True"


def _patch_status(patch: kopf.Patch, status: kopf.Status, body_status: dict[str, Any]) -> None:
    """Only what changed: a resync that finds everything as it was writes nothing."""
    patch.status.update(drift.changed(dict(status), body_status))


def _reconcile(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch,
               retry: int, timer: bool, light: bool) -> None:
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    observed = reconcile.Observed(generation=int(meta.get("generation") or 0))
    previous = list(status.get("conditions") or [])
    try:
        if problem := manifests.name_problem(name):
            raise SpecError(problem)
        parsed = MLBackendSpec.parse(dict(spec))
    except SpecError as exc:
        observed.spec_error = str(exc)
        _patch_status(patch, status, reconcile.status(observed, previous))
        raise kopf.PermanentError(str(exc)) from None
    try:
        api_key, auth, digest = _secrets(namespace, parsed)
        deployment, service = _apply_objects(body, name, namespace, parsed, digest)
    except kube.KubeError as exc:  # a missing Secret, a denied or failed API call: shown, retried with backoff
        observed.kube_error = (exc.reason, exc.message)
        _patch_status(patch, status, reconcile.status(observed, previous))
        metrics.ERRORS.labels(exc.reason).inc()
        raise kopf.TemporaryError(exc.message, delay=backoff(retry)) from None
    observed.available, observed.available_message = reconcile.deployment_available(deployment)
    if observed.available:
        _waiting.discard(uid)
    else:
        _waiting.add(uid)
    cluster_ip = ((service or {}).get("spec") or {}).get("clusterIP")
    observed.url = manifests.backend_url(name, namespace, parsed, cluster_ip)
    if observed.available and observed.url:
        _register(body, observed, parsed, api_key, auth, uid, name, namespace, (observed.generation, digest, observed.url), light)
    if not light:
        DRIFT.track(uid, len(parsed.label_studio.projects), time.monotonic())
    if parsed.prelabel is not None:
        current = status.get("prelabel")
        observed.prelabel = prelabel.condition(current, parsed.prelabel.paused)
        if parsed.prelabel.paused and current and current.get("phase") != "Paused":
            patch.status["prelabel"] = {"phase": "Paused"}
    elif status.get("prelabel"):
        patch.status["prelabel"] = None  # the section was removed: pre-labeling is off
    body_status = reconcile.status(observed, previous)
    _patch_status(patch, status, body_status)
    ready = reconcile.condition(body_status, "Ready")
    metrics.READY.labels(namespace, name).set(1 if ready["status"] == "True" else 0)
    for cond in body_status["conditions"]:
        if cond["status"] == "False" and cond["type"] != "Ready":
            metrics.ERRORS.labels(cond["reason"]).inc()
    if ready["status"] != "True":
        if timer or not observed.available:  # checked again at the timer's next tick, not a drift period later
            DRIFT.recheck(uid)  # (and a Deployment becoming Available wakes it at once)
            return
        # Retried with backoff; the resync timer keeps checking afterwards too.
        raise kopf.TemporaryError(f"not ready: {ready['reason']}: {ready['message']}", delay=min(backoff(retry), 30))


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_change(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, retry: int, **_: Any) -> None:
    reconcile_backend(body, meta, spec, status, patch, retry)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
    """Drift repair: a registration deleted or edited in Label Studio, a new ClusterIP, a rotated key.
    Ticks every RESYNC_SECONDS; checks only when DRIFT says this resource is due and within budget
    (a light check: the registrations listed; every PRELABEL_DRIFT_FULL_EVERY-th, a full one).
    A resource the check finds not Ready is checked again at the next tick."""
    if meta.get("deletionTimestamp"):
        return
    kind = DRIFT.claim(meta["uid"], time.monotonic())
    if kind is None:
        return
    try:
        reconcile_backend(body, meta, spec, status, patch, retry=0, timer=True, light=kind == "light")
    except kopf.PermanentError:
        pass


@kopf.index(GROUP, VERSION, PLURAL)
def mlbackends_by_uid(uid: str, body: kopf.Body, **_: Any) -> dict[str, kopf.Body]:
    """Each MLBackend as last seen, by UID: what a Deployment's event reconciles (its owner)."""
    return {uid: body}


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": manifests.MANAGED_BY})
def deployment_event(body: kopf.Body, **kwargs: Any) -> None:
    """A backend's Deployment changed: reconcile its MLBackend at once when the Deployment became
    Available while the MLBackend waited for it (then it registers), or stopped being Available
    while the MLBackend says it is (then its status says so): not a retry or a drift period later."""
    deployment = dict(body)
    owner = manifests.owner_uid(deployment)
    if owner is None:
        return
    available = reconcile.deployment_available(deployment)[0]
    index: kopf.Index[str, kopf.Body] = kwargs["mlbackends_by_uid"]  # kopf passes each index by its function's name
    with _lock_for(owner):  # a reconcile running now decides first whether it waits
        for backend in index.get(owner, []):
            if backend.meta.get("deletionTimestamp"):
                continue  # being deregistered: nothing to bring up
            said = reconcile.condition(dict(backend.status), "Available").get("status") == "True"
            if (available and owner in _waiting) or (not available and said and owner not in _waiting):
                metrics.WAKEUPS.inc()
                _reconcile_now(backend)


def _reconcile_now(body: kopf.Body) -> None:
    """reconcile_backend outside kopf's handling of the MLBackend: its status patched here."""
    meta = body.meta
    patch = kopf.Patch()
    try:
        reconcile_backend(body, meta, body.spec, body.status, patch, retry=0, timer=True)
    except (kopf.PermanentError, kopf.TemporaryError):
        DRIFT.recheck(meta["uid"])  # the status says why; the timer tries again
    if patch.get("status"):
        try:
            kube.patch_status(GROUP, VERSION, PLURAL, meta["namespace"], meta["name"], dict(patch["status"]))
        except kube.KubeError as exc:  # e.g. deleted meanwhile: the timer or kopf's own handlers take it from here
            logging.getLogger(__name__).warning("status of %s/%s not written: %s", meta["namespace"], meta["name"], exc.message)
            DRIFT.recheck(meta["uid"])


@kopf.on.delete(GROUP, VERSION, PLURAL)
def deregister(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, retry: int, **_: Any) -> None:
    """Removes this resource's registrations (and their webhooks) unless deletionPolicy is Orphan.
    To let go while Label Studio is unreachable: set spec.deletionPolicy to Orphan."""
    DRIFT.forget(meta["uid"])  # the timer checks no deleted resource
    _remembered.pop(meta["uid"], None)
    try:
        parsed = MLBackendSpec.parse(dict(spec))
    except SpecError:
        return  # never registered anything
    if parsed.deletion_policy == "Orphan":
        kopf.info(body, reason="Orphaned", message="left the Label Studio registrations in place (deletionPolicy: Orphan)")
        return
    hint = "; to let go without deregistering, set spec.deletionPolicy: Orphan"
    try:
        api_key = _secrets(meta["namespace"], parsed)[0]
        client = Client(parsed.label_studio.url, api_key)
        removed = 0
        for ref in parsed.label_studio.projects:
            try:
                project_id = client.resolve(ref).id
            except LabelStudioError as exc:
                if exc.reason == "ProjectNotFound":
                    continue
                raise
            existing = client.registrations(project_id)
            mine = ours(existing, meta["uid"])
            for registration_id in mine:
                client.remove(project_id, registration_id)
                metrics.REGISTRATIONS.labels("delete").inc()
                removed += 1
            if not mine:
                # An earlier pass died between deleting the registration and its webhook (a killed
                # operator): the webhook is still ours, by its owner header or its address.
                released = {str(status["url"])} if status.get("url") else set()
                client.tidy_webhooks(project_id, meta["uid"], {r.url for r in existing}, released, None)
    except kube.KubeError as exc:
        raise kopf.TemporaryError(exc.message + hint, delay=backoff(retry)) from None
    except LabelStudioError as exc:
        patch.status["conditions"] = [{"type": "Ready", "status": "False", "reason": "Deregistering", "message": exc.message + hint}]
        raise kopf.TemporaryError(exc.message + hint, delay=backoff(retry)) from None
    with contextlib.suppress(KeyError):  # never reconciled by this process
        metrics.READY.remove(meta["namespace"], meta["name"])
    with _reconciling_guard:
        _reconciling.pop(meta["uid"], None)
    _waiting.discard(meta["uid"])
    kopf.info(body, reason="Deregistered", message=f"removed {removed} registration(s) from Label Studio")


# -- pre-labeling ----------------------------------------------------------------------------------
def prelabel_wanted(spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> bool:
    section = spec.get("prelabel")
    return section is not None and not section.get("paused", False) and not meta.get("deletionTimestamp")


def _prelabel_target(namespace: str, parsed: MLBackendSpec, status: dict[str, Any]) -> tuple[Target | None, str]:
    """Where to pre-label: the registered backend address and the projects it is connected in
    (from status), and the keys (from the Secrets). None and why while the backend is not there yet."""
    url = status.get("url")
    projects = tuple(int(p["id"]) for p in status.get("projects") or [] if p.get("state") == "Connected" and p.get("id") is not None)
    if not url or not projects:
        ready = reconcile.condition(status, "Ready")
        why = f" ({ready.get('reason')}: {ready.get('message')})" if ready.get("status") == "False" else ""
        return None, f"waiting for the backend to be available and registered{why}; retrying in 5s"
    api_key, auth, _ = _secrets(namespace, parsed)
    return Target(parsed.label_studio.url, api_key, url, auth, projects), ""


@kopf.daemon(GROUP, VERSION, PLURAL, when=prelabel_wanted, cancellation_timeout=3.0)
async def prelabel_daemon(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Drives every task of the declared projects toward a prediction of the current model version,
    pass after pass: a pass reads from Label Studio what is left, so it resumes after any restart.
    Async on kopf's loop: it blocks no other resource's handlers. Paused or removed: kopf sets
    `stopped`, no batch starts after that, and kopf cancels what is in flight after 3 s."""
    namespace, name = meta["namespace"], meta["name"]
    last_phase: list[str | None] = [None]

    async def report(progress: prelabel.Progress) -> None:
        if stopped:  # paused or removed: the reconcile now owns what status says
            return
        body_status = prelabel.status(progress, time.monotonic())
        cond = prelabel.condition(body_status, paused=False)
        assert cond is not None
        conditions = reconcile.with_condition(list(status.get("conditions") or []), reconcile.Condition("Prelabeled", *cond),
                                              int(meta.get("generation") or 0))
        full = {key: body_status.get(key) for key in prelabel.STATUS_KEYS}  # None removes what no longer applies
        await asyncio.to_thread(kube.patch_status, GROUP, VERSION, PLURAL, namespace, name, {"prelabel": full, "conditions": conditions})
        phase = body_status["phase"]
        if phase != last_phase[0]:
            if phase == "Progressing" and last_phase[0] != "Progressing":
                kopf.info(body, reason="PrelabelStarted", message=f"pre-labeling {body_status['pending']} task(s) with {progress.model_version}")
            elif phase == "Complete":
                kopf.info(body, reason="PrelabelComplete", message=cond[2])
            elif phase == "Failed":
                kopf.warn(body, reason="PrelabelFailed", message=cond[2])
            last_phase[0] = phase

    driver = Driver(namespace, name, report)
    outages = 0
    while not stopped:
        try:
            parsed = MLBackendSpec.parse(dict(spec))
            section = parsed.prelabel or PrelabelSpec()
            target, waiting = await asyncio.to_thread(_prelabel_target, namespace, parsed, dict(status))
            if target is None:
                driver.progress.message = waiting
                await report(driver.progress)
                await stopped.wait(5)
                continue
            delay = await driver.run_pass(target, section, stopped)
            outages = 0
        except (Outage, kube.KubeError, SpecError) as exc:
            outages += 1
            delay = min(60.0, backoff(outages - 1) / 2)
            message = exc.message if isinstance(exc, kube.KubeError) else str(exc)
            driver.progress.message = f"{message}; retrying in {delay:.0f}s"
            metrics.ERRORS.labels("PrelabelOutage").inc()
            with contextlib.suppress(kube.KubeError):
                await report(driver.progress)
            await stopped.wait(delay)
            continue
        await stopped.wait(section.poll_seconds if delay is None else delay)
