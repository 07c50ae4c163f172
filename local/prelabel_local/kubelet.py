"""A stand-in kubelet for the local control plane: for each backend Deployment the operator made
and kwok marked Available, it runs one real backend process (`python -m prelabel_backend`) bound to
the Service's ClusterIP and port (a loopback address: see cluster.py), with the container's env
resolved from the pod template (Secrets included). A changed pod template restarts the process, a
deleted Deployment stops it. One process per Deployment, not per pod: enough for Label Studio to
reach the backend at the address the operator registered.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from kubernetes import client, config

from .backend import BackendProcess
from .poller import Poller

SELECTOR = "app.kubernetes.io/managed-by=prelabel-operator"


class BackendKubelet(Poller):
    def __init__(self, kubeconfig: Path, workdir: Path, period: float = 1.0) -> None:
        super().__init__(period, "backend-kubelet")
        api = config.new_client_from_config(str(kubeconfig))
        self.apps, self.core = client.AppsV1Api(api), client.CoreV1Api(api)
        self.workdir = workdir
        self.running: dict[tuple[str, str], tuple[str, BackendProcess]] = {}

    def stop(self) -> None:
        super().stop()
        for _, process in self.running.values():
            process.stop()
        self.running.clear()

    def _env(self, namespace: str, container: Any) -> dict[str, str]:
        env: dict[str, str] = {}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.value_from and var.value_from.secret_key_ref:
                ref = var.value_from.secret_key_ref
                secret = self.core.read_namespaced_secret(ref.name, namespace)
                env[var.name] = base64.b64decode((secret.data or {})[ref.key]).decode()
        return env

    def sync(self) -> None:
        seen = set()
        for deployment in self.apps.list_deployment_for_all_namespaces(label_selector=SELECTOR).items:
            # What the API server always sets on a Deployment and a Service it returns; the client types them optional.
            meta, spec = deployment.metadata, deployment.spec
            assert meta and meta.namespace and meta.name and spec and spec.template.spec
            key = (meta.namespace, meta.name)
            ready = deployment.status is not None and (deployment.status.ready_replicas or 0) > 0
            try:
                service = self.core.read_namespaced_service(meta.name, meta.namespace)
            except client.ApiException:
                continue
            cluster_ip = service.spec.cluster_ip if service.spec else None
            if not ready or not cluster_ip or not service.spec or not service.spec.ports:
                continue
            seen.add(key)
            container = spec.template.spec.containers[0]
            env = self._env(meta.namespace, container)
            port = service.spec.ports[0].port
            env.update({"HOST": cluster_ip, "PORT": str(port)})
            env.setdefault("LOG_LEVEL", "WARNING")  # quiet, unless the pod's env (spec.model.env) says otherwise
            identity = json.dumps([env, spec.template.metadata.annotations if spec.template.metadata else None], sort_keys=True)
            current = self.running.get(key)
            if current and current[0] == identity and current[1].proc.poll() is None:
                continue
            if current:
                current[1].stop()
            env.pop("MODEL_DIR", None)  # the pod's path; the process gets a folder of its own
            log = self.workdir / f"{key[0]}-{key[1]}-{len(self.running)}" / "backend.log"
            process = BackendProcess(env, log, host=cluster_ip, port=port)
            self.running[key] = (identity, process)
        for key in [k for k in self.running if k not in seen]:
            self.running.pop(key)[1].stop()
