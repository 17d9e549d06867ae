"""Replay source settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.common.settings import BaseServiceSettings

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
