"""`make demo`: pre-label a demo project end to end on this machine, with the embedded models.

Starts a real Label Studio (its own venv, SQLite, 127.0.0.1) and the YOLO backend, creates a project
with the seed's labeling config and 20 generated images, registers the backend as the project's ML
backend through label-studio-sdk, retrieves predictions, and prints what Label Studio stored.
`--keep` leaves both running (Ctrl-C stops them) so you can look at the boxes in the UI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED_LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image" model_score_threshold="0.25">
    <Label value="Square" background="red" predicted_values="square"/>
    <Label value="Circle" background="blue" predicted_values="circle"/>
    <Label value="Triangle" background="green" predicted_values="triangle"/>
  </RectangleLabels>
</View>"""


def step(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(images: int, keep: bool) -> int:
    from label_studio_sdk import LabelStudio as Client
    from prelabel_backend import synthetic

    from .backend import BackendProcess
    from .labelstudio import LabelStudio

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="prelabel-demo-"))
    step("starting Label Studio (first run installs it: a few minutes; first start ~70 s)", started)
    ls = LabelStudio(workdir=work / "label-studio").start()
    backend = None
    try:
        step(f"Label Studio is up at {ls.url}; starting the YOLO backend", started)
        backend = BackendProcess({"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token}, work / "backend" / "backend.log").wait_ready()
        client = Client(base_url=ls.url, api_key=ls.token)
        project = client.projects.create(title="Prelabel demo: shapes", label_config=SEED_LABEL_CONFIG)
        rng = np.random.default_rng(2026)
        scenes = [synthetic.make_scene(rng) for _ in range(images)]
        pngs = {f"demo-{i:02d}.png": synthetic.encode_png(scene.image) for i, scene in enumerate(scenes)}
        task_ids = list(ls.upload_images(project.id, pngs).values())
        step(f"project {project.id} has {len(task_ids)} tasks; registering the backend at {backend.url}", started)
        ml = client.ml.create(project=project.id, url=backend.url, title="prelabel-yolo", is_interactive=False)
        step(f"registered ML backend {ml.id} (state {ml.state}); retrieving predictions", started)
        client.actions.create(id="retrieve_tasks_predictions", project=project.id, selected_items={"all": False, "included": task_ids})
        counts = []
        for task_id in task_ids:
            predictions = list(client.predictions.list(task=task_id))
            counts.append(sum(len(p.result) for p in predictions))
        with_prediction = sum(1 for c in counts if c)
        print(f"\nLabel Studio: {ls.url}   login: {ls.username} / {ls.password}")
        shapes = sum(len(scene.shapes) for scene in scenes)
        print(f"project {project.id}: {with_prediction}/{len(task_ids)} tasks pre-labeled, {sum(counts)} boxes for {shapes} drawn shapes")
        print(f"boxes per task: {counts}")
        print(f"time: {time.monotonic() - started:.1f}s")
        if keep:
            print("\nLabel Studio and the backend keep running; Ctrl-C stops them.")
            while True:
                time.sleep(3600)
        return 0 if with_prediction == len(task_ids) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        if backend is not None:
            backend.stop()
        ls.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="leave Label Studio and the backend running")
    args = parser.parse_args()
    sys.exit(run(args.images, args.keep))


if __name__ == "__main__":
    main()
