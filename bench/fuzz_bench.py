"""Hostile input to the real backend process, at full size (issue 15): 10,000 schemathesis requests
checked against the backend's openapi.yaml, then the hostile inputs of
tests/integration/test_backend_hostile.py at their full size, with the worker's RSS sampled throughout.

    make bench-fuzz        # = .venv/bin/python bench/fuzz_bench.py [--requests 10000]

Prints requests sent and answered by status (the backend's own /metrics), 5xx, time, the worker's
RSS (before, after each stage, peak) and whether the same worker PID served everything.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from prelabel_backend import synthetic
from prelabel_local.backend import BackendProcess
from tests.conftest import SEED_CONFIG
from tests.integration import hostile


class Sampler:
    """The worker's RSS every 100 ms, in MiB."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples, self._stop = pid, [hostile.rss_mib(pid)], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples.append(hostile.rss_mib(self.pid))
            except psutil.Error:  # the worker is gone
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def jpeg_uri(image: object) -> str:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode()


def predict(url: str, refs: list[str]) -> list[dict]:
    tasks = [{"id": i, "data": {"image": ref}} for i, ref in enumerate(refs)]
    response = requests.post(f"{url}/predict", json={"tasks": tasks, "label_config": SEED_CONFIG}, timeout=1800)
    assert response.status_code == 200, response.text[:300]
    return response.json()["results"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10_000, help="generated requests, at least")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fuzz-bench-"))
    env = {"MEDIA_ALLOWED_HOSTS": "127.0.0.1", "REQUEST_READ_TIMEOUT": "5"}
    backend = BackendProcess(env, work / "backend.log").wait_ready()
    lines = []

    def report(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        (worker,) = hostile.worker_pids(backend.proc.pid)
        sampler = Sampler(worker)
        report(f"backend: gunicorn 1 worker x 8 threads (defaults), worker {worker}; RSS at /health UP {hostile.rss_mib(worker):.0f} MiB")

        started = time.monotonic()
        answered, failures = hostile.fuzz(backend.url, args.requests, work / "schemathesis")
        fives = sum(n for status, n in answered.items() if status.startswith("5"))
        report(f"schemathesis: {sum(answered.values())} requests in {time.monotonic() - started:.0f} s; failed runs {len(failures)}; "
               f"answers by status {dict(sorted(answered.items()))}; 5xx: {fives}")
        report(f"RSS after the fuzz: {hostile.rss_mib(worker):.0f} MiB")
        for failure in failures[:3]:
            print(failure)

        rng = __import__("numpy").random.default_rng(15)
        photos = [jpeg_uri(synthetic.make_scene(rng, width=960, height=720).image) for _ in range(32)]
        started = time.monotonic()
        predict(backend.url, photos * 3)  # 96 real images inline (28 MiB, under MAX_REQUEST_BYTES)
        report(f"96 real 960x720 JPEG images in one request: {time.monotonic() - started:.0f} s; RSS after {hostile.rss_mib(worker):.0f} MiB")

        bombs = [hostile.png_bomb(50000, 50000), hostile.png_bomb(12000, 12000), hostile.png_bomb(9000, 9000)]
        started = time.monotonic()
        results = predict(backend.url, ["data:image/png;base64," + base64.b64encode(b).decode() for b in bombs])
        report(f"bombs 50000^2, 12000^2 (refused), 9000^2 (81 MP, under MEDIA_MAX_PIXELS: decoded and predicted): "
               f"{[bool(r.get('errors')) for r in results]} refused, {time.monotonic() - started:.1f} s; RSS after {hostile.rss_mib(worker):.0f} MiB")

        with hostile.hostile_media_server({}) as media:
            results = predict(backend.url, [f"{media}/huge", f"{media}/html", f"{media}/loop"] * 4)
        report(f"200 MB stream, HTML, redirect loop x4: all refused with a reason: {all(r.get('errors') for r in results)}; "
               f"RSS after {hostile.rss_mib(worker):.0f} MiB")

        started = time.monotonic()
        results = predict(backend.url, ["data:image/png;base64,AAAA"] * 10_000)
        report(f"10,000-task request: {len(results)} results in {time.monotonic() - started:.1f} s; RSS after {hostile.rss_mib(worker):.0f} MiB")

        body = b'{"tasks": [], "pad": "' + b"x" * (200 << 20) + b'"}'
        status = requests.post(f"{backend.url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=300).status_code
        report(f"200 MiB request body: HTTP {status}; RSS after {hostile.rss_mib(worker):.0f} MiB")

        with hostile.slow_clients(backend.port, heads=200, bodies=50) as socks:
            latencies = []
            for _ in range(8):
                t = time.monotonic()
                assert requests.get(f"{backend.url}/health", timeout=10).status_code == 200
                latencies.append(time.monotonic() - t)
                hostile.trickle(socks)
                time.sleep(1)
            closed = sum(hostile.closed_by_server(s) for s in socks)
        report(f"slow-loris, 200 slow heads + 50 slow bodies: /health median {statistics.median(latencies) * 1000:.0f} ms, "
               f"max {max(latencies) * 1000:.0f} ms over 8 s; {closed}/250 let go after REQUEST_READ_TIMEOUT")

        sampler.stop()
        same = hostile.worker_pids(backend.proc.pid) == [worker]
        health = requests.get(f"{backend.url}/health", timeout=10).status_code
        report(f"worker RSS: before {sampler.samples[0]:.0f} MiB, peak {max(sampler.samples):.0f} MiB, after {hostile.rss_mib(worker):.0f} MiB; "
               f"same worker PID throughout: {same}; /health {health}")
    finally:
        backend.stop()
    print("\n".join(lines))
    print(f"the backend's log and schemathesis' reports: {work}")


if __name__ == "__main__":
    main()
