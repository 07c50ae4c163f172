"""What the application layer (reconciler) needs of the outside world, as protocols: the Kubernetes
API (kube.py), Label Studio (labelstudio.Client) and the backend's /setup (backend_client.Backend).
The handlers pass the real clients; unit tests pass fakes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .configcheck import ConfigCheck
from .registration import Desired, Plan, Registration
from .spec import ProjectRef


class Project(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def title(self) -> str: ...
    @property
    def label_config(self) -> str: ...
    @property
    def model_version(self) -> str: ...


class Kube(Protocol):
    """Raises errors.KubeError (errors.SecretMissing for a missing Secret) with what to fix."""

    def secret_data(self, namespace: str, name: str) -> dict[str, str]: ...
    def apply(self, body: dict[str, Any], namespace: str) -> dict[str, Any]: ...
    def delete(self, api_version: str, kind: str, name: str, namespace: str) -> None: ...
    def patch_status(self, group: str, version: str, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None: ...


class LabelStudio(Protocol):
    """One Label Studio, one API key. Raises errors.LabelStudioError with a reason and what to fix."""

    def resolve(self, ref: ProjectRef) -> Project: ...
    def registrations(self, project_id: int) -> list[Registration]: ...
    def ensure(self, project_id: int, desired: Desired, uid: str, auth_password: str | None = None) -> tuple[int, Plan]: ...
    def set_model_version(self, project: Any, model_version: str) -> None: ...
    def remove(self, project_id: int, registration_id: int) -> None: ...
    def tidy_webhooks(self, project_id: int, uid: str, in_use: set[str], released: set[str], current: str | None) -> None: ...


LabelStudioFor = Callable[[str, str], LabelStudio]  # (Label Studio URL, API key) -> its client


class Backend(Protocol):
    """Raises errors.BackendUnreachable when the backend cannot be reached."""

    def check_config(self, url: str, project_id: int, label_config: str, auth: tuple[str, str] | None) -> ConfigCheck: ...
