"""Where a media reference points (media_urls, pure): every form Label Studio or an import script
writes, Label Studio under a sub-path or behind a public host name, local files, redirects."""

from __future__ import annotations

import re

import pytest

from prelabel_backend.media_urls import (
    LabelStudioAddress,
    MediaError,
    Target,
    carries_key,
    local_file_candidates,
    media_path,
    media_value,
    redirect,
    resolve,
)

LS = "http://127.0.0.1:8080"
PUBLIC = "https://labelstudio.example.com"


@pytest.mark.parametrize("base", [LS, LS + "/ls", LS + "/ls/", LS + "/a/b"])
@pytest.mark.parametrize("form", ["{p}/data/upload/1/a.png", "/data/upload/1/a.png", "data/upload/1/a.png", "upload/1/a.png",
                                  "/upload/1/a.png", LS + "{p}/data/upload/1/a.png", LS + "/data/upload/1/a.png"])
def test_uploads_reach_label_studio_once_prefixed_whatever_the_form(base: str, form: str) -> None:
    """Case 1: the sub-path is never doubled nor lost."""
    prefix = base[len(LS):].rstrip("/")
    target = resolve(form.format(p=prefix), 1, LabelStudioAddress(base))
    assert target == Target(url=f"{LS}{prefix}/data/upload/1/a.png", label_studio=True)


@pytest.mark.parametrize("public", [PUBLIC, PUBLIC + "/", "labelstudio.example.com", "LabelStudio.Example.com"])
@pytest.mark.parametrize(("path", "expected"), [
    ("/data/upload/1/a.png", "/data/upload/1/a.png"),
    ("/storage-data/uploaded/?filepath=upload/1/a.png", "/storage-data/uploaded/?filepath=upload/1/a.png"),
    ("/tasks/7/presign/?fileuri=czM6Ly9i", "/tasks/7/presign/?fileuri=czM6Ly9i"),
    ("/tasks/7/resolve/?fileuri=czM6Ly9i", "/tasks/7/resolve/?fileuri=czM6Ly9i"),
    ("/projects/2/resolve/?fileuri=czM6Ly9i", "/projects/2/resolve/?fileuri=czM6Ly9i"),
    ("/data/local-files/?d=set%201/plain.png", "/data/local-files/?d=set%201/plain.png"),
])
def test_label_studio_paths_on_its_public_host_go_through_label_studio_url(public: str, path: str, expected: str) -> None:
    """Case 2: Label Studio writes its LABEL_STUDIO_HOST into links; the backend reaches LABEL_STUDIO_URL."""
    address = LabelStudioAddress(LS + "/ls", (public.rstrip("/"),))
    for ref in (PUBLIC + path, PUBLIC + "/ls" + path):
        target = resolve(ref, 7, address)
        assert target == Target(url=LS + "/ls" + expected, label_studio=True)
        assert carries_key(target.url, address)


def test_a_public_address_with_a_sub_path_and_other_paths_on_the_public_host() -> None:
    address = LabelStudioAddress(LS, ("https://example.com/ls",))
    assert resolve("https://example.com/ls/data/upload/1/a.png", 1, address).url == LS + "/data/upload/1/a.png"
    # Not a path Label Studio serves: an ordinary host, refused unless allowed, and then without the key.
    with pytest.raises(MediaError, match="neither Label Studio's"):
        resolve("https://example.com/ls/static/logo.png", 1, address)
    allowed = resolve("https://example.com/photos/a.png", 1, address, allowed_hosts=("example.com",))
    assert allowed == Target(url="https://example.com/photos/a.png") and not carries_key(allowed.url, address)
    with pytest.raises(MediaError, match="neither Label Studio's"):
        resolve("https://other.example.com/data/upload/1/a.png", 1, address)  # another host is not an alias


@pytest.mark.parametrize(("url", "key"), [
    (LS + "/data/upload/1/a.png", True),
    ("HTTP://127.0.0.1:8080/x", True),
    ("http://127.0.0.1:80/x", False),  # same host, another port: another server
    ("http://127.0.0.1:8081/data/upload/1/a.png", False),
    ("https://127.0.0.1:8080/x", False),  # another scheme
    ("http://localhost:8080/x", False),
    (PUBLIC + "/data/upload/1/a.png", False),  # the public host itself never gets the key: only LABEL_STUDIO_URL does
    ("http://127.0.0.1:8080@evil.example/x", False),
])
def test_the_key_goes_to_label_studio_url_s_origin_only(url: str, key: bool) -> None:
    assert carries_key(url, LabelStudioAddress(LS, (PUBLIC,))) is key
    assert carries_key(url, None) is False


@pytest.mark.parametrize(("query", "readings"), [
    ("d=set 1/a b+c.png", ["set 1/a b+c.png", "set 1/a b c.png"]),  # unencoded: "+" is a plus first
    ("d=set%201/plain.png", ["set 1/plain.png"]),  # as Label Studio writes it (quote)
    ("d=set%201/a%20b%2Bc.png", ["set 1/a b+c.png"]),
    ("d=set+1/plain.png", ["set+1/plain.png", "set 1/plain.png"]),  # form-encoded (quote_plus)
    ("d=%2525.png", ["%25.png"]),  # decoded exactly once
    ("d=/abs/dir/x.png", ["abs/dir/x.png"]),  # "?d=" is relative to the root, as in Label Studio's view
    ("d=a/./b/../c.png", ["a/c.png"]),
    ("d=R%26D/a.png", ["R&D/a.png"]),
    ("d=R&D/a.png", ["R", "R&D/a.png"]),  # an unencoded "&" in the name
    ("x=1&d=a.png", ["a.png"]),
    ("d=a.png&d=b.png", ["b.png", "a.png&d=b.png"]),  # the last value wins, as in Django
    ("d=", []),
    ("foo=bar", []),
])
def test_local_file_paths_are_decoded_once_in_every_form(query: str, readings: list[str]) -> None:
    """Case 3."""
    assert local_file_candidates(query) == readings


@pytest.mark.parametrize("ref", ["/data/local-files/?d=set 1/a b+c.png", "/ls/data/local-files/?d=set%201/a%20b%2Bc.png",
                                 LS + "/ls/data/local-files/?d=set%201/a%20b%2Bc.png", LS + "/data/local-files?d=set 1/a b+c.png",
                                 PUBLIC + "/data/local-files/?d=set%201/a%20b%2Bc.png", "data/local-files/?d=set 1/a b+c.png"])
def test_local_files_on_any_label_studio_address_are_read_from_disk_when_the_root_is_set(ref: str) -> None:
    address = LabelStudioAddress(LS + "/ls", (PUBLIC,))
    target = resolve(ref, 1, address, local_files=True)
    assert target.local_query is not None and local_file_candidates(target.local_query)[0] == "set 1/a b+c.png"
    # Without a root, Label Studio serves them: each reading re-encoded as Label Studio writes it.
    over_http = resolve(ref, 1, address, local_files=False)
    assert over_http.url == LS + "/ls/data/local-files/?d=set%201/a%20b%2Bc.png" and over_http.label_studio


def test_cloud_uris_go_to_the_presign_endpoint_under_the_sub_path() -> None:
    target = resolve("s3://bucket/dir/a b.png", 9, LabelStudioAddress(LS + "/ls"))
    assert target.url.startswith(LS + "/ls/tasks/9/presign/?fileuri=") and target.label_studio
    with pytest.raises(MediaError, match="set LABEL_STUDIO_URL"):
        resolve("gs://bucket/a.png", 9, None)


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "ftp://host/a.png", "//evil.example/a.png", "javascript:alert(1)"])
def test_other_schemes_are_refused(ref: str) -> None:
    with pytest.raises(MediaError):
        resolve(ref, 1, LabelStudioAddress(LS), allowed_hosts=("evil.example", "host"))


def test_redirect_hops_are_checked_like_the_first_request() -> None:
    """Case 4: the allow-list applies at every hop; Label Studio's own redirects may leave it."""
    address = LabelStudioAddress(LS + "/ls", (PUBLIC,))
    allowed = ("media.example.com", "cdn.example.com")
    assert redirect("http://media.example.com/a.png", "/new/a.png", address, allowed) == "http://media.example.com/new/a.png"
    assert redirect("http://media.example.com/a.png", "https://cdn.example.com/a.png", address, allowed) == "https://cdn.example.com/a.png"
    with pytest.raises(MediaError, match=re.escape("to host 'evil.example' refused")):
        redirect("http://media.example.com/a.png", "http://evil.example/a.png", address, allowed)
    with pytest.raises(MediaError, match=re.escape("to host '169.254.169.254' refused")):
        redirect("http://media.example.com/a.png", "http://169.254.169.254/latest/meta-data", address, allowed)
    with pytest.raises(MediaError, match="refused"):
        redirect("http://media.example.com/a.png", "file:///etc/passwd", address, allowed)
    # Label Studio's presign answers with the storage's signed URL, on a host nobody lists.
    signed = "https://bucket.s3.amazonaws.com/a.png?X-Amz-Signature=abc"
    assert redirect(LS + "/ls/tasks/9/presign/?fileuri=x", signed, address, ()) == signed
    # A hop onto Label Studio's public address goes through LABEL_STUDIO_URL again.
    assert redirect(LS + "/ls/data/upload/1/a.png", PUBLIC + "/data/upload/1/b.png", address, ()) == LS + "/ls/data/upload/1/b.png"


def test_undefined_key_is_read_when_the_config_has_one_object() -> None:
    """Case 5: Label Studio's storages put the file under `$undefined$` when the task lacks the key."""
    assert media_value({"$undefined$": "/data/upload/1/a.png"}, "image", single_object=True) == "/data/upload/1/a.png"
    assert media_value({"image": "x", "$undefined$": "y"}, "image", single_object=True) == "x"
    with pytest.raises(MediaError, match="no field 'image'"):
        media_value({"$undefined$": "y"}, "image", single_object=False)  # two objects: which one is ambiguous
    with pytest.raises(MediaError, match=r"no field 'image' \(nor '\$undefined\$'\)"):
        media_value({"other": "y"}, "image", single_object=True)


# Issue 29, fault 11: Label Studio served under a path prefix (its LABEL_STUDIO_HOST has a path) writes
# `<prefix>/data/upload/...` (label-studio-sdk #575: "/label-studio/data/upload/4/x.png", which the SDK's
# get_local_path fetched as a URL without a host), while a proxy in front of it strips the prefix, so the
# backend reaches it at LABEL_STUDIO_URL without one; tasks from before a prefix change keep the old
# prefix, or none (label-studio #2230, #4424), and converters and import scripts wrote the prefix doubled
# or without the leading "/" (label-studio-converter #105).
PREFIX_FORMS = [
    "/label-studio/data/upload/4/x.png", "label-studio/data/upload/4/x.png", "/label-studio/label-studio/data/upload/4/x.png",
    "/old/prefix/data/upload/4/x.png", "/data/upload/4/x.png", "data/upload/4/x.png", "upload/4/x.png",
    PUBLIC + "/label-studio/data/upload/4/x.png", PUBLIC + "/data/upload/4/x.png", PUBLIC + "/other/data/upload/4/x.png",
    "{ls}/label-studio/data/upload/4/x.png", "{ls}/data/upload/4/x.png",
]


@pytest.mark.parametrize("base", ["", "/ls", "/label-studio"])
@pytest.mark.parametrize("public", [PUBLIC + "/label-studio", "labelstudio.example.com"])
@pytest.mark.parametrize("form", PREFIX_FORMS)
def test_every_form_of_a_prefixed_upload_is_one_keyed_fetch_on_label_studio(base: str, public: str, form: str) -> None:
    address = LabelStudioAddress(LS + base, (public,))
    target = resolve(form.format(ls=LS + base), 4, address)
    assert target == Target(url=f"{LS}{base}/data/upload/4/x.png", label_studio=True)  # one URL, no fallbacks
    assert carries_key(target.url, address)


@pytest.mark.parametrize(("form", "path"), [
    ("/label-studio/storage-data/uploaded/?filepath=upload/4/x.png", "/storage-data/uploaded/?filepath=upload/4/x.png"),
    ("/label-studio/tasks/7/presign/?fileuri=czM6Ly9i", "/tasks/7/presign/?fileuri=czM6Ly9i"),
    ("/label-studio/projects/2/resolve/?fileuri=czM6Ly9i", "/projects/2/resolve/?fileuri=czM6Ly9i"),
    (PUBLIC + "/x/y/tasks/7/resolve/?fileuri=czM6Ly9i", "/tasks/7/resolve/?fileuri=czM6Ly9i"),
    ("/label-studio/data/local-files/?d=set%201/a.png", "/data/local-files/?d=set%201/a.png"),
    ("/label-studio/data/upload/4/data/upload/x.png", "/data/upload/4/data/upload/x.png"),  # the first match only
])
def test_other_label_studio_media_paths_under_a_prefix_lose_only_the_prefix(form: str, path: str) -> None:
    address = LabelStudioAddress(LS, ("labelstudio.example.com",))
    assert resolve(form, 7, address) == Target(url=LS + path, label_studio=True)


def test_a_prefix_before_a_path_label_studio_does_not_serve_as_media_is_not_dropped() -> None:
    address = LabelStudioAddress(LS)
    assert resolve("/label-studio/static/logo.png", 1, address).url == LS + "/label-studio/static/logo.png"
    assert resolve("/label-studio/api/projects", 1, address).url == LS + "/label-studio/api/projects"
    assert resolve("/label-studio/data/uploads/x.png", 1, address).url == LS + "/label-studio/data/uploads/x.png"
    assert media_path("/a/data/upload/1/x.png?x=/data/upload/") == "/data/upload/1/x.png?x=/data/upload/"
    assert media_path("/a/b/c.png?d=/data/upload/1/x.png") is None  # a query is never searched
