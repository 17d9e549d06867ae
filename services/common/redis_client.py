"""Redis clients: the one place every client of the product is built (bus, services, CLI).

A Redis that was just started (or restarted) answers `-LOADING` to every command until it has
read its append-only file back, which takes seconds for a large one; redis-py raises
`BusyLoadingError` then. That is a transient state, never a failure: every client built here
retries a command refused that way, with capped backoff, for up to `LOADING_WAIT_S`. Nothing
was executed by a refused command, so the retry is safe for every command (XADD and scripts
included). Other connection errors are left to the caller (the bus retries them with its own
backoff and its stop event, `services.common.bus.Bus.retrying`), so a Redis that is away never
blocks a command for a minute.
"""

from __future__ import annotations

from typing import Any, Final

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError
from redis.retry import Retry

LOADING_WAIT_S: Final = 60.0
"""Longest time a command waits for Redis to finish loading its data set."""
_BACKOFF_BASE_S: Final = 0.05
_BACKOFF_CAP_S: Final = 0.5


def loading_retries(wait_s: float = LOADING_WAIT_S) -> int:
    """Retries whose backoff delays add up to at least `wait_s` seconds."""
    backoff = ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S)
    total = 0.0
    retries = 0
    while total < wait_s:
        retries += 1
        total += backoff.compute(retries)
    return retries


def _retry_options(wait_s: float, retry_cls: type[Any]) -> dict[str, Any]:
    """redis-py options that retry `BusyLoadingError` (and nothing else) for `wait_s`."""
    retry = retry_cls(ExponentialBackoff(cap=_BACKOFF_CAP_S, base=_BACKOFF_BASE_S),
                      loading_retries(wait_s), supported_errors=(BusyLoadingError,))
    # `retry_on_error` narrows redis-py's own retry to this error on releases that retry
    # connection errors by default, and enables it on those that retry nothing.
    return {"retry": retry, "retry_on_error": [BusyLoadingError]}


def async_client(url: str, *, loading_wait_s: float = LOADING_WAIT_S,
                 **options: Any) -> aioredis.Redis:
    """An asyncio client for `url` that waits while Redis is loading its data.

    Args:
        url: The Redis URL (redis:// or rediss://).
        loading_wait_s: How long a command waits for a loading Redis before it raises.
        **options: Further redis-py options (password, decode_responses, timeouts, ...).

    Returns:
        The client (no I/O until the first command).
    """
    return aioredis.Redis.from_url(url, **_retry_options(loading_wait_s, AsyncRetry), **options)


def sync_client(url: str, *, loading_wait_s: float = LOADING_WAIT_S,
                **options: Any) -> redis.Redis:
    """A blocking client for `url` that waits while Redis is loading its data.

    Args:
        url: The Redis URL (redis:// or rediss://).
        loading_wait_s: How long a command waits for a loading Redis before it raises.
        **options: Further redis-py options (password, socket_timeout, ...).

    Returns:
        The client (no I/O until the first command).
    """
    return redis.Redis.from_url(url, **_retry_options(loading_wait_s, Retry), **options)
