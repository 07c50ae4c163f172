"""Registrations in a real Label Studio, with a real backend behind them: created once, found again,
updated in place, duplicates removed, and deleted together with the webhook Label Studio made."""

from __future__ import annotations

import pytest

from prelabel_operator.labelstudio import Client, LabelStudioError
from prelabel_operator.registration import Desired, marker
from prelabel_operator.spec import ProjectRef
from tests.conftest import SEED_CONFIG

pytestmark = pytest.mark.labelstudio
UID = "3f1c-test-uid"


@pytest.fixture
def backend(label_studio, start_backend):  # noqa: ANN001, ANN201
    return start_backend({"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token})


def desired(url: str, **changes) -> Desired:  # noqa: ANN003
    fields = {"url": url, "title": "prelabel", "description": marker("ml", "shapes", UID), "is_interactive": False, "timeout": 100}
    fields.update(changes)
    return Desired(**fields)


def test_one_registration_found_again_and_kept_true(label_studio, ls_client, backend) -> None:  # noqa: ANN001
    client = Client(label_studio.url, label_studio.token)
    project = ls_client.projects.create(title="registration project", label_config=SEED_CONFIG)
    assert client.resolve(ProjectRef(title="registration project")).id == project.id

    first, decided = client.ensure(project.id, desired(backend.url), UID)
    assert decided.create
    again, decided = client.ensure(project.id, desired(backend.url), UID)  # e.g. after an operator restart
    assert again == first and decided.keep_id == first
    listed = list(ls_client.ml.list(project=project.id))
    assert [(m.id, m.url, m.state) for m in listed] == [(first, backend.url, "CO")]

    ls_client.ml.update(first, url=backend.url, project=project.id, title="renamed in the UI")
    fixed, decided = client.ensure(project.id, desired(backend.url), UID)
    assert fixed == first and decided.update_id == first
    assert ls_client.ml.get(first).title == "prelabel"

    # A create that crashed after Label Studio saved it leaves a twin with our marker.
    twin = ls_client.ml.create(project=project.id, url=backend.url, title="prelabel", description=marker("ml", "shapes", UID))
    kept, decided = client.ensure(project.id, desired(backend.url), UID)
    assert kept == first and decided.delete_ids == (twin.id,)
    assert [m.id for m in ls_client.ml.list(project=project.id)] == [first]

    hooks = [h.url for h in ls_client.webhooks.list(project=str(project.id))]
    assert backend.url + "/webhook" in [h.rstrip("/") for h in hooks], hooks
    client.remove(project.id, first)
    assert list(ls_client.ml.list(project=project.id)) == []
    assert not any(h.url.rstrip("/") == backend.url + "/webhook" for h in ls_client.webhooks.list(project=str(project.id)))
    client.remove(project.id, first)  # already gone: nothing to do


def test_errors_say_what_to_fix(label_studio, ls_client, backend) -> None:  # noqa: ANN001
    client = Client(label_studio.url, label_studio.token)
    with pytest.raises(LabelStudioError) as err:
        client.resolve(ProjectRef(title="no such project"))
    assert err.value.reason == "ProjectNotFound" and not err.value.retryable

    with pytest.raises(LabelStudioError) as err:
        Client(label_studio.url, "0" * 40).resolve(ProjectRef(id=1))
    assert err.value.reason == "Unauthorized" and "apiKeySecretRef" in err.value.message

    project = ls_client.projects.create(title="unreachable project", label_config=SEED_CONFIG)
    with pytest.raises(LabelStudioError) as err:
        client.ensure(project.id, desired("http://127.0.0.1:9"), UID)
    assert err.value.reason == "BackendUnreachable" and err.value.retryable
    assert list(ls_client.ml.list(project=project.id)) == []

    with pytest.raises(LabelStudioError) as err:
        Client("http://127.0.0.1:9", label_studio.token).resolve(ProjectRef(id=1))
    assert err.value.reason == "LabelStudioUnreachable" and err.value.retryable


def test_label_studio_guarding_private_ranges_is_reported_as_such(backend) -> None:  # noqa: ANN001
    """Label Studio's default SSRF protection refuses loopback and private backend URLs (every
    ClusterIP): the error names the setting to change instead of a bare 403."""
    from label_studio_sdk import LabelStudio as SdkClient

    from prelabel_local.label_studio_server import LabelStudio

    guarded = LabelStudio(extra_env={"LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "true"}).start()
    try:
        project = SdkClient(base_url=guarded.url, api_key=guarded.token).projects.create(title="guarded", label_config=SEED_CONFIG)
        with pytest.raises(LabelStudioError) as err:
            Client(guarded.url, guarded.token).ensure(project.id, desired(backend.url), UID)
        assert err.value.reason == "BackendAddressBlocked" and not err.value.retryable
        assert "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS=false" in err.value.message
    finally:
        guarded.stop()


def hook_urls(ls_client, project_id: int) -> list[str]:  # noqa: ANN001
    return sorted(h.url.rstrip("/") for h in ls_client.webhooks.list(project=str(project_id)))


def test_no_webhook_is_left_at_an_address_no_registration_uses(label_studio, ls_client, backend) -> None:  # noqa: ANN001
    """Case 9: Label Studio makes `<url>/webhook` only on create; the operator updates in place when
    the backend's address changes (a new ClusterIP), and deregisters on deletion. Afterwards no
    webhook points at an address none of its registrations uses; others' webhooks are untouched."""
    client = Client(label_studio.url, label_studio.token)
    project = ls_client.projects.create(title="webhook project", label_config=SEED_CONFIG)
    old = backend.url
    new = backend.url.replace("127.0.0.1", "localhost")  # the same backend at another address
    foreign = ls_client.webhooks.create(project=project.id, url="http://127.0.0.1:9/hand-made", send_payload=False)

    first, decided = client.ensure(project.id, desired(old), UID)
    assert decided.create and hook_urls(ls_client, project.id) == sorted([old + "/webhook", foreign.url])
    moved, decided = client.ensure(project.id, desired(new), UID)
    assert moved == first and decided.update_id == first and ls_client.ml.get(first).url == new
    assert hook_urls(ls_client, project.id) == sorted([new + "/webhook", foreign.url])

    # An update whose clean-up was lost (a crash, an older operator): the stamped webhook is found again.
    ls_client.ml.update(first, url=old, project=project.id)
    stale = ls_client.webhooks.create(project=project.id, url=new + "/webhook", send_payload=True, headers={"X-Prelabel-Owner": UID})
    assert stale.id
    client.ensure(project.id, desired(old), UID)
    assert hook_urls(ls_client, project.id) == sorted([old + "/webhook", foreign.url])

    client.remove(project.id, first)
    assert list(ls_client.ml.list(project=project.id)) == []
    assert hook_urls(ls_client, project.id) == [foreign.url]
