"""Pre-labeling I/O: pages the tasks still lacking a prediction out of Label Studio, sends them to the
backend's /predict in batches (bounded concurrency, spread over its pods by the Service), and imports
the predictions into Label Studio in bulk. `prelabel` decides; this module only talks.

Async (httpx, label-studio-sdk's AsyncLabelStudio) on kopf's event loop: a 100k-task run holds no
thread, so the reconciles and timers of other MLBackends run beside it.

Storage path (measured in bench/prelabel_bench.py): direct /predict plus Label Studio's bulk
prediction import, rather than Label Studio's own "retrieve predictions" action per batch: it is the
faster of the two, and it sees each task's failure reason, which the action drops (it stores an
empty prediction, or nothing, and answers 200 either way).

No duplicates: a task is in at most one batch at a time (one driver per MLBackend; pages follow an
id cursor), each prediction goes into exactly one import request, and a failed import is never
retried blindly: the next pass reads back from Label Studio which tasks still lack one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# The SDK's generated client, as in labelstudio.py (label_studio_sdk.AsyncLabelStudio's extensions
# would bring pandas into the image); tasks are listed with fields="all" as that extension does, and
# resolve_uri=False: Label Studio's default resolves every listed task's media URLs (a presigned link
# per cloud-storage task, label-studio-sdk #658); the backend resolves what it fetches itself, as it
# does for the tasks Label Studio sends it (unresolved).
import httpx
from label_studio_sdk import PredictionRequest
from label_studio_sdk.base_client import AsyncLabelStudioBase as AsyncLabelStudio

from . import backend_client, metrics, prelabel, sleep
from .errors import BackendUnreachable, KubeError, key_refused
from .keys import Keys
from .prelabel import Attempts, Mismatch, Progress, Sorted, done_query, pending_query, scope_query, sort_results
from .spec import MLBackendSpec, PrelabelSpec, ProjectSelector, SpecError
from .status import Event, with_condition

log = logging.getLogger(__name__)
PAGE_SIZE = 200  # task ids per Data Manager page: small enough for a quick query, large enough to pipeline
SAMPLE_PAGE_SIZE = 1000  # task ids per page when a sample lists the whole subset and its done tasks
# Label Studio 1.23's default import path recounts every task of the project per request: few,
# large requests. IMPORT_LATENCY bounds how long a prediction waits before it is stored (and counted).
IMPORT_MIN, IMPORT_LATENCY = 250, 2.0
REPORT_EVERY = 2.0  # seconds between status writes while progressing
WAKE_GRACE = 300.0  # seconds after a wake during which an unreachable backend is scaled up again
RETENTION_TIMEOUT = 600  # seconds: Label Studio deletes a version's predictions in one request, a row at a time


class Outage(Exception):
    """Label Studio or the backend cannot be reached (or answers 5xx): the pass stops and is retried
    with backoff; no task is counted as failed for it."""


@dataclass(frozen=True)
class Target:
    label_studio_url: str
    api_key: str
    backend_url: str
    backend_auth: tuple[str, str] | None
    projects: tuple[int, ...]
    title: str = "prelabel"  # the registration's title: the projects' model_version while the backend is awake
    selector: ProjectSelector | None = None  # spec.labelStudio.projectSelector, if it selects the projects


Report = Callable[[Progress], Awaitable[None]]


@dataclass
class Tally:
    """One pass's answers: predictions queued for storing, stale tasks and the versions they carried;
    `stop` once a batch came back wholly stale before anything was stored (Mismatch)."""

    stored: int = 0
    stale: int = 0
    answered: set[str] | None = None
    stop: bool = False


@dataclass
class Plan:
    """One project's part of a pass: its model version, the subset's Data Manager filter items
    (prelabel.subset_filters) and, with spec.prelabel.subset.sample, the sampled task ids (from the last count)."""

    version: str
    subset: list[dict[str, Any]]
    chosen: set[int] | None = None


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Driver:
    """One MLBackend's pre-labeling. `run_pass` brings every declared project up to date once and
    returns; the caller (the kopf daemon) loops, sleeping between passes and stopping when asked."""

    def __init__(self, namespace: str, name: str, report: Report) -> None:
        self.namespace, self.name, self.report = namespace, name, report
        self.progress = Progress()
        self.attempts: Attempts | None = None
        self.mismatch = Mismatch()
        self._tally = Tally()
        self._last_report = 0.0
        self._credentials: tuple[str, tuple[str, str] | None] | None = None
        self.last_predict = time.monotonic()  # when a /predict was last sent (scaleToZero's idle time counts from it)
        self.woken_at = -WAKE_GRACE  # when it last woke the backend (scaleToZero)
        self.configs: dict[int, str] = {}  # each project's labeling config, as the last pass read it
        self.versions: dict[int, str] = {}  # each project's model version, as the last pass asked it
        self.asleep: sleep.Asleep | None = None  # this daemon's own word (kopf's view of status may lag its patch)
        self.shown: dict[int, str] = {}  # the model version each project names while the backend sleeps (go_to_sleep)
        self.restore_title = False  # woken: set the projects' model_version back to the title after the first pass

    def _renew_attempts(self, target: Target, spec: PrelabelSpec) -> Attempts:
        """Fresh tries for every task when maxAttempts or the keys changed: a task that failed for good
        under a key since replaced (a personal access token rotated in Label Studio: the backend's media
        fetches were refused) is worth trying with the new one."""
        credentials = (target.api_key, target.backend_auth)
        if self.attempts is None or self.attempts.max_attempts != spec.max_attempts or credentials != self._credentials:
            self.attempts = Attempts(spec.max_attempts)
        self._credentials = credentials
        # A project no longer served (removed, or out of a selector) takes its failed tasks along.
        self.attempts.tasks = {t: a for t, a in self.attempts.tasks.items() if a.project in target.projects}
        return self.attempts

    async def run_pass(self, target: Target, spec: PrelabelSpec, stopped: Any) -> float | None:
        """One pass over every project. Returns the seconds until the next pass is worth making: soon
        when tasks were left (added meanwhile, or answered by a pod of another model version), when a
        failed task is due again, or None when nothing is left (then poll). Raises Outage when Label
        Studio or the backend is down."""
        attempts = self._renew_attempts(target, spec)
        auth = httpx.BasicAuth(*target.backend_auth) if target.backend_auth else None
        async with (httpx.AsyncClient(base_url=target.backend_url, auth=auth, headers=backend_client.BATCH_HEADERS,
                                      timeout=httpx.Timeout(600, connect=10)) as backend,
                    httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10)) as ls_http):
            ls = AsyncLabelStudio(base_url=target.label_studio_url, api_key=target.api_key, httpx_client=ls_http)
            counts, skipped = [], []
            plans: dict[int, Plan] = {}
            self._tally = Tally(answered=set())
            for project_id in target.projects:
                version, refusal = await self._version(ls, backend, project_id, spec)
                subset: list[dict[str, Any]] = []
                if not refusal:
                    subset, refusal = await self._subset(ls, project_id, spec)
                if refusal:  # nothing in this project's config to predict (yet): ConfigCompatible says why
                    skipped.append(f"project {project_id} skipped: {refusal}")
                    continue
                plans[project_id] = Plan(version, subset)
                self.versions[project_id] = version
                counts.append((project_id, version, *await self._count(ls, project_id, spec, plans[project_id])))
            self._start_run_if_new(counts)
            for version in sorted({plan.version for plan in plans.values()}):
                self.progress.served_versions = prelabel.served(self.progress.served_versions, version)
            for project_id, _, _, _ in counts:
                if stopped:
                    return None
                await self._project(ls, backend, project_id, plans[project_id], spec, stopped)
            # Read the counts back from Label Studio: what is stored is the truth, not what we sent.
            counts = [(p, v, *await self._count(ls, p, spec, plans[p])) for p, v, _, _ in counts]
            keep = spec.keep_model_versions
            if keep is not None and len(self.progress.served_versions) > keep:
                current = {plan.version for plan in plans.values()}
                for project_id, version, total, done in counts:
                    # Only once nothing is left to predict in the project's scope (done, or failed for good).
                    if version and done + len(attempts.given_up(project_id)) >= total and not stopped:
                        skipped += await self._prune(ls, project_id, keep, version, current)
        self._set_counts(counts)
        self.progress.message = "; ".join(skipped)
        self.mismatch.record(self._tally.stored, self._tally.stale, self._tally.answered or set())
        fault = self.mismatch.fault(self.progress.model_version)
        if fault and fault != self.progress.fault:
            log.warning("%s/%s: %s", self.namespace, self.name, fault)
        self.progress.fault = fault
        await self._report(force=True)
        backing_off = self.mismatch.delay()
        if backing_off is not None:
            return backing_off
        if self.progress.pending > len(attempts.retrying()):
            return 1.0
        return attempts.next_retry(time.monotonic())

    # -- Label Studio and backend calls --------------------------------------------------------
    async def _version(self, ls: AsyncLabelStudio, backend: httpx.AsyncClient, project_id: int, spec: PrelabelSpec) -> tuple[str, str]:
        """(the backend's model version for this project's labeling config, "") from its /setup answer
        (read as the reconcile reads it: backend_client), or ("", why) when the config has nothing the
        backend predicts (e.g. not set yet). A backend that reports no version (a foreign one may not)
        is served with KeepExisting only: Repredict cannot tell its current predictions."""
        project = await _ls(ls.projects.get(project_id), f"read project {project_id}")
        self.configs[project_id] = project.label_config or ""
        try:
            check = await backend_client.check_config(backend, project_id, project.label_config or "")
        except BackendUnreachable as exc:
            raise Outage(str(exc)) from None
        if check.compatible is False:
            return "", f"the backend serves no control of its labeling config: {check.message}"
        if check.compatible is None:
            raise Outage(f"the {check.message}")
        if not check.model_version:
            if spec.on_new_model_version == "KeepExisting":
                return "", ""
            raise Outage("the backend's /setup answered no model_version, so no prediction can be told current: "
                         "set spec.prelabel.onNewModelVersion: KeepExisting")
        return check.model_version, ""

    async def go_to_sleep(self, target: Target, generation: int, status: Mapping[str, Any]) -> sleep.Asleep:
        """Before the backend scales to zero: each project's model_version set to the version its tasks
        hold, so Label Studio shows their pre-labels from its database without calling the backend (with
        the registration's title, its label stream asks the backend at each task: a sleeping one answers
        nothing; sleep.shown_version picks one Label Studio accepts). A project that cannot be set keeps
        the title and is logged: it does not hold the sleep back. Returns what status.sleep is to hold."""
        self.shown = {}
        async with _label_studio(target) as ls:
            for project_id in target.projects:
                try:
                    counts = await self._model_versions(ls, project_id)
                    shown = sleep.shown_version(self.versions.get(project_id, ""), self.progress.served_versions, counts)
                    if shown:
                        await _ls(ls.projects.update(project_id, model_version=shown), f"set the model version of project {project_id}")
                        self.shown[project_id] = shown
                except Outage as exc:
                    log.warning("%s/%s: project %s keeps its model version while the backend sleeps: %s", self.namespace, self.name, project_id, exc)
            selection = await self._selection(ls, target.selector)
        configs = {p: self.configs.get(p, "") for p in target.projects}
        return sleep.Asleep(sleep.now(), generation, sleep.configs_digest(configs), sleep.serving_version(status),
                            self.progress.model_version, selection)

    async def wake_up(self, target: Target) -> None:
        """Woken, once the backend answers again: the projects' model_version back to the registration's
        title (what the reconcile keeps while the backend is awake; before, Label Studio would ask a
        backend still starting for each task opened)."""
        async with _label_studio(target) as ls:
            for project_id in target.projects:
                with contextlib.suppress(Outage):  # a project gone meanwhile: the reconcile says so
                    await _ls(ls.projects.update(project_id, model_version=target.title), f"set the model version of project {project_id}")

    async def wake_reason(self, target: Target, spec: PrelabelSpec, found: sleep.Asleep, status: Mapping[str, Any]) -> str:
        """Asleep (spec.prelabel.scaleToZero): why the backend must wake (sleep.wake_reason), from Label
        Studio alone: the projects' labeling configs, the projects a selector matches, and the tasks in
        scope that hold no prediction of the version(s) they held when it went to sleep, less those that
        failed for good (after an operator restart, those wake it once more)."""
        from label_studio_sdk.core.api_error import ApiError

        configs: dict[int, str] = {}
        pending = 0
        async with _label_studio(target) as ls:
            for project_id in target.projects:
                try:
                    project = await ls.projects.get(project_id)
                except ApiError as exc:
                    if exc.status_code == 404:
                        return f"project {project_id} is gone from Label Studio"
                    project = await _ls(_raise(exc), f"read project {project_id}")
                except (httpx.HTTPError, OSError) as exc:
                    raise Outage(f"Label Studio unreachable while trying to read project {project_id}: {type(exc).__name__}") from None
                configs[project_id] = project.label_config or ""
                if project_id in self.shown and project.model_version != self.shown[project_id]:
                    # A reconcile that ran as the backend went to sleep set the title back: name the version again.
                    with contextlib.suppress(Outage):
                        await _ls(ls.projects.update(project_id, model_version=self.shown[project_id]), f"set the model version of project {project_id}")
                subset, refusal = await self._subset(ls, project_id, spec)
                if refusal:
                    continue
                counts = [await self._count(ls, project_id, spec, Plan(version, subset)) for version in found.versions() or [""]]
                failed = len(self.attempts.given_up(project_id)) if self.attempts else 0
                pending += max(0, counts[0][0] - max(done for _, done in counts) - failed)
            selection = await self._selection(ls, target.selector)
        return sleep.wake_reason(found, sleep.configs_digest(configs), status, pending, selection)

    async def _selection(self, ls: AsyncLabelStudio, selector: ProjectSelector | None) -> str:
        """With a projectSelector: sleep.selection_digest of the projects its title pattern matches (pages
        of Label Studio's project list); "" without one."""
        if selector is None:
            return ""

        async def matching() -> list[int]:
            return [int(p.id) async for p in await ls.projects.list(page_size=100) if selector.matches(str(p.title or ""))]

        return sleep.selection_digest(await _ls(matching(), "list projects"))

    async def _model_versions(self, ls: AsyncLabelStudio, project_id: int) -> dict[str, int]:
        """Label Studio's predictions per model version in one project (its model-versions endpoint)."""
        present = await _raw(ls, "GET", f"api/projects/{project_id}/model-versions/", f"read the model versions of project {project_id}")
        return {str(v): int(n) for v, n in present.items()} if isinstance(present, dict) else {}

    async def _prune(self, ls: AsyncLabelStudio, project_id: int, keep: int, version: str, current: set[str]) -> list[str]:
        """spec.prelabel.retention in one project serving `version`: Label Studio's model-versions
        counts (one request), then per version to prune (prelabel.to_prune) a count of the tasks that
        would lose their only pre-label (any scope: Label Studio deletes project-wide; the version waits
        while there are any), then the delete, one transaction in Label Studio: a pass stopped midway
        resumes at the next version. Label Studio then clears the project's model_version when it names
        this backend (Project.should_none_model_version): what it was is set back at once. Returns why
        versions were kept (status.prelabel.message)."""
        path = f"api/projects/{project_id}/model-versions/"
        counts = await self._model_versions(ls, project_id)
        named: str | None = None  # the project's model_version before the first delete
        deleted_here: set[str] = set()
        kept: list[str] = []
        try:
            for old in prelabel.to_prune(self.progress.served_versions, keep, counts, current):
                if version in old:  # Label Studio matches versions as substrings: "1.0" in "1.0-rc1" hides who holds only "1.0-rc1"
                    kept.append(f"model version {old!r} kept in project {project_id}: its name contains the current one's")
                    continue
                left = await _ls(ls.tasks.list(project=project_id, query=prelabel.superseded_query(old, version), page_size=1, include="id",
                                               fields="all", resolve_uri=False), f"count the tasks of project {project_id} holding only {old!r}")
                if int(left.response.total):
                    kept.append(f"model version {old!r} kept in project {project_id}: {left.response.total} task(s) hold it and no "
                                f"prediction of {version!r} (outside the scope, failed, or KeepExisting)")
                    continue
                if named is None:
                    named = str((await _ls(ls.projects.get(project_id), f"read project {project_id}")).model_version or "")
                deleted_here.add(old)
                answer = await _raw(ls, "DELETE", path, f"delete the predictions of model version {old!r} in project {project_id}",
                                    json={"model_version": old})
                deleted = int(answer.get("deleted_predictions") or 0) if isinstance(answer, dict) else 0
                self.progress.pruned += deleted
                self.progress.pruned_versions = prelabel.pruned(self.progress.pruned_versions, old)
                metrics.PRELABEL_TASKS.labels("pruned").inc(deleted)
                log.info("%s/%s: deleted %d prediction(s) of model version %r from project %s (spec.prelabel.retention)",
                         self.namespace, self.name, deleted, old, project_id)
        finally:  # also after a delete whose answer was lost: Label Studio may have cleared it
            if named and named not in deleted_here:
                await _ls(ls.projects.update(project_id, model_version=named), f"set the model version of project {project_id}")
        return kept

    async def _subset(self, ls: AsyncLabelStudio, project_id: int, spec: PrelabelSpec) -> tuple[list[dict[str, Any]], str]:
        """(the subset's filter items for this project, "") or ([], why the project is skipped): a
        spec.prelabel.subset.view read from the project's Data Manager tabs (one request)."""
        view = spec.subset.view
        if view is None:
            return prelabel.subset_filters(spec), ""
        views = await _ls(ls.views.list(project=project_id), f"list the Data Manager tabs of project {project_id}")
        found = [v for v in views if (v.id == view if isinstance(view, int) else (v.data or {}).get("title") == view)]
        if not found and isinstance(view, str) and view.isdigit():  # an id written quoted ("12"): no tab has that title
            found = [v for v in views if v.id == int(view)]
        if not found:
            return [], f"it has no Data Manager tab {'with id' if isinstance(view, int) else 'titled'} {view!r} (spec.prelabel.subset.view)"
        try:
            return prelabel.subset_filters(spec, dict(found[0].data or {})), ""
        except ValueError as exc:
            return [], f"its Data Manager tab {view!r}: {exc}"

    async def _count(self, ls: AsyncLabelStudio, project_id: int, spec: PrelabelSpec, plan: Plan) -> tuple[int, int]:
        """(tasks in scope, of which done) in one project, from Label Studio's Data Manager: two counts,
        or with a sample, every task of the subset listed by pages (which also draws the sample)."""
        if spec.subset.sample is not None:
            return await self._count_sample(ls, project_id, spec, plan, spec.subset.sample)
        total = await _ls(ls.tasks.list(project=project_id, query=scope_query(spec, plan.subset), page_size=1, include="id", fields="all",
                                        resolve_uri=False), "count tasks")
        done = await _ls(ls.tasks.list(project=project_id, query=done_query(spec, plan.version, plan.subset), page_size=1, include="id",
                                       fields="all", resolve_uri=False), "count predicted tasks")
        return int(total.response.total), int(done.response.total)

    async def _count_sample(self, ls: AsyncLabelStudio, project_id: int, spec: PrelabelSpec, plan: Plan, n: int) -> tuple[int, int]:
        """Draws the sample from the subset's ids, and counts its done tasks with done_query: Label
        Studio's own filter, as every other count (its listed text of versions is cut and unordered)."""
        subset = await self._ids(ls, project_id, lambda after_id: scope_query(spec, plan.subset, after_id), "sample")
        done = await self._ids(ls, project_id, lambda after_id: done_query(spec, plan.version, plan.subset, after_id), "count the sampled")
        plan.chosen = prelabel.sample(subset, n, f"{self.namespace}/{self.name}")
        return len(plan.chosen), len(plan.chosen & done)

    async def _ids(self, ls: AsyncLabelStudio, project_id: int, query: Callable[[int], str], purpose: str) -> set[int]:
        """Every task id a query selects, by pages of SAMPLE_PAGE_SIZE on an id cursor."""
        ids: set[int] = set()
        after_id = 0
        while True:
            page = await _ls(ls.tasks.list(project=project_id, query=query(after_id), page_size=SAMPLE_PAGE_SIZE, include="id",
                                           fields="all", resolve_uri=False), f"list the tasks of project {project_id} to {purpose}")
            tasks = list(page.items or [])
            if not tasks:
                return ids
            ids |= {int(t.id) for t in tasks}
            after_id = max(int(t.id) for t in tasks)

    async def _project(self, ls: AsyncLabelStudio, backend: httpx.AsyncClient, project_id: int, plan: Plan,
                       spec: PrelabelSpec, stopped: Any) -> None:
        """Two stages in one task group: pages of tasks lacking a prediction (id cursor) go to /predict
        in batches, at most spec.concurrency at once, the next page read while batches are in flight;
        one importer stores what came back in few, large requests (see `_importer`). A full import
        queue holds the predict slots: memory stays bounded. Any stage failing cancels the others."""
        assert self.attempts is not None
        version = plan.version
        slots = asyncio.Semaphore(spec.concurrency)
        stored: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue(maxsize=2 * spec.concurrency)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._importer(ls, project_id, stored))
                running: set[asyncio.Task[None]] = set()
                after_id = 0
                while not stopped:
                    page = await _ls(ls.tasks.list(project=project_id, query=pending_query(spec, version, after_id, plan.subset), page_size=PAGE_SIZE,
                                                   include="id,data", fields="all", resolve_uri=False), f"list the tasks of project {project_id}")
                    tasks = list(page.items or [])
                    if not tasks:
                        break
                    if self._tally.stop:  # Mismatch: this pass has seen enough
                        break
                    after_id = max(int(t.id) for t in tasks)
                    now = time.monotonic()
                    due = [{"id": int(t.id), "data": t.data or {}} for t in tasks
                           if self.attempts.due(int(t.id), now) and (plan.chosen is None or int(t.id) in plan.chosen)]
                    for start in range(0, len(due), spec.batch_size):
                        await slots.acquire()
                        if stopped or self._tally.stop:
                            slots.release()
                            break
                        batch = due[start:start + spec.batch_size]
                        any_version = spec.on_new_model_version == "KeepExisting"
                        task = group.create_task(self._predict(backend, project_id, version, any_version, batch, stored))
                        running.add(task)
                        task.add_done_callback(running.discard)
                        task.add_done_callback(lambda _: slots.release())
                if running:
                    await asyncio.wait(running)
                await stored.put(None)  # the importer stores what is queued, then ends
        except BaseExceptionGroup as group_error:
            # Not `except*`: CPython 3.11.0-3.11.3 (Debian bookworm's 3.11.2) wraps what such a clause
            # raises in a new ExceptionGroup, which would end the daemon instead of showing the outage.
            outage = _first(group_error, Outage)
            if outage is None:
                raise
            raise outage from None

    async def _importer(self, ls: AsyncLabelStudio, project_id: int, queue: asyncio.Queue[list[dict[str, Any]] | None]) -> None:
        """Stores predictions in bulk: a request once IMPORT_MIN have come back, once the oldest has
        waited IMPORT_LATENCY seconds (progress stays visible), or at the end. A failed request is
        never retried as is: a lost answer may hide a stored batch, so the next pass reads back from
        Label Studio what is missing."""
        batch: list[dict[str, Any]] = []
        oldest = 0.0
        while True:
            wait = None if not batch else max(0.0, oldest + IMPORT_LATENCY - time.monotonic())
            try:
                item = await asyncio.wait_for(queue.get(), wait)
            except TimeoutError:
                item = []  # the oldest waited long enough: store what there is
            if item is None:
                break
            if item and not batch:
                oldest = time.monotonic()
            batch.extend(item)
            if len(batch) >= IMPORT_MIN or (batch and not item):
                await self._import(ls, project_id, batch)
                batch = []
        if batch:
            await self._import(ls, project_id, batch)

    async def _import(self, ls: AsyncLabelStudio, project_id: int, batch: list[dict[str, Any]]) -> None:
        assert self.attempts is not None
        started = time.monotonic()
        stored, refused = await self._store(ls, project_id, batch)
        metrics.PRELABEL_SECONDS.labels("store").observe(time.monotonic() - started)
        for item in stored:
            self.attempts.stored(item["task"])
        self.progress.predicted += len(stored)
        self.progress.stored_this_run += len(stored)
        self.progress.last_progress = _utcnow()
        metrics.PRELABEL_TASKS.labels("predicted").inc(len(stored))
        self._count_failures(project_id, refused)
        await self._report()

    async def _store(self, ls: AsyncLabelStudio, project_id: int, batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
        """(stored, refused with Label Studio's reason) for one bulk import. Label Studio's validator may
        refuse a prediction (label-studio PR #8062): 1.21 to 1.23 drop it from the bulk and answer 201 with
        a smaller `created`; a server may refuse the whole request with 400 and the validator's message.
        Either way the tasks that hold no prediction of the version are read back (so nothing stored is
        sent twice) and imported again in halves, down to one prediction alone: Label Studio's answer to
        that one is its reason. Raises Outage as `_ls` does for anything but a refusal."""
        from label_studio_sdk.core.api_error import ApiError

        message = ""
        try:
            answer = await ls.projects.import_predictions(project_id, request=[PredictionRequest(**item) for item in batch])
            created = len(batch) if answer.created is None else int(answer.created)
        except ApiError as exc:
            if exc.status_code != 400:
                await _ls(_raise(exc), f"import predictions into project {project_id}")
            created, message = 0, prelabel.refusal(exc.body)
        except (httpx.HTTPError, OSError) as exc:
            raise Outage(f"Label Studio unreachable while trying to import predictions into project {project_id}: {type(exc).__name__}") from None
        if created >= len(batch):
            return batch, []
        if len(batch) == 1:
            return [], [(batch[0]["task"], prelabel.refused_reason(message, batch[0].get("result")))]
        version = batch[0]["model_version"]
        holding = await self._holding(ls, project_id, version, [item["task"] for item in batch]) if created else set()
        stored = [item for item in batch if item["task"] in holding]
        rest = [item for item in batch if item["task"] not in holding]
        refused: list[tuple[int, str]] = []
        half = max(1, len(rest) // 2)
        for part in (rest[:half], rest[half:]):
            if part:
                more, lost = await self._store(ls, project_id, part)
                stored += more
                refused += lost
        return stored, refused

    async def _holding(self, ls: AsyncLabelStudio, project_id: int, version: str, task_ids: list[int]) -> set[int]:
        """Which of task_ids hold a prediction of exactly `version`, read back from Label Studio."""
        first, last = min(task_ids), max(task_ids)
        # One page of the whole id range (the SDK's pager would ask for a page past the last, a 404).
        page = await _ls(ls.tasks.list(project=project_id, query=prelabel.holding_query(version, first, last), page_size=last - first + 1,
                                       include="id,predictions_model_versions", fields="all", resolve_uri=False),
                         f"read back the predictions of project {project_id}")
        wanted = set(task_ids)
        # cut_holds: Label Studio's own filter already selected these tasks; a cut text cannot say otherwise.
        return {int(t.id) for t in page.items or []
                if int(t.id) in wanted and prelabel.holds(version, getattr(t, "predictions_model_versions", None), cut_holds=True)}

    def _count_failures(self, project_id: int, failed: list[tuple[int, str]]) -> None:
        assert self.attempts is not None
        now = time.monotonic()
        for task_id, reason in failed:
            metrics.PRELABEL_TASKS.labels("failed_attempt").inc()
            if self.attempts.fail(project_id, task_id, reason, now):
                metrics.PRELABEL_TASKS.labels("failed").inc()
                log.warning("%s/%s: task %s failed for good: %s", self.namespace, self.name, task_id, reason)
        self._refresh_failures()

    async def _predict(self, backend: httpx.AsyncClient, project_id: int, version: str, any_version: bool, tasks: list[dict[str, Any]],
                       stored: asyncio.Queue[list[dict[str, Any]] | None]) -> None:
        """One /predict; its predictions go to the importer's queue, its failures are counted here.
        any_version: store a prediction of any model version (KeepExisting)."""
        assert self.attempts is not None
        ids = [t["id"] for t in tasks]
        started = self.last_predict = time.monotonic()
        answer = await _backend(backend.post("/predict", json={"tasks": tasks, "project": f"{project_id}.0"}), "/predict")
        metrics.PRELABEL_SECONDS.labels("predict").observe(time.monotonic() - started)
        if answer.status_code >= 500 or answer.status_code in (401, 403, 429):
            raise Outage(f"the backend answered HTTP {answer.status_code} to /predict: {_error_text(answer)}")
        if answer.status_code != 200:  # a 4xx names what is wrong with these tasks
            reason = f"the backend refused the batch (HTTP {answer.status_code}): {_error_text(answer)}"
            sorted_ = Sorted(failed=[(t, reason) for t in ids])
        else:
            try:
                body = answer.json()
            except ValueError:
                reason = f"the backend's /predict answer is not JSON (Label Studio's protocol: {{\"results\": [...]}}): {_error_text(answer)}"
                sorted_ = Sorted(failed=[(t, reason) for t in ids])
            else:
                sorted_ = sort_results(ids, body, version, any_version)
        if sorted_.stale and not sorted_.store and not self._tally.stored:
            self._tally.stop = True
        self._tally.stored += len(sorted_.store)
        self._tally.stale += len(sorted_.stale)
        if self._tally.answered is not None:
            self._tally.answered |= sorted_.answered
        if sorted_.store:
            await stored.put(sorted_.store)
        self._count_failures(project_id, sorted_.failed)
        if sorted_.stale:
            log.info("%s/%s: %d task(s) answered by a backend pod of another model version; left for the next pass",
                     self.namespace, self.name, len(sorted_.stale))
        await self._report()

    # -- progress --------------------------------------------------------------------------------
    def _start_run_if_new(self, counts: list[tuple[int, str, int, int]]) -> None:
        versions = ",".join(sorted({v for _, v, _, _ in counts}))
        pending = sum(total - done for _, _, total, done in counts)
        if versions != self.progress.model_version or (pending and self.progress.completed is not None) or self.progress.run_started is None:
            self.progress.run_started, self.progress.run_started_mono = _utcnow(), time.monotonic()
            self.progress.stored_this_run, self.progress.completed = 0, None
            self.progress.model_version = versions
        self._set_counts(counts)

    def _set_counts(self, counts: list[tuple[int, str, int, int]]) -> None:
        assert self.attempts is not None
        self.progress.total = sum(total for _, _, total, _ in counts)
        self.progress.predicted = sum(done for _, _, _, done in counts)
        self.progress.counted = True
        self._refresh_failures()
        metrics.PRELABEL_PENDING.labels(self.namespace, self.name).set(self.progress.pending)

    def _refresh_failures(self) -> None:
        assert self.attempts is not None
        given_up = self.attempts.given_up()
        self.progress.failed = len(given_up)
        self.progress.failures = [{"project": a.project, "task": t, "reason": a.reason, "attempts": a.count}
                                  for t, a in sorted(given_up.items())]

    async def _report(self, force: bool = False) -> None:
        if self.progress.counted and not self.progress.pending and self.progress.completed is None:
            # Stamped here, not at the pass's end: the report after the last batch already says Complete.
            self.progress.completed = _utcnow()
        now = time.monotonic()
        if force or now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            metrics.PRELABEL_PENDING.labels(self.namespace, self.name).set(self.progress.pending)
            await self.report(self.progress)


def _first(group: BaseExceptionGroup[Any], kind: type[Outage]) -> Outage | None:
    """The first `kind` in a task group's exceptions, nested groups included."""
    for exc in group.exceptions:
        found = _first(exc, kind) if isinstance(exc, BaseExceptionGroup) else exc if isinstance(exc, kind) else None
        if found is not None:
            return found
    return None


async def _ls(call: Awaitable[Any], action: str) -> Any:
    from label_studio_sdk.core.api_error import ApiError

    try:
        return await call
    except ApiError as exc:
        if exc.status_code == 401:
            raise Outage(key_refused(action, exc.status_code, prelabel.refusal(exc.body))) from None
        if exc.status_code == 403:
            raise Outage(f"Label Studio forbade the API key's user to {action} (HTTP 403: {prelabel.refusal(exc.body)[:200]}): give that user access "
                         "to the project (its organization and role), or use another user's key") from None
        raise Outage(f"Label Studio answered HTTP {exc.status_code} while trying to {action}: {str(exc.body)[:200]}") from None
    except (httpx.HTTPError, OSError) as exc:
        raise Outage(f"Label Studio unreachable while trying to {action}: {type(exc).__name__}") from None


@contextlib.asynccontextmanager
async def _label_studio(target: Target) -> AsyncIterator[AsyncLabelStudio]:
    """A Label Studio client of its own (the calls made while the backend sleeps, or around it)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10)) as ls_http:
        yield AsyncLabelStudio(base_url=target.label_studio_url, api_key=target.api_key, httpx_client=ls_http)


async def _raw(ls: AsyncLabelStudio, method: str, path: str, action: str, json: Any = None) -> Any:
    """A Label Studio API call the SDK has no method for (its model-versions endpoint), through the
    SDK's own HTTP client (its auth, personal access tokens included): the JSON answer. Raises Outage
    as `_ls` does."""
    from label_studio_sdk.core.api_error import ApiError

    async def call() -> Any:
        answer = await ls._client_wrapper.httpx_client.request(path, method=method, json=json,
                                                                request_options={"timeout_in_seconds": RETENTION_TIMEOUT})
        if answer.status_code >= 300:
            try:
                body = answer.json()
            except ValueError:
                body = answer.text
            raise ApiError(status_code=answer.status_code, headers=dict(answer.headers), body=body)
        return answer.json()

    return await _ls(call(), action)


async def _raise(exc: Exception) -> Any:
    raise exc


async def _backend(call: Awaitable[httpx.Response], route: str) -> httpx.Response:
    try:
        return await call
    except (httpx.HTTPError, OSError) as exc:
        raise Outage(f"the backend is unreachable ({route}): {type(exc).__name__}") from None


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)[:300]
    except ValueError:
        return response.text[:300]


# -- the daemon's loop -------------------------------------------------------------------------------
class Stopped(Protocol):
    """kopf.DaemonStopped as the loop uses it: true once stopped; wait() returns early when it is."""

    def __bool__(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> Awaitable[Any]: ...


@dataclass
class Resource:
    """The MLBackend a daemon pre-labels for: `spec`, `status` and `meta` are kopf's live views (they
    follow the resource); `keys` reads its Secrets (sync: run in a thread); `patch_status` writes a
    status merge patch; `emit` posts an Event; `scale` sets the backend Deployment's replicas."""

    namespace: str
    name: str
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    meta: Mapping[str, Any]
    keys: Callable[[MLBackendSpec], Keys]
    patch_status: Callable[[dict[str, Any]], Awaitable[None]]
    emit: Callable[[Event], None]
    scale: Callable[[int], Awaitable[None]]


async def _sleep(resource: Resource, driver: Driver, target: Target, section: PrelabelSpec, generation: int) -> None:
    """Scale to zero: the projects' model_version to their versions (Driver.go_to_sleep), status.sleep
    (the reconcile then applies zero replicas too), then the Deployment."""
    found = await driver.go_to_sleep(target, generation, resource.status)
    said = sleep.sleeping_condition(found, section)
    conditions = with_condition(list(resource.status.get("conditions") or []), said, generation)
    await resource.patch_status({"sleep": found.as_status(), "conditions": conditions})
    driver.asleep = found
    await resource.scale(0)
    resource.emit(Event("Sleeping", said.message))
    log.info("%s/%s: %s", resource.namespace, resource.name, said.message)


async def _wake(resource: Resource, driver: Driver, target: Target, spec: MLBackendSpec, why: str, generation: int) -> None:
    """Back from zero: status.sleep removed first, then the Deployment scaled up; the next passes wait
    for its pods (an outage until they answer) and predict what woke it, and the first that works sets
    the projects' model_version back to the title (Driver.wake_up)."""
    said = sleep.woken_condition(why)
    conditions = with_condition(list(resource.status.get("conditions") or []), said, generation)
    await resource.patch_status({"sleep": None, "conditions": conditions})
    driver.asleep = None
    await resource.scale(sleep.awake_replicas(spec))
    driver.restore_title = True
    driver.woken_at = driver.last_predict = time.monotonic()  # a fresh idle period
    resource.emit(Event("Woken", said.message))
    log.info("%s/%s: %s", resource.namespace, resource.name, said.message)


def backoff(outages: int) -> float:
    """Seconds to wait after the `outages`-th outage in a row: 2.5, 5, 10, ... capped at 60."""
    return min(60.0, float(min(300, 5 * 2 ** min(outages - 1, 6))) / 2)


async def run(resource: Resource, stopped: Stopped, make_driver: Callable[[str, str, Report], Driver] = Driver) -> None:
    """Drives every task of the declared projects toward a prediction of the current model version,
    pass after pass, until `stopped`: a pass reads from Label Studio what is left, so it resumes after
    any restart. An outage (Label Studio, the backend, the Kubernetes API) is shown in status and
    retried with backoff; no task counts as failed for it."""
    last_phase: list[str | None] = [None]
    last_fault = [""]

    async def report(progress: Progress) -> None:
        if stopped:  # paused or removed: the reconcile now owns what status says
            return
        conditions = list(resource.status.get("conditions") or [])
        patch = prelabel.status_patch(progress, time.monotonic(), conditions, int(resource.meta.get("generation") or 0))
        await resource.patch_status(patch)
        event = prelabel.phase_event(patch, last_phase[0])
        if event is not None:
            resource.emit(event)
        last_phase[0] = patch["prelabel"]["phase"]
        if progress.fault and progress.fault != last_fault[0]:  # once per fault, not per pass
            resource.emit(Event("ModelVersionMismatch", progress.fault, warning=True))
        last_fault[0] = progress.fault

    driver = make_driver(resource.namespace, resource.name, report)
    prelabel.resume(driver.progress, dict(resource.status.get("prelabel") or {}))
    driver.asleep = sleep.Asleep.from_status(resource.status)
    outages = 0
    while not stopped:
        try:
            parsed = MLBackendSpec.parse(dict(resource.spec))
            section = parsed.prelabel or PrelabelSpec()
            driver.progress.refused = prelabel.bulk_refusal(parsed)
            if driver.progress.refused:
                await report(driver.progress)
                await stopped.wait(section.poll_seconds)
                continue
            url, projects, waiting = prelabel.target(dict(resource.status))
            if url is None:
                driver.progress.message = waiting
                await report(driver.progress)
                await stopped.wait(5)
                continue
            found = await asyncio.to_thread(resource.keys, parsed)
            target = Target(parsed.label_studio.url, found.api_key, url, found.auth, projects, parsed.label_studio.title,
                            parsed.label_studio.selector)
            generation = int(resource.meta.get("generation") or 0)
            # The daemon's own word on sleep; a new generation ends it (the reconcile scales the backend up).
            driver.asleep = sleep.asleep(parsed, {"sleep": driver.asleep.as_status()} if driver.asleep else {}, generation)
            if driver.asleep is not None:
                await resource.scale(0)  # again at each check: a reconcile that read status from before the sleep may have scaled it up
                why = await driver.wake_reason(target, section, driver.asleep, resource.status)
                if why:
                    await _wake(resource, driver, target, parsed, why, generation)
                outages = 0
                await stopped.wait(1 if why else section.poll_seconds)
                continue
            delay = await driver.run_pass(target, section, stopped)
            outages = 0
            if driver.restore_title:  # the backend answers again: Label Studio may ask it for each task
                await driver.wake_up(target)
                driver.restore_title = False
            if delay is None and not driver.progress.fault and sleep.time_to_sleep(
                    section, driver.progress.phase(), time.monotonic() - driver.last_predict, resource.status):
                await _sleep(resource, driver, target, section, generation)
                await stopped.wait(section.poll_seconds)
                continue
        except (Outage, KubeError, SpecError) as exc:
            outages += 1
            delay = backoff(outages)
            message = exc.message if isinstance(exc, KubeError) else str(exc)
            if isinstance(exc, Outage) and driver.asleep is None and time.monotonic() - driver.woken_at < WAKE_GRACE:
                # Just woken and the backend does not answer yet: make sure a reconcile that read status
                # from before the wake did not put it back to sleep.
                with contextlib.suppress(KubeError, SpecError):
                    await resource.scale(sleep.awake_replicas(MLBackendSpec.parse(dict(resource.spec))))
                message = f"waking the backend from zero: {message}"
            driver.progress.message = f"{message}; retrying in {delay:.0f}s"
            metrics.ERRORS.labels("PrelabelOutage").inc()
            with contextlib.suppress(KubeError):
                await report(driver.progress)
            await stopped.wait(delay)
            continue
        await stopped.wait(section.poll_seconds if delay is None else delay)
