"""The model store: the one place that knows where versioned weights live.

A version is data (`ModelVersion`): its name, the sha256 of its weights, the task and precision they
serve, the version it was trained from (parent), when it was made, its metrics and its provenance
(the training run and the data snapshot). The backend, the training Job, the promotion gate and the
retention policy all read the same record.

One interface (`Store`), two backends with one layout:

    <root>/<name>/weights<suffix>   the weights, as put (suffix from the file: .pt, .onnx, ...)
    <root>/<name>/version.json      the record, written last: a version exists once its record does

- `DirectoryStore`: a folder, what a PersistentVolumeClaim mounts. A version is written in a hidden
  folder beside the others and renamed into place (atomic on one filesystem): a reader never sees
  half a version.
- `S3Store`: a bucket and prefix of an S3-compatible server (AWS, SeaweedFS, Ceph...), through
  boto3. The weights go up first, the record last, and a delete takes the record first. `get`
  downloads into a local cache folder.

Both verify the sha256 on `get`: a corrupted or truncated object is refused (CorruptVersion), never
served. Names sort as the versions were made (UTC time to the millisecond, then a hash prefix), so
`latest()` is the greatest name, and are valid Kubernetes label values, file names and S3 keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

RECORD = "version.json"
RUNS = "runs"  # runs/<run>/last.pt: a training run's checkpoint, while it runs
WEIGHTS = "weights"  # + the weights file's suffix
TASKS = ("detect", "segment", "obb", "pose", "classify")  # ultralytics' task names
NAME = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}$")  # e.g. 20261130T054012.123Z-3f2a9c1b
_CHUNK = 1 << 20


class StoreError(Exception):
    """The store cannot do what was asked (a missing version, a name taken)."""


class VersionNotFound(StoreError, KeyError):
    pass


class CorruptVersion(StoreError):
    """The weights read back do not have the sha256 their record names."""


@dataclass(frozen=True)
class Provenance:
    """Where a version came from: the training run (its Job's name or another id) and a digest of
    the data it was trained on (prelabel_operator.training.snapshot_digest)."""

    run: str = ""
    data_snapshot: str = ""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    sha256: str  # of the weights file, hex
    task: str  # detect | segment | obb | pose | classify
    precision: str  # fp32 | fp16 | int8 ...
    created: str  # ISO 8601, UTC, millisecond precision
    parent: str | None = None  # the version it was trained from; None: the packaged model or an import
    metrics: Mapping[str, float] = field(default_factory=dict)  # e.g. {"map50_95": 0.61, "map50": 0.84}
    provenance: Provenance = field(default_factory=Provenance)
    weights: str = "weights.pt"  # the weights' file name inside the version
    size: int = 0  # bytes

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "metrics": dict(self.metrics)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelVersion:
        raw: dict[str, Any] = json.loads(text)
        raw["provenance"] = Provenance(**raw.get("provenance") or {})
        raw["metrics"] = {str(k): float(v) for k, v in (raw.get("metrics") or {}).items()}
        return cls(**raw)


def version_name(created: datetime, sha256: str) -> str:
    """The name of a version made at `created` (UTC) with weights of `sha256`: sorts as they were made."""
    utc = created.astimezone(UTC)
    return f"{utc:%Y%m%dT%H%M%S}.{utc.microsecond // 1000:03d}Z-{sha256[:8]}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def new_version(weights: Path, *, task: str, precision: str = "fp32", parent: str | None = None,
                metrics: Mapping[str, float] | None = None, provenance: Provenance | None = None,
                created: datetime | None = None) -> ModelVersion:
    """The record of a version of `weights` (hashed here), named from `created` (default: now)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
    created = (created or datetime.now(UTC)).astimezone(UTC)
    sha = file_sha256(weights)
    return ModelVersion(name=version_name(created, sha), sha256=sha, task=task, precision=precision,
                        created=created.isoformat(timespec="milliseconds"), parent=parent, metrics=dict(metrics or {}),
                        provenance=provenance or Provenance(), weights=WEIGHTS + weights.suffix,
                        size=weights.stat().st_size)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise StoreError(f"not a version name: {name!r} (expected like 20261130T054012.123Z-3f2a9c1b)")
    return name


def to_keep(names: Iterable[str], keep_last: int, pinned: Iterable[str] = ()) -> set[str]:
    """The versions retention keeps: the last `keep_last` by name and every pinned one."""
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, not {keep_last}")
    ordered = sorted(names)
    return set(ordered[len(ordered) - keep_last:] if keep_last else []) | (set(pinned) & set(ordered))


class Store(ABC):
    """Versioned weights. Subclasses store bytes; the rules (names, records, hashes, retention) are here."""

    # -- what a backend provides --------------------------------------------------------------------
    @abstractmethod
    def _names(self) -> list[str]:
        """The names of every version whose record exists (any order)."""

    @abstractmethod
    def _read_record(self, name: str) -> bytes | None:
        """A version's record, None when it has none."""

    @abstractmethod
    def _write(self, record: ModelVersion, weights: Path) -> None:
        """Stores the weights as record.weights, then the record (last)."""

    @abstractmethod
    def _weights_path(self, record: ModelVersion) -> Path:
        """A local file holding the version's weights, as stored (not yet verified)."""

    @abstractmethod
    def _remove(self, name: str) -> None:
        """Removes a version, its record first."""

    # -- the interface ------------------------------------------------------------------------------
    def put(self, weights: Path, record: ModelVersion) -> ModelVersion:
        """Stores `weights` under `record` (from new_version()); returns the record. A name taken by
        other weights is refused; the same weights again return the stored record."""
        check_name(record.name)
        sha = file_sha256(weights)
        if sha != record.sha256:
            raise CorruptVersion(f"{weights} has sha256 {sha}, its record says {record.sha256}")
        existing = self._read_record(record.name)
        if existing is not None:
            stored = ModelVersion.from_json(existing)
            if stored.sha256 != record.sha256:
                raise StoreError(f"version {record.name} exists with other weights ({stored.sha256[:12]})")
            return stored
        self._write(record, weights)
        return record

    def record(self, name: str) -> ModelVersion:
        raw = self._read_record(check_name(name))
        if raw is None:
            raise VersionNotFound(name)
        return ModelVersion.from_json(raw)

    def get(self, name: str) -> Path:
        """A local path to the version's weights, their sha256 verified; CorruptVersion if it differs."""
        record = self.record(name)
        path = self._weights_path(record)
        sha = file_sha256(path)
        if sha != record.sha256:
            self._discard(path)
            raise CorruptVersion(f"version {name}: the stored weights have sha256 {sha}, the record says {record.sha256}")
        return path

    @abstractmethod
    def _discard(self, path: Path) -> None:
        """What to do with a local copy that failed verification (a cache drops it; a folder keeps it)."""

    # -- a training run's checkpoint: runs/<run>/<file>, beside the versions (never a version) ---------
    @abstractmethod
    def put_checkpoint(self, run: str, path: Path) -> None:
        """Stores a run's checkpoint file (ultralytics' last.pt) as runs/<run>/<its name>, replacing
        the previous one whole (a reader never sees half of it)."""

    @abstractmethod
    def get_checkpoint(self, run: str, name: str, dest: Path) -> bool:
        """Copies runs/<run>/<name> to `dest`; False when the run has none."""

    @abstractmethod
    def drop_checkpoints(self, run: str) -> None:
        """Removes runs/<run>/ (the run is over)."""

    def names(self) -> list[str]:
        """The names of every version, oldest first (no record is read)."""
        return sorted(self._names())

    def latest(self) -> ModelVersion | None:
        names = sorted(self._names())
        return self.record(names[-1]) if names else None

    def delete(self, name: str) -> None:
        if self._read_record(check_name(name)) is None:
            raise VersionNotFound(name)
        self._remove(name)

    def retain(self, keep_last: int, pinned: Iterable[str] = ()) -> list[str]:
        """Deletes every version but the last `keep_last` and the pinned ones; returns the deleted names."""
        names = self._names()
        keep = to_keep(names, keep_last, pinned)
        deleted = sorted(set(names) - keep)
        for name in deleted:
            self._remove(name)
        return deleted

    # Last in the class: inside its body, below this, `list` would name this method, not the type.
    def list(self) -> list[ModelVersion]:
        """Every version, oldest first."""
        found = []
        for name in sorted(self._names()):
            raw = self._read_record(name)
            if raw is not None:
                found.append(ModelVersion.from_json(raw))
        return found


class DirectoryStore(Store):
    """Versions in a folder (a PersistentVolumeClaim's mount). `get` returns the stored file itself."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if NAME.match(p.name) and (p / RECORD).is_file()]

    def _read_record(self, name: str) -> bytes | None:
        try:
            return (self.root / name / RECORD).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, record: ModelVersion, weights: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".partial-{record.name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            shutil.copyfile(weights, staging / record.weights)
            (staging / RECORD).write_text(record.to_json())
            for path in (staging / record.weights, staging / RECORD):
                with path.open("rb") as handle:
                    os.fsync(handle.fileno())
            staging.rename(self.root / record.name)  # fails if another writer put the same name first
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _weights_path(self, record: ModelVersion) -> Path:
        return self.root / record.name / record.weights

    def _discard(self, path: Path) -> None:
        pass  # the stored file itself: kept, for whoever repairs the volume

    def _remove(self, name: str) -> None:
        folder = self.root / name
        (folder / RECORD).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def put_checkpoint(self, run: str, path: Path) -> None:
        folder = self.root / RUNS / run
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.partial"
        shutil.copyfile(path, partial)
        partial.replace(folder / path.name)

    def get_checkpoint(self, run: str, name: str, dest: Path) -> bool:
        source = self.root / RUNS / run / name
        if not source.is_file():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return True

    def drop_checkpoints(self, run: str) -> None:
        shutil.rmtree(self.root / RUNS / run, ignore_errors=True)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""  # without leading or trailing slash

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """s3://bucket[/prefix]"""
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}")
        return cls(bucket, prefix.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)


class S3Store(Store):
    """Versions under s3://bucket/prefix. `client` is a boto3 S3 client (endpoint, credentials and
    region are the caller's: s3_client()); `get` downloads into `cache` and reuses a verified copy."""

    def __init__(self, client: S3Client, location: S3Location, cache: Path) -> None:
        self.client, self.location, self.cache = client, location, Path(cache)

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.location.bucket}/{self.location.prefix})"

    def _names(self) -> list[str]:
        names = []
        base = self.location.key("") if self.location.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.location.bucket, Prefix=base):
            for item in page.get("Contents", []):
                rest = item["Key"][len(base):]
                name, _, leaf = rest.partition("/")
                if leaf == RECORD and NAME.match(name):
                    names.append(name)
        return names

    def _read_record(self, name: str) -> bytes | None:
        try:
            answer = self.client.get_object(Bucket=self.location.bucket, Key=self.location.key(name, RECORD))
        except self.client.exceptions.NoSuchKey:
            return None
        return answer["Body"].read()

    def _write(self, record: ModelVersion, weights: Path) -> None:
        bucket = self.location.bucket
        self.client.upload_file(str(weights), bucket, self.location.key(record.name, record.weights))
        self.client.put_object(Bucket=bucket, Key=self.location.key(record.name, RECORD), Body=record.to_json().encode(),
                               ContentType="application/json")

    def _weights_path(self, record: ModelVersion) -> Path:
        local = self.cache / record.name / record.weights
        if local.is_file() and local.stat().st_size == record.size and file_sha256(local) == record.sha256:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            self.client.download_file(self.location.bucket, self.location.key(record.name, record.weights), str(partial))
            partial.replace(local)
        finally:
            partial.unlink(missing_ok=True)
        return local

    def _discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def _remove(self, name: str) -> None:
        bucket = self.location.bucket
        self.client.delete_object(Bucket=bucket, Key=self.location.key(name, RECORD))
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self.location.key(name, "")):
            keys += [{"Key": item["Key"]} for item in page.get("Contents", [])]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys[start:start + 1000], "Quiet": True})  # type: ignore[typeddict-item]
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.cache / name)

    def put_checkpoint(self, run: str, path: Path) -> None:
        self.client.upload_file(str(path), self.location.bucket, self.location.key(RUNS, run, path.name))  # one PUT: whole or absent

    def get_checkpoint(self, run: str, name: str, dest: Path) -> bool:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.location.bucket, self.location.key(RUNS, run, name), str(dest))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):  # no checkpoint yet
                return False
            raise
        return True

    def drop_checkpoints(self, run: str) -> None:
        bucket = self.location.bucket
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self.location.key(RUNS, run, "")):
            for item in page.get("Contents", []):
                self.client.delete_object(Bucket=bucket, Key=item["Key"])


def s3_client(endpoint_url: str | None = None, region: str | None = None, access_key: str | None = None,
              secret_key: str | None = None) -> S3Client:
    """A boto3 S3 client. Unset arguments fall back to boto3's own chain (AWS_* env vars, files, IRSA).
    Path-style addressing: S3-compatible servers (SeaweedFS, Ceph) serve buckets under the path."""
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"},
                    request_checksum_calculation="when_required", response_checksum_validation="when_required")
    client: S3Client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region or os.environ.get("AWS_REGION") or "us-east-1",
                                    aws_access_key_id=access_key, aws_secret_access_key=secret_key, config=config)
    return client


def open_store(url: str, cache: Path, client: S3Client | None = None) -> Store:
    """The store a URL names: s3://bucket[/prefix] (with `client`, default s3_client() from the env),
    else a folder (a path, or file:///path)."""
    if url.startswith("s3://"):
        return S3Store(client or s3_client(os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")),
                       S3Location.parse(url), cache)
    return DirectoryStore(Path(url.removeprefix("file://")))


# -- `python -m prelabel_backend.model_versions fetch STORE VERSION DIR`: the serving init container ----
CREDENTIAL_ENV = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken", "403"}


def fetch(store: Store, name: str, dest: Path) -> tuple[ModelVersion, Path]:
    """Copies version `name`'s weights to `dest/<name><suffix>` (suffix of the stored file, e.g. .pt),
    their sha256 verified (CorruptVersion otherwise), then its record to `dest/<name>.json` (last: a
    record beside weights means they are whole). Weights already there with the right sha256 are kept.
    Raises VersionNotFound, StoreError, CorruptVersion, OSError and the S3 client's errors."""
    record = store.record(name)
    target = dest / f"{name}{Path(record.weights).suffix}"
    dest.mkdir(parents=True, exist_ok=True)
    if not (target.is_file() and file_sha256(target) == record.sha256):
        source = store.get(name)
        partial = dest / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
        try:
            shutil.copyfile(source, partial)
            if (sha := file_sha256(partial)) != record.sha256:  # the copy itself, read back
                raise CorruptVersion(f"version {name}: the copy in {dest} has sha256 {sha}, the record says {record.sha256}")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
    record_path = dest / f"{name}.json"
    partial_record = dest / f".{record_path.name}.partial"
    partial_record.write_text(record.to_json())
    partial_record.replace(record_path)
    return record, target


def _s3_problem(exc: Exception, store: Store) -> str | None:
    """What an S3 client error means for the person fixing the init container; None: not one.
    Never the error's own text for credentials (it may echo the request's signing details)."""
    from botocore import exceptions

    endpoint = store.client.meta.endpoint_url if isinstance(store, S3Store) else "?"
    bucket = store.location.bucket if isinstance(store, S3Store) else "?"
    if isinstance(exc, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
        return f"no S3 credentials for {store!r}: set {CREDENTIAL_ENV} (from a Secret)"
    if isinstance(exc, exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _CREDENTIAL_CODES:
            return (f"the S3 server at {endpoint} refused the credentials ({code}): check {CREDENTIAL_ENV}, "
                    f"and that the key may read bucket {bucket!r}")
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist at {endpoint}: check the store URL"
        return f"the S3 server at {endpoint} answered {code or 'an error'} for {store!r}"
    if isinstance(exc, exceptions.EndpointConnectionError | exceptions.ConnectionError | exceptions.ReadTimeoutError):
        return f"cannot reach the S3 server at {endpoint} (AWS_ENDPOINT_URL): {type(exc).__name__}"
    return None


def _fetch_command(url: str, name: str, dest: Path) -> str:
    """Runs `fetch` for the CLI; returns the line to print. Raises SystemExit(message) on any failure."""
    import tempfile

    if not url.startswith("s3://"):
        root = Path(url.removeprefix("file://"))
        if not root.is_dir():
            raise SystemExit(f"the model store folder {root} does not exist: is its volume mounted?")
    try:
        check_name(name)
    except StoreError as exc:
        raise SystemExit(f"cannot fetch: {exc}") from None
    # The S3 download cache: under the temp dir (/tmp, the image's one writable path besides DIR), dropped after.
    with tempfile.TemporaryDirectory(prefix="prelabel-fetch-") as cache:
        try:
            store = open_store(url, Path(cache))
        except ValueError as exc:
            raise SystemExit(f"cannot open the model store: {exc}") from None
        try:
            record, path = fetch(store, name, dest)
        except VersionNotFound:
            newest = ", ".join(reversed(store.names()[-5:])) or "none: the store is empty"
            raise SystemExit(f"version {name} is not in {store!r}; the newest there: {newest}") from None
        except CorruptVersion as exc:
            raise SystemExit(f"refusing corrupt weights: {exc}; put the version again or serve another") from None
        except StoreError as exc:
            raise SystemExit(f"cannot fetch: {exc}") from None
        except OSError as exc:
            raise SystemExit(f"cannot write into {dest}: {exc}") from None
        except Exception as exc:
            problem = _s3_problem(exc, store)
            if problem is None:
                raise
            raise SystemExit(problem) from None
    return (f"fetched {record.name} ({record.task}, {record.precision}, {record.size} bytes, sha256 {record.sha256[:12]}, "
            f"parent {record.parent or 'none'}) from {store!r} into {path}")


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m prelabel_backend.model_versions",
                                     description="The model store, from the command line.")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser(
        "fetch", help="copy a stored version's weights (sha256 checked) and record into a folder",
        description="Writes DIR/VERSION<suffix> (the weights, e.g. .pt) and DIR/VERSION.json (the record). "
                    "S3 stores read AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION.")
    fetch_parser.add_argument("store", help="s3://bucket[/prefix] or the store's folder")
    fetch_parser.add_argument("version", help="a version name, e.g. 20261130T054012.123Z-3f2a9c1b")
    fetch_parser.add_argument("dir", type=Path, help="where to write the weights and the record")
    args = parser.parse_args(argv)
    print(_fetch_command(args.store, args.version, args.dir), flush=True)


if __name__ == "__main__":
    main()
