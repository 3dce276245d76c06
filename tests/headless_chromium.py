"""The headless-Chromium driver the browser tests use (it lives in the package now), and
:func:`open_chromium`, the find-or-skip start that the browser fixtures share.

``python -m tlcourse slides --pdf`` prints the decks with the same driver, so it moved to
:mod:`tlcourse.courseware.browser`; this module keeps the tests' imports working.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tlcourse.courseware.browser import CHROMIUM_NAMES, OFFLINE_FLAGS, Chromium, PageLog, find_chromium

__all__ = ["CHROMIUM_NAMES", "OFFLINE_FLAGS", "Chromium", "PageLog", "find_chromium", "open_chromium"]

INSTALL = "`sudo apt-get install chromium` (Debian/Ubuntu; the package is `chromium`)"


def open_chromium(needed_for: str, **options: Any) -> Iterator[Chromium]:
    """Start headless Chromium with ``options`` (width, height, timeout) for a fixture to ``yield from``.

    Without a Chromium binary the test is skipped, saying how to install it, except under CI
    (``$CI`` set), where the test fails: .ci/run installs the Debian package ``chromium``.
    ``needed_for`` names what the browser checks, for those messages.
    """
    binary = find_chromium()
    if binary is None and os.environ.get("CI"):
        pytest.fail(f"CI needs headless Chromium for {needed_for}: .ci/run installs the Debian package `chromium`")
    if binary is None:
        pytest.skip(f"headless Chromium is not installed: {INSTALL} to run the browser tests of {needed_for}")
    with Chromium(binary, **options) as browser:
        yield browser
