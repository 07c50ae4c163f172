"""The keys an MLBackend references, read from its Secrets: the Label Studio API key, the backend's
basic auth, the model store's S3 key pair (checked, never kept), and a digest of exactly the Secret data used (the pods roll when it changes).
Pure: the caller passes the function that reads a Secret's data."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from .errors import SecretMissing
from .manifests import secrets_hash
from .spec import MLBackendSpec

SecretData = Callable[[str, str], dict[str, str]]  # (namespace, name) -> the Secret's data, base64 as stored


@dataclass(frozen=True)
class Keys:
    api_key: str = ""
    auth: tuple[str, str] | None = None  # the backend's basic auth (user, password)
    digest: str = ""  # manifests.secrets_hash of the Secret data used


def decode(data: dict[str, str], key: str, secret: str) -> str:
    """One value of a Secret's data (base64, as the API sends it), decoded and stripped.
    Raises SecretMissing naming the key when the Secret lacks it."""
    if key not in data:
        raise SecretMissing(f"Secret {secret} has no key {key!r}: add it or point the secret ref's key at the right one")
    return base64.b64decode(data[key]).decode().strip()


def read(secret_data: SecretData, namespace: str, spec: MLBackendSpec) -> Keys:
    """The keys `spec` references in `namespace`. Raises SecretMissing (or the reader's KubeError)."""
    ref = spec.label_studio.api_key
    data = secret_data(namespace, ref.name)
    api_key = decode(data, ref.key, f"{namespace}/{ref.name}")
    digest_input = {ref.name: {ref.key: data[ref.key]}}
    auth = None
    if spec.basic_auth:
        b = spec.basic_auth
        auth_data = secret_data(namespace, b.name)
        auth = (decode(auth_data, b.username_key, f"{namespace}/{b.name}"), decode(auth_data, b.password_key, f"{namespace}/{b.name}"))
        digest_input[b.name] = {b.username_key: auth_data[b.username_key], b.password_key: auth_data[b.password_key]}
    creds = spec.store.s3_credentials if spec.store else None
    if creds:  # read so a missing Secret or key says so now, and in the digest so rotating the pair rolls the pods
        s3_data = secret_data(namespace, creds.name)
        for key in (creds.access_key_id_key, creds.secret_access_key_key):
            decode(s3_data, key, f"{namespace}/{creds.name}")
        digest_input.setdefault(creds.name, {}).update({k: s3_data[k] for k in (creds.access_key_id_key, creds.secret_access_key_key)})
    return Keys(api_key, auth, secrets_hash(digest_input))
