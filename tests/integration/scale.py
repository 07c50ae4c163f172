"""Many MLBackends at once, measured: shared by tests/integration/test_scale.py (small N, in CI) and
bench/scale_bench.py (N = 10, 100, 500).

The operator runs as a real process with the chart's ServiceAccount, Label Studio is real (one
project per backend), the control plane is real with kwok nodes; the backends are one light process
(prelabel_local.fake_backends) listening on every Service's ClusterIP. What the operator costs is
counted from the servers' own records: Label Studio's access log and the API server's audit log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prelabel_local import chart
from prelabel_local.cluster import LocalCluster
from prelabel_local.fake_backends import FakeBackends
from prelabel_local.label_studio_server import LabelStudio
from prelabel_local.operator_process import OperatorProcess
from prelabel_operator.status import condition
from tests.conftest import SEED_CONFIG

NAMESPACE = "scale"
# Label Studio 1.23's access log: one line per request, from Django's server logger. Its logging
# config writes each line twice (two handlers, both into the one log): counted once by halving.
ACCESS_LINE = re.compile(r"\[django\.server::log_message::\d+\] \[\w+\] \"(GET|POST|PUT|PATCH|DELETE) ")


def _time(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def ls_requests(log: Path, offset: int = 0) -> tuple[int, int]:
    """(requests Label Studio logged after byte `offset` of its log, the log's size now)."""
    with log.open("rb") as f:
        f.seek(offset)
        data = f.read()
    return len(ACCESS_LINE.findall(data.decode(errors="replace"))) // 2, offset + len(data)


def api_requests(cluster: LocalCluster, user: str, start: float, end: float) -> dict[str, int]:
    """The requests `user` made of the API server between two times (epoch s), by verb and resource,
    from the audit log (completed requests only: a watch counts once, when it ends)."""
    counts: dict[str, int] = {}
    for event in cluster.audit_events(user):
        if event.get("stage") != "ResponseComplete" or not start <= _time(event["stageTimestamp"]) < end:
            continue
        ref = event.get("objectRef") or {}
        key = f"{event['verb']} {ref.get('resource', '?')}{'/' + ref['subresource'] if ref.get('subresource') else ''}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


@dataclass
class Usage:
    rss_peak_mb: float
    cpu_seconds: float


def usage(pid: int) -> Usage:
    """A live process's peak resident set (VmHWM) and CPU time so far (user + system)."""
    status = Path(f"/proc/{pid}/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return Usage(hwm / 1024, (int(fields[11]) + int(fields[12])) / ticks)


def new_projects(label_studio: LabelStudio, n: int, prefix: str) -> list[int]:
    """n new Label Studio projects with the seed's config, one at a time: Label Studio on SQLite answers
    concurrent creates 500 ("database is locked"), and the SDK's retry of one it had committed made a duplicate."""
    from label_studio_sdk import LabelStudio as Client

    ls = Client(base_url=label_studio.url, api_key=label_studio.token)
    return [int(ls.projects.create(title=f"{prefix}-{i}", label_config=SEED_CONFIG, request_options={"max_retries": 0}).id) for i in range(n)]


@dataclass
class Scale:
    """The stack for one scale run; `start()` brings up the operator and the fake backends on a
    running cluster and Label Studio."""

    cluster: LocalCluster
    label_studio: LabelStudio
    workdir: Path
    resync_seconds: float = 30
    drift_rate: float = 0.8
    operator_env: dict[str, str] = field(default_factory=dict)
    operator: OperatorProcess | None = None
    service_account: Path | None = None  # its kubeconfig
    backends: FakeBackends | None = None

    def start(self) -> Scale:
        service_account = chart.install(self.cluster, token_duration="4h")
        chart.restricted_namespace(self.cluster, NAMESPACE)
        self.cluster.kubectl("create", "secret", "generic", "ls-key", "-n", NAMESPACE, f"--from-literal=api-key={self.label_studio.token}")
        self.backends = FakeBackends(self.cluster.kubeconfig, self.workdir / "fake-backends.log").start()
        self.service_account = service_account
        self._start_operator(self.resync_seconds)
        return self

    def _start_operator(self, resync_seconds: float) -> OperatorProcess:
        assert self.service_account is not None
        env = {"PRELABEL_DRIFT_REQUESTS_PER_SECOND": str(self.drift_rate), **self.operator_env}
        self.operator = OperatorProcess(self.service_account, self.workdir / "operator.log", resync_seconds=resync_seconds, env=env).start()
        return self.operator

    def restart_operator(self, resync_seconds: float) -> OperatorProcess:
        """The operator stopped and started again at another resync tick (same ServiceAccount, env, log)."""
        assert self.operator is not None
        self.operator.stop()
        return self._start_operator(resync_seconds)

    def stop(self) -> None:
        if self.operator:
            self.operator.stop()
        if self.backends:
            self.backends.stop()

    def projects(self, n: int, prefix: str) -> list[int]:
        return new_projects(self.label_studio, n, prefix)

    def apply(self, project_ids: list[int], prefix: str) -> float:
        """Applies one MLBackend per project in one `kubectl apply`; returns when it was sent (epoch s)."""
        docs = [{"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": f"{prefix}-{i}", "namespace": NAMESPACE},
                 "spec": {"labelStudio": {"url": self.label_studio.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": pid}]},
                          "image": "prelabel-backend:test",
                          # kwok nodes have 32 CPUs: at the default request (500m) 64 pods fit one; 110 at this
                          "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}} for i, pid in enumerate(project_ids)]
        sent = time.time()
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        return sent

    def resources(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.cluster.kubectl("get", "mlbackends", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        return items

    def wait_ready(self, n: int, timeout: float, poll: float = 2.0) -> float:
        """Waits until n MLBackends are Ready; returns when that was seen (epoch s)."""
        deadline = time.monotonic() + timeout
        ready = 0
        while time.monotonic() < deadline:
            items = self.resources()
            ready = sum(1 for r in items if condition(r.get("status"), "Ready").get("status") == "True")
            if ready >= n:
                return time.time()
            time.sleep(poll)
        raise AssertionError(f"{ready}/{n} MLBackends Ready after {timeout:.0f}s; operator log: {self.workdir / 'operator.log'}")

    def deployments_available_after(self, sent: float) -> float:
        """Seconds from `sent` (epoch s) to the last backend Deployment's Available transition (1 s resolution)."""
        items = json.loads(self.cluster.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "json").stdout)["items"]
        return max(_time(condition(d.get("status"), "Available")["lastTransitionTime"]) for d in items) - sent

    def registered_after(self) -> list[float]:
        """Seconds from each MLBackend's creation to its Registered condition's transition (1 s resolution, both)."""
        return sorted(_time(condition(r["status"], "Registered")["lastTransitionTime"]) - _time(r["metadata"]["creationTimestamp"])
                      for r in self.resources())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]
