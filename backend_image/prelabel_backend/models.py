"""Loading, caching and running ultralytics models: once per process, thread-safe, batched.

ultralytics' predictor keeps per-call state on the model object, so one model is never run by two
threads at once: each model has its own lock. Batching the images of a request into one call
matters less on CPU than keeping every core busy: ultralytics sets torch to one thread on two
cores at its first predict, so the thread count is set again after the warm-up.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import offline
from .label_config import ConfigError, model_path
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    path: Path
    task: str
    names: list[str]
    sha256: str
    imgsz: int | tuple[int, int] | None
    model: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    load_seconds: float = 0.0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class ModelStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[tuple[Path, str], LoadedModel] = {}
        self._lock = threading.Lock()
        offline.configure(str(settings.model_dir / "ultralytics"))

    def get(self, model_file: str, purpose: str = "predict") -> LoadedModel:
        """purpose "track" gets an instance of its own: ultralytics' track() registers tracker
        callbacks on the model object for good, which would change every later predict()."""
        path = model_path(self.settings, model_file)
        with self._lock:
            loaded = self._models.get((path, purpose))
            if loaded is None:
                loaded = self._load(path)
                self._models[(path, purpose)] = loaded
            return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def _load(self, path: Path) -> LoadedModel:
        from ultralytics.models import YOLO

        started = time.monotonic()
        try:
            model = YOLO(str(path))
        except Exception as exc:
            raise ConfigError(f"model file {path.name!r} could not be loaded: {exc}") from exc
        names = [str(model.names[i]) for i in sorted(model.names)]
        imgsz = (getattr(model, "overrides", {}) or {}).get("imgsz")
        loaded = LoadedModel(path=path, task=str(model.task), names=names, sha256=file_sha256(path), imgsz=imgsz, model=model)
        # Warm up now, not on the first request: the first call imports torchvision, fuses layers, ...
        self._predict(loaded, [np.zeros((64, 64, 3), np.uint8)], conf=0.5)
        self._set_threads()
        loaded.load_seconds = time.monotonic() - started
        log.info("loaded model %s (task %s, classes %s) in %.2fs", path.name, loaded.task, names, loaded.load_seconds)
        return loaded

    def _set_threads(self) -> None:
        # Each model's first predict runs ultralytics' select_device, which resets torch's threads.
        import torch

        torch.set_num_threads(self.settings.torch_threads or usable_cpus())

    def predict(self, loaded: LoadedModel, images: list[np.ndarray], conf: float) -> list[Any]:
        """Runs the model on BGR images, in batches, holding the model's lock; returns ultralytics Results."""
        results: list[Any] = []
        size = self.settings.batch_size
        for start in range(0, len(images), size):
            with loaded.lock:
                results.extend(self._predict(loaded, images[start : start + size], conf))
        return results

    def track(self, loaded: LoadedModel, frames: list[np.ndarray], conf: float, tracker: str) -> list[Any]:
        """Runs the tracker through one video's frames, in order, with a fresh tracker state."""
        kwargs: dict[str, Any] = {"conf": conf, "verbose": False, "device": self.settings.device, "tracker": tracker}
        if loaded.imgsz:
            kwargs["imgsz"] = loaded.imgsz
        with loaded.lock:
            # persist=False on the first frame starts new tracks; True keeps them through the video.
            return [loaded.model.track(frame, persist=index > 0, **kwargs)[0] for index, frame in enumerate(frames)]

    def _predict(self, loaded: LoadedModel, images: list[np.ndarray], conf: float) -> list[Any]:
        kwargs: dict[str, Any] = {"conf": conf, "verbose": False, "device": self.settings.device}
        if loaded.imgsz:
            kwargs["imgsz"] = loaded.imgsz
        if loaded.task == "classify":
            kwargs.pop("conf")
        return list(loaded.model.predict(images, **kwargs))
