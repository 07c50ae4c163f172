"""Helpers for the lifecycle tests: what a run recorded (prelabel_local.processes), which of those
processes still live, which addresses they listen on, and whether those addresses are free again."""

from __future__ import annotations

import errno
import socket
import subprocess
import threading
import time
from pathlib import Path

from prelabel_local import processes


def recorded(owner: int) -> dict[str, list[int]]:
    """Name -> live PIDs (leader and group) of the groups `owner` recorded (PRELABEL_RUN_DIR set by the caller)."""
    found: dict[str, list[int]] = {}
    for record in processes.records():
        if record.owner_pid == owner:
            found.setdefault(record.name, []).extend(processes.members(record))
    return found


def _hex_address(field: str) -> tuple[str, int]:
    ip, port = field.split(":")
    return socket.inet_ntoa(bytes.fromhex(ip)[::-1]), int(port, 16)


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """The IPv4 TCP addresses the processes listen on (from /proc/net/tcp and their socket fds)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            addresses.add(_hex_address(fields[1]))
    return addresses


def free(address: tuple[str, int]) -> bool:
    """Nothing listens on the address any more: it binds again, or the address itself is gone (the
    real node's bridge, and with it the gateway address its servers bound, is removed on stop)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a connection in TIME_WAIT does not hold a port
        try:
            s.bind(address)
        except OSError as error:
            return error.errno == errno.EADDRNOTAVAIL
        return True


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` that still run (zombies count as gone)."""
    return [pid for pid in pids if processes.start_time(pid) is not None and Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"]


class Output:
    """Reads a child's stdout in a thread; wait_for() waits until a line holds a text."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert popen.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(popen,), daemon=True)
        self._thread.start()
        self.popen = popen

    def _read(self, popen: subprocess.Popen[str]) -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"no line with {text!r} (exit {self.popen.poll()}):\n{''.join(self.lines)[-4000:]}")


def snapshot(owner: int) -> tuple[dict[str, list[int]], list[int], set[tuple[str, int]]]:
    """Name -> PIDs of what `owner` recorded, all those PIDs, the addresses they listen on."""
    names = recorded(owner)
    pids = [pid for group in names.values() for pid in group]
    return names, pids, listening(pids)


def groups(owner: int) -> int:
    return sum(1 for r in processes.records() if r.owner_pid == owner)


def assert_gone(pids: list[int], addresses: set[tuple[str, int]], run_dir: Path) -> None:
    deadline = time.monotonic() + 10  # a killed process's last reap by init may lag its parent's exit a little
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pids), f"still running: {alive(pids)}"
    assert all(free(a) for a in addresses), [a for a in addresses if not free(a)]
    assert not list(run_dir.glob("*.json")), "records left behind"
