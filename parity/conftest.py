"""Parity fixtures: every test that takes `device` runs on cpu, and on cuda / mps when present."""

import pytest

from parity.harness import device_available


@pytest.fixture(params=["cpu", "cuda", "mps"])
def device(request: pytest.FixtureRequest) -> str:
    reason = device_available(request.param)
    if reason:
        pytest.skip(reason)
    return str(request.param)
