"""`cdb optimize`: an Optuna study over the engines' declared parameters.

A trial is a plain backtest: its parameters are set in the environment exactly as a user
would set them for `cdb backtest` (see `services.research.space`), the engine configurations
are read from it by the same code, and the trial keeps the run's digest and statistics, so a
trial's figures equal that backtest's (a test compares them).

Objectives come from `services.research.statistics.OBJECTIVES` and are maximised: one
objective uses TPE, two or three NSGA-II (the Pareto front is the result). A trial with fewer
closed trades than `min_trades` is infeasible (an Optuna constraint: the samplers steer away
from it and the best trials never include it); a trial whose objective is undefined (no
trades, flat equity) fails and teaches the sampler nothing.

Workers are processes (one per core by default): each reads the candles once, keeps them as
compact events, and asks the shared study for trials until the run's quota is claimed. The
study lives in its storage: a local journal file by default (running the same command again
continues the study), or a database URL (`postgresql://...`, `sqlite:///...`) that workers on
several machines share (Optuna's RDB storage).

Seeds: worker `i` of a run that finds `k` trials already in the study samples with
`seed + i + 10007 * k`. With one worker the study is reproduced exactly by the same command
on a fresh storage; with several, the order in which workers finish their trials (and so what
each one's sampler has seen) depends on timing, so only the set of seeds is reproducible.

Ctrl-C stops asking for trials: the running ones finish and are kept (a second Ctrl-C
abandons them, marked failed); every finished trial stays in the study.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue as queue_module
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from services.replay.candles import Bar, CandleSet, read_candles
from services.research.space import Space
from services.research.statistics import OBJECTIVES

if TYPE_CHECKING:
    import optuna

    from services.common.events import MarketData
    from services.research.report import RunRecord

DEFAULT_STORAGE = Path(".cdb") / "studies.journal"
"""Where a study lives unless `--storage` says otherwise (relative to the working directory)."""

MAX_OBJECTIVES = 3
"""Most objectives a study optimises at once (the Pareto front is drawn for two or three)."""

_SEED_STRIDE = 10_007
_STAT_KEYS = ("total_return", "max_drawdown", "sharpe", "sortino", "calmar", "profit_factor",
              "win_rate", "trades", "fills", "fees", "slippage_cost", "buy_and_hold_return")

logger = logging.getLogger("cdb.research.optimize")


class OptimizeError(ValueError):
    """The study cannot run as asked (nothing has run)."""


class StorageError(OptimizeError):
    """The study's storage cannot be opened or reached."""


# ---------------------------------------------------------------------------- the data


@dataclass(frozen=True, slots=True)
class DataSpec:
    """Which candles the trials run on.

    Attributes:
        directory: Directory of candle files.
        symbols: Symbols to use (None: every file).
        minutes: Minutes from the start (0: all).
        window: (first minute, minutes) of the grid to keep, after `minutes` (None: all);
            walk-forward windows.
    """

    directory: Path
    symbols: tuple[str, ...] | None = None
    minutes: int = 0
    window: tuple[int, int] | None = None

    def read(self) -> CandleSet:
        """Read (and cut) the candles.

        Raises:
            CandleFileError: A candle file is unusable.
            ValueError: The window holds no minute of the data.
        """
        candles = read_candles(self.directory, self.symbols, self.minutes or None)
        if self.window is not None:
            first, minutes = self.window
            candles = candles.window(first, minutes)
        return candles


class ReplayEvent:
    """A replayed candle's market data, attribute for attribute as the engines read it.

    The compact form a worker keeps for its many trials: a `MarketData` built by
    `CandleSet` takes about 1 KB (a pydantic model's dict), this a fifth of it, and no time
    to build again per trial. The values are the very same objects (ids, prices, volumes), so
    the engines decide alike (a test compares the digests).
    """

    __slots__ = ("event_id", "pct_change", "price", "symbol", "timestamp", "volume")

    schema_version = 1
    type = "market_data"
    bid = None
    ask = None
    source = "replay"

    def __init__(self, md: MarketData) -> None:
        """Copy a replay event's values."""
        self.event_id = md.event_id
        self.timestamp = md.timestamp
        self.symbol = md.symbol
        self.price = md.price
        self.volume = md.volume
        self.pct_change = md.pct_change


def compact_bars(candles: CandleSet) -> list[Bar]:
    """Every bar of the candles with compact events (built once, replayed by every trial).

    Args:
        candles: The candles.

    Returns:
        The bars in time order.
    """
    return [Bar(bar.timestamp, tuple(cast("MarketData", ReplayEvent(md)) for md in bar.events))
            for bar in candles]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one trial's backtest gave.

    Attributes:
        values: The objectives' values, in the study's order (NaN: undefined).
        trades: Closed round trips.
        statistics: The run's statistics (`Statistics.as_dict()` without the per-symbol part).
        digest: The run's order and fill digest (equal to `cdb backtest`'s).
        engine_s: Seconds spent in the engines.
        engine_cpu_s: CPU seconds this process spent in the engines.
    """

    values: tuple[float, ...]
    trades: int
    statistics: dict[str, Any]
    digest: dict[str, str]
    engine_s: float
    engine_cpu_s: float = 0.0


class Evaluator:
    """Runs backtests of one data set with different parameters (the candles read once)."""

    def __init__(self, data: DataSpec, objectives: Sequence[str]) -> None:
        """Read the candles and keep them as compact bars.

        Args:
            data: The candles.
            objectives: Objective names (keys of `OBJECTIVES`).
        """
        candles = data.read()
        self.symbols = list(candles.symbols)
        self.candles = candles.candles
        self.bars = compact_bars(candles)
        self.objectives = tuple(objectives)

    def record(self, env: Mapping[str, str], lean: bool = False) -> RunRecord:
        """Run one backtest with `env` set, as `cdb backtest` would run it.

        Args:
            env: Variables to set (a trial's parameters).
            lean: Build no risk decisions and alerts (a trial reads only the statistics and
                the digest, which are the same; see `Pipeline`).

        Returns:
            The run record.
        """
        from services.research.backtest import Pipeline, run_backtest
        from services.research.engines import engine_configs, patched_env

        with patched_env(dict(env)):
            configs = engine_configs(self.symbols)
        return run_backtest(self.bars, Pipeline(*configs, keep_trace=False, lean=lean))

    def evaluate(self, env: Mapping[str, str]) -> Evaluation:
        """Run one trial and compute its objectives.

        Args:
            env: The trial's variables.

        Returns:
            The evaluation.
        """
        from services.research.report import digest
        from services.research.statistics import statistics_of

        cpu = time.process_time()
        started = time.perf_counter()
        record = self.record(env, lean=True)
        engine_s = time.perf_counter() - started
        engine_cpu_s = time.process_time() - cpu
        stats = statistics_of(record)
        values = tuple(float(OBJECTIVES[name](stats)) for name in self.objectives)
        summary = stats.as_dict()
        summary.pop("per_symbol", None)
        return Evaluation(values, stats.trades, summary, digest(record), engine_s, engine_cpu_s)


# ---------------------------------------------------------------------------- the study


@dataclass(frozen=True, slots=True)
class StudySpec:
    """Everything that defines a study and its trials.

    Attributes:
        data: The candles.
        space: The searched parameters.
        objectives: Objective names, maximised (one: TPE; more: NSGA-II).
        min_trades: Closed trades a trial needs to count.
        storage: A journal file path or a database URL.
        name: The study's name in its storage.
        seed: Base seed of the samplers (None: fresh randomness).
    """

    data: DataSpec
    space: Space
    objectives: tuple[str, ...]
    min_trades: int = 0
    storage: str = str(DEFAULT_STORAGE)
    name: str = ""
    seed: int | None = None

    def attributes(self) -> dict[str, Any]:
        """What the study records about itself (checked when it is continued)."""
        return {"objectives": list(self.objectives), "min_trades": self.min_trades}


def check_objectives(names: Sequence[str]) -> tuple[str, ...]:
    """Validate objective names.

    Raises:
        OptimizeError: Unknown, repeated, none, or more than `MAX_OBJECTIVES`.
    """
    chosen = tuple(n.strip().lower() for n in names if n.strip()) or ("sharpe",)
    unknown = [n for n in chosen if n not in OBJECTIVES]
    if unknown:
        raise OptimizeError(f"unknown objective {unknown[0]!r} (one of: "
                            f"{', '.join(OBJECTIVES)})")
    if len(set(chosen)) != len(chosen):
        raise OptimizeError("an objective is given twice")
    if len(chosen) > MAX_OBJECTIVES:
        raise OptimizeError(f"at most {MAX_OBJECTIVES} objectives at once")
    return chosen


def default_study_name(data: DataSpec, space: Space, objectives: Sequence[str],
                       min_trades: int, prefix: str = "optimize") -> str:
    """A stable name for the study of a command (the same command continues the same study).

    The strategy and its base parameters (STRATEGY, STRATEGY_PARAMS) are part of what defines
    a study.

    Args:
        data: The candles.
        space: The searched parameters.
        objectives: Objective names.
        min_trades: Minimum closed trades.
        prefix: The name's start.

    Returns:
        `<prefix>-<directory name>-<12 hex digits of what defines the study>`.
    """
    key = "|".join([
        str(data.directory.resolve()), ",".join(data.symbols or ()), str(data.minutes),
        str(data.window), " ".join(d.text() for d in space.dimensions), ",".join(objectives),
        str(min_trades), os.environ.get("STRATEGY", ""), os.environ.get("STRATEGY_PARAMS", ""),
    ])
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{prefix}-{data.directory.resolve().name or 'data'}-{tag}"


def mask_url(storage: str) -> str:
    """The storage as it may be printed: a database URL without its password."""
    if "://" not in storage:
        return storage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(storage).render_as_string(hide_password=True)
    except ArgumentError:
        return storage.split("://", 1)[0] + "://..."


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_propagation()


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """Open (and for a database, reach) a study storage.

    Args:
        storage: `postgresql://...`, `sqlite:///...` (Optuna's RDB storage) or a file path
            (a journal file, created with its directory).

    Returns:
        The storage.

    Raises:
        StorageError: The URL's scheme is not supported or the database cannot be reached
            (the message never holds the password).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    _quiet_optuna()
    if "://" not in storage:
        path = Path(storage)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"cannot use the study file {path}: "
                               f"{exc.strerror or exc}") from None
    scheme = storage.split("://", 1)[0].lower()
    if not scheme.startswith(("postgresql", "sqlite", "mysql")):
        raise StorageError(f"unsupported study storage {mask_url(storage)} (a file path, "
                           "postgresql://... or sqlite:///...)")
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if scheme.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with _schema_lock(storage, kwargs):
            return optuna.storages.RDBStorage(storage, engine_kwargs=kwargs,
                                              skip_compatibility_check=False)
    except Exception as exc:  # any driver error means "cannot reach"
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise StorageError(f"cannot reach the study storage {mask_url(storage)}: "
                           f"{detail[0] if detail else type(exc).__name__}") from None


_SCHEMA_LOCK_KEY = 0x0C_DB_0_57
"""PostgreSQL advisory lock held while Optuna creates its tables (one creator at a time)."""


@contextlib.contextmanager
def _schema_lock(storage: str, engine_kwargs: dict[str, Any]) -> Iterator[None]:
    """Serialise the creation of Optuna's tables between processes (PostgreSQL only).

    Optuna creates its schema on first use without a lock; two workers starting at once on
    an empty database would both try and one would fail on a duplicate type.
    """
    if not storage.lower().startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(storage, **engine_kwargs)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                             {"key": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def _sampler(spec: StudySpec, worker: int, existing: int) -> optuna.samplers.BaseSampler:
    import optuna

    seed = None if spec.seed is None else spec.seed + worker + _SEED_STRIDE * existing
    if len(spec.objectives) == 1:
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def load_or_create(spec: StudySpec, storage: optuna.storages.BaseStorage | None = None,
                   worker: int = 0, existing: int | None = None) -> optuna.Study:
    """Create the study, or load it when it exists and was made for the same objectives.

    Args:
        spec: The study.
        storage: An open storage (default: open `spec.storage`).
        worker: The worker's index (its sampler's seed offset).
        existing: Trials the run found in the study (its sampler's seed offset; default: count
            them now).

    Returns:
        The study.

    Raises:
        StorageError: The storage cannot be reached.
        OptimizeError: A study of that name exists for other objectives or another
            minimum of trades.
    """
    import optuna
    from optuna.study import StudyDirection

    storage = storage if storage is not None else open_storage(spec.storage)
    directions: list[StudyDirection] = [StudyDirection.MAXIMIZE] * len(spec.objectives)
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name,
                                    directions=directions, load_if_exists=True)
    except Exception as exc:  # a lost database surfaces here too
        raise StorageError(f"cannot open study {spec.name!r} in {mask_url(spec.storage)}: "
                           f"{exc}") from None
    recorded = study.user_attrs
    wanted = spec.attributes()
    if not recorded:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
    elif any(recorded.get(k) != v for k, v in wanted.items()):
        raise OptimizeError(
            f"study {spec.name!r} exists for objectives {recorded.get('objectives')} and "
            f"--min-trades {recorded.get('min_trades')}; give another --study name")
    if existing is None:
        existing = len(study.get_trials(deepcopy=False))
    study.sampler = _sampler(spec, worker, existing)
    return study


@dataclass(frozen=True, slots=True)
class TrialEvent:
    """A finished trial, as the progress display sees it.

    Attributes:
        number: The trial's number in the study.
        state: `COMPLETE` or `FAIL`.
        values: The objective values (None for a failed trial).
        feasible: Reached the minimum of trades.
        engine_s: Seconds the backtest spent in the engines.
        total_s: Seconds of the whole trial (asking, running, telling).
        engine_cpu_s: CPU seconds the worker spent in the engines.
        cpu_s: CPU seconds the worker spent on the whole trial (what other work on the
            machine does not stretch, unlike the seconds).
    """

    number: int
    state: str
    values: tuple[float, ...] | None
    feasible: bool
    engine_s: float = 0.0
    total_s: float = 0.0
    engine_cpu_s: float = 0.0
    cpu_s: float = 0.0


def run_trial(study: optuna.Study, spec: StudySpec, evaluator: Evaluator,
              started: Callable[[int, int], None] | None = None) -> TrialEvent:
    """Ask the study for one trial, run it and tell the result.

    A KeyboardInterrupt once the trial exists marks it failed (interrupted) and propagates:
    no trial is left running.

    Args:
        study: The study.
        spec: The study's definition.
        evaluator: The worker's backtests.
        started: Called with the trial's number and storage id once it exists.

    Returns:
        What happened.
    """
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    trial = study.ask()
    try:
        if started is not None:
            started(trial.number, trial._trial_id)
        event = _complete(study, trial, spec, evaluator, t0)
        return replace(event, cpu_s=time.process_time() - cpu0)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):  # already told, or the storage is gone
            trial.set_user_attr("error", "interrupted")
            study.tell(trial, state=TrialState.FAIL)
        raise


def _complete(study: optuna.Study, trial: optuna.Trial, spec: StudySpec, evaluator: Evaluator,
              t0: float) -> TrialEvent:
    """Run an asked trial's backtest and tell its result."""
    from optuna.trial import TrialState

    env = spec.space.environment(spec.space.suggest(trial))
    try:
        result = evaluator.evaluate(env)
    except Exception as exc:  # a trial that breaks must not stop the study
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        return TrialEvent(trial.number, "FAIL", None, False, 0.0, time.perf_counter() - t0)
    trial.set_user_attr("env", env)
    trial.set_user_attr("trades", result.trades)
    trial.set_user_attr("digest", result.digest)
    trial.set_user_attr("statistics", result.statistics)
    feasible = result.trades >= spec.min_trades
    if not all(math.isfinite(v) for v in result.values):
        undefined = [n for n, v in zip(spec.objectives, result.values, strict=True)
                     if not math.isfinite(v)]
        trial.set_user_attr("error", f"{', '.join(undefined)} undefined for this run")
        study.tell(trial, state=TrialState.FAIL)
        return TrialEvent(trial.number, "FAIL", None, feasible, result.engine_s,
                          time.perf_counter() - t0, result.engine_cpu_s)
    trial.set_constraint("min_trades", float(spec.min_trades - result.trades))
    study.tell(trial, list(result.values))
    return TrialEvent(trial.number, "COMPLETE", result.values, feasible, result.engine_s,
                      time.perf_counter() - t0, result.engine_cpu_s)


# ---------------------------------------------------------------------------- workers


@dataclass(slots=True)
class RunOutcome:
    """How a run of trials ended.

    Attributes:
        finished: Trials this run finished (complete or failed).
        interrupted: Stopped by Ctrl-C before its quota.
        abandoned: Trials abandoned by a second Ctrl-C (marked failed).
        errors: Worker errors (a worker that could not run at all).
        numbers: The numbers of the trials this run finished.
        peak_rss_mb: Peak resident memory of each process that ran trials, in MiB.
    """

    finished: int = 0
    interrupted: bool = False
    abandoned: int = 0
    errors: list[str] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PRELOAD = ["services.research.engines", "services.research.backtest",
            "services.research.optimize", "services.research.statistics", "optuna"]


def _context() -> BaseContext:
    """Worker processes without the parent's threads: a preloaded fork server, else spawn."""
    if "forkserver" in get_all_start_methods():
        ctx = get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return get_context("spawn")


def _worker(index: int, spec: StudySpec, environ: dict[str, str], existing: int,
            claimed: Any, quota: int, stop: Any, events: Any) -> None:
    """A worker process: read the candles once, then run trials until the quota is claimed."""
    # The parent decides when to stop (Ctrl-C or SIGTERM reach it, or the whole group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    try:
        evaluator = Evaluator(spec.data, spec.objectives)
        study = load_or_create(spec, worker=index, existing=existing)
    except Exception as exc:  # reported to the parent, which stops the run
        events.put(("error", index, f"{type(exc).__name__}: {exc}"))
        return
    try:
        while not stop.is_set():
            with claimed.get_lock():
                if claimed.value >= quota:
                    break
                claimed.value += 1
            event = run_trial(study, spec, evaluator,
                              lambda n, tid: events.put(("started", index, (n, tid))))
            events.put(("trial", index, event))
    except Exception as exc:  # e.g. the database went away mid-run
        events.put(("error", index, f"{type(exc).__name__}: {exc}"))
    finally:
        events.put(("done", index, peak_rss_mb()))


def run_study(
    spec: StudySpec,
    trials: int,
    workers: int = 0,
    on_trial: Callable[[TrialEvent], None] | None = None,
    on_interrupt: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run `trials` more trials of the study.

    Args:
        spec: The study (created if new).
        trials: Trials to add.
        workers: Processes (0: every core); 1 runs the trials in this process.
        on_trial: Called with each finished trial.
        on_interrupt: Called at the first Ctrl-C (the running trials still finish).

    Returns:
        How the run ended.

    Raises:
        StorageError: The storage cannot be reached.
        OptimizeError: The study exists for other objectives.
    """
    storage = open_storage(spec.storage)
    study = load_or_create(spec, storage)
    existing = len(study.get_trials(deepcopy=False))
    count = max(1, min(trials, workers or os.cpu_count() or 1))
    outcome = RunOutcome()
    if trials <= 0:
        return outcome
    if count == 1:
        evaluator = Evaluator(spec.data, spec.objectives)
        for _ in range(trials):
            try:
                event = run_trial(study, spec, evaluator)
            except KeyboardInterrupt:  # the running trial is marked failed
                outcome.interrupted = True
                outcome.abandoned = 1
                break
            outcome.finished += 1
            outcome.numbers.append(event.number)
            try:
                if on_trial is not None:
                    on_trial(event)
            except KeyboardInterrupt:
                outcome.interrupted = True
                break
        outcome.peak_rss_mb.append(peak_rss_mb())
        return outcome
    return _run_processes(spec, trials, count, existing, storage, outcome, on_trial,
                          on_interrupt)


def _run_processes(spec: StudySpec, trials: int, count: int, existing: int,
                   storage: optuna.storages.BaseStorage, outcome: RunOutcome,
                   on_trial: Callable[[TrialEvent], None] | None,
                   on_interrupt: Callable[[], None] | None) -> RunOutcome:
    ctx = _context()
    claimed = ctx.Value("i", 0)
    stop = ctx.Event()
    events = ctx.Queue()
    environ = dict(os.environ)
    procs = [ctx.Process(target=_worker, args=(i, spec, environ, existing, claimed, trials,  # type: ignore[attr-defined]
                                                stop, events), daemon=True)
             for i in range(count)]
    for p in procs:
        p.start()
    running: dict[int, tuple[int, int]] = {}
    done = 0
    while done < count:
        try:
            try:
                kind, index, payload = events.get(timeout=0.5)
            except queue_module.Empty:
                if all(not p.is_alive() for p in procs):
                    break
                continue
            if kind == "started":
                running[index] = payload
            elif kind == "trial":
                running.pop(index, None)
                outcome.finished += 1
                outcome.numbers.append(payload.number)
                if on_trial is not None:
                    on_trial(payload)
            elif kind == "error":
                outcome.errors.append(f"worker {index}: {payload}")
                stop.set()
            elif kind == "done":
                done += 1
                outcome.peak_rss_mb.append(payload)
        except KeyboardInterrupt:  # wherever it lands in this loop
            if outcome.interrupted:
                _abandon(procs, running, storage, outcome)
                break
            outcome.interrupted = True
            stop.set()
            if on_interrupt is not None:
                on_interrupt()
    for i, p in enumerate(procs):
        p.join(timeout=10)
        if p.is_alive():  # pragma: no cover - a worker stuck past its last trial
            p.kill()
            p.join(timeout=5)
        elif p.exitcode and not outcome.abandoned:
            outcome.errors.append(f"worker {i} exited with code {p.exitcode}")
    return outcome


def _abandon(procs: Sequence[Any], running: Mapping[int, tuple[int, int]],
             storage: optuna.storages.BaseStorage, outcome: RunOutcome) -> None:
    """Second Ctrl-C: stop the workers now and mark their running trials failed."""
    from optuna.trial import TrialState

    for p in procs:
        if p.is_alive():
            p.kill()  # the workers ignore SIGTERM
    for p in procs:
        p.join(timeout=5)
    for _, trial_id in running.values():
        with contextlib.suppress(Exception):
            storage.set_trial_user_attr(trial_id, "error", "abandoned")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            outcome.abandoned += 1


# ---------------------------------------------------------------------------- the results


@dataclass(frozen=True, slots=True)
class TrialRow:
    """One trial of the study, as the tables, the CSV and the HTML report show it.

    Attributes:
        number: Trial number.
        state: `COMPLETE`, `FAIL`, `RUNNING` or another Optuna state.
        params: The trial's parameter values.
        values: Objective values (None unless complete).
        trades: Closed trades (None when the backtest did not finish).
        feasible: Complete with at least the minimum of trades.
        statistics: The run's statistics (empty when the backtest did not finish).
        digest: The run's digest (empty when the backtest did not finish).
        env: The variables that reproduce the trial with `cdb backtest`.
        error: Why a trial failed.
    """

    number: int
    state: str
    params: dict[str, Any]
    values: tuple[float, ...] | None
    trades: int | None
    feasible: bool
    statistics: dict[str, Any]
    digest: dict[str, str]
    env: dict[str, str]
    error: str = ""


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of the study, in number order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        feasible = (t.state.name == "COMPLETE"
                    and all(v <= 0.0 for v in (t.constraints or {}).values()))
        rows.append(TrialRow(
            number=t.number, state=t.state.name, params=dict(t.params),
            values=tuple(t.values) if t.values is not None else None,
            trades=t.user_attrs.get("trades"), feasible=feasible,
            statistics=dict(t.user_attrs.get("statistics") or {}),
            digest=dict(t.user_attrs.get("digest") or {}),
            env=dict(t.user_attrs.get("env") or {}), error=str(t.user_attrs.get("error", "")),
        ))
    return sorted(rows, key=lambda r: r.number)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(
        x > y for x, y in zip(a, b, strict=True))


def best_rows(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The best feasible trials: the single best, or the Pareto front for several objectives.

    Returns:
        Best first (by the first objective, then the trial number); empty when no trial is
        feasible.
    """
    feasible = [r for r in rows if r.feasible and r.values is not None]
    if not feasible:
        return []
    if len(feasible[0].values or ()) == 1:
        return [max(feasible, key=_order_key)]
    front = [r for r in feasible
             if not any(_dominates(o.values or (), r.values or ()) for o in feasible)]
    return sorted(front, key=_order_key, reverse=True)


def _order_key(row: TrialRow) -> tuple[float, int]:
    """Higher first objective first; among equals the earlier trial."""
    return ((row.values or (-math.inf,))[0], -row.number)


def ranked(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """Complete trials best first (feasible before infeasible), by the first objective."""
    done = [r for r in rows if r.values is not None]
    return sorted(done, key=lambda r: (r.feasible, *_order_key(r)), reverse=True)


def env_block(row: TrialRow) -> str:
    """The variables of a trial as lines of `NAME=value` (shell-ready, sorted)."""
    import shlex

    return "\n".join(f"{k}={shlex.quote(v)}" for k, v in sorted(row.env.items()))
