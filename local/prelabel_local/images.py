"""The project's container images, built from its own Dockerfiles by podman and exported for
containerd, with no Docker and no container registry (docs/local-mode.md, "What this machine needs").

- `ensure_tools()`: podman, buildah, debootstrap ... from Debian packages, and podman's configuration:
  the project's own containers.conf and storage.conf (env CONTAINERS_CONF, CONTAINERS_STORAGE_CONF),
  storage under ~/.cache/prelabel/containers/, never the user's global configuration.
- `base_image()`: what the Dockerfiles' `PYTHON_IMAGE` stands for, made with debootstrap (Debian
  bookworm, python3 3.11): `localhost/prelabel-base:<key>`, its rootfs tarball cached.
- `build("operator" | "backend" | "backend-lean")`: `podman build` of Dockerfile.<which> on that base,
  layers cached in the project's podman storage, so a second build redoes only what changed. The lean
  backend takes the packaged models' exports from the full one, which it builds first.
- `archive(tag)`: a docker-archive tar for `ctr -n k8s.io images import`, cached by image ID.

Every podman call goes through `podman()` (the project's configuration in its environment): tests
run containers with it, and `python -m prelabel_local.images build operator backend backend-lean`
prebuilds them (`make images`). Long commands run in their own process group and are ended with it (`stop_group`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from .cluster import REPO, stop_group
from .venv import CACHE

Image = Literal["operator", "backend", "backend-lean"]
IMAGES: tuple[Image, ...] = ("operator", "backend", "backend-lean")
HOME = CACHE / "containers"  # podman's storage and the configuration files written for it
ARCHIVES = CACHE / "images"  # the base rootfs tarball and the docker-archive tars
# Debian packages: podman and buildah (the build), debootstrap (the base), uidmap and conmon (podman
# needs them), runc (crun refuses this machine's hybrid cgroup v1 layout).
PACKAGES = ("podman", "buildah", "debootstrap", "uidmap", "conmon", "runc", "fuse-overlayfs")
# The base: what the Dockerfiles expect of python:3.11-slim-bookworm (`python` on PATH, venv, CAs).
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# `podman import` sets no PATH and containerd adds none: without it containerd finds no `python`.
BASE_CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8")
# What slim images drop too: apt's lists and caches, docs, man pages, translations (C.UTF-8 stays).
BASE_DROPPED = ("var/lib/apt/lists", "var/cache/apt", "var/log", "usr/share/doc", "usr/share/man", "usr/share/info",
                "usr/share/locale")
# The host's trust store, for pip in RUN steps only (a build-time mount: it stays out of the image).
TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"
# Every `podman build` here: docker format, layers cached, never a pull (no registry), RUN steps on the
# host's network (no bridge, no iptables rules to leave behind) with its trust store.
BUILD = ("build", "--format", "docker", "--layers", "--pull=never", "--network", "host", "-v", f"{TRUST_STORE}:{TRUST_STORE}:ro")

CONTAINERS_CONF = """\
# Written by prelabel_local.images: podman for the project's images only (not the user's config).
[containers]
# Processes here lack CAP_SYS_RESOURCE: podman's defaults (raising nofile to 1M) fail.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "{run}/libpod"
"""
STORAGE_CONF = """\
# Written by prelabel_local.images: the project's image and layer cache.
[storage]
driver = "overlay"
graphroot = "{home}/storage"
runroot = "{run}/storage"
"""


class ImageError(RuntimeError):
    pass


def version() -> str:
    return (REPO / "VERSION").read_text().strip()


def tag(which: Image) -> str:
    """The local tag a build gets, e.g. localhost/prelabel-operator:0.1.0 (the chart's image.repository:tag)."""
    return f"localhost/prelabel-{which}:{version()}"


def _run_dir() -> Path:
    # Runtime state belongs on a tmpfs that a reboot clears (podman detects reboots there).
    base = os.environ.get("XDG_RUNTIME_DIR") or ("/run" if os.geteuid() == 0 else tempfile.gettempdir())
    return Path(base) / f"prelabel-podman-{os.geteuid()}"


def env() -> dict[str, str]:
    """The environment podman, buildah and containers/storage read the project's configuration from."""
    return {**os.environ, "CONTAINERS_CONF": str(HOME / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(HOME / "storage.conf")}


def ensure_tools() -> None:
    """Installs the Debian packages that are missing (apt-get, as root or through sudo) and writes
    podman's configuration under ~/.cache/prelabel/containers/. Raises ImageError when apt fails."""
    missing = [p for p in PACKAGES if not _installed(p)]
    if missing:
        # Lock::Timeout: wait for another apt-get (make -j runs the argocd target's beside this one).
        apt = ([] if os.geteuid() == 0 else ["sudo"]) + ["env", "RUNLEVEL=1", "DEBIAN_FRONTEND=noninteractive", "apt-get",
                                                        "-o", "DPkg::Lock::Timeout=600"]
        install = [*apt, "install", "-y", "-qq", "--no-install-recommends", *missing]
        print(f"[images] installing {' '.join(missing)}", file=sys.stderr)
        if subprocess.run(install, stdout=subprocess.DEVNULL, check=False).returncode != 0:
            subprocess.run([*apt, "update", "-qq"], check=False)
            if subprocess.run(install, stdout=subprocess.DEVNULL, check=False).returncode != 0:
                raise ImageError(f"apt-get could not install {' '.join(missing)}")
    run = _run_dir()
    HOME.mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, text in (("containers.conf", CONTAINERS_CONF), ("storage.conf", STORAGE_CONF)):
        conf = HOME / name
        wanted = text.format(home=HOME, run=run)
        if not conf.exists() or conf.read_text() != wanted:
            conf.write_text(wanted)


def _installed(package: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False)
    return out.stdout.endswith("installed")


def podman(*args: str, check: bool = True, capture: bool = True, timeout: float | None = 120,
           input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`podman <args>` with the project's configuration (call ensure_tools() first), `input_text` on
    its stdin. Raises ImageError with podman's stderr when `check` and it fails."""
    done = subprocess.run(["podman", *args], env=env(), text=True, check=False, timeout=timeout, input=input_text,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)
    if check and done.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:2])} failed ({done.returncode}): {(done.stderr or '').strip()[-2000:]}")
    return done


def _long(args: list[str], what: str, **kwargs: object) -> None:
    """A long command (debootstrap, a build, a save) in its own process group: Ctrl-C or an error
    here ends it and its children, as cluster.stop_group does for servers."""
    popen = subprocess.Popen(args, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    try:
        code = popen.wait()
    except BaseException:
        stop_group(popen, grace=10)
        raise
    if code != 0:
        raise ImageError(f"{what} failed ({code}): {' '.join(args)}")


def exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_id(ref: str) -> str:
    """The image's full ID (sha256 hex, no prefix)."""
    return podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def base_image() -> str:
    """`localhost/prelabel-base:<key>`: a debootstrap minbase of Debian bookworm with python3 (3.11),
    venv, `python` and CA certificates, imported into podman. The key hashes what makes it, so a
    change makes a new one. Cold: about 150 s (debootstrap from deb.debian.org); the rootfs tarball
    is kept under ~/.cache/prelabel/images/, so a fresh podman storage re-imports it in seconds."""
    ensure_tools()
    key = hashlib.sha256(json.dumps([SUITE, BASE_PACKAGES, BASE_CHANGES, BASE_DROPPED]).encode()).hexdigest()[:12]
    ref = f"localhost/prelabel-base:{key}"
    if exists(ref):
        return ref
    rootfs = ARCHIVES / f"base-{SUITE}-{key}.tar"
    if not rootfs.exists():
        _debootstrap(rootfs)
    changes = [a for c in BASE_CHANGES for a in ("--change", c)]
    podman("import", *changes, str(rootfs), ref, timeout=600)
    return ref


def _debootstrap(rootfs: Path) -> None:
    print(f"[images] debootstrap {SUITE} into {rootfs} (first time: a few minutes)", file=sys.stderr)
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="base-", dir=ARCHIVES))
    target = work / "rootfs"
    try:
        _long(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(target)],
              "debootstrap", stdout=subprocess.DEVNULL)
        for junk in BASE_DROPPED:
            shutil.rmtree(target / junk, ignore_errors=True)
            (target / junk).mkdir(parents=True, exist_ok=True)
        partial = work / "rootfs.tar"
        _long(["tar", "--numeric-owner", "-C", str(target), "-cf", str(partial), "."], "tar")
        partial.rename(rootfs)
        for stale in ARCHIVES.glob(f"base-{SUITE}-*.tar"):  # made by an older BASE_* (a new key)
            if stale != rootfs:
                stale.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(which: Image) -> str:
    """Builds Dockerfile.<which> from the repository with podman and returns its tag
    (localhost/prelabel-<which>:<VERSION>). PYTHON_IMAGE is the local base; pip's RUN steps see the
    host's trust store through a build-time mount; RUN steps use the host's network (no bridge and
    no iptables rules to leave behind). Layers are cached: an unchanged step is not run again."""
    base = base_image()
    extra = ["--build-arg", f"FULL_IMAGE={build('backend')}"] if which == "backend-lean" else []
    ref = tag(which)
    print(f"[images] building {ref}", file=sys.stderr)
    _long(["podman", *BUILD, "--build-arg", f"PYTHON_IMAGE={base}", *extra, "-f", str(REPO / f"Dockerfile.{which}"), "-t", ref, str(REPO)],
          f"podman build of Dockerfile.{which}", env=env(), stdout=sys.stderr)
    return ref


def archive(ref: str) -> Path:
    """The image as a docker-archive tar (for `ctr -n k8s.io images import`), under
    ~/.cache/prelabel/images/, named by its image ID: an unchanged image is not saved again, and
    older archives of the same repository are removed (the backend's is several GB)."""
    ensure_tools()
    digest = image_id(ref)[:12]
    stem = ref.split("/")[-1].replace(":", "_")
    out = ARCHIVES / f"{stem}-{digest}.tar"
    if out.exists():
        return out
    ARCHIVES.mkdir(parents=True, exist_ok=True)
    for old in ARCHIVES.glob(f"{ref.split('/')[-1].split(':')[0]}_*.tar"):
        old.unlink()
    partial = out.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    _long(["podman", "save", "--format", "docker-archive", "-o", str(partial), ref], f"podman save of {ref}", env=env())
    partial.rename(out)
    return out


def remove_empty_cgroups(root: Path = Path("/sys/fs/cgroup")) -> None:
    """podman with cgroupfs leaves an empty `libpod_parent` (and its `conmon`) in every cgroup v1
    hierarchy after its containers are gone: remove those that are empty (a busy one stays)."""
    for parent in root.glob("*/libpod_parent"):
        deepest_first = sorted((d for d in parent.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True)
        for cgroup in (*deepest_first, parent):
            with contextlib.suppress(OSError):
                cgroup.rmdir()


def size_mb(ref: str) -> int:
    """The image's size as podman reports it (uncompressed layers), in MB (10^6 bytes)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip()) // 1_000_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m prelabel_local.images", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("build", "build the images (layers cached); prints their tags"),
                       ("archive", "build, then save docker-archive tars for containerd; prints their paths")):
        command = commands.add_parser(name, help=text)
        command.add_argument("which", nargs="+", choices=IMAGES)
    args = parser.parse_args(argv)
    for which in args.which:
        ref = build(which)
        print(archive(ref) if args.command == "archive" else ref)


if __name__ == "__main__":
    main()
