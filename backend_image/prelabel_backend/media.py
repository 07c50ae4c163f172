"""Fetching task media: from Label Studio (uploads, local files, cloud storage through its presign
endpoint), from allowlisted http(s) hosts, from the local files root, or inline data: URIs.

Where a reference points is decided by `media_urls` (pure); this module does the I/O: requests go
only to Label Studio and to MEDIA_ALLOWED_HOSTS (no SSRF through task data), redirects are followed
hop by hop under the same rule, the key goes only to Label Studio's own origin, with a size limit,
timeouts and a small in-memory cache. Keys and Authorization headers are never logged: errors name
the URL without its query string.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import io
import json
import logging
import sys
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import numpy as np
import requests
from PIL import Image, UnidentifiedImageError

from . import media_urls
from .media_urls import CLOUD_SCHEMES, LabelStudioAddress, MediaError
from .media_urls import safe as _safe
from .settings import Settings

log = logging.getLogger(__name__)
# MEDIA_MAX_PIXELS is checked here (image_size); Pillow only reads headers for it, so its own bomb
# warning (between its limit and twice that) would be noise when MEDIA_MAX_PIXELS is raised above it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
MAX_REDIRECTS = 5  # presign answers one redirect; a CDN may add one or two
__all__ = ["CLOUD_SCHEMES", "LabelStudioAuth", "LabelStudioSource", "MediaError", "MediaFetcher", "MediaNotFound"]


class MediaNotFound(MediaError):
    """The server answered 404: another reading of the same reference may exist."""


class Busy(MediaError):
    """The server answered 429 or 503: try again, after `retry_after` seconds when it said."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


RETRIED = (429, 503)  # Too Many Requests, Service Unavailable: the answers that say "later"


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")


def access_lifetime(access: str, now: float | None = None) -> float:
    """Seconds to reuse an access token: until 30 s before its own `exp` (the JWT payload, read without
    verifying: Label Studio verifies it), at most 240 s (Label Studio's default lifetime is 5 minutes,
    simplejwt's ACCESS_TOKEN_LIFETIME, and a server may set it shorter); 0 for a token past it."""
    try:
        payload = access.split(".")[1]
        expires = float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return 240.0
    return max(0.0, min(240.0, expires - (time.time() if now is None else now) - 30))


@dataclass
class LabelStudioSource:
    """Where Label Studio is and how to authenticate to it: env first, else what /setup sent."""

    url: str
    token: str | None
    public: tuple[str, ...] = ()  # the other addresses Label Studio writes into task data

    @property
    def address(self) -> LabelStudioAddress:
        return LabelStudioAddress(self.url, self.public)


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
            self._access[key] = (access, time.monotonic() + access_lifetime(access))
        return {"Authorization": f"Bearer {access}"}


class MediaFetcher:
    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.session.trust_env = False  # no proxy from the environment: requests go where we decide
        self.auth = LabelStudioAuth(self.session, settings.media_timeout, settings.verify_ssl)
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()
        self._setup: dict[str, LabelStudioSource] = {}

    # -- what /setup told us ------------------------------------------------------------------
    def remember_setup(self, project: str, hostname: str | None, access_token: str | None) -> None:
        """/setup's `hostname` is Label Studio's own LABEL_STUDIO_HOST: where it writes absolute
        media links. It becomes the project's Label Studio address when LABEL_STUDIO_URL is unset,
        and one of its public addresses otherwise (only paths are taken from it, never the key's
        destination: that stays LABEL_STUDIO_URL)."""
        if hostname:
            self._setup[project] = LabelStudioSource(hostname.rstrip("/"), access_token or None)

    def source(self, project: str | None) -> LabelStudioSource | None:
        """LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY, else /setup's hostname with /setup's token.
        The env key is never paired with a /setup hostname: whoever can call /setup would otherwise
        choose where the key goes."""
        remembered = self._setup.get(project or "")
        public = tuple(self.settings.label_studio_public_urls)
        if self.settings.label_studio_url:
            if remembered and remembered.url != self.settings.label_studio_url and remembered.url not in public:
                public += (remembered.url,)
            return LabelStudioSource(self.settings.label_studio_url, self.settings.label_studio_api_key, public)
        if remembered:
            return LabelStudioSource(remembered.url, remembered.token, public)
        return None

    # -- fetching -----------------------------------------------------------------------------
    def image(self, ref: str, task_id: int | None, project: str | None) -> np.ndarray:
        """The image decoded (BGR); MediaError when it is not one OpenCV decodes, or when its header
        claims more than MEDIA_MAX_PIXELS (checked before decoding: nothing is allocated for it)."""
        data = self.fetch(ref, task_id, project)
        limit = self.settings.media_max_pixels
        try:
            size = image_size(data)
        except Image.DecompressionBombError:
            raise MediaError(f"{_safe(ref)} claims more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels (Pillow's "
                             f"decompression-bomb limit, which also caps MEDIA_MAX_PIXELS)") from None
        if size is not None and size[0] * size[1] > limit:
            raise MediaError(f"{_safe(ref)} is {size[0]}x{size[1]} pixels, over MEDIA_MAX_PIXELS ({limit})")
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        except cv2.error as exc:  # e.g. over OpenCV's own CV_IO_MAX_IMAGE_PIXELS, for a format Pillow cannot read
            raise MediaError(f"{_safe(ref)} could not be decoded: {_cv2_reason(exc)}") from None
        if image is None:
            raise MediaError(f"{_safe(ref)} is not an image OpenCV can decode ({len(data)} bytes)")
        if image.shape[0] * image.shape[1] > limit:
            raise MediaError(f"{_safe(ref)} is {image.shape[1]}x{image.shape[0]} pixels, over MEDIA_MAX_PIXELS ({limit})")
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
            try:
                fps = float(capture.get(cv2.CAP_PROP_FPS) or 0) or 25.0
                frames: list[np.ndarray] = []
                while len(frames) < self.settings.max_video_frames:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    frames.append(frame)
            except cv2.error as exc:
                raise MediaError(f"{_safe(ref)} could not be decoded as a video: {_cv2_reason(exc)}") from None
            finally:
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
        key = (project or "", ref)  # a relative reference means another file in another Label Studio
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = self._fetch(ref, task_id, project)
        if self.settings.media_cache_items > 0 and len(data) <= self.settings.media_cache_bytes:
            with self._cache_lock:
                if key not in self._cache:
                    self._cache[key] = data
                    self._cache_bytes += len(data)
                while len(self._cache) > self.settings.media_cache_items or self._cache_bytes > self.settings.media_cache_bytes:
                    self._cache_bytes -= len(self._cache.popitem(last=False)[1])
        return data

    def _fetch(self, ref: str, task_id: int | None, project: str | None) -> bytes:
        source = self.source(project)
        address = source.address if source else None
        root = self.settings.local_files_document_root
        target = media_urls.resolve(ref, task_id, address, self.settings.media_allowed_hosts, local_files=root is not None)
        if target.local_query is not None:
            assert root is not None
            return self._local_file(root, target.local_query)
        for fallback in target.fallbacks:
            try:
                return self._get(target.url, source)
            except MediaNotFound:
                target = media_urls.Target(url=fallback, label_studio=target.label_studio)
        return self._get(target.url, source)

    def _local_file(self, root: Path, query: str) -> bytes:
        """The file a `/data/local-files/?d=` query names under LOCAL_FILES_DOCUMENT_ROOT: the first
        reading of the path that exists (media_urls.local_file_candidates), never outside the root."""
        candidates = media_urls.local_file_candidates(query)
        if not candidates:
            raise MediaError("a /data/local-files/ reference without a ?d= path")
        base = root.resolve()
        outside = []
        for relative in candidates:
            path = (base / relative).resolve()
            if not path.is_relative_to(base):
                outside.append(relative)
                continue
            if path.is_file():
                if path.stat().st_size > self.settings.media_max_bytes:
                    raise MediaError(f"local file {relative!r} is larger than MEDIA_MAX_BYTES")
                return path.read_bytes()
        if outside and len(outside) == len(candidates):
            raise MediaError(f"local file {candidates[0]!r} is outside LOCAL_FILES_DOCUMENT_ROOT: refused")
        raise MediaError(f"local file {candidates[0]!r} not found under LOCAL_FILES_DOCUMENT_ROOT ({root})")

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

    def _get(self, url: str, source: LabelStudioSource | None) -> bytes:
        """`_get_once`, tried again while the server answers 429 or 503 (Label Studio or a storage
        under load, label-studio-ml-backend PR #903): after its Retry-After (seconds or an HTTP date),
        else 1, 2, 4... s, up to MEDIA_RETRY_SECONDS waited in all. Then MediaError with the reason:
        the task fails, it is never stored as "no regions"."""
        budget = self.settings.media_retry_seconds
        waited, tries = 0.0, 0
        while True:
            tries += 1
            try:
                return self._get_once(url, source)
            except Busy as busy:
                wait = busy.retry_after if busy.retry_after is not None else float(2 ** (tries - 1))
                if waited + wait > budget:
                    asked = f"; it asked to wait {busy.retry_after:g} s more" if busy.retry_after is not None else ""
                    raise MediaError(f"{busy} ({tries} tries over {waited:g} s, MEDIA_RETRY_SECONDS is {budget:g}{asked})") from None
                log.info("%s; retrying in %g s", busy, wait)
                time.sleep(wait)
                waited += wait

    def _get_once(self, url: str, source: LabelStudioSource | None) -> bytes:
        """GET with redirects followed by hand, at most MAX_REDIRECTS hops, each checked by
        media_urls.redirect; the Authorization header only on Label Studio's own origin."""
        address = source.address if source else None
        limit = self.settings.media_max_bytes
        for _ in range(MAX_REDIRECTS + 1):
            headers = self.auth.header(source) if source is not None and media_urls.carries_key(url, address) else {}
            try:
                with self.session.get(url, headers=headers, timeout=self.settings.media_timeout,
                                      verify=self.settings.verify_ssl, stream=True, allow_redirects=False) as response:
                    if response.is_redirect:
                        url = media_urls.redirect(url, response.headers["Location"], address, self.settings.media_allowed_hosts)
                        continue
                    if response.status_code in RETRIED:
                        raise Busy(f"GET {_safe(url)} answered HTTP {response.status_code}", retry_after(response.headers.get("Retry-After")))
                    if response.status_code != 200:
                        error = MediaNotFound if response.status_code == 404 else MediaError
                        raise error(f"GET {_safe(url)} answered HTTP {response.status_code}{_hint(url, response.status_code, bool(headers))}")
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
        raise MediaError(f"more than {MAX_REDIRECTS} redirects, the last to {_safe(url)}")


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (RFC 9110 10.2.3: delay-seconds or an HTTP date), at
    least 0; None when absent or unreadable. `now`: the Unix time to count a date from (default: now)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header (Pillow reads only the header), or None when Pillow does
    not know the format (OpenCV may still: its own CV_IO_MAX_IMAGE_PIXELS, 2^30, then bounds it).
    Raises Image.DecompressionBombError over twice Pillow's Image.MAX_IMAGE_PIXELS."""
    try:
        with _pil_open()(io.BytesIO(data)) as image:
            size: tuple[int, int] = image.size
            return size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):  # truncated or unknown headers
        return None


def _pil_open() -> Any:
    """Pillow's own Image.open: ultralytics replaces it with one that, on an unknown format, installs
    pi-heif with pip at run time (offline: an ImportError, a 500) and keeps the original beside it."""
    opener = Image.open
    if opener.__module__ != Image.__name__:
        opener = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", opener)
    return opener


def _cv2_reason(exc: Exception) -> str:
    """OpenCV's error without its source path: the last line's assertion."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(" error: ", 1)[-1]


def _hint(url: str, status: int, sent_key: bool) -> str:
    """What to check after a refusal: the key only when it was sent."""
    if status in (401, 403):
        if sent_key:
            return " (check LABEL_STUDIO_API_KEY)"
        if media_urls.LABEL_STUDIO_PATH.match(urlsplit(url).path):
            return " (no key is sent to hosts other than LABEL_STUDIO_URL's: if this is Label Studio's public address, list it in LABEL_STUDIO_PUBLIC_URLS)"
        return " (no key is sent to hosts other than LABEL_STUDIO_URL's)"
    if status == 404 and sent_key:
        return " (check LABEL_STUDIO_URL, including any sub-path Label Studio is served under)"
    return ""
