"""`make demo`: the whole product on this machine, no Docker, no cluster, no internet.

Builds both images from their Dockerfiles (podman, layers cached: prelabel_local.images), starts a
real Kubernetes control plane (local processes, built from Go modules and cached) with a real node
(containerd, kubelet, kube-proxy: prelabel_local.node) and imports the images into it, and a real
Label Studio on the node's bridge; `helm install`s the operator's chart with the operator image,
so the operator runs as a pod, and the backend pods it makes run from the backend image; creates a
project with the seed's labeling config and 20 generated images; applies an MLBackend
with `spec.prelabel`; waits until it is Ready, then shows the operator's pre-labeling progress
(status.prelabel) as a progress bar until the project is complete; prints what Label Studio stored.
`--keep` leaves everything running (Ctrl-C stops it) so you can look at the boxes in the UI.
However it ends (done, failed, Ctrl-C, or SIGTERM and SIGHUP, which cli.py turns into the same
unwinding), it stops every process it started; after a `kill -9` of the demo itself, `prelabel down`
stops what it left (processes.py).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from prelabel_operator.status import condition

if TYPE_CHECKING:
    from .cluster import LocalCluster

SEED_LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" model_score_threshold="0.25">
    <Label value="Square" background="red" predicted_values="square"/>
    <Label value="Circle" background="blue" predicted_values="circle"/>
    <Label value="Triangle" background="green" predicted_values="triangle"/>
  </RectangleLabels>
</View>"""
NAMESPACE = "prelabel-demo"


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def wait_ready(cluster: LocalCluster, step: Progress, timeout: float = 300) -> dict[str, Any]:
    """Shows each condition change until Ready=True; returns the status."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        status = cluster.status("mlb", NAMESPACE, "shapes")
        ready = condition(status, "Ready")
        shown = ready.get("reason"), ready.get("message")
        if ready and shown != last:
            step(f"MLBackend Ready={ready['status']} ({ready['reason']}): {ready['message']}")
            last = shown
        if ready and ready["status"] == "True":
            return status
        time.sleep(1)
    raise TimeoutError("the MLBackend did not become Ready: see its status (kubectl describe mlb shapes)")


def wait_prelabeled(cluster: LocalCluster, total: int, timeout: float = 600) -> dict[str, Any]:
    """A progress bar over status.prelabel (tasks holding a prediction of the current model version)
    until the operator reports the project Complete (or Failed); returns status.prelabel."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout
    with tqdm(total=total, desc="pre-labeling", unit="task", file=sys.stderr, dynamic_ncols=True) as bar:
        while time.monotonic() < deadline:
            prelabel: dict[str, Any] = cluster.status("mlb", NAMESPACE, "shapes").get("prelabel") or {}
            if prelabel.get("total"):
                bar.total = prelabel["total"]
                bar.update(prelabel.get("predicted", 0) - bar.n)
                bar.set_postfix_str(f"{prelabel.get('tasksPerSecond', 0)} tasks/s, {prelabel.get('failed', 0)} failed")
            if prelabel.get("phase") in ("Complete", "Failed"):
                return prelabel
            time.sleep(0.5)
    raise TimeoutError("pre-labeling did not complete: see status.prelabel (kubectl describe mlb shapes)")


def run(images: int, keep: bool) -> int:
    from label_studio_sdk import LabelStudio as Client

    from prelabel_backend import synthetic

    from . import chart, processes
    from . import images as built
    from .cluster import build
    from .label_studio_server import LabelStudio
    from .node import GATEWAY, Node

    step = Progress()
    work = Path(tempfile.mkdtemp(prefix="prelabel-demo-"))
    step("building the images from Dockerfile.operator and Dockerfile.backend (cached; first time about 20 minutes: "
         "the backend's torch is several GB)")
    refs = {which: built.build(which) for which in ("operator", "backend")}
    archives = {which: built.archive(ref) for which, ref in refs.items()}
    step("building the control plane and the node (cached; first time about 15 minutes)")
    node = Node(build())
    ls = LabelStudio(workdir=work / "label-studio", host=GATEWAY)
    cluster = None
    try:
        cluster = node.start_cluster(workdir=work / "cluster")
        step(f"Kubernetes is up at {cluster.server} with node {GATEWAY} (kubeconfig {cluster.kubeconfig}); importing the images "
             "into containerd (once per machine)")
        for archive in archives.values():
            node.import_image(archive)
        step("starting Label Studio (the first time on this machine ~70 s: its migrations)")
        ls.start()
        client = Client(base_url=ls.url, api_key=ls.token)
        project = client.projects.create(title="Prelabel demo: shapes", label_config=SEED_LABEL_CONFIG)
        assert project.id is not None  # Label Studio answers with the project it made
        rng = np.random.default_rng(2026)
        scenes = [synthetic.make_scene(rng) for _ in range(images)]
        task_ids = list(ls.upload_images(project.id, {f"demo-{i:02d}.png": synthetic.encode_png(s.image) for i, s in enumerate(scenes)}).values())
        step(f"Label Studio is up at {ls.url}: project {project.id} with {len(task_ids)} tasks; helm install {chart.RELEASE}")
        repository, tag = refs["operator"].rsplit(":", 1)
        chart.install(cluster, {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}})
        chart.restricted_namespace(cluster, NAMESPACE)
        cluster.kubectl("create", "secret", "generic", "label-studio", "-n", NAMESPACE, f"--from-literal=api-key={ls.token}")
        resource = {"apiVersion": "prelabel.dev/v1alpha1", "kind": "MLBackend", "metadata": {"name": "shapes", "namespace": NAMESPACE},
                    "spec": {"labelStudio": {"url": ls.url, "apiKeySecretRef": {"name": "label-studio"}, "projects": [{"id": project.id}]},
                             "image": refs["backend"], "imagePullPolicy": "Never",
                             "prelabel": {}}}  # pre-label the whole project, and keep it so
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(resource))
        step("applied MLBackend prelabel-demo/shapes; waiting for it to be Ready")
        status = wait_ready(cluster, step)
        step(f"registered at {status['url']}; the operator pre-labels the project's {len(task_ids)} tasks")
        prelabel = wait_prelabeled(cluster, len(task_ids))
        step(f"pre-labeling {prelabel['phase']}: {prelabel['summary']} with {prelabel.get('modelVersion')}")
        # Count only predictions made by the backend the operator registered: its model version.
        predictions = {t: [p for p in client.predictions.list(task=t) if p.model_version == prelabel.get("modelVersion")] for t in task_ids}
        counts = [sum(len(p.result) for p in predictions[t]) for t in task_ids]
        with_prediction = sum(1 for c in counts if c)
        shapes = sum(len(s.shapes) for s in scenes)
        print(f"\nLabel Studio: {ls.url}   login: {ls.username} / {ls.password}")
        print(f"project {project.id}: {with_prediction}/{len(task_ids)} tasks pre-labeled by the backend at {status['url']}, "
              f"{sum(counts)} boxes for {shapes} drawn shapes")
        print("boxes per task: " + ", ".join(f"{t}: {c}" for t, c in zip(task_ids, counts, strict=True)))
        print(f"{cluster.bin_dir / 'kubectl'} --kubeconfig {cluster.kubeconfig} get mlb,pods -n {NAMESPACE}")
        print(f"time: {time.monotonic() - step.started:.1f}s")
        if keep:
            print("\nEverything keeps running; Ctrl-C stops it.")
            while True:
                time.sleep(3600)
        return 0 if with_prediction == len(task_ids) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        ls.stop()
        node.stop()
        if cluster is not None:
            cluster.stop()
        processes.stop_owned()  # what a start cut short by a signal had spawned
        shutil.rmtree(work, ignore_errors=True)
