"""A real S3 server on 127.0.0.1 (or the local node's bridge), for the model store's tests: SeaweedFS (Apache-2.0), its `weed`
binary built from the Go module proxy by local/build/build-seaweedfs.sh (`make s3`). Never MinIO's
server (AGPL) and never a mock.

`weed server -s3` runs a master, a volume server, a filer and the S3 gateway in one process. Here
every one of them binds `host` (`-ip.bind`: 127.0.0.1, or node.GATEWAY for pods) on free ports (HTTP and gRPC), with its data, its
unix sockets and its S3 identity (one access key and secret, generated, in an `-s3.config` file
readable by its owner only) in one work dir. Telemetry is off, and so are the Iceberg and Lance
catalog ports and the embedded IAM API. The process is started and stopped by PID through
processes.spawn(). `weed server` also places the gRPC sockets of its services at fixed paths
(/tmp/seaweedfs-<service>-grpc-<port>.sock); stop() removes those of its own ports.

    server = SeaweedFS().start()
    client = boto3.client("s3", endpoint_url=server.url, aws_access_key_id=server.access_key, ...)
    ...
    server.stop()
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import processes
from .cluster import REPO, free_port, stop_group

SERVICES = ("master", "volume", "filer", "s3")


class S3Error(RuntimeError):
    pass


def build(quiet: bool = False) -> Path:
    """Runs local/build/build-seaweedfs.sh (seconds on a warm cache; about 14 minutes cold on 2 cores)
    and returns the folder holding `weed`."""
    script = REPO / "local" / "build" / "build-seaweedfs.sh"
    done = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.DEVNULL if quiet else None)
    return Path(done.stdout.strip().splitlines()[-1])


def _key(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


@dataclass
class SeaweedFS:
    bin_dir: Path | None = None  # where `weed` is; None: build() (or reuse) it
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prelabel-s3-")))
    access_key: str = field(default_factory=lambda: "PL" + _key(18, string.ascii_uppercase + string.digits))
    secret_key: str = field(default_factory=lambda: _key(40, string.ascii_letters + string.digits))
    region: str = "us-east-1"  # any: SeaweedFS accepts the region the client signs for
    host: str = "127.0.0.1"  # or the local node's bridge (node.GATEWAY), where its pods reach it
    ports: dict[str, int] = field(default_factory=dict)  # service -> HTTP port; gRPC on its own free port
    grpc_ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The S3 endpoint (path-style: http://<host>:<port>/<bucket>/<key>)."""
        return f"http://{self.host}:{self.ports['s3']}"

    @property
    def log(self) -> Path:
        return self.workdir / "weed.log"

    def argv(self, weed: Path) -> list[str]:
        p, g, w = self.ports, self.grpc_ports, self.workdir
        return [
            str(weed), "server", f"-dir={w / 'data'}", f"-ip={self.host}", f"-ip.bind={self.host}",
            f"-master.port={p['master']}", f"-master.port.grpc={g['master']}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-volume.max=0",  # small volumes, as many as the disk allows
            f"-volume.port={p['volume']}", f"-volume.port.grpc={g['volume']}", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={g['filer']}", f"-filer.localSocket={w / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={g['s3']}", f"-s3.config={w / 's3.json'}",
            f"-s3.localSocket={w / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
        ]

    def identity(self) -> dict[str, Any]:
        """The `-s3.config` document: one identity, every action, with this server's key pair."""
        return {"identities": [{"name": "prelabel",
                                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}

    def start(self, timeout: float = 90) -> SeaweedFS:
        weed = (self.bin_dir or build(quiet=True)) / "weed"
        for service in SERVICES:
            self.ports.setdefault(service, free_port())
            self.grpc_ports.setdefault(service, free_port())
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps(self.identity()))
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir), "TMPDIR": str(self.workdir)}
        self.process = processes.spawn("seaweedfs", self.argv(weed), log=self.log, env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                self.stop(keep=True)
                raise S3Error(f"SeaweedFS did not become ready on {self.url} (log: {self.log}):\n{tail}")
            time.sleep(0.3)
        return self

    def _get(self, service: str, path: str) -> bytes | None:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.ports[service]}{path}", timeout=5) as answer:
                body: bytes = answer.read()
                return body
        except (urllib.error.URLError, OSError):
            return None

    def ready(self) -> bool:
        """The S3 gateway answers and the master knows a volume server to write to."""
        if self._get("s3", "/healthz") is None:
            return False
        status = self._get("master", "/dir/status")
        if status is None:
            return False
        topology = json.loads(status).get("Topology") or {}
        nodes = [n for dc in topology.get("DataCenters") or [] for r in dc.get("Racks") or [] for n in r.get("DataNodes") or []]
        return bool(nodes)

    def listening(self) -> list[tuple[str, int]]:
        """(address, port) of every TCP socket the server's processes listen on, from /proc (for the
        tests' loopback-only check)."""
        if self.process is None:
            return []
        inodes: set[str] = set()
        for pid in _group(self.process.pid):
            fd_dir = Path(f"/proc/{pid}/fd")
            for fd in fd_dir.iterdir() if fd_dir.exists() else []:
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])
        found = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    address, port = fields[1].split(":")
                    found.append((_address(address), int(port, 16)))
        return sorted(found)

    def stop(self, keep: bool = False) -> None:
        if self.process is not None:
            stop_group(self.process, grace=15)
        self.process = None
        for service, port in self.grpc_ports.items():
            Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock").unlink(missing_ok=True)
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _group(pgid: int) -> list[int]:
    """The processes of a process group (the server's session: weed and anything it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address (little-endian hex words) as text: 0100007F -> 127.0.0.1."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]
    return ":".join(b"".join(words).hex()[i:i + 4] for i in range(0, 32, 4))
