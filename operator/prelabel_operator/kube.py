"""The Kubernetes side of the operator's I/O: apply objects server-side, read what they became,
read referenced Secrets. The use cases (reconciler) reach it as ports.Kube; this module only talks to the API."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError

from .errors import KubeError, SecretMissing
from .keys import decode

__all__ = ["KubeError", "SecretMissing", "decode"]  # re-exported: what this module raises, and the Secret value reader

FIELD_MANAGER = "prelabel-operator"
# (connect, read) seconds for every call. The client's own default is no timeout at all: a call on a
# pooled connection that went silent (a NAT or load balancer that dropped its state, a stalled
# proxy) hung its handler for good (tests/integration/test_outages.py). The operator's calls read or
# apply one object (milliseconds); 30 s, as kopf's own calls (settings.networking.request_timeout).
REQUEST_TIMEOUT = (10.0, 30.0)
_lock = threading.Lock()
_clients: list[tuple[client.ApiClient, DynamicClient]] = []  # made once, on first use


def _connected() -> tuple[client.ApiClient, DynamicClient]:
    with _lock:
        if not _clients:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.ApiClient()
            _default_timeout(api.rest_client)
            _clients.append((api, DynamicClient(api)))
        return _clients[0]


def _default_timeout(rest: Any) -> None:
    """Gives every request of a kubernetes.client.rest.RESTClientObject REQUEST_TIMEOUT unless it names
    its own (the generated client passes `_request_timeout=None` through to urllib3 as "no timeout")."""
    request = rest.request

    def timed(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or REQUEST_TIMEOUT, **kwargs)

    rest.request = timed


def api_client() -> client.ApiClient:
    return _connected()[0]


def dynamic() -> DynamicClient:
    return _connected()[1]


@contextlib.contextmanager
def calling(verb: str, what: str, namespace: str) -> Iterator[None]:
    """Turns API failures into KubeError; a 403 names the permission the operator's RBAC lacks."""
    try:
        yield
    except (client.ApiException, DynamicApiError) as exc:
        if exc.status == 404:
            raise
        if exc.status == 403:
            raise KubeError("Forbidden", f"the operator may not {verb} {what} in namespace {namespace}: its Role or ClusterRole "
                                         "lacks this permission (Helm chart: `helm upgrade` restores the rules; with "
                                         "watchNamespaces, list this namespace there)") from None
        raise KubeError("KubernetesAPIError", f"{verb} {what} in namespace {namespace}: HTTP {exc.status} {exc.reason}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise KubeError("KubernetesAPIUnreachable", f"{verb} {what} in namespace {namespace}: {type(exc).__name__}") from None


def apply(body: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Server-side apply: idempotent, and it takes ownership of exactly the fields we set."""
    with calling("apply", _plural(body["apiVersion"], body["kind"]), namespace):
        resource = dynamic().resources.get(api_version=body["apiVersion"], kind=body["kind"])
        applied = dynamic().server_side_apply(resource, body=body, namespace=namespace, field_manager=FIELD_MANAGER, force_conflicts=True)
    result: dict[str, Any] = applied.to_dict()
    return result


def delete(api_version: str, kind: str, name: str, namespace: str) -> None:
    with calling("delete", _plural(api_version, kind), namespace):
        resource = dynamic().resources.get(api_version=api_version, kind=kind)
        try:
            resource.delete(name=name, namespace=namespace)
        except NotFoundError:
            pass


def get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    with calling("get", _plural(api_version, kind), namespace):
        resource = dynamic().resources.get(api_version=api_version, kind=kind)
        try:
            found: dict[str, Any] = resource.get(name=name, namespace=namespace).to_dict()
            return found
        except NotFoundError:
            return None


def _plural(api_version: str, kind: str) -> str:
    group = api_version.rpartition("/")[0]
    return f"{kind.lower()}s" + (f".{group}" if group else "")


def wait_for_crd(group: str, version: str, plural: str, log: logging.Logger, max_delay: float = 30) -> None:
    """Blocks until the API serves group/version/plural (discovery: open to every authenticated user),
    logging what to fix meanwhile. Lets the operator start before its CRD without needing to watch CRDs."""
    delay = 1.0
    while True:
        try:
            found = client.CustomObjectsApi(api_client()).get_api_resources(group, version)
            if any(r.name == plural for r in found.resources or []):
                _wait_for_watch_cache(group, version, plural, log)
                return
            problem = f"{group}/{version} does not serve {plural}"
        except client.ApiException as exc:
            problem = f"HTTP {exc.status} for {group}/{version}"
        except urllib3.exceptions.HTTPError as exc:
            problem = f"API server unreachable ({type(exc).__name__})"
        log.error("waiting for the %s.%s CRD (%s): install it with `kubectl apply -f crds/` or the Helm chart's crds.install=true; "
                  "retrying in %.0fs", plural, group, problem, delay)
        time.sleep(delay)
        delay = min(max_delay, delay * 2)


def _wait_for_watch_cache(group: str, version: str, plural: str, log: logging.Logger, timeout: float = 30) -> None:
    """A CRD just established is served before the API server's watch cache for it is ready: watches
    (kopf's) then get HTTP 429 "storage is (re)initializing", which kopf retries but logs as errors.
    Open a one-second watch until it is accepted. Any other answer (403 where the operator may watch
    only its namespaces) ends the wait: kopf reports that itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = client.CustomObjectsApi(api_client()).list_cluster_custom_object(
                group, version, plural, watch=True, timeout_seconds=1, _preload_content=False)
            # Closed, not released: a watch's unread stream returned to the pool broke the next request
            # on that connection (ProtocolError: the peering object's create, right after this).
            cast(urllib3.BaseHTTPResponse, answer).close()
            return
        except client.ApiException as exc:
            if exc.status != 429:
                return
        except urllib3.exceptions.HTTPError:
            return
        log.info("waiting for the API server's cache of %s.%s", plural, group)
        time.sleep(1)


PEERING_GROUP, PEERING_VERSION = "kopf.dev", "v1"


def ensure_peering(name: str, namespaces: list[str]) -> None:
    """Creates kopf's peering object unless it exists: a ClusterKopfPeering `name` for a cluster-wide
    operator, else a KopfPeering `name` in each watched namespace. kopf, told a peering name, refuses
    to start without it; made here, it needs no install-order step (a chart cannot create an object
    of a CRD it installs in the same release)."""
    api = client.CustomObjectsApi(api_client())
    where: list[str | None] = [*namespaces] if namespaces else [None]
    for namespace in where:
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        body = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "kind": kind, "metadata": {"name": name}}
        with calling("create", f"{kind.lower()}s.{PEERING_GROUP}", namespace or "(cluster)"):
            try:
                if namespace:
                    api.create_namespaced_custom_object(PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", body)
                else:
                    api.create_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", body)
            except client.ApiException as exc:
                if exc.status != 409:  # 409: it exists (made by another replica, or by hand)
                    raise


def patch_status(group: str, version: str, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """JSON merge patch of a custom resource's status subresource (None deletes a key)."""
    with calling("patch", f"{plural}.{group}/status", namespace):
        client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
            group, version, namespace, plural, name, {"status": status}, _content_type="application/merge-patch+json")


def scale(namespace: str, name: str, replicas: int) -> None:
    """Sets a Deployment's replicas (a merge patch: the chart lets the operator patch Deployments)."""
    with calling("patch", "deployments", namespace):
        client.AppsV1Api(api_client()).patch_namespaced_deployment(name, namespace, {"spec": {"replicas": replicas}})


def secret_data(namespace: str, name: str) -> dict[str, str]:
    """A Secret's data, base64 as stored (decode with `decode`); raises SecretMissing with what to fix."""
    try:
        with calling("get", "secrets", namespace):
            secret = client.CoreV1Api(api_client()).read_namespaced_secret(name, namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            raise SecretMissing(f"Secret {namespace}/{name} does not exist: create it (see spec.labelStudio.apiKeySecretRef)") from None
        raise
    # base64 text as the API sends it; kubernetes' model types the values str | bytes
    return {key: value.decode() if isinstance(value, bytes) else value for key, value in (secret.data or {}).items()}


def pods(namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
    """The pods matching a label selector, as Kubernetes JSON."""
    with calling("list", "pods", namespace):
        found = client.CoreV1Api(api_client()).list_namespaced_pod(
            namespace, label_selector=",".join(f"{k}={v}" for k, v in sorted(selector.items())), _preload_content=False)
    items: list[dict[str, Any]] = json.loads(cast(urllib3.BaseHTTPResponse, found).data).get("items") or []
    return items


def pod_events(namespace: str) -> list[dict[str, Any]]:
    """The events about pods in a namespace, as Kubernetes JSON (the kubelet's probe failures, the
    scheduler's and the image puller's messages)."""
    with calling("list", "events", namespace):
        found = client.CoreV1Api(api_client()).list_namespaced_event(namespace, field_selector="involvedObject.kind=Pod", _preload_content=False)
    items: list[dict[str, Any]] = json.loads(cast(urllib3.BaseHTTPResponse, found).data).get("items") or []
    return items


class API:
    """This module's calls as one object: the Kubernetes client the use cases take (ports.Kube)."""

    secret_data = staticmethod(secret_data)
    apply = staticmethod(apply)
    get = staticmethod(get)
    delete = staticmethod(delete)
    patch_status = staticmethod(patch_status)
    pods = staticmethod(pods)
    pod_events = staticmethod(pod_events)
