"""The search space: dimensions from the declared ranges, refused before anything runs."""

from __future__ import annotations

import optuna
import pytest

from services.research.space import (
    Dimension,
    Space,
    SpaceError,
    known_parameters,
    parse_space,
    value_text,
)


def test_parse_space_when_valid_then_dimensions_keep_kind_bounds_step_and_scale() -> None:
    space = parse_space(["stop_loss_pct=0.005:0.05:log", "TOP_N=1:8",
                         "LOOKBACK_MINUTES=5:120:5", "MAX_POSITION_PCT=0.02:0.2:0.05"])
    stop, top, lookback, position = space.dimensions
    assert stop == Dimension("STOP_LOSS_PCT", float, 0.005, 0.05, None, True)
    assert top == Dimension("TOP_N", int, 1, 8)
    assert lookback == Dimension("LOOKBACK_MINUTES", int, 5, 120, 5.0)
    # 0.02 + 3 * 0.05 = 0.17 is the grid's last point at or below 0.2
    assert position.high == pytest.approx(0.17) and position.step == 0.05
    assert space.names == ("STOP_LOSS_PCT", "TOP_N", "LOOKBACK_MINUTES", "MAX_POSITION_PCT")


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["MAX_POSITION_PCT=0.05:0.3"], r"0.3 is outside its range 0.01..0.25"),
        (["STOP_LOSS_PCT=0.001:0.05"], "outside its range 0.005..0.1"),
        (["TOP_N=0:5"], "outside its range 1..50"),
        (["SIGNAL_NOTIONAL=0:5"], "outside its range 0.."),
        (["STOP_LOSS_PCT=0.05:0.01"], "no valid point .LOW is above HIGH"),
        (["MIN_MOMENTUM_PCT=0:5:log"], "no valid point .a log scale needs LOW above 0"),
        (["TOP_N=1.5:4"], "must be an integer"),
        (["TOP_N=1:4:1.5"], "must be a positive integer"),
        (["STOP_LOSS_PCT=0.01:0.05:0"], "must be a positive number"),
        (["STOP_LOSS_PCT=0.01:abc"], "not a number"),
        (["STOP_LOSS_PCT=0.01:nan"], "not finite"),
        (["STOP_LOSS_PCT=0.01"], "is not LOW:HIGH"),
        (["STOP_LOSS_PCT"], "is not NAME=LOW:HIGH"),
        (["WINDOW_SIZE=1:5"], "WINDOW_SIZE is not a parameter of the strategy or the risk"),
        (["STOP_LOSS_PCT=0.01:0.02", "stop_loss_pct=0.02:0.03"], "STOP_LOSS_PCT is given twice"),
        ([], "give at least one --space"),
    ],
)
def test_parse_space_when_unusable_then_refused_in_one_line_naming_it(
    specs: list[str], message: str
) -> None:
    with pytest.raises(SpaceError, match=message) as caught:
        parse_space(specs)
    assert "\n" not in str(caught.value)


def test_unknown_parameter_when_refused_then_the_message_lists_the_known_ones() -> None:
    with pytest.raises(SpaceError) as caught:
        parse_space(["NOPE=1:2"])
    assert "STOP_LOSS_PCT" in str(caught.value) and "TOP_N" in str(caught.value)


def test_suggest_when_sampled_then_values_stay_on_the_declared_grid() -> None:
    space = parse_space(["TOP_N=2:6:2", "MAX_POSITION_PCT=0.02:0.2:0.02",
                         "STOP_LOSS_PCT=0.005:0.05:log"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(40):
        trial = study.ask()
        values = space.suggest(trial)
        assert values["TOP_N"] in (2, 4, 6)
        steps = (values["MAX_POSITION_PCT"] - 0.02) / 0.02
        assert abs(steps - round(steps)) < 1e-9
        assert 0.005 <= values["STOP_LOSS_PCT"] <= 0.05
        study.tell(trial, 0.0)


def test_environment_when_built_then_texts_round_trip_to_the_drawn_values() -> None:
    space = parse_space(["TOP_N=1:8", "STOP_LOSS_PCT=0.005:0.05"])
    env = space.environment({"TOP_N": 3, "STOP_LOSS_PCT": 0.012345678901234567})
    assert env == {"TOP_N": "3", "STOP_LOSS_PCT": repr(0.012345678901234567)}
    assert float(env["STOP_LOSS_PCT"]) == 0.012345678901234567
    assert value_text(7) == "7"


def test_environment_when_strategy_dimensions_then_merged_into_strategy_params() -> None:
    space = Space((Dimension("fast", int, 2, 20, strategy=True),
                   Dimension("STOP_LOSS_PCT", float, 0.01, 0.05)))
    env = space.environment({"fast": 5, "STOP_LOSS_PCT": 0.02},
                            base={"STRATEGY": "ema_cross",
                                  "STRATEGY_PARAMS": '{"slow": 30, "fast": 9}'})
    assert env == {"STOP_LOSS_PCT": "0.02", "STRATEGY": "ema_cross",
                   "STRATEGY_PARAMS": '{"fast":5,"slow":30}'}
    assert space.environment({"fast": 5}, base={})["STRATEGY"] == "momentum"


def test_dimension_text_when_printed_then_reads_as_the_command_line_form() -> None:
    assert parse_space(["TOP_N=1:8"]).dimensions[0].text() == "TOP_N=1:8"
    assert (parse_space(["STOP_LOSS_PCT=0.005:0.05:log"]).dimensions[0].text()
            == "STOP_LOSS_PCT=0.005:0.05:log")


def test_strategy_parameters_when_the_default_strategy_then_they_join_the_space() -> None:
    known = known_parameters()
    lookback, is_strategy = known["lookback_minutes"]
    assert is_strategy and lookback.kind is int and lookback.range_text() == "1..240"
    space = parse_space(["lookback_minutes=5:60", "STOP_LOSS_PCT=0.01:0.05"])
    assert [d.strategy for d in space.dimensions] == [True, False]
    with pytest.raises(SpaceError, match=r"lookback_minutes=300 is outside its range 1\.\.240"):
        parse_space(["lookback_minutes=5:300"])


def test_strategy_ranges_when_the_model_refuses_every_probe_then_no_valid_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STRATEGY", "ema_cross")
    monkeypatch.delenv("STRATEGY_PARAMS", raising=False)
    with pytest.raises(SpaceError, match=r"no valid point for strategy 'ema_cross': .*fast "
                       r"\(55\) must be below slow \(15\)"):
        parse_space(["fast=50:60", "slow=10:20"])
    space = parse_space(["fast=5:30", "slow=20:60"])  # some corners overlap, most do not
    assert space.names == ("fast", "slow")
