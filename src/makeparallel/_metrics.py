"""Per-function metrics: counts and execution times of every decorated function.

Each function name has one :class:`FunctionMetrics` record, counted when a task
is submitted and when it ends, under the lock the backend already holds then. Readers get a frozen
:class:`TaskMetrics` snapshot that reads both as attributes (``m.total_tasks``) and
as a mapping (``m["total_tasks"]``), because code in the wild uses both. That record
class lives in its own module, loaded at the first read: counting needs none of it.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import CodeType, MethodType
from typing import TYPE_CHECKING, Any, TypeVar, cast, overload

from . import _at_fork_in_child
from ._histogram import Histogram
from ._states import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT
from ._runtime import (
    DEADLINE_HEAP,
    get_active_task_count,
    memory_guard_locks,
    pool_infos,
    pool_locks,
    queued_by_name,
    refuse_under_a_held_lock,
)
from ._validation import check_name
from ._worker_reductions import for_worker_functions

if TYPE_CHECKING:
    from ._circuit import CircuitBreaker
    from ._task_metrics import TaskMetrics

__all__ = [
    "Counts",
    "FunctionMetrics",
    "MetricsByName",
    "ProfiledLayer",
    "all_records",
    "full_names",
    "get_all_metrics",
    "get_metrics",
    "metrics_for",
    "metrics_snapshot",
    "profiled",
    "profiled_layer",
    "reset_metrics",
    "task_of_profiled",
    "unprofiled",
]

F = TypeVar("F", bound=Callable[..., Any])


FOLD_AT = 256  # durations gathered before they are folded into the histograms


class Counts:
    """One shard of a record, only ever changed under the lock it names.

    Durations are appended to short lists on the hot path and folded into the
    histograms in batches (at 256, and before every read), which costs a third
    of counting them one by one.
    """

    __slots__ = (
        "cancelled",
        "carried",
        "completed",
        "durations",
        "failed",
        "lock",
        "new_durations",
        "new_waits",
        "record",
        "retried",
        "retries",
        "timed_out",
        "total",
        "waits",
    )

    def __init__(self, lock: threading.Lock, record: str = "") -> None:
        self.lock = lock
        self.record = record  # the name of the record it is a shard of
        self.zero()

    def __reduce__(self) -> tuple[Any, ...]:
        # Met in the closure of a @profiled wrapper that a pickler of another library sends
        # by value (cloudpickle, a class method's: no name finds the wrapper): a lock cannot
        # be pickled. Where it is unpickled, it is the own shard of the record of its name there.
        if not self.record:
            raise TypeError("the counts of a merged metrics record cannot be pickled")
        return (_own_counts, (self.record,))

    def zero(self) -> None:
        self.total = self.completed = self.failed = self.cancelled = self.timed_out = 0
        self.retried = self.retries = 0
        self.carried = 0  # in flight at the last reset: their ends are still to come
        self.durations = Histogram()  # run to the end: succeeded or failed
        self.waits = Histogram()  # waits for a worker: from submission (or a retry due) to start
        self.new_durations: list[float] = []
        self.new_waits: list[float] = []

    @property
    def ended(self) -> int:
        return self.completed + self.failed + self.cancelled + self.timed_out

    def count_end(self, state: int, seconds: float | None, waited: float | None) -> None:
        """Count a task that ended in ``state``.

        Args:
            seconds: how long it ran, if it ran to its end.
            waited: how long it waited to start, if it started.
        """
        if state == SUCCEEDED:
            self.completed += 1
        elif state == FAILED:
            self.failed += 1
        elif state == CANCELLED:
            self.cancelled += 1
        elif state == TIMED_OUT:
            self.timed_out += 1
        if seconds is not None:
            self.new_durations.append(seconds)
        if waited is not None:
            self.new_waits.append(waited)
        if len(self.new_durations) >= FOLD_AT or len(self.new_waits) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move the durations gathered since the last fold into the histograms."""
        self.durations.add_all(self.new_durations)
        self.waits.add_all(self.new_waits)
        self.new_durations = []
        self.new_waits = []

    def merge(self, other: Counts) -> None:
        other.fold()
        self.total += other.total
        self.carried += other.carried
        self.completed += other.completed
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.timed_out += other.timed_out
        self.retried += other.retried
        self.retries += other.retries
        self.durations.merge(other.durations)
        self.waits.merge(other.waits)


class FunctionMetrics:
    """The live, thread-safe record behind :class:`TaskMetrics` for one name.

    Counting must not cost a lock of its own on the hot path, so the record is
    sharded by the lock its writer already holds: a backend counts its tasks in
    the shard of its own lock while it holds it. Readers sum the shards, taking
    each shard's lock in turn.
    """

    __slots__ = ("_lock", "_shards", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()  # guards the shard of callers holding no lock
        self._shards: dict[threading.Lock, Counts] = {}

    def counts(self, lock: threading.Lock) -> Counts:
        """The shard to change while holding ``lock``."""
        shard = self._shards.get(lock)
        if shard is None:
            shard = self._shards.setdefault(lock, Counts(lock, self.name))  # atomic: one wins
        return shard

    def counted(self) -> Counts:
        """The shard guarded by the record's own lock, for callers holding none."""
        return self.counts(self._lock)

    def merged(self) -> Counts:
        """All shards added up, as a consistent copy per shard."""
        merged = Counts(self._lock)
        for shard in list(self._shards.values()):
            with shard.lock:
                merged.merge(shard)
        return merged

    def snapshot(self, queued: int = 0) -> TaskMetrics:
        """The record as plain numbers; ``queued``: this function's tasks not yet started."""
        return task_metrics(self.name, self.merged(), queued)

    def reset(self) -> None:
        for shard in list(self._shards.values()):
            with shard.lock:
                still_in_flight = shard.total + shard.carried - shard.ended
                shard.zero()
                shard.carried = still_in_flight


def _own_counts(record: str) -> Counts:
    """The shard of the record named ``record`` that callers holding no lock count in (a pickled one's, unpickled)."""
    return metrics_for(record).counted()


def task_metrics(name: str, counts: Counts, queued: int) -> TaskMetrics:
    """``counts`` (all shards of one record, merged) as plain numbers."""
    from ._task_metrics import TaskMetrics  # dataclasses: loaded by the first read, not by counting

    durations, waits = counts.durations, counts.waits
    in_flight = max(0, counts.total + counts.carried - counts.ended)
    queued = min(queued, in_flight)

    def ms(seconds: float) -> float:
        return seconds * 1000.0

    return TaskMetrics(
        name=name,
        total_tasks=counts.total,
        completed_tasks=counts.completed,
        failed_tasks=counts.failed,
        cancelled_tasks=counts.cancelled,
        timed_out_tasks=counts.timed_out,
        running_tasks=in_flight - queued,
        queued_tasks=queued,
        total_execution_time_ms=ms(durations.total),
        average_execution_time_ms=ms(durations.total / durations.count) if durations.count else 0.0,
        min_execution_time_ms=ms(durations.minimum) if durations.count else 0.0,
        max_execution_time_ms=ms(durations.maximum),
        p50_execution_time_ms=ms(durations.quantile(0.50)),
        p95_execution_time_ms=ms(durations.quantile(0.95)),
        p99_execution_time_ms=ms(durations.quantile(0.99)),
        average_queue_wait_ms=ms(waits.total / waits.count) if waits.count else 0.0,
        p50_queue_wait_ms=ms(waits.quantile(0.50)),
        p95_queue_wait_ms=ms(waits.quantile(0.95)),
        p99_queue_wait_ms=ms(waits.quantile(0.99)),
        max_queue_wait_ms=ms(waits.maximum),
        retried_tasks=counts.retried,
        retries=counts.retries,
    )


_records: dict[str, FunctionMetrics] = {}
# Short names (``__name__``) to the full names (``__qualname__``) of their records;
# each value a tuple, replaced whole under the lock, so readers need none.
_short_names: dict[str, tuple[str, ...]] = {}
_short_names_lock = threading.Lock()
_resets = 0  # reset_metrics() calls so far: exporters of deltas start over
_reset_lock = threading.Lock()  # a snapshot sees a reset whole or not at all


def metrics_for(name: str, short_name: str | None = None) -> FunctionMetrics:
    """The record for ``name``, created on first use.

    Args:
        short_name: the function's ``__name__``. When ``name`` is a dotted
            name that ends with it (a ``__qualname__`` such as
            ``outer.<locals>.work``), lookups find the record by the short name
            too, while no other record has the same one.
    """
    record = _records.get(name)
    if record is None:
        record = _records.setdefault(name, FunctionMetrics(name))  # atomic: one wins
    if short_name and name.endswith("." + short_name) and name not in _short_names.get(short_name, ()):
        with _short_names_lock:
            known = _short_names.get(short_name, ())
            if name not in known:
                _short_names[short_name] = (*known, name)
    return record


def full_names(name: str) -> tuple[str, ...]:
    """The full names a lookup of ``name`` may mean: itself if a record has it, else those of that short name."""
    if name in _records:
        return (name,)
    return _short_names.get(name, ())


def all_records() -> list[FunctionMetrics]:
    """Every function's live record."""
    return list(_records.values())


def get_metrics(name: str) -> TaskMetrics | None:
    """A snapshot of the metrics of the function named ``name``, or ``None`` if unknown.

    The name is the ``name=`` given to ``@parallel`` or ``@profiled``, else the
    function's ``__qualname__`` (its plain name for a module-level function).
    The function's ``__name__`` (its *short name*, as makeparallel 0.2 keyed
    metrics) finds it too, as long as no other function has that short name:
    ``get_metrics("run")`` finds ``Worker.run``.

    Raises:
        TypeError: ``name`` is not a ``str`` (the function itself, say, which
            found nothing and read as a function never run).
        KeyError: ``name`` is a short name shared by several functions; the
            message lists their full names, which find each one.
        RuntimeError: called from a signal handler that interrupted the main
            thread as it held a lock these counts are read under (a pool's, as
            a task was submitted or ended on it): raised within 0.25 s, where
            the read waited for good.
    """
    if not isinstance(name, str):
        raise TypeError(
            f"name must be the name of a function, a str (its name= or __qualname__), got {name!r}"
        )
    found = full_names(name)
    if len(found) > 1:
        raise KeyError(_ambiguous(name, found))
    if not found:
        return None
    full = found[0]
    _refuse_in_a_handler("get_metrics()", [_records[full]])
    return _records[full].snapshot(queued_by_name().get(full, 0))


_READ_ELSEWHERE = "Read them from another thread, or have the handler set a flag and read them from your program's own flow"


def _refuse_in_a_handler(call: str, records: list[FunctionMetrics], *more: Any) -> None:
    """Raise ``RuntimeError`` where ``call`` would wait for good for a lock held by the code a signal handler interrupted.

    The locks read: the pools' and the deadline heap's (the tasks queued, and
    waiting to retry), the shards' of ``records``, and ``more``.
    """

    def locks() -> list[Any]:
        shards = [shard.lock for record in records for shard in list(record._shards.values())]  # (a fork's are new)
        return [*pool_locks(), DEADLINE_HEAP, *shards, *more]

    refuse_under_a_held_lock(call, locks, _READ_ELSEWHERE)


def _ambiguous(name: str, candidates: tuple[str, ...]) -> str:
    return (
        f"{name!r} is the short name of {len(candidates)} functions: "
        f"{', '.join(map(repr, sorted(candidates)))}; use the full name"
    )


class MetricsByName(dict[str, "TaskMetrics"]):  # a string: TaskMetrics loads at the first read
    """What :func:`get_all_metrics` returns: a ``dict`` by full name that short names find too.

    Iteration, ``keys()``, ``items()`` and ``len()`` see each function once,
    under its full name (its ``name=``, else its ``__qualname__``). Lookups
    (``[name]``, ``.get(name)``, ``name in``) also accept a function's
    ``__name__`` when exactly one function has it. A short name that several
    functions share is not ``in`` the mapping, ``.get()`` gives the default,
    and ``[name]`` raises a ``KeyError`` listing the full names to use.
    """

    def __missing__(self, name: str) -> TaskMetrics:
        found = [full for full in _short_names.get(name, ()) if dict.__contains__(self, full)]
        if len(found) == 1:
            return dict.__getitem__(self, found[0])
        if found:
            raise KeyError(_ambiguous(name, tuple(found)))
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        if dict.__contains__(self, name):
            return True
        if not isinstance(name, str):
            return False
        return sum(1 for full in _short_names.get(name, ()) if dict.__contains__(self, full)) == 1

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default


def get_all_metrics() -> MetricsByName:
    """Snapshots of every function's metrics, by full name; short names find them too.

    See :class:`MetricsByName` for how a function's ``__name__`` is looked up.

    Raises:
        RuntimeError: called from a signal handler that interrupted the main
            thread as it held a lock these counts are read under (a pool's, as
            a task was submitted or ended on it): raised within 0.25 s, where
            the read waited for good.
    """
    _refuse_in_a_handler("get_all_metrics()", all_records())
    queued = queued_by_name()
    return MetricsByName(
        {name: record.snapshot(queued.get(name, 0)) for name, record in list(_records.items())}
    )


def _buckets(histogram: Histogram) -> list[list[Any]]:
    return [["+Inf" if math.isinf(le) else le, count] for le, count in histogram.cumulative()]


def metrics_snapshot() -> dict[str, Any]:
    """Everything measured, as plain JSON-serialisable data.

    ``resets`` counts the calls of :func:`reset_metrics`, so that an exporter of
    differences knows to start over. ``functions`` maps each name to its
    :class:`TaskMetrics` fields plus the
    cumulative histograms of execution time and queue wait in seconds
    (``[upper bound, samples at or below it]`` pairs, the last bound ``"+Inf"``)
    and their sums; ``pools`` describes each pool started so far;
    ``circuit_breakers`` maps each live breaker's label to its statistics
    (the label is its name, or ``"<name>#2"``, ``"#3"``... for the newer
    breakers of a name that several live ones share);
    ``memory_limit`` (``None`` until one is configured) gives the memory limit's
    figures: ``limit_percent``, ``paused``, ``pauses`` (times it paused the
    pools), ``used_bytes``, ``limit_bytes``, ``used_percent`` and ``source``.

    Raises:
        RuntimeError: called from a signal handler that interrupted the main
            thread as it held a lock these figures are read under (a pool's,
            as a task was submitted; a breaker's, as a call went through it):
            raised within 0.25 s, where the read waited for good.
    """
    _refuse_in_a_handler("metrics_snapshot()", all_records(), _reset_lock, *_breaker_locks(), *memory_guard_locks())
    queued = queued_by_name()
    functions: dict[str, Any] = {}
    with _reset_lock:  # never half a reset: the counts and "resets" agree
        resets = _resets
        for record in all_records():
            counts = record.merged()
            functions[record.name] = {
                **task_metrics(record.name, counts, queued.get(record.name, 0)).as_dict(),
                "execution_time_buckets": _buckets(counts.durations),
                "execution_time_sum_seconds": counts.durations.total,
                "queue_wait_buckets": _buckets(counts.waits),
                "queue_wait_sum_seconds": counts.waits.total,
            }
    return {
        "time": time.time(),
        "resets": resets,
        "active_tasks": get_active_task_count(),
        "functions": functions,
        "pools": pool_infos(),
        "circuit_breakers": _breakers(),
        "memory_limit": _memory_limit_fields(),
    }


def _breakers() -> dict[str, Any]:
    circuit = sys.modules.get("makeparallel._circuit")  # loaded only once a breaker was made
    # By label: two live breakers of one name (an app factory run twice) hid each other by name.
    return {} if circuit is None else {label: _breaker_fields(b) for label, b in circuit.labelled_breakers().items()}


def _breaker_locks() -> list[Any]:
    """The locks :func:`_breakers` takes, listed without taking any."""
    circuit = sys.modules.get("makeparallel._circuit")
    return [] if circuit is None else [circuit._breakers_lock, *(breaker._lock for breaker in list(circuit._breakers))]


def _memory_limit_fields() -> dict[str, Any] | None:
    guard = sys.modules.get("makeparallel._memory_guard")  # loaded only once a limit was configured
    current = None if guard is None else guard.current_guard()
    return None if current is None else current.snapshot()


def _breaker_fields(breaker: CircuitBreaker) -> dict[str, Any]:
    from dataclasses import asdict  # loaded already, by the breaker's module

    stats = asdict(breaker.statistics())
    stats["state"] = str(stats["state"])
    return stats


def reset_metrics() -> None:
    """Set every count and time back to zero.

    Tasks in flight at the time are counted when they end, so after a reset
    the ended counts may exceed ``total_tasks`` by those tasks; they still
    count as running until then.

    Raises:
        RuntimeError: called from a signal handler that interrupted the main
            thread as it held a lock these counts are kept under (a pool's, as
            a task was submitted or ended on it): raised within 0.25 s, where
            the reset waited for good. Nothing is reset then.
    """
    global _resets
    _refuse_in_a_handler("reset_metrics()", all_records(), _reset_lock)
    with _reset_lock:
        for record in list(_records.values()):
            record.reset()
        _resets += 1


@overload
def profiled(fn: F, /) -> F: ...
@overload
def profiled(*, name: str | None = None) -> Callable[[F], F]: ...
def profiled(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Record metrics for a plain function called in the ordinary way.

    ``@parallel`` functions are always measured; ``@profiled`` gives the same
    record (``get_metrics(name)``) to a function that runs synchronously. An
    ``async def`` function stays one (so does a partial of one, or an object
    whose ``__call__`` is one, as ``@parallel`` judges them): each call is
    measured as it is awaited, from its start to its end, awaits included.

    Args:
        fn: the function to measure; under ``@staticmethod`` or
            ``@classmethod`` too (``@profiled`` above them), which it measures
            and keeps as such.
        name: the name to record under; defaults to the function's
            ``__qualname__`` (as for ``@parallel``: a ``functools.partial``'s is
            ``partial(<its function's>)``, a callable object's its class's).

    Raises:
        TypeError: ``fn`` is not callable, or ``name`` is not a ``str``
            (checked as ``@parallel`` checks it: a record named otherwise is
            found by no lookup, and its label broke every Prometheus scrape),
            or ``fn`` is a generator or async generator function (or wraps
            one, as ``@parallel`` judges it): a call only creates the
            generator, and what a measure of it would count is not the work,
            which runs as the caller iterates it.
        ValueError: ``name`` is the empty string.

    Profiled twice:
        A function that is ``@profiled`` already (twice over, or by two
        layers of a program) is measured once per call, never once per
        layer. Profiled again without a ``name=``, or under the name it is
        recorded under already, it is returned as it is. Under another
        ``name=``, the new wrapper measures the function underneath, under
        that name alone: a call through it counts there, and a call through
        the first wrapper (which code holding it still calls) counts under
        the first name.

    Over @parallel:
        A ``@parallel`` function (a method of one, bound or in its class's
        body, too) is measured already, each task from its start to its end;
        a wrapper timed the submission, which returns the handle at once, and
        counted it as a call beside the task. Profiled without a ``name=``,
        or under the name it records under, it is returned as it is; under
        another ``name=``, its copy with that name (``.options(name=...)``),
        whose tasks count under that name alone. Below ``@parallel``,
        ``@profiled`` is taken apart by it: see :func:`parallel`.

    Pickling:
        The wrapper pickles as the function it wraps does: by its name where
        its module holds it (a class or static method's too, for the process
        backend), by value otherwise (a function of the main script), and is
        measured where it is unpickled, in that process's records.
    """
    check_name(name)

    def decorate(function: F) -> F:
        parallel = _parallel_kind(function)
        if parallel is not None:
            return cast(F, _profiled_parallel(function, parallel, name))
        # Wrapped inside, as @parallel does: the plain wrapper made of a staticmethod bound
        # the instance it was read on ("takes 1 positional argument but 2 were given"),
        # and a classmethod, no callable, was refused.
        if isinstance(function, staticmethod):
            return staticmethod(decorate(function.__func__))  # type: ignore[arg-type, return-value]
        if isinstance(function, classmethod):
            return classmethod(decorate(function.__func__))
        if not callable(function):
            hint = f" (a name goes in name=: @profiled(name={function!r}))" if isinstance(function, str) else ""
            raise TypeError(f"@profiled needs a callable, got {function!r}{hint}")
        # Named and judged as @parallel does (here: measuring alone needs none of the decorators).
        from ._decorators import (
            _describe,
            _generator_kind,
            _returns_coroutines,
            _short_name,
        )

        kind = _generator_kind(function)
        if kind is not None:  # before its record is made: a refused function leaves none
            raise TypeError(
                f"@profiled cannot measure {_describe(function)}: it is {'an' if kind.startswith('a') else 'a'} "
                f"{kind} function (or wraps one), so a call would only create the {kind}, in microseconds, "
                "and none of its body runs until the caller iterates it. Profile the function that "
                f"consumes the {kind}, or make this one return a list"
            )
        layer = profiled_layer(function)
        if layer is not None:
            # Profiled already: each layer counted every call, twice under the one name.
            if name is None or name == layer.record:
                return function
            function = cast(F, layer.function)  # measured once, under the name this layer gives
        if name:
            record = metrics_for(name)
        else:  # a partial or a callable object has no __qualname__
            record = metrics_for(_describe(function), _short_name(function))
        counts = record.counted()
        # A partial of an async def, or an object whose __call__ is one, too: their own code is
        # none to read, and the plain wrapper counted each coroutine's creation as a call completed.
        if _returns_coroutines(function):
            measured = _profiled_coroutine_function(function, counts)
        else:
            measured = _profiled_function(function, counts)
        measured.__profiled__ = ProfiledLayer(function, name, record.name)  # type: ignore[attr-defined]
        return measured  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)


def _parallel_kind(function: Any) -> Any:
    """The parallel function ``function`` is, is bound from or holds as a class method; else None.

    Looked up only where ``@parallel`` was imported: nothing else makes one.
    """
    decorators = sys.modules.get(f"{__package__}._decorators")
    if decorators is None:
        return None
    if isinstance(function, decorators._ParallelClassMethod):
        return function.__func__
    function = decorators.callable_of(function) if type(function) is MethodType else function
    if isinstance(function, decorators._BoundParallelFunction):
        return function._function
    return function if isinstance(function, decorators.ParallelFunction) else None


def _profiled_parallel(function: Any, parallel: Any, name: str | None) -> Any:
    """``function``, a ``@parallel`` one (``parallel``), as ``@profiled`` makes it: itself, or a copy named ``name``.

    Each of its tasks is measured already, from its start to its end: a
    wrapper counted its submission (which returns the handle at once) as a
    call completed in microseconds, beside the task, under the same name.
    """
    if name is None or name == parallel._spec.name:
        return function
    if type(function) is MethodType:  # from Python 3.13, a @parallel class method read on its class
        function = sys.modules[f"{__package__}._decorators"].callable_of(function)
    if isinstance(function, classmethod):  # a @parallel class method, in its class's body
        return type(function)(parallel.options(name=name))
    return function.options(name=name)


class ProfiledLayer:
    """What a ``@profiled`` wrapper measures: its function, the ``name=`` it was given, and its record's name.

    A plain class: a ``NamedTuple`` made a ``ForwardRef`` of each annotation
    as this module loaded, which every first task loads.
    """

    __slots__ = ("function", "name", "record")

    def __init__(self, function: Callable[..., Any], name: str | None, record: str) -> None:
        self.function, self.name, self.record = function, name, record


def profiled_layer(fn: Any) -> ProfiledLayer | None:
    """What ``fn`` measures, if it is a ``@profiled`` wrapper; else None.

    Known by its code, not by the attribute alone: ``functools.wraps`` copies
    a function's ``__dict__``, so a wrapper of a program's own made around a
    profiled function carries the attribute too.
    """
    if getattr(fn, "__code__", None) not in _WRAPPER_CODES:
        return None
    layer = vars(fn).get("__profiled__")
    return layer if isinstance(layer, ProfiledLayer) else None


def unprofiled(fn: Any) -> tuple[Callable[..., Any], ProfiledLayer] | None:
    """The function ``fn`` measures, and its layer, if ``fn`` is a ``@profiled`` wrapper; else None.

    For a task that is measured already, whatever runs it (``@parallel``,
    ``mp.Executor``): a profiled method read on its instance (or a class
    method on its class) gives its function bound to that again.
    """
    layer = profiled_layer(fn)
    if layer is None:
        return None
    if type(fn) is MethodType:
        return MethodType(layer.function, fn.__self__), layer
    return layer.function, layer


def task_of_profiled(fn: Any) -> tuple[Callable[..., Any], Callable[..., Any], ProfiledLayer] | None:
    """For a task of ``fn``, a partial of a ``@profiled`` function or a program's own wrapper of one: what it is made of, what it runs, the layer.

    Each call is the task's, measured by it already; the profiled layer that
    it ran counted it again (for a partial, under another name: its task's
    ``partial(<name>)``). A partial of the wrapper is made again of what the
    wrapper measures. A wrapper of a program's own (``functools.wraps``),
    whose code must run, runs as it is, through :class:`MeasuredByItsTask`,
    which has the profiled layer under it leave its next call uncounted.
    None where ``fn`` holds no profiled wrapper.
    """
    if type(fn) is functools.partial:
        inner: Any = fn.func
        args, keywords = fn.args, fn.keywords
        while type(inner) is functools.partial:  # as called: the inner arguments first, the outer keywords win
            inner, args, keywords = inner.func, (*inner.args, *args), {**inner.keywords, **keywords}
        measured = unprofiled(inner)
        if measured is not None:
            plain = functools.partial(measured[0], *args, **keywords)
            return plain, plain, measured[1]
    wrapper = _profiled_under(fn)
    if wrapper is None:
        return None
    layer = profiled_layer(wrapper)
    assert layer is not None
    return fn, MeasuredByItsTask(fn, wrapper), layer


def _profiled_under(fn: Any) -> Callable[..., Any] | None:
    """The ``@profiled`` wrapper that ``fn`` calls through its ``__wrapped__`` (or a partial's ``func``) chain; else None."""
    seen: set[int] = set()
    while fn is not None and id(fn) not in seen and len(seen) < 64:
        seen.add(id(fn))
        if profiled_layer(fn) is not None:
            return cast("Callable[..., Any]", fn)
        fn = fn.func if type(fn) is functools.partial else getattr(fn, "__wrapped__", None)
    return None


#: The @profiled wrapper whose next call is a task's own, measured by the task: in a list of one,
#: shared by every copy of the task's context (asyncio.gather's Tasks, asyncio.to_thread, a task
#: it submits), emptied by the call that takes it, and by the task's end.
_task_call: ContextVar[list[Callable[..., Any]] | None] = ContextVar("makeparallel_task_call", default=None)
#: Whether a MeasuredByItsTask was made in this process: until then, a profiled call reads no context variable.
_tasks_hold_profiled = False


class MeasuredByItsTask:
    """A task's function that calls a ``@profiled`` one from code of its own: that call is left to the task to count.

    A program's own ``functools.wraps`` wrapper of a profiled function runs as
    it is; the first call it makes of the profiled wrapper under it, in this
    context, is not counted there: the task counts it, from its start to its
    end. Later calls (the function calling itself, or called again) count as
    ever. Pickled as the wrapper it runs, and made again where it is unpickled.
    """

    def __init__(self, fn: Callable[..., Any], profiled: Callable[..., Any]) -> None:
        global _tasks_hold_profiled
        functools.update_wrapper(self, fn)  # its names, for pickling by name; __wrapped__: fn
        self._fn = fn
        self._profiled = profiled
        from ._decorators import _returns_coroutines, wraps_async

        self._is_async = _returns_coroutines(fn) or wraps_async(fn)
        _tasks_hold_profiled = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._is_async:  # its call makes the coroutine: the profiled call comes as it is awaited
            return self._awaited(args, kwargs)
        untaken = [self._profiled]
        token = _task_call.set(untaken)
        try:
            return self._fn(*args, **kwargs)
        finally:
            untaken.clear()  # a copy of the context kept past the task's end holds nothing more
            _task_call.reset(token)

    async def _awaited(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        untaken = [self._profiled]
        token = _task_call.set(untaken)
        try:
            return await self._fn(*args, **kwargs)
        finally:
            untaken.clear()
            _task_call.reset(token)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_measured_by_its_task, (self._fn,))

    def __repr__(self) -> str:
        return f"<task of {self._fn!r}>"


def _taken_by_its_task(wrapper: Callable[..., Any]) -> bool:
    """Whether this call of ``wrapper``, a ``@profiled`` one, is the one a task makes (:class:`MeasuredByItsTask`), which it counts.

    A function, not the context variable read in the wrapper: cloudpickle
    sends a wrapper by value (a class method's) with the globals it names, and
    a ``ContextVar`` cannot be pickled. Only the first call is the task's,
    in whichever copy of its context it comes: the one list they share is
    emptied by it (cleared in its own context alone, the wrapper stayed named
    in every copy, and each call of an ``asyncio.gather`` went uncounted).
    ``list.pop`` is atomic: of two threads that find it there, one takes it.
    """
    untaken = _task_call.get()
    if not untaken:
        return False
    try:
        if untaken[-1] is not wrapper:
            return False
        untaken.pop()
    except IndexError:  # another copy of the context took it meanwhile
        return False
    return True


def _measured_by_its_task(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, a program's wrapper of a ``@profiled`` function, as a task runs it here (unpickled in a worker)."""
    wrapper = _profiled_under(fn)
    return fn if wrapper is None else MeasuredByItsTask(fn, wrapper)


def _profiled_function(function: Callable[..., Any], counts: Counts) -> Callable[..., Any]:
    """``function``, a plain one, measured from the start to the end of each call."""
    from ._decorators import _wraps

    @_wraps(function)
    def measured(*args: Any, **kwargs: Any) -> Any:
        if _tasks_hold_profiled and _taken_by_its_task(measured):  # the task counts this call
            return function(*args, **kwargs)
        with counts.lock:
            counts.total += 1
        started = time.perf_counter()
        state = FAILED
        try:
            result = function(*args, **kwargs)
            state = SUCCEEDED
            return result
        finally:
            with counts.lock:
                counts.count_end(state, time.perf_counter() - started, 0.0)

    _made(measured)
    return measured


def _profiled_coroutine_function(function: Callable[..., Any], counts: Counts) -> Callable[..., Any]:
    """``function``, an ``async def`` one, measured from the start to the end of each call's coroutine.

    A plain wrapper counted the coroutine's creation, in microseconds, as a
    completed call whatever the coroutine then did; and ``inspect.iscoroutinefunction``
    said it was none. A call cancelled (``Task.cancel()``, ``asyncio.wait_for``'s
    timeout) or closed before its end counts as cancelled, as a cancelled
    task does, and its time is none of the run-to-the-end durations.
    """
    import asyncio  # (an async def function is one that asyncio, or a loop like it, runs)

    from ._decorators import _wraps

    stopped = (asyncio.CancelledError, GeneratorExit)

    @_wraps(function)
    async def measured(*args: Any, **kwargs: Any) -> Any:
        if _tasks_hold_profiled and _taken_by_its_task(measured):  # the task counts this call
            return await function(*args, **kwargs)
        with counts.lock:
            counts.total += 1
        started = time.perf_counter()
        state = FAILED
        try:
            result = await function(*args, **kwargs)
            state = SUCCEEDED
            return result
        except stopped:
            state = CANCELLED
            raise
        finally:
            with counts.lock:
                counts.count_end(state, None if state == CANCELLED else time.perf_counter() - started, 0.0)

    _made(measured)
    return measured


# The code of the two wrappers @profiled makes: each wrapper is a closure of one of them.
_WRAPPER_CODES: set[CodeType] = set()


def _made(wrapper: Callable[..., Any]) -> None:
    """Know ``wrapper``'s code as a @profiled wrapper's, here and in the process backend's pickler."""
    code = wrapper.__code__
    if code not in _WRAPPER_CODES:
        _WRAPPER_CODES.add(code)
        for_worker_functions[id(code)] = _reduce_profiled


def _reduce_profiled(wrapper: Callable[..., Any]) -> tuple[Any, ...]:
    """``wrapper`` as a worker gets it where no name finds it: its function, profiled again there.

    Sent by value, as cloudpickle sends a function of the main script, or a
    class method's (whose name gives a bound method, not the function), the
    wrapper took its metrics record, and the record's lock, along: ``cannot
    pickle '_thread.lock' object``. Its function goes as it goes alone (by its
    name where a worker finds it so), and the worker measures it in a record of its own.
    """
    layer = profiled_layer(wrapper)
    if layer is None:  # its attribute taken off: nothing to make it again from
        raise TypeError(f"{wrapper!r} is a @profiled wrapper without what it measures, and cannot be pickled")
    return (_profiled_again, (layer.function, layer.name))


def _profiled_again(function: Callable[..., Any], name: str | None) -> Callable[..., Any]:
    """``function`` profiled in this process, as :func:`_reduce_profiled` sent it."""
    return profiled(function) if name is None else profiled(name=name)(function)


def _start_afresh_after_fork() -> None:
    """In a forked child: every count back to zero, and every shard with a new lock.

    The child counts its own tasks: with the parent's, each worker of a
    forking server exported its parent's counts as its own (summed, they were
    counted once per worker), and the parent's tasks in flight as running for
    good. A shard's lock is often a pool's, taken by the parent's workers as
    they count: ``get_metrics()`` waited for it in the child for good. The
    child's pools have new locks, and count in new shards.
    """
    global _short_names_lock, _reset_lock, _resets
    _short_names_lock = threading.Lock()
    _reset_lock = threading.Lock()
    for record in list(_records.values()):
        for shard in list(record._shards.values()):
            shard.lock = threading.Lock()
            shard.zero()
    _resets += 1  # exporters of deltas start over


_at_fork_in_child(_start_afresh_after_fork)
