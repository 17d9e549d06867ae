"""Replay source settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.common.settings import BaseServiceSettings, SeedRuleSettings

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
"""The bundled sample: five symbols, two days of real 1-minute candles (see SOURCE.md)."""


class ReplaySettings(BaseServiceSettings):
    """Settings of the replay source (`python -m services.replay`)."""

    SERVICE_NAME: ClassVar[str] = "replay"
    DEFAULT_PORT: ClassVar[int] = 8090

    REPLAY_DIR: str = Field(
        default=str(SAMPLE_DIR), description="Directory of <BASE>_<QUOTE>-1m.json[.gz] files"
    )
    REPLAY_SYMBOLS: str = Field(
        default="", pattern=r"^[A-Za-z0-9, ]*$", description="Symbols to replay (empty: all)"
    )
    REPLAY_MINUTES: int = Field(
        default=0, ge=0, le=10_000_000, description="Minutes to replay from the start (0: all)"
    )
    REPLAY_SPEED: float = Field(
        default=0.0, ge=0.0, le=100_000.0,
        description="0: lock-step (each bar after the pipeline drained the last); "
        "N: N times real time",
    )
    REPLAY_DRAIN_TIMEOUT_SEC: int = Field(
        default=120, ge=1, le=3600, description="Longest wait for the pipeline to drain a bar"
    )


class MexcSimSettings(SeedRuleSettings):
    """Settings of the MEXC market simulator (`python -m services.replay.mexc_sim`).

    It needs no Redis and no PostgreSQL: it only serves candle files as MEXC would.
    """

    SERVICE_NAME: ClassVar[str] = "mexc_sim"
    DEFAULT_PORT: ClassVar[int] = 8095

    SIM_DATA_DIR: str = Field(
        default=str(SAMPLE_DIR), description="Directory of <BASE>_<QUOTE>-1m.json[.gz] files"
    )
    SIM_SYMBOLS: str = Field(
        default="", pattern=r"^[A-Za-z0-9, ]*$", description="Symbols to serve (empty: all)"
    )
    SIM_SPEED: float = Field(
        default=1.0, ge=0.1, le=240.0,
        description="Candle minutes that pass per wall-clock minute (1: real time)",
    )
    SIM_PUSH_INTERVAL_MS: int = Field(
        default=1000, ge=50, le=60_000,
        description="Time between two WebSocket pushes of each subscribed topic",
    )
    SIM_SPREAD_PCT: float = Field(
        default=0.0005, ge=0.0, le=0.05,
        description="Bid-ask spread as a fraction of the price",
    )
    HTTP_HOST: str = Field(default="127.0.0.1", description="Address the HTTP server binds")
    HTTP_PORT: int = Field(default=0, ge=0, le=65535, description="HTTP port (0: default)")
    LOG_LEVEL: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Log level"
    )

    @property
    def port(self) -> int:
        """The HTTP port: HTTP_PORT when set, else 8095."""
        return self.HTTP_PORT or self.DEFAULT_PORT
