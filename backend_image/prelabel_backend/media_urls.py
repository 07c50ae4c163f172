"""Where a task's media reference points, as pure functions (no I/O): Label Studio, reached through
LABEL_STUDIO_URL with its key; a file under LOCAL_FILES_DOCUMENT_ROOT; another allowed host, reached
without the key; or nowhere, refused with the reason.

The forms Label Studio 1.23 writes into task data (label_studio/data_import/models.py FileUpload.url,
io_storages/localfiles/models.py, io_storages/base_models.py, tasks/models.py) and those users'
import scripts write, all understood here:
- uploads `/data/upload/<project>/<file>`; `<sub-path>/data/upload/...` when Label Studio runs under a
  sub-path (its LABEL_STUDIO_HOST has a path: Django's FORCE_SCRIPT_NAME), whether or not LABEL_STUDIO_URL
  names the same sub-path (`media_path`: any sub-path before a media path is dropped); the legacy
  `upload/<project>/<file>` that label-studio-sdk's get_local_path also accepts;
- `/storage-data/uploaded/?filepath=upload/...`;
- local files `/data/local-files/?d=<path>`: Label Studio writes the path percent-encoded
  (`quote()`), import scripts often write it as is (spaces, `+`, `&`, `#`);
- cloud storage URIs `s3://`, `gs://`, `azure-blob://`, `azure-spi://`, resolved by Label Studio's
  `/tasks/<id>/presign/?fileuri=<base64>`; Label Studio itself writes `/tasks/<id>/resolve/?fileuri=`
  and `/projects/<id>/resolve/`;
- any of these absolute on Label Studio's own address, or on its public host name (its
  LABEL_STUDIO_HOST, which `/setup` sends as `hostname`), which the backend may not be able to reach:
  those paths are fetched through LABEL_STUDIO_URL instead.

The one rule for the key: it goes only to LABEL_STUDIO_URL's origin (scheme, host and port), see
`carries_key`. Every other host must be in MEDIA_ALLOWED_HOSTS, at every redirect hop, except where
Label Studio itself redirects (its presign endpoint points at the storage's signed URL).
"""

from __future__ import annotations

import base64
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, unquote_plus, urljoin, urlsplit

CLOUD_SCHEMES = frozenset({"s3", "gs", "azure-blob", "azure-spi"})
UNDEFINED_KEY = "$undefined$"  # Label Studio's DATA_UNDEFINED_NAME (core/settings/base.py)
DEFAULT_PORTS = {"http": 80, "https": 443}
# Paths Label Studio serves (relative to its base URL) that a task's media may point at.
LABEL_STUDIO_PATH = re.compile(r"^/(data/|storage-data/|api/|(tasks|projects)/\d+/(presign|resolve|file-proxy)/?)")
LOCAL_FILES_PATH = "/data/local-files"
# The media paths Label Studio serves, found after any sub-path: Label Studio under a prefix writes
# `<prefix>/data/upload/...` into task data (label-studio-sdk #575: "/label-studio/data/upload/4/x.png"),
# the prefix of its public address (LABEL_STUDIO_HOST), which need not be LABEL_STUDIO_URL's (a proxy
# strips it), and tasks made before a prefix changed keep the old one (label-studio #4424, #2230).
# The first match in the path wins; a file name never holds a "/", and a query is never searched.
MEDIA_PATH = re.compile(r"^(?:/[^/?]+)*?(?P<path>/(?:data/(?:upload|local-files)(?:/|$)|storage-data/"
                        r"|(?:tasks|projects)/\d+/(?:presign|resolve|file-proxy)(?:/|$)))")


class MediaError(Exception):
    """A task's media could not be resolved, fetched or decoded; the message is safe to log (no query
    strings, no keys) and says what to change."""


def safe(url: str) -> str:
    """The URL without query or fragment: presigned URLs carry credentials there."""
    if url.startswith("data:"):
        return f"{url.partition(',')[0]},... (inline, {len(url)} characters)"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path


Origin = tuple[str, str, int]


def origin(url: str) -> Origin | None:
    """(scheme, lower-case host, port with the scheme's default filled in), None without a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # an invalid port
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


@dataclass(frozen=True)
class LabelStudioAddress:
    """Where the backend reaches Label Studio (`url`, LABEL_STUDIO_URL, maybe with a sub-path) and
    the other addresses Label Studio writes into task data (`public`: its public URL(s), e.g. its
    LABEL_STUDIO_HOST; a bare host name matches that host on any scheme and port)."""

    url: str
    public: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    @property
    def prefix(self) -> str:
        """The sub-path Label Studio is served under ("" at the root), e.g. "/ls"."""
        return urlsplit(self.base).path.rstrip("/")

    def join(self, path_and_query: str) -> str:
        """A Label Studio path (with or without the sub-path already on it) as a URL on `url`."""
        path = path_and_query if path_and_query.startswith("/") else "/" + path_and_query
        prefix = self.prefix
        if prefix and (path == prefix or path.startswith((prefix + "/", prefix + "?"))):
            path = path[len(prefix):]  # already prefixed: never doubled
        return self.base + path

    def public_path(self, url: str) -> str | None:
        """The Label Studio path (sub-path removed) of `url` when it is on one of the public
        addresses and names something Label Studio serves; otherwise None."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        for public in self.public:
            if "://" not in public:
                if public.lower() not in (host, parts.netloc.lower()):
                    continue
                prefix = ""
            else:
                if origin(public) != origin(url):
                    continue
                prefix = urlsplit(public).path.rstrip("/")
            # The public address's own sub-path, else LABEL_STUDIO_URL's (one written without the other).
            for strip in dict.fromkeys((prefix, self.prefix)):
                path = parts.path
                if strip and (path == strip or path.startswith(strip + "/")):
                    path = path[len(strip):]
                if LABEL_STUDIO_PATH.match(path):
                    return path + (f"?{parts.query}" if parts.query else "")
            found = media_path(parts.path + (f"?{parts.query}" if parts.query else ""))
            if found is not None:  # a media path under a sub-path neither address names
                return found
        return None


@dataclass(frozen=True)
class Target:
    """What to read: `url` over HTTP(S) (`label_studio`: on Label Studio's address), or the local file
    named by a `/data/local-files/` query (`local_query`, raw as written in the task)."""

    url: str = ""
    label_studio: bool = False
    local_query: str | None = None
    fallbacks: tuple[str, ...] = ()  # other readings of the same reference, tried in order on a 404


def carries_key(url: str, label_studio: LabelStudioAddress | None) -> bool:
    """The only place the key decision is made: Label Studio's own origin, nothing else."""
    return label_studio is not None and origin(url) is not None and origin(url) == origin(label_studio.base)


def _label_studio_path(path_and_query: str, label_studio: LabelStudioAddress, local_files: bool) -> Target:
    """A path Label Studio serves (sub-path removed), read from disk when it is a local file and
    LOCAL_FILES_DOCUMENT_ROOT is set, else fetched through LABEL_STUDIO_URL."""
    path, _, query = path_and_query.partition("?")
    if path.rstrip("/") == LOCAL_FILES_PATH:
        if local_files:
            return Target(local_query=query)
        # Label Studio's view decodes ?d= once, form-style: send each reading encoded as it writes it.
        urls = [label_studio.join(f"{LOCAL_FILES_PATH}/?d={quote(c)}") for c in local_file_candidates(query)]
        if urls:
            return Target(url=urls[0], label_studio=True, fallbacks=tuple(urls[1:]))
    return Target(url=label_studio.join(path_and_query), label_studio=True)


def media_path(path_and_query: str) -> str | None:
    """The Label Studio media path (with its query) in `path_and_query` after whatever sub-path precedes
    it, e.g. "/label-studio/data/upload/4/x.png" -> "/data/upload/4/x.png"; None when it names none."""
    path, mark, query = path_and_query.partition("?")
    found = MEDIA_PATH.match(path)
    if found is None:
        return None
    return path[found.start("path"):] + mark + query


def _strip_prefix(path_and_query: str, prefix: str) -> str:
    if prefix and (path_and_query.startswith((prefix + "/", prefix + "?"))):
        return path_and_query[len(prefix):]
    return path_and_query


def resolve(ref: str, task_id: int | None, label_studio: LabelStudioAddress | None,
            allowed_hosts: tuple[str, ...] = (), local_files: bool = False) -> Target:
    """Where the media reference `ref` (a task data value) is read from.

    `local_files`: LOCAL_FILES_DOCUMENT_ROOT is set, so `/data/local-files/` references on any of
    Label Studio's addresses are read from disk. Raises MediaError saying why a reference is refused.
    """
    parts = urlsplit(ref)
    scheme = parts.scheme.lower()
    if scheme in CLOUD_SCHEMES:
        if label_studio is None or task_id is None:
            raise MediaError(f"{safe(ref)} needs Label Studio's presign endpoint: set LABEL_STUDIO_URL")
        fileuri = base64.urlsafe_b64encode(ref.encode()).decode()
        return Target(url=label_studio.join(f"/tasks/{task_id}/presign/?fileuri={quote(fileuri)}"), label_studio=True)
    if not scheme and not ref.startswith("//"):
        path = "/" + ref.lstrip("/")
        if path.startswith("/upload/"):  # the legacy form of an upload, as label-studio-sdk reads it
            path = "/data" + path
        if label_studio is None:
            raise MediaError(f"{safe(ref)} is relative to Label Studio: set LABEL_STUDIO_URL")
        inside = _strip_prefix(path, label_studio.prefix)
        if not LABEL_STUDIO_PATH.match(inside.split("?", 1)[0]):
            inside = media_path(inside) or inside  # another sub-path than LABEL_STUDIO_URL's (its public one)
        return _label_studio_path(inside, label_studio, local_files)
    if scheme not in DEFAULT_PORTS:
        raise MediaError(f"unsupported media reference scheme {scheme!r} in {safe(ref)}")
    if label_studio is not None:
        if origin(ref) == origin(label_studio.base):
            rest = ref.split(parts.netloc, 1)[1] or "/"
            inside = _strip_prefix(rest, label_studio.prefix)
            if LABEL_STUDIO_PATH.match(inside.split("?", 1)[0]):
                return _label_studio_path(inside, label_studio, local_files)
            found = media_path(inside)
            if found is not None:  # under another sub-path than LABEL_STUDIO_URL's
                return _label_studio_path(found, label_studio, local_files)
            return Target(url=ref, label_studio=True)
        public = label_studio.public_path(ref)
        if public is not None:
            return _label_studio_path(public, label_studio, local_files)
    host = (parts.hostname or "").lower()
    if host and host in allowed_hosts:
        return Target(url=ref)
    raise MediaError(f"host {host!r} is neither Label Studio's (LABEL_STUDIO_URL, LABEL_STUDIO_PUBLIC_URLS) nor in MEDIA_ALLOWED_HOSTS")


def redirect(current: str, location: str, label_studio: LabelStudioAddress | None, allowed_hosts: tuple[str, ...]) -> str:
    """The next hop of a redirect from `current` to `location`, checked like the first request:
    Label Studio's own paths (on any of its addresses) go through LABEL_STUDIO_URL; a redirect that
    Label Studio itself answers may go to any http(s) host (its presign endpoint points at the
    storage's signed URL); any other hop must be in MEDIA_ALLOWED_HOSTS. Raises MediaError."""
    target = urljoin(current, location)
    scheme = urlsplit(target).scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise MediaError(f"redirect from {safe(current)} to a {scheme or 'relative'!r} URL refused")
    if label_studio is not None:
        if origin(target) == origin(label_studio.base):
            return target
        public = label_studio.public_path(target)
        if public is not None:
            return label_studio.join(public)
        if carries_key(current, label_studio):
            return target
    host = (urlsplit(target).hostname or "").lower()
    if host in allowed_hosts:
        return target
    raise MediaError(f"redirect from {safe(current)} to host {host!r} refused: it is neither Label Studio's nor in MEDIA_ALLOWED_HOSTS")


def local_file_candidates(query: str) -> list[str]:
    """The relative paths a `/data/local-files/` query (raw, as written in the task) may name, most
    likely first, each decoded exactly once and normalised like Label Studio's own view
    (io_storages/localfiles/views.py: normpath, leading "/" removed).

    Label Studio writes `?d=<quote(path)>`: percent-decoding once gives the path and a literal "+"
    stays a "+". Import scripts write the path unencoded (a "+" is then a plus, and "&" or "#" are
    part of the name) or form-encoded (a "+" is a space): those readings come after, for the caller
    to try in order. Empty when there is no `d`."""
    values = [part[2:] for part in query.split("&") if part.startswith("d=")]
    if not values:
        return []
    raw = values[-1]  # the last value wins, as in Django's request.GET.get
    readings = [unquote(raw)]
    if "+" in raw:
        readings.append(unquote_plus(raw))
    if query.startswith("d=") and query[2:] != raw:
        readings.append(unquote(query[2:]))  # "&" (or "#") written unencoded in the name
    out: list[str] = []
    for reading in readings:
        normal = posixpath.normpath(reading).lstrip("/") if reading else ""
        if normal and normal != "." and normal not in out:
            out.append(normal)
    return out


def media_value(data: dict[str, object], key: str, single_object: bool) -> object:
    """The task's value for the config's data key; when the task lacks it and the config has exactly
    one object, the value Label Studio's storages put under `$undefined$` (as Label Studio does in
    core/label_config.py replace_task_data_undefined_with_config_field). Raises MediaError."""
    if key in data:
        return data[key]
    if single_object and UNDEFINED_KEY in data:
        return data[UNDEFINED_KEY]
    hint = f" (nor {UNDEFINED_KEY!r})" if single_object else ""
    raise MediaError(f"task data has no field {key!r}{hint}")
