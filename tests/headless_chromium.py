"""The headless-Chromium driver the browser tests use (it lives in the package now).

``python -m tlcourse slides --pdf`` prints the decks with the same driver, so it moved to
:mod:`tlcourse.courseware.browser`; this module keeps the tests' imports working.
"""

from tlcourse.courseware.browser import CHROMIUM_NAMES, OFFLINE_FLAGS, Chromium, PageLog, find_chromium

__all__ = ["CHROMIUM_NAMES", "OFFLINE_FLAGS", "Chromium", "PageLog", "find_chromium"]
