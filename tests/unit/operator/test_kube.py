"""API failures become status reasons that say what to fix (kube.calling)."""

from __future__ import annotations

import pytest
import urllib3
from kubernetes import client

from prelabel_operator import kube


def test_forbidden_names_the_missing_permission() -> None:
    with pytest.raises(kube.KubeError) as caught, kube.calling("apply", "services", "team-a"):
        raise client.ApiException(status=403, reason="Forbidden")
    assert caught.value.reason == "Forbidden"
    assert caught.value.message.startswith("the operator may not apply services in namespace team-a: its Role or ClusterRole lacks")


def test_other_failures_are_api_errors_and_not_found_passes_through() -> None:
    with pytest.raises(kube.KubeError) as caught, kube.calling("get", "deployments.apps", "ns"):
        raise client.ApiException(status=500, reason="Internal Server Error")
    assert (caught.value.reason, caught.value.message) == ("KubernetesAPIError", "get deployments.apps in namespace ns: HTTP 500 Internal Server Error")
    with pytest.raises(kube.KubeError) as caught, kube.calling("get", "secrets", "ns"):
        raise urllib3.exceptions.MaxRetryError(None, "/api", "refused")  # type: ignore[arg-type]
    assert caught.value.reason == "KubernetesAPIUnreachable"
    with pytest.raises(client.ApiException), kube.calling("get", "secrets", "ns"):
        raise client.ApiException(status=404, reason="Not Found")  # callers turn a 404 into their own answer


def test_a_missing_secret_is_a_kube_error_with_its_own_reason() -> None:
    assert kube.SecretMissing("Secret ns/x does not exist").reason == "SecretMissing"
    with pytest.raises(kube.SecretMissing, match="has no key 'api-key'"):
        kube.decode({}, "api-key", "ns/x")


def test_plural_names_match_rbac_resources() -> None:
    assert kube._plural("apps/v1", "Deployment") == "deployments.apps"
    assert kube._plural("v1", "Service") == "services"
    assert kube._plural("autoscaling/v2", "HorizontalPodAutoscaler") == "horizontalpodautoscalers.autoscaling"
