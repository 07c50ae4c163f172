"""The operator's record of the last handled resource (handlers.DigestDiffBaseStorage): a digest of
kopf's essence, small however large the spec, that changes exactly when the essence does."""

from __future__ import annotations

import copy

import kopf

from prelabel_operator.startup import DigestDiffBaseStorage

BODY = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend",
        "metadata": {"name": "huge", "namespace": "ml", "uid": "u1", "resourceVersion": "1", "labels": {"team": "a"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"}},
        "spec": {"model": {"env": [{"name": f"V{i}", "value": "x" * 2048} for i in range(64)]}},
        "status": {"url": "http://127.99.0.1:9090"}}


def essence(body: dict, storage: DigestDiffBaseStorage | None = None) -> dict:
    storage = storage or DigestDiffBaseStorage(prefix="prelabel.dev", key="last-handled-configuration")
    return dict(storage.build(body=kopf.Body(body)))


def stored(body: dict) -> str:
    patch = kopf.Patch()
    storage = DigestDiffBaseStorage(prefix="prelabel.dev", key="last-handled-configuration")
    storage.store(body=kopf.Body(body), patch=patch, essence=storage.build(body=kopf.Body(body)))
    return str(patch["metadata"]["annotations"]["prelabel.dev/last-handled-configuration"])


def test_a_huge_spec_is_recorded_in_a_few_bytes() -> None:
    assert len(stored(BODY)) < 100  # the spec is 130 KiB


def test_the_digest_changes_with_the_spec_and_labels_only() -> None:
    changed_spec, changed_label, changed_status, progress = (copy.deepcopy(BODY) for _ in range(4))
    changed_spec["spec"]["model"]["env"][63]["value"] = "y"
    changed_label["metadata"]["labels"]["team"] = "b"
    changed_status["status"]["url"] = "http://127.99.0.2:9090"
    changed_status["metadata"]["resourceVersion"] = "2"
    progress["metadata"]["annotations"]["prelabel.dev/on_change"] = '{"retries": 1}'  # kopf's progress storage, same prefix
    assert essence(changed_spec) != essence(BODY) and essence(changed_label) != essence(BODY)
    assert essence(changed_status) == essence(BODY) and essence(progress) == essence(BODY)
    assert essence(BODY) == essence(copy.deepcopy(BODY))
