"""A 50,000-task Label Studio project in its steady state: what the pre-labeling driver's passes cost,
how long new tasks wait for their pre-labels, and what the driver asks Label Studio for:

    make bench-50k        (or: .venv/bin/python bench/ls_50k_bench.py --tasks 50000 --repeats 5)

One real Label Studio (prelabel_local.label_studio_server, 1.23.2, SQLite, `label-studio start`, loopback)
and one real backend process (`python -m prelabel_backend`, the packaged shapes model, fetching uploads
from Label Studio with the API key). Setup, untimed against the bench's figures but reported:

1. a project with the seed labeling config (tests/conftest.py SEED_CONFIG), and the driver's model
   version for it read as the driver reads it (`Driver._version`: the backend's /setup);
2. --tasks tasks imported through Label Studio's JSON import (`POST /api/projects/<id>/import`, batches of
   --import-batch), each `{"image": "/data/upload/<project>/bench-<n>.png"}` (an upload path that exists
   nowhere: nothing fetches it) carrying one prediction of the driver's model version (`result: []`, as the
   backend answers an image with nothing on it) inline: the state the driver leaves a pre-labeled
   project in, made in a few requests.

Measured, with the driver's own code (every HTTP exchange it makes is recorded by wrapping
`httpx.AsyncClient.send`: method, path, query string, body size, seconds; the bench's own checks use
`requests` and are not counted):

a. resync: `Driver.run_pass` of a fresh Driver (as after an operator start): the whole pass over a
   project where nothing is left to predict. --repeats times.
b. poll: `Driver.run_pass` again on the same Driver, the pass the operator's daemon makes every
   `pollSeconds` once the project is complete. --repeats times. (The driver has one kind of pass: a
   poll is a full pass; both are measured so the figures say it.)
   For both: Label Studio requests by kind, seconds, and Label Studio's CPU seconds (its process tree).
c. new tasks: the daemon's own loop (`prelabel_driver.run`, pollSeconds --poll-seconds) runs as in the
   operator; right after one of its passes ends (the phase where a new task waits longest for the next
   poll), --new real images (`prelabel_backend.synthetic` scenes, PNG uploads, as the tests make them)
   are imported; the time until all of them hold the driver's prediction in Label Studio (checked every
   second with the driver's own read-back query, `prelabel.holding_query`), and until the driver's
   prediction import request returned (Label Studio 1.23's default import stores the predictions, then
   recounts every task of the project before it answers), with Label Studio's CPU seconds meanwhile.
   --new-rounds times. `--label-studio-env NAME=VALUE` starts Label Studio with a feature flag, e.g.
   its memory-efficient prediction import.
d. the query strings of every task list request the driver made (the parameters besides `query`, and the
   Data Manager filters in `query`), and whether any asks Label Studio to resolve media URLs
   (`resolve_uri` absent means Label Studio's default, true: label-studio-sdk #658).

The machine is small and shared: medians, with the spread, and the load are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prelabel_bench import cpu_of_tree  # noqa: E402 - this directory is on sys.path when a bench runs as a script


# -- recording the driver's HTTP exchanges ------------------------------------------------------------
@dataclass
class Exchange:
    start: float
    end: float
    method: str
    port: int
    path: str
    params: dict[str, list[str]]
    body_bytes: int
    status: int


@dataclass
class Recorder:
    """Every request an httpx.AsyncClient in this process sends (only the driver uses one here)."""

    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        import httpx

        original = httpx.AsyncClient.send
        recorder = self

        async def send(client: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> httpx.Response:
            started = time.monotonic()
            status = 0
            try:
                response = await original(client, request, **kwargs)
                status = response.status_code
                return response
            finally:
                url = urlsplit(str(request.url))
                with recorder.lock:
                    recorder.exchanges.append(
                        Exchange(
                            started,
                            time.monotonic(),
                            request.method,
                            int(url.port or 80),
                            url.path,
                            parse_qs(url.query, keep_blank_values=True),
                            len(request.content or b""),
                            status,
                        )
                    )

        httpx.AsyncClient.send = send  # type: ignore[method-assign]

    def between(self, start: float, end: float) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if start <= e.start and e.end <= end]


def kind(exchange: Exchange, ls_port: int) -> str:
    """What a driver request is for, by its route and parameters."""
    if exchange.port != ls_port:
        return f"backend {exchange.path}"
    if exchange.path.rstrip("/").endswith("/import/predictions"):
        return "import predictions"
    if exchange.path.rstrip("/") == "/api/tasks":
        include = exchange.params.get("include", [""])[0]
        if "predictions_model_versions" in include:
            return "read-back page"
        if exchange.params.get("page_size") == ["1"]:
            query = exchange.params.get("query", ["{}"])[0]
            return "count (done)" if "predictions_model_versions" in query else "count (scope)"
        return "pending page"
    if exchange.method == "GET" and exchange.path.startswith("/api/projects/"):
        return "project"
    return f"{exchange.method} {exchange.path}"


def describe(exchange: Exchange) -> str:
    """A task list request's parameters: each one but `query`, then the query's filters and ordering."""
    params = {k: v[0] for k, v in sorted(exchange.params.items()) if k != "query"}
    if "resolve_uri" not in params:
        params["resolve_uri"] = "(absent: Label Studio's default, true)"
    text = " ".join(f"{k}={v}" for k, v in params.items())
    query = json.loads(exchange.params.get("query", ["{}"])[0])
    filters = [
        f"{i['filter'].removeprefix('filter:tasks:')} {i['operator']} {json.dumps(i['value'])}"
        for i in query.get("filters", {}).get("items", [])
    ]
    ordering = f"; ordering {query['ordering']}" if query.get("ordering") else ""
    return f"{text}; query filters [{', '.join(filters)}]{ordering}"


# -- the driver under test ----------------------------------------------------------------------------
class Running:
    """kopf's DaemonStopped, never stopped (for single passes)."""

    def __bool__(self) -> bool:
        return False


class Stop:
    """kopf's DaemonStopped for the daemon's loop: a flag set from another thread."""

    def __init__(self) -> None:
        self.flag = threading.Event()

    def __bool__(self) -> bool:
        return self.flag.is_set()

    async def wait(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - kopf.DaemonStopped.wait as it is
        await asyncio.to_thread(self.flag.wait, timeout)


class Bench:
    def __init__(self, args: argparse.Namespace, ls: Any, backend: Any, recorder: Recorder) -> None:
        import requests

        self.args, self.ls, self.backend, self.recorder = args, ls, backend, recorder
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Token {ls.token}"
        self.project_id = 0
        self.version = ""
        self.max_id = 0

    def target(self) -> Any:
        from prelabel_operator.prelabel_driver import Target

        return Target(self.ls.url, self.ls.token, self.backend.url, None, (self.project_id,))

    # setup
    def create_project(self) -> None:
        import httpx
        from label_studio_sdk.base_client import AsyncLabelStudioBase

        from prelabel_local.demo import SEED_LABEL_CONFIG
        from prelabel_operator.prelabel_driver import Driver
        from prelabel_operator.spec import PrelabelSpec

        answer = self.http.post(f"{self.ls.url}/api/projects", json={"title": "50k bench", "label_config": SEED_LABEL_CONFIG}, timeout=120)
        answer.raise_for_status()
        self.project_id = int(answer.json()["id"])

        async def version() -> str:  # the driver's own reading of it (its /setup call), outside the recorder's windows
            async with httpx.AsyncClient(base_url=self.backend.url) as backend, httpx.AsyncClient(timeout=120) as ls_http:
                client = AsyncLabelStudioBase(base_url=self.ls.url, api_key=self.ls.token, httpx_client=ls_http)
                found, refusal = await Driver("bench", "50k", _no_report)._version(client, backend, self.project_id, PrelabelSpec())
                if refusal or not found:
                    raise RuntimeError(f"the backend serves no model version for the seed config: {refusal!r}")
                return found

        self.version = asyncio.run(version())

    def import_tasks(self) -> dict[str, Any]:
        """--tasks tasks, each with one prediction of the driver's version, through Label Studio's import."""
        started, ids, seconds = time.monotonic(), [], []
        for first in range(0, self.args.tasks, self.args.import_batch):
            tasks = [
                {
                    "data": {"image": f"/data/upload/{self.project_id}/bench-{n:06d}.png"},
                    "predictions": [{"model_version": self.version, "result": [], "score": 0.0}],
                }
                for n in range(first, min(self.args.tasks, first + self.args.import_batch))
            ]
            t0 = time.monotonic()
            answer = self.http.post(
                f"{self.ls.url}/api/projects/{self.project_id}/import", params={"return_task_ids": "true"}, json=tasks, timeout=900
            )
            answer.raise_for_status()
            body = answer.json()
            if body.get("prediction_count") != len(tasks):
                raise RuntimeError(f"import stored {body.get('prediction_count')} predictions for {len(tasks)} tasks")
            ids += body["task_ids"]
            seconds.append(time.monotonic() - t0)
            print(f"  imported {len(ids)}/{self.args.tasks} tasks ({seconds[-1]:.1f}s for {len(tasks)})", flush=True)
        self.max_id = max(ids)
        return {"tasks": len(ids), "seconds": time.monotonic() - started, "per_request": seconds}

    # a, b
    def passes(self, fresh: bool) -> list[dict[str, Any]]:
        """--repeats passes over the complete project: a fresh Driver each (resync) or one Driver (poll)."""
        from prelabel_operator.prelabel_driver import Driver
        from prelabel_operator.spec import PrelabelSpec

        spec, driver, out = PrelabelSpec(poll_seconds=self.args.poll_seconds), None, []
        for repeat in range(self.args.repeats):
            if fresh or driver is None:
                driver = Driver("bench", "50k", _no_report)
            cpu0, t0 = cpu_of_tree(self.ls.process.pid), time.monotonic()
            again = asyncio.run(driver.run_pass(self.target(), spec, Running()))
            t1 = time.monotonic()
            cpu = cpu_of_tree(self.ls.process.pid) - cpu0
            progress = driver.progress
            if (progress.total, progress.predicted, progress.stored_this_run, again) != (self.args.tasks, self.args.tasks, 0, None):
                raise RuntimeError(
                    f"the pass found work: total {progress.total}, predicted {progress.predicted}, stored {progress.stored_this_run}, next {again}"
                )
            out.append(self.summarize(t0, t1, cpu))
            name = "resync" if fresh else "poll"
            print(
                f"  {name} {repeat + 1}/{self.args.repeats}: {out[-1]['seconds']:.2f}s, {out[-1]['ls_requests']} Label Studio requests "
                f"({', '.join(f'{k} {v:.2f}s' for k, v in out[-1]['by_kind'].items())}), Label Studio CPU {cpu:.1f}s",
                flush=True,
            )
            time.sleep(1)
        return out

    def summarize(self, t0: float, t1: float, ls_cpu: float | None = None) -> dict[str, Any]:
        exchanges = self.recorder.between(t0, t1)
        ls = [e for e in exchanges if e.port == self.ls.port]
        by_kind: dict[str, float] = {}
        counts: Counter[str] = Counter()
        for e in exchanges:
            k = kind(e, self.ls.port)
            by_kind[k] = by_kind.get(k, 0.0) + e.end - e.start
            counts[k] += 1
        return {
            "seconds": t1 - t0,
            "ls_requests": len(ls),
            "ls_seconds": sum(e.end - e.start for e in ls),
            "backend_requests": len(exchanges) - len(ls),
            "by_kind": by_kind,
            "counts": dict(counts),
            "ls_cpu": ls_cpu,
            "errors": [f"{e.method} {e.path} {e.status}" for e in exchanges if not 200 <= e.status < 300],
        }

    # c
    def holding(self, first: int, last: int) -> int:
        """How many tasks with first <= id <= last hold the driver's version (its own read-back query)."""
        from prelabel_operator import prelabel

        answer = self.http.get(
            f"{self.ls.url}/api/tasks",
            params={
                "project": self.project_id,
                "query": prelabel.holding_query(self.version, first, last),
                "page_size": last - first + 1,
                "include": "id,predictions_model_versions",
                "fields": "all",
                "resolve_uri": "false",
            },
            timeout=120,
        )
        answer.raise_for_status()
        return sum(1 for t in answer.json()["tasks"] if prelabel.holds(self.version, t.get("predictions_model_versions")))

    def upload(self, round_: int) -> list[int]:
        import numpy as np

        from prelabel_backend import synthetic

        rng = np.random.default_rng(900 + round_)
        pngs = [synthetic.encode_png(synthetic.make_scene(rng).image) for _ in range(self.args.new)]
        files = {f"file{i}": (f"new-{round_}-{i}.png", data, "image/png") for i, data in enumerate(pngs)}
        answer = self.http.post(
            f"{self.ls.url}/api/projects/{self.project_id}/import", params={"return_task_ids": "true"}, files=files, timeout=300
        )
        answer.raise_for_status()
        ids = sorted(int(i) for i in answer.json()["task_ids"])
        if len(ids) != self.args.new:
            raise RuntimeError(f"{len(ids)} tasks for {self.args.new} uploaded images")
        return ids

    def new_tasks(self) -> list[dict[str, Any]]:
        from prelabel_operator import prelabel_driver
        from prelabel_operator.keys import Keys
        from prelabel_operator.prelabel_driver import Driver, Resource

        pass_ends: list[tuple[float, float]] = []  # (start, end) of each pass of the daemon
        ended = threading.Condition()

        class Timed(Driver):
            async def run_pass(self, target: Any, spec: Any, stopped: Any) -> float | None:
                started = time.monotonic()
                try:
                    return await super().run_pass(target, spec, stopped)
                finally:
                    with ended:
                        pass_ends.append((started, time.monotonic()))
                        ended.notify_all()

        messages: list[str] = []

        async def patch_status(body: dict[str, Any]) -> None:  # what the daemon writes to status: kept for its messages
            message = body.get("prelabel", {}).get("message")
            if message and message not in messages:
                messages.append(message)

        spec = {
            "labelStudio": {"url": self.ls.url, "apiKeySecretRef": {"name": "ls-key"}, "projects": [{"id": self.project_id}]},
            "prelabel": {"pollSeconds": self.args.poll_seconds},
        }
        status = {"url": self.backend.url, "projects": [{"id": self.project_id, "state": "Connected"}]}
        resource = Resource(
            "bench", "50k", spec, status, {"generation": 1}, lambda _spec: Keys(self.ls.token, None, ""), patch_status, lambda _e: None
        )
        stop = Stop()
        failure: list[BaseException] = []

        def daemon() -> None:
            try:
                asyncio.run(prelabel_driver.run(resource, stop, make_driver=Timed))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failure.append(exc)

        def wait_pass_end(after: float, timeout: float) -> float:
            deadline = time.monotonic() + timeout
            with ended:
                while not any(end > after for _, end in pass_ends):
                    if failure:
                        raise RuntimeError(f"the daemon ended: {failure[0]!r}")
                    if not ended.wait(max(0.0, min(1.0, deadline - time.monotonic()))) and time.monotonic() > deadline:
                        raise RuntimeError("no pass of the daemon ended in time")
                return min(end for _, end in pass_ends if end > after)

        rounds: list[dict[str, Any]] = []
        thread = threading.Thread(target=daemon, name="prelabel-daemon", daemon=True)
        daemon_started = time.monotonic()
        thread.start()
        try:
            after = daemon_started
            for round_ in range(self.args.new_rounds):
                pass_end = wait_pass_end(after, 600)
                t_import, cpu0 = time.monotonic(), cpu_of_tree(self.ls.process.pid)
                ids = self.upload(round_)
                t_imported = time.monotonic()
                checks, seen = [], 0
                while seen < len(ids):
                    if time.monotonic() - t_imported > 600:
                        raise RuntimeError(f"after 600 s only {seen} of {len(ids)} new tasks hold a prediction")
                    time.sleep(1)
                    c0 = time.monotonic()
                    seen = self.holding(ids[0], ids[-1])
                    checks.append(time.monotonic() - c0)
                t_seen = time.monotonic()
                # Label Studio's legacy prediction import stores, then recounts every task of the project before it
                # answers: the driver's request may still be running when the predictions are seen.
                while True:
                    stored = [e for e in self.recorder.between(t_import, time.monotonic()) if kind(e, self.ls.port) == "import predictions"]
                    if stored or time.monotonic() - t_seen > 600:
                        break
                    time.sleep(0.2)
                t_stored = max(e.end for e in stored) if stored else float("nan")
                window = self.summarize(t_imported, t_stored if stored else t_seen)
                rounds.append(
                    {
                        "import_s": t_imported - t_import,
                        "after_pass_end_s": t_import - pass_end,
                        "stored_s": t_stored - t_imported,
                        "seen_s": t_seen - t_imported,
                        "check_s": statistics.median(checks),
                        "import_predictions_s": [round(e.end - e.start, 2) for e in stored],
                        "import_predictions_status": [e.status for e in stored],
                        "ls_cpu": cpu_of_tree(self.ls.process.pid) - cpu0,
                        "ls_requests": window["ls_requests"],
                        "counts": window["counts"],
                        "predicts": window["counts"].get("backend /predict", 0),
                    }
                )
                r = rounds[-1]
                print(
                    f"  round {round_ + 1}/{self.args.new_rounds}: {len(ids)} tasks imported {r['after_pass_end_s']:.1f}s after a pass ended "
                    f"(import {r['import_s']:.1f}s); seen in Label Studio {r['seen_s']:.1f}s after the import (check {r['check_s']:.2f}s each), "
                    f"the driver's import request returned {r['stored_s']:.1f}s after (it took {r['import_predictions_s']}s, "
                    f"HTTP {r['import_predictions_status']}); Label Studio CPU {r['ls_cpu']:.1f}s; driver requests {r['counts']}",
                    flush=True,
                )
                after = t_stored if stored else t_seen
        finally:
            stop.flag.set()
            thread.join(timeout=300)
        daemon_passes = [
            self.summarize(s, e)
            for s, e in pass_ends
            if e - s > 0 and not any(kind(x, self.ls.port) == "import predictions" for x in self.recorder.between(s, e))
        ]
        for r in rounds:
            r["daemon_idle_pass_s"] = [p["seconds"] for p in daemon_passes]
            r["status_messages"] = messages
        return rounds

    # d, the cost of the parameters
    def variants(self) -> dict[str, dict[str, list[float]]]:
        """The driver's last count (done) and pending page requests sent again by the bench (not recorded),
        as the driver sent them and with one parameter changed, --variant-repeats times each, in turn."""
        with self.recorder.lock:
            last = {kind(e, self.ls.port): e for e in self.recorder.exchanges if e.port == self.ls.port}
        out: dict[str, dict[str, list[float]]] = {}
        for name in ("count (done)", "pending page"):
            if name not in last:
                continue
            sent = {k: v[0] for k, v in last[name].params.items()}
            cases = {
                "as the driver sends it": sent,
                "resolve_uri=false": {**sent, "resolve_uri": "false"},
                "resolve_uri=true": {**sent, "resolve_uri": "true"},
                "without fields=all": {k: v for k, v in sent.items() if k != "fields"},
            }
            times: dict[str, list[float]] = {case: [] for case in cases}
            for _ in range(self.args.variant_repeats):
                for case, params in cases.items():
                    t0 = time.monotonic()
                    self.http.get(f"{self.ls.url}{last[name].path}", params=params, timeout=300).raise_for_status()
                    times[case].append(time.monotonic() - t0)
            out[name] = times
        return out

    # d
    def list_requests(self) -> dict[str, dict[str, Any]]:
        """Every distinct shape of task list request the driver made, by kind."""
        shapes: dict[str, dict[str, Any]] = {}
        with self.recorder.lock:
            exchanges = list(self.recorder.exchanges)
        for e in exchanges:
            if e.port != self.ls.port or e.path.rstrip("/") != "/api/tasks":
                continue
            k = kind(e, self.ls.port)
            entry = shapes.setdefault(k, {"n": 0, "shapes": Counter(), "resolve_uri": Counter()})
            entry["n"] += 1
            entry["shapes"][describe(e)] += 1
            entry["resolve_uri"][e.params.get("resolve_uri", ["(absent)"])[0]] += 1
        return shapes


async def _no_report(_progress: Any) -> None:
    pass


# -- the run ------------------------------------------------------------------------------------------
def spread(values: list[float], unit: str = "s", digits: int = 2) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f}{unit} (min {min(values):.{digits}f}, max {max(values):.{digits}f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=50000, help="tasks in the project, all pre-labeled")
    parser.add_argument("--import-batch", type=int, default=5000, help="tasks per import request (setup)")
    parser.add_argument("--repeats", type=int, default=5, help="resync passes, and poll passes")
    parser.add_argument("--new", type=int, default=10, help="new tasks (real images) per round of c")
    parser.add_argument("--new-rounds", type=int, default=3, help="rounds of c")
    parser.add_argument("--poll-seconds", type=int, default=15, help="spec.prelabel.pollSeconds (the CRD's default: 15)")
    parser.add_argument("--variant-repeats", type=int, default=3, help="each parameter variant of d this many times")
    parser.add_argument(
        "--label-studio-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for Label Studio, e.g. a feature flag (repeatable)",
    )
    parser.add_argument("--lock", default="/work/bench.lock", help="held (flock) over the measurements; '' for none")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()

    from prelabel_local.backend import BackendProcess
    from prelabel_local.label_studio_server import VERSION, LabelStudio

    work = Path(tempfile.mkdtemp(prefix="prelabel-50k-"))
    recorder = Recorder()
    recorder.install()
    results: dict[str, Any] = {"cores": os.cpu_count(), "label_studio": VERSION, "args": {k: str(v) for k, v in vars(args).items()}}
    ls = backend = None
    run_started = time.monotonic()
    try:
        with open(args.lock or os.devnull, "a") as lock:
            if args.lock:
                print(f"waiting for {args.lock} ...", flush=True)
                fcntl.flock(lock, fcntl.LOCK_EX)
            results["load_start"] = os.getloadavg()
            print(f"{os.cpu_count()} cores, load {results['load_start'][0]:.2f}; Label Studio {VERSION} (SQLite)", flush=True)
            t0 = time.monotonic()
            ls = LabelStudio(workdir=work / "label-studio", extra_env=dict(kv.split("=", 1) for kv in args.label_studio_env)).start()
            backend = BackendProcess(
                {"LOG_LEVEL": "WARNING", "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token}, work / "backend" / "backend.log"
            )
            backend.wait_ready()
            print(f"Label Studio at {ls.url} and the backend at {backend.url} up in {time.monotonic() - t0:.0f}s", flush=True)
            bench = Bench(args, ls, backend, recorder)
            bench.create_project()
            print(f"project {bench.project_id}, the driver's model version {bench.version}", flush=True)
            results["import"] = bench.import_tasks()
            print(f"{results['import']['tasks']} tasks with predictions imported in {results['import']['seconds']:.0f}s", flush=True)
            print("a. resync: a fresh Driver's pass over the complete project", flush=True)
            results["resync"] = bench.passes(fresh=True)
            print("b. poll: the same Driver's next passes", flush=True)
            results["poll"] = bench.passes(fresh=False)
            print(f"c. {args.new} new tasks, the daemon's loop running (pollSeconds {args.poll_seconds})", flush=True)
            results["new"] = bench.new_tasks()
            results["list_requests"] = {
                k: {"n": v["n"], "shapes": dict(v["shapes"]), "resolve_uri": dict(v["resolve_uri"])}
                for k, v in bench.list_requests().items()
            }
            print("d. the driver's count and page requests with their parameters varied", flush=True)
            results["variants"] = bench.variants()
            results["load_end"] = os.getloadavg()
    finally:
        if backend is not None:
            backend.stop()
        if ls is not None:
            ls.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["total_s"] = time.monotonic() - run_started
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    print()
    print(
        f"{args.tasks} tasks, all holding the driver's prediction; Label Studio {results['label_studio']} on SQLite (`label-studio start`); "
        f"{results['cores']} cores, load {results['load_start'][0]:.2f} at the start, {results['load_end'][0]:.2f} at the end; "
        f"run {results['total_s']:.0f}s"
    )
    if args.label_studio_env:
        print(f"Label Studio env: {' '.join(args.label_studio_env)}")
    imp = results["import"]
    print(
        f"setup: {imp['tasks']} tasks with predictions imported in {imp['seconds']:.0f}s "
        f"({len(imp['per_request'])} requests of {args.import_batch}: {spread(imp['per_request'], digits=1)})"
    )
    print()
    print(f"{'pass (nothing to predict)':<28} {'LS requests':>11} {'wall s':>22}   {'LS CPU s':>8}   per request kind, median s")
    for name in ("resync", "poll"):
        runs = results[name]
        kinds = sorted({k for r in runs for k in r["by_kind"]})
        requests_ = sorted({r["ls_requests"] for r in runs})
        per_kind = ", ".join(
            f"{k} x{runs[0]['counts'].get(k, 0)} {statistics.median(r['by_kind'].get(k, 0.0) for r in runs):.2f}" for k in kinds
        )
        walls = [r["seconds"] for r in runs]
        print(
            f"{name:<28} {'/'.join(map(str, requests_)):>11} {statistics.median(walls):>7.2f} ({min(walls):.2f}-{max(walls):.2f})"
            f"   {statistics.median(r['ls_cpu'] for r in runs):>8.2f}   {per_kind}"
        )
        errors = [e for r in runs for e in r["errors"]]
        if errors:
            print(f"  errors: {errors}")
    print()
    new = results["new"]
    print(
        f"new tasks: {args.new} images imported right after a pass of the daemon ended, pollSeconds {args.poll_seconds}, {len(new)} rounds"
    )
    print(f"  import request            {spread([r['import_s'] for r in new], digits=1)}")
    print(
        f"  seen in Label Studio      {spread([r['seen_s'] for r in new], digits=1)} after the import returned "
        f"(checked each second; a check {spread([r['check_s'] for r in new])})"
    )
    print(f"  the driver's import back  {spread([r['stored_s'] for r in new], digits=1)} after the import returned")
    print(
        f"  its import request took   {[r['import_predictions_s'] for r in new]} s, HTTP {[r['import_predictions_status'] for r in new]}; "
        f"Label Studio CPU from the import to then {[round(r['ls_cpu'], 1) for r in new]} s"
    )
    print(
        f"  driver's LS requests from the import to then: {[r['ls_requests'] for r in new]}, /predict calls {[r['predicts'] for r in new]}"
    )
    if new and new[0]["status_messages"]:
        print(f"  the daemon's status messages: {new[0]['status_messages']}")
    idle = new[0]["daemon_idle_pass_s"] if new else []
    print(f"  the daemon's passes that found nothing: {spread(idle)}")
    print()
    print("task list requests the driver made (every one recorded in this run), by kind:")
    for k, entry in sorted(results["list_requests"].items()):
        print(f"  {k} ({entry['n']} requests; resolve_uri: {entry['resolve_uri']}):")
        for shape, n in entry["shapes"].items():
            print(f"    {n}x {shape}")
    asks = sum(n for entry in results["list_requests"].values() for v, n in entry["resolve_uri"].items() if v.lower() not in ("false", "0"))
    print(f"requests that leave Label Studio to resolve media URLs (resolve_uri absent or true): {asks}")
    print()
    print(f"the same requests sent again with one parameter changed ({args.variant_repeats} each, in turn), median s:")
    for name, cases in results.get("variants", {}).items():
        print(f"  {name}: " + "; ".join(f"{case} {spread(times)}" for case, times in cases.items()))


if __name__ == "__main__":
    main()
