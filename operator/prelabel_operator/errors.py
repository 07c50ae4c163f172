"""The operator's errors, each with a status condition `reason` and a `message` that names what to
fix. A leaf: the application layer catches these without importing the clients that raise them."""

from __future__ import annotations


class KubeError(Exception):
    """A Kubernetes API call that failed (kube.py); `reason` is a status condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class SecretMissing(KubeError):
    """A referenced Secret, or a key in it, does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__("SecretMissing", message)


class LabelStudioError(Exception):
    """A Label Studio call that failed (labelstudio.py); `retryable`: worth trying again unchanged."""

    def __init__(self, reason: str, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.reason, self.message, self.retryable = reason, message, retryable


class BackendUnreachable(Exception):
    """The backend's HTTP endpoint could not be reached (backend_client.py); the message says how."""


def key_refused(action: str, status: int, detail: str) -> str:
    """What to do when Label Studio refuses the API key (HTTP 401/403), with its own words (`detail`).
    A personal access token (a JWT refresh token) dies at once when its user rotates or revokes it
    (POST /api/token/rotate/): the SDK's exchange for an access token then answers "Token is blacklisted"."""
    said = f": {detail[:200]}" if detail else ""
    return (f"Label Studio refused the API key while trying to {action} (HTTP {status}{said}): put a valid key in the Secret "
            "named in spec.labelStudio.apiKeySecretRef; a personal access token rotated or revoked in Label Studio must be "
            "replaced there (the backend pods then roll), and a legacy token works only while legacy tokens are enabled in Label Studio")
