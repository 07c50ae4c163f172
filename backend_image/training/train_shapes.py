"""Train the project's own small YOLO models on synthetic shapes (square, circle, triangle).

    python backend_image/training/train_shapes.py --task all

One model per task the backend serves: detect, obb, segment, classify, pose. Each is a narrow
YOLOv8 (depth 0.33, width 0.125, max 256 channels: about 0.35 M parameters, under 1 MB) trained
from scratch on images drawn by prelabel_backend.synthetic, deterministically (seed 0), on CPU in
a few minutes each. The weights land in prelabel_backend/weights/shapes-<task>.pt with a JSON card of
their validation metrics beside them. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from prelabel_backend import offline, synthetic  # noqa: E402

offline.configure()

import yaml  # noqa: E402

WEIGHTS = HERE.parent / "prelabel_backend" / "weights"
NARROW = [0.33, 0.125, 256]


TASKS = {
    # task: (model yaml in ultralytics, image size, training images, epochs, rotate shapes)
    "detect": ("yolov8.yaml", 192, 500, 35, False),
    "obb": ("yolov8-obb.yaml", 192, 500, 40, True),
    "segment": ("yolov8-seg.yaml", 192, 500, 35, False),
    "pose": ("yolov8-pose.yaml", 192, 500, 40, False),
    "classify": ("yolov8-cls.yaml", 96, 500, 40, False),
}


def _norm(points: np.ndarray, scene: synthetic.Scene) -> list[float]:
    out = points.astype(float).copy()
    out[:, 0] /= scene.width
    out[:, 1] /= scene.height
    return np.clip(out, 0, 1).reshape(-1).round(6).tolist()


def _label_line(task: str, scene: synthetic.Scene, shape: synthetic.Shape) -> str:
    x1, y1, x2, y2 = shape.box()
    xywh = [((x1 + x2) / 2) / scene.width, ((y1 + y2) / 2) / scene.height, (x2 - x1) / scene.width, (y2 - y1) / scene.height]
    if task == "detect":
        values = xywh
    elif task == "obb":
        values = _norm(shape.corners(), scene)
    elif task == "segment":
        values = _norm(shape.polygon(), scene)
    elif task == "pose":
        kpts = _norm(shape.keypoints(), scene)
        values = xywh + [v for i in range(0, len(kpts), 2) for v in (kpts[i], kpts[i + 1], 2)]
    else:
        raise ValueError(task)
    return " ".join([str(shape.class_id)] + [f"{v:.6f}" if isinstance(v, float) else str(v) for v in values])


def write_dataset(task: str, root: Path, train: int, val: int, seed: int = 0) -> Path:
    """Writes images and labels in ultralytics' layout; returns what `data=` takes."""
    rng = np.random.default_rng(seed)
    rotate = TASKS[task][4]
    for split, count in (("train", train), ("val", val)):
        for i in range(count):
            if task == "classify":
                scene = synthetic.make_scene(rng, width=128, height=128, count=(1, 1), size=(32.0, 80.0))
                folder = root / split / scene.shapes[0].cls
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{i:05d}.png").write_bytes(synthetic.encode_png(scene.image))
                continue
            scene = synthetic.make_scene(rng, rotate=rotate)  # the generator's defaults: what tests and the demo draw
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "images" / split / f"{i:05d}.png").write_bytes(synthetic.encode_png(scene.image))
            lines = [_label_line(task, scene, s) for s in scene.shapes]
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    if task == "classify":
        return root
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(synthetic.CLASSES))}
    if task == "pose":
        data["kpt_shape"] = [synthetic.KEYPOINTS_PER_SHAPE, 3]
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root / "data.yaml"


def model_yaml(task: str, root: Path) -> Path:
    import ultralytics

    source = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / TASKS[task][0]
    cfg = yaml.safe_load(source.read_text())
    cfg["nc"] = len(synthetic.CLASSES)
    cfg["scales"] = {"n": NARROW}
    cfg["scale"] = "n"
    if task == "pose":
        cfg["kpt_shape"] = [synthetic.KEYPOINTS_PER_SHAPE, 3]
    path = root / f"prelabel-shapes-{task}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _two_threads(trainer) -> None:  # noqa: ANN001 - ultralytics callback signature
    import torch

    torch.set_num_threads(2)


def train(task: str, epochs: int | None, out: Path) -> dict:
    from ultralytics import YOLO

    _, imgsz, n_train, default_epochs, _ = TASKS[task]
    with tempfile.TemporaryDirectory(prefix=f"prelabel-train-{task}-") as tmp:
        root = Path(tmp)
        data = write_dataset(task, root / "data", n_train, max(60, n_train // 6))
        model = YOLO(str(model_yaml(task, root)), task=task)
        model.add_callback("on_train_start", _two_threads)
        started = time.monotonic()
        model.train(
            data=str(data), epochs=epochs or default_epochs, imgsz=imgsz, batch=16, workers=1, seed=0,
            deterministic=True, mosaic=0.0, fliplr=0.0, device="cpu", project=str(root / "runs"),
            name=task, plots=False, verbose=False, amp=False, patience=1000, val=False, cache="ram",
            # Random erasing and RandAugment can wipe out the one small shape a classify image holds.
            **({"erasing": 0.0, "auto_augment": None} if task == "classify" else {}),
        )
        seconds = time.monotonic() - started
        best = Path(model.trainer.last)  # val=False during training: the last epoch is the model
        metrics = YOLO(str(best)).val(data=str(data), imgsz=imgsz, batch=16, workers=1, plots=False, verbose=False, device="cpu")
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, out / f"shapes-{task}.pt")
    summary = {k: round(float(v), 4) for k, v in metrics.results_dict.items()}
    card = {"task": task, "imgsz": imgsz, "epochs": epochs or default_epochs, "train_images": n_train,
            "train_seconds": round(seconds, 1), "metrics": summary, "classes": list(synthetic.CLASSES)}
    (out / f"shapes-{task}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument("--epochs", type=int, default=None, help="override the per-task default")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    for task in TASKS if args.task == "all" else [args.task]:
        card = train(task, args.epochs, args.out)
        print(json.dumps(card), flush=True)


if __name__ == "__main__":
    main()
