"""Progress lines: every 10 % or 30 s, and the final line only when it says something new."""

from __future__ import annotations

import logging
from collections import Counter
from decimal import Decimal

import pytest

from airflow_provider_bgremoval.pipeline.progress import ProgressReporter


def test_lines_every_ten_percent_and_no_repeated_final_line(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    reporter = ProgressReporter(20, "fake", clock=lambda: now[0], logger=logging.getLogger("progress-test"))
    counts: Counter[str] = Counter()
    with caplog.at_level(logging.INFO, logger="progress-test"):
        for finished in range(1, 21):
            counts["done"] += 1
            now[0] += 0.1
            reporter.update(finished, counts, Decimal(finished))
        reporter.update(20, counts, Decimal(20), force=True)  # the batch ends: nothing new to say
    assert reporter.lines == 10
    assert sum("20/20 (100%)" in r.getMessage() for r in caplog.records) == 1


def test_time_based_line_and_forced_final_line() -> None:
    now = [0.0]
    reporter = ProgressReporter(1000, "fake", clock=lambda: now[0], every_seconds=30.0)
    reporter.update(1, Counter(done=1), Decimal(1))
    assert reporter.lines == 0  # neither 10 % nor 30 s yet
    now[0] = 31.0
    reporter.update(2, Counter(done=2), Decimal(2))
    assert reporter.lines == 1
    reporter.update(3, Counter(done=3), Decimal(3), force=True)
    assert reporter.lines == 2


def test_the_final_line_shows_the_pending_rows_recorded_after_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    reporter = ProgressReporter(100, "fake", clock=lambda: now[0], logger=logging.getLogger("progress-test"))
    counts: Counter[str] = Counter(done=10)
    with caplog.at_level(logging.INFO, logger="progress-test"):
        reporter.update(10, counts, Decimal(10))  # the 10 % line
        counts["pending"] = 90  # a halt: the images never sent are recorded pending, none finished since
        reporter.update(10, counts, Decimal(10), force=True)
    assert reporter.lines == 2  # was 1: the log's last line said pending=0
    assert "10/100 (10%) done=10 failed=0 rejected=0 pending=90" in caplog.records[-1].getMessage()


def test_only_the_last_image_makes_100_percent(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    reporter = ProgressReporter(2000, "fake", clock=lambda: now[0], logger=logging.getLogger("progress-test"))
    with caplog.at_level(logging.INFO, logger="progress-test"):
        now[0] = 31.0
        reporter.update(1990, Counter(done=1990), Decimal(1990))  # a 30 s line, 10 images to go
        reporter.update(2000, Counter(done=2000), Decimal(2000), force=True)
    messages = [record.getMessage() for record in caplog.records]
    assert "1990/2000 (99%)" in messages[0]  # was (100%): 99.5 rounded, then the final line said it again
    assert sum("(100%)" in message for message in messages) == 1


def test_the_final_line_of_a_batch_that_stopped_early_gives_no_eta(caplog: pytest.LogCaptureFixture) -> None:
    # 10 of 100 in 60 s, then a halt: the other 90 are pending, nothing is left to wait for
    now = [0.0]
    reporter = ProgressReporter(100, "fake", clock=lambda: now[0], logger=logging.getLogger("progress-test"))
    with caplog.at_level(logging.INFO, logger="progress-test"):
        now[0] = 60.0
        reporter.update(10, Counter(done=10), Decimal(10))
        reporter.update(10, Counter(done=10, pending=90), Decimal(10), force=True)
    during, final = (r.getMessage() for r in caplog.records)
    assert "ETA 9m00s" in during  # while it runs: the 90 left at 10 a minute
    assert "10/100 (10%)" in final and "pending=90" in final and "ETA none (ended)" in final
