"""Loading, caching and running ultralytics models: once per process, thread-safe, on the fastest runtime.

ultralytics' predictor keeps per-call state on the model object, so one model object is never run by
two threads at once: a call takes an idle one (LoadedModel.idle). Its runtime gets every CPU this
process has (cpus.usable_cpus: affinity and cgroup quota); on OpenVINO, split into streams that run
a batch's images at once (cpus.inference_streams), with a twin model object per extra stream on the
same compiled network, so that two calls keep the streams busy through each other's pre- and
post-processing. A `.pt` is exported to ONNX and OpenVINO (runtimes.py, cached by the weights'
sha256); the runtime and batch size that serve it are chosen by timing each on the model's own
input size (runtime_choice.py). Until measured, a model serves on a provisional runtime; a child
process (`python -m prelabel_backend.model_store`) opens the candidates and times them, and the
store opens the fastest alone and switches the model to it between two calls: what the timing
loaded leaves with the child (it held about 0.9 GB for as long as the backend ran).
The identity of a model (sha256, hence model_version) is always its weight file's, whatever runs it.

Without ultralytics (the lean image, INFERENCE=lean) lean.py runs the exports instead: a `.pt` serves
through an ONNX or OpenVINO export found in a cache (the packaged models' are in the image), since
nothing can export it; one without an export is refused with what to do (a ConfigError).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import json
import logging
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import lean, memory, offline, runtime_choice, runtimes
from .cpus import inference_streams, usable_cpus
from .label_config import ConfigError, model_path
from .settings import Settings

log = logging.getLogger(__name__)
Turn = Callable[[], contextlib.AbstractContextManager[object]]  # what a model call is run inside (priority.Gate.turn)


@dataclass
class LoadedModel:
    path: Path  # the weight file (or export) a control names
    task: str
    names: list[str]
    sha256: str  # of `path`: model_version follows the weights, never the runtime
    imgsz: int | tuple[int, int] | list[int] | None
    model: Any
    runtime: str = "torch"  # what runs it: torch, onnx or openvino (lean.py's Export: onnx or openvino)
    batch: int = 1  # images per model call
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by track() and by the runtime switch
    # The model objects calls run on, one call each at a time: `model` alone, or with OpenVINO's streams
    # also its twins (runtimes.twins); `idle` holds those not running now.
    instances: list[Any] = field(default_factory=list)
    idle: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    load_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # "<runtime>/<batch>" -> seconds per image, at load
    measured: bool = True  # False while it serves on a provisional runtime, before the measurement
    last_used: float = field(default_factory=time.monotonic)

    def serve_on(self, model: Any, runtime: str, streams: int) -> None:
        """model (and its twins, one per stream beyond the first) serves the next calls; calls running
        now finish on what they hold."""
        self.model, self.runtime = model, runtime
        self.instances = [model, *runtimes.twins(model, streams - 1)]
        idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for instance in self.instances:
            idle.put(instance)
        self.idle = idle

    def running(self) -> bool:
        return self.lock.locked() or self.idle.qsize() < len(self.instances)


class ModelStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # lean.py runs the models: asked for, or ultralytics not installed (the lean image)
        self.lean = settings.inference == "lean" or (settings.inference == "auto" and importlib.util.find_spec("ultralytics") is None)
        self._models: dict[tuple[Path, str], LoadedModel] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[Path, str], threading.Lock] = {}
        self._background: dict[Path, threading.Thread] = {}  # loads /setup started and did not wait for
        self._failed: dict[Path, str] = {}  # why a background load failed, until /setup reports it
        self._hashes: dict[tuple[Path, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 of a file not loaded
        self.threads = settings.torch_threads or usable_cpus()
        # Images of a batch run at once, up to the largest batch a model may serve (OpenVINO's streams).
        self.streams = inference_streams(self.threads, settings.batch_size or max(runtime_choice.BATCHES))
        # Exports of mounted weights (and the runtime choices) are written here at first load; looked up
        # after the read-only caches (RUNTIME_CACHE: the packaged models' exports).
        self._export_dir = settings.model_dir / "runtimes"
        self._export_dirs = [*settings.runtime_caches, self._export_dir]
        self._choices = runtime_choice.Choices(self._export_dir, self.threads, self.streams, settings.runtime, settings.batch_size)
        if not self.lean:
            offline.configure(str(settings.model_dir / "ultralytics"))
        # Models that serve on a provisional runtime until measured, one at a time, in the background.
        self._measurements = runtime_choice.Measurements(self._measure)
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
                    if not loaded.measured:
                        self._measurements.put(loaded)
        loaded.last_used = time.monotonic()
        return loaded

    def ready(self, model_file: str) -> bool:
        """Whether the model serves now, without loading it (raises ConfigError for a file not found)."""
        path = model_path(self.settings, model_file)
        with self._lock:
            return (path, "predict") in self._models

    def load_in_background(self, model_file: str) -> None:
        """Starts loading the model on a thread of its own (once; a second call while it loads does
        nothing): /setup answers within Label Studio's 3 s read timeout (label-studio-ml-backend #636)
        while a load takes seconds to minutes (an export to ONNX and OpenVINO). A failure is kept for
        `load_failure`."""
        path = model_path(self.settings, model_file)
        with self._lock:
            running = self._background.get(path)
            if running is not None and running.is_alive():
                return

            def load() -> None:
                try:
                    self.get(model_file)
                except ConfigError as exc:
                    with self._lock:
                        self._failed[path] = str(exc)
                    log.warning("background load of %s failed: %s", model_file, exc)

            thread = threading.Thread(target=load, name=f"load-{path.name}", daemon=True)
            self._background[path] = thread
            thread.start()

    def load_failure(self, model_file: str) -> str | None:
        """Why the last background load of the model failed (once: the next call to
        `load_in_background` tries again), or None."""
        path = model_path(self.settings, model_file)
        with self._lock:
            return self._failed.pop(path, None)

    def sha256(self, model_file: str) -> str:
        """The weights' sha256 (the model version's input), from the loaded model or hashed from the
        file without loading it (cached by size and modification time): the same either way."""
        path = model_path(self.settings, model_file)
        with self._lock:
            loaded = self._models.get((path, "predict")) or self._models.get((path, "track"))
        if loaded is not None:
            return loaded.sha256
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._hashes.get(key)
        if known is None:
            known = runtimes.file_sha256(path)
            with self._lock:
                self._hashes[key] = known
        return known

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Drops the models no request used for MODEL_IDLE_UNLOAD seconds; returns their file names."""
        now = time.monotonic() if now is None else now
        dropped = []
        with self._lock:
            for key, loaded in list(self._models.items()):
                if now - loaded.last_used >= self.settings.model_idle_unload and not loaded.running():
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
        the backend, fuses layers) and set to this process's thread count; lean, a lean.Export."""
        if self.lean:
            export = lean.Export.open(path, self.threads)
            export.predict([np.zeros((64, 64, 3), np.uint8)])  # the runtime's first call allocates its buffers
            return export
        from ultralytics.models import YOLO

        model = YOLO(str(path), task=task) if task else YOLO(str(path))
        kwargs: dict[str, Any] = {"verbose": False, "device": self.settings.device}
        if imgsz:
            kwargs["imgsz"] = imgsz
        model.predict([np.zeros((64, 64, 3), np.uint8)], **kwargs)
        runtimes.set_threads(model, runtime, self.threads, self.streams)
        return model

    def _wanted(self, own: str) -> tuple[str, ...]:
        """The runtimes a model may serve on: an export runs as it is; a .pt on CPU on RUNTIME's (lean:
        on its exports only)."""
        if own != "torch" or (self.settings.device != "cpu" and not self.lean):
            return (own,)
        exports = tuple(r for r in runtimes.RUNTIMES if r != "torch") if self.lean else runtimes.RUNTIMES
        return exports if self.settings.runtime == "auto" else (self.settings.runtime,)

    def _source(self, path: Path, sha256: str, runtime: str) -> Path:
        """The file `runtime` runs for the weights at path: the .pt itself, or its export (cached, or
        made now: seconds, the first load of a mounted .pt)."""
        if runtime == "torch" or runtimes.runtime_of(path) == runtime:
            return path
        if self.lean:  # nothing here can export: torch is not installed
            found = runtimes.cached(sha256, runtime, self._export_dirs)
            if found is None:
                raise ConfigError(f"model file {path.name!r} has no {runtime} export here, and this image serves exports "
                                  f"only (no torch): mount its .onnx or *_openvino_model export beside it, put one in "
                                  f"RUNTIME_CACHE under {sha256[:12]}..., or serve it with the full image")
            return found
        return (runtimes.cached(sha256, runtime, self._export_dirs)
                or runtimes.export(path, sha256, runtime, self.settings.runtime_caches, self._export_dir,
                                   runtimes.trained_imgsz(path)))

    def _plan(self, own: str, sha256: str) -> tuple[str, int, dict[str, float], bool]:
        """(runtime, batch, timings, final) to open the model with: runtime_choice.plan, among the
        runtimes the model may serve on, with what was measured or remembered for its weights."""
        return runtime_choice.plan(self._wanted(own), runtime_choice.batch_sizes(self.settings.batch_size), self._choices.known(sha256),
                                   lambda runtime: runtimes.cached(sha256, runtime, self._export_dirs) is not None)

    def _load(self, path: Path) -> LoadedModel:
        started = time.monotonic()
        own = runtimes.runtime_of(path)
        sha256 = runtimes.file_sha256(path)
        runtime, batch, timings, final = self._plan(own, sha256)
        try:
            source = self._source(path, sha256, runtime)
            model = self._open(source, runtime, None, None)
        except ConfigError:
            raise
        except Exception as exc:
            if runtime == own or (self.lean and own == "torch"):
                raise ConfigError(f"model file {path.name!r} could not be loaded: {exc}") from exc
            log.warning("model %s: no %s runtime (%s: %s); it runs on %s", path.name, runtime, type(exc).__name__, exc, own)
            runtime, batch, timings = own, self.settings.batch_size or 1, {}
            try:
                model = self._open(path, own, None, None)
            except Exception as exc2:
                raise ConfigError(f"model file {path.name!r} could not be loaded: {exc2}") from exc2
        names = list(model.names) if self.lean else [str(model.names[i]) for i in sorted(model.names)]
        if self.lean:  # the export's own input size, an int for a square one (as below)
            imgsz = model.imgsz[0] if model.imgsz[0] == model.imgsz[1] else model.imgsz
        elif runtime == "torch":
            imgsz = (getattr(model, "overrides", {}) or {}).get("imgsz")
        else:  # an export's own input size, [s, s] for a square s (what the .pt's training imgsz s gives)
            imgsz = getattr(model.predictor.model, "imgsz", None)
            if isinstance(imgsz, (list, tuple)) and len(set(imgsz)) == 1:
                imgsz = int(imgsz[0])
        loaded = LoadedModel(path=path, task=str(model.task), names=names, sha256=sha256, imgsz=imgsz, model=model,
                             runtime=runtime, batch=batch, timings=timings, measured=final)
        loaded.serve_on(model, runtime, self.streams)
        loaded.load_seconds = time.monotonic() - started
        memory.trim()
        log.info("loaded model %s (task %s, classes %s) on %s, batch %d%s, %d threads (%d streams), in %.2fs; s/image at load: %s",
                 path.name, loaded.task, names, loaded.runtime, loaded.batch, "" if final else " (until measured)",
                 self.threads, self.streams, loaded.load_seconds, {k: round(v, 4) for k, v in loaded.timings.items()})
        return loaded

    def measurements_held(self) -> contextlib.AbstractContextManager[None]:
        """Measurements wait while this is held (the default models load first: /health is UP sooner)."""
        return self._measurements.held()

    def settle(self) -> None:
        """Waits until every queued measurement is done (tests, the bench)."""
        self._measurements.settle()

    def _measure(self, models: list[LoadedModel]) -> None:
        """Times each runtime the models may serve on at each batch size on a photo-shaped probe (those
        not measured yet: all in one child process) and switches each model to its fastest (seconds
        per image), between two of its calls."""
        started = time.monotonic()
        unknown = {m.sha256: m for m in models if self._choices.measured(m.sha256) is None}
        for sha256, measured in self._time_in_child(list(unknown.values())).items():
            if measured:
                self._choices.add(sha256, runtime_choice.fastest(measured))
        for loaded in models:
            known = self._choices.measured(loaded.sha256)
            if known is None:
                log.warning("model %s: nothing to measure; it stays on %s", loaded.path.name, loaded.runtime)
                continue
            runtime, batch, timings = known
            # A model object of its own even when the provisional runtime won: calls running now keep theirs
            # (ultralytics keeps a call's state on the object), and the new one gets this batch's streams.
            chosen = self._open(self._source(loaded.path, loaded.sha256, runtime), runtime, loaded.task, loaded.imgsz)
            with loaded.lock:
                if not self.lean:  # a lean.Export has its threads from the start
                    runtimes.set_threads(chosen, runtime, self.threads, self.streams)  # torch's count is process-wide
                loaded.serve_on(chosen, runtime, self.streams)
                loaded.batch, loaded.timings, loaded.measured = batch, dict(timings), True
            self._choices.remember(loaded.sha256, (loaded.runtime, loaded.batch, loaded.timings), loaded.path.name)
            log.info("measured model %s: serves on %s, batch %d (measured in %.2fs); s/image: %s", loaded.path.name,
                     loaded.runtime, loaded.batch, time.monotonic() - started, {k: round(v, 4) for k, v in timings.items()})
        gc.collect()
        memory.trim()

    def _time_in_child(self, models: list[LoadedModel]) -> dict[str, dict[str, float]]:
        """sha256 -> runtime_choice's timings of every runtime each model may serve on ({} for one that
        none can run), measured by a child process (`measure_here`) that exits with what it loaded.
        Raises runtime_choice.Stopped when this process exits meanwhile (the child is killed); {} when
        the child fails (its stderr is logged)."""
        if not models:
            return {}
        request = pickle.dumps((self.settings, [(m.path, m.sha256, m.task, m.imgsz) for m in models]))
        # In this process's group: whatever stops the backend's group (a terminal's ^C, a harness) stops it too.
        child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        sent: bytes | None = request
        while True:
            try:
                runtime_choice.stop_point()
                out, err = child.communicate(sent, timeout=0.5)  # retried without losing output (the input goes once)
                break
            except subprocess.TimeoutExpired:
                sent = None
            except runtime_choice.Stopped:
                child.kill()
                raise
        lines = out.decode(errors="replace").strip().splitlines()
        if child.returncode != 0 or not lines:
            log.warning("models %s: the measurement failed (exit %s): %s", ", ".join(m.path.name for m in models), child.returncode,
                        err.decode(errors="replace")[-2000:])
            return {}
        return {str(sha): {str(k): float(v) for k, v in timings.items()} for sha, timings in json.loads(lines[-1]).items()}

    def measure_here(self, path: Path, sha256: str, task: str, imgsz: Any) -> dict[str, float]:
        """The timings of every runtime the model may serve on (what `_time_in_child` runs in the child);
        the candidates are dropped before it returns."""
        loaded = LoadedModel(path=path, task=task, names=[], sha256=sha256, imgsz=imgsz, model=None)
        candidates: dict[str, Any] = {}
        for runtime in self._wanted(runtimes.runtime_of(path)):
            try:
                candidates[runtime] = self._open(self._source(path, sha256, runtime), runtime, task, imgsz)
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot run this model leaves the others
                log.warning("model %s: no %s runtime (%s: %s); it runs on the others", path.name, runtime, type(exc).__name__, exc)
        if not candidates:
            return {}
        return self._time(loaded, candidates, runtime_choice.batch_sizes(self.settings.batch_size))

    def _time(self, loaded: LoadedModel, candidates: dict[str, Any], batches: tuple[int, ...]) -> dict[str, float]:
        """runtime_choice.time_runtimes on each candidate runtime's instances (its model and, with
        OpenVINO's streams, its twins), each running calls as a request would."""
        calls: dict[str, list[Callable[[list[np.ndarray]], object]]] = {}
        for runtime, model in candidates.items():
            trial = LoadedModel(path=loaded.path, task=loaded.task, names=loaded.names, sha256=loaded.sha256,
                                imgsz=loaded.imgsz, model=model, runtime=runtime)
            trial.serve_on(model, runtime, self.streams)
            calls[runtime] = [functools.partial(self._predict, trial, conf=0.25, model=instance) for instance in trial.instances]
        return runtime_choice.time_runtimes(calls, batches, loaded.imgsz)

    def predict(self, loaded: LoadedModel, images: list[np.ndarray], conf: float, turn: Turn = contextlib.nullcontext) -> list[Any]:
        """Runs the model on BGR images, in batches, each on an idle instance (waiting for one); returns
        ultralytics Results. turn: entered around each model call, before it waits for an instance
        (the predictor's priority.Gate)."""
        results: list[Any] = []
        size = loaded.batch
        loaded.last_used = time.monotonic()
        for start in range(0, len(images), size):
            with turn():
                idle = loaded.idle  # the runtime may switch meanwhile: what is taken goes back where it came from
                model = idle.get()
                try:
                    results.extend(self._predict(loaded, images[start : start + size], conf, model))
                finally:
                    idle.put(model)
        return results

    def track(self, loaded: LoadedModel, frames: list[np.ndarray], conf: float, tracker: str, turn: Turn = contextlib.nullcontext) -> list[Any]:
        """Runs the tracker through one video's frames, in order, with a fresh tracker state. turn:
        entered around each frame's call (a video is one call per frame, so a gate's turn is short).
        Raises ConfigError in the lean image (ultralytics' trackers are not in it)."""
        if self.lean:
            raise ConfigError("video tracking (VideoRectangle) runs ultralytics' trackers, which this image does not "
                              "have (INFERENCE=lean): serve video projects with the full image")
        kwargs: dict[str, Any] = {"conf": conf, "verbose": False, "device": self.settings.device, "tracker": tracker}
        if loaded.imgsz:
            kwargs["imgsz"] = loaded.imgsz
        outputs = []
        with loaded.lock:
            for index, frame in enumerate(frames):
                with turn():
                    # persist=False on the first frame starts new tracks; True keeps them through the video.
                    outputs.append(loaded.model.track(frame, persist=index > 0, **kwargs)[0])
        return outputs

    def _predict(self, loaded: LoadedModel, images: list[np.ndarray], conf: float, model: Any = None) -> list[Any]:
        if self.lean:
            return (model or loaded.model).predict(images, conf=conf, imgsz=loaded.imgsz)  # type: ignore[no-any-return]
        kwargs: dict[str, Any] = {"conf": conf, "verbose": False, "device": self.settings.device}
        if loaded.imgsz:
            kwargs["imgsz"] = loaded.imgsz
        if loaded.task == "classify":
            kwargs.pop("conf")
        return list((model or loaded.model).predict(images, **kwargs))


def _measure_child() -> None:
    """`python -m prelabel_backend.model_store`: the parent's settings and [(path, sha256, task, imgsz)],
    pickled on stdin; {sha256: timings} as JSON, the last line on stdout (ultralytics prints before it)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings, models = pickle.loads(sys.stdin.buffer.read())  # from our own parent process: trusted
    store = ModelStore(settings)
    timings = {sha256: store.measure_here(path, sha256, task, imgsz) for path, sha256, task, imgsz in models}
    sys.stdout.write("\n" + json.dumps(timings) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _measure_child()
