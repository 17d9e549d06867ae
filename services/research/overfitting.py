"""The deflated Sharpe ratio: how likely the best of N trials is skill rather than selection.

Bailey, D. H. and López de Prado, M. (2014), "The Deflated Sharpe Ratio: Correcting for
Selection Bias, Backtest Overfitting and Non-Normality", Journal of Portfolio Management
40 (5), 94-107. All Sharpe ratios here are per period (per minute for CDB's runs), not
annualised.

* Probabilistic Sharpe ratio of an estimate `SR` over `T` returns with skewness `g3` and
  (Pearson, normal = 3) kurtosis `g4`, against a benchmark `SR*`:
  `PSR(SR*) = Phi((SR - SR*) * sqrt(T - 1) / sqrt(1 - g3 * SR + (g4 - 1) / 4 * SR^2))`.
* Expected maximum Sharpe ratio of `N` independent trials whose Sharpe ratios have variance
  `V` (and mean 0, no skill): `SR0 = sqrt(V) * ((1 - gamma) * Phi^-1(1 - 1/N) +
  gamma * Phi^-1(1 - 1/(N e)))`, gamma the Euler-Mascheroni constant.
* Deflated Sharpe ratio: `DSR = PSR(SR0)`, the probability that the best trial's true Sharpe
  ratio is above what the best of N skill-less trials would show by luck.

The paper's example (N = 100, V = 1/2 annualised, SR = 2.5 annualised, T = 1250 daily returns,
skewness -3, kurtosis 10) gives SR0 = 1.7894 annualised and DSR = 0.9004; a test checks it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

EULER_GAMMA = 0.5772156649015329
"""The Euler-Mascheroni constant."""

_NORMAL = NormalDist()


@dataclass(frozen=True, slots=True)
class Moments:
    """Sample moments of a return series.

    Attributes:
        count: Number of returns.
        mean: Mean.
        std: Standard deviation (ddof = 1).
        skewness: Third standardised moment.
        kurtosis: Fourth standardised moment (Pearson: 3 for a normal distribution).
    """

    count: int
    mean: float
    std: float
    skewness: float
    kurtosis: float

    @property
    def sharpe(self) -> float | None:
        """Per-period Sharpe ratio `mean / std` (None without deviation)."""
        return self.mean / self.std if self.std > 0.0 else None


def moments(returns: Sequence[float]) -> Moments | None:
    """The moments of a return series (None for fewer than two returns or no deviation).

    Skewness and kurtosis use the population central moments over the sample standard
    deviation's population counterpart, as the paper's estimator does.
    """
    n = len(returns)
    if n < 2:
        return None
    mean = math.fsum(returns) / n
    dev = [r - mean for r in returns]
    m2 = math.fsum(d * d for d in dev) / n
    if m2 <= 0.0:
        return None
    m3 = math.fsum(d ** 3 for d in dev) / n
    m4 = math.fsum(d ** 4 for d in dev) / n
    std = math.sqrt(m2 * n / (n - 1))
    return Moments(n, mean, std, m3 / m2 ** 1.5, m4 / m2 ** 2)


def probabilistic_sharpe_ratio(sharpe: float, benchmark: float, count: int, skewness: float,
                               kurtosis: float) -> float | None:
    """PSR: the probability that the true Sharpe ratio exceeds `benchmark`.

    Args:
        sharpe: The estimated per-period Sharpe ratio.
        benchmark: The per-period Sharpe ratio to beat.
        count: Number of returns behind the estimate.
        skewness: Skewness of the returns.
        kurtosis: Pearson kurtosis of the returns (3 for normal).

    Returns:
        A probability in [0, 1]; None when undefined (fewer than two returns, or moments
        that make the estimate's variance non-positive).
    """
    variance = 1.0 - skewness * sharpe + (kurtosis - 1.0) / 4.0 * sharpe ** 2
    if count < 2 or not variance > 0.0:
        return None
    z = (sharpe - benchmark) * math.sqrt(count - 1) / math.sqrt(variance)
    return _NORMAL.cdf(z)


def expected_max_sharpe(trials: int, variance: float) -> float:
    """SR0: the expected best per-period Sharpe ratio of `trials` skill-less trials.

    Args:
        trials: Number of independent trials (N); one trial selects nothing, so 0.0.
        variance: Variance of the trials' per-period Sharpe ratios.

    Returns:
        The expected maximum.
    """
    if trials < 2 or variance <= 0.0:
        return 0.0
    return math.sqrt(variance) * (
        (1.0 - EULER_GAMMA) * _NORMAL.inv_cdf(1.0 - 1.0 / trials)
        + EULER_GAMMA * _NORMAL.inv_cdf(1.0 - 1.0 / (trials * math.e)))


@dataclass(frozen=True, slots=True)
class DeflatedSharpe:
    """The deflated Sharpe ratio of a selected trial and what went into it.

    Attributes:
        dsr: The deflated Sharpe ratio (a probability; None when undefined).
        sharpe: The trial's per-period Sharpe ratio.
        benchmark: SR0, the expected best per-period Sharpe ratio of the trials by luck.
        trials: Number of trials N.
        variance: Variance of the trials' per-period Sharpe ratios.
        count: Number of returns T.
        skewness: Skewness of the trial's returns.
        kurtosis: Kurtosis of the trial's returns.
    """

    dsr: float | None
    sharpe: float
    benchmark: float
    trials: int
    variance: float
    count: int
    skewness: float
    kurtosis: float

    def as_dict(self) -> dict[str, float | int | None]:
        """JSON-ready figures."""
        return {"dsr": self.dsr, "sharpe": self.sharpe, "sr0": self.benchmark,
                "trials": self.trials, "variance": self.variance, "returns": self.count,
                "skewness": self.skewness, "kurtosis": self.kurtosis}


def deflated_sharpe_ratio(returns: Sequence[float],
                          trial_sharpes: Sequence[float]) -> DeflatedSharpe | None:
    """The deflated Sharpe ratio of the selected trial.

    Args:
        returns: The selected trial's per-period returns.
        trial_sharpes: The per-period Sharpe ratio of every trial tried (the selected one
            included); their number is N and their variance V.

    Returns:
        The deflated Sharpe ratio, None when the returns have no deviation.
    """
    m = moments(returns)
    if m is None or m.sharpe is None:
        return None
    finite = [s for s in trial_sharpes if math.isfinite(s)]
    n = len(finite)
    mean = math.fsum(finite) / n if n else 0.0
    variance = math.fsum((s - mean) ** 2 for s in finite) / (n - 1) if n > 1 else 0.0
    benchmark = expected_max_sharpe(n, variance)
    dsr = probabilistic_sharpe_ratio(m.sharpe, benchmark, m.count, m.skewness, m.kurtosis)
    return DeflatedSharpe(dsr, m.sharpe, benchmark, n, variance, m.count, m.skewness,
                          m.kurtosis)
