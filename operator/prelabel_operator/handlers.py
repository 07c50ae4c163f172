"""kopf wiring only: decorators, kopf's arguments into the use cases (reconciler, prelabel_driver),
their Outcomes into status patches, Events and kopf's errors. Nothing here decides or calls out.

create/update/resume, a resync timer and a backend Deployment's availability change run the same
reconcile; delete deregisters (finalizer). A daemon per MLBackend with spec.prelabel (and not
paused) drives pre-labeling; kopf stops it when the section is removed or paused, or the resource is
deleted. A timer per MLBackend with spec.training runs the training loop (training_loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import os
import time
from typing import Any, cast

import kopf

from . import drift, kube, manifests, prelabel_driver, startup
from .backend_client import Backend
from .labelstudio import Client
from .memory import Memory
from .reconciler import DEREGISTER_SETTLE, DEREGISTER_TIMEOUT, Outcome, Reconciler, Resource
from .status import Event, trained, with_condition
from .training_loop import TrainingLoop, merge_patch

GROUP, VERSION, PLURAL = "prelabel.dev", "v1alpha1", "mlbackends"
RESYNC_SECONDS = float(os.environ.get("PRELABEL_RESYNC_SECONDS", "30"))
# Drift checks share a budget of Label Studio requests (drift.py): each resource is checked every
# max(RESYNC_SECONDS, its share of the budget) seconds; the timer ticks every RESYNC_SECONDS.
DRIFT = drift.Schedule(rate=float(os.environ.get("PRELABEL_DRIFT_REQUESTS_PER_SECOND", "0.8")), interval=RESYNC_SECONDS,
                       full_every=int(os.environ.get("PRELABEL_DRIFT_FULL_EVERY", "10")))
# One Label Studio client (one pool of kept-alive connections) per Label Studio and key, shared by all
# resources: a new one per reconcile opened a connection per pass.
CLIENTS = functools.lru_cache(maxsize=64)(Client)
MEMORY = Memory(DRIFT)


def _adopt(obj: dict[str, Any], owner: Any) -> None:
    kopf.adopt(obj, owner=cast(kopf.Body, owner))


RECONCILER = Reconciler(kube=kube.API(), label_studio=CLIENTS, backend=Backend(), memory=MEMORY, adopt=_adopt,
                        deregister_timeout=float(os.environ.get("PRELABEL_DEREGISTER_TIMEOUT_SECONDS", DEREGISTER_TIMEOUT)),
                        deregister_settle=float(os.environ.get("PRELABEL_DEREGISTER_SETTLE_SECONDS", DEREGISTER_SETTLE)))
TRAINING = TrainingLoop(kube=kube.API(), label_studio=CLIENTS, backend=Backend(), memory=MEMORY, adopt=_adopt)
# The training timer's tick: a running Job is followed at each; annotations are counted every spec.training.checkSeconds.
TRAINING_TICK_SECONDS = float(os.environ.get("PRELABEL_TRAINING_TICK_SECONDS", "5"))


def _resource(body: kopf.Body) -> Resource:
    meta = body.meta
    deleted = meta.get("deletionTimestamp")
    return Resource(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"], generation=int(meta.get("generation") or 0),
                    spec=body.spec, status=body.status, body=body, deleting=bool(deleted),
                    deleted_at=dt.datetime.fromisoformat(deleted.replace("Z", "+00:00")).timestamp() if deleted else None)


def _emit(body: kopf.Body, events: list[Event]) -> None:
    for event in events:
        (kopf.warn if event.warning else kopf.info)(body, reason=event.reason, message=event.message)


def _hand_to_kopf(body: kopf.Body, patch: kopf.Patch, outcome: Outcome) -> None:
    """The Outcome as kopf takes it: status patched, Events posted, and an error to retry or give up."""
    patch.status.update(outcome.status)
    _emit(body, outcome.events)
    if outcome.permanent:
        raise kopf.PermanentError(outcome.error)
    if outcome.retry_in is not None:
        raise kopf.TemporaryError(outcome.error, delay=outcome.retry_in)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    startup.configure(settings)


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_change(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
    _hand_to_kopf(body, patch, RECONCILER.reconcile(_resource(body), retry))


@kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
def resync(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    """Drift repair: a registration deleted or edited in Label Studio, a new ClusterIP, a rotated key.
    Ticks every RESYNC_SECONDS; checks only when DRIFT says this resource is due and within budget
    (a light check: the registrations listed; every PRELABEL_DRIFT_FULL_EVERY-th, a full one).
    A resource the check finds not Ready is checked again at the next tick."""
    if meta.get("deletionTimestamp"):
        return
    kind = DRIFT.claim(meta["uid"], time.monotonic())
    if kind is None:
        return
    outcome = RECONCILER.reconcile(_resource(body), timer=True, light=kind == "light")
    outcome.permanent = False  # an invalid spec: its status says so; the timer has nothing to give up
    _hand_to_kopf(body, patch, outcome)


@kopf.index(GROUP, VERSION, PLURAL)
def mlbackends_by_uid(uid: str, body: kopf.Body, **_: Any) -> dict[str, kopf.Body]:
    """Each MLBackend as last seen, by UID: what a Deployment's event reconciles (its owner)."""
    return {uid: body}


@kopf.on.event("apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": manifests.MANAGED_BY})
def deployment_event(body: kopf.Body, **kwargs: Any) -> None:
    """A backend's Deployment changed: reconcile its MLBackend at once when that matters (reconciler.wakes)."""
    deployment = dict(body)
    owner = manifests.owner_uid(deployment)
    if owner is None:
        return
    index: kopf.Index[str, kopf.Body] = kwargs["mlbackends_by_uid"]  # kopf passes each index by its function's name
    with RECONCILER.memory.lock(owner):  # a reconcile running now decides first whether it waits
        for backend in index.get(owner, []):
            resource = _resource(backend)
            if RECONCILER.wakes(owner, deployment, resource):
                write = functools.partial(kube.patch_status, GROUP, VERSION, PLURAL, resource.namespace, resource.name)
                _emit(backend, RECONCILER.wake(resource, write).events)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def deregister(body: kopf.Body, patch: kopf.Patch, retry: int, **_: Any) -> None:
    """Removes this resource's registrations (and their webhooks) unless deletionPolicy is Orphan; lets
    go within PRELABEL_DEREGISTER_TIMEOUT_SECONDS when it cannot, saying what is left (reconciler.deregister).
    Its rechecks wait on kopf's loop (PRELABEL_DEREGISTER_SETTLE_SECONDS apart), holding no worker thread."""
    resource = _resource(body)
    outcome = await asyncio.to_thread(RECONCILER.deregister, resource, retry)
    recheck = 0
    while outcome.again_in is not None:
        _emit(body, outcome.events)
        await asyncio.sleep(outcome.again_in)
        recheck += 1
        outcome = await asyncio.to_thread(RECONCILER.deregister, resource, retry, recheck)
    _hand_to_kopf(body, patch, outcome)


def training_wanted(spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> bool:
    return spec.get("training") is not None and not meta.get("deletionTimestamp")


@kopf.timer(GROUP, VERSION, PLURAL, interval=TRAINING_TICK_SECONDS, when=training_wanted)
def train(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    """The training loop (training_loop.TrainingLoop.step): status.training and the Trained condition;
    a promotion reconciles at once, so the Deployment rolls to the new version."""
    resource = _resource(body)
    step = TRAINING.step(resource)
    _emit(body, step.events)
    if step.training is None:
        return
    before = dict(body.status.get("training") or {})
    patch.status["training"] = merge_patch(before, step.training)
    condition = trained(step.training)
    if condition:
        patch.status["conditions"] = with_condition(list(body.status.get("conditions") or []), condition, resource.generation)
    if step.promoted:
        promoted = dataclasses.replace(resource, status={**dict(body.status), "training": step.training})
        outcome = RECONCILER.reconcile(promoted, timer=True)
        patch.status.update(outcome.status)
        _emit(body, outcome.events)


def prelabel_wanted(spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> bool:
    section = spec.get("prelabel")
    return section is not None and not section.get("paused", False) and not meta.get("deletionTimestamp")


@kopf.daemon(GROUP, VERSION, PLURAL, when=prelabel_wanted, cancellation_timeout=3.0)
async def prelabel_daemon(body: kopf.Body, meta: kopf.Meta, spec: kopf.Spec, status: kopf.Status, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Pre-labeling (prelabel_driver.run). Async on kopf's loop: it blocks no other resource's
    handlers. Paused or removed: kopf sets `stopped`, no batch starts after that, and kopf cancels
    what is in flight after 3 s."""
    namespace, name = meta["namespace"], meta["name"]

    async def patch_status(body_status: dict[str, Any]) -> None:
        await asyncio.to_thread(kube.patch_status, GROUP, VERSION, PLURAL, namespace, name, body_status)

    async def scale(replicas: int) -> None:
        await asyncio.to_thread(kube.scale, namespace, manifests.object_name(name), replicas)

    resource = prelabel_driver.Resource(namespace, name, spec, status, meta, functools.partial(RECONCILER.prelabel_keys, namespace),
                                        patch_status, lambda event: _emit(body, [event]), scale)
    await prelabel_driver.run(resource, stopped)
