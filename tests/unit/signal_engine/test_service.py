"""The signal engine shell's quiet-market timer wakes at the interval end."""

from __future__ import annotations

import pytest

from services.signal_engine.service import TIMER_GRACE_SEC, TIMER_MAX_SEC, seconds_until_due

END_MS = 1_700_000_040_000


def test_when_the_open_interval_ends_soon_then_the_timer_wakes_just_after_its_end() -> None:
    now_s = END_MS / 1000 - 0.25
    assert seconds_until_due(END_MS, now_s) == pytest.approx(0.25 + TIMER_GRACE_SEC)


def test_when_the_interval_ends_later_than_a_second_then_the_timer_sleeps_a_second() -> None:
    assert seconds_until_due(END_MS, END_MS / 1000 - 30) == TIMER_MAX_SEC


def test_when_no_interval_is_open_or_it_already_ended_then_the_timer_sleeps_a_second() -> None:
    assert seconds_until_due(None, END_MS / 1000) == TIMER_MAX_SEC
    assert seconds_until_due(END_MS, END_MS / 1000 + 0.5) == TIMER_MAX_SEC
