"""How many CPUs this process really gets: its affinity mask, capped by a cgroup CPU quota.

A container limited with `resources.limits.cpu: 2` on a 64-core node still sees 64 cores in
`os.cpu_count()` and `sched_getaffinity`; only the cgroup says 2. Running 64 threads there makes
the kernel throttle them (CFS bandwidth control) and inference several times slower.

    cgroup v2: <root>/cpu.max                 "<quota> <period>" in µs, or "max <period>" (no limit)
    cgroup v1: <root>/cpu/cpu.cfs_quota_us    quota in µs, -1 = no limit
               <root>/cpu/cpu.cfs_period_us   period in µs (also under cpu,cpuacct/)

The quota in CPUs is quota/period, rounded down and at least 1 (the convention of Go's
automaxprocs: a fractional CPU left over is throttled time, not a thread's worth of work).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path | None = None) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), or None when no quota is set or no cgroup file is readable.
    root: where the cgroup filesystem is mounted (CGROUP_ROOT)."""
    root = CGROUP_ROOT if root is None else root
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota == "max":
            return None
        try:
            q, p = int(quota), int(period or "100000")
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota_text, period_text = _read(root / folder / "cpu.cfs_quota_us"), _read(root / folder / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        try:
            q, p = int(quota_text), int(period_text)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    return None


def affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def usable_cpus(root: Path | None = None, available: int | None = None) -> int:
    """min(CPUs in the affinity mask, floor(cgroup quota)), at least 1."""
    cpus = available if available is not None else affinity()
    quota = cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def inference_streams(cpus: int, batch: int) -> int:
    """How many images of one batch run at once, each on cpus // streams threads: min(cpus, batch), at
    least 1. A stream is OpenVINO's unit of parallel inference (its THROUGHPUT mode): on a few cores a
    small model keeps them busier with an image per core than with every core on each image in turn
    (yolov8n at 640 on 2 cores: 26 img/s against 24, measured here; the batch's images come in at once)."""
    return max(1, min(cpus, batch))
