"""glibc's allocator held to the backend's memory bound (issue 13: RSS <= 1.2 GB with one yolov8n-size model).

- **Arenas.** glibc gives each thread that allocates concurrently an arena of its own, up to 8 per
  core; memory freed in one arena is not reused by another. The backend runs gunicorn's 8 request
  threads, 8 media threads and the runtimes' pools: each decoded 640x480 image (0.9 MB) and each
  batch tensor lands in some thread's arena and stays there as free space. Two arenas (as
  MALLOC_ARENA_MAX=2 would set at process start) bound that.
- **Large blocks mapped.** Blocks of 1 MiB or more are mmap'd and unmapped when freed.
- **Trim.** After a model load or the measurement, which open and drop whole runtimes, free memory
  at the heap's top goes back to the system (malloc_trim).

Both are glibc's (mallopt(3), malloc_trim(3)); elsewhere (musl, macOS) they do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # <malloc.h>
ARENAS = 2
MMAP_THRESHOLD = 1 << 20


@functools.cache  # find_library runs `ldconfig -p`: once per process
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """At most `arenas` malloc arenas from now on, and blocks of `mmap_threshold` bytes or more (a
    decoded image, a batch tensor) mapped on their own, so that freeing them returns them to the
    system (glibc's threshold otherwise rises to 32 MiB after the first such free, and they stay in the
    heap), unless MALLOC_ARENA_MAX is set (glibc read the environment at process start: the operator's
    choice stands). Call it before threads start: arenas that exist stay. Returns whether it was set here."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas) == 1
                and libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1)


def trim() -> None:
    """Returns the free memory at the top of every arena to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


CGROUP_ROOT = "/sys/fs/cgroup"


def oom_kills(root: str = CGROUP_ROOT) -> int | None:
    """How many processes of this container the kernel killed for memory (its cgroup's `oom_kill`
    count: cgroup v2 `memory.events`, v1 `memory/memory.oom_control`), or None where unreadable.
    A model worker killed while gunicorn's master lives on shows nowhere else: /health reports it."""
    for path in (f"{root}/memory.events", f"{root}/memory/memory.oom_control"):
        try:
            with open(path) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None
