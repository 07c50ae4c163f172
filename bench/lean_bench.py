"""Torch-free inference (prelabel_backend.lean) beside ultralytics' predictor on the same export (issue 28).

Side by side in one run, on the yolov8n architecture at 640 px (random weights: speed does not depend
on their values), exported as the backend exports (runtimes.export: dynamic ONNX and OpenVINO), on
the same 640x480 photos (predict_bench.photos):
- images/s of one predict call per image and per batch of 8, each path at the same thread count,
  rounds alternating the two paths; medians over rounds, and their ratio;
- cold start in a fresh process: imports plus opening the export plus the first image, and the
  process's peak RSS (VmHWM: torch and ultralytics' imports against numpy, OpenCV and the runtime's).
The answers' equivalence is tests/unit/backend/test_lean.py's (the packaged, trained models: random
weights find nothing).

    .venv/bin/python bench/lean_bench.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from predict_bench import photos  # the bench's own photos, cut from ultralytics' bundled images

COLD = """
import re, sys, time
started = time.monotonic()
import numpy as np
path, kind, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
image = np.full((480, 640, 3), 114, np.uint8)
if kind == "lean":
    from pathlib import Path
    from prelabel_backend.lean import Export
    Export.open(Path(path), threads).predict([image], imgsz=640)
else:
    from prelabel_backend import offline
    offline.configure(sys.argv[4])
    from ultralytics.models import YOLO
    YOLO(path, task="detect").predict([image], imgsz=640, verbose=False)
# VmHWM, not ru_maxrss: a forked child's ru_maxrss keeps its parent's peak from before exec.
print(time.monotonic() - started, int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read())[1]) * 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lean-bench-"))
    from prelabel_backend import offline, runtimes

    offline.configure(str(work / "ultralytics"))
    from ultralytics.models import YOLO

    from prelabel_backend.lean import Export

    weights = work / "yolov8n-random.pt"
    YOLO("yolov8n.yaml").save(str(weights))
    sha = runtimes.file_sha256(weights)
    images = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in photos(args.images, 640, 480)]
    print(f"lean bench: yolov8n at 640 (random weights), {len(images)} photos 640x480, {args.threads} threads, "
          f"{args.rounds} rounds", flush=True)
    report = {}
    for runtime in ("onnx", "openvino"):
        path = runtimes.export(weights, sha, runtime, [], work / "runtimes", 640)
        theirs = YOLO(str(path), task="detect")
        theirs.predict(images[:1], imgsz=640, verbose=False)
        runtimes.set_threads(theirs, runtime, args.threads)
        ours = Export.open(path, args.threads)
        cells: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for batch in (1, 8):
                for name in ("ultralytics", "lean"):
                    started = time.perf_counter()
                    for start in range(0, len(images), batch):
                        if name == "lean":
                            ours.predict(images[start : start + batch], imgsz=640)
                        else:
                            theirs.predict(images[start : start + batch], imgsz=640, verbose=False)
                    cells.setdefault(f"{name}/{batch}", []).append(len(images) / (time.perf_counter() - started))
        cold = {}
        for kind in ("ultralytics", "lean"):
            out = subprocess.run([sys.executable, "-c", COLD, str(path), kind, str(args.threads), str(work / "u")],
                                 capture_output=True, text=True, check=True).stdout.split()
            cold[kind] = (float(out[0]), int(out[1]))
        medians = {k: statistics.median(v) for k, v in cells.items()}
        report[runtime] = {"img/s": medians, "cold": cold}
        print(f"\n{runtime}:")
        for batch in (1, 8):
            u, lean = medians[f"ultralytics/{batch}"], medians[f"lean/{batch}"]
            print(f"  batch {batch}: ultralytics {u:.1f} img/s, lean {lean:.1f} img/s, lean/ultralytics {lean / u:.2f}x "
                  f"(rounds: {', '.join(f'{x:.1f}' for x in cells[f'lean/{batch}'])} vs {', '.join(f'{x:.1f}' for x in cells[f'ultralytics/{batch}'])})")
        for kind, (seconds, rss) in cold.items():
            print(f"  cold start {kind}: {seconds:.2f} s to the first image, peak RSS {rss / 2**20:.0f} MiB")
    print("\n" + json.dumps(report, default=str))


if __name__ == "__main__":
    main()
