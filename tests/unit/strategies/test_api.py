"""The strategy API's small parts: parameters from the generic argument, bounded indicators,
protective exit defaults."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError
from talipp.indicators import EMA

from services.strategies import Bar, ExitDefaults, Indicators, NoParams, Strategy
from services.strategies.api import CLOSE, LAST_TS, TIME


class Params(BaseModel):
    length: int = Field(5, ge=2, le=50, description="A length")


class WithParams(Strategy[Params]):
    """Has parameters.

    More text that `describe` leaves out.
    """

    exits = ExitDefaults(take_profit_pct=0.03, time_limit_minutes=240)


def test_the_parameters_model_comes_from_the_generic_argument() -> None:
    assert WithParams.params_model is Params
    assert Strategy.params_model is NoParams
    strategy = WithParams(Params(length=7))
    assert strategy.params.length == 7 and strategy.name == "WithParams"
    assert WithParams.describe() == "Has parameters."


def test_a_strategy_declares_protective_exit_defaults_as_data() -> None:
    assert WithParams.exits.take_profit_pct == 0.03
    assert WithParams.exits.trailing_distance_pct is None  # None: that exit stays off
    assert Strategy.exits == ExitDefaults()
    with pytest.raises(ValidationError):
        ExitDefaults(trailing_distance_pct=1.5)
    with pytest.raises(ValidationError):
        ExitDefaults(take_profit_pct=float("nan"))
    with pytest.raises(ValidationError):
        WithParams.exits.take_profit_pct = 0.5  # type: ignore[misc]  # frozen


def test_indicators_are_one_per_symbol_and_keep_their_memory_bounded() -> None:
    emas: Indicators[EMA] = Indicators(lambda: EMA(3), keep=10)
    for i in range(1, 101):
        a = emas.add("AAAUSDT", float(i))
        emas.add("BBBUSDT", 1.0)
    assert a[-1] == pytest.approx(99.0)  # EMA(3) of a line lags by one step
    assert 10 <= len(a) < 20
    assert emas.get("BBBUSDT") is not None and emas.get("CCCUSDT") is None


def test_a_raw_bar_is_indexed_by_the_field_positions_of_bar() -> None:
    bar = Bar("AAAUSDT", 60_000, 1.0, 2.0, 0.5, 1.5, 10.0, 1, 60_000, 3)
    raw = tuple(bar)
    assert (raw[TIME], raw[CLOSE], raw[LAST_TS]) == (bar.time, bar.close, bar.last_ts)
