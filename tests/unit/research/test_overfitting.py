"""The deflated Sharpe ratio against the paper's worked example and hand-computed values."""

from __future__ import annotations

import math
import random

import pytest

from services.research.overfitting import (
    deflated_sharpe_ratio,
    expected_max_sharpe,
    moments,
    probabilistic_sharpe_ratio,
)


def test_deflated_sharpe_when_the_papers_example_then_its_published_figures() -> None:
    # Bailey and Lopez de Prado (2014), section 5: N = 100 trials, V[SR] = 1/2 annualised,
    # best SR = 2.5 annualised over T = 1250 daily returns, skewness -3, kurtosis 10:
    # SR0 = 1.7894 annualised and DSR = 0.9004.
    periods = 250
    sr0 = expected_max_sharpe(100, 0.5 / periods)
    assert sr0 * math.sqrt(periods) == pytest.approx(1.7894, abs=1e-4)
    dsr = probabilistic_sharpe_ratio(2.5 / math.sqrt(periods), sr0, 1250, -3.0, 10.0)
    assert dsr == pytest.approx(0.9004, abs=1e-4)


def test_probabilistic_sharpe_when_normal_returns_then_the_hand_computed_value() -> None:
    # SR = 0.1, SR* = 0, T = 101, normal (skew 0, kurtosis 3):
    # z = 0.1 * sqrt(100) / sqrt(1 + 2/4 * 0.01) = 1 / 1.0024969 = 0.997509;
    # Phi(z) = Phi(1) - 0.002491 * phi(1) = 0.841345 - 0.002491 * 0.241971 = 0.840742
    assert probabilistic_sharpe_ratio(0.1, 0.0, 101, 0.0, 3.0) == pytest.approx(0.840742,
                                                                                abs=1e-5)


def test_moments_when_a_small_series_then_the_hand_computed_moments() -> None:
    m = moments([0.01, -0.02, 0.03, 0.0])
    assert m is not None
    # mean 0.005; deviations .005 -.025 .025 -.005; m2 = 3.25e-4; std (ddof 1) = 0.0208167
    assert m.mean == pytest.approx(0.005)
    assert m.std == pytest.approx(math.sqrt(3.25e-4 * 4 / 3))
    # m3 = (1.25e-7 - 1.5625e-5 + 1.5625e-5 - 1.25e-7) / 4 = 0; m4 = 1.9625e-7
    assert m.skewness == pytest.approx(0.0, abs=1e-12)
    assert m.kurtosis == pytest.approx((2 * 0.005 ** 4 + 2 * 0.025 ** 4) / 4 / 3.25e-4 ** 2)
    assert moments([0.01]) is None and moments([0.01, 0.01]) is None


def test_deflated_sharpe_when_more_trials_then_a_higher_bar_and_a_lower_probability() -> None:
    rng = random.Random(7)
    returns = [rng.gauss(0.002, 0.01) for _ in range(500)]
    sharpes_few = [rng.gauss(0.0, 0.05) for _ in range(5)]
    sharpes_many = sharpes_few + [rng.gauss(0.0, 0.05) for _ in range(495)]
    few = deflated_sharpe_ratio(returns, sharpes_few)
    many = deflated_sharpe_ratio(returns, sharpes_many)
    assert few is not None and many is not None and few.dsr is not None
    assert many.dsr is not None
    assert many.benchmark > few.benchmark
    assert many.dsr < few.dsr
    assert (few.trials, many.trials, few.count) == (5, 500, 500)


def test_deflated_sharpe_when_one_trial_then_no_deflation_and_flat_returns_undefined() -> None:
    returns = [0.01, -0.005, 0.007, 0.002]
    one = deflated_sharpe_ratio(returns, [0.3])
    m = moments(returns)
    assert one is not None and m is not None and m.sharpe is not None
    assert one.benchmark == 0.0
    assert one.dsr == probabilistic_sharpe_ratio(m.sharpe, 0.0, 4, m.skewness, m.kurtosis)
    assert deflated_sharpe_ratio([0.0, 0.0, 0.0], [0.1, 0.2]) is None
