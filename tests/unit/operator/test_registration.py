"""The registration decisions, from what Label Studio lists: one of ours, found again, kept true."""

from __future__ import annotations

from prelabel_operator.registration import (
    OWNER_HEADER,
    Desired,
    Registration,
    Webhook,
    marker,
    ours,
    owner_of,
    plan,
    plan_webhooks,
    webhook_actions,
)

UID = "0b5e-uid"
MARK = marker("ml", "shapes", UID)
DESIRED = Desired(url="http://127.99.0.7:9090", title="prelabel", description=MARK, is_interactive=False, timeout=100)


def reg(id: int, **changes) -> Registration:  # noqa: A002, ANN003
    fields = {"url": DESIRED.url, "title": DESIRED.title, "description": MARK, "is_interactive": False, "timeout": 100.0}
    fields.update(changes)
    return Registration(id=id, **fields)


def test_nothing_of_ours_means_create_even_beside_foreign_backends() -> None:
    foreign = Registration(id=1, url=DESIRED.url, title="prelabel", description="added by hand")
    other_resource = reg(2, description=marker("ml", "other", "another-uid"))
    assert plan([foreign, other_resource], DESIRED, UID).create


def test_ours_in_sync_is_kept() -> None:
    decided = plan([reg(5)], DESIRED, UID)
    assert (decided.create, decided.update_id, decided.keep_id, decided.registration_id) == (False, None, 5, 5)


def test_a_trailing_slash_is_not_drift() -> None:
    assert plan([reg(5, url=DESIRED.url + "/")], DESIRED, UID).keep_id == 5


def test_drift_in_url_title_or_settings_updates_in_place() -> None:
    for changed in ({"url": "http://127.99.0.9:9090"}, {"title": "renamed in the UI"}, {"is_interactive": True}, {"timeout": 5.0},
                    {"auth_user": "someone"}):
        decided = plan([reg(5, **changed)], DESIRED, UID)
        assert decided.update_id == 5 and not decided.create, changed


def test_a_rotated_password_forces_an_update() -> None:
    assert plan([reg(5)], Desired(**{**DESIRED.__dict__, "auth_changed": True}), UID).update_id == 5


def test_duplicates_from_a_crashed_create_are_deleted_keeping_the_oldest() -> None:
    decided = plan([reg(9), reg(4), reg(7, title="stale")], DESIRED, UID)
    assert decided.keep_id == 4 and decided.delete_ids == (7, 9)
    assert ours([reg(9), reg(4), Registration(1, "u", "t", "by hand")], UID) == [9, 4]


# -- webhooks (case 9) -----------------------------------------------------------------------------
OLD, NEW = "http://127.99.0.7:9090", "http://127.99.0.9:9090"


def hook(id: int, url: str, owner: str | None = None) -> Webhook:  # noqa: A002
    # Stamped: the operator has narrowed its events too (send_for_all_actions off, Prelabel's backend: none).
    return Webhook(id, url + "/webhook", {OWNER_HEADER: owner} if owner else {}, all_actions=not owner)


def test_owner_is_read_from_the_marker() -> None:
    assert owner_of(MARK) == UID
    assert owner_of("added by hand (not ours)") is None


def test_an_address_change_deletes_the_old_webhook_and_makes_the_new_one() -> None:
    decided = plan_webhooks([hook(1, OLD)], in_use={NEW}, uid=UID, released={OLD}, current=NEW)
    assert decided.delete_ids == (1,) and decided.create_url == NEW + "/webhook"


def test_stamped_webhooks_at_old_addresses_are_found_again_after_a_restart() -> None:
    """A crash between the update and the clean-up: the stamp still names the owner."""
    hooks = [hook(1, OLD, UID), hook(2, NEW, UID), hook(3, "http://10.0.0.1:9090", "another-uid"), hook(4, "http://hand.made")]
    decided = plan_webhooks(hooks, in_use={NEW, "http://10.0.0.1:9090"}, uid=UID, released=set(), current=NEW)
    assert decided.delete_ids == (1,) and decided.stamp_ids == () and decided.create_url is None


def test_the_current_webhook_is_stamped_and_one_still_in_use_is_kept() -> None:
    hooks = [hook(1, NEW), hook(2, OLD, UID)]
    decided = plan_webhooks(hooks, in_use={NEW, OLD}, uid=UID, released={OLD}, current=NEW)  # OLD: someone else's now
    assert decided.delete_ids == () and decided.stamp_ids == (1,)


def test_deregistering_deletes_every_webhook_of_ours_that_nothing_uses() -> None:
    hooks = [hook(1, OLD, UID), hook(2, NEW), hook(3, "http://other:9090")]
    decided = plan_webhooks(hooks, in_use={"http://other:9090"}, uid=UID, released={NEW}, current=None)
    assert decided.delete_ids == (1, 2) and decided.create_url is None


def test_the_webhook_sends_only_the_events_the_backend_needs() -> None:
    # Label Studio makes it with send_for_all_actions: PROJECT_UPDATED (sent when the operator sets the
    # project's model version) and every annotation would reach the backend.
    fresh = Webhook(1, NEW + "/webhook", {OWNER_HEADER: UID}, all_actions=True)
    assert plan_webhooks([fresh], in_use={NEW}, uid=UID, released=set(), current=NEW).stamp_ids == (1,)
    sdk = webhook_actions(foreign=True)
    assert "PROJECT_UPDATED" not in sdk and set(sdk) == {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"}
    assert webhook_actions(foreign=False) == ()  # Prelabel's backend: its training loop counts annotations itself
    narrowed = Webhook(1, NEW + "/webhook", {OWNER_HEADER: UID}, all_actions=False, actions=sdk)
    assert plan_webhooks([narrowed], in_use={NEW}, uid=UID, released=set(), current=NEW, actions=sdk).stamp_ids == ()
    assert plan_webhooks([narrowed], in_use={NEW}, uid=UID, released=set(), current=NEW, actions=()).stamp_ids == (1,)
