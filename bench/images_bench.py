"""Both backend images side by side (issue 28): the full one (Dockerfile.backend: torch, ultralytics) and
the lean one (Dockerfile.backend-lean: lean.py on ONNX Runtime or OpenVINO), built from this checkout
by podman (`make images`), each run as the chart runs it (user 10001, read-only root, /tmp writable).

In one run, the images alternating within each round, on the yolov8n architecture at 640 px (random
weights: speed does not depend on their values; exported as the backend exports, mounted with its
exports for both) and the same 640x480 photos (predict_bench.photos), on one runtime at a time
(RUNTIME=onnx, then openvino; BATCH_SIZE=4, nothing measured at start):
- image size: podman's uncompressed size;
- cold start: from `podman run` to /health UP with the packaged models loaded (every control type's);
- throughput: tasks/s of 16-task /predict requests at concurrency 1 and 4; medians over rounds;
- memory: the container's processes' RSS after the load (VmRSS summed) and their peak (VmHWM);
- pod start on a real node (prelabel_local.node), the image not yet in containerd: its import (a
  docker-archive from local disk, where a cluster pulls compressed layers from a registry), then the
  operator's own Deployment for each image (manifests.deployment: the packaged models, the runtime
  chosen by measurement) from `kubectl apply` to Ready; the images alternate, medians over rounds.

    .venv/bin/python bench/images_bench.py --rounds 3 --pod-rounds 2
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from predict_bench import photos  # the bench's own photos, cut from ultralytics' bundled images

from prelabel_local import images
from prelabel_local.cluster import free_port

CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image" model_path="yolov8n-random.pt">'
          '<Label value="person" predicted_values="person"/><Label value="bus" predicted_values="bus"/></RectangleLabels></View>')
HARDENED = ("--read-only", "--tmpfs", "/tmp", "--user", "10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--no-healthcheck")
MEMORY = "for f in /proc/[0-9]*/status; do grep -E '^(VmRSS|VmHWM)' $f; done"


def call(url: str, body: dict[str, Any] | None = None, timeout: float = 600) -> tuple[int, Any]:
    request = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None


class Backend:
    """One container of `ref` on the host's loopback, the bench's weights and exports mounted read-only."""

    def __init__(self, ref: str, models: Path, runtime: str, threads: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {"HOST": "127.0.0.1", "PORT": str(self.port), "RUNTIME": runtime, "BATCH_SIZE": "4", "TORCH_THREADS": str(threads),
               "MODEL_ROOT": "/bench/models", "RUNTIME_CACHE": "/bench/runtimes", "ALLOW_CUSTOM_MODEL_PATH": "true"}
        started = time.monotonic()
        self.cid = images.podman("run", "--detach", *HARDENED, "--network", "host", "--volume", f"{models}:/bench:ro",
                                 *(a for k, v in env.items() for a in ("--env", f"{k}={v}")), ref).stdout.strip()
        while call(f"{self.url}/health", timeout=5)[0] != 200:
            if time.monotonic() - started > 600:
                raise RuntimeError(f"{ref}: not UP in 600 s: {images.podman('logs', self.cid, check=False).stderr[-2000:]}")
            time.sleep(0.05)
        self.cold = time.monotonic() - started

    def throughput(self, tasks: list[dict[str, Any]], concurrency: int, requests: int) -> float:
        body = {"tasks": tasks, "label_config": CONFIG, "project": "1.1"}
        assert call(f"{self.url}/predict", body)[0] == 200  # the model loads here, outside the timing
        started = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            codes = list(pool.map(lambda _: call(f"{self.url}/predict", body)[0], range(requests)))
        assert codes == [200] * requests, codes
        return len(tasks) * requests / (time.monotonic() - started)

    def memory(self) -> tuple[float, float]:
        """(RSS now, peak RSS) of the container's processes, summed, in MiB."""
        lines = images.podman("exec", self.cid, "sh", "-c", MEMORY).stdout.split("\n")
        total = {k: sum(int(x.split()[1]) for x in lines if x.startswith(k)) / 1024 for k in ("VmRSS", "VmHWM")}
        return total["VmRSS"], total["VmHWM"]

    def stop(self) -> None:
        images.podman("rm", "--force", "--time", "10", self.cid, check=False)


def pod_start(refs: dict[str, str], rounds: int) -> dict[str, float]:
    """Seconds to import each image into a real node's containerd, and from `kubectl apply` of its
    Deployment to Ready (medians over `rounds`, the images alternating)."""
    from prelabel_local import cluster as local_cluster
    from prelabel_local import node
    from prelabel_operator import manifests
    from prelabel_operator.spec import MLBackendSpec

    archives = {which: images.archive(ref) for which, ref in refs.items()}
    worker = node.Node(local_cluster.build(quiet=True))
    cluster = worker.start_cluster()
    cells: dict[str, list[float]] = {}
    try:
        cluster.kubectl("create", "secret", "generic", "label-studio", "--from-literal=api-key=unused")
        bodies = {which: manifests.deployment("bench", MLBackendSpec.parse({"image": ref, "imagePullPolicy": "Never", "labelStudio": {
            "url": "http://127.0.0.1:9", "apiKeySecretRef": {"name": "label-studio"}, "projects": [{"id": 1}]}}), "unused")
            for which, ref in refs.items()}
        for _ in range(rounds):
            for which, ref in refs.items():
                worker.ctr("images", "rm", "--sync", ref, check=False)
                started = time.monotonic()
                assert worker.import_image(archives[which]), f"{ref} was still imported"
                imported = time.monotonic()
                cluster.kubectl("apply", "-f", "-", input=json.dumps(bodies[which]))
                name = bodies[which]["metadata"]["name"]
                while cluster.kubectl("get", "deployment", name, "-o", "jsonpath={.status.readyReplicas}").stdout.strip() != "1":
                    if time.monotonic() - imported > 600:
                        raise RuntimeError(f"{ref}: no Ready pod in 600 s: {cluster.kubectl('describe', 'pods').stdout[-3000:]}")
                    time.sleep(0.2)
                ready = time.monotonic()
                cells.setdefault(f"{which}/import_s", []).append(imported - started)
                cells.setdefault(f"{which}/apply_to_ready_s", []).append(ready - imported)
                cells.setdefault(f"{which}/total_s", []).append(ready - started)
                cluster.kubectl("delete", "deployment", name, "--wait=true", "--timeout=120s")
                while cluster.kubectl("get", "pods", "-o", "name").stdout.strip():
                    time.sleep(0.5)
    finally:
        worker.stop()
        cluster.stop()
    medians = {k: statistics.median(v) for k, v in cells.items()}
    print("\npod start on the real node (import, then apply to Ready):")
    for key in ("import_s", "apply_to_ready_s", "total_s"):
        full, lean = medians[f"backend/{key}"], medians[f"backend-lean/{key}"]
        print(f"  {key}: full {full:.1f}, lean {lean:.1f}, lean/full {lean / full:.2f}x "
              f"(rounds: {', '.join(f'{x:.1f}' for x in cells[f'backend-lean/{key}'])} vs "
              f"{', '.join(f'{x:.1f}' for x in cells[f'backend/{key}'])})")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", default="onnx,openvino")
    parser.add_argument("--pod-rounds", type=int, default=2, help="rounds of pod start on a real node (0: none)")
    args = parser.parse_args()
    from prelabel_backend import offline, runtimes

    work = Path(tempfile.mkdtemp(prefix="images-bench-"))
    work.chmod(0o755)
    offline.configure(str(work / "ultralytics"))
    from ultralytics.models import YOLO

    models = work / "bench"
    (models / "models").mkdir(parents=True)
    weights = models / "models" / "yolov8n-random.pt"
    YOLO("yolov8n.yaml").save(str(weights))
    runtimes.export_all(models / "models", models / "runtimes")
    for path in models.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    tasks = [{"id": i + 1, "data": {"image": "data:image/jpeg;base64," + base64.b64encode(p).decode()}}
             for i, p in enumerate(photos(args.tasks, 640, 480))]
    refs = {which: images.build(which) for which in ("backend", "backend-lean")}
    sizes = {which: images.size_mb(ref) for which, ref in refs.items()}
    print(f"images bench: yolov8n at 640 (random weights), {args.tasks}-task requests of 640x480 photos, {args.threads} threads, "
          f"{args.rounds} rounds; sizes {sizes} MB", flush=True)
    report: dict[str, Any] = {"size_mb": sizes}
    for runtime in args.runtimes.split(","):
        cells: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for which, ref in refs.items():
                backend = Backend(ref, models, runtime, args.threads)
                try:
                    cells.setdefault(f"{which}/cold_s", []).append(backend.cold)
                    for concurrency in (1, 4):
                        rate = backend.throughput(tasks, concurrency, requests=2 * concurrency)
                        cells.setdefault(f"{which}/c{concurrency}", []).append(rate)
                    rss, peak = backend.memory()
                    cells.setdefault(f"{which}/rss_mib", []).append(rss)
                    cells.setdefault(f"{which}/peak_mib", []).append(peak)
                finally:
                    backend.stop()
        medians = {k: statistics.median(v) for k, v in cells.items()}
        report[runtime] = medians
        print(f"\n{runtime}:")
        for key, unit in (("cold_s", "s to /health UP"), ("c1", "tasks/s at concurrency 1"), ("c4", "tasks/s at concurrency 4"),
                          ("rss_mib", "MiB RSS after the load"), ("peak_mib", "MiB peak RSS")):
            full, lean = medians[f"backend/{key}"], medians[f"backend-lean/{key}"]
            print(f"  {unit}: full {full:.2f}, lean {lean:.2f}, lean/full {lean / full:.2f}x "
                  f"(rounds: {', '.join(f'{x:.2f}' for x in cells[f'backend-lean/{key}'])} vs "
                  f"{', '.join(f'{x:.2f}' for x in cells[f'backend/{key}'])})")
    images.remove_empty_cgroups()
    if args.pod_rounds:
        report["pod_start"] = pod_start(refs, args.pod_rounds)
    print("\n" + json.dumps(report))


if __name__ == "__main__":
    main()
