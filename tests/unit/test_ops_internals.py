"""The private parts of ``ops.testing`` the harness uses are still where it expects them.

If this fails after an upgrade of ops or ops-scenario, read ``harness/ops_internals.py``: the
harness (the end-to-end tier, the demo and the benchmarks) relies on those names.
"""

from __future__ import annotations

import pytest

from harness.ops_internals import INTERNALS, READ_FROM, installed_versions, resolve


def test_the_installed_versions_are_those_the_internals_were_read_from():
    assert installed_versions() == READ_FROM, (
        "ops or ops-scenario changed version: check every name in harness/ops_internals.py "
        "against the new release, then update READ_FROM"
    )


@pytest.mark.parametrize(("module", "path"), INTERNALS)
def test_every_private_name_still_resolves(module, path):
    assert callable(resolve(module, path)), f"{module}.{path} is gone or changed"


def test_a_missing_name_is_reported():
    with pytest.raises(AttributeError):
        resolve("scenario.mocking", "_NoSuchClient")
