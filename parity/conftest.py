"""Parity fixtures: every test that takes `device` runs on cpu, and on cuda / mps when present.

A device that is absent skips its variants under one reason; the `-ra` summary shows one line per
device (`SKIPPED [n] parity: no CUDA device on this machine`) instead of one per test location.
"""

from collections.abc import Generator
from pathlib import Path

import pytest

from parity.harness import device_available

UNAVAILABLE = {reason for name in ("cuda", "mps") if (reason := device_available(name))}


@pytest.fixture(params=["cpu", "cuda", "mps"])
def device(request: pytest.FixtureRequest) -> str:
    reason = device_available(request.param)
    if reason:
        pytest.skip(reason)
    return str(request.param)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Relocate absent-device skips to this directory, so the summary folds them per device."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if reason.removeprefix("Skipped: ") in UNAVAILABLE:
            # lineno None: the summary line names the directory alone (pytest folds on it)
            report.longrepr = (str(Path(__file__).parent), None, reason)  # type: ignore[assignment]
    return report
