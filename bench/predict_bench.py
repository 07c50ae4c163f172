"""/predict throughput of the real backend process beside raw torch on the same decoded images,
plus its RSS under load, its cold start and the size of what its image installs: one run.

    make bench            (or: .venv/bin/python bench/predict_bench.py --repeats 5)

- Images: 64 JPEG photos at 640x480 (crops of the two photos ultralytics ships, shifted, scaled,
  flipped and re-lit so that no two are alike), served by a loopback server under Label Studio's
  upload path (/data/upload/1/...) that refuses requests without the API key's `Token` header: the
  backend fetches them as it fetches Label Studio uploads (LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY),
  media cache off, so every request pays its downloads and decodes.
- Model: the yolov8n architecture at 640 px, random weights (nothing can be downloaded here; speed
  does not depend on the weights' values), mounted as yolov8n-random.pt and named by every MODEL_*
  variable: the backend holds this one model (the packaged ones are not loaded).
- Backend: `python -m prelabel_backend` (gunicorn, 1 worker, 8 threads), with RUNTIME=auto (the
  runtime and batch measured at load) and, with --compare-torch, a second one with RUNTIME=torch
  BATCH_SIZE=16 (the backend before issue 13's runtimes; its pipelining stays).
- raw torch: in this process, `YOLO(...).predict(image)` one image at a time on the already decoded
  images, torch at 2 threads, OMP_WAIT_POLICY=PASSIVE as in the backend: a plain ultralytics
  backend with nothing around the model.
- Cells: 16-task requests, concurrency 1 and 4; per repeat, raw and every backend cell run one after
  the other (rotating), and the medians are compared: the machine is shared and noisy. Then 16
  1-task requests one after the other (Label Studio opening a task): their p50 and p90 latency.
- RSS: the backend's process tree (gunicorn master and worker), sampled every 50 ms under load.
- Cold start: process start to /health 200 with the default models loaded and warmed: the packaged
  models; yolov8n at its first start (served on torch at once, exported and measured in the
  background) and at a restart (the choice kept in MODEL_DIR), each with the CPU seconds the process
  tree spent until then (what a quiet machine's wall time would be, near enough, as the start is
  one thread's work), and the time until the background measurement is done. As in the image
  (pip compiles every module it installs), the venv's modules are byte-compiled first: this
  environment sets PYTHONDONTWRITEBYTECODE and uv compiles nothing, and compiling torch's modules
  at every start took 3 s of the 19.8 s measured before.
- Image size: the installed size of every distribution in backend_image/requirements.lock, as this
  venv holds them (the image's base adds about 125 MB), split torch+nvidia / the rest.
"""

from __future__ import annotations

import os

# Before torch is imported: the raw baseline's OpenMP threads sleep instead of spinning, as the
# backend's do (its __main__ sets the same). With spinning, raw torch on a busy machine collapses
# (1.3 img/s measured at load 10) and the ratio would credit the backend with that alone.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import compileall
import contextlib
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prelabel_backend import offline  # noqa: E402
from prelabel_local.backend import BackendProcess  # noqa: E402
from tests.conftest import serve_files  # noqa: E402

TOKEN = "bench-token"  # a loopback server's made-up key
CONFIG = """<View><Image name="image" value="$image"/>
<RectangleLabels name="label" toName="image" model_score_threshold="0.25">
<Label value="person"/><Label value="bus"/><Label value="car"/></RectangleLabels></View>"""
TASKS = 16
CONCURRENCY = (1, 4)


def photos(n: int, width: int, height: int) -> list[bytes]:
    """n distinct JPEG photos of width x height, cut from ultralytics' bundled bus.jpg and zidane.jpg."""
    import ultralytics

    assets = Path(ultralytics.__file__).parent / "assets"
    sources = [cv2.imread(str(assets / name)) for name in ("bus.jpg", "zidane.jpg")]
    rng = np.random.default_rng(13)
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(min(h, w * height / width) * scale), int(min(w, h * width / height) * scale)
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = cv2.resize(src[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_AREA)
        if i % 3 == 1:
            crop = crop[:, ::-1]
        crop = cv2.convertScaleAbs(crop, alpha=rng.uniform(0.8, 1.2), beta=rng.uniform(-20, 20))
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(crop), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(jpeg.tobytes())
    return out


class RssSampler:
    """The process tree's summed RSS, every 50 ms, while running."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = 0
            for proc in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
            self.samples.append(total)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def tree_rss(pid: int) -> int:
    total = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def worker_rss(pid: int) -> int:
    """The RSS of the gunicorn worker (the master's child that holds the models)."""
    children = psutil.Process(pid).children()
    return max((c.memory_info().rss for c in children), default=0)


def cold_start(env: dict[str, str], log: Path) -> tuple[BackendProcess, float, float]:
    """(the backend, seconds to /health 200, CPU seconds of its process tree by then)."""
    started = time.monotonic()
    backend = BackendProcess(env, log)
    backend.wait_ready(timeout=600)
    elapsed = time.monotonic() - started
    cpu = 0.0
    for proc in [psutil.Process(backend.proc.pid), *psutil.Process(backend.proc.pid).children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            cpu += times.user + times.system
    return backend, elapsed, cpu


def wait_measured(backend: BackendProcess, started: float, timeout: float = 900) -> float:
    """Seconds from `started` until every model that served provisionally was measured (its log says)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = backend.log.read_text(errors="replace")
        if text.count("(until measured)") <= text.count("measured model "):
            return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"runtimes not measured after {timeout:.0f}s: {backend.log.read_text()[-2000:]}")


def byte_compile() -> None:
    """The .pyc files the image has (pip compiles at install); already compiled files are skipped."""
    for folder in {Path(p) for p in sys.path if p.endswith("site-packages")} | {REPO / "backend_image"}:
        compileall.compile_dir(str(folder), quiet=2, workers=os.cpu_count() or 1)


def installed_size(lock: Path) -> tuple[int, int, list[tuple[str, int]]]:
    """(torch and nvidia bytes, the rest, the largest distributions) of the lock's distributions here."""
    heavy = rest = 0
    sizes = []
    for line in lock.read_text().splitlines():
        name = line.split("==")[0].strip()
        if not name or line.startswith((" ", "#")):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        size = sum(f.size or 0 for f in dist.files or [])
        sizes.append((name, size))
        if name.startswith(("torch", "nvidia-", "triton", "cuda-")):
            heavy += size
        else:
            rest += size
    return heavy, rest, sorted(sizes, key=lambda s: -s[1])[:8]


def mb(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per cell")
    parser.add_argument("--compare-torch", action="store_true", help="also a backend with RUNTIME=torch BATCH_SIZE=16")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prelabel-bench-"))
    offline.configure(str(work / "ultralytics"))
    import torch
    from ultralytics import YOLO

    jpegs = photos(64, 640, 480)
    decoded = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in jpegs]
    files = {f"/data/upload/1/photo-{i}.jpg": j for i, j in enumerate(jpegs)}
    weights = work / "models" / "yolov8n-random.pt"
    weights.parent.mkdir()
    YOLO("yolov8n.yaml").save(str(weights))
    stack = contextlib.ExitStack()
    base = stack.enter_context(serve_files(files, token=TOKEN, content_type="image/jpeg"))  # as /data/upload/
    common = {"LABEL_STUDIO_URL": base, "LABEL_STUDIO_API_KEY": TOKEN, "MEDIA_CACHE_ITEMS": "0", "LOG_LEVEL": "INFO"}
    # Every default model is yolov8n (one file, loaded once): the backend holds one yolov8n-size model,
    # the case the RSS bound is stated for.
    yolo_env = {**common, "MODEL_ROOT": str(weights.parent),
                **dict.fromkeys(("MODEL_DETECT", "MODEL_OBB", "MODEL_SEGMENT", "MODEL_CLASSIFY", "MODEL_POSE"), weights.name)}
    backends: dict[str, BackendProcess] = {}
    try:
        print(f"{os.cpu_count()} cores; 64 JPEG 640x480 photos (mean {statistics.mean(map(len, jpegs)) / 1024:.0f} KiB); "
              f"yolov8n architecture at 640; {TASKS}-task requests; repeats {args.repeats}", flush=True)
        # Cold starts, one at a time (nothing else running).
        byte_compile()
        packaged, packaged_s, packaged_cpu = cold_start(common, work / "packaged" / "backend.log")
        packaged_measured = wait_measured(packaged, time.monotonic() - packaged_s)
        packaged.stop()
        yolo_env["MODEL_DIR"] = str(work / "auto" / "model-dir")
        first, first_s, first_cpu = cold_start(yolo_env, work / "auto" / "first.log")
        first_measured = wait_measured(first, time.monotonic() - first_s)
        first.stop()
        backends["auto"], restart_s, restart_cpu = cold_start(yolo_env, work / "auto" / "backend.log")
        if args.compare_torch:
            backends["torch"], _, _ = cold_start({**yolo_env, "RUNTIME": "torch", "BATCH_SIZE": "16",
                                                 "MODEL_DIR": str(work / "torch" / "model-dir")}, work / "torch" / "backend.log")
        print(f"cold start to /health UP (wall s, CPU s of the process tree): packaged models {packaged_s:.1f} s, "
              f"{packaged_cpu:.1f} CPU s (runtimes measured {packaged_measured:.1f} s after start); yolov8n first start "
              f"{first_s:.1f} s, {first_cpu:.1f} CPU s (exported and measured {first_measured:.1f} s after start), "
              f"restart {restart_s:.1f} s, {restart_cpu:.1f} CPU s", flush=True)
        for name, backend in backends.items():
            wait_measured(backend, 0)
            health = requests.get(f"{backend.url}/health", timeout=10).json()
            loads = [re.sub(r", classes \[.*?\]", "", line.split("prelabel_backend.model_store: ", 1)[-1])
                     for line in backend.log.read_text().splitlines()
                     if "loaded model yolov8n" in line or "measured model yolov8n" in line]
            print(f"backend {name}: models {health.get('models')}; " + " | ".join(loads))
        for name, backend in backends.items():
            print(f"RSS idle, backend {name}: process tree {mb(tree_rss(backend.proc.pid))}, worker {mb(worker_rss(backend.proc.pid))}")

        model = YOLO(str(weights))
        model.predict(decoded[0], verbose=False)  # warm-up: ultralytics resets torch's threads here
        torch.set_num_threads(2)

        def raw() -> float:
            started = time.perf_counter()
            for image in decoded[:TASKS]:
                model.predict(image, conf=0.25, verbose=False)
            return TASKS / (time.perf_counter() - started)

        def request(backend: BackendProcess, offset: int) -> None:
            tasks = [{"id": i, "data": {"image": f"/data/upload/1/photo-{(offset + i) % len(jpegs)}.jpg"}} for i in range(TASKS)]
            response = requests.post(f"{backend.url}/predict", json={"tasks": tasks, "label_config": CONFIG, "project": "1.1"}, timeout=600)
            response.raise_for_status()
            results = response.json()["results"]
            assert len(results) == TASKS and not any(r.get("errors") for r in results), results[:1]

        def single(backend: BackendProcess, round_: int) -> list[float]:
            """Seconds of each of TASKS 1-task requests, one after the other (Label Studio opening a task)."""
            seconds = []
            for i in range(TASKS):
                started = time.perf_counter()
                task = {"id": i, "data": {"image": f"/data/upload/1/photo-{(round_ * TASKS + i) % len(jpegs)}.jpg"}}
                response = requests.post(f"{backend.url}/predict", json={"tasks": [task], "label_config": CONFIG, "project": "1.1"}, timeout=600)
                response.raise_for_status()
                seconds.append(time.perf_counter() - started)
            return seconds

        def cell(backend: BackendProcess, concurrency: int, round_: int) -> float:
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda k: request(backend, (round_ * concurrency + k) * TASKS), range(concurrency)))
            return TASKS * concurrency / (time.perf_counter() - started)

        for backend in backends.values():
            cell(backend, 1, 0)  # warm the pools
        rates: dict[str, list[float]] = {"raw torch, 2 threads, one by one": []}
        rss: dict[str, list[int]] = {}
        latencies: dict[str, list[float]] = {}
        for round_ in range(args.repeats):
            rates["raw torch, 2 threads, one by one"].append(raw())
            for name, backend in backends.items():
                for concurrency in CONCURRENCY:
                    with RssSampler(backend.proc.pid) as sampler:
                        rates.setdefault(f"backend {name}, concurrency {concurrency}", []).append(cell(backend, concurrency, round_))
                    rss.setdefault(name, []).extend(sampler.samples)
                    rss.setdefault(f"{name} worker", []).append(worker_rss(backend.proc.pid))
                latencies.setdefault(name, []).extend(single(backend, round_))
        raw_rate = statistics.median(rates["raw torch, 2 threads, one by one"])
        print(f"\n{'cell':<40} {'img/s':>6} {'/raw':>5}   per repeat")
        for label, values in rates.items():
            median = statistics.median(values)
            print(f"{label:<40} {median:>6.1f} {median / raw_rate:>5.2f}   " + " ".join(f"{v:.1f}" for v in values))
        for name, seconds in latencies.items():
            print(f"1-task requests, backend {name}: p50 {statistics.median(seconds) * 1000:.0f} ms, "
                  f"p90 {statistics.quantiles(seconds, n=10)[-1] * 1000:.0f} ms ({len(seconds)} requests)")
        for name in backends:
            tree = rss[name]
            print(f"RSS under load, backend {name}: process tree median {mb(statistics.median(tree))}, peak {mb(max(tree))}; "
                  f"worker after each cell, max {mb(max(rss[name + ' worker']))}")
        heavy, rest, largest = installed_size(REPO / "backend_image" / "requirements.lock")
        print(f"image's installed packages: {mb(heavy + rest)} (torch and nvidia {mb(heavy)}, the rest {mb(rest)}); largest: "
              + ", ".join(f"{n} {mb(s)}" for n, s in largest))
    finally:
        for backend in backends.values():
            backend.stop()
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
