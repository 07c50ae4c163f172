"""Label Studio, through label-studio-sdk: find projects, list/create/update/delete ML-backend
registrations and the webhooks Label Studio makes for them. I/O only; `registration` decides.

Every error becomes a LabelStudioError whose reason and message a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The SDK's generated client. label_studio_sdk.LabelStudio extends it with a label interface and
# pandas exports the operator never uses (whose imports would put pandas, numpy, faker and lxml in
# its image: operator/requirements-excludes.txt), and with a pager that ends quietly at a 404, kept here.
from label_studio_sdk._extensions.pager_ext import SyncPagerExt
from label_studio_sdk.base_client import LabelStudioBase
from label_studio_sdk.core.api_error import ApiError

from .errors import LabelStudioError, key_refused
from .registration import OWNER_HEADER, Desired, Plan, Registration, Webhook, owner_of, plan, plan_webhooks, same_url
from .spec import ProjectRef

# The SDK retries a request that got a 5xx, 408, 409 or 429 twice. A create is not idempotent: Label
# Studio on SQLite answers 500 "database is locked" to a POST it may have committed already, and the
# retry made a second registration (bench/scale_bench.py, 10 backends at once). Creates go once; the
# next reconcile lists before it creates again.
ONCE = {"max_retries": 0}
__all__ = ["Client", "LabelStudioError", "Project"]  # LabelStudioError: what this module raises (errors.py)


def _detail(body: Any) -> str:
    """Label Studio's own words from an error body (its validation errors), not the whole dump."""
    if isinstance(body, dict):
        errors = body.get("validation_errors") or {}
        if isinstance(errors, dict) and errors:
            return " ".join(str(m) for messages in errors.values() for m in (messages if isinstance(messages, list) else [messages]))
        return str(body.get("detail") or body)
    return str(body)


def _explain(exc: Exception, action: str, url: str) -> LabelStudioError:
    if isinstance(exc, ApiError):
        body = _detail(exc.body)
        if exc.status_code == 401:
            return LabelStudioError("Unauthorized", key_refused(action, 401, body), False)
        if exc.status_code == 403 and "reserved network address" in body:
            return LabelStudioError("BackendAddressBlocked", f"Label Studio refuses backend URLs in private or loopback ranges ({url}): start Label Studio "
                                    "with LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false, or register a public address (spec.labelStudio.address)", False)
        if exc.status_code == 404:
            return LabelStudioError("NotFound", f"Label Studio has no such object while trying to {action}", False)
        if exc.status_code == 400:
            return LabelStudioError("BackendUnreachable", f"Label Studio could not reach the backend at {url} while trying to {action}: {body[:300]}")
        return LabelStudioError("LabelStudioError", f"Label Studio answered HTTP {exc.status_code} while trying to {action}: {body[:300]}")
    return LabelStudioError("LabelStudioUnreachable", f"could not reach Label Studio to {action}: {type(exc).__name__}: {str(exc)[:200]}")


@dataclass(frozen=True)
class Project:
    id: int
    title: str
    label_config: str
    model_version: str


@dataclass
class Client:
    url: str
    api_key: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.sdk = LabelStudioBase(base_url=self.url, api_key=self.api_key, timeout=self.timeout)

    def _call(self, action: str, fn: Any, *args: Any, backend_url: str = "", **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure is turned into a reason
            raise _explain(exc, action, backend_url) from None

    def server_version(self) -> str:
        """Label Studio's release, as GET /api/version answers it ("1.23.2"; "" when it gives none)."""
        return str(self._call("read Label Studio's version", self.sdk.versions.get).release or "")

    # -- projects -------------------------------------------------------------------------------
    def list_projects(self) -> list[Project]:
        """Every project the key's user can see (paged)."""
        found = self._call("list projects", lambda: list(SyncPagerExt.from_sync_pager(self.sdk.projects.list())))
        return [Project(int(p.id), str(p.title or ""), str(p.label_config or ""), str(p.model_version or "")) for p in found]

    def resolve(self, ref: ProjectRef) -> Project:
        """The declared project, by id or by its exact title."""
        project_id = ref.id
        if project_id is None:
            matches = [p for p in self._call("list projects", lambda: list(SyncPagerExt.from_sync_pager(self.sdk.projects.list()))) if p.title == ref.title]
            if len(matches) != 1:
                found = "no project" if not matches else f"{len(matches)} projects"
                fix = "name the project by id instead" if matches else "fix spec.labelStudio.projects or the title"
                raise LabelStudioError("ProjectNotFound", f"{found} titled {ref.title!r} in Label Studio: {fix}", False)
            project_id = matches[0].id
        try:
            project = self._call(f"read project {project_id}", self.sdk.projects.get, project_id)
        except LabelStudioError as exc:
            if exc.reason != "NotFound":
                raise
            # Also what a deleted project answers: deregistering skips it rather than waiting for it forever.
            raise LabelStudioError("ProjectNotFound", f"no project {project_id} in Label Studio (or the API key's user may not see it): "
                                   "fix spec.labelStudio.projects", False) from None
        return Project(int(project.id), str(project.title or ""), str(project.label_config or ""), str(project.model_version or ""))

    # -- registrations --------------------------------------------------------------------------
    def registrations(self, project_id: int) -> list[Registration]:
        items = self._call(f"list the ML backends of project {project_id}", self.sdk.ml.list, project=project_id)
        return [Registration(id=int(m.id), url=str(m.url), title=str(m.title or ""), description=str(m.description or ""),
                             is_interactive=bool(m.is_interactive), timeout=float(m.timeout or 100.0),
                             auth_user=getattr(m, "basic_auth_user", None) or None) for m in items]

    def ensure(self, project_id: int, desired: Desired, uid: str, auth_password: str | None = None) -> tuple[int, Plan]:
        """Makes exactly one registration of ours match `desired`; returns its id and what was done."""
        existing = self.registrations(project_id)
        decided = plan(existing, desired, uid)
        fields: dict[str, Any] = {"url": desired.url, "project": project_id, "title": desired.title, "description": desired.description,
                                  "is_interactive": desired.is_interactive, "timeout": int(desired.timeout)}
        if desired.auth_user:
            fields.update(auth_method="BASIC_AUTH", basic_auth_user=desired.auth_user, basic_auth_pass=auth_password)
        if decided.create:
            created = self._call(f"register the backend in project {project_id}", self.sdk.ml.create, backend_url=desired.url,
                                 request_options=ONCE, **fields)
            registration_id = int(created.id)
            # Label Studio on SQLite can keep a registration from a create it answered with an error
            # ("database is locked" after the row was saved), beside the one this create made: look
            # once more, and keep one (bench/HISTORY.md, scale).
            again = plan(self.registrations(project_id), desired, uid)
            if again.delete_ids:
                registration_id = int(again.registration_id or registration_id)
                decided = Plan(create=True, delete_ids=again.delete_ids)
        elif decided.update_id is not None:
            # Label Studio 1.23 answers 500 to an update without url and project: always send both.
            self._call(f"update registration {decided.update_id}", self.sdk.ml.update, decided.update_id, backend_url=desired.url, **fields)
            registration_id = decided.update_id
        else:
            registration_id = int(decided.keep_id or 0)
        for extra in decided.delete_ids:
            self._call(f"delete registration {extra}", self.sdk.ml.delete, extra)
        # What the project's registrations use now, without listing them again (each list makes
        # Label Studio call every backend's /health and /setup).
        gone = set(decided.delete_ids) | {registration_id}
        in_use = {r.url for r in existing if r.id not in gone} | {desired.url}
        released = {r.url for r in existing if r.id in gone and not same_url(r.url, desired.url)}
        self.tidy_webhooks(project_id, uid, in_use, released, desired.url, desired.webhook_actions)
        return registration_id, decided

    def remove(self, project_id: int, registration_id: int) -> None:
        """Deletes a registration and every webhook of its resource that no registration left in the
        project uses (Label Studio leaves them behind, and they POST every annotation)."""
        try:
            registration = self._call(f"read registration {registration_id}", self.sdk.ml.get, registration_id)
        except LabelStudioError as exc:
            if exc.reason == "NotFound":
                return  # already gone
            raise
        self._call(f"delete registration {registration_id}", self.sdk.ml.delete, registration_id)
        uid = owner_of(str(registration.description or "")) or ""
        in_use = {r.url for r in self.registrations(project_id)}
        self.tidy_webhooks(project_id, uid, in_use, {str(registration.url)}, None)

    def webhooks(self, project_id: int) -> list[Webhook]:
        hooks = self._call(f"list the webhooks of project {project_id}", self.sdk.webhooks.list, project=str(project_id))
        return [Webhook(int(h.id), str(h.url), dict(h.headers) if isinstance(h.headers, dict) else {},
                        h.send_for_all_actions is not False, tuple(str(a) for a in h.actions or ()), h.is_active is not False) for h in hooks]

    def tidy_webhooks(self, project_id: int, uid: str, in_use: set[str], released: set[str], current: str | None,
                      actions: tuple[str, ...] = ()) -> None:
        """Applies registration.plan_webhooks: deletes this resource's webhooks at addresses no
        registration uses, stamps the current one with the owner header, and makes it when Label
        Studio made none (it does only on create, not when an update changes the address)."""
        decided = plan_webhooks(self.webhooks(project_id), in_use, uid, released, current, actions)
        for hook_id in decided.delete_ids:
            self._call(f"delete webhook {hook_id}", self.sdk.webhooks.delete, hook_id)
        for hook_id in decided.stamp_ids:  # the owner header, and only the events the backend needs (webhook_actions)
            self._call(f"mark webhook {hook_id}", self.sdk.webhooks.update, hook_id, headers={OWNER_HEADER: uid},
                       send_for_all_actions=False, actions=list(actions), is_active=True)
        if decided.create_url:
            # What Label Studio itself makes for a new registration (ml/models.py create_ml_webhook).
            self._call(f"create the webhook of project {project_id}", self.sdk.webhooks.create, project=project_id,
                       url=decided.create_url, send_payload=True, send_for_all_actions=False, actions=list(actions), headers={OWNER_HEADER: uid},
                       request_options=ONCE)

    def set_model_version(self, project: Project, model_version: str) -> None:
        """Makes "Retrieve predictions" and the project's prediction view use this backend's output."""
        if project.model_version != model_version:
            self._call(f"set the model version of project {project.id}", self.sdk.projects.update, project.id, model_version=model_version)

    # -- training data ----------------------------------------------------------------------------
    def annotated_tasks(self, project_id: int, page_size: int = 100) -> list[dict[str, Any]]:
        """Every task of the project holding an annotation, with its `annotations` and `predictions`, as
        Label Studio's JSON (pages of `page_size`; media URLs left as stored, never resolved)."""
        def read() -> list[dict[str, Any]]:
            pages = self.sdk.tasks.list(project=project_id, only_annotated=True, fields="all", resolve_uri=False, page_size=page_size)
            return [dict(task.model_dump(mode="json")) for task in SyncPagerExt.from_sync_pager(pages)]  # type: ignore[var-annotated]
        found: list[dict[str, Any]] = self._call(f"list the annotated tasks of project {project_id}", read)
        return found
