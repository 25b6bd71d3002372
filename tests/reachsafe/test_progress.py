"""Progress: a live bar on a terminal, periodic plain lines in a log file."""

from __future__ import annotations

import logging

import pytest

from reachsafe.progress import Progress


def test_off_a_terminal_it_logs_plain_periodic_lines_and_a_last_one(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reachsafe.progress")
    bar = Progress(10, "offline", "upd", initial=2, log_every_s=0.0, terminal=False)
    bar.set_postfix(actor="0.5")
    for _ in range(3):
        bar.update()
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[-1].startswith("offline: 5/10 upd (50%)") and "actor 0.5" in lines[-1]
    assert not any("\r" in line for line in lines)


def test_a_long_period_logs_only_the_last_line_and_disabled_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="reachsafe.progress")
    bar = Progress(100, "collect", "ep", log_every_s=3600.0, terminal=False)
    for _ in range(100):
        bar.update()
    bar.close()
    Progress(5, "quiet", "ep", enabled=False, log_every_s=0.0, terminal=False).update(5)
    assert [r.getMessage().split(" at ")[0] for r in caplog.records] == ["collect: 100/100 ep (100%)"]


def test_on_a_terminal_it_draws_a_bar_and_logs_nothing(
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="reachsafe.progress")
    bar = Progress(4, "offline", "upd", log_every_s=0.0, terminal=True)
    bar.update(4)
    bar.close()
    assert "4/4" in capsys.readouterr().err and not caplog.records
