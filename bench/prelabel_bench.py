"""Pre-labeling a whole project, three ways side by side on the same generated images, in one run:

    make bench-prelabel        (or: .venv/bin/python bench/prelabel_bench.py --tasks 1000 --repeats 3)

1. direct: the backend's own throughput. POST /predict with the project's tasks (batches of
   --batch-size, --concurrency requests in flight), nothing stored. The ceiling for 2 and 3.
2. driver (path B): `prelabel_driver.Driver.run_pass` on a fresh project until nothing is pending:
   pages of tasks from Label Studio's Data Manager, /predict, bulk prediction import. It runs in a
   child process that imports `prelabel_operator.handlers` (the operator's modules loaded), whose RSS
   this process samples; the child times every Label Studio and backend call it makes and reads the
   driver's own per-stage histogram (prelabel_operator_prelabel_batch_seconds).
3. action (path A): Label Studio's own "retrieve predictions" on a fresh project with the backend
   registered as its ML backend, one action per batch, --concurrency actions at once (threads);
   the stored predictions are counted afterwards with the predictions API.

Everything is real and on loopback: Label Studio (prelabel_local.label_studio_server, SQLite, its own
data dir) and one backend process (`python -m prelabel_backend`, fetching the uploaded images from
Label Studio with the API key). Each repeat uploads the same images into three fresh projects
(untimed; distinct uploads, so the backend's media cache never helps one path over another) and runs
the three paths in a rotating order. The machine is small and shared: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

UPLOAD_CHUNK = 100  # files per import request (Django's DATA_UPLOAD_MAX_NUMBER_FILES is 100 by default)


# -- the child: path B under instrumentation --------------------------------------------------------
def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(end - start for start, end in intervals)


def _minus(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Parts of the (merged) intervals a not covered by the (merged) intervals b."""
    out: list[tuple[float, float]] = []
    for start, end in a:
        cursor = start
        for b_start, b_end in b:
            if b_end <= cursor or b_start >= end:
                continue
            if b_start > cursor:
                out.append((cursor, b_start))
            cursor = max(cursor, b_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def child(config: dict[str, Any]) -> None:
    """Runs the driver over one project until nothing is pending; prints one JSON line of results."""
    import httpx
    from prometheus_client import REGISTRY

    import prelabel_operator.handlers  # noqa: F401  (what the operator process has loaded)
    from prelabel_operator import prelabel_driver
    from prelabel_operator.prelabel_driver import Driver, Target
    from prelabel_operator.spec import PrelabelSpec

    http: list[tuple[str, float, float]] = []  # (kind, start, end) of each HTTP exchange (body read)
    sdk: list[tuple[str, float, float]] = []  # (action, start, end) of each Label Studio SDK call (with parsing)

    def kind(request: httpx.Request) -> str:
        path = request.url.path
        if path.endswith("/predict"):
            return "backend /predict"
        if path.endswith("/setup"):
            return "backend /setup"
        if path.rstrip("/").endswith("/import/predictions"):
            return "LS import predictions"
        if path.rstrip("/").endswith("/api/tasks"):
            return "LS count" if request.url.params.get("page_size") == "1" else "LS list page"
        return f"LS {request.method} other"

    original_send = httpx.AsyncClient.send

    async def timed_send(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        try:
            return await original_send(self, request, **kwargs)
        finally:
            http.append((kind(request), started, time.perf_counter()))

    httpx.AsyncClient.send = timed_send  # type: ignore[method-assign]
    original_ls = prelabel_driver._ls

    async def timed_ls(call: Any, action: str) -> Any:
        started = time.perf_counter()
        try:
            return await original_ls(call, action)
        finally:
            sdk.append((re.sub(r"\s*\d+", "", action), started, time.perf_counter()))

    prelabel_driver._ls = timed_ls  # type: ignore[assignment]

    reports = 0

    async def report(_progress: Any) -> None:
        nonlocal reports
        reports += 1

    class Running:
        def __bool__(self) -> bool:
            return False

    driver = Driver("bench", "bench", report)
    target = Target(config["ls_url"], config["api_key"], config["backend_url"], None, (config["project"],))
    spec = PrelabelSpec(batch_size=config["batch_size"], concurrency=config["concurrency"])
    passes: list[float | None] = []
    cpu0 = time.process_time()
    wall_started, started = time.time(), time.perf_counter()
    for _ in range(10):
        again = asyncio.run(driver.run_pass(target, spec, Running()))
        passes.append(again)
        if again is None or not driver.progress.pending:
            break
        time.sleep(again)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0

    def histogram(stage: str) -> dict[str, float]:
        name = "prelabel_operator_prelabel_batch_seconds"
        return {"sum": REGISTRY.get_sample_value(f"{name}_sum", {"stage": stage}) or 0.0,
                "count": REGISTRY.get_sample_value(f"{name}_count", {"stage": stage}) or 0.0}

    predict = _union([(s, e) for k, s, e in http if k.startswith("backend /predict")])
    backend_any = _union([(s, e) for k, s, e in http if k.startswith("backend")])
    ls_any = _union([(s, e) for k, s, e in http if k.startswith("LS")] + [(s, e) for _, s, e in sdk])
    ls_only = _minus(ls_any, backend_any)
    external = _union(backend_any + ls_any)
    per_kind: dict[str, dict[str, float]] = {}
    for k, s, e in http:
        entry = per_kind.setdefault(k, {"calls": 0, "sum": 0.0})
        entry["calls"] += 1
        entry["sum"] += e - s
    for k in per_kind:
        per_kind[k]["union"] = _length(_union([(s, e) for kk, s, e in http if kk == k]))
    per_action: dict[str, dict[str, float]] = {}
    for a, s, e in sdk:
        entry = per_action.setdefault(a, {"calls": 0, "sum": 0.0})
        entry["calls"] += 1
        entry["sum"] += e - s
    print(json.dumps({
        "wall": wall, "wall_start": wall_started, "wall_end": wall_started + wall, "cpu": cpu, "passes": passes,
        "progress": {"total": driver.progress.total, "predicted": driver.progress.predicted, "failed": driver.progress.failed,
                     "pending": driver.progress.pending, "stored_this_run": driver.progress.stored_this_run},
        "failures": driver.progress.failures[:3], "reports": reports,
        "histogram": {"predict": histogram("predict"), "store": histogram("store")},
        "http": per_kind, "sdk": per_action,
        # disjoint split of the wall time: backend busy (a /predict or /setup in flight); else Label
        # Studio busy (one of its calls in flight); else only the driver (and its event loop) running
        "split": {"backend": _length(backend_any), "label_studio_only": _length(ls_only),
                  "driver_only": wall - _length(external)},
        "predict_union": _length(predict), "ls_union": _length(ls_any),
    }), flush=True)


# -- the parent ---------------------------------------------------------------------------------------
def rss_of(pid: int) -> int:
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


def cpu_of_tree(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants so far."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


class Bench:
    def __init__(self, args: argparse.Namespace, ls: Any, backend: Any, pngs: dict[str, bytes], label_config: str) -> None:
        from label_studio_sdk import LabelStudio as Client

        self.args, self.ls, self.backend, self.pngs, self.label_config = args, ls, backend, pngs, label_config
        self.client = Client(base_url=ls.url, api_key=ls.token, timeout=600)
        self.headers = {"Authorization": f"Token {ls.token}"}

    def project(self, title: str, pngs: dict[str, bytes] | None = None) -> tuple[int, list[dict[str, Any]]]:
        """A fresh project holding the images as tasks (uploads: one task per image); its tasks by id."""
        import requests

        pngs = self.pngs if pngs is None else pngs
        project = self.client.projects.create(title=title, label_config=self.label_config)
        items = list(pngs.items())
        for start in range(0, len(items), UPLOAD_CHUNK):
            files = {f"file{i}": (name, data, "image/png") for i, (name, data) in enumerate(items[start:start + UPLOAD_CHUNK])}
            requests.post(f"{self.ls.url}/api/projects/{project.id}/import", files=files, headers=self.headers, timeout=600).raise_for_status()
        tasks: list[dict[str, Any]] = []
        while len(tasks) < len(pngs):
            response = requests.get(f"{self.ls.url}/api/tasks", headers=self.headers, timeout=600,
                                    params={"project": project.id, "page": len(tasks) // 500 + 1, "page_size": 500, "include": "id,data"})
            response.raise_for_status()
            page = response.json()["tasks"]
            if not page:
                break
            tasks += page
        tasks = sorted(({"id": t["id"], "data": t["data"]} for t in tasks), key=lambda t: t["id"])
        if len(tasks) != len(pngs):
            raise RuntimeError(f"project {project.id}: {len(tasks)} tasks for {len(pngs)} images")
        return project.id, tasks

    def stored(self, project_id: int) -> dict[str, int]:
        predictions = self.client.predictions.list(project=project_id)
        tasks = {p.task for p in predictions}
        return {"predictions": len(predictions), "tasks": len(tasks), "empty": sum(1 for p in predictions if not p.result),
                "versions": len({p.model_version for p in predictions})}

    def batches(self, tasks: list[Any]) -> list[list[Any]]:
        size = self.args.batch_size
        return [tasks[i:i + size] for i in range(0, len(tasks), size)]

    # 1. the backend alone
    def direct(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        import requests

        local = threading.local()
        project = f"{project_id}.0"
        requests.post(f"{self.backend.url}/setup", json={"project": project, "schema": self.label_config}, timeout=60).raise_for_status()

        def predict(batch: list[dict[str, Any]]) -> tuple[int, int]:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            response = local.session.post(f"{self.backend.url}/predict", json={"tasks": batch, "project": project}, timeout=600)
            response.raise_for_status()
            results = response.json()["results"]
            assert len(results) == len(batch)
            errors = sum(1 for r in results if r.get("error"))
            return len(batch) - errors, errors

        started = time.perf_counter()
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            answers = list(pool.map(predict, self.batches(tasks)))
        wall = time.perf_counter() - started
        ok = sum(a for a, _ in answers)
        return {"wall": wall, "tasks": ok, "errors": sum(e for _, e in answers), "rate": ok / wall}

    # 2. path B, the driver, in a child process whose RSS is sampled
    def driver(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        config = {"ls_url": self.ls.url, "api_key": self.ls.token, "backend_url": self.backend.url, "project": project_id,
                  "batch_size": self.args.batch_size, "concurrency": self.args.concurrency}
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        samples: list[tuple[float, int]] = []
        while proc.poll() is None:
            try:
                samples.append((time.time(), rss_of(proc.pid)))
            except (OSError, ValueError, Exception):  # noqa: BLE001  (the child may exit between poll and read)
                pass
            time.sleep(0.05)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"driver child exited with {proc.returncode}:\n{err.decode()[-3000:]}")
        result = json.loads(out.decode().strip().splitlines()[-1])
        during = [rss for t, rss in samples if result["wall_start"] <= t <= result["wall_end"]]
        before = [rss for t, rss in samples if t < result["wall_start"]]
        result["rss"] = {"peak": max(during or [0]), "median": statistics.median(during or [0]), "samples": len(during),
                         "before_run": before[-1] if before else 0}
        stored = self.stored(project_id)
        result.update(stored=stored, rate=stored["tasks"] / result["wall"])
        return result

    # 3. path A, Label Studio's own action
    def action(self, project_id: int, tasks: list[dict[str, Any]]) -> dict[str, Any]:
        self.client.ml.create(project=project_id, url=self.backend.url, title="bench backend")
        ids = [t["id"] for t in tasks]

        def retrieve(batch: list[int]) -> None:
            self.client.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items={"all": False, "included": batch})

        started = time.perf_counter()
        with ThreadPoolExecutor(self.args.concurrency) as pool:
            list(pool.map(retrieve, self.batches(ids)))
        wall = time.perf_counter() - started
        stored = self.stored(project_id)
        return {"wall": wall, "stored": stored, "rate": stored["tasks"] / wall}


def make_images(args: argparse.Namespace) -> dict[str, bytes]:
    import numpy as np

    from prelabel_backend import synthetic

    rng = np.random.default_rng(7)
    scene_args = {} if args.model == "shapes" else {"width": 640, "height": 480, "size": (60.0, 160.0)}
    return {f"bench-{i:05d}.png": synthetic.encode_png(synthetic.make_scene(rng, **scene_args).image) for i in range(args.tasks)}


def fmt(seconds: float) -> str:
    return f"{seconds:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000, help="images (tasks) per project")
    parser.add_argument("--repeats", type=int, default=3, help="each path this many times (fresh projects each time)")
    parser.add_argument("--batch-size", type=int, default=16, help="tasks per /predict, per action, per import (the driver's default)")
    parser.add_argument("--concurrency", type=int, default=2, help="batches in flight (the driver's default)")
    parser.add_argument("--model", choices=["shapes", "yolov8n"], default="shapes",
                        help="shapes: the packaged detector (the backend's default) on 192x144 images; yolov8n: the yolov8n "
                             "architecture with random weights at 640 px on 640x480 images (nothing can be downloaded here)")
    parser.add_argument("--label-studio-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for Label Studio, e.g. a feature flag (repeatable)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    from prelabel_backend import offline
    from prelabel_local.backend import BackendProcess
    from prelabel_local.demo import SEED_LABEL_CONFIG
    from prelabel_local.label_studio_server import LabelStudio

    work = Path(tempfile.mkdtemp(prefix="prelabel-bench-"))
    t0 = time.perf_counter()
    pngs = make_images(args)
    print(f"{len(pngs)} images generated ({sum(map(len, pngs.values())) / len(pngs) / 1024:.0f} KiB PNG each) in {time.perf_counter() - t0:.1f}s",
          flush=True)
    env: dict[str, str] = {"LOG_LEVEL": "WARNING"}
    if args.model == "yolov8n":
        offline.configure()
        from ultralytics import YOLO

        weights = work / "yolov8n-random.pt"
        YOLO("yolov8n.yaml").save(str(weights))
        env.update(MODEL_ROOT=str(weights.parent), MODEL_DETECT=weights.name)
    ls = backend = None
    runs: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        ls_env = dict(item.split("=", 1) for item in args.label_studio_env)
        ls = LabelStudio(workdir=work / "label-studio", extra_env=ls_env).start()
        print(f"Label Studio up at {ls.url} in {time.perf_counter() - t0:.0f}s", flush=True)
        backend = BackendProcess({**env, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token}, work / "backend" / "backend.log")
        backend.wait_ready()
        bench = Bench(args, ls, backend, pngs, SEED_LABEL_CONFIG)
        # warm-up, untimed: the backend's first predict (lazy imports, fuse), Label Studio's media views
        warm_id, warm_tasks = bench.project("bench warm-up", dict(list(pngs.items())[:2 * args.batch_size]))
        bench.direct(warm_id, warm_tasks)
        paths = {"direct": bench.direct, "driver": bench.driver, "action": bench.action}
        order = list(paths)
        for repeat in range(args.repeats):
            run: dict[str, Any] = {}
            for name in order[repeat % 3:] + order[:repeat % 3]:
                t0 = time.perf_counter()
                project_id, tasks = bench.project(f"bench {repeat} {name}")
                upload = time.perf_counter() - t0
                cpu0 = (cpu_of_tree(ls.process.pid), cpu_of_tree(backend.proc.pid), time.process_time())
                run[name] = {"project": project_id, "upload": upload, **paths[name](project_id, tasks)}
                cpu1 = (cpu_of_tree(ls.process.pid), cpu_of_tree(backend.proc.pid), time.process_time())
                # CPU seconds over the path (the wall includes a little more for the driver: its child's imports)
                run[name]["cpu"] = {"label_studio": cpu1[0] - cpu0[0], "backend": cpu1[1] - cpu0[1],
                                    "client": run[name].get("cpu", cpu1[2] - cpu0[2])}
                cpu = run[name]["cpu"]
                print(f"repeat {repeat + 1}/{args.repeats} {name:>6}: {run[name]['rate']:6.1f} tasks/s "
                      f"({fmt(run[name]['wall'])}s; upload {fmt(upload)}s; CPU s: Label Studio {fmt(cpu['label_studio'])}, "
                      f"backend {fmt(cpu['backend'])}, client {fmt(cpu['client'])})", flush=True)
            runs.append(run)
            report_repeat(run)
    finally:
        if backend is not None:
            backend.stop()
        if ls is not None:
            ls.stop()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    summary(args, runs)


def report_repeat(run: dict[str, Any]) -> None:
    d = run["driver"]
    print(f"   driver stored {d['stored']}, passes {d['passes']}, progress {d['progress']}, failures {d['failures']}")
    print(f"   action stored {run['action']['stored']}; direct {run['direct']['tasks']} ok, {run['direct']['errors']} errors")
    print("   driver calls (HTTP, summed over concurrent calls): " +
          "; ".join(f"{k} {v['calls']}x {v['sum']:.1f}s" for k, v in sorted(d["http"].items())))
    print("   driver SDK calls (with parsing): " + "; ".join(f"{k} {v['calls']}x {v['sum']:.1f}s" for k, v in sorted(d["sdk"].items())))
    print("   histogram prelabel_operator_prelabel_batch_seconds: " +
          "; ".join(f"{k} {v['count']:.0f} batches {v['sum']:.1f}s" for k, v in d["histogram"].items()), flush=True)


def summary(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    def done(path: dict[str, Any]) -> int:  # tasks predicted (direct) or stored (driver, action)
        return max(1, path["stored"]["tasks"] if "stored" in path else path["tasks"])

    print()
    print(f"{args.tasks} tasks, model {args.model}, batch {args.batch_size}, concurrency {args.concurrency}, {os.cpu_count()} cores, "
          f"{len(runs)} repeat(s); medians (ratios: median of the per-repeat ratios)")
    if args.label_studio_env:
        print(f"Label Studio env: {' '.join(args.label_studio_env)}")
    print(f"{'path':<36} {'tasks/s':>8} {'wall s':>7} {'/direct':>8}   per repeat")
    for name, label in (("direct", "1 backend /predict, nothing stored"), ("driver", "B driver (prelabel_driver)"),
                        ("action", "A Label Studio retrieve predictions")):
        rates = [r[name]["rate"] for r in runs]
        ratios = [r[name]["rate"] / r["direct"]["rate"] for r in runs]
        print(f"{label:<36} {med(rates):>8.1f} {med([r[name]['wall'] for r in runs]):>7.1f} {med(ratios):>8.2f}   "
              + " ".join(f"{x:.1f}" for x in rates))
    print(f"{'B / A':<36} {'':>8} {'':>7} {med([r['driver']['rate'] / r['action']['rate'] for r in runs]):>8.2f}")
    print()
    print("path B, share of its wall time (disjoint: backend busy > else Label Studio busy > else driver only):")
    for key, label in (("backend", "backend (/predict or /setup in flight)"), ("label_studio_only", "Label Studio only (backend idle)"),
                       ("driver_only", "driver only (no call in flight)")):
        print(f"  {label:<40} {100 * med([r['driver']['split'][key] / r['driver']['wall'] for r in runs]):5.1f}%")
    print(f"  {'Label Studio busy at all (overlapping)':<40} {100 * med([r['driver']['ls_union'] / r['driver']['wall'] for r in runs]):5.1f}%")
    print(f"  {'driver process CPU / wall':<40} {100 * med([r['driver']['cpu']['client'] / r['driver']['wall'] for r in runs]):5.1f}%")
    print("path B, summed time per stage (over concurrent calls), s:")
    stages: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r["driver"]["http"].items():
            stages.setdefault(f"HTTP {k}", []).append(v["sum"])
        for k, v in r["driver"]["sdk"].items():
            stages.setdefault(f"SDK {k}", []).append(v["sum"])
        for k, v in r["driver"]["histogram"].items():
            stages.setdefault(f"histogram {k}", []).append(v["sum"])
    for k, values in sorted(stages.items()):
        print(f"  {k:<40} {med(values):7.2f}")
    print()
    print("CPU seconds per 100 tasks (medians) and the machine's load over each path's wall time:")
    print(f"{'path':<8} {'LS':>6} {'backend':>8} {'client':>7} {'load':>12}")
    for name in ("direct", "driver", "action"):
        per = {k: med([100 * r[name]["cpu"][k] / done(r[name]) for r in runs]) for k in ("label_studio", "backend", "client")}
        load = med([sum(r[name]["cpu"].values()) / r[name]["wall"] for r in runs])
        print(f"{name:<8} {per['label_studio']:>6.2f} {per['backend']:>8.2f} {per['client']:>7.2f} {load:>5.2f} of {os.cpu_count()} cores")
    mib = 1024 * 1024
    print(f"path B RSS (child importing prelabel_operator.handlers): peak {med([r['driver']['rss']['peak'] for r in runs]) / mib:.0f} MiB, "
          f"median {med([r['driver']['rss']['median'] for r in runs]) / mib:.0f} MiB, before the run "
          f"{med([r['driver']['rss']['before_run'] for r in runs]) / mib:.0f} MiB "
          f"(max peak {max(r['driver']['rss']['peak'] for r in runs) / mib:.0f} MiB)")


if __name__ == "__main__":
    main()
