"""The operator at scale: N MLBackends applied at once, for each N given, in one run:

    make bench-scale        (or: .venv/bin/python bench/scale_bench.py --n 10 100 500)

For each N: a fresh local control plane (kwok nodes, 110 pods each, enough for N), the operator
(`python -m prelabel_operator` with the chart's ServiceAccount, default settings: resync tick
30 s) and the stand-in backends (prelabel_local.fake_backends: one process listening on every
Service's ClusterIP); one real Label Studio for the whole run, N new projects in it per N, one per
MLBackend. Measured (tests/integration/scale.py):

- ready_s: from `kubectl apply` of the N resources to all N Ready (polled every 2 s); beside it,
  deployments_available_s: to the last backend Deployment's Available transition (1 s resolution),
  the control plane's share (controller-manager, scheduler, kwok);
- registration_creates: the operator's count of registrations it created (N: none twice);
- registered p50/p99: creation to the Registered condition's lastTransitionTime (1 s resolution);
- the operator's peak RSS (VmHWM) and CPU seconds (user + system), at Ready and at the end;
- in the quiet state (after 2 resync ticks, over --quiet seconds): requests to Label Studio per
  second (its access log), and the operator's requests to the API server per second, by verb and
  resource (the audit log);
- the drift bound the budget states for N (prelabel_operator.drift.repair_bound).

`--label-studio postgresql:4x1` runs Label Studio on PostgreSQL under gunicorn (bench/ls_db_bench.py
compares settings). `--alone` measures, after each N, Label Studio's own ceiling for the same work: N more projects
registered by the operator's Label Studio client from 8 threads, no operator or control plane
(`label_studio_alone`). `--baseline DIR` runs the operator's code and chart from another checkout (e.g. main before the drift budget)
for comparison, same everything else. The machine is small and shared: figures are one run's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prelabel_local import chart  # noqa: E402
from prelabel_local.cluster import LocalCluster, build, free_port  # noqa: E402
from prelabel_local.label_studio_server import LabelStudio  # noqa: E402
from prelabel_operator import drift  # noqa: E402
from tests.integration.scale import Scale, api_requests, ls_requests, new_projects, percentile, usage  # noqa: E402


def run(n: int, label_studio: LabelStudio, args: argparse.Namespace, work: Path) -> dict[str, object]:
    cluster = LocalCluster(build(quiet=True), with_controllers=True, nodes=max(1, math.ceil(n / 100)), workdir=work / f"cluster-{n}",
                           controller_qps=args.controller_qps).start()
    env = {"PYTHONPATH": str(Path(args.baseline).resolve() / "operator")} if args.baseline else {}
    env.update(kv.split("=", 1) for kv in args.operator_env)
    if args.baseline:  # its chart too: the RBAC matches the operator's calls
        chart.CHART = Path(args.baseline).resolve() / "charts" / "prelabel-operator"
    scale = Scale(cluster, label_studio, work / f"n{n}", resync_seconds=args.resync, drift_rate=args.rate, operator_env=env)
    try:
        scale.start()
        assert scale.operator is not None and scale.operator.proc is not None
        pid = scale.operator.proc.pid
        projects = scale.projects(n, f"bench-{n}-{int(time.time())}")
        time.sleep(5)  # the operator's first list and watch
        sent = scale.apply(projects, "b")
        ready_at = scale.wait_ready(n, timeout=args.timeout)
        at_ready = usage(pid)
        registered = scale.registered_after()
        available = scale.deployments_available_after(sent)
        creates = scale.operator.metric('prelabel_operator_registration_changes_total{action="create"}')
        time.sleep(2 * args.resync)
        _, offset = ls_requests(label_studio.log)
        start = time.time()
        time.sleep(args.quiet)
        ls_count, _ = ls_requests(label_studio.log, offset)
        end = time.time()
        at_end = usage(pid)
        calls = api_requests(cluster, chart.SERVICE_ACCOUNT_USER, start, end)
        schedule = drift.Schedule(rate=args.rate, interval=args.resync)
        for i in range(n):
            schedule.track(str(i), 1, 0.0)
        return {
            "n": n, "ready_s": round(ready_at - sent, 1), "deployments_available_s": round(available, 1), "registration_creates": creates,
            "registered_p50_s": percentile(registered, 50), "registered_p99_s": percentile(registered, 99),
            "rss_peak_mb_at_ready": round(at_ready.rss_peak_mb), "cpu_s_at_ready": round(at_ready.cpu_seconds, 1),
            "rss_peak_mb": round(at_end.rss_peak_mb), "cpu_s": round(at_end.cpu_seconds, 1),
            # gunicorn (--label-studio DB:WxT) does not write the runserver access lines ls_requests() counts
            "quiet_window_s": round(end - start), "ls_requests_per_s": None if label_studio.workers else round(ls_count / (end - start), 3),
            "api_requests_per_s": round(sum(calls.values()) / (end - start), 3), "api_requests": calls,
            "drift_period_s": round(schedule.period()), "drift_bound_s": round(drift.repair_bound(schedule.period(), args.resync)),
        }
    finally:
        scale.stop()
        cluster.stop(keep_logs=True)


def label_studio_from(setting: str, workdir: Path) -> LabelStudio:
    """DATABASE[:WORKERSxTHREADS] (sqlite, postgresql, postgresql:4x1) -> an unstarted LabelStudio: the
    database, and without WORKERSxTHREADS `label-studio start` (one process), with it gunicorn with
    WORKERS processes of THREADS threads. ValueError names a bad setting."""
    database, _, server = setting.partition(":")
    if database not in ("sqlite", "postgresql"):
        raise ValueError(f"{setting}: the database is sqlite or postgresql")
    workers, threads = (int(x) for x in server.split("x")) if server else (0, 1)
    return LabelStudio(workdir=workdir, database=database, workers=workers, threads=threads)  # type: ignore[arg-type]


def label_studio_alone(n: int, label_studio: LabelStudio, workers: int) -> dict[str, object]:
    """Label Studio's own ceiling for what the operator asks of it: n new projects registered with the
    operator's Label Studio client (the project read, the list, the create and its second look, the
    webhook's list and stamp, the model version) from `workers` threads (the operator's
    PRELABEL_MAX_WORKERS), with no operator, control plane or kwok running; one stand-in backend
    (fake_backends) answers the /health and /setup Label Studio calls on each create. A registration that
    fails (Label Studio's HTTP 500 on SQLite's "database is locked") is tried again after 1 s, up to 5
    times, as the operator would retry it; failed_attempts counts those failures."""
    from prelabel_local.fake_backends import Server
    from prelabel_operator.labelstudio import Client, LabelStudioError
    from prelabel_operator.registration import Desired, marker
    from prelabel_operator.spec import ProjectRef

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True, name="stand-in").start()
    port = free_port()
    asyncio.run_coroutine_threadsafe(Server().listen("127.0.0.1", port), loop).result()
    projects = new_projects(label_studio, n, f"alone-{n}-{int(time.time())}")
    client = Client(label_studio.url, label_studio.token)

    errors: list[str] = []

    def register(project_id: int) -> None:
        uid = f"alone-{project_id}"
        desired = Desired(url=f"http://127.0.0.1:{port}", title="prelabel", description=marker("bench", f"b-{project_id}", uid),
                          is_interactive=False, timeout=100)
        for attempt in range(5):  # as the operator retries a failed registration (Label Studio's 500s: "database is locked")
            try:
                project = client.resolve(ProjectRef(id=project_id))
                client.ensure(project_id, desired, uid)
                client.set_model_version(project, desired.title)
                return
            except LabelStudioError as exc:
                errors.append(str(exc)[:200])
                if attempt == 4:
                    raise
                time.sleep(1)

    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(register, projects))
    took = time.monotonic() - start
    loop.call_soon_threadsafe(loop.stop)
    return {"n": n, "label_studio_alone_s": round(took, 1), "registrations_per_s": round(n / took, 2), "workers": workers,
            "failed_attempts": len(errors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10, 100, 500])
    parser.add_argument("--resync", type=float, default=30.0, help="PRELABEL_RESYNC_SECONDS: the drift timer's tick (the operator's default)")
    parser.add_argument("--rate", type=float, default=0.8, help="PRELABEL_DRIFT_REQUESTS_PER_SECOND (the operator's default)")
    parser.add_argument("--quiet", type=float, default=120.0, help="seconds of the quiet-state window")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all Ready")
    parser.add_argument("--controller-qps", type=int, default=200,
                        help="the local controller-manager's --kube-api-qps (its own default is 20: 500 Deployments then take it ~2 min)")
    parser.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE", help="extra environment of the operator")
    parser.add_argument("--alone", action="store_true",
                        help="also measure Label Studio alone: each N's registrations sent by the operator's client from 8 threads")
    parser.add_argument("--label-studio", default="sqlite", metavar="DATABASE[:WORKERSxTHREADS]",
                        help="Label Studio's database (sqlite, postgresql) and server (e.g. postgresql:4x1: gunicorn, 4 processes, 1 thread each)")
    parser.add_argument("--baseline", help="run the operator's code from this checkout instead (e.g. /work/main)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prelabel-scale-"))
    print(f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.1f}; work dir {work}; operator from {args.baseline or REPO}", flush=True)
    label_studio = label_studio_from(args.label_studio, work / "label-studio").start()
    try:
        for n in args.n:
            result = run(n, label_studio, args, work)
            print(json.dumps(result), flush=True)
            if args.alone:
                print(json.dumps(label_studio_alone(n, label_studio, workers=8)), flush=True)
    finally:
        label_studio.stop(keep=True)
    print(f"load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
