"""Service shell: one event loop running uvicorn, the consumers and background tasks.

`run_service(ServiceClass)` reads the settings (exit 1 when a required variable is missing),
configures JSON logging, opens the store (applying migrations) and the bus, starts the HTTP
server and the consumers, and on SIGTERM or SIGINT stops consuming, lets the entry in hand
finish and be acked, closes the pools and exits 0 (within 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, ClassVar, Generic, TypeVar

import uvicorn
from fastapi import FastAPI

from services.common import metrics
from services.common.bus import (
    TRANSIENT_ERRORS,
    Bus,
    BusConfig,
    BusUnavailableError,
    Consumer,
    RetryableError,
)
from services.common.http import create_app
from services.common.logs import configure_logging
from services.common.settings import BaseServiceSettings, SettingsError, load_settings
from services.common.store import PG_TRANSIENT, Store

logger = logging.getLogger("cdb.runtime")

SettingsT = TypeVar("SettingsT", bound=BaseServiceSettings)
Task = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
SHUTDOWN_GRACE_S = 8.0
START_RETRYABLE: tuple[type[BaseException], ...] = (
    *PG_TRANSIENT, *TRANSIENT_ERRORS, RetryableError, BusUnavailableError,
)
"""Failures of `Service.start` that mean a dependency is away: start again after a while."""


class Service(Generic[SettingsT]):
    """Base of every service: the runtime calls these hooks in order.

    `start` (state loaded from PostgreSQL), `consumers` and `tasks` (run until stop),
    `routes` (extra HTTP endpoints), `stop` (before the pools close).
    """

    name: ClassVar[str] = "service"
    uses_store: ClassVar[bool] = True

    def __init__(self, settings: SettingsT, bus: Bus, store: Store | None) -> None:
        """Keep the injected dependencies.

        Args:
            settings: The service's settings.
            bus: The event bus.
            store: The PostgreSQL store (None for services that keep no records).
        """
        self.settings = settings
        self.bus = bus
        self._store = store

    @property
    def store(self) -> Store:
        """The store (raises when the service runs without one)."""
        if self._store is None:
            raise RuntimeError(f"{self.name} runs without a store")
        return self._store

    @property
    def consumer_name(self) -> str:
        """Stable consumer name: CONSUMER_NAME, else `<service>-<hostname>`."""
        return self.settings.CONSUMER_NAME or f"{self.name}-{socket.gethostname()}"

    async def start(self) -> None:
        """Load state; called after the bus and store are open."""

    def consumers(self) -> list[Consumer]:
        """Return the consumers to run."""
        return []

    def tasks(self) -> list[Task]:
        """Return extra long-running tasks (each gets the stop event)."""
        return []

    def routes(self, app: FastAPI) -> None:
        """Add service-specific routes."""

    async def ready_checks(self) -> dict[str, bool]:
        """Return extra readiness checks (feed connected, lock held, ...)."""
        return {}

    async def stop(self) -> None:
        """Release resources before the pools close."""


def bus_config(settings: BaseServiceSettings, source: str) -> BusConfig:
    """Build the bus configuration from a service's settings."""
    password = settings.REDIS_PASSWORD.get_secret_value() if settings.REDIS_PASSWORD else None
    return BusConfig(
        url=settings.REDIS_URL.get_secret_value(),
        password=password,
        prefix=settings.STREAM_PREFIX,
        maxlen=settings.BUS_MAXLEN,
        max_deliveries=settings.BUS_MAX_DELIVERIES,
        claim_idle_ms=settings.BUS_CLAIM_IDLE_MS,
        claim_interval_ms=settings.BUS_CLAIM_INTERVAL_MS,
        batch=settings.BUS_BATCH,
        source=source,
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runtime owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def install_signal_handlers(self) -> None:  # older uvicorn releases
        return None


class Runtime(Generic[SettingsT]):
    """Runs one service until it is told to stop."""

    def __init__(self, service_cls: type[Service[SettingsT]], settings: SettingsT) -> None:
        """Prepare the runtime.

        Args:
            service_cls: The service class.
            settings: Its loaded settings.
        """
        self.service_cls = service_cls
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.consumer_list: list[Consumer] = []
        self.service: Service[SettingsT] | None = None
        self.store: Store | None = None
        self.bus: Bus | None = None
        self.running = False
        """True once the service started and its consumers were launched."""

    async def _ready(self) -> dict[str, bool]:
        checks: dict[str, bool] = {}
        checks["redis"] = bool(self.bus and await self.bus.ping())
        if self.service_cls.uses_store:
            checks["postgres"] = bool(self.store and await self.store.ping())
        checks["consumers"] = self.running and all(c.stats.running for c in self.consumer_list)
        if self.service is not None:
            checks.update(await self.service.ready_checks())
        metrics.SERVICE_READY.labels(self.service_cls.name).set(1 if all(checks.values()) else 0)
        return checks

    async def _open_store(self) -> Store | None:
        """Open the store, waiting for PostgreSQL; None when stopped before it came up.

        Retries with capped exponential backoff (0.2 s doubling to 5 s); `/ready` answers 503
        naming postgres meanwhile. A migration conflict or a refused login is not retried.
        """
        store = Store(self.settings.DATABASE_URL.get_secret_value())
        delay = 0.2
        while not self.stop_event.is_set():
            try:
                await store.open()
                return store
            except PG_TRANSIENT as exc:
                with contextlib.suppress(Exception):
                    await store.close()
                logger.warning("postgres unavailable (%s); retrying in %.1fs",
                               type(exc).__name__, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        return None

    async def _sleep(self, delay: float) -> None:
        """Wait `delay` seconds or until told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_event.wait(), delay)

    async def _start_service(self, service: Service[SettingsT]) -> bool:
        """Run `service.start()`, retrying while Redis or PostgreSQL is away.

        Returns:
            False when told to stop before the service started.
        """
        delay = 0.2
        while not self.stop_event.is_set():
            try:
                await service.start()
                return True
            except START_RETRYABLE as exc:
                logger.warning("%s could not start (%s: %s); retrying in %.1fs",
                               self.service_cls.name, type(exc).__name__, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        return False

    async def _metrics_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for consumer in self.consumer_list:
                await consumer.update_metrics()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 5)

    async def main(self) -> int:
        """Run the service; return the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        name = self.service_cls.name
        self.bus = Bus(bus_config(self.settings, name))
        # HTTP first: /health answers and /ready names what is missing while the
        # dependencies come up.
        app = create_app(name, self._ready)
        config = uvicorn.Config(
            app, host=self.settings.HTTP_HOST, port=self.settings.port, log_config=None,
            access_log=False, lifespan="off",
        )
        server = _Server(config)
        server_task = asyncio.create_task(server.serve(), name="http")
        opener = asyncio.create_task(self._open_dependencies(), name="start")
        await asyncio.wait([opener, server_task], return_when=asyncio.FIRST_COMPLETED)
        if not opener.done():  # the HTTP server died first
            opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opener
        if opener.cancelled() or opener.exception() is not None or not opener.result():
            code = await self._abort(server, server_task)
            if not opener.cancelled() and opener.exception() is not None:
                raise opener.exception()  # type: ignore[misc]  # a permanent startup error
            return code
        assert self.service is not None
        self.service.routes(app)
        # What startup loaded (modules, settings, restored state) lives as long as the
        # process: keep it out of the cyclic collector, whose full passes would otherwise walk
        # it every time and pause the event loop for tens of milliseconds.
        gc.collect()
        gc.freeze()
        self.consumer_list = self.service.consumers()
        work = [asyncio.create_task(c.run(self.stop_event), name=f"consumer:{c.group}")
                for c in self.consumer_list]
        work += [asyncio.create_task(t(self.stop_event), name="task")
                 for t in self.service.tasks()]
        helper = asyncio.create_task(self._metrics_loop(self.stop_event), name="metrics")
        self.running = True
        logger.info("service started", extra={"port": self.settings.port,
                                              "consumers": [c.group for c in self.consumer_list]})
        exit_code = 0
        stopper = asyncio.create_task(self.stop_event.wait())
        done, _ = await asyncio.wait([stopper, server_task, *work],
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not stopper and task.exception() is not None:
                exit_code = 1
                logger.error("task %s failed; shutting down", task.get_name(),
                             exc_info=task.exception())
            elif task is server_task and not self.stop_event.is_set():
                exit_code = 1
                logger.error("http server stopped unexpectedly (port %d in use?)",
                             self.settings.port)
        self.stop_event.set()
        _, pending = await asyncio.wait(work, timeout=SHUTDOWN_GRACE_S) if work else (set(), set())
        for task in pending:
            task.cancel()
        stopper.cancel()
        helper.cancel()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server_task, 2)
        await self.service.stop()
        await self._close_pools()
        logger.info("service stopped", extra={"exit_code": exit_code})
        return exit_code

    async def _open_dependencies(self) -> bool:
        """Open the store and start the service; False when stopped first."""
        assert self.bus is not None
        if self.service_cls.uses_store:
            self.store = await self._open_store()
            if self.store is None:
                return False
        service = self.service_cls(self.settings, self.bus, self.store)
        if not await self._start_service(service):
            return False
        self.service = service
        return True

    async def _abort(self, server: _Server, server_task: asyncio.Task[None]) -> int:
        """Stop before startup completed: 0 when told to stop, 1 when the HTTP server died."""
        failed = server_task.done() and not self.stop_event.is_set()
        if failed:
            logger.error("http server stopped unexpectedly (port %d in use?)",
                         self.settings.port)
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server_task, 2)
        await self._close_pools()
        logger.info("stopped before startup completed")
        return 1 if failed else 0

    async def _close_pools(self) -> None:
        if self.store is not None:
            await self.store.close()
        if self.bus is not None:
            await self.bus.close()

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.info("received %s; stopping", sig.name)
        self.stop_event.set()


def run_service(
    service_cls: type[Service[Any]], settings_cls: type[BaseServiceSettings],
    **overrides: Any,
) -> int:
    """Entry point of `python -m services.<name>` and `cdb run <name>`.

    Args:
        service_cls: The service.
        settings_cls: Its settings class.
        **overrides: Settings taking precedence over the environment.

    Returns:
        The exit code (0 after a clean stop, 1 on a failure or missing configuration).
    """
    configure_logging(service=service_cls.name)
    try:
        settings = load_settings(settings_cls, **overrides)
    except SettingsError:
        return 1
    logging.getLogger().setLevel(settings.LOG_LEVEL)
    runtime = Runtime(service_cls, settings)
    try:
        return asyncio.run(runtime.main())
    except KeyboardInterrupt:  # pragma: no cover - signal handler normally wins
        return 0
    except Exception:
        # Logged through the redacting handler: a bare traceback would bypass it.
        logger.exception("service failed")
        return 1


def main_for(service_cls: type[Service[Any]], settings_cls: type[BaseServiceSettings]) -> None:
    """`__main__` helper: run and exit with the service's code."""
    sys.exit(run_service(service_cls, settings_cls))
