"""The same weights on a faster runtime: ultralytics' ONNX and OpenVINO exports, made once and cached.

ultralytics runs its own exports (`YOLO("m.onnx")`, `YOLO("m_openvino_model/")`) with the same pre-
and post-processing as the `.pt`, so ultralytics stays the only model code; only the network's
forward pass changes runtime. An export is keyed by the sha256 of the weight file it comes from:

    <cache>/<sha256>/model.onnx               (onnx, dynamic batch and size)
    <cache>/<sha256>/model_openvino_model/    (openvino, dynamic batch and size)

Read-only caches (the image's build-time exports of the packaged models) are searched first, then
the writable one under MODEL_DIR, where a mounted `.pt` is exported at its first load. Exports need
the `onnx`, `onnxslim` and `openvino` packages installed ahead: nothing is installed at run time.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import queue
import shutil
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "openvino")
# The exports of the packaged weights (weights/): made at image build time, or by `python -m
# prelabel_backend.runtimes` in a checkout (the tests do it once); searched before MODEL_DIR's.
PACKAGED_RUNTIMES = Path(__file__).resolve().parent / "runtimes"  # = settings.PACKAGED_RUNTIMES
PACKAGED_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # = settings.PACKAGED_WEIGHTS
EXPORT_NAMES = {"onnx": "model.onnx", "openvino": "model_openvino_model"}


def runtime_of(path: Path) -> str:
    """Which runtime a model file is for: .pt torch, .onnx onnx, an *_openvino_model folder (or its .xml) openvino."""
    if path.suffix == ".onnx":
        return "onnx"
    if path.name.endswith("_openvino_model") or path.suffix == ".xml":
        return "openvino"
    return "torch"


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (an OpenVINO export) in name order."""
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        with item.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cached(sha256: str, runtime: str, caches: Sequence[Path]) -> Path | None:
    for cache in caches:
        candidate = cache / sha256 / EXPORT_NAMES[runtime]
        if candidate.exists():
            return candidate
    return None


_export_lock = threading.Lock()  # one export at a time: each uses every core for seconds


def no_telemetry() -> None:
    """OpenVINO's model converter sends usage telemetry (a forked process posting to Google Analytics)
    unless a consent file in $HOME says no; with `openvino_telemetry` unimportable it uses its own no-op
    stub. `import openvino` imports the converter, so this must come first: it runs when this module
    is imported (model_store.py imports it before any runtime). The backend calls no one."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: "cannot import"


no_telemetry()


def export(source: Path, sha256: str, runtime: str, caches: Sequence[Path], write_cache: Path,
           imgsz: int | tuple[int, int] | list[int] | None) -> Path:
    """The `runtime` export of the `.pt` at source (whose sha256 is given): from a cache, else made
    now into write_cache (atomically: a half-written export is never found). Raises what
    ultralytics' exporter raises (e.g. ModuleNotFoundError when the runtime's package is missing)."""
    found = cached(sha256, runtime, [*caches, write_cache])
    if found is not None:
        return found
    from ultralytics.models import YOLO

    no_telemetry()
    with _export_lock:
        found = cached(sha256, runtime, [write_cache])
        if found is not None:
            return found
        work = write_cache / f".{sha256}.{runtime}.{os.getpid()}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            shutil.copyfile(source, work / "model.pt")
            kwargs: dict[str, Any] = {"format": runtime, "dynamic": True, "device": "cpu", "verbose": False}
            if imgsz:
                kwargs["imgsz"] = imgsz
            if runtime == "onnx":
                kwargs["simplify"] = True
            YOLO(str(work / "model.pt")).export(**kwargs)
            target = write_cache / sha256 / EXPORT_NAMES[runtime]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.replace(work / EXPORT_NAMES[runtime], target)
            log.info("exported %s to %s at %s", source.name, runtime, target)
            return target
        finally:
            shutil.rmtree(work, ignore_errors=True)


def set_threads(model: Any, runtime: str, threads: int, streams: int = 1) -> None:
    """Intra-op threads of one loaded ultralytics model (after its first predict, which builds the
    backend). torch's count is process-wide and reset by ultralytics at each model's first predict;
    ONNX Runtime and OpenVINO default to every core they see, a cgroup quota unseen. OpenVINO is
    also held to f32 and given `streams` (cpus.inference_streams): the images of a batch run that many
    at once on threads // streams threads each (OpenVINOStreams)."""
    import torch

    torch.set_num_threads(threads)  # also the pre- and post-processing (tensors, NMS) of every runtime
    backend = getattr(getattr(getattr(model, "predictor", None), "model", None), "backend", None)
    if runtime == "onnx" and backend is not None and hasattr(backend, "session"):
        import onnxruntime  # type: ignore[import-untyped]  # ships no types

        if backend.session.get_providers()[0] != "CPUExecutionProvider":
            return
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # No spin-waiting between ops: on a shared or throttled CPU spinning threads steal the time the
        # working ones need (measured here: 4x slower on a busy 2-core machine).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        backend.session = onnxruntime.InferenceSession(str(model.ckpt_path or model.model_name), options,
                                                       providers=["CPUExecutionProvider"])
    elif runtime == "openvino" and backend is not None and hasattr(backend, "compile_model"):
        import openvino  # type: ignore[import-untyped]  # ships no types

        config = dict(backend.compile_model.keywords.get("config") or {})
        if backend.compile_model.keywords.get("device_name") != "CPU":
            return
        # ultralytics recompiles an INT8 dynamic model per input shape on AMX CPUs (its read_model): that
        # path calls the compiled model itself, so it keeps one stream.
        streams = 1 if getattr(backend, "read_model", None) is not None else max(1, min(streams, threads))
        compiled = backend.ov_compiled_model
        if (int(compiled.get_property("INFERENCE_NUM_THREADS")) == threads
                and int(compiled.get_property("NUM_STREAMS")) == streams
                and compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
                and (streams == 1 or isinstance(backend.__dict__.get("forward"), OpenVINOStreams))):
            return  # as wanted already: no second compile
        # On CPUs with bf16 (AVX512_BF16, AMX) OpenVINO computes in bf16 by default: faster, but boxes
        # moved by several percent of IoU from torch's. The same regions as torch need f32.
        config.update({"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": openvino.Type.f32,
                       "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
        xml = Path(str(model.model_name))
        xml = xml if xml.suffix == ".xml" else next(xml.glob("*.xml"))
        core = openvino.Core()
        network = core.read_model(str(xml))
        if streams == 1:
            backend.ov_compiled_model = core.compile_model(network, "CPU", config)
            backend.__dict__.pop("forward", None)  # ultralytics' own: one synchronous call per batch
            return
        compiled = core.compile_model(network, "CPU", {**config, "NUM_STREAMS": streams, "PERFORMANCE_HINT": "THROUGHPUT"})
        alone = core.compile_model(network, "CPU", config)  # a lone image: every thread on it, as before
        backend.ov_compiled_model = compiled
        backend.forward = OpenVINOStreams(compiled, streams, alone)  # the instance's, in place of the class's


class OpenVINOStreams:
    """An ultralytics OpenVINO backend's forward over several streams: the batch's images go one per
    infer request, `streams` at once, each on its own stream's threads, and their outputs are joined
    in order, as ultralytics' one synchronous call of the whole batch returns them. A lone image (a
    1-task request, or a batch's last) while no other call runs goes to `alone`, a model compiled for
    latency on every thread, so that one task takes no longer than before (on 2 cores a stream has
    half the threads); beside another call it takes a stream, as the other call's images do.

    Thread-safe: each call takes a set of infer requests of its own (made when none is idle: one set
    per model object running at once, see twins; a request's buffers are small beside its stream's).
    Plain start_async/wait, not openvino.AsyncInferQueue: ultralytics stopped using that queue after
    hangs in it (ultralytics issue 25923)."""

    def __init__(self, compiled: Any, streams: int, alone: Any) -> None:
        self.compiled, self.streams, self.alone = compiled, streams, alone
        self._idle: queue.SimpleQueue[tuple[list[Any], Any]] = queue.SimpleQueue()
        self._calls = 0  # running now
        self._calls_lock = threading.Lock()

    def __call__(self, im: Any) -> list[Any]:
        """im: the letterboxed batch, a float tensor (N, 3, H, W) in [0, 1]; returns the outputs as numpy
        arrays with N rows each (ultralytics' OpenVINOBackend.forward's shapes)."""
        import numpy as np

        try:
            requests, alone = self._idle.get_nowait()
        except queue.Empty:
            requests = [self.compiled.create_infer_request() for _ in range(self.streams)]
            alone = self.alone.create_infer_request()
        with self._calls_lock:
            self._calls += 1
        try:
            batch = im.cpu().numpy().astype(np.float32, copy=False)
            per_image: list[list[Any]] = []
            for start in range(0, len(batch), len(requests)):
                images = batch[start : start + len(requests)]
                lone = len(images) == 1 and self._calls == 1
                running = [(alone, images[0])] if lone else list(zip(requests, images, strict=False))
                for request, image in running:
                    request.start_async(image[None])
                for request, _ in running:
                    request.wait()
                    per_image.append([tensor.data.copy() for tensor in request.output_tensors])  # the request's own buffers
            return [np.concatenate(outputs) for outputs in zip(*per_image, strict=True)]
        finally:
            with self._calls_lock:
                self._calls -= 1
            self._idle.put((requests, alone))


def twins(model: Any, count: int) -> list[Any]:
    """count more ultralytics model objects that run the same compiled OpenVINO network as model (one
    AutoBackend, OpenVINOStreams), each with a predictor of its own (ultralytics keeps a call's state,
    and a lock, on the predictor): while one does a batch's pre- or post-processing, another's images
    keep the streams busy. None for other runtimes or a single stream: their backends are not shared."""
    predictor: Any = getattr(model, "predictor", None)
    backend = getattr(getattr(predictor, "model", None), "backend", None)
    if predictor is None or not isinstance(getattr(backend, "__dict__", {}).get("forward"), OpenVINOStreams):
        return []
    made = []
    for _ in range(count):
        own = copy.copy(predictor)  # the same AutoBackend, args and callbacks
        own._lock, own.vid_writer, own.windows = threading.Lock(), {}, []  # what ultralytics mutates in place
        twin = copy.copy(model)
        twin.predictor = own
        made.append(twin)
    return made


def export_all(weights: Path, out: Path) -> list[Path]:
    """Every runtime's export of every `.pt` under weights, into out (kept ones are reused)."""
    made = []
    for pt in sorted(weights.glob("*.pt")):
        sha256 = file_sha256(pt)
        for runtime in RUNTIMES[1:]:
            made.append(cached(sha256, runtime, [out]) or export(pt, sha256, runtime, [], out, trained_imgsz(pt)))
    return made


def trained_imgsz(pt: Path) -> Any:
    """The input size a .pt was trained at (its exports are made at it), or None."""
    from ultralytics.models import YOLO

    return (getattr(YOLO(str(pt)), "overrides", {}) or {}).get("imgsz")


if __name__ == "__main__":  # the image build runs this file alone, before the package's code is copied
    import tempfile

    for name, value in (("YOLO_OFFLINE", "1"), ("YOLO_AUTOINSTALL", "false"), ("YOLO_VERBOSE", "false"),
                        ("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "prelabel-ultralytics"))):
        os.environ.setdefault(name, value)
    logging.basicConfig(level="INFO", format="%(message)s")
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGED_WEIGHTS_DIR
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else PACKAGED_RUNTIMES
    for path in export_all(source, target):
        print(path)
