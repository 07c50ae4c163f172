"""The backend's HTTP endpoints as the operator calls them. POST /setup: the one way the operator asks a backend whether it serves a project's
labeling config and with which model version, for the reconcile (sync) and the pre-labeling driver
(async). The answer is read by `configcheck.interpret`, so both see the same thing.
Label Studio's ML-backend protocol: `{"project": "<id>.<created_ts>", "schema": "<View>...</View>"}`.
GET of a pod's readiness endpoint: what a backend that is not ready says about itself (diagnosis)."""

from __future__ import annotations

from typing import Any

import httpx

from .configcheck import ConfigCheck, interpret
from .errors import BackendUnreachable

SETUP_TIMEOUT = httpx.Timeout(30, connect=10)  # seconds; a model loading for the first time may take a while
HEALTH_TIMEOUT = httpx.Timeout(3, connect=2)  # seconds; a diagnosis, not a probe: never hold a reconcile long
# On every request of the pre-labeling driver: the backend runs a person's /predict (Label Studio's,
# without it) before these batch ones (backend_image/prelabel_backend/priority.py).
BATCH_HEADERS = {"X-Prelabel-Priority": "batch"}


def setup_body(project_id: int, label_config: str) -> dict[str, Any]:
    """What Label Studio sends to /setup, less what the backend does not read here (hostname, token)."""
    return {"project": f"{project_id}.0", "schema": label_config}


def _read(answer: httpx.Response) -> ConfigCheck:
    try:
        body = answer.json()
    except ValueError:
        body = None
    return interpret(answer.status_code, body, answer.text[:300])


class Backend:
    """The /setup of backends reached over HTTP (sync). Raises BackendUnreachable when the call fails."""

    def check_config(self, url: str, project_id: int, label_config: str, auth: tuple[str, str] | None) -> ConfigCheck:
        try:
            answer = httpx.post(f"{url}/setup", json=setup_body(project_id, label_config), auth=auth, timeout=SETUP_TIMEOUT)
        except httpx.HTTPError as exc:
            raise BackendUnreachable(f"backend unreachable for the config check: {type(exc).__name__}") from None
        return _read(answer)

    def health(self, url: str) -> dict[str, Any] | None:
        """A pod's own readiness endpoint (the full URL, diagnosis.health_endpoint), parsed; None when it
        does not answer JSON within HEALTH_TIMEOUT. Asked only of running pods that are not ready."""
        try:
            body = httpx.get(url, timeout=HEALTH_TIMEOUT).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None


async def check_config(http: httpx.AsyncClient, project_id: int, label_config: str) -> ConfigCheck:
    """Backend.check_config on the driver's client (its base URL and auth). Raises BackendUnreachable."""
    try:
        answer = await http.post("/setup", json=setup_body(project_id, label_config))
    except (httpx.HTTPError, OSError) as exc:
        raise BackendUnreachable(f"the backend is unreachable (/setup): {type(exc).__name__}") from None
    return _read(answer)
