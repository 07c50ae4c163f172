"""The labeling-effort curve (issue 25): how good the pre-labels on the unannotated tasks get after
0, 25, 50 and 100 human annotations, and what each training run costs.

    make bench-learning                     # = .venv/bin/python bench/learning_curve.py --repeats 3
    .venv/bin/python bench/learning_curve.py --sizes 0 25 50 100 --repeats 3 --plot bench/learning_curve.png

A project in a domain the packaged detector never saw (synthetic.make_shifted_scene: striped
backgrounds, any colour, smaller shapes): a pool of 100 tasks people annotate in order, and 100
held-out tasks nobody annotates, the same for every N. For each N, the packaged detector
(shapes-detect.pt) is fine-tuned on the first N with the training Job's own code
(prelabel_backend.train.fine_tune: 15 epochs, imgsz 192, batch 16, seed 0, on CPU; N = 0 is the
packaged model), and its predictions on the held-out tasks are scored the way the operator scores
agreement (prelabel_operator.agreement: IoU >= 0.5 with the right label): recall and precision; plus
ultralytics' mAP50-95 and mAP50 on the same tasks. Cost per run: wall seconds and CPU seconds of the
process (user + system, all threads). Medians over --repeats (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from prelabel_backend import offline, synthetic, train, yolo_dataset
from prelabel_backend.label_config import parse
from prelabel_backend.settings import PACKAGED_WEIGHTS, Settings
from prelabel_local.demo import SEED_LABEL_CONFIG
from prelabel_operator import agreement

LABELS = {"square": "Square", "circle": "Circle", "triangle": "Triangle"}
PARENT = PACKAGED_WEIGHTS / "shapes-detect.pt"


def truth(scene: synthetic.Scene) -> list[dict[str, Any]]:
    return [{"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": scene.width, "original_height": scene.height,
             "value": {"x": x1 * 100 / scene.width, "y": y1 * 100 / scene.height, "width": (x2 - x1) * 100 / scene.width,
                       "height": (y2 - y1) * 100 / scene.height, "rotation": 0, "rectanglelabels": [LABELS[s.cls]]}}
            for s in scene.shapes for x1, y1, x2, y2 in [s.box()]]


def predicted(model: Any, scene: synthetic.Scene) -> list[dict[str, Any]]:
    """The model's boxes on the scene as a Label Studio result (threshold 0.25, SEED_LABEL_CONFIG's)."""
    found = model.predict(scene.image, imgsz=192, conf=0.25, verbose=False)[0]
    out = []
    for (x1, y1, x2, y2), cls in zip(found.boxes.xyxy.tolist(), found.boxes.cls.tolist(), strict=True):
        out.append({"from_name": "label", "to_name": "image", "type": "rectanglelabels",
                    "original_width": scene.width, "original_height": scene.height,
                    "value": {"x": x1 * 100 / scene.width, "y": y1 * 100 / scene.height, "width": (x2 - x1) * 100 / scene.width,
                              "height": (y2 - y1) * 100 / scene.height, "rotation": 0, "rectanglelabels": [LABELS[model.names[int(cls)]]]}})
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(n: int, pool: list[synthetic.Scene], held_out: list[synthetic.Scene], work: Path) -> dict[str, float]:
    from ultralytics.models import YOLO

    control = parse(SEED_LABEL_CONFIG, Settings()).controls[0]
    names = {int(k): str(v) for k, v in YOLO(str(PARENT)).names.items()}

    def examples(scenes: list[synthetic.Scene], first: int) -> list[yolo_dataset.Example]:
        return [yolo_dataset.Example(first + i, synthetic.encode_png(s.image), s.width, s.height, truth(s)) for i, s in enumerate(scenes)]
    data, _ = yolo_dataset.write(work / "data", control, names, {"train": examples(pool[:n], 0), "val": examples(held_out, 10_000)})
    wall, cpu = time.monotonic(), cpu_seconds()
    weights = train.fine_tune(PARENT, data, work, epochs=15, imgsz=192, batch=16, device="cpu") if n else PARENT
    wall, cpu = time.monotonic() - wall, cpu_seconds() - cpu
    model = YOLO(str(weights))
    counts = sum((agreement.compare(predicted(model, s), truth(s)) for s in held_out), agreement.Counts())
    maps = train.evaluate(weights, data, "detect", imgsz=192, batch=16, device="cpu", work=work, images=len(held_out))
    return {"recall": counts.tp / (counts.tp + counts.fn), "precision": counts.tp / max(1, counts.tp + counts.fp),
            "map50_95": maps["map50_95"], "map50": maps["map50"], "wall_s": wall if n else 0.0, "cpu_s": cpu if n else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 25, 50, 100])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("learning_curve.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prelabel-learning-") as tmp:
        offline.configure(str(Path(tmp) / "ultralytics"))
        rng = np.random.default_rng(2026)
        pool = [synthetic.make_shifted_scene(rng) for _ in range(max(args.sizes))]
        held_out = [synthetic.make_shifted_scene(rng) for _ in range(100)]
        rows: dict[int, dict[str, float]] = {}
        for n in args.sizes:
            runs = [one(n, pool, held_out, Path(tmp) / f"n{n}-r{r}") for r in range(args.repeats if n else 1)]
            rows[n] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"N={n}: {rows[n]}", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; medians of {args.repeats}\n")
    print("| human annotations | recall@0.5 | precision@0.5 | mAP50-95 | mAP50 | CPU min / run | wall min / run |")
    print("|---|---|---|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | {r['recall']:.2f} | {r['precision']:.2f} | {r['map50_95']:.3f} | {r['map50']:.3f} | "
              f"{r['cpu_s'] / 60:.2f} | {r['wall_s'] / 60:.2f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(rows)
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for key, label in (("recall", "recall@IoU0.5"), ("precision", "precision@IoU0.5"), ("map50_95", "mAP50-95")):
        ax.plot(sizes, [rows[n][key] for n in sizes], marker="o", label=label)
    ax.set_xlabel("human annotations the model was fine-tuned on")
    ax.set_ylabel("on 100 unannotated tasks")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Pre-label quality vs labeling effort (shifted domain)", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
