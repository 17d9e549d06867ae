"""Candle files of pure noise: driftless random walks from a fixed seed.

Nothing in such data can be predicted, so any edge a strategy shows on it in-sample is fitted
noise; the walk-forward tests plant it to see that exposed.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import orjson

START_MS = 1_704_067_200_000
"""2024-01-01T00:00Z: the open time of the first candle."""


def write_random_walks(directory: Path, symbols: list[str], minutes: int, seed: int,
                       volatility: float = 0.002,
                       skip: tuple[int, int] | None = None) -> Path:
    """Write one 1-minute candle file per symbol (`<BASE>_USDT-1m.json`).

    Args:
        directory: Where to write (created).
        symbols: Base assets, e.g. `["AAA", "BBB"]` (quoted in USDT).
        minutes: Candles per file.
        seed: The random walks' seed.
        volatility: Standard deviation of a minute's log return.
        skip: (first minute, minutes) left out of every file: a gap in the data.

    Returns:
        The directory.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for base in symbols:
        price = 100.0
        rows = []
        for i in range(minutes):
            opened = price
            price *= math.exp(rng.gauss(0.0, volatility))
            wiggle = abs(rng.gauss(0.0, volatility / 2))
            high = max(opened, price) * (1 + wiggle)
            low = min(opened, price) * (1 - wiggle)
            volume = 50_000.0 * (0.5 + rng.random())
            if skip is not None and skip[0] <= i < skip[0] + skip[1]:
                continue
            rows.append([START_MS + i * 60_000, round(opened, 8), round(high, 8),
                         round(low, 8), round(price, 8), round(volume, 4)])
        (directory / f"{base}_USDT-1m.json").write_bytes(orjson.dumps(rows))
    return directory
