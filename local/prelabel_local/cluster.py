"""A real Kubernetes control plane as local processes, for tests and the local mode.

etcd + kube-apiserver (client-cert auth, RBAC, service-account signing), and optionally
kube-controller-manager, kube-scheduler and kwok with fake nodes, so Deployments become Available
and owners garbage-collect their children. Everything binds to 127.0.0.1 on free ports, lives in
one work dir, and `stop()` ends exactly the processes it started (by PID).

The Service range is inside 127.0.0.0/8: a ClusterIP is then a loopback address this machine can
bind, so a process started for a pod (see tests) can serve on its Service's ClusterIP and a real
Label Studio on this machine reaches it there, with no traffic leaving loopback.

Requests made as a ServiceAccount outside kube-system are written to an audit log
(`audit_events`): tests read from it exactly what the operator asked the API for.

With a real node (node.py), the cluster instead binds the node bridge's gateway address
(`address`), takes a Service range of its own (`service_cidr`: kube-proxy's rules must never catch
the loopback ClusterIPs of kwok clusters running beside it), keeps the `kubernetes` Service's
endpoint (pods reach the API through it), authorizes the kubelet with the Node authorizer, and
starts no kwok (`kwok=False`).

The binaries come from local/build/build.sh (cached under ~/.cache/prelabel/).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import processes

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

SERVICE_CIDR = "127.99.0.0/16"
POD_CIDR = "10.244.0.0/16"  # only written into pod status by kwok: nothing listens or routes there
CONTROLLERS = ("deployment,replicaset,endpointslice,garbagecollector,serviceaccount,serviceaccount-token,namespace,horizontalpodautoscaling,"
               "job,ttl-after-finished")  # the training loop's Jobs
REPO = Path(__file__).resolve().parents[2]


# Service accounts outside kube-system (the controllers' own) at Metadata level; nothing else.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [{"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
              {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
              {"level": "None"}],
}


class ClusterError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_group(popen: subprocess.Popen[bytes], grace: float = 20) -> None:
    """Ends a process started by processes.spawn() (or with start_new_session=True) and everything in
    its group: SIGTERM, then SIGKILL after `grace` seconds."""
    processes.stop(popen, grace)


def build(quiet: bool = False) -> Path:
    """Runs the build script (seconds on a warm cache) and returns the bin folder."""
    script = REPO / "local" / "build" / "build.sh"
    done = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.DEVNULL if quiet else None)
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class LocalCluster:
    bin_dir: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prelabel-cluster-")))
    with_controllers: bool = False  # controller-manager + scheduler + kwok
    nodes: int = 1  # kwok nodes
    kwok: bool = True  # with_controllers starts kwok and its nodes; False for a real node (node.py)
    controller_qps: int = 200  # the controller-manager's requests/s to the API server (its default: 20)
    address: str = "127.0.0.1"  # where the API server binds and advertises itself
    service_cidr: str = SERVICE_CIDR
    processes: dict[str, Process] = field(default_factory=dict)
    api_port: int = 0
    etcd_port: int = 0

    # -- public -----------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.api_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def real_node(self) -> bool:
        return self.address != "127.0.0.1"

    def start(self) -> LocalCluster:
        self._certs()
        self.etcd_port = free_port()
        self.api_port = free_port()
        self._start_etcd()
        self._start_apiserver()
        self._write_kubeconfig(self.kubeconfig, "admin", self.workdir / "pki" / "admin.crt", self.workdir / "pki" / "admin.key")
        if self.with_controllers:
            self._start_controllers()
        return self

    def stop(self, keep_logs: bool = False) -> None:
        for name in reversed(list(self.processes)):
            self._terminate(self.processes.pop(name))
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(self) -> None:
        self._terminate(self.processes.pop("kube-apiserver"))
        self._start_apiserver()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._client("kubectl", args, input, check, timeout=120)

    def helm(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._client("helm", args, input, check, timeout=300)

    def _client(self, tool: str, args: tuple[str, ...], input: str | None, check: bool, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin_dir / tool), "--kubeconfig", str(self.kubeconfig), *args],
                              input=input, text=True, capture_output=True, check=check, timeout=timeout)

    def status(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        """An object's status ({} while it has none or does not exist)."""
        out = self.kubectl("get", resource, name, "-n", namespace, "-o", "json", check=False)
        status: dict[str, Any] = (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}
        return status

    def audit_events(self, user: str) -> list[dict[str, Any]]:
        """The audit log's events for one user (e.g. system:serviceaccount:NS:NAME), oldest first."""
        log = self.workdir / "audit.log"
        lines = log.read_text().split("\n")[:-1] if log.exists() else []  # the last piece may be a line being written
        return [e for e in map(json.loads, lines) if e.get("user", {}).get("username") == user]

    def logs(self) -> dict[str, str]:
        return {name: p.log.read_text(errors="replace")[-4000:] for name, p in self.processes.items() if p.log.exists()}

    # -- processes --------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> Process:
        log = self.workdir / "logs" / f"{name}.log"
        popen = processes.spawn(name, [str(self.bin_dir / name.split("@")[0]), *args], log=log)
        proc = Process(name, popen, log)
        self.processes[name] = proc
        return proc

    def _terminate(self, proc: Process) -> None:
        processes.stop(proc.popen, grace=15)

    def _wait(self, what: str, check: Callable[[], object], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc in self.processes.values():
                if proc.popen.poll() is not None:
                    raise ClusterError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log.read_text(errors='replace')[-3000:]}")
            try:
                if check():
                    return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = exc
            time.sleep(0.2)
        raise ClusterError(f"{what} not ready after {timeout:.0f}s (last error: {last})")

    def _start_etcd(self) -> None:
        peer = free_port()
        data = self.workdir / "etcd"
        self._spawn("etcd", [
            f"--data-dir={data}", "--name=default", "--unsafe-no-fsync",
            f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=default=http://127.0.0.1:{peer}", "--log-level=warn",
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2) as r:
                return b'"health":"true"' in r.read()

        self._wait("etcd", healthy, 30)

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self._spawn("kube-apiserver", [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.address}", f"--advertise-address={self.address}", f"--secure-port={self.api_port}",
            f"--cert-dir={pki}", f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={self.service_cidr}", "--allow-privileged=false", "--v=1",
            *(self._real_node_flags() if self.real_node else ["--authorization-mode=RBAC", "--endpoint-reconciler-type=none"]),
            f"--audit-policy-file={policy}", f"--audit-log-path={self.workdir / 'audit.log'}", "--audit-log-mode=blocking",
        ])
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

        def ready() -> bool:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as r:
                return bool(r.status == 200)

        self._wait("kube-apiserver", ready, 90)

    def _real_node_flags(self) -> list[str]:
        pki = self.pki
        return [
            # Node authorizer: the kubelet acts as system:node:<name>; RBAC for everyone else.
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            # `kubectl logs/exec` dial the node's InternalIP (its name resolves nowhere here).
            "--kubelet-preferred-address-types=InternalIP", f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'admin.crt'}", f"--kubelet-client-key={pki / 'admin.key'}",
        ]

    def _start_controllers(self) -> None:
        pki = self.workdir / "pki"
        kc = self.kubeconfig
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false",
            # A real node mounts the kube-root-ca.crt ConfigMap into every pod (its API access volume).
            f"--controllers={CONTROLLERS}{',root-ca-cert-publisher' if self.real_node else ''}", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            # Client-side rate limits as for a large cluster: at the defaults (20 requests/s, 5 syncs
            # at once) 500 Deployments applied at once took the controller-manager alone 122 s to make
            # Available, 22 s at these (bench/HISTORY.md, scale).
            f"--kube-api-qps={self.controller_qps}", f"--kube-api-burst={2 * self.controller_qps}",
            "--concurrent-deployment-syncs=20", "--concurrent-replicaset-syncs=20", "--v=1",
        ])
        self._spawn("kube-scheduler", [
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}", "--leader-elect=false", "--v=1",
        ])
        if not self.kwok:
            self._wait("default service account", lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0, 60)
            return
        self._spawn("kwok", [
            f"--kubeconfig={kc}", f"--config={self.bin_dir / 'kwok-stages.yaml'}", "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--cidr={POD_CIDR}", "--node-ip=127.0.0.1", "--node-port=0", f"--server-address=127.0.0.1:{free_port()}",
        ])
        for i in range(self.nodes):
            self.kubectl("apply", "-f", "-", input=yaml.safe_dump(fake_node(f"kwok-node-{i}")))
        self._wait("nodes Ready", self._all_nodes_ready, 60)
        # Node admission taints new nodes not-ready; the node-lifecycle controller would lift it on
        # kubelet heartbeats. kwok nodes have none and that controller is not run, so lift it here.
        for i in range(self.nodes):
            self.kubectl("taint", "node", f"kwok-node-{i}", "node.kubernetes.io/not-ready:NoSchedule-", check=False)
        # The namespace controller and the service-account controllers must have made `default`'s SA.
        self._wait("default service account", lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0, 60)

    def _all_nodes_ready(self) -> bool:
        out = self.kubectl("get", "nodes", "-o", "jsonpath={.items[*].status.conditions[?(@.type=='Ready')].status}").stdout.split()
        return len(out) == self.nodes and all(s == "True" for s in out)

    # -- certificates and kubeconfigs -----------------------------------------------------------
    def _certs(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pki = self.pki
        pki.mkdir(parents=True, exist_ok=True)
        issue_cert(pki, "ca", "prelabel-local-ca", ca=True)
        service_ip = next(ipaddress.IPv4Network(self.service_cidr).hosts())
        names = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted({"127.0.0.1", self.address})] + [x509.IPAddress(service_ip)]
        issue_cert(pki, "apiserver", "kube-apiserver", sans=sans)
        issue_cert(pki, "admin", "prelabel-admin", "system:masters")
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_key(pki / "sa.key", sa)
        (pki / "sa.pub").write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                                   serialization.PublicFormat.SubjectPublicKeyInfo))

    def write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> Path:
        """A kubeconfig for this cluster that authenticates with a client certificate."""
        return self._write_kubeconfig(path, user, cert, key)

    def _write_kubeconfig(self, path: Path, user: str, cert: Path | None = None, key: Path | None = None,
                          token: str | None = None) -> Path:
        credentials: dict[str, str] = {"token": token} if token else {"client-certificate": str(cert), "client-key": str(key)}
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {"server": self.server, "certificate-authority": str(self.workdir / "pki" / "ca.crt")}}],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def token_kubeconfig(self, namespace: str, service_account: str, duration: str = "1h") -> Path:
        """A kubeconfig that acts as a ServiceAccount, with a short-lived token from the TokenRequest API."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, f"--duration={duration}").stdout.strip()
        return self._write_kubeconfig(self.workdir / f"{namespace}-{service_account}.kubeconfig", f"{namespace}-{service_account}", token=token)


def write_key(path: Path, key: PrivateKeyTypes) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def issue_cert(pki: Path, name: str, cn: str, org: str | None = None, ca: bool = False,
               sans: list[x509.GeneralName] | None = None) -> None:
    """Writes pki/<name>.crt and .key (EC P-256, 7 days): signed by pki/ca.* or, with ca=True, the CA
    itself. cn/org are the Kubernetes user name and group of a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] + ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []))
    if ca:
        issuer_key, issuer_name = key, subject
    else:
        loaded = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        issuer_key, issuer_name = loaded, x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes()).subject
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(pki / f"{name}.key", key)


def fake_node(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                                "type": "kwok"}},
        "spec": {},
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux", "kubeletVersion": "fake"}},
    }
