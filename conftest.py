"""Project-wide pytest hooks.

Slow tests (a notebook run is one) are reported as they finish, with their duration, so a CI log
shows where the time went even when the run is cut off before pytest's final summary.
"""

from __future__ import annotations

import time

import pytest

#: Tests that take at least this many seconds get a line in the log.
SLOW_SECONDS = 20.0

_config: pytest.Config | None = None
_start = time.monotonic()


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _config is None or hasattr(_config, "workerinput"):  # xdist workers: the controller reports
        return
    if report.when != "call" or report.duration < SLOW_SECONDS:
        return
    reporter = _config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        elapsed = time.monotonic() - _start
        reporter.write_line(f"[slow +{elapsed:5.0f}s] {report.nodeid} {report.outcome} "
                            f"in {report.duration:.0f} s")
