"""The supported Label Studio range: what each release says in status, and that the operator's range
is the one the version matrix tests (prelabel_local.label_studio_server.SUPPORTED)."""

from __future__ import annotations

import pytest

from prelabel_local.label_studio_server import SUPPORTED
from prelabel_operator import support


@pytest.mark.parametrize(("version", "status", "reason"), [
    ("1.21.0", "True", "Supported"), ("1.22.0.post0", "True", "Supported"), ("1.23.2", "True", "Supported"),
    ("1.20.0", "False", "UnsupportedVersion"), ("0.9.1", "False", "UnsupportedVersion"),
    ("1.24.0rc1", "Unknown", "UntestedVersion"), ("2.0.0", "Unknown", "UntestedVersion"),
    ("", "Unknown", "VersionUnknown"), ("enterprise", "Unknown", "VersionUnknown"),
])
def test_each_release_gets_a_condition_that_names_the_range(version: str, status: str, reason: str) -> None:
    found = support.supported(version)
    assert (found.type, found.status, found.reason) == ("LabelStudioSupported", status, reason)
    assert support.RANGE in found.message and (status == "True" or support.DOCS in found.message)


def test_the_operator_range_is_the_one_ci_tests() -> None:
    tested = sorted(support.release(v) for v in SUPPORTED)
    assert (tested[0], tested[-1]) == (support.OLDEST, support.NEWEST)
    assert len({t for t in tested if t is not None}) == len(SUPPORTED) == 3  # one release per minor version, the last three
