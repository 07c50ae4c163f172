"""Which Label Studio releases Prelabel supports: the newest release of each of the last three minor
versions on PyPI, each tested in CI (docs/label-studio-versions.md). A server outside the range is
still served, as it is; the LabelStudioSupported condition says it is untested there.
"""

from __future__ import annotations

import re

from .status import Condition

OLDEST, NEWEST = (1, 21), (1, 23)  # (major, minor): prelabel_local.label_studio_server.SUPPORTED tests each
RANGE = f"{OLDEST[0]}.{OLDEST[1]} to {NEWEST[0]}.{NEWEST[1]}"
DOCS = "docs/label-studio-versions.md"


def release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a Label Studio release as /api/version's `release` gives it ("1.23.2",
    "1.22.0.post0", "1.24.0rc1"); None for anything else."""
    found = re.match(r"\s*(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else None


def supported(version: str) -> Condition:
    """The LabelStudioSupported condition for a server's release: True inside the range, False below it
    (older servers lack what Prelabel calls), Unknown above it or when the release cannot be read."""
    found = release(version)
    if found is None:
        return Condition("LabelStudioSupported", "Unknown", "VersionUnknown",
                         f"Label Studio reports release {version!r}, not a version Prelabel can compare with {RANGE} ({DOCS})")
    if found < OLDEST:
        return Condition("LabelStudioSupported", "False", "UnsupportedVersion",
                         f"Label Studio {version} is older than the supported {RANGE}: registration and pre-labeling may fail "
                         f"in ways not tested; upgrade Label Studio ({DOCS})")
    if found > NEWEST:
        return Condition("LabelStudioSupported", "Unknown", "UntestedVersion",
                         f"Label Studio {version} is newer than the tested {RANGE}: it is expected to work, and not yet tested ({DOCS})")
    return Condition("LabelStudioSupported", "True", "Supported", f"Label Studio {version} is in the supported {RANGE}")
