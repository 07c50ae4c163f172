"""Loading, caching and running ultralytics models: once per process, thread-safe, on the fastest runtime.

ultralytics' predictor keeps per-call state on the model object, so one model is never run by two
threads at once: each model has its own lock, and its runtime gets every CPU this process has
(cpus.usable_cpus: affinity and cgroup quota). A `.pt` is exported to ONNX and OpenVINO (runtimes.py,
cached by the weights' sha256) and the runtime and batch size that serve it are chosen at load by
timing each on the model's own input size: "by measurement, not assumption" (issue 13).
The identity of a model (sha256, hence model_version) is always its weight file's, whatever runs it.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import offline, runtimes
from .cpus import usable_cpus
from .label_config import ConfigError, model_path
from .settings import Settings

log = logging.getLogger(__name__)

BATCHES = (1, 4)  # batch sizes tried at load: on CPU a large batch is slower per image than a few
MEASURE_RUNS = 5  # timed calls per (runtime, batch), round-robin; the median counts


@dataclass
class LoadedModel:
    path: Path  # the weight file (or export) a control names
    task: str
    names: list[str]
    sha256: str  # of `path`: model_version follows the weights, never the runtime
    imgsz: int | tuple[int, int] | list[int] | None
    model: Any
    runtime: str = "torch"  # what runs it: torch, onnx or openvino
    batch: int = 1  # images per model call
    lock: threading.Lock = field(default_factory=threading.Lock)
    load_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # "<runtime>/<batch>" -> seconds per image, at load
    last_used: float = field(default_factory=time.monotonic)


def _probe_image(imgsz: int | tuple[int, int] | list[int] | None) -> np.ndarray:
    """A 4:3 image at the model's input size (640x480 for 640): the shape of a typical photo."""
    side = max(imgsz) if isinstance(imgsz, (tuple, list)) else (imgsz or 640)
    return np.random.default_rng(0).integers(0, 255, (side * 3 // 4, side, 3), dtype=np.uint8)


class ModelStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: dict[tuple[Path, str], LoadedModel] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[Path, str], threading.Lock] = {}
        self._choices: dict[str, tuple[str, int, dict[str, float]]] = {}  # sha256 -> runtime, batch, timings
        self.threads = settings.torch_threads or usable_cpus()
        offline.configure(str(settings.model_dir / "ultralytics"))
        if settings.model_idle_unload > 0:
            threading.Thread(target=self._unload_idle_loop, name="unload-idle", daemon=True).start()

    def get(self, model_file: str, purpose: str = "predict") -> LoadedModel:
        """purpose "track" gets an instance of its own: ultralytics' track() registers tracker
        callbacks on the model object for good, which would change every later predict()."""
        path = model_path(self.settings, model_file)
        key = (path, purpose)
        with self._lock:
            loaded = self._models.get(key)
            if loaded is None:
                loading = self._loading.setdefault(key, threading.Lock())
        if loaded is None:
            with loading:  # one load per model; loads of different models do not wait on each other
                with self._lock:
                    loaded = self._models.get(key)
                if loaded is None:
                    loaded = self._load(path)
                    with self._lock:
                        self._models[key] = loaded
        loaded.last_used = time.monotonic()
        return loaded

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Drops the models no request used for MODEL_IDLE_UNLOAD seconds; returns their file names."""
        now = time.monotonic() if now is None else now
        dropped = []
        with self._lock:
            for key, loaded in list(self._models.items()):
                if now - loaded.last_used >= self.settings.model_idle_unload and not loaded.lock.locked():
                    del self._models[key]
                    dropped.append(loaded.path.name)
        if dropped:
            gc.collect()
            log.info("unloaded idle models: %s", ", ".join(dropped))
        return dropped

    def _unload_idle_loop(self) -> None:
        while True:
            time.sleep(max(1.0, min(60.0, self.settings.model_idle_unload / 4)))
            self.unload_idle()

    def _open(self, path: Path, runtime: str, task: str | None, imgsz: Any) -> Any:
        """An ultralytics model on `runtime`, warmed up (the first call imports torchvision, builds
        the backend, fuses layers) and set to this process's thread count."""
        from ultralytics.models import YOLO

        model = YOLO(str(path), task=task) if task else YOLO(str(path))
        kwargs: dict[str, Any] = {"verbose": False, "device": self.settings.device}
        if imgsz:
            kwargs["imgsz"] = imgsz
        model.predict([np.zeros((64, 64, 3), np.uint8)], **kwargs)
        runtimes.set_threads(model, runtime, self.threads)
        return model

    def _load(self, path: Path) -> LoadedModel:
        started = time.monotonic()
        own = runtimes.runtime_of(path)
        try:
            model = self._open(path, own, None, None)
        except Exception as exc:
            raise ConfigError(f"model file {path.name!r} could not be loaded: {exc}") from exc
        names = [str(model.names[i]) for i in sorted(model.names)]
        overrides = getattr(model, "overrides", {}) or {}
        imgsz = overrides.get("imgsz") if own == "torch" else getattr(model.predictor.model, "imgsz", None)
        loaded = LoadedModel(path=path, task=str(model.task), names=names, sha256=runtimes.file_sha256(path), imgsz=imgsz,
                             model=model, runtime=own)
        candidates = {own: model}
        if own == "torch" and self.settings.device == "cpu":
            wanted: tuple[str, ...] = runtimes.RUNTIMES[1:] if self.settings.runtime == "auto" else (self.settings.runtime,)
            remembered = self._remembered(loaded.sha256)
            if remembered is not None and remembered[0] in (*wanted, "torch"):
                self._choices[loaded.sha256] = remembered  # measured by an earlier start of this pod
                wanted = tuple(r for r in wanted if r == remembered[0])
            for runtime in (r for r in wanted if r != "torch"):
                try:
                    exported = runtimes.export(path, loaded.sha256, runtime, self.settings.runtime_caches,
                                               self.settings.model_dir / "runtimes", imgsz)
                    candidates[runtime] = self._open(exported, runtime, loaded.task, imgsz)
                except Exception as exc:  # noqa: BLE001 - a runtime that cannot run this model leaves the others
                    log.warning("model %s: no %s runtime (%s: %s); it runs on the others", path.name, runtime,
                                type(exc).__name__, exc)
            if self.settings.runtime not in ("auto", "torch") and self.settings.runtime in candidates:
                candidates = {self.settings.runtime: candidates[self.settings.runtime]}
        self._choose(loaded, candidates)
        loaded.load_seconds = time.monotonic() - started
        log.info("loaded model %s (task %s, classes %s) on %s, batch %d, %d threads, in %.2fs; s/image at load: %s",
                 path.name, loaded.task, names, loaded.runtime, loaded.batch, self.threads, loaded.load_seconds,
                 {k: round(v, 4) for k, v in loaded.timings.items()})
        return loaded

    def _choice_file(self, sha256: str) -> Path:
        # Keyed by what the measurement depends on: this CPU's threads, the runtime and batch settings.
        tag = f"{self.threads}-{self.settings.runtime}-{self.settings.batch_size}"
        return self.settings.model_dir / "runtimes" / sha256 / f"choice-{tag}.json"

    def _remembered(self, sha256: str) -> tuple[str, int, dict[str, float]] | None:
        try:
            found = json.loads(self._choice_file(sha256).read_text())
            return str(found["runtime"]), int(found["batch"]), {str(k): float(v) for k, v in found["timings"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def _remember(self, loaded: LoadedModel) -> None:
        """The measured choice, for the next start in this pod (MODEL_DIR is its emptyDir)."""
        path = self._choice_file(loaded.sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"runtime": loaded.runtime, "batch": loaded.batch, "timings": loaded.timings}))
        except OSError as exc:
            log.warning("could not keep the runtime choice of %s: %s", loaded.path.name, exc)

    def _choose(self, loaded: LoadedModel, candidates: dict[str, Any]) -> None:
        """Times each candidate at each batch size on a photo-shaped probe and keeps the fastest
        (seconds per image), unless RUNTIME and BATCH_SIZE leave nothing to choose."""
        batches = (self.settings.batch_size,) if self.settings.batch_size else BATCHES
        known = self._choices.get(loaded.sha256)
        if known is not None and known[0] in candidates:  # measured before: a second instance, a restart
            loaded.runtime, loaded.batch, loaded.timings = known[0], known[1], dict(known[2])
            loaded.model = candidates[loaded.runtime]
            runtimes.set_threads(loaded.model, loaded.runtime, self.threads)
            return
        if len(candidates) == 1 and len(batches) == 1:
            loaded.runtime, loaded.model = next(iter(candidates.items()))
            loaded.batch = batches[0]
            return
        probe = _probe_image(loaded.imgsz)
        trials = {runtime: LoadedModel(path=loaded.path, task=loaded.task, names=loaded.names, sha256=loaded.sha256,
                                       imgsz=loaded.imgsz, model=model, runtime=runtime)
                  for runtime, model in candidates.items()}
        runs: dict[str, list[float]] = {f"{r}/{b}": [] for r in trials for b in batches}
        for key in runs:  # the first call at a new shape pays set-up
            runtime, batch = key.split("/")
            self._predict(trials[runtime], [probe] * int(batch), conf=0.25)
        for _ in range(MEASURE_RUNS):  # round-robin, so that a burst of load elsewhere hits all alike
            for key, times in runs.items():
                runtime, batch = key.split("/")
                started = time.perf_counter()
                self._predict(trials[runtime], [probe] * int(batch), conf=0.25)
                times.append((time.perf_counter() - started) / int(batch))
        loaded.timings = {key: statistics.median(times) for key, times in runs.items()}
        trials.clear()
        best = min(loaded.timings, key=loaded.timings.__getitem__)
        runtime, batch = best.split("/")
        loaded.runtime, loaded.model, loaded.batch = runtime, candidates[runtime], int(batch)
        self._choices[loaded.sha256] = (loaded.runtime, loaded.batch, dict(loaded.timings))
        self._remember(loaded)
        candidates.clear()  # the others are dropped here
        gc.collect()
        runtimes.set_threads(loaded.model, loaded.runtime, self.threads)  # torch's count is process-wide

    def predict(self, loaded: LoadedModel, images: list[np.ndarray], conf: float) -> list[Any]:
        """Runs the model on BGR images, in batches, holding the model's lock; returns ultralytics Results."""
        results: list[Any] = []
        size = loaded.batch
        loaded.last_used = time.monotonic()
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
