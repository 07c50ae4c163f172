"""Every server the local mode starts, recorded, so that it is stopped however its owner ends.

`spawn()` starts a command in a session (and process group) of its own, as all the local mode's
servers run, and writes a record of it under the run dir (`run_dir()`): the owner (this Python
process) and the leader, each as PID and start time (from /proc, so a reused PID is never taken for
them), the argv, the log, and a marker: the environment variable `PRELABEL_PROCESS=<id>`, which the
leader and every descendant inherit. `stop()` ends one such group (SIGTERM, then SIGKILL after a
grace period) and removes its record. What an owner left behind when it died (`kill -9` of
`prelabel demo`, of pytest) is stopped by `stop_orphans()` (`prelabel down`; the test session runs
it first), and `exit_on_signals()` turns SIGTERM and SIGHUP into the same unwinding as Ctrl-C, so a
`finally` stops what was started.

Which processes belong to a record: those whose environment carries its marker, and the members of
its process group while one such process, or the leader with its recorded start time, still exists
(Linux does not hand out a PID again while a group of that ID has members, so the group is ours).
Linux only (/proc), as is the control plane it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

MARKER = "PRELABEL_PROCESS"
_lock = threading.Lock()
_mine: dict[int, Record] = {}  # leader PID -> record, for the groups this process started and has not stopped
_held: list[int] = []  # signals exit_on_signals() holds while the main thread is in spawn()
_spawning: list[None] = []  # one entry while the main thread is in spawn()


def run_dir() -> Path:
    """Where records live: $PRELABEL_RUN_DIR, else $XDG_RUNTIME_DIR/prelabel, else ~/.cache/prelabel/run."""
    if os.environ.get("PRELABEL_RUN_DIR"):
        return Path(os.environ["PRELABEL_RUN_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "prelabel"
    return Path.home() / ".cache" / "prelabel" / "run"


@dataclass(frozen=True)
class Record:
    """One started process group. Start times are /proc/<pid>/stat's field 22 (clock ticks after boot)."""

    id: str  # the marker's value, and the record's file name
    name: str
    pid: int  # the leader; its PID is also the group's and the session's ID
    start_time: int
    argv: list[str]
    log: str
    owner_pid: int
    owner_start_time: int

    @property
    def path(self) -> Path:
        return run_dir() / f"{self.id}.json"


# -- /proc ------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a PID, None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[2]), int(fields[19])


def start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[2] if stat else None


def alive(pid: int, started: int) -> bool:
    """Whether the process `pid` that started at `started` still runs (a zombie does not)."""
    stat = _stat(pid)
    return stat is not None and stat[2] == started and stat[0] != "Z"


def _has_marker(pid: int, marker: bytes) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def members(record: Record) -> list[int]:
    """The live processes that belong to `record` (see the module's docstring)."""
    marker = f"{MARKER}={record.id}".encode()
    in_group, marked, verified = [], [], alive(record.pid, record.start_time)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        if _has_marker(pid, marker):
            marked.append(pid)
            verified = verified or stat[1] == record.pid
        elif stat[1] == record.pid:
            in_group.append(pid)
    return sorted(set(marked + (in_group if verified else [])))


# -- records ----------------------------------------------------------------------------------------
def records() -> list[Record]:
    """Every record under the run dir (unreadable ones are dropped)."""
    found = []
    for path in sorted(run_dir().glob("*.json")):
        try:
            found.append(Record(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
    return found


def orphaned(record: Record) -> bool:
    """Whether the process that started the group is gone."""
    return not alive(record.owner_pid, record.owner_start_time)


def spawn(name: str, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None,
          mode: str = "ab") -> subprocess.Popen[bytes]:
    """Starts argv in a new session with stdout and stderr to `log` (opened with `mode`) and stdin from
    /dev/null, with `env` (default: this process's) plus the marker; records it. Stop it with stop()."""
    ident = uuid.uuid4().hex
    full_env = {**(os.environ if env is None else env), MARKER: ident}
    log.parent.mkdir(parents=True, exist_ok=True)
    # exit_on_signals() holds a signal until the record is written (blocking it instead would block it
    # in the child too: the mask is inherited), and another thread's stop_owned() waits for the lock.
    with _recording(), _lock:
        with log.open(mode) as handle:
            popen = subprocess.Popen(list(argv), env=full_env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        me = os.getpid()
        record = Record(ident, name, popen.pid, start_time(popen.pid) or 0, [str(a) for a in argv], str(log), me, start_time(me) or 0)
        record.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = record.path.with_suffix(".partial")  # renamed into place: another process never reads half a record
        partial.write_text(json.dumps(asdict(record)))
        partial.replace(record.path)
        _mine[popen.pid] = record
    return popen


@contextlib.contextmanager
def _recording() -> Iterator[None]:
    """The main thread's spawn(): exit_on_signals() holds a signal until the end, then raises it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _spawning.append(None)
    try:
        yield
    finally:
        _spawning.pop()
        if not _spawning and _held:
            signal.raise_signal(_held.pop())


def _end(record: Record, grace: float, popen: subprocess.Popen[bytes] | None = None, sig: int = signal.SIGTERM) -> None:
    """Sends `sig` to the record's processes, SIGKILL to those left after `grace` s, waits for them to
    go (reaping the leader when it is our child), and removes the record."""
    deadline, killed = time.monotonic() + grace, sig == signal.SIGKILL
    pids = members(record)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    while pids:
        if popen is not None:
            popen.poll()  # reap the leader, which would otherwise stay a zombie of ours
        time.sleep(0.05)
        pids = members(record)
        if pids and not killed and time.monotonic() > deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 10
        elif pids and killed and time.monotonic() > deadline:
            break  # unkillable (D state): leave the record for `prelabel down`
    else:
        record.path.unlink(missing_ok=True)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)
    with _lock:
        _mine.pop(record.pid, None)


def stop(popen: subprocess.Popen[bytes], grace: float = 20) -> None:
    """Ends a process started by spawn() and every process of its group: SIGTERM, SIGKILL after `grace` s."""
    with _lock:
        record = _mine.get(popen.pid)
    if record is None:  # not spawned here (or stopped already): its group, if its leader is still our child
        if popen.poll() is None:
            os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=5)
        return
    _end(record, grace, popen)


def kill(popen: subprocess.Popen[bytes]) -> None:
    """SIGKILL to a spawned group at once: no cleanup, as a crashed or evicted pod."""
    with _lock:
        record = _mine.get(popen.pid)
    if record is not None:
        _end(record, 0, popen, signal.SIGKILL)


def stop_owned(grace: float = 20) -> list[Record]:
    """Stops every group this process spawned and has not stopped; returns their records."""
    with _lock:
        owned = list(_mine.values())
    for record in reversed(owned):  # the last started first, as a stack unwinds
        _end(record, grace)
    return owned


def stop_orphans(grace: float = 20, everything: bool = False) -> list[Record]:
    """Stops the recorded groups whose owner is gone (with `everything`, all recorded groups);
    removes the records of groups already gone. Returns the records of the groups it stopped."""
    stopped = []
    for record in sorted(records(), key=lambda r: r.start_time, reverse=True):
        if not (everything or orphaned(record)):
            continue
        if members(record):
            _end(record, grace)
            stopped.append(record)
        else:
            record.path.unlink(missing_ok=True)
    return stopped


class Stopped(BaseException):
    """Raised in the main thread by exit_on_signals() on SIGTERM or SIGHUP."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise Stopped in the main thread (SIGINT raises
    KeyboardInterrupt, as always), once: later ones are ignored, so that the cleanup a `finally` runs
    is not cut short. The previous handlers are restored on the way out."""
    caught = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {s: signal.getsignal(s) for s in caught}
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if _spawning:
            _held[:] = [signum]
            return
        if fired:
            return
        fired = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    for s in caught:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
