"""Fetching task images: from Label Studio (uploads, local files, cloud storage through its presign
endpoint), from allowlisted http(s) hosts, from the local files root, or inline data: URIs.

Requests go only to Label Studio's host and to MEDIA_ALLOWED_HOSTS (no SSRF through task data),
with a size limit, timeouts and a small in-memory cache. Keys and Authorization headers are never
logged: errors name the URL without its query string.
"""

from __future__ import annotations

import base64
import binascii
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit

import cv2
import numpy as np
import requests

from .settings import Settings

log = logging.getLogger(__name__)
CLOUD_SCHEMES = {"s3", "gs", "azure-blob", "azure-spi"}


class MediaError(Exception):
    """A task's media could not be fetched or decoded; the message is safe to log."""


def _safe(url: str) -> str:
    """The URL without query or fragment: presigned URLs carry credentials there."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


@dataclass
class LabelStudioSource:
    """Where Label Studio is and how to authenticate to it: env first, else what /setup sent."""

    url: str
    token: str | None


class LabelStudioAuth:
    """The Authorization header for a Label Studio token: `Token <key>` for a legacy token; for a
    personal access token (a JWT refresh token) a `Bearer` access token from /api/token/refresh/,
    cached until shortly before it expires, as label-studio-sdk does."""

    def __init__(self, session: requests.Session, timeout: float, verify: bool) -> None:
        self._session, self._timeout, self._verify = session, timeout, verify
        self._access: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def header(self, source: LabelStudioSource) -> dict[str, str]:
        if not source.token:
            return {}
        if not looks_like_jwt(source.token):
            return {"Authorization": f"Token {source.token}"}
        key = (source.url, source.token)
        with self._lock:
            cached = self._access.get(key)
            if cached and cached[1] > time.monotonic():
                return {"Authorization": f"Bearer {cached[0]}"}
        try:
            response = self._session.post(f"{source.url}/api/token/refresh/", json={"refresh": source.token},
                                          timeout=self._timeout, verify=self._verify)
        except requests.RequestException as exc:
            raise MediaError(f"could not refresh the Label Studio access token at {source.url}: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise MediaError(f"Label Studio refused the personal access token (HTTP {response.status_code}): check LABEL_STUDIO_API_KEY")
        access = response.json().get("access", "")
        with self._lock:
            self._access[key] = (access, time.monotonic() + 240)  # access tokens live 5 minutes
        return {"Authorization": f"Bearer {access}"}


class MediaFetcher:
    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.session.trust_env = False  # no proxy from the environment: requests go where we decide
        self.auth = LabelStudioAuth(self.session, settings.media_timeout, settings.verify_ssl)
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._setup: dict[str, LabelStudioSource] = {}

    # -- what /setup told us ------------------------------------------------------------------
    def remember_setup(self, project: str, hostname: str | None, access_token: str | None) -> None:
        if hostname:
            self._setup[project] = LabelStudioSource(hostname.rstrip("/"), access_token or None)

    def source(self, project: str | None) -> LabelStudioSource | None:
        remembered = self._setup.get(project or "")
        url = self.settings.label_studio_url or (remembered.url if remembered else None)
        token = self.settings.label_studio_api_key or (remembered.token if remembered else None)
        return LabelStudioSource(url, token) if url else None

    # -- fetching -----------------------------------------------------------------------------
    def image(self, ref: str, task_id: int | None, project: str | None) -> np.ndarray:
        data = self.fetch(ref, task_id, project)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise MediaError(f"{_safe(ref)} is not an image OpenCV can decode ({len(data)} bytes)")
        return image

    def video(self, ref: str, task_id: int | None, project: str | None) -> tuple[list[np.ndarray], float]:
        """Every frame (BGR) of a video and its frame rate; OpenCV reads videos from files only."""
        data = self.fetch(ref, task_id, project, cache=False)  # videos are too big for the small cache
        folder = Path(self.settings.model_dir) / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=Path(urlsplit(ref).path).suffix or ".mp4") as tmp:
            tmp.write(data)
            tmp.flush()
            capture = cv2.VideoCapture(tmp.name)
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0) or 25.0
            frames = []
            while len(frames) < self.settings.max_video_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                frames.append(frame)
            capture.release()
        if not frames:
            raise MediaError(f"{_safe(ref)} is not a video OpenCV can decode ({len(data)} bytes)")
        return frames, fps

    def fetch(self, ref: str, task_id: int | None, project: str | None, cache: bool = True) -> bytes:
        if not isinstance(ref, str) or not ref:
            raise MediaError("the task has no media reference in the field the labeling config names")
        if ref.startswith("data:"):
            return self._inline(ref)
        if not cache:
            return self._fetch(ref, task_id, project)
        with self._cache_lock:
            if ref in self._cache:
                self._cache.move_to_end(ref)
                return self._cache[ref]
        data = self._fetch(ref, task_id, project)
        if self.settings.media_cache_items > 0:
            with self._cache_lock:
                self._cache[ref] = data
                while len(self._cache) > self.settings.media_cache_items:
                    self._cache.popitem(last=False)
        return data

    def _fetch(self, ref: str, task_id: int | None, project: str | None) -> bytes:
        parts = urlsplit(ref)
        source = self.source(project)
        if parts.scheme in CLOUD_SCHEMES:
            return self._presigned(ref, task_id, source)
        if not parts.scheme and ref.startswith("/"):
            local = self._local_file(ref)
            if local is not None:
                return local
            if source is None:
                raise MediaError(f"{_safe(ref)} is relative to Label Studio: set LABEL_STUDIO_URL")
            return self._get(urljoin(source.url + "/", ref.lstrip("/")), self.auth.header(source))
        if parts.scheme not in ("http", "https"):
            raise MediaError(f"unsupported media reference scheme {parts.scheme!r} in {_safe(ref)}")
        host = (parts.hostname or "").lower()
        if source is not None and host == (urlsplit(source.url).hostname or "").lower():
            return self._get(ref, self.auth.header(source))
        if host in self.settings.media_allowed_hosts:
            return self._get(ref, {})
        raise MediaError(f"host {host!r} is neither Label Studio's nor in MEDIA_ALLOWED_HOSTS")

    def _presigned(self, ref: str, task_id: int | None, source: LabelStudioSource | None) -> bytes:
        """Cloud storage: Label Studio signs the URI (it holds the storage credentials) and redirects."""
        if source is None or task_id is None:
            raise MediaError(f"{_safe(ref)} needs Label Studio's presign endpoint: set LABEL_STUDIO_URL")
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        return self._get(f"{source.url}/tasks/{task_id}/presign/?fileuri={quote(fileuri)}", self.auth.header(source))

    def _local_file(self, ref: str) -> bytes | None:
        root = self.settings.local_files_document_root
        if root is None or not ref.startswith("/data/local-files"):
            return None
        relative = unquote(parse_qs(urlsplit(ref).query).get("d", [""])[0])
        base = root.resolve()
        path = (base / relative).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            raise MediaError(f"local file {relative!r} is not under LOCAL_FILES_DOCUMENT_ROOT")
        if path.stat().st_size > self.settings.media_max_bytes:
            raise MediaError(f"local file {relative!r} is larger than MEDIA_MAX_BYTES")
        return path.read_bytes()

    def _inline(self, ref: str) -> bytes:
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise MediaError("only base64 data: URIs are supported")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"invalid base64 in data: URI: {exc}") from None
        if len(data) > self.settings.media_max_bytes:
            raise MediaError("inline image is larger than MEDIA_MAX_BYTES")
        return data

    def _get(self, url: str, headers: dict[str, str]) -> bytes:
        limit = self.settings.media_max_bytes
        try:
            # Redirects are followed only from Label Studio's own endpoints (presign): requests drops
            # the Authorization header when a redirect leaves the original host.
            with self.session.get(url, headers=headers, timeout=self.settings.media_timeout,
                                  verify=self.settings.verify_ssl, stream=True, allow_redirects=bool(headers)) as response:
                if response.status_code != 200:
                    hint = " (check LABEL_STUDIO_API_KEY)" if response.status_code in (401, 403) else ""
                    raise MediaError(f"GET {_safe(url)} answered HTTP {response.status_code}{hint}")
                declared = int(response.headers.get("Content-Length") or 0)
                if declared > limit:
                    raise MediaError(f"{_safe(url)} is {declared} bytes, over MEDIA_MAX_BYTES ({limit})")
                chunks, size = [], 0
                for chunk in response.iter_content(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise MediaError(f"{_safe(url)} is over MEDIA_MAX_BYTES ({limit})")
                    chunks.append(chunk)
                return b"".join(chunks)
        except requests.RequestException as exc:
            raise MediaError(f"GET {_safe(url)} failed: {type(exc).__name__}") from None
