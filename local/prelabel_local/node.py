"""A real Kubernetes node on this machine: containerd + runc, kubelet, kube-proxy and a CNI bridge,
for a LocalCluster that binds the bridge's gateway (cluster.py's `address`).

    node = Node(bin_dir)
    cluster = node.start_cluster()      # bridge up, control plane on the gateway, then the node
    ...                                  # pods run for real; node.import_image(archive)
    node.stop(); cluster.stop()

What this machine needs (docs/local-mode.md, "What this machine needs"): containerd 1.6 with
`restrict_oom_score_adj` (the sandbox cannot lower oom_score_adj) and a local pause image (no
registry: built from pause.c, packed FROM scratch); kubelet with cgroupfs, cgroup v1 allowed, no
swap check, no resolv.conf; kube-proxy in iptables mode. The Debian packages come from `make node`.

Isolation: pods live on a bridge of their own (POD_CIDR) with routes only to the pod and Service
ranges and a FORWARD guard that drops whatever would leave the bridge: nothing leaves the machine.
The Service range (SERVICE_CIDR) is the node's own, apart from the loopback range kwok clusters use
beside it. Everything the node makes is found again by name or path and removed by `stop()` (and
by the next `start` after a crash): the mounts under WORKDIR, the pods' cgroups under CGROUP_ROOT,
the KUBE-* and PRELABEL-* iptables chains, the bridge, the sysctls it raised. One node at a time
per machine (a lock). containerd's root (images, unpacked layers) is kept under
~/.cache/prelabel/node so an image is imported once per machine, not once per run.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from . import processes
from .cluster import ClusterError, LocalCluster, free_port, issue_cert, stop_group
from .venv import CACHE

NODE_NAME = "prelabel-node"
BRIDGE = "prelabel0"
POD_CIDR = "172.31.250.0/24"  # private, unused here (`ip route`); podman's default is 10.88.0.0/16
GATEWAY = "172.31.250.1"  # the bridge's address: the API server, kubelet and Label Studio bind it
SERVICE_CIDR = "172.31.251.0/24"
CGROUP_ROOT = "prelabel-node"  # kubelet's cgroupRoot, in every hierarchy: the pods' cgroups live under it
GUARD_CHAIN = "PRELABEL-NODE"
HERE = Path(__file__).resolve().parent
NODE_CACHE = CACHE / "node"
WORKDIR = NODE_CACHE / "run"  # fixed, so the next start finds what a crashed run left
CONTAINERD_ROOT = NODE_CACHE / "containerd"
# Debian packages: the runtime, the CNI plugins, iptables, and a static libc for the pause image.
PACKAGES = {"containerd": "/usr/bin/containerd", "runc": "/usr/sbin/runc", "containernetworking-plugins": "/usr/lib/cni/bridge",
            "iptables": "/usr/sbin/iptables", "gcc": "/usr/bin/gcc", "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a"}


class NodeError(ClusterError):
    pass


def missing_packages() -> list[str]:
    """The Debian packages `make node` installs that this machine lacks."""
    return [name for name, path in PACKAGES.items() if not Path(path).exists()]


def _run(*args: str, check: bool = True, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(args, input=input, capture_output=True, timeout=timeout, check=False)
    if check and done.returncode:
        raise NodeError(f"{shlex.join(args)} exited with {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
    return done


# -- the pause image ----------------------------------------------------------------------------
def pause_image() -> tuple[str, Path]:
    """The pod sandbox image: pause.c built static and packed FROM scratch as a docker-archive tar
    (what `ctr images import` reads). Cached under ~/.cache/prelabel/node by the source's hash.
    Returns (image reference, archive path)."""
    source = (HERE / "pause.c").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:12]
    ref = f"localhost/prelabel/pause:{digest}"
    archive = NODE_CACHE / f"pause-{digest}.tar"
    if archive.exists():
        return ref, archive
    NODE_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        _run("gcc", "-Os", "-static", "-s", "-o", str(binary), str(HERE / "pause.c"))
        layer = _tar({"pause": (binary.read_bytes(), 0o755)})
    partial = archive.with_suffix(".partial")
    partial.write_bytes(docker_archive(ref, [layer], {"Entrypoint": ["/pause"], "User": "65535:65535"}))
    partial.rename(archive)
    return ref, archive


def _tar(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible tar (mtime 0, root-owned) of name -> (content, mode)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def docker_archive(ref: str, layers: list[bytes], config: dict[str, Any]) -> bytes:
    """A `docker save` archive (Docker Image Specification v1.2: manifest.json, the config named by its
    sha256, one <sha256>/layer.tar per layer) holding one linux/amd64 image tagged `ref`."""
    layer_ids = [hashlib.sha256(layer).hexdigest() for layer in layers]
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{i}" for i in layer_ids]},
        "history": [{"created_by": "prelabel_local.node"} for _ in layers],
    }, sort_keys=True).encode()
    config_id = hashlib.sha256(image_config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [ref], "Layers": [f"{i}/layer.tar" for i in layer_ids]}]).encode()
    files = {"manifest.json": (manifest, 0o644), f"{config_id}.json": (image_config, 0o644)}
    files.update({f"{i}/layer.tar": (layer, 0o644) for i, layer in zip(layer_ids, layers, strict=True)})
    return _tar(files)


def archive_image(archive: Path) -> tuple[str, list[str]]:
    """(image ID = sha256 of its config, tags) of a docker-archive tar."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        manifest = json.load(member)
    if len(manifest) != 1:
        raise NodeError(f"{archive}: expected one image, found {len(manifest)}")
    return "sha256:" + manifest[0]["Config"].removesuffix(".json").removeprefix("blobs/sha256/"), list(manifest[0].get("RepoTags") or [])


# -- the node -----------------------------------------------------------------------------------
@dataclass
class NodeProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Node:
    bin_dir: Path
    workdir: Path = WORKDIR
    containerd_root: Path = CONTAINERD_ROOT
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prelabel-node-logs-")))
    processes: dict[str, NodeProcess] = field(default_factory=dict)
    _lock: IO[bytes] | None = None
    _sysctls: dict[str, str] = field(default_factory=dict)  # the values before start, restored by stop

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def start_cluster(self, **cluster_options: Any) -> LocalCluster:
        """Brings the bridge up, starts a control plane on its gateway (with controllers, no kwok),
        then this node; returns the cluster. On failure, stops what it started and raises."""
        self.prepare()
        cluster = LocalCluster(self.bin_dir, with_controllers=True, kwok=False, address=GATEWAY, service_cidr=SERVICE_CIDR,
                               **cluster_options)
        try:
            cluster.start()
            self.start(cluster)
        except BaseException:
            self.stop(keep_logs=True)
            cluster.stop(keep_logs=True)
            raise
        return cluster

    def prepare(self) -> None:
        """Takes the machine's node lock, removes what a crashed run left, brings the bridge up."""
        if missing := missing_packages():
            raise NodeError(f"missing Debian packages {' '.join(missing)}: run `make node`")
        self._take_lock()
        self.clean()
        self.workdir.mkdir(parents=True)
        self._network_up()

    def _take_lock(self) -> None:
        if self._lock is not None:
            return
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        lock = (NODE_CACHE / "lock").open("wb")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise NodeError(f"another real node runs on this machine (lock {NODE_CACHE / 'lock'})") from None
        self._lock = lock

    def start(self, cluster: LocalCluster, timeout: float = 120) -> None:
        """Starts containerd, kubelet and kube-proxy for `cluster` (started on GATEWAY) and waits for
        the node to be Ready."""
        pause_ref, pause_archive = pause_image()
        self._certs(cluster)
        self._start_containerd(pause_ref)
        self.import_image(pause_archive)
        self._start_kubelet(cluster)
        self._start_kube_proxy(cluster)
        cluster_wait = self._waiter(timeout)
        cluster_wait("node Ready", lambda: cluster.kubectl("get", "node", NODE_NAME, "-o",
                     "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False).stdout == "True")
        # The node-lifecycle controller (not run here) would lift the taint admission puts on a new node.
        cluster.kubectl("taint", "node", NODE_NAME, "node.kubernetes.io/not-ready:NoSchedule-", check=False)

    def stop(self, keep_logs: bool = False) -> None:
        """Stops the node's processes and removes everything it made (see the module's docstring); the
        logs too, unless keep_logs."""
        for name in ("kube-proxy", "kubelet"):
            if proc := self.processes.pop(name, None):
                stop_group(proc.popen)
        if (proc := self.processes.get("containerd")) and proc.popen.poll() is None:
            self._remove_containers()
        if proc := self.processes.pop("containerd", None):
            stop_group(proc.popen)
        self._take_lock()  # never clean up after a node another process runs
        self.clean()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        if not keep_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def logs(self) -> dict[str, str]:
        return {name: p.log.read_text(errors="replace")[-4000:] for name, p in self.processes.items() if p.log.exists()}

    # -- images ---------------------------------------------------------------------------------
    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return _run("ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args, input=input, timeout=timeout, check=check)

    def images(self) -> dict[str, str]:
        """Image reference -> image ID (config digest) as the kubelet sees them (containerd's CRI)."""
        found: dict[str, str] = {}
        for line in self.ctr("images", "ls").stdout.decode().splitlines()[1:]:
            ref = line.split()[0]
            if not ref.startswith("sha256:"):
                found[ref] = self._config_digest(ref)
        return found

    def _config_digest(self, ref: str) -> str:
        # `ctr images ls` shows the manifest's digest; the image ID is its config's.
        manifest = json.loads(self.ctr("content", "get", self._target(ref)).stdout)
        return str(manifest["config"]["digest"])

    def _target(self, ref: str) -> str:
        for line in self.ctr("images", "ls", f"name=={ref}").stdout.decode().splitlines()[1:]:
            return line.split()[2]
        raise NodeError(f"no image {ref}")

    def import_image(self, archive: Path, timeout: float = 1800) -> bool:
        """Imports a docker-archive tar into containerd's k8s.io namespace (where the kubelet looks)
        and unpacks it; skipped when every tag already names the archive's image ID (containerd's
        root is kept across runs). Returns whether it imported."""
        image_id, tags = archive_image(archive)
        present = self.images()
        if tags and all(present.get(tag) == image_id for tag in tags):
            return False
        with archive.open("rb") as stream:
            done = subprocess.run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", "images", "import", "-"],
                                  stdin=stream, capture_output=True, timeout=timeout, check=False)
        if done.returncode:
            raise NodeError(f"importing {archive} failed: {done.stderr.decode(errors='replace')[-2000:]}")
        self._prune()
        return True

    def _prune(self) -> None:
        """Removes the images no tag names any more (the CRI keeps each under its ID, sha256:...) with
        their layers: the store is kept across runs, and every rebuilt image would stay in it."""
        tagged = set(self.images().values())
        for ref in self.ctr("images", "ls", "-q").stdout.decode().split():
            if ref.startswith("sha256:") and ref not in tagged:
                self.ctr("images", "rm", "--sync", ref, check=False)

    # -- network --------------------------------------------------------------------------------
    def _network_up(self) -> None:
        # Forwarding (pod -> ClusterIP -> pod is routed through the host) and bridged traffic through
        # iptables (kube-proxy's DNAT must see pod-to-pod replies on the same bridge).
        for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
            path = Path("/proc/sys") / key
            self._sysctls[key] = path.read_text().strip()
            path.write_text("1")
        (self.workdir / "sysctls.json").write_text(json.dumps(self._sysctls))
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{GATEWAY}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", GATEWAY)
        # Nothing forwarded between the bridge and any other interface, either way.
        _run("iptables", "-N", GUARD_CHAIN)
        _run("iptables", "-A", GUARD_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        _run("iptables", "-A", GUARD_CHAIN, "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP")
        _run("iptables", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "0.4.0", "name": "prelabel",
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                         "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}], "dataDir": str(self.workdir / "cni" / "ipam")},
            }],
        }

    # -- processes ------------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> NodeProcess:
        log = self.log_dir / f"{name}.log"
        popen = processes.spawn(f"node-{name}", args, log=log)  # recorded: `prelabel down` stops it after a crash
        proc = NodeProcess(name, popen, log)
        self.processes[name] = proc
        (self.workdir / "pids").mkdir(exist_ok=True)
        (self.workdir / "pids" / name).write_text(str(popen.pid))
        return proc

    def _waiter(self, timeout: float) -> Any:
        def wait(what: str, check: Any) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                for proc in self.processes.values():
                    if proc.popen.poll() is not None:
                        raise NodeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log.read_text(errors='replace')[-3000:]}")
                if check():
                    return
                time.sleep(0.5)
            raise NodeError(f"{what} not after {timeout:.0f}s; logs in {self.log_dir}")
        return wait

    def _certs(self, cluster: LocalCluster) -> None:
        import ipaddress

        from cryptography import x509

        pki = cluster.pki
        issue_cert(pki, "kubelet-client", f"system:node:{NODE_NAME}", "system:nodes")
        issue_cert(pki, "kubelet-serving", NODE_NAME, sans=[x509.DNSName(NODE_NAME), x509.IPAddress(ipaddress.ip_address(GATEWAY))])
        issue_cert(pki, "kube-proxy", "system:kube-proxy")  # bound to system:node-proxier by RBAC's defaults
        cluster.write_kubeconfig(self.workdir / "kubelet.kubeconfig", "kubelet", pki / "kubelet-client.crt", pki / "kubelet-client.key")
        cluster.write_kubeconfig(self.workdir / "kube-proxy.kubeconfig", "kube-proxy", pki / "kube-proxy.crt", pki / "kube-proxy.key")

    def _start_containerd(self, pause_ref: str) -> None:
        state = self.workdir / "containerd"
        cni = self.workdir / "cni" / "net.d"
        cni.mkdir(parents=True)
        (cni / "10-prelabel.conflist").write_text(json.dumps(self._cni_config(), indent=1))
        self.containerd_root.mkdir(parents=True, exist_ok=True)
        cri = '"io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.containerd_root}"
state = "{state}"
# Plugins that would write outside root and state, or that this node does not use.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{self.socket}"
[plugins.{cri}]
  sandbox_image = "{pause_ref}"
  # This machine cannot lower oom_score_adj: without it every sandbox fails ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins.{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{state / 'runc'}"
  [plugins.{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"""
        (self.workdir / "containerd.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(self.workdir / "containerd.toml"), "--log-level", "warn"])
        self._waiter(60)("containerd", lambda: self.socket.exists() and self.ctr("version", check=False).returncode == 0)

    def _start_kubelet(self, cluster: LocalCluster) -> None:
        pki = cluster.pki
        for hierarchy in _cgroup_hierarchies():
            path = hierarchy / CGROUP_ROOT
            path.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty: copy the parent's
                if (hierarchy / name).exists() and not (path / name).read_text().strip():
                    (path / name).write_text((hierarchy / name).read_text())
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": GATEWAY, "port": free_port(), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": free_port(),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True}, "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki / "kubelet-serving.crt"), "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{CGROUP_ROOT}", "failCgroupV1": False,  # this machine: cgroup v1
            "failSwapOn": False, "resolvConf": "", "clusterDomain": "cluster.local",
            "podLogsDir": str(self.workdir / "pod-logs"),
            # A busy shared machine with a large image: evict and collect images only in extremis.
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "nodefs.inodesFree": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "maxPods": 50, "podCIDR": POD_CIDR,
        }
        (self.workdir / "kubelet.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={self.workdir / 'kubelet.yaml'}", f"--kubeconfig={self.workdir / 'kubelet.kubeconfig'}",
            f"--root-dir={self.workdir / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={GATEWAY}", "--v=1",
        ])

    def _start_kube_proxy(self, cluster: LocalCluster) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration", "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.workdir / "kube-proxy.kubeconfig")},
            "hostnameOverride": NODE_NAME, "bindAddress": GATEWAY, "clusterCIDR": POD_CIDR,
            "healthzBindAddress": f"127.0.0.1:{free_port()}", "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{GATEWAY}/32"],  # NodePorts on the bridge only, never on eth0 or loopback
            # Leave the machine's conntrack sysctls as they are.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (self.workdir / "kube-proxy.yaml").write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={self.workdir / 'kube-proxy.yaml'}", "--v=1"])

    # -- cleanup --------------------------------------------------------------------------------
    def _remove_containers(self) -> None:
        """Kills and deletes every task and container in containerd's k8s.io namespace (the images stay)."""
        for line in self.ctr("tasks", "ls", "-q", check=False).stdout.decode().split():
            self.ctr("tasks", "kill", "-a", "-s", "SIGKILL", line, check=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.decode().split()
            for task in tasks:
                self.ctr("tasks", "delete", "-f", task, check=False)
            if not tasks:
                break
            time.sleep(0.5)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.decode().split():
            self.ctr("containers", "delete", container, check=False)

    def clean(self) -> None:
        """Removes what a node leaves (after its processes ended, or after a crash): stray processes
        of its containers, mounts, cgroups, iptables chains, the bridge, the sysctls it raised, WORKDIR."""
        for pid in _pids_mentioning(str(self.socket)):  # containerd-shim-runc-v2 ... -address <our socket>
            _kill(pid)
        pids_dir = self.workdir / "pids"
        for recorded in pids_dir.iterdir() if pids_dir.exists() else []:
            pid = int(recorded.read_text())
            if str(self.workdir) in _cmdline(pid):  # still ours, not a reused PID
                _kill(pid)
        _remove_cgroups()
        for mount in sorted(_mounts_under(self.workdir, self.containerd_root), key=len, reverse=True):
            if subprocess.run(["umount", mount], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        _remove_iptables_chains()
        _remove_host_files(self.workdir)
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            _run("ip", "link", "delete", BRIDGE)
        saved = self.workdir / "sysctls.json"
        for key, value in (self._sysctls or (json.loads(saved.read_text()) if saved.exists() else {})).items():
            (Path("/proc/sys") / key).write_text(value)
        self._sysctls = {}
        shutil.rmtree(self.workdir, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids_mentioning(text: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid() and text in _cmdline(int(p.name))]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies (v1 controllers and, on a hybrid layout, the unified one)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            found.append(Path(fields[4]))
    return found


def _remove_cgroups() -> None:
    """Kills what still runs in CGROUP_ROOT (a container the kubelet left) and removes its cgroups,
    deepest first, in every hierarchy."""
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.is_dir():
            continue
        groups = [*sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True), root]
        for group in groups:
            procs = group / "cgroup.procs"
            for pid in procs.read_text().split() if procs.exists() else []:
                _kill(int(pid))
        for group in groups:
            for _ in range(50):  # a killed process leaves its cgroup a moment later
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def _mounts_under(*roots: Path) -> list[str]:
    prefixes = tuple(str(r) for r in roots)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")  # mountinfo escapes space as \040
        if point.startswith(prefixes):
            mounts.append(point)
    return mounts


def _remove_iptables_chains() -> None:
    """Removes the KUBE-* chains (kubelet's and kube-proxy's: nothing else here runs them) and
    PRELABEL-NODE, with the rules that jump to them, from every table, IPv4 and IPv6."""
    for family in ("iptables", "ip6tables"):
        if not shutil.which(family):
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            saved = _run(f"{family}-save", "-t", table, check=False).stdout.decode()
            ours = [line[1:].split()[0] for line in saved.splitlines() if line.startswith(":") and _ours(line[1:].split()[0])]
            for line in saved.splitlines():
                if line.startswith("-A ") and not _ours(line.split()[1]) and any(f"-j {chain}" in line for chain in ours):
                    _run(family, "-t", table, "-D", *shlex.split(line)[1:], check=False)
            for chain in ours:
                _run(family, "-t", table, "-F", chain, check=False)
            for chain in ours:
                _run(family, "-t", table, "-X", chain, check=False)


# Paths the kubelet and containerd 1.6 use whatever their configuration says: created on first use, emptied here.
HOST_DIRS = [Path(p) for p in ("/var/lib/kubelet/device-plugins", "/var/lib/kubelet", "/var/log/containers", "/var/lib/cni/results",
                                "/var/lib/cni", "/run/containerd/s", "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd")]


def _host_files(workdir: Path) -> list[Path]:
    """The node's files outside its folders: the kubelet's links to its pods' logs, its device-plugin
    socket, containerd's cached CNI results (named after the network, and the loopback of the same sandbox)."""
    found = [link for link in Path("/var/log/containers").glob("*.log") if os.readlink(link).startswith(str(workdir))]
    found += [p for p in [Path("/var/lib/kubelet/device-plugins/kubelet.sock")] if p.exists()]
    for result in Path("/var/lib/cni/results").glob("prelabel-*"):
        sandbox = result.name.removeprefix("prelabel-").rsplit("-", 1)[0]
        found += [result, *Path("/var/lib/cni/results").glob(f"cni-loopback-{sandbox}-*")]
    return found


def _remove_host_files(workdir: Path) -> None:
    for path in _host_files(workdir):
        path.unlink(missing_ok=True)
    for folder in HOST_DIRS:  # only when empty: another program may use them
        try:
            folder.rmdir()
        except OSError:
            pass


def _ours(chain: str) -> bool:
    return chain.startswith("KUBE-") or chain == GUARD_CHAIN


def leftovers() -> list[str]:
    """What a node left on this machine (mounts, cgroups, chains, the bridge, processes): [] when clean."""
    found = [f"mount {m}" for m in _mounts_under(WORKDIR, CONTAINERD_ROOT)]
    found += [f"cgroup {h / CGROUP_ROOT}" for h in _cgroup_hierarchies() if (h / CGROUP_ROOT).exists()]
    for family in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            saved = _run(f"{family}-save", "-t", table, check=False).stdout.decode()
            found += [f"{family} {table} {line[1:].split()[0]}" for line in saved.splitlines() if line.startswith(":") and _ours(line[1:].split()[0])]
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    found += [f"file {p}" for p in _host_files(WORKDIR)]
    found += [f"process {pid}: {_cmdline(pid)}" for pid in _pids_mentioning(str(WORKDIR))]
    return found
