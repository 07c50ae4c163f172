"""/predict throughput and latency of the real backend process, beside raw ultralytics time for
the same preloaded images, measured side by side in one run.

    make bench            (or: .venv/bin/python bench/predict_bench.py --repeats 5)

The backend runs as `python -m prelabel_backend` (gunicorn, 1 worker, 8 threads) and fetches each
task's PNG over HTTP from a loopback server, as it fetches uploads from Label Studio (media cache
off, so every request pays its downloads and decodes). "raw" is `model.predict` on the already
decoded images in this process, with torch on all cores: the floor the backend can approach.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prelabel_backend import offline, synthetic  # noqa: E402
from prelabel_backend.settings import PACKAGED_WEIGHTS  # noqa: E402
from prelabel_local.backend import BackendProcess  # noqa: E402
from tests.conftest import SEED_CONFIG, serve_files  # noqa: E402

SIZES = (1, 8, 16, 32)
CONCURRENCY = (1, 4)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5, help="timed requests per (size, concurrency) cell")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--model", choices=["shapes", "yolov8n"], default="yolov8n",
                        help="shapes: the packaged 0.35 M-parameter model at 192 px; yolov8n: the yolov8n architecture "
                             "at 640 px with random weights (nothing can be downloaded here; speed is what matters)")
    args = parser.parse_args()

    rng = np.random.default_rng(7)
    scenes = [synthetic.make_scene(rng, width=args.width, height=args.height, size=(60.0, 160.0)) for _ in range(max(SIZES) * max(CONCURRENCY))]
    pngs = {f"/img/{i}.png": synthetic.encode_png(s.image) for i, s in enumerate(scenes)}
    stack = contextlib.ExitStack()
    base = stack.enter_context(serve_files(pngs))
    work = Path(tempfile.mkdtemp(prefix="prelabel-bench-"))
    offline.configure()
    import torch
    from ultralytics import YOLO

    weights = PACKAGED_WEIGHTS / "shapes-detect.pt"
    if args.model == "yolov8n":
        weights = work / "yolov8n-random.pt"
        YOLO("yolov8n.yaml").save(str(weights))
    env = {"MEDIA_ALLOWED_HOSTS": "127.0.0.1", "MEDIA_CACHE_ITEMS": "0", "LOG_LEVEL": "WARNING",
           "MODEL_ROOT": str(weights.parent), "MODEL_DETECT": weights.name}
    backend = BackendProcess(env, work / "backend.log")
    try:
        backend.wait_ready()
        model = YOLO(str(weights))
        imgsz = model.overrides.get("imgsz") or 640
        model.predict([scenes[0].image], imgsz=imgsz, verbose=False)  # warm-up (resets torch threads)
        torch.set_num_threads(os.cpu_count() or 1)

        def raw(n: int) -> float:
            started = time.perf_counter()
            model.predict([s.image for s in scenes[:n]], imgsz=imgsz, conf=0.25, verbose=False)
            return time.perf_counter() - started

        def request(n: int, offset: int) -> float:
            tasks = [{"id": i, "data": {"image": f"{base}/img/{(offset + i) % len(scenes)}.png"}} for i in range(n)]
            started = time.perf_counter()
            response = requests.post(f"{backend.url}/predict", json={"tasks": tasks, "label_config": SEED_CONFIG, "project": "1.1"}, timeout=600)
            response.raise_for_status()
            assert len(response.json()["results"]) == n
            return time.perf_counter() - started

        request(4, 0)  # warm the backend's pools
        print(f"images {args.width}x{args.height} PNG, model {args.model} at imgsz {imgsz}, {os.cpu_count()} cores, repeats {args.repeats}")
        print(f"{'tasks':>5} {'conc':>4} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'raw p50 ms':>10} {'p50/raw':>8} {'raw img/s':>9} {'img/s/raw':>9}")
        for n in SIZES:
            for c in CONCURRENCY:
                raw_times = [raw(n) for _ in range(args.repeats)]
                latencies: list[float] = []
                started = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    for batch in range(args.repeats):
                        latencies += list(pool.map(lambda k, n=n: request(n, k * n), range(batch * c, batch * c + c)))
                wall = time.perf_counter() - started
                raw_p50 = statistics.median(raw_times)
                print(f"{n:>5} {c:>4} {n * len(latencies) / wall:>7.1f} {pct(latencies, 50) * 1000:>8.1f} {pct(latencies, 99) * 1000:>8.1f} "
                      f"{raw_p50 * 1000:>10.1f} {statistics.median(latencies) / raw_p50:>8.2f} {n / raw_p50:>9.1f} "
                      f"{n * len(latencies) / wall / (n / raw_p50):>9.2f}", flush=True)
    finally:
        backend.stop()
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
