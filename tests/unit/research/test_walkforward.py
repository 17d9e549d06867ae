"""Walk-forward folds and durations: the windows, and refusals before anything runs."""

from __future__ import annotations

import itertools

import pytest

from services.research.walkforward import (
    Fold,
    WalkForwardError,
    duration_text,
    make_folds,
    parse_duration,
)

DAY = 1440


def test_parse_duration_when_units_then_minutes() -> None:
    assert [parse_duration(t, "--train") for t in ("90m", "12h", "5d", "1w", " 2D ")] == [
        90, 720, 7200, 10080, 2880]
    assert duration_text(7200) == "5d" and duration_text(90) == "90m"
    assert duration_text(720) == "12h" and duration_text(20160) == "2w"


@pytest.mark.parametrize("text", ["", "5", "0d", "-1d", "1.5d", "5y", "d"])
def test_parse_duration_when_unusable_then_refused_naming_the_option(text: str) -> None:
    with pytest.raises(WalkForwardError, match=r"--test .* is not a duration"):
        parse_duration(text, "--test")


def test_make_folds_when_rolling_then_test_windows_tile_the_data_after_the_first_train() -> None:
    folds = make_folds(10 * DAY, 5 * DAY, DAY)
    assert [f.index for f in folds] == [1, 2, 3, 4, 5]
    assert folds[0] == Fold(1, (0, 5 * DAY), (5 * DAY, DAY))
    assert folds[4] == Fold(5, (4 * DAY, 5 * DAY), (9 * DAY, DAY))
    for a, b in itertools.pairwise(folds):
        assert b.test[0] == a.test[0] + a.test[1]
        assert a.train[0] + a.train[1] == a.test[0]


def test_make_folds_when_anchored_then_every_train_window_starts_at_the_beginning() -> None:
    folds = make_folds(10 * DAY, 5 * DAY, DAY, anchored=True)
    assert len(folds) == 5
    assert all(f.train[0] == 0 for f in folds)
    assert [f.train[1] for f in folds] == [5 * DAY, 6 * DAY, 7 * DAY, 8 * DAY, 9 * DAY]


def test_make_folds_when_step_is_longer_than_the_test_then_windows_skip_ahead() -> None:
    folds = make_folds(10 * DAY, 3 * DAY, DAY, step=2 * DAY)
    assert [f.test[0] for f in folds] == [3 * DAY, 5 * DAY, 7 * DAY, 9 * DAY]


def test_make_folds_when_the_data_is_too_short_then_refused_with_what_is_needed() -> None:
    with pytest.raises(WalkForwardError,
                       match=r"covers 4d \(5760 minutes\); --train 5d plus --test 1d need 8640"):
        make_folds(4 * DAY, 5 * DAY, DAY)
