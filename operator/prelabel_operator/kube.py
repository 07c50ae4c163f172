"""The Kubernetes side of the operator's I/O: apply objects server-side, read what they became,
read referenced Secrets. Decisions live in `reconcile`; this module only talks to the API."""

from __future__ import annotations

import base64
import threading
from typing import Any

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

FIELD_MANAGER = "prelabel-operator"
_lock = threading.Lock()
_clients: dict[str, Any] = {}


def api_client() -> client.ApiClient:
    with _lock:
        if "api" not in _clients:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            _clients["api"] = client.ApiClient()
            _clients["dynamic"] = DynamicClient(_clients["api"])
        return _clients["api"]


def dynamic() -> DynamicClient:
    api_client()
    return _clients["dynamic"]


def apply(body: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Server-side apply: idempotent, and it takes ownership of exactly the fields we set."""
    resource = dynamic().resources.get(api_version=body["apiVersion"], kind=body["kind"])
    applied = dynamic().server_side_apply(resource, body=body, namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True)
    return applied.to_dict()


def delete(api_version: str, kind: str, name: str, namespace: str) -> None:
    resource = dynamic().resources.get(api_version=api_version, kind=kind)
    try:
        resource.delete(name=name, namespace=namespace)
    except NotFoundError:
        pass


def get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    resource = dynamic().resources.get(api_version=api_version, kind=kind)
    try:
        return resource.get(name=name, namespace=namespace).to_dict()
    except NotFoundError:
        return None


class SecretMissing(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def secret_data(namespace: str, name: str) -> dict[str, str]:
    """A Secret's data, base64 as stored (decode with `decode`); raises SecretMissing with what to fix."""
    try:
        secret = client.CoreV1Api(api_client()).read_namespaced_secret(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            raise SecretMissing(f"Secret {namespace}/{name} does not exist: create it (see spec.labelStudio.apiKeySecretRef)") from None
        raise
    return dict(secret.data or {})


def decode(data: dict[str, str], key: str, secret: str) -> str:
    if key not in data:
        raise SecretMissing(f"Secret {secret} has no key {key!r}: add it or point the secret ref's key at the right one")
    return base64.b64decode(data[key]).decode().strip()
