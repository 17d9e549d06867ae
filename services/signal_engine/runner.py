"""The live service's time budget for strategy calls (CLOCK=wall only).

A strategy call runs in one worker thread; the engine waits at most STRATEGY_TIMEOUT_MS for
it. A call that takes longer is dropped (its intents are discarded whenever it returns) and
reported as a `StrategyTimeout`; while it still runs, further calls are refused at once instead
of queueing behind it, so a stuck strategy costs the event loop one budget, not one per bar.

Wall time is the only measure that catches a call that blocks (sleeps, waits on I/O), and it
depends on the machine's load, so it never applies in event time: a backtest and a lock-step
replay (CLOCK=event) call the strategy directly and stay deterministic.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any

from services.signal_engine.engine import StrategyTimeout


class ThreadRunner:
    """Runs each strategy call in a worker thread with a time budget."""

    def __init__(self, timeout_ms: int) -> None:
        """Start the worker thread's pool.

        Args:
            timeout_ms: Longest a call may take.
        """
        self.timeout_ms = timeout_ms
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="strategy")
        self._stuck: concurrent.futures.Future[Any] | None = None

    def __call__(self, call: Callable[[], Any]) -> Any:
        """Run one call; its result, or `StrategyTimeout` past the budget.

        Raises:
            StrategyTimeout: The call took longer than the budget, or an earlier one that did
                is still running.
        """
        if self._stuck is not None:
            if not self._stuck.done():
                raise StrategyTimeout(
                    f"an earlier call exceeded {self.timeout_ms} ms and is still running")
            self._stuck = None
        future = self._pool.submit(call)
        try:
            return future.result(timeout=self.timeout_ms / 1000)
        except concurrent.futures.TimeoutError:
            self._stuck = future
            raise StrategyTimeout(f"took longer than {self.timeout_ms} ms") from None

    def close(self) -> None:
        """Stop the worker thread (a call still running is abandoned)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
