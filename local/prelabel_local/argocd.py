"""A real Argo CD against a LocalCluster, for the GitOps test: its repo server and application
controller as local processes (the all-in-one binary from local/build/build-argocd.sh, picked by
ARGOCD_BINARY_NAME), with a Redis from Debian. No API server, UI, Dex or ApplicationSet controller:
Applications are applied with kubectl, as `kubectl apply -f root.yaml` does.

- `ARGOCD_FAKE_IN_CLUSTER=true` makes the in-cluster destination `https://kubernetes.default.svc`
  (the one the examples name) use this cluster's admin kubeconfig.
- Everything binds 127.0.0.1 on free ports; every file lives in one work dir; `stop()` ends exactly
  the processes it started (by PID, each in its own session).
- Argo CD's own objects are the minimum its two components read: the CRDs from its module, the
  `argocd` namespace, its ConfigMaps and Secret (empty but labelled, as its settings informers
  select them), and the `default` AppProject that its API server would otherwise create.
- Polling is faster than a production install (apps reconciled every few seconds, branch heads
  re-read as often) so a commit is seen within seconds, as a Git webhook would make it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import processes
from .cluster import REPO, LocalCluster, free_port, stop_group

NAMESPACE = "argocd"
CONFIG_MAPS = ("argocd-cm", "argocd-rbac-cm", "argocd-cmd-params-cm", "argocd-gpg-keys-cm", "argocd-ssh-known-hosts-cm",
               "argocd-tls-certs-cm")


class ArgoCDError(RuntimeError):
    pass


def build(quiet: bool = False) -> Path:
    """Runs local/build/build-argocd.sh (seconds on a warm cache) and returns its output folder
    (bin/argocd, bin/git-verify-wrapper.sh, crds/)."""
    script = REPO / "local" / "build" / "build-argocd.sh"
    done = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.DEVNULL if quiet else None)
    return Path(done.stdout.strip().splitlines()[-1])


def redis_server() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise ArgoCDError("redis-server not found: install Debian's redis-server (`make argocd` does)")
    return found


def _labelled(kind: str, name: str, **body: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, **body,
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "argocd"}}}


def install_objects() -> list[dict[str, Any]]:
    """Argo CD's ConfigMaps, Secret and `default` AppProject, as its install manifests make them."""
    objects = [_labelled("ConfigMap", name, data={}) for name in CONFIG_MAPS]
    objects.append(_labelled("Secret", "argocd-secret", type="Opaque", stringData={"server.secretkey": secrets.token_urlsafe(32)}))
    objects.append({"apiVersion": "argoproj.io/v1alpha1", "kind": "AppProject", "metadata": {"name": "default", "namespace": NAMESPACE},
                    "spec": {"sourceRepos": ["*"], "destinations": [{"server": "*", "namespace": "*"}],
                             "clusterResourceWhitelist": [{"group": "*", "kind": "*"}]}})
    return objects


@dataclass
class LocalArgoCD:
    home: Path  # build-argocd.sh's output folder
    cluster: LocalCluster
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prelabel-argocd-")))
    resync_seconds: int = 5
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    redis_port: int = 0
    repo_server_port: int = 0
    controller_metrics_port: int = 0

    # -- public -----------------------------------------------------------------------------------
    def start(self) -> LocalArgoCD:
        self._install()
        self.redis_port, self.repo_server_port, self.controller_metrics_port = free_port(), free_port(), free_port()
        self._spawn("redis", [redis_server(), "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "",
                              "--appendonly", "no", "--dir", str(self._dir("redis")), "--loglevel", "warning"])
        self._wait("redis", lambda: self._tcp(self.redis_port), 30)
        redis = f"127.0.0.1:{self.redis_port}"
        self._spawn("argocd-repo-server", [
            str(self.home / "bin" / "argocd"), "--redis", redis, "--address", "127.0.0.1", "--port", str(self.repo_server_port),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(free_port()), "--disable-tls", "--client-ca-path", "",
            "--revision-cache-expiration", f"{self.resync_seconds}s", "--logformat", "text", "--loglevel", "info",
        ])
        self._wait("argocd-repo-server", lambda: self._tcp(self.repo_server_port), 60)
        self._spawn("argocd-application-controller", [
            str(self.home / "bin" / "argocd"), "--kubeconfig", str(self.cluster.kubeconfig), "--namespace", NAMESPACE,
            "--redis", redis, "--repo-server", f"127.0.0.1:{self.repo_server_port}", "--repo-server-plaintext",
            "--metrics-port", str(self.controller_metrics_port), "--app-resync", str(self.resync_seconds), "--app-resync-jitter", "0",
            "--self-heal-timeout-seconds", "5", "--status-processors", "4", "--operation-processors", "4",
            "--persist-resource-health",  # each resource's health in the Application, as `argocd app get` shows it
            "--logformat", "text", "--loglevel", "info",
        ])
        self._wait("argocd-application-controller", self._controller_healthy, 90)
        return self

    def stop(self, keep_logs: bool = False) -> None:
        for name in reversed(list(self.processes)):
            stop_group(self.processes.pop(name), grace=15)
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def application(self, name: str) -> dict[str, Any]:
        """An Application as the controller last wrote it ({} once it is gone)."""
        out = self.cluster.kubectl("get", "applications.argoproj.io", name, "-n", NAMESPACE, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else {}

    def logs(self) -> dict[str, str]:
        return {p.stem: p.read_text(errors="replace")[-4000:] for p in sorted((self.workdir / "logs").glob("*.log"))}

    # -- setup ------------------------------------------------------------------------------------
    def _install(self) -> None:
        kubectl = self.cluster.kubectl
        if kubectl("get", "namespace", NAMESPACE, check=False).returncode != 0:
            kubectl("create", "namespace", NAMESPACE)
        # The Application CRD is too large for client-side apply's last-applied annotation.
        kubectl("apply", "--server-side", "--field-manager=argocd-install", "-f", str(self.home / "crds"))
        def established() -> bool:  # `kubectl wait` fails at once while a CRD has no conditions yet
            jsonpath = "jsonpath={.items[*].status.conditions[?(@.type=='Established')].status}"
            out = kubectl("get", "crd", "applications.argoproj.io", "appprojects.argoproj.io", "-o", jsonpath, check=False).stdout
            return out.split() == ["True", "True"]

        self._wait("the Application and AppProject CRDs", established, 60)
        kubectl("apply", "-f", "-", input=yaml.safe_dump_all(install_objects()))

    def _env(self, binary: str) -> dict[str, str]:
        tmp = self._dir("tmp")
        return {
            "PATH": os.pathsep.join([str(self.home / "bin"), str(self.cluster.bin_dir), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(self._dir("home")), "TMPDIR": str(tmp), "KUBECONFIG": str(self.cluster.kubeconfig),
            "ARGOCD_BINARY_NAME": binary, "ARGOCD_FAKE_IN_CLUSTER": "true", "ARGOCD_GPG_ENABLED": "false",
            "ARGOCD_ASK_PASS_SOCK": str(tmp / "ask-pass.sock"), "ARGOCD_GNUPGHOME": str(self._dir("gpg")),
            "ARGOCD_TLS_DATA_PATH": str(self._dir("tls")), "ARGOCD_SSH_DATA_PATH": str(self._dir("ssh")),
            "ARGOCD_APP_CONF_PATH": str(self._dir("config")), "ARGOCD_PLUGINSOCKFILEPATH": str(self._dir("plugins")),
        }

    # -- processes --------------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = self._dir("logs") / f"{name}.log"
        self.processes[name] = processes.spawn(name, argv, log=log, env=self._env(name), cwd=self.workdir)

    def _wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise ArgoCDError(f"{name} exited with {proc.returncode}:\n{self.logs().get(name, '')}")
            if check():
                return
            time.sleep(0.3)
        raise ArgoCDError(f"{what} not ready after {timeout:.0f}s:\n{self.logs().get(what, '')}")

    @staticmethod
    def _tcp(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _controller_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.controller_metrics_port}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False
