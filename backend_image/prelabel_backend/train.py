"""The training Job's program: `python -m prelabel_backend.train` (docs/backend.md, "Training Job").

It fine-tunes the served model on the human annotations the operator chose (the data snapshot:
(task, annotation) ids on the training and validation sides), evaluates the candidate and the served
model on the same validation tasks, puts the candidate in the model store (not promoted: the
operator's gate decides) and writes its report as the pod's termination message (JSON, at most
4096 bytes, no secret). A checkpoint goes to the store after every epoch (runs/<run>/last.pt): a pod
killed mid-run is replaced by one that resumes from it, and a run whose candidate is already stored
reports it again without training: a run completes once.

Env (besides the backend's own: LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, LABEL_STUDIO_PUBLIC_URLS,
MODEL_ROOT, MODEL_WEIGHTS, MODEL_DIR, DEVICE; and MODEL_STORE with the AWS_* variables for S3):
TRAIN_SNAPSHOT (the snapshot file), TRAIN_PARENT (a store version; empty: the backend's default model
for the control's task), TRAIN_CONTROL (default the config's first control), TRAIN_EPOCHS (15),
TRAIN_IMGSZ (192), TRAIN_BATCH (16), TRAIN_KEEP_LAST (5), TRAIN_PINNED (comma names never pruned),
TERMINATION_LOG (/dev/termination-log). Exit status 0 with a report, 1 with {"run", "error"}.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import requests

from . import label_config, model_versions, offline, yolo_dataset
from .media import LabelStudioAuth, LabelStudioSource, MediaFetcher
from .settings import Settings

log = logging.getLogger("prelabel_backend.train")
MAX_MESSAGE = 4096  # Kubernetes keeps at most this much of a termination message


class TrainError(Exception):
    """A run that cannot go on; the message says what to fix."""


@dataclass(frozen=True)
class TrainSettings:
    snapshot: Path
    store: str
    parent: str | None = None
    control: str | None = None
    epochs: int = 15
    imgsz: int = 192
    batch: int = 16
    keep_last: int = 5
    pinned: tuple[str, ...] = ()
    termination_log: Path = Path("/dev/termination-log")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainSettings:
        missing = [k for k in ("TRAIN_SNAPSHOT", "MODEL_STORE") if not env.get(k)]
        if missing:
            raise TrainError(f"{' and '.join(missing)} must be set (the operator's Job sets them)")
        try:
            return cls(snapshot=Path(env["TRAIN_SNAPSHOT"]), store=env["MODEL_STORE"], parent=env.get("TRAIN_PARENT") or None,
                       control=env.get("TRAIN_CONTROL") or None, epochs=int(env.get("TRAIN_EPOCHS", 15)),
                       imgsz=int(env.get("TRAIN_IMGSZ", 192)), batch=int(env.get("TRAIN_BATCH", 16)),
                       keep_last=int(env.get("TRAIN_KEEP_LAST", 5)),
                       pinned=tuple(p for p in env.get("TRAIN_PINNED", "").split(",") if p),
                       termination_log=Path(env.get("TERMINATION_LOG", "/dev/termination-log")))
        except ValueError as exc:
            raise TrainError(f"a TRAIN_* number is not a number: {exc}") from None


@dataclass(frozen=True)
class Snapshot:
    run: str
    project: int
    digest: str
    train: tuple[tuple[int, int], ...]
    validation: tuple[tuple[int, int], ...]

    @classmethod
    def read(cls, path: Path) -> Snapshot:
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["run"]), int(raw["project"]), str(raw.get("digest", "")),
                       tuple((int(t), int(a)) for t, a in raw["train"]), tuple((int(t), int(a)) for t, a in raw["validation"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainError(f"the data snapshot {path} cannot be read: {type(exc).__name__}: {exc}") from None


@dataclass
class LabelStudio:
    """The few Label Studio API calls the run needs, with the backend's own authentication."""

    source: LabelStudioSource
    session: requests.Session = field(default_factory=requests.Session)
    timeout: float = 30.0

    def __post_init__(self) -> None:
        self.session.trust_env = False
        self.auth = LabelStudioAuth(self.session, self.timeout, True)

    def get(self, path: str) -> dict[str, Any]:
        try:
            answer = self.session.get(f"{self.source.url}{path}", headers=self.auth.header(self.source), timeout=self.timeout)
        except requests.RequestException as exc:
            raise TrainError(f"Label Studio at {self.source.url} could not be reached for {path}: {type(exc).__name__}") from None
        if answer.status_code in (401, 403):
            raise TrainError(f"Label Studio refused the API key for {path} (HTTP {answer.status_code}): check the Secret of spec.labelStudio.apiKeySecretRef")
        if answer.status_code == 404:
            raise TrainError(f"Label Studio has no {path.strip('/')} (HTTP 404): deleted since the run started?")
        if answer.status_code != 200:
            raise TrainError(f"Label Studio answered {path} with HTTP {answer.status_code}")
        body: dict[str, Any] = answer.json()
        return body


def fit_message(message: dict[str, Any], limit: int = MAX_MESSAGE) -> str:
    """The report as JSON of at most `limit` bytes (Kubernetes keeps 4096 of a termination message).
    Too long (many classes): per-class recall is kept, on both sides, for the classes whose recall fell
    most from the current model to the candidate, as many as fit. The gate refuses a candidate for the
    classes that fell past maxRecallDrop, and any such class falls more than one left out, so its
    verdict is the one the whole report gives. The version's record in the store keeps every class."""
    text = json.dumps(message, separators=(",", ":"))
    metrics = message.get("metrics") or {}
    current = dict((metrics.get("current") or {}).get("recall") or {})
    candidate = dict((metrics.get("candidate") or {}).get("recall") or {})
    names = sorted(set(current) | set(candidate), key=lambda n: (candidate.get(n, 0.0) - current.get(n, 0.0), n))
    kept, size = len(names), len(text.encode())
    while size > limit and kept > 0:
        kept = min(kept - 1, int(kept * limit / size))  # about as many as fit, then one by one
        keep = set(names[:kept])
        cut = {**message, "truncated": f"per-class recall of the {kept} classes (of {len(names)}) whose recall fell most; "
                                       "the version's record in the store has every class",
               "metrics": {side: {**m, "recall": {n: v for n, v in (m.get("recall") or {}).items() if n in keep}} if m else m
                           for side, m in metrics.items()}}
        text = json.dumps(cut, separators=(",", ":"))
        size = len(text.encode())
    if size > limit:  # no recall left and still too long: say so rather than cut the JSON
        text = json.dumps({"run": message.get("run"), "error": f"the run's report is over {limit} bytes even without per-class recall"})
    return text


def write_message(path: Path, message: dict[str, Any]) -> None:
    """Writes the report (fit_message) as the termination message, and prints it."""
    text = fit_message(message)
    try:
        path.write_text(text)
    except OSError as exc:
        log.warning("the termination message could not be written to %s: %s", path, exc)
    print(text, flush=True)


# -- the run ----------------------------------------------------------------------------------------
def _examples(ls: LabelStudio, media: MediaFetcher, control: label_config.Control, project: int,
              pairs: tuple[tuple[int, int], ...]) -> tuple[list[yolo_dataset.Example], list[str]]:
    """The annotated images, and why any could not be had (task -> reason)."""
    examples, problems = [], []
    for task_id, annotation_id in pairs:
        try:
            task = ls.get(f"/api/tasks/{task_id}/")
            annotation = ls.get(f"/api/annotations/{annotation_id}/")
            if int(annotation.get("task") or task_id) != task_id:
                raise TrainError(f"annotation {annotation_id} belongs to task {annotation.get('task')}, not {task_id}")
            ref = (task.get("data") or {}).get(control.data_key)
            if not isinstance(ref, str) or not ref:
                raise TrainError(f"task {task_id} has no {control.data_key!r} field")
            data = media.fetch(ref, task_id, str(project))
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if image is None:
                raise TrainError(f"task {task_id}: {ref} is not an image")
        except Exception as exc:  # noqa: BLE001 - each task's reason is collected; the run decides whether to go on
            problems.append(f"task {task_id}: {exc}")
            continue
        suffix = Path(ref.split("?")[0]).suffix.lower() or ".png"
        examples.append(yolo_dataset.Example(task_id, data, int(image.shape[1]), int(image.shape[0]), annotation.get("result") or [],
                                             suffix if suffix in (".png", ".jpg", ".jpeg", ".bmp", ".webp") else ".png"))
    return examples, problems


def fine_tune(parent: Path, data: Path, work: Path, *, epochs: int, imgsz: int, batch: int, device: str,
              resume: Path | None = None, on_save: Callable[[Path], None] | None = None) -> Path:
    """Fine-tunes `parent` on `data` (ultralytics' train: seed 0, deterministic, no augmentation
    settings of ours, validation only after the last epoch), or resumes the checkpoint `resume`
    (ultralytics' resume: the same dataset path); `on_save(last.pt)` after each epoch. Returns the
    final weights under `work`, the optimizer stripped (what serves). bench/learning_curve.py calls
    this too, so the benchmark measures the Job's own training."""
    from ultralytics.models import YOLO
    from ultralytics.utils.torch_utils import strip_optimizer

    model = YOLO(str(resume or parent))
    if on_save is not None:
        model.add_callback("on_model_save", lambda trainer: on_save(Path(trainer.last)))
    if resume is not None:
        model.train(resume=True, workers=0)
    else:
        model.train(data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device, workers=0, seed=0, deterministic=True,
                    project=str(work / "runs"), name="run", exist_ok=True, plots=False, val=False, verbose=False, amp=False)
    final = work / "runs" / "run" / "weights" / "last.pt"
    strip_optimizer(str(final))
    return final


def evaluate(weights: Path, data: Path, task: str, *, imgsz: int, batch: int, device: str, work: Path, images: int) -> dict[str, Any]:
    """ultralytics' val on the validation split: box (mask for segment) mAP50-95, mAP50 and recall per
    class; for classify, top-1 accuracy stands for both mAPs and per-class recall is not given."""
    from ultralytics.models import YOLO

    model = YOLO(str(weights))
    found = model.val(data=str(data), split="val", imgsz=imgsz, batch=batch, device=device, workers=0, plots=False,
                      verbose=False, project=str(work / "val"), name=weights.stem, exist_ok=True)
    if task == "classify":
        top1 = float(found.top1)
        return {"map50_95": round(top1, 4), "map50": round(top1, 4), "recall": {}, "images": images}
    metric = found.seg if task == "segment" else found.box
    names = model.names
    recall = {str(names[int(c)]): round(float(metric.class_result(i)[1]), 4) for i, c in enumerate(found.ap_class_index)}
    return {"map50_95": round(float(metric.map), 4), "map50": round(float(metric.map50), 4), "recall": recall, "images": images}


def _record_metrics(candidate: dict[str, Any], current: dict[str, Any]) -> dict[str, float]:
    flat = {"map50_95": candidate["map50_95"], "map50": candidate["map50"], "validation_images": float(candidate["images"]),
            "current_map50_95": current["map50_95"], "current_map50": current["map50"]}
    flat.update({f"recall/{k}": v for k, v in candidate["recall"].items()})
    flat.update({f"current_recall/{k}": v for k, v in current["recall"].items()})
    return flat


def _report_from(record: model_versions.ModelVersion, snapshot: Snapshot) -> dict[str, Any]:
    m = record.metrics

    def side(prefix: str) -> dict[str, Any]:
        recall = {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith(f"{prefix}recall/")}
        return {"map50_95": m.get(f"{prefix}map50_95", 0.0), "map50": m.get(f"{prefix}map50", 0.0), "recall": recall,
                "images": int(m.get("validation_images", 0))}
    return {"run": snapshot.run, "candidate": record.name, "parent": record.parent or "packaged", "task": record.task,
            "snapshot": snapshot.digest, "samples": {"train": len(snapshot.train), "validation": len(snapshot.validation)},
            "metrics": {"candidate": side(""), "current": side("current_")}, "reported_again": True}


def run(s: TrainSettings, settings: Settings) -> dict[str, Any]:
    started = time.monotonic()
    snapshot = Snapshot.read(s.snapshot)
    store = model_versions.open_store(s.store, settings.model_dir / "store-cache")
    done = [v for v in store.list() if v.provenance.run == snapshot.run]
    if done:  # a pod of this Job finished the run before it was replaced: report, never train twice
        log.info("run %s already put %s in the store: reporting it", snapshot.run, done[-1].name)
        return _report_from(done[-1], snapshot)
    source = MediaFetcher(settings).source(str(snapshot.project))
    if source is None or not source.token:
        raise TrainError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set (the Job takes the key from spec.labelStudio.apiKeySecretRef)")
    ls, media = LabelStudio(source), MediaFetcher(settings)
    config = label_config.parse(str(ls.get(f"/api/projects/{snapshot.project}/").get("label_config") or ""), settings)
    controls = [c for c in config.controls if s.control in (None, c.name)]
    if not controls:
        raise TrainError(f"the project's labeling config has no control {s.control!r} the backend serves")
    control = controls[0]

    work = settings.model_dir / "train" / snapshot.run  # the same path in every pod of the Job: resume needs it
    if s.parent:
        parent_path, parent_name = store.get(s.parent), s.parent
    else:
        parent_path = label_config.model_path(settings, control.model_file)
        parent_name = parent_path.name
    from ultralytics.models import YOLO

    names = {int(k): str(v) for k, v in YOLO(str(parent_path)).names.items()}
    splits = {}
    for split, pairs in (("train", snapshot.train), ("val", snapshot.validation)):
        examples, problems = _examples(ls, media, control, snapshot.project, pairs)
        if problems:
            log.warning("%d of %d %s tasks could not be had: %s", len(problems), len(pairs), split, "; ".join(problems[:5]))
        if not examples:
            side = "validation" if split == "val" else "training"
            raise TrainError(f"no {side} images could be fetched: {len(problems)} of {len(pairs)} failed: {problems[0] if problems else 'none listed'}")
        splits[split] = examples
    data, written = yolo_dataset.write(work / "data", control, names, splits)
    if written.skipped:
        log.warning("labels no class of the model maps to were skipped: %s", dict(written.skipped))

    device = settings.device
    checkpoint = work / "runs" / "run" / "weights" / "last.pt"
    resumed_from = 0
    if store.get_checkpoint(snapshot.run, "last.pt", checkpoint):
        import torch

        resumed_from = int(torch.load(checkpoint, map_location="cpu", weights_only=False).get("epoch", -1)) + 1
        log.info("resuming run %s from its checkpoint after epoch %d", snapshot.run, resumed_from)
    if resumed_from >= s.epochs:  # the last epoch's checkpoint: the pod died before storing the candidate
        from ultralytics.utils.torch_utils import strip_optimizer

        strip_optimizer(str(checkpoint))
        candidate_path = checkpoint
    else:
        candidate_path = fine_tune(parent_path, data, work, epochs=s.epochs, imgsz=s.imgsz, batch=s.batch, device=device,
                                   resume=checkpoint if resumed_from else None,
                                   on_save=lambda last: store.put_checkpoint(snapshot.run, last))
    images = written.images["val"]
    current = evaluate(parent_path, data, control.task, imgsz=s.imgsz, batch=s.batch, device=device, work=work, images=images)
    candidate = evaluate(candidate_path, data, control.task, imgsz=s.imgsz, batch=s.batch, device=device, work=work, images=images)
    record = model_versions.new_version(candidate_path, task=control.task, parent=s.parent,
                                        metrics=_record_metrics(candidate, current),
                                        provenance=model_versions.Provenance(run=snapshot.run, data_snapshot=snapshot.digest))
    store.put(candidate_path, record)
    pruned = store.retain(s.keep_last, pinned=[*s.pinned, record.name])
    store.drop_checkpoints(snapshot.run)
    report: dict[str, Any] = {
        "run": snapshot.run, "candidate": record.name, "parent": parent_name, "task": control.task, "snapshot": snapshot.digest,
        "samples": {"train": written.images["train"], "validation": images}, "metrics": {"candidate": candidate, "current": current},
        "seconds": round(time.monotonic() - started, 1), "epochs": s.epochs}
    if resumed_from:
        report["resumed_from_epoch"] = resumed_from
    if written.skipped:
        report["skipped_labels"] = dict(written.skipped)
    if pruned:
        report["pruned"] = len(pruned)
    return report


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    settings = Settings.from_env()
    offline.configure(str(settings.model_dir / "ultralytics"))
    termination = Path(os.environ.get("TERMINATION_LOG", "/dev/termination-log"))
    run_name = ""
    try:
        s = TrainSettings.from_env(os.environ)
        termination = s.termination_log
        run_name = Snapshot.read(s.snapshot).run
        report = run(s, settings)
    except (TrainError, label_config.ConfigError, yolo_dataset.UnsupportedTask, model_versions.StoreError) as exc:
        write_message(termination, {"run": run_name, "error": str(exc)})
        sys.exit(1)
    except Exception as exc:
        log.exception("the training run failed")
        write_message(termination, {"run": run_name, "error": f"{type(exc).__name__}: {exc}"[:1500]})
        sys.exit(1)
    write_message(termination, report)


if __name__ == "__main__":
    main()
