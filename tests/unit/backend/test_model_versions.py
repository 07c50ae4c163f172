"""The model store (prelabel_backend.model_versions) on a folder, as a PersistentVolumeClaim mounts it:
records, names, sha256 verification, retention. The S3 backend runs the same rules against a real
SeaweedFS in tests/integration/test_model_store_s3.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from prelabel_backend.model_versions import (
    CorruptVersion,
    DirectoryStore,
    ModelVersion,
    Provenance,
    S3Location,
    S3Store,
    StoreError,
    VersionNotFound,
    new_version,
    open_store,
    to_keep,
    version_name,
)

T0 = datetime(2026, 11, 30, 5, 40, 12, 123456, tzinfo=UTC)


def weights(tmp_path: Path, content: bytes, name: str = "best.pt") -> Path:
    path = tmp_path / "in" / content.hex()[:16] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def put(store: DirectoryStore, tmp_path: Path, content: bytes, created: datetime, parent: str | None = None) -> ModelVersion:
    path = weights(tmp_path, content)
    return store.put(path, new_version(path, task="detect", parent=parent, created=created, metrics={"map50_95": 0.5},
                                       provenance=Provenance(run="train-1", data_snapshot="sha256:abc")))


def test_a_version_is_data_that_round_trips_through_json(tmp_path: Path) -> None:
    path = weights(tmp_path, b"w1")
    record = new_version(path, task="segment", precision="fp16", parent="20261129T000000.000Z-00000000", created=T0,
                         metrics={"map50_95": 0.61, "map50": 0.84, "recall/cat": 0.9},
                         provenance=Provenance(run="job-7", data_snapshot="sha256:feed"))
    assert record.name == "20261130T054012.123Z-" + record.sha256[:8]
    assert record.created == "2026-11-30T05:40:12.123+00:00"
    assert record.weights == "weights.pt" and record.size == 2
    assert ModelVersion.from_json(record.to_json()) == record
    assert json.loads(record.to_json())["provenance"] == {"run": "job-7", "data_snapshot": "sha256:feed"}
    with pytest.raises(ValueError, match="task must be one of"):
        new_version(path, task="tracking")


def test_names_sort_as_versions_were_made_and_are_label_values() -> None:
    sha = "f" * 64
    times = [T0, T0 + timedelta(milliseconds=1), T0 + timedelta(seconds=1), T0 + timedelta(days=40)]
    names = [version_name(t, sha) for t in times]
    assert names == sorted(names) and len(set(names)) == 4
    assert version_name(T0.astimezone(timezone(timedelta(hours=5))), sha) == names[0]  # any zone: the same UTC name
    for name in names:  # a Kubernetes label value: <= 63 chars, [A-Za-z0-9_.-], alphanumeric at both ends
        assert len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
        assert all(c.isalnum() or c in "-_." for c in name)


def test_put_list_get_latest(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    assert store.list() == [] and store.latest() is None
    first = put(store, tmp_path, b"first weights", T0)
    second = put(store, tmp_path, b"second weights", T0 + timedelta(minutes=5), parent=first.name)
    assert [v.name for v in store.list()] == [first.name, second.name]
    assert store.latest() == second and store.record(second.name).parent == first.name
    path = store.get(first.name)
    assert path.read_bytes() == b"first weights" and path.name == "weights.pt"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [first.name, second.name]  # no staging left


def test_put_is_idempotent_for_the_same_weights_and_refuses_a_taken_name(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    first = put(store, tmp_path, b"w", T0)
    assert put(store, tmp_path, b"w", T0) == first
    other = weights(tmp_path, b"other")
    forged = ModelVersion(**{**first.__dict__, "sha256": new_version(other, task="detect").sha256})
    with pytest.raises(StoreError, match="exists with other weights"):
        store.put(other, forged)
    with pytest.raises(CorruptVersion, match="its record says"):  # a record that does not describe the file
        store.put(other, first)
    with pytest.raises(StoreError, match="not a version name"):
        store.put(other, ModelVersion(**{**first.__dict__, "name": "../escape"}))


def test_get_refuses_weights_whose_sha256_changed(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    version = put(store, tmp_path, b"good weights", T0)
    stored = tmp_path / "store" / version.name / "weights.pt"
    stored.write_bytes(b"good weightz")  # same size, one byte flipped
    with pytest.raises(CorruptVersion, match="sha256"):
        store.get(version.name)
    stored.write_bytes(b"good")  # truncated
    with pytest.raises(CorruptVersion):
        store.get(version.name)


def test_a_version_without_its_record_does_not_exist(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    version = put(store, tmp_path, b"w", T0)
    half = tmp_path / "store" / "20261201T000000.000Z-abcdef12"  # a writer that died before the record
    half.mkdir()
    (half / "weights.pt").write_bytes(b"x")
    (tmp_path / "store" / "notes.txt").write_text("not a version")
    assert [v.name for v in store.list()] == [version.name] and store.latest() == version
    with pytest.raises(VersionNotFound):
        store.get(half.name)


def test_delete(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    a = put(store, tmp_path, b"a", T0)
    b = put(store, tmp_path, b"b", T0 + timedelta(seconds=1))
    store.delete(a.name)
    assert [v.name for v in store.list()] == [b.name] and not (tmp_path / "store" / a.name).exists()
    with pytest.raises(VersionNotFound):
        store.delete(a.name)
    with pytest.raises(VersionNotFound):
        store.get(a.name)


def test_retain_keeps_the_last_k_and_the_pinned(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    made = [put(store, tmp_path, f"w{i}".encode(), T0 + timedelta(hours=i)).name for i in range(6)]
    assert store.retain(keep_last=6) == []
    deleted = store.retain(keep_last=2, pinned={made[1]})
    assert deleted == [made[0], made[2], made[3]]
    assert [v.name for v in store.list()] == [made[1], made[4], made[5]]
    assert store.retain(keep_last=0, pinned={made[5], "20200101T000000.000Z-00000000"}) == [made[1], made[4]]
    assert [v.name for v in store.list()] == [made[5]]


def test_to_keep_edge_cases() -> None:
    names = ["a", "c", "b", "d"]
    assert to_keep(names, 2) == {"c", "d"}
    assert to_keep(names, 4) == to_keep(names, 10) == set(names)
    assert to_keep(names, 0) == set()
    assert to_keep(names, 1, pinned={"a", "unknown"}) == {"a", "d"}  # a pin of a missing version keeps nothing
    with pytest.raises(ValueError, match="keep_last"):
        to_keep(names, -1)


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path), tmp_path / "cache"), DirectoryStore)
    folder = open_store(f"file://{tmp_path}/models", tmp_path / "cache")
    assert isinstance(folder, DirectoryStore) and folder.root == tmp_path / "models"
    s3 = open_store("s3://models/project-7/", tmp_path / "cache", client=object())  # type: ignore[arg-type]
    assert isinstance(s3, S3Store) and s3.location == S3Location("models", "project-7")
    assert S3Location.parse("s3://b").key("v", "version.json") == "v/version.json"
    assert S3Location.parse("s3://b/a/b/").key("v", "version.json") == "a/b/v/version.json"
    with pytest.raises(ValueError, match="no bucket"):
        S3Location.parse("s3:///x")
