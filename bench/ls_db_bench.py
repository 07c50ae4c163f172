"""Label Studio's ceiling for the operator's registrations, by database and server, side by side:

    .venv/bin/python bench/ls_db_bench.py --n 500 --settings sqlite postgresql postgresql:4x1

Each setting is DATABASE[:WORKERSxTHREADS]: DATABASE is sqlite (`label-studio start`'s) or
postgresql (a PostgreSQL 15 of its own on loopback: prelabel_local.postgres, Debian's package);
without WORKERSxTHREADS Label Studio runs as `label-studio start` does (Django's threaded runserver,
one process), with it under gunicorn (WORKERS processes of THREADS threads; Label Studio's image runs
uwsgi with 2 processes a core, 1 thread each). For each setting in turn: a fresh Label Studio, then
scale_bench.label_studio_alone(N): N projects created one at a time, then N registrations by the
operator's Label Studio client from 8 threads (7 requests each), timed. Each measurement holds
--lock (flock(2); default /work/bench.lock, as `flock` the command does) so other benchmarks on the
machine stay out of it. Printed per setting: registrations/s, seconds, "database is locked" lines
in Label Studio's log, and the 1-minute load before and after. The machine is small and shared:
figures are one run's.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scale_bench import label_studio_alone, label_studio_from  # noqa: E402

from prelabel_operator.labelstudio import LabelStudioError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--settings", nargs="+", default=["sqlite", "postgresql", "postgresql:4x1"])
    parser.add_argument("--workers", type=int, default=8, help="the client's threads (the operator's PRELABEL_MAX_WORKERS)")
    parser.add_argument("--lock", default="/work/bench.lock", help="held (flock) around each measurement; '' for none")
    args = parser.parse_args()
    servers = [label_studio_from(s, Path(tempfile.mkdtemp(prefix=f"prelabel-lsdb-{s.partition(':')[0]}-"))) for s in args.settings]
    print(f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}", flush=True)
    for setting, ls in zip(args.settings, servers, strict=True):
        started = time.monotonic()
        try:
            ls.start()
            ready_s = time.monotonic() - started
            with open(args.lock or os.devnull, "a") as lock:
                if args.lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                load_before = os.getloadavg()[0]
                result = label_studio_alone(args.n, ls, workers=args.workers)
                load_after = os.getloadavg()[0]
            locked = ls.log.read_text(errors="replace").count("database is locked")
            print(json.dumps({"setting": setting, **result, "database_is_locked_lines": locked, "start_s": round(ready_s, 1),
                              "load_before": round(load_before, 2), "load_after": round(load_after, 2)}), flush=True)
        except (RuntimeError, LabelStudioError, OSError) as exc:  # one setting's failure is its result; the others still run
            print(json.dumps({"setting": setting, "failed": str(exc)[:300], "log": str(ls.log)}), flush=True)
        finally:
            ls.stop(keep=True)  # its log (and database) for a look afterwards


if __name__ == "__main__":
    main()
