"""benchmarks.fit_memory: reading GNU time's report and fit's announced length, and the table."""

from __future__ import annotations

import pytest

from benchmarks.fit_memory import announced_seconds, parse_time_v, table

TIME_V = """\tCommand being timed: "python -m tlcourse fit /tmp/f"
\tUser time (seconds): 103.28
\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:03:17.05
\tMaximum resident set size (kbytes): 1700000
\tExit status: 0
"""


def test_wall_and_peak_memory_come_from_the_time_report() -> None:
    assert parse_time_v(TIME_V) == {"wall_s": 3797.1, "peak_rss_gb": 1.74}
    assert parse_time_v(TIME_V.replace("1:03:17.05", "3:17.05"))["wall_s"] == 197.1
    with pytest.raises(ValueError, match="GNU time"):
        parse_time_v("Command exited with non-zero status 1")


def test_the_announced_length_is_the_one_fit_logged_before_its_pass() -> None:
    lines = ["[   0.0 s] reading /tmp/f (device: cpu)",
             "[   7.8 s] efficientnet_lite0 pass over 1000 images and their mirror images: about 50 s (timed on its "
             "first batch); this run: about 93 s",
             "[ 184.4 s] done in 184.4 s (budget 60 s, announced 93 s): /tmp/out/report.html"]
    assert announced_seconds(lines) == 93.0
    assert announced_seconds(lines[:1]) is None  # a pass loaded from the cache announces nothing


def test_the_table_has_a_row_per_size() -> None:
    rows = [{"images": 10000, "wall_s": 247.0, "peak_rss_gb": 1.9, "announced_s": None, "budget_s": 60.0,
             "chosen": "efficientnet_lite0 probe, last layer"}]
    text = table(rows)
    assert text.splitlines()[2] == "| 10,000 | 247 | 1.90 | - | 60 | efficientnet_lite0 probe, last layer |"
