"""The model store's S3 backend (prelabel_backend.model_versions.S3Store) against a real S3 server:
SeaweedFS, built from the Go module proxy (`make s3`) and started on loopback by prelabel_local.s3.
Versions put, listed, read back with their sha256 verified, a corrupted object refused, retention
keeping the last K and the pinned; the server bound to 127.0.0.1 only and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prelabel_backend.model_versions import (
    CorruptVersion,
    ModelVersion,
    Provenance,
    S3Location,
    S3Store,
    StoreError,
    VersionNotFound,
    new_version,
    s3_client,
)
from prelabel_local import processes
from prelabel_local.s3 import SeaweedFS

pytestmark = pytest.mark.s3

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedFS]:
    s3 = SeaweedFS().start()
    try:
        yield s3
    finally:
        s3.stop()


def store_on(server: SeaweedFS, tmp_path: Path, bucket: str, prefix: str = "models") -> S3Store:
    client = s3_client(server.url, region=server.region, access_key=server.access_key, secret_key=server.secret_key)
    client.create_bucket(Bucket=bucket)
    return S3Store(client, S3Location(bucket, prefix), tmp_path / "cache")


def put(store: S3Store, tmp_path: Path, content: bytes, created: datetime, parent: str | None = None) -> ModelVersion:
    path = tmp_path / "in" / f"{content.hex()[:12]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    record = new_version(path, task="detect", parent=parent, created=created, metrics={"map50_95": 0.42, "map50": 0.7},
                         provenance=Provenance(run="train-abc", data_snapshot="sha256:0123"))
    return store.put(path, record)


def test_the_server_listens_on_loopback_only_and_refuses_other_keys(server: SeaweedFS, tmp_path: Path) -> None:
    sockets = server.listening()
    assert len(sockets) >= 8, sockets  # master, volume, filer and S3: HTTP and gRPC each
    assert {address for address, _ in sockets} == {"127.0.0.1"}, sockets
    wrong = s3_client(server.url, access_key=server.access_key, secret_key="not-the-secret")
    with pytest.raises(Exception, match=r"SignatureDoesNotMatch|AccessDenied|InvalidAccessKeyId"):
        wrong.list_buckets()


def test_put_list_get_verified(server: SeaweedFS, tmp_path: Path) -> None:
    store = store_on(server, tmp_path, "versions")
    assert store.list() == [] and store.latest() is None
    weights = bytes(range(256)) * 4096 + b"first"  # 1 MiB: more than one read chunk
    first = put(store, tmp_path, weights, T0)
    second = put(store, tmp_path, b"second weights", T0 + timedelta(minutes=3), parent=first.name)
    assert [v.name for v in store.list()] == [first.name, second.name]
    assert store.latest() == second and store.record(second.name).parent == first.name
    assert store.record(first.name).provenance == Provenance(run="train-abc", data_snapshot="sha256:0123")
    local = store.get(first.name)
    assert local.read_bytes() == weights and local.is_relative_to(tmp_path / "cache")
    assert store.get(first.name) == local  # a verified cached copy is reused
    assert put(store, tmp_path, b"second weights", T0 + timedelta(minutes=3)) == second  # the same put again
    keys = sorted(o["Key"] for o in store.client.list_objects_v2(Bucket="versions")["Contents"])
    assert keys == [f"models/{first.name}/version.json", f"models/{first.name}/weights.pt",
                    f"models/{second.name}/version.json", f"models/{second.name}/weights.pt"]


def test_a_corrupted_object_is_refused(server: SeaweedFS, tmp_path: Path) -> None:
    store = store_on(server, tmp_path, "corrupt")
    version = put(store, tmp_path, b"the true weights", T0)
    key = f"models/{version.name}/weights.pt"
    store.client.put_object(Bucket="corrupt", Key=key, Body=b"the fake weights")  # same size, other bytes
    with pytest.raises(CorruptVersion, match="sha256"):
        store.get(version.name)
    assert not (tmp_path / "cache" / version.name / "weights.pt").exists()  # the bad copy is not kept
    store.client.put_object(Bucket="corrupt", Key=key, Body=b"the true weights")
    assert store.get(version.name).read_bytes() == b"the true weights"
    cached = tmp_path / "cache" / version.name / "weights.pt"
    cached.write_bytes(b"tampered locally")  # a cache that changed on disk is downloaded again
    assert store.get(version.name).read_bytes() == b"the true weights"


def test_a_half_written_version_is_invisible_and_names_are_not_reused(server: SeaweedFS, tmp_path: Path) -> None:
    store = store_on(server, tmp_path, "half")
    whole = put(store, tmp_path, b"whole", T0)
    store.client.put_object(Bucket="half", Key="models/20261201T000000.000Z-abcdef12/weights.pt", Body=b"no record")
    assert [v.name for v in store.list()] == [whole.name] and store.latest() == whole
    with pytest.raises(VersionNotFound):
        store.get("20261201T000000.000Z-abcdef12")
    other = tmp_path / "other.pt"
    other.write_bytes(b"other")
    forged = ModelVersion(**{**whole.__dict__, "sha256": new_version(other, task="detect").sha256})
    with pytest.raises(StoreError, match="exists with other weights"):
        store.put(other, forged)


def test_retain_keeps_the_last_k_and_the_pinned(server: SeaweedFS, tmp_path: Path) -> None:
    store = store_on(server, tmp_path, "retain", prefix="project-7/models")
    made = [put(store, tmp_path, f"weights {i}".encode(), T0 + timedelta(hours=i)).name for i in range(5)]
    store.get(made[0])  # cached locally: retention drops the cache too
    deleted = store.retain(keep_last=2, pinned={made[0]})
    assert deleted == [made[1], made[2]]
    assert [v.name for v in store.list()] == [made[0], made[3], made[4]]
    assert store.get(made[0]).read_bytes() == b"weights 0"  # the pinned one still serves
    remaining = sorted(o["Key"].split("/")[2] for o in store.client.list_objects_v2(Bucket="retain")["Contents"])
    assert set(remaining) == {made[0], made[3], made[4]}  # weights and records of the deleted ones are gone
    store.delete(made[3])
    assert [v.name for v in store.list()] == [made[0], made[4]]
    with pytest.raises(VersionNotFound):
        store.delete(made[3])


def test_stopped_by_pid(tmp_path: Path) -> None:
    s3 = SeaweedFS(workdir=tmp_path / "own").start()
    assert s3.process is not None
    pid, record = s3.process.pid, processes._mine[s3.process.pid]
    assert record.name == "seaweedfs" and record.path.exists()
    assert processes.members(record)
    s3.stop()
    assert not processes.members(record) and not record.path.exists()
    assert not Path(f"/proc/{pid}").exists() or processes.start_time(pid) != record.start_time
    assert not any(Path(f"/tmp/seaweedfs-{s}-grpc-{port}.sock").exists() for s, port in s3.grpc_ports.items())
    assert not (tmp_path / "own").exists()
