"""Which runtime and batch size serve a model: chosen "by measurement, not assumption" (issue 13).

A `.pt` on CPU may serve on torch, ONNX Runtime or OpenVINO (runtimes.py), each at a few batch sizes.
For a fast start a model first serves on a provisional runtime (its cached ONNX export, opened
without the .pt; else the .pt on torch) at batch 1 (plan), and is measured in the background, one
model at a time, after the default models are loaded (Measurements): each runtime at each batch
size is timed on a photo-shaped probe at the model's own input size (time_runtimes) and the fastest
per image is kept (fastest). The choice is kept in MODEL_DIR (Choices): a restart opens the chosen
runtime alone and measures nothing.

Opening, running and switching the models is the model store's (model_store.py), which calls this;
nothing here opens a model.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

log = logging.getLogger(__name__)

# At exit a measurement is stopped between two timed calls and awaited: a thread still inside ONNX
# Runtime or OpenVINO when the interpreter tears their pools down aborts the process.
_stopping = threading.Event()
_busy: set[threading.Thread] = set()


class Stopped(Exception):
    """The process is exiting: the measurement under way ends here."""


@atexit.register
def _finish_measurements() -> None:
    _stopping.set()
    for thread in list(_busy):
        thread.join(timeout=60)


def stop_point() -> None:
    """Raises Stopped once the process is exiting: a measurement calls it between two of its steps."""
    if _stopping.is_set():
        raise Stopped


BATCHES = (1, 4)  # batch sizes tried at load: on CPU a large batch is slower per image than a few
MEASURE_RUNS = 5  # timed calls per (runtime, batch), round-robin; the median counts

# (runtime, batch, timings): timings maps "<runtime>/<batch>" to seconds per image, as measured.
Choice = tuple[str, int, dict[str, float]]


class Provisional(Protocol):
    """A model serving until measured, as the measurement names it (model_store.LoadedModel)."""

    @property
    def path(self) -> Path: ...
    @property
    def runtime(self) -> str: ...
    @property
    def batch(self) -> int: ...


T = TypeVar("T", bound=Provisional)


def batch_sizes(batch_size: int) -> tuple[int, ...]:
    """The batch sizes a model may serve at: BATCH_SIZE's alone when set, else BATCHES."""
    return (batch_size,) if batch_size else BATCHES


def plan(wanted: tuple[str, ...], batches: tuple[int, ...], known: Choice | None,
         ready: Callable[[str], bool]) -> tuple[str, int, dict[str, float], bool]:
    """(runtime, batch, timings, final) to open a model with, among the `wanted` runtimes and the
    `batches`. Final when measured before (`known`: this process, or an earlier start: MODEL_DIR) or
    when RUNTIME and BATCH_SIZE leave nothing to choose. Otherwise provisional, for a fast start: a
    cached ONNX export (`ready`; opening it needs no torch model and no export), else the .pt on
    torch (without torch among `wanted`, the lean image: the first wanted), at batch 1; the
    measurement follows."""
    if known is not None and known[0] in wanted and known[1] in batches:
        return known[0], known[1], dict(known[2]), True
    final = len(wanted) == 1 and len(batches) == 1
    if len(wanted) == 1:
        return wanted[0], batches[0] if final else 1, {}, final
    exported = [r for r in ("onnx", "openvino") if r in wanted and ready(r)]
    fallback = "torch" if "torch" in wanted else wanted[0]
    return (exported[0] if exported else fallback), (batches[0] if len(batches) == 1 else 1), {}, False


def _probe_image(imgsz: int | tuple[int, int] | list[int] | None) -> np.ndarray:
    """A 4:3 image at the model's input size (640x480 for 640): the shape of a typical photo."""
    side = max(imgsz) if isinstance(imgsz, (tuple, list)) else (imgsz or 640)
    return np.random.default_rng(0).integers(0, 255, (side * 3 // 4, side, 3), dtype=np.uint8)


def time_runtimes(calls: dict[str, list[Callable[[list[np.ndarray]], object]]], batches: tuple[int, ...],
                  imgsz: int | tuple[int, int] | list[int] | None) -> dict[str, float]:
    """Seconds per image of each candidate runtime at each batch size when the model is busy (each of
    its instances running a call, as under concurrent requests: one for most, a twin per extra
    OpenVINO stream), medians of MEASURE_RUNS. calls[runtime] runs a batch of images on each of that
    runtime's instances."""
    probe = _probe_image(imgsz)

    def busy(runtime: str, batch: int) -> float:
        """Seconds per image of one call on each instance at once: the first here, the others on
        threads of their own (plain threads: at exit concurrent.futures refuses new work before
        atexit stops the measurement, which would log a failure)."""
        instances = calls[runtime]
        started = time.perf_counter()
        others = [threading.Thread(target=call, args=([probe] * batch,), daemon=True) for call in instances[1:]]
        for thread in others:
            thread.start()
        instances[0]([probe] * batch)
        for thread in others:
            thread.join()
        return (time.perf_counter() - started) / (batch * len(instances))

    runs: dict[str, list[float]] = {f"{r}/{b}": [] for r in calls for b in batches}
    for key in runs:  # the first call at a new shape pays set-up
        runtime, batch = key.split("/")
        busy(runtime, int(batch))
    for _ in range(MEASURE_RUNS):  # round-robin, so that a burst of load elsewhere hits all alike
        for key, times in runs.items():
            stop_point()
            runtime, batch = key.split("/")
            times.append(busy(runtime, int(batch)))
    return {key: statistics.median(times) for key, times in runs.items()}


def fastest(timings: dict[str, float]) -> Choice:
    """The runtime and batch of the fewest seconds per image, with the timings that chose them."""
    best = min(timings, key=timings.__getitem__)
    return best.split("/")[0], int(best.split("/")[1]), timings


class Choices:
    """The runtime and batch each model's weights (by sha256) serve on: measured in this process, or
    remembered from an earlier start in this pod (MODEL_DIR is its emptyDir)."""

    def __init__(self, folder: Path, threads: int, streams: int, runtime: str, batch_size: int) -> None:
        self._folder = folder  # MODEL_DIR/runtimes: a folder per sha256, beside its exports
        # Keyed by what the measurement depends on: this CPU's threads and streams, the runtime and batch settings.
        self._tag = f"{threads}x{streams}-{runtime}-{batch_size}"
        self._measured: dict[str, Choice] = {}

    def measured(self, sha256: str) -> Choice | None:
        """Measured in this process."""
        return self._measured.get(sha256)

    def known(self, sha256: str) -> Choice | None:
        """Measured in this process, else remembered in MODEL_DIR."""
        return self._measured.get(sha256) or self.remembered(sha256)

    def add(self, sha256: str, choice: Choice) -> None:
        self._measured[sha256] = choice

    def _file(self, sha256: str) -> Path:
        return self._folder / sha256 / f"choice-{self._tag}.json"

    def remembered(self, sha256: str) -> Choice | None:
        try:
            found = json.loads(self._file(sha256).read_text())
            return str(found["runtime"]), int(found["batch"]), {str(k): float(v) for k, v in found["timings"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def remember(self, sha256: str, choice: Choice, name: str) -> None:
        """The measured choice of the weights `name`, for the next start in this pod."""
        path = self._file(sha256)
        runtime, batch, timings = choice
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"runtime": runtime, "batch": batch, "timings": timings}))
        except OSError as exc:
            log.warning("could not keep the runtime choice of %s: %s", name, exc)


class Measurements(Generic[T]):
    """Models that serve on a provisional runtime until measured, on a background thread: measure(models)
    with every model waiting when it runs (the default models, put while held, go together: one child
    process times them all). A batch that fails stays as it is."""

    def __init__(self, measure: Callable[[list[T]], None]) -> None:
        self._measure = measure
        self._queue: queue.Queue[T] = queue.Queue()
        self._allowed = threading.Event()
        self._allowed.set()
        threading.Thread(target=self._loop, name="measure-runtimes", daemon=True).start()

    def put(self, model: T) -> None:
        self._queue.put(model)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Measurements wait while this is held."""
        self._allowed.clear()
        try:
            yield
        finally:
            self._allowed.set()

    def settle(self) -> None:
        """Waits until every queued measurement is done."""
        self._allowed.wait()
        self._queue.join()

    def _loop(self) -> None:
        while True:
            models = [self._queue.get()]
            _busy.add(threading.current_thread())
            try:
                self._allowed.wait()
                with contextlib.suppress(queue.Empty):
                    while True:
                        models.append(self._queue.get_nowait())
                self._measure(models)
            except Stopped:
                return
            except Exception:
                log.exception("measuring the runtimes of %s failed; they stay as they are", ", ".join(m.path.name for m in models))
            finally:
                for _ in models:
                    self._queue.task_done()
                _busy.discard(threading.current_thread())

