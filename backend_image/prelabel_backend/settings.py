"""Every environment variable the backend reads, with its default and meaning, in one place.

The names and meanings are those of HumanSignal's YOLO example backend, so an existing deployment
keeps its env; the few additions are marked "Prelabel".
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"
PACKAGED_RUNTIMES = Path(__file__).resolve().parent / "runtimes"  # their exports (runtimes.py)

# The model file each kind of control uses when its tag names no `model_path`. The defaults are the
# project's own models trained on synthetic shapes (they ship in the package, so the backend starts
# offline anywhere); point these at official weights (e.g. yolov8n.pt) mounted under MODEL_ROOT.
DEFAULT_MODEL_ENV = {
    "detect": ("MODEL_DETECT", "shapes-detect.pt"),
    "obb": ("MODEL_OBB", "shapes-obb.pt"),
    "segment": ("MODEL_SEGMENT", "shapes-segment.pt"),
    "classify": ("MODEL_CLASSIFY", "shapes-classify.pt"),
    "pose": ("MODEL_POSE", "shapes-pose.pt"),
}

TRUE = {"1", "true", "yes", "on"}
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,54}[A-Za-z0-9])?")  # a Kubernetes label value, 7 characters short


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw.strip().lower() in TRUE


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or choices[0]).strip().lower()
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _version_name(env: Mapping[str, str], name: str) -> str | None:
    raw = (env.get(name) or "").strip()
    if raw and not _LABEL_VALUE.fullmatch(raw):
        # Label Studio shows and stores it, Kubernetes labels carry it: the store's names fit both.
        raise ValueError(f"{name} must be a model store version name (letters, digits, '.', '_', '-'; "
                         f"at most 56 characters), got {raw!r}")
    return raw or None


@dataclass(frozen=True)
class Settings:
    # --- HTTP server -------------------------------------------------------------------------
    port: int = 9090  # PORT: where gunicorn listens
    host: str = "0.0.0.0"  # HOST (Prelabel): the bind address; tests and the local mode use 127.0.0.1
    workers: int = 1  # WORKERS: gunicorn worker processes (each loads the models once)
    threads: int = 8  # THREADS: threads per worker; concurrent requests share one model lock
    log_level: str = "INFO"  # LOG_LEVEL: the Authorization header and keys are never logged, at any level
    basic_auth_user: str | None = None  # BASIC_AUTH_USER: with BASIC_AUTH_PASS, basic auth on every route (/webhook's events: WEBHOOK_REQUIRE_AUTH)
    basic_auth_pass: str | None = None  # BASIC_AUTH_PASS: the password of that basic auth
    # WEBHOOK_REQUIRE_AUTH (Prelabel): Label Studio's auto-created webhook sends no credentials, and its
    # annotation events change nothing here, so by default /webhook is open even with basic auth on;
    # START_TRAINING (which records a training request) still needs the basic auth Label Studio sends
    # with "Start Training". Set true to require basic auth for every event (then add the header to the webhook).
    webhook_require_auth: bool = False
    # MAX_REQUEST_BYTES (Prelabel): a larger request body is refused with 413 before it is read.
    # Label Studio sends task references, not images: a 1000-task /predict is about 0.2 MiB.
    max_request_bytes: int = 32 * 1024 * 1024
    # REQUEST_READ_TIMEOUT (Prelabel): seconds a client has to send a whole request (line, headers
    # and body) once it started; a slower one is disconnected, so slow clients cannot hold the
    # worker's THREADS (slow-loris). Idle kept-alive connections wait on gunicorn's poller, not a thread.
    request_read_timeout: float = 30.0
    # PRIORITY (Prelabel): on: a person's /predict (Label Studio's calls) runs its model calls before
    # those of requests marked `X-Prelabel-Priority: batch` (the operator's pre-labeling), waiting at
    # most for one running model call; off: every model call as it comes (priority.py)
    priority: bool = True
    # PRIORITY_HOLD (Prelabel): seconds after a person's call during which batch model calls run one at
    # a time (leaving a model instance and the CPU to the next one); then as many as the model has instances
    priority_hold: float = 60.0
    # --- models ------------------------------------------------------------------------------
    model_root: Path = PACKAGED_WEIGHTS  # MODEL_ROOT: folder of the weight files; model_path resolves under it, never outside
    # MODEL_DIR: writable folder: ultralytics settings, debug plots, exports of mounted weights (runtimes/)
    model_dir: Path = Path("/tmp/prelabel-backend")
    # MODEL_<TASK> (MODEL_DETECT, MODEL_OBB, MODEL_SEGMENT, MODEL_CLASSIFY, MODEL_POSE): the weights of the controls of that
    # task without model_path (settings.DEFAULT_MODEL_ENV), e.g. yolov8n.pt mounted in MODEL_ROOT
    default_models: dict[str, str] = field(default_factory=lambda: {k: v[1] for k, v in DEFAULT_MODEL_ENV.items()})
    # MODEL_WEIGHTS (Prelabel): one weight file under MODEL_ROOT that becomes the default for its own
    # task (read from the file), e.g. what an MLBackend's spec.model.weights names.
    model_weights: str | None = None
    # MODEL_VERSION (Prelabel): the model store version the mounted weights are (e.g. 20261130T054012.123Z-3f2a9c1b,
    # as `python -m prelabel_backend.model_versions fetch` wrote them); the backend's model_version becomes
    # <MODEL_VERSION>-<6 hex of the config and weights>, so Label Studio names the store version. Unset: prelabel-<12 hex>
    model_version: str | None = None
    allow_custom_model_path: bool = True  # ALLOW_CUSTOM_MODEL_PATH: honour a control's model_path attribute
    model_score_threshold: float = 0.5  # MODEL_SCORE_THRESHOLD: default for controls without model_score_threshold
    device: str = "cpu"  # DEVICE (Prelabel): torch device, "cpu" or "cuda" / "cuda:0" (then torch serves, nothing is exported)
    # TORCH_THREADS (Prelabel): intra-op threads of the model runtime; 0 = the CPUs this process gets
    # (its affinity mask, capped by a cgroup CPU quota, cpu.max or cpu.cfs_quota_us: see cpus.py)
    torch_threads: int = 0
    # RUNTIME (Prelabel): how a .pt runs: "auto" (torch, onnx and openvino timed in the background
    # after the start; the fastest serves), or one of those. Exported files (.onnx, *_openvino_model/) run as they are.
    runtime: str = "auto"
    # INFERENCE (Prelabel): what runs a model: "auto" (ultralytics where it is installed, the full image;
    # else lean.py, the lean image), "ultralytics", or "lean" (numpy, OpenCV and the exports' runtime
    # alone: no torch; a .pt serves through its ONNX or OpenVINO export, never itself; no video tracking:
    # /setup lists a VideoRectangle as not served, naming the full image)
    inference: str = "auto"
    batch_size: int = 0  # BATCH_SIZE (Prelabel): images per model call; 0 = measured at load (1 or 4)
    # RUNTIME_CACHE (Prelabel): comma list of more read-only folders of ready exports (<sha256>/model.onnx,
    # <sha256>/model_openvino_model/), searched after the packaged models' (made at image build time);
    # new exports go under MODEL_DIR/runtimes
    runtime_caches: tuple[Path, ...] = (PACKAGED_RUNTIMES,)
    # MODEL_IDLE_UNLOAD (Prelabel): seconds after which a model no request has used is unloaded
    # (loaded again when asked for); 0 = never
    model_idle_unload: float = 0.0
    debug_plot: bool = False  # DEBUG_PLOT: write each prediction's plot as PNG under MODEL_DIR/debug (never a window)
    # --- media -------------------------------------------------------------------------------
    # LABEL_STUDIO_URL (or LABEL_STUDIO_HOST): base URL for relative media (uploads); unset: the hostname /setup sent
    label_studio_url: str | None = None
    # LABEL_STUDIO_PUBLIC_URLS (Prelabel): comma list of the addresses Label Studio writes into task
    # data when they differ from LABEL_STUDIO_URL (its own LABEL_STUDIO_HOST, e.g. https://ls.example.com
    # or https://example.com/ls; a bare host name matches any scheme and port). Label Studio's paths on
    # them are fetched through LABEL_STUDIO_URL, with the key; /setup's hostname is added on its own.
    label_studio_public_urls: tuple[str, ...] = ()
    # LABEL_STUDIO_API_KEY (or LABEL_STUDIO_ACCESS_TOKEN): a legacy token (sent as `Token ...`) or a personal access
    # token (exchanged for a `Bearer` access token); unset: /setup's access_token, used only with /setup's hostname
    # (the env key is never sent to an address /setup named)
    label_studio_api_key: str | None = None
    verify_ssl: bool = True  # VERIFY_SSL: check TLS certificates when fetching media
    # LOCAL_FILES_DOCUMENT_ROOT: read /data/local-files/?d=... from this folder instead of over HTTP (docs/media-urls.md)
    local_files_document_root: Path | None = None
    # MEDIA_ALLOWED_HOSTS (Prelabel): comma list of other hosts media may come from (and redirect to),
    # fetched without Label Studio's key; media from anywhere else is refused (no SSRF through task data)
    media_allowed_hosts: tuple[str, ...] = ()
    media_max_bytes: int = 50 * 1024 * 1024  # MEDIA_MAX_BYTES (Prelabel): larger downloads are refused
    # MEDIA_MAX_PIXELS (Prelabel): an image whose header claims more pixels (width x height) is refused
    # before it is decoded (decompression bombs: a 110 KB PNG can claim 30000x30000, 2.7 GB decoded).
    # The default is Pillow's Image.MAX_IMAGE_PIXELS (89,478,485: e.g. 9459x9459, 256 MiB as BGR); Pillow's
    # own refusal, at twice its limit, caps a larger setting.
    media_max_pixels: int = 89_478_485
    media_timeout: float = 15.0  # MEDIA_TIMEOUT (Prelabel): seconds per media request
    # MEDIA_RETRY_SECONDS (Prelabel): a media fetch answered 429 or 503 is tried again after the server's
    # Retry-After (else 1, 2, 4... s), waiting this many seconds at most in all; then the task fails with the reason
    media_retry_seconds: float = 30.0
    media_cache_items: int = 64  # MEDIA_CACHE_ITEMS (Prelabel): recently fetched media kept in memory
    # MEDIA_CACHE_BYTES (Prelabel): the total size of those cached media at most (without it, 64 x MEDIA_MAX_BYTES:
    # 3.2 GiB); a larger download is not cached
    media_cache_bytes: int = 256 * 1024 * 1024
    media_fetch_threads: int = 8  # MEDIA_FETCH_THREADS (Prelabel): parallel downloads per request
    max_video_frames: int = 9000  # MAX_VIDEO_FRAMES (Prelabel): frames read from one video, at most

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user and self.basic_auth_pass:
            return (self.basic_auth_user, self.basic_auth_pass)
        return None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        root = env.get("LOCAL_FILES_DOCUMENT_ROOT")
        hosts = tuple(h.strip().lower() for h in env.get("MEDIA_ALLOWED_HOSTS", "").split(",") if h.strip())
        return cls(
            port=_int(env, "PORT", 9090),
            host=env.get("HOST") or "0.0.0.0",
            workers=_int(env, "WORKERS", 1),
            threads=_int(env, "THREADS", 8),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            webhook_require_auth=_bool(env, "WEBHOOK_REQUIRE_AUTH", False),
            max_request_bytes=max(1, _int(env, "MAX_REQUEST_BYTES", 32 * 1024 * 1024)),
            request_read_timeout=max(0.1, _float(env, "REQUEST_READ_TIMEOUT", 30.0)),
            priority=_bool(env, "PRIORITY", True),
            priority_hold=max(0.0, _float(env, "PRIORITY_HOLD", 60.0)),
            model_root=Path(env.get("MODEL_ROOT") or PACKAGED_WEIGHTS),
            model_dir=Path(env.get("MODEL_DIR") or "/tmp/prelabel-backend"),
            default_models={task: env.get(var) or default for task, (var, default) in DEFAULT_MODEL_ENV.items()},
            model_weights=env.get("MODEL_WEIGHTS") or None,
            model_version=_version_name(env, "MODEL_VERSION"),
            allow_custom_model_path=_bool(env, "ALLOW_CUSTOM_MODEL_PATH", True),
            model_score_threshold=_float(env, "MODEL_SCORE_THRESHOLD", 0.5),
            device=env.get("DEVICE") or "cpu",
            torch_threads=_int(env, "TORCH_THREADS", 0),
            runtime=_choice(env, "RUNTIME", ("auto", "torch", "onnx", "openvino")),
            inference=_choice(env, "INFERENCE", ("auto", "ultralytics", "lean")),
            batch_size=max(0, _int(env, "BATCH_SIZE", 0)),
            runtime_caches=(PACKAGED_RUNTIMES, *(Path(p.strip()) for p in env.get("RUNTIME_CACHE", "").split(",") if p.strip())),
            model_idle_unload=max(0.0, _float(env, "MODEL_IDLE_UNLOAD", 0.0)),
            debug_plot=_bool(env, "DEBUG_PLOT", False),
            label_studio_url=(env.get("LABEL_STUDIO_URL") or env.get("LABEL_STUDIO_HOST") or "").rstrip("/") or None,
            label_studio_public_urls=tuple(u.strip().rstrip("/") for u in env.get("LABEL_STUDIO_PUBLIC_URLS", "").split(",") if u.strip()),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or env.get("LABEL_STUDIO_ACCESS_TOKEN") or None,
            verify_ssl=_bool(env, "VERIFY_SSL", True),
            local_files_document_root=Path(root) if root else None,
            media_allowed_hosts=hosts,
            media_max_bytes=_int(env, "MEDIA_MAX_BYTES", 50 * 1024 * 1024),
            media_max_pixels=max(1, _int(env, "MEDIA_MAX_PIXELS", 89_478_485)),
            media_timeout=_float(env, "MEDIA_TIMEOUT", 15.0),
            media_retry_seconds=_float(env, "MEDIA_RETRY_SECONDS", 30.0),
            media_cache_items=_int(env, "MEDIA_CACHE_ITEMS", 64),
            media_cache_bytes=max(0, _int(env, "MEDIA_CACHE_BYTES", 256 * 1024 * 1024)),
            media_fetch_threads=max(1, _int(env, "MEDIA_FETCH_THREADS", 8)),
            max_video_frames=max(1, _int(env, "MAX_VIDEO_FRAMES", 9000)),
        )
