"""`python -m prelabel_backend.fetch_weights URL SHA256 DEST`: download a weight file and check it.

Run by the operator as an init container when an MLBackend's weights come from a URL: the file
lands in DEST only if its sha256 matches, so a backend never serves weights nobody vouched for.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

import requests


def fetch(url: str, sha256: str, dest: Path, timeout: float = 60.0) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with requests.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
            for chunk in response.iter_content(1 << 20):
                tmp.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if total:
                    print(f"\r{dest.name}: {done * 100 // total}% of {total} bytes", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    if digest.hexdigest() != sha256.lower():
        Path(tmp.name).unlink()
        raise ValueError(f"sha256 of {url.split('?')[0]} is {digest.hexdigest()}, expected {sha256}: not installing it")
    Path(tmp.name).replace(dest)
    return dest


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: python -m prelabel_backend.fetch_weights URL SHA256 DEST")
    try:
        fetch(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
    except (requests.RequestException, ValueError) as exc:
        sys.exit(f"could not fetch weights: {exc}")


if __name__ == "__main__":
    main()
