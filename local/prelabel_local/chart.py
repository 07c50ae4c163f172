"""The operator installed the way users install it: `helm install` of charts/prelabel-operator into
a namespace that enforces the restricted Pod Security Standard.

The chart's pod cannot run here (no container runtime; kwok only marks it Running), so the operator
runs as a local process with exactly the chart's permissions: a token of the chart's ServiceAccount.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .cluster import REPO, LocalCluster

CHART = REPO / "charts" / "prelabel-operator"
RELEASE = "prelabel-operator"
NAMESPACE = "prelabel-system"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}"  # its name in the audit log


def restricted_namespace(cluster: LocalCluster, name: str) -> None:
    """Creates a namespace whose pods must meet the restricted Pod Security Standard."""
    if cluster.kubectl("get", "namespace", name, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "--overwrite", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")


def install(cluster: LocalCluster, values: dict[str, Any] | None = None, token_duration: str = "2h") -> Path:
    """Installs (or upgrades) the chart, waits for its Deployment, returns the ServiceAccount's kubeconfig."""
    restricted_namespace(cluster, NAMESPACE)
    cluster.helm("upgrade", "--install", RELEASE, str(CHART), "-n", NAMESPACE, "--values", "-", "--wait", "--timeout", "120s",
                 input=yaml.safe_dump(values or {}))
    return cluster.token_kubeconfig(NAMESPACE, RELEASE, token_duration)
