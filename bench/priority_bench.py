"""Annotators first (issue 30): how long a person opening a task waits for its prediction while a
pre-labeling run loads the same backend, with the priority gate on and off, side by side in one run.

    make bench-priority       (or: .venv/bin/python bench/priority_bench.py --repeats 3 --samples 20)

- Backends: two real processes (`python -m prelabel_backend`, gunicorn 1 worker x 8 threads), one
  with PRIORITY=on (the default), one with PRIORITY=off, started one after the other and both kept
  up; the yolov8n architecture at 640 px with random weights on OpenVINO at batch 4 (what RUNTIME=auto
  picks on this machine when it is quiet: pinned, so that a busy moment at load cannot pick another),
  media cache off, predict_bench's 64 distinct 640x480 JPEG photos fetched as Label Studio uploads.
- Batch load, as the driver's: 2 requests in flight, 16 tasks each, with the driver's own header
  (prelabel_operator.backend_client.BATCH_HEADERS), back to back until the cell ends.
- Cells, per repeat and backend: idle (the floor): --idle-samples 1-task requests without the
  header, one at a time, each after a pause of 0.1-0.3 s (random, so they do not fall in step with
  the batches); loaded: the batch load, and after 1 s --samples such requests (Label Studio when a
  person opens a task): their latency and the batch images/s over the cell; alone: the batch load
  for --alone-seconds with nobody labeling, once the gate's hold has passed (PRIORITY_HOLD=3 here,
  not 60, so the cell does not wait a minute): what the hold gives back.
- The two backends' cells alternate (the order rotates per repeat); p50 and p99 are over all
  repeats' samples, img/s the median of the repeats. The machine is shared: compare one run's modes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from predict_bench import CONFIG, TOKEN, photos  # noqa: E402 - this directory is on sys.path when a bench runs as a script

from prelabel_backend import offline  # noqa: E402
from prelabel_local.backend import BackendProcess  # noqa: E402
from prelabel_operator.backend_client import BATCH_HEADERS  # noqa: E402
from tests.conftest import serve_files  # noqa: E402

BATCH_TASKS = 16
BATCH_CONCURRENCY = 2
MODES = ("on", "off")
HOLD = 3.0  # PRIORITY_HOLD of both backends, seconds
T = TypeVar("T")


class Backend:
    def __init__(self, process: BackendProcess, photos: int) -> None:
        self.process, self.photos = process, photos
        self.session = threading.local()

    def predict(self, tasks: list[int], headers: dict[str, str] | None = None) -> float:
        """POSTs /predict with tasks naming these photos; the seconds it took (raises on any error)."""
        if not hasattr(self.session, "http"):
            self.session.http = requests.Session()
        body = {
            "tasks": [{"id": i, "data": {"image": f"/data/upload/1/photo-{i % self.photos}.jpg"}} for i in tasks],
            "label_config": CONFIG,
            "project": "1.1",
        }
        started = time.perf_counter()
        response = self.session.http.post(f"{self.process.url}/predict", json=body, headers=headers, timeout=600)
        response.raise_for_status()
        results = response.json()["results"]
        assert len(results) == len(tasks) and not any(r.get("errors") for r in results), results[:1]
        return time.perf_counter() - started

    def singles(self, count: int, rng: random.Random) -> list[float]:
        """Seconds of each of `count` 1-task requests without the header, one at a time, paused between."""
        seconds = []
        for _ in range(count):
            time.sleep(rng.uniform(0.1, 0.3))
            seconds.append(self.predict([rng.randrange(self.photos)]))
        return seconds

    def loaded(self, during: Callable[[], T]) -> tuple[T, float]:
        """(what during() returns, batch images/s over the cell) with the driver's batch load running
        while during() runs."""
        stop = threading.Event()
        images = 0
        lock = threading.Lock()

        def batches(k: int) -> None:
            nonlocal images
            offset = k * BATCH_TASKS
            while not stop.is_set():
                self.predict(list(range(offset, offset + BATCH_TASKS)), BATCH_HEADERS)
                with lock:
                    images += BATCH_TASKS
                offset += BATCH_CONCURRENCY * BATCH_TASKS

        started = time.perf_counter()
        with ThreadPoolExecutor(BATCH_CONCURRENCY) as pool:
            load = [pool.submit(batches, k) for k in range(BATCH_CONCURRENCY)]
            time.sleep(1.0)  # both batches running before the first person arrives
            try:
                result = during()
            finally:
                stop.set()
            for future in load:
                future.result()
        return result, images / (time.perf_counter() - started)

    def metrics(self) -> dict[str, float]:
        """The backend's /metrics samples this bench reads: /predict requests by class, batch calls' waits."""
        text = requests.get(f"{self.process.url}/metrics", timeout=10).text
        names = (
            "prelabel_backend_predict_seconds_count",
            "prelabel_backend_batch_wait_seconds_sum",
            "prelabel_backend_batch_wait_seconds_count",
        )
        return {f"{m[1]}{m[2] or ''}": float(m[3]) for m in re.finditer(rf"^({'|'.join(names)})({{[^}}]*}})? (\S+)$", text, re.M)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every cell of both backends")
    parser.add_argument("--samples", type=int, default=20, help="1-task requests per loaded cell")
    parser.add_argument("--idle-samples", type=int, default=10, help="1-task requests per idle cell")
    parser.add_argument("--alone-seconds", type=float, default=8.0, help="length of an alone cell")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prelabel-priority-bench-"))
    offline.configure(str(work / "ultralytics"))
    from ultralytics import YOLO

    jpegs = photos(64, 640, 480)
    weights = work / "models" / "yolov8n-random.pt"
    weights.parent.mkdir()
    YOLO("yolov8n.yaml").save(str(weights))
    rng = random.Random(30)
    stack = contextlib.ExitStack()
    processes: list[BackendProcess] = []
    try:
        base = stack.enter_context(
            serve_files({f"/data/upload/1/photo-{i}.jpg": j for i, j in enumerate(jpegs)}, token=TOKEN, content_type="image/jpeg")
        )
        # One MODEL_DIR: the second backend opens the OpenVINO export the first one made.
        env = {
            "LABEL_STUDIO_URL": base,
            "LABEL_STUDIO_API_KEY": TOKEN,
            "MEDIA_CACHE_ITEMS": "0",
            "LOG_LEVEL": "WARNING",
            "RUNTIME": "openvino",
            "BATCH_SIZE": "4",
            "PRIORITY_HOLD": str(HOLD),
            "MODEL_ROOT": str(weights.parent),
            "MODEL_DIR": str(work / "model-dir"),
            **dict.fromkeys(("MODEL_DETECT", "MODEL_OBB", "MODEL_SEGMENT", "MODEL_CLASSIFY", "MODEL_POSE"), weights.name),
        }
        backends: dict[str, Backend] = {}
        for mode in MODES:
            process = BackendProcess({**env, "PRIORITY": mode}, work / mode / "backend.log")
            processes.append(process)
            backends[mode] = Backend(process.wait_ready(timeout=600), len(jpegs))
            backends[mode].predict(list(range(2 * BATCH_TASKS)), BATCH_HEADERS)  # warm the pools
        print(
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; yolov8n architecture at 640 on OpenVINO, batch 4, on 640x480 "
            f"JPEG photos; batch load: {BATCH_CONCURRENCY} x {BATCH_TASKS}-task requests with {BATCH_HEADERS}; "
            f"repeats {args.repeats}, {args.samples} 1-task requests per loaded cell",
            flush=True,
        )
        idle: dict[str, list[float]] = {m: [] for m in MODES}
        loaded: dict[str, list[float]] = {m: [] for m in MODES}
        rates: dict[str, list[float]] = {m: [] for m in MODES}
        alone: dict[str, list[float]] = {m: [] for m in MODES}
        for repeat in range(args.repeats):
            for mode in MODES[repeat % 2 :] + MODES[: repeat % 2]:
                backend = backends[mode]
                idle[mode] += backend.singles(args.idle_samples, rng)
                seconds, rate = backend.loaded(functools.partial(backend.singles, args.samples, rng))
                loaded[mode] += seconds
                rates[mode].append(rate)
                time.sleep(HOLD + 0.5)  # nobody labeling any more
                alone[mode].append(backend.loaded(functools.partial(time.sleep, args.alone_seconds))[1])
                print(
                    f"repeat {repeat + 1}/{args.repeats}, PRIORITY={mode}: 1-task p50 {ms(statistics.median(seconds))}, "
                    f"max {ms(max(seconds))}; batch {rate:.1f} img/s, alone {alone[mode][-1]:.1f} img/s",
                    flush=True,
                )
        floor = idle["on"] + idle["off"]
        print(
            f"\nidle backend (the floor), 1-task requests: p50 {ms(statistics.median(floor))}, p99 {ms(p99(floor))} "
            f"({len(floor)} requests; on {ms(statistics.median(idle['on']))}, off {ms(statistics.median(idle['off']))}); load {os.getloadavg()[0]:.1f}"
        )
        for mode in MODES:
            found = backends[mode].metrics()
            served = {
                cls: int(found.get(f'prelabel_backend_predict_seconds_count{{priority="{cls}"}}', 0)) for cls in ("interactive", "batch")
            }
            line = f"PRIORITY={mode}: /predict served as interactive {served['interactive']}, as batch {served['batch']} (its /metrics)"
            if found.get("prelabel_backend_batch_wait_seconds_count"):
                waited = found["prelabel_backend_batch_wait_seconds_sum"] / found["prelabel_backend_batch_wait_seconds_count"]
                line += f"; a batch model call waited {ms(waited)} for its turn on average"
            print(line)
        print(
            "\n| PRIORITY | 1-task p50 under load | 1-task p99 under load | p50 / idle p50 | batch img/s, people labeling | batch img/s, alone |"
        )
        print("|---|---|---|---|---|---|")
        for mode in MODES:
            p50 = statistics.median(loaded[mode])
            print(
                f"| {mode} | {ms(p50)} | {ms(p99(loaded[mode]))} | {p50 / statistics.median(floor):.1f}x | "
                f"{statistics.median(rates[mode]):.1f} ({' '.join(f'{r:.1f}' for r in rates[mode])}) | "
                f"{statistics.median(alone[mode]):.1f} ({' '.join(f'{r:.1f}' for r in alone[mode])}) |"
            )
        on, off = (
            {
                "p50": statistics.median(loaded[m]),
                "p99": p99(loaded[m]),
                "batch": statistics.median(rates[m]),
                "alone": statistics.median(alone[m]),
            }
            for m in MODES
        )
        print("\non / off: " + ", ".join(f"{key} {on[key] / off[key]:.2f}x" for key in on))
    finally:
        for process in processes:
            process.stop()
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
