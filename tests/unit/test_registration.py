"""The registration decisions, from what Label Studio lists: one of ours, found again, kept true."""

from __future__ import annotations

from prelabel_operator.registration import Desired, Registration, marker, ours, plan

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
