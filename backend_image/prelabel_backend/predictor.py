"""One /predict request: fetch every task's media in parallel, run each model on the images as they
arrive (in batches), convert per control, and answer one result per task, in order.

A task whose media cannot be fetched or decoded gets an empty result with the reason in its
`errors` (Label Studio keeps only result, score and model_version, and ignores the rest); the
others are unaffected. Every model call takes its turn at the worker's priority gate (priority.py):
a person's request before a pre-labeling run's.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from . import results
from .label_config import ConfigError, Control, Coverage, LabelConfig, coverage
from .media import MediaError, MediaFetcher
from .media_urls import media_value
from .metrics import Metrics
from .model_store import LoadedModel, ModelStore
from .priority import BATCH, INTERACTIVE, Gate, Priority
from .settings import Settings

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    result: list[dict[str, Any]]
    score: float
    model_version: str
    errors: list[str] = field(default_factory=list)  # why (part of) the task could not be predicted

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"result": self.result, "score": self.score, "model_version": self.model_version}
        if self.errors:
            body["errors"] = self.errors
        return body


class Predictor:
    def __init__(self, settings: Settings, store: ModelStore, media: MediaFetcher, metrics: Metrics) -> None:
        self.settings, self.store, self.media, self.metrics = settings, store, media, metrics
        self._pool = ThreadPoolExecutor(max_workers=settings.media_fetch_threads, thread_name_prefix="media")
        self.gate = Gate(settings.priority_hold) if settings.priority else None  # PRIORITY=off: every call as it comes
        # A person's downloads and decodes do not queue behind a run's (its threads start when first used).
        self._interactive_pool = self._pool if self.gate is None else ThreadPoolExecutor(
            max_workers=settings.media_fetch_threads, thread_name_prefix="media-interactive")

    def model_version(self, config: LabelConfig) -> str:
        """Changes when any weight file this config uses, or the config's prediction-relevant parts, change:
        prelabel-<12 hex>, or <MODEL_VERSION>-<6 hex> when the weights are a model store version."""
        digest = hashlib.sha256(config.digest.encode())
        for model_file in sorted({c.model_file for c in config.controls}):
            digest.update(self.store.sha256(model_file).encode())  # no load: /setup answers while models load
        if self.settings.model_version:
            return f"{self.settings.model_version}-{digest.hexdigest()[:6]}"
        return f"prelabel-{digest.hexdigest()[:12]}"

    def check(self, config: LabelConfig) -> None:
        """Loads every model the config needs and checks it fits its control (raises ConfigError)."""
        for control in config.controls:
            loaded = self.store.get(control.model_file)
            if loaded.task != control.task:
                raise ConfigError(
                    f'<{control.tag} name="{control.name}"> needs a {control.task} model but {control.model_file!r} is a {loaded.task} model'
                )

    def coverage(self, config: LabelConfig) -> list[Coverage]:
        """Per control, which labels its model's classes reach (only the controls some label misses)."""
        found = [coverage(c, self.store.get(c.model_file).names) for c in config.controls]
        return [c for c in found if c.unmapped]

    def predict(self, config: LabelConfig, tasks: list[dict[str, Any]], project: str | None,
                priority: Priority = INTERACTIVE) -> list[Prediction]:
        """Fetches and decodes images on the media pool while the model runs: each model is called
        as soon as its batch (LoadedModel.batch, measured at load) of decoded images is there, so
        downloads and decodes overlap inference, and an image is held only until its batch ran.
        priority: the request's class at the gate (priority.of_header)."""
        version = self.model_version(config)
        pool = self._pool if priority == BATCH else self._interactive_pool
        regions: list[list[dict[str, Any]]] = [[] for _ in tasks]
        errors: list[list[str]] = [[] for _ in tasks]
        for control in (c for c in config.controls if c.media == "Video"):
            for i, task in enumerate(tasks):
                regions[i].extend(self._video(control, task, project, config, errors[i], priority))
        controls = [c for c in config.controls if c.media == "Image"]
        keys = sorted({c.data_key for c in controls})
        if not keys:
            return [Prediction(r, results.task_score(r), version, e) for r, e in zip(regions, errors, strict=True)]
        models = {c.name: self.store.get(c.model_file) for c in controls}
        queues: dict[str, list[tuple[int, np.ndarray]]] = {c.name: [] for c in controls}

        def fetch(i: int) -> dict[str, np.ndarray | None]:
            out = {key: self._media(tasks[i], key, config, errors[i], lambda value, task_id: self.media.image(value, task_id, project))
                   for key in keys}
            self.metrics.images.inc(sum(1 for image in out.values() if image is not None))
            return out

        # A sliding window of fetches: at most MEDIA_FETCH_THREADS + the largest batch decoded images
        # wait for the model per request, however many tasks it has (the memory bound).
        window = self.settings.media_fetch_threads + max(m.batch for m in models.values())
        futures: dict[Future[dict[str, np.ndarray | None]], int] = {}
        submitted = 0
        try:
            while submitted < len(tasks) or futures:
                while submitted < len(tasks) and len(futures) < window:
                    futures[pool.submit(fetch, submitted)] = submitted
                    submitted += 1
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for future in done:
                    index, task_images = futures.pop(future), future.result()
                    for control in controls:
                        image = task_images.get(control.data_key)
                        if image is None:
                            continue
                        queue = queues[control.name]
                        queue.append((index, image))
                        if len(queue) >= models[control.name].batch:
                            self._run(control, config, models[control.name], queue, tasks, regions, errors, priority)
                            queue.clear()
            for control in controls:
                if queues[control.name]:
                    self._run(control, config, models[control.name], queues[control.name], tasks, regions, errors, priority)
        finally:
            for future in futures:
                future.cancel()
        return [Prediction(r, results.task_score(r), version, e) for r, e in zip(regions, errors, strict=True)]

    @contextlib.contextmanager
    def _turn(self, priority: Priority, loaded: LoadedModel) -> Iterator[None]:
        """One call of `loaded` in its turn at the gate (none with PRIORITY off); a batch call's wait is observed."""
        if self.gate is None:
            yield
            return
        with self.gate.turn(priority, slots=len(loaded.instances)) as waited:
            if priority == BATCH:
                self.metrics.batch_wait.observe(waited)
            yield

    def _run(self, control: Control, config: LabelConfig, loaded: LoadedModel, queue: list[tuple[int, np.ndarray]],
             tasks: list[dict[str, Any]], regions: list[list[dict[str, Any]]], errors: list[list[str]], priority: Priority) -> None:
        """One model call on the queued (task index, image) pairs, in its turn; their regions added per task."""
        with self._turn(priority, loaded):
            started = time.monotonic()
            outputs = self.store.predict(loaded, [image for _, image in queue], conf=control.threshold)
            self.metrics.observe_inference(loaded.path.name, len(queue), time.monotonic() - started)
        for (i, _), output in zip(queue, outputs, strict=True):
            try:
                regions[i].extend(results.convert(control, config, output, loaded.names))
            except ValueError as exc:
                log.warning("task %s, control %s: %s", tasks[i].get("id"), control.name, exc)
                errors[i].append(f"{control.name}: {exc}")
            if self.settings.debug_plot:
                self._plot(output, tasks[i].get("id"), control.name)

    def _media(self, task: Any, key: str, config: LabelConfig, errors: list[str], fetch: Callable[[Any, Any], T]) -> T | None:
        """fetch(the task's value for key, task id), or None when the field is missing or its media
        unreadable (logged, counted and added to `errors`): a bad task loses only its own prediction."""
        data = task.get("data") if isinstance(task, dict) else None
        task_id = task.get("id") if isinstance(task, dict) else "?"
        try:
            if not isinstance(data, dict):
                raise MediaError("the task has no 'data' object")
            return fetch(media_value(data, key, config.single_object), task_id)
        except MediaError as exc:
            self.metrics.media_errors.inc()
            log.warning("task %s: no prediction for field %r: %s", task_id, key, exc)
            errors.append(f"field {key!r}: {exc}")
            return None

    def _video(self, control: Any, task: dict[str, Any], project: str | None, config: LabelConfig, errors: list[str],
               priority: Priority) -> list[dict[str, Any]]:
        fetched = self._media(task, control.data_key, config, errors, lambda value, task_id: self.media.video(value, task_id, project))
        if fetched is None:
            return []
        frames, fps = fetched
        self.metrics.images.inc(len(frames))
        started = time.monotonic()
        if control.tag == "VideoRectangle":
            tracker = control.attrs.get("model_tracker", "botsort")
            if tracker not in ("botsort", "bytetrack"):
                tracker = "botsort"
            loaded = self.store.get(control.model_file, purpose="track")
            outputs = self.store.track(loaded, frames, control.threshold, f"{tracker}.yaml", turn=functools.partial(self._turn, priority, loaded))
            regions = results.video_rectangles(control, outputs, loaded.names, fps)
        else:
            loaded = self.store.get(control.model_file)
            outputs = self.store.predict(loaded, frames, conf=control.threshold, turn=functools.partial(self._turn, priority, loaded))
            regions = results.timeline(control, outputs, loaded.names, fps)
        self.metrics.observe_inference(loaded.path.name, len(frames), time.monotonic() - started)
        return regions

    def _plot(self, output: Any, task_id: Any, control: str) -> None:
        folder = Path(self.settings.model_dir) / "debug"
        folder.mkdir(parents=True, exist_ok=True)
        output.save(filename=str(folder / f"task-{task_id}-{control}.png"))
