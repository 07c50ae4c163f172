"""Decisions about ML-backend registrations in Label Studio, as plain functions of what is there.

Label Studio makes no registration idempotent (the same URL twice is two backends), so each
registration carries a marker in its description naming the MLBackend resource (by UID); after any
restart the operator finds its own again by that marker, updates it in place, and deletes
duplicates a crashed create may have left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MARKER_PREFIX = "managed by prelabel: "


def marker(namespace: str, name: str, uid: str) -> str:
    return f"{MARKER_PREFIX}{namespace}/{name} ({uid})"


@dataclass(frozen=True)
class Registration:
    """One ML backend as Label Studio lists it (only the fields the operator manages)."""

    id: int
    url: str
    title: str
    description: str
    is_interactive: bool = False
    timeout: float = 100.0
    auth_user: str | None = None


@dataclass(frozen=True)
class Desired:
    url: str
    title: str
    description: str  # carries the marker
    is_interactive: bool
    timeout: float
    auth_user: str | None = None
    auth_changed: bool = False  # the basic-auth password rotated: Label Studio never shows it back
    webhook_actions: tuple[str, ...] = ()  # the events its webhook sends (webhook_actions())


@dataclass(frozen=True)
class Plan:
    create: bool = False
    update_id: int | None = None
    keep_id: int | None = None
    delete_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def registration_id(self) -> int | None:
        return self.update_id or self.keep_id


def same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")  # Label Studio treats a trailing slash as another URL


def _is_ours(registration: Registration, uid: str) -> bool:
    return registration.description.startswith(MARKER_PREFIX) and f"({uid})" in registration.description


def plan(existing: list[Registration], desired: Desired, uid: str) -> Plan:
    """What to do in one project so exactly one registration, ours, matches `desired`."""
    mine = sorted((r for r in existing if _is_ours(r, uid)), key=lambda r: r.id)
    if not mine:
        return Plan(create=True)
    keep, extra = mine[0], tuple(r.id for r in mine[1:])
    in_sync = (
        same_url(keep.url, desired.url) and keep.title == desired.title and keep.description == desired.description
        and keep.is_interactive == desired.is_interactive and float(keep.timeout) == float(desired.timeout)
        and (keep.auth_user or None) == (desired.auth_user or None) and not desired.auth_changed
    )
    return Plan(keep_id=keep.id, delete_ids=extra) if in_sync else Plan(update_id=keep.id, delete_ids=extra)


def unchanged(existing: list[Registration], desired: Desired, uid: str, registration_id: int) -> bool:
    """Whether a project's registrations are as the last pass left them: ours is still `registration_id`,
    matches `desired`, and has no duplicate (a drift check's answer; anything else needs a full pass)."""
    decided = plan(existing, desired, uid)
    return decided.keep_id == registration_id and not decided.delete_ids


def ours(existing: list[Registration], uid: str) -> list[int]:
    return [r.id for r in existing if _is_ours(r, uid)]


# -- the webhooks Label Studio makes for registrations ------------------------------------------
# Label Studio creates `<url>/webhook` when a registration is created (ml/models.py create_ml_webhook),
# never on an update, and leaves it behind on deletion. The operator stamps the webhooks of its
# registrations with this header so it finds them again after an address change, a crash or a restart.
OWNER_HEADER = "X-Prelabel-Owner"

# Label Studio makes the webhook with send_for_all_actions (ml/models.py create_ml_webhook): every
# project update and annotation reaches the backend, and a backend made with Label Studio's ML SDK
# runs fit() on each annotation event (label_studio_ml/api.py TRAIN_EVENTS), each fit() a new model
# version. The operator narrows it to what the backend needs. "Start Training" is not among them:
# Label Studio posts START_TRAINING to /webhook itself (ml/api_connector.py train), not through this.
SDK_TRAIN_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")


def webhook_actions(foreign: bool) -> tuple[str, ...]:
    """The events a registration's webhook sends: none to Prelabel's own backend (it learns through
    the operator's training loop, which counts annotations in Label Studio itself); the annotation
    events an ML SDK backend trains on to any other (never PROJECT_UPDATED, which the operator's own
    model-version setting sends, nor task imports)."""
    return SDK_TRAIN_ACTIONS if foreign else ()


@dataclass(frozen=True)
class Webhook:
    id: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    all_actions: bool = True  # send_for_all_actions, as Label Studio makes it
    actions: tuple[str, ...] = ()
    active: bool = True  # is_active: Label Studio may switch a failing webhook off (SDK: consecutive_failures)

    def owner(self) -> str | None:
        return self.headers.get(OWNER_HEADER) if isinstance(self.headers, dict) else None


def webhook_url(backend_url: str) -> str:
    """The webhook Label Studio makes for a registration at backend_url."""
    return backend_url.rstrip("/") + "/webhook"


def owner_of(description: str) -> str | None:
    """The MLBackend UID in a registration's marker, None when the registration is not ours."""
    if not description.startswith(MARKER_PREFIX) or not description.endswith(")") or "(" not in description:
        return None
    return description.rsplit("(", 1)[1][:-1] or None


@dataclass(frozen=True)
class WebhookPlan:
    delete_ids: tuple[int, ...] = ()
    stamp_ids: tuple[int, ...] = ()  # ours by URL but not stamped yet, sending other events than the wanted ones, or inactive
    create_url: str | None = None  # the registration's webhook, missing (Label Studio made none on update)


def webhook_unchanged(hooks: list[Webhook], desired: Desired, uid: str) -> bool:
    """Whether the current registration's webhook is as the last pass left it: there, ours, active and
    sending only desired.webhook_actions (a drift check's answer; anything else needs a full pass)."""
    decided = plan_webhooks(hooks, {desired.url}, uid, set(), desired.url, desired.webhook_actions)
    return not (decided.stamp_ids or decided.create_url or decided.delete_ids)


def plan_webhooks(hooks: list[Webhook], in_use: set[str], uid: str, released: set[str], current: str | None,
                  actions: tuple[str, ...] = ()) -> WebhookPlan:
    """What to do with a project's webhooks so none of ours points at an address that no
    registration uses any more.

    in_use: the URLs of every registration left in the project (ours or not: a webhook at a URL
    someone still uses stays); released: URLs this resource's registration just left (an address
    change, a deletion); current: this resource's registration URL (None when deregistering);
    actions: the events the current one must send, and only those (webhook_actions)."""
    used = {webhook_url(u) for u in in_use}
    released_hooks = {webhook_url(u) for u in released}
    mine = webhook_url(current) if current else None
    delete, stamp = [], []
    for hook in hooks:
        url = hook.url.rstrip("/")
        ours = hook.owner() == uid or url in released_hooks or url == mine
        if not ours:
            continue
        if not any(same_url(url, u) for u in used):
            delete.append(hook.id)
        elif url == mine and (hook.owner() != uid or hook.all_actions or set(hook.actions) != set(actions) or not hook.active):
            stamp.append(hook.id)
    create = mine if mine and not any(same_url(h.url, mine) for h in hooks) else None
    return WebhookPlan(tuple(delete), tuple(stamp), create)
