"""Outages, on a real control plane and a real Label Studio, with the operator installed by its chart:

- Label Studio stopped for 60 s: the Registered condition names the reason; once it is back, the
  resource is Ready again with no action and still one registration.
- The API server restarted: the operator resumes (an MLBackend created after the restart is reconciled).
- A stalled watch: the operator reaches the API server through a loopback TCP proxy that freezes
  every connection open at that moment (open, silent). An MLBackend created during the stall is
  reconciled within STALL_BOUND: kopf gives up on a watch stream that has sent nothing, not even a
  bookmark, for `watching.inactivity_timeout` (70 s, handlers.configure), then lists and watches
  again on a new connection.
- The operator started while Label Studio cannot be reached (a proxy that accepts and never
  answers, as a missing route looks to a client): the status says so and the operator retries;
  when the route is back, the resource becomes Ready with no action.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from prelabel_local import chart
from prelabel_local.kubelet import BackendKubelet
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG, wait_for

from .tcp_proxy import TcpProxy

pytestmark = [pytest.mark.cluster, pytest.mark.labelstudio]

# The stated bound for a stalled watch: kopf's inactivity timeout (70 s) and a relist; then every call
# the reconcile makes on a pooled connection that froze too fails after 30 s (kube.REQUEST_TIMEOUT,
# kopf's networking.request_timeout) and is retried on a new one (a handler retry waits up to 30 s);
# then the reconcile itself (a Deployment made Available by kwok, a registration). Measured: see the
# test's output.
STALL_BOUND = 240


def via(kubeconfig: Path, port: int) -> Path:
    """A copy of a kubeconfig whose server is 127.0.0.1:port (the API server's certificate names 127.0.0.1)."""
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    out = kubeconfig.with_name(f"via-{port}-{kubeconfig.name}")
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


@pytest.fixture(scope="module")
def env(cluster, label_studio, tmp_path_factory) -> Iterator:  # noqa: ANN001
    service_account = chart.install(cluster)
    work = tmp_path_factory.mktemp("outages")
    proxy = TcpProxy(cluster.api_port)
    kubelet = BackendKubelet(cluster.kubeconfig, work / "pods").start()
    operator = OperatorProcess(via(service_account, proxy.port), work / "operator.log").start()
    yield cluster, operator, proxy
    operator.stop()
    kubelet.stop()
    proxy.close()
    print("operator log tail:\n", (work / "operator.log").read_text()[-4000:])


def backend(cluster, label_studio, ls_client, url: str | None = None) -> tuple[str, int]:  # noqa: ANN001
    """An MLBackend `shapes` in a new namespace for a new project; returns (namespace, project id)."""
    ns = f"out-{uuid.uuid4().hex[:6]}"
    chart.restricted_namespace(cluster, ns)
    cluster.kubectl("create", "secret", "generic", "ls-key", "-n", ns, f"--from-literal=api-key={label_studio.token}")
    project = ls_client.projects.create(title=f"outage {ns}", label_config=SEED_CONFIG)
    resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "shapes", "namespace": ns},
                "spec": {"labelStudio": {"url": url or label_studio.url, "apiKeySecretRef": {"name": "ls-key"},
                                         "projects": [{"id": project.id}]}, "image": "prelabel-backend:test"}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))
    return ns, project.id


def ready(cluster, ns: str) -> bool:  # noqa: ANN001
    return condition(cluster.status("mlb", ns, "shapes"), "Ready").get("status") == "True"


def delete(cluster, ns: str) -> None:  # noqa: ANN001
    cluster.kubectl("delete", "mlb", "shapes", "-n", ns, "--timeout=120s")


def test_label_studio_stopped_for_60_s_is_shown_then_recovered(env, label_studio, ls_client) -> None:  # noqa: ANN001
    cluster, _, _ = env
    ns, project = backend(cluster, label_studio, ls_client)
    wait_for("Ready", lambda: ready(cluster, ns), 180)
    stopped_at = time.monotonic()
    label_studio.stop(keep=True)
    try:
        registered = wait_for("LabelStudioUnreachable", lambda: (c := condition(cluster.status("mlb", ns, "shapes"), "Registered"))
                              .get("reason") == "LabelStudioUnreachable" and c, 60)
        assert registered["status"] == "False" and "could not reach Label Studio" in registered["message"], registered
        assert condition(cluster.status("mlb", ns, "shapes"), "Ready")["status"] == "False"
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped_at)))
    finally:
        label_studio.start()
    back = time.monotonic()
    wait_for("Ready again, with no action", lambda: ready(cluster, ns), 120)
    print(f"Ready {time.monotonic() - back:.1f}s after Label Studio answered again")
    assert len(list(ls_client.ml.list(project=project))) == 1
    delete(cluster, ns)


def test_the_operator_resumes_after_an_api_server_restart(env, label_studio, ls_client) -> None:  # noqa: ANN001
    cluster, operator, _ = env
    cluster.restart_apiserver()
    ns, project = backend(cluster, label_studio, ls_client)
    wait_for("Ready after the restart", lambda: ready(cluster, ns), 180)
    assert operator.proc is not None and operator.proc.poll() is None
    assert len(list(ls_client.ml.list(project=project))) == 1
    delete(cluster, ns)


def test_a_stalled_watch_is_abandoned_within_the_bound(env, label_studio, ls_client) -> None:  # noqa: ANN001
    cluster, _, proxy = env
    wait_for("the operator's watch open through the proxy", lambda: proxy.connections() >= 1, 120)
    time.sleep(5)  # and its first list done: it watches
    frozen = proxy.freeze()
    assert frozen >= 1
    started = time.monotonic()
    ns, project = backend(cluster, label_studio, ls_client)
    wait_for(f"Ready within {STALL_BOUND}s of a stalled watch", lambda: ready(cluster, ns), STALL_BOUND)
    print(f"{frozen} connections frozen; the MLBackend created during the stall was Ready after {time.monotonic() - started:.1f}s")
    assert len(list(ls_client.ml.list(project=project))) == 1
    delete(cluster, ns)


def test_an_operator_started_without_a_route_to_label_studio_says_so_and_retries(env, label_studio, ls_client) -> None:  # noqa: ANN001
    cluster, operator, _ = env
    route = TcpProxy(int(label_studio.url.rsplit(":", 1)[1]))
    route.blackhole = True
    operator.stop()
    operator.start()
    try:
        ns, project = backend(cluster, label_studio, ls_client, url=f"http://127.0.0.1:{route.port}")
        registered = wait_for("LabelStudioUnreachable", lambda: (c := condition(cluster.status("mlb", ns, "shapes"), "Registered"))
                              .get("reason") == "LabelStudioUnreachable" and c, 180)
        assert registered["status"] == "False" and "could not reach Label Studio" in registered["message"], registered
        route.blackhole = False
        back = time.monotonic()
        wait_for("Ready once the route is back, with no action", lambda: ready(cluster, ns), 240)
        print(f"Ready {time.monotonic() - back:.1f}s after the route came back")
        assert len(list(ls_client.ml.list(project=project))) == 1
        delete(cluster, ns)
    finally:
        route.close()
