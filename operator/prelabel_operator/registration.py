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


@dataclass(frozen=True)
class Webhook:
    id: int
    url: str
    headers: dict[str, str] = field(default_factory=dict)

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
    stamp_ids: tuple[int, ...] = ()  # ours by URL but not stamped yet
    create_url: str | None = None  # the registration's webhook, missing (Label Studio made none on update)


def plan_webhooks(hooks: list[Webhook], in_use: set[str], uid: str, released: set[str], current: str | None) -> WebhookPlan:
    """What to do with a project's webhooks so none of ours points at an address that no
    registration uses any more.

    in_use: the URLs of every registration left in the project (ours or not: a webhook at a URL
    someone still uses stays); released: URLs this resource's registration just left (an address
    change, a deletion); current: this resource's registration URL (None when deregistering)."""
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
        elif url == mine and hook.owner() != uid:
            stamp.append(hook.id)
    create = mine if mine and not any(same_url(h.url, mine) for h in hooks) else None
    return WebhookPlan(tuple(delete), tuple(stamp), create)
