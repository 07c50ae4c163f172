"""The operator (`python -m prelabel_operator`) as a local process against a kubeconfig."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kubernetes import client, config

from . import processes
from .cluster import LocalCluster, free_port, stop_group
from .poller import Poller


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, resync_seconds: float = 5, extra_args: list[str] | None = None,
                 python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self.kubeconfig, self.log, self.resync_seconds = kubeconfig, log, resync_seconds
        self.extra_args = extra_args or []
        self.python, self.env = python, env or {}  # another interpreter: e.g. one with only the image's dependencies
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()

    def start(self) -> OperatorProcess:
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", **self.env,  # as Dockerfile.operator sets it
               "KUBECONFIG": str(self.kubeconfig), "PRELABEL_RESYNC_SECONDS": str(self.resync_seconds)}
        self.proc = processes.spawn(
            "operator", [self.python, "-m", "prelabel_operator", "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
                         "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port), *self.extra_args],
            log=self.log, env=env)
        return self

    def metrics(self) -> str:
        """Its Prometheus /metrics text. Raises OSError while it does not listen yet."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as answer:
            return str(answer.read().decode())

    def metric(self, sample: str) -> float:
        """One sample of /metrics, e.g. 'name_total{label="v"}' (0 when absent)."""
        line = next((x for x in self.metrics().splitlines() if x.startswith(sample + " ")), "x 0")
        return float(line.split()[-1])

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crashed or evicted operator pod."""
        if self.proc and self.proc.poll() is None:
            processes.kill(self.proc)

    def stop(self) -> None:
        if self.proc:
            stop_group(self.proc)


class ChartOperator(Poller):
    """Stands in for the operator pod of a chart that someone else installs (Argo CD, in the GitOps
    test): while the chart's Deployment exists and is Available (kwok marks its pod Ready), it runs
    the operator as a local process with a token of the Deployment's ServiceAccount and the
    container's `--namespace` args; when the Deployment is deleted, it stops the process, as the pod
    would go. `events` records (time, "started" | "stopped")."""

    def __init__(self, cluster: LocalCluster, namespace: str, deployment: str, workdir: Path, period: float = 0.5) -> None:
        super().__init__(period, "chart-operator")
        self.cluster, self.namespace, self.deployment, self.workdir = cluster, namespace, deployment, workdir
        self.apps = client.AppsV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
        self.process: OperatorProcess | None = None
        self.events: list[tuple[float, str]] = []

    def stop(self) -> None:
        super().stop()
        self._end()

    @property
    def log(self) -> Path:
        return self.workdir / "operator.log"

    def sync(self) -> None:
        try:
            deployment = self.apps.read_namespaced_deployment(self.deployment, self.namespace)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            deployment = None
        if deployment is None or (deployment.metadata is not None and deployment.metadata.deletion_timestamp is not None):
            self._end()
            return
        conditions = deployment.status.conditions if deployment.status else None
        available = any(c.type == "Available" and c.status == "True" for c in conditions or [])
        if available and self.process is None:
            # What the API server always sets on a Deployment it returns; the client types them optional.
            pod = deployment.spec.template.spec if deployment.spec else None
            assert pod is not None and pod.service_account_name
            kubeconfig = self.cluster.token_kubeconfig(self.namespace, pod.service_account_name)
            args = [a for a in pod.containers[0].args or [] if a.startswith("--namespace")]
            self.process = OperatorProcess(kubeconfig, self.log, extra_args=args).start()
            self.events.append((time.time(), "started"))

    def _end(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
            self.events.append((time.time(), "stopped"))
