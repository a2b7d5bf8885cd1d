"""Per-function metrics: counts and execution times of every decorated function.

Each function name has one :class:`FunctionMetrics` record, counted when a task
is submitted and when it ends, under the lock the backend already holds then. Readers get a frozen
:class:`TaskMetrics` snapshot that reads both as attributes (``m.total_tasks``) and
as a mapping (``m["total_tasks"]``), because code in the wild uses both.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar, overload

from ._states import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT
from ._yielding_lock import YieldingLock

__all__ = [
    "FunctionMetrics",
    "TaskMetrics",
    "get_all_metrics",
    "get_metrics",
    "metrics_for",
    "profiled",
    "reset_metrics",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class TaskMetrics(Mapping[str, Any]):
    """A snapshot of one function's metrics, read as attributes or as a mapping."""

    name: str
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    cancelled_tasks: int
    timed_out_tasks: int
    total_execution_time_ms: float
    average_execution_time_ms: float

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELD_NAMES:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELD_NAMES)

    def __len__(self) -> int:
        return len(_FIELD_NAMES)

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict."""
        return asdict(self)


_FIELD_NAMES = tuple(field.name for field in fields(TaskMetrics))


class _Counts:
    """One shard of a record, only ever changed under the lock it names."""

    __slots__ = ("cancelled", "completed", "failed", "lock", "seconds", "timed_out", "total")

    def __init__(self, lock: YieldingLock) -> None:
        self.lock = lock
        self.zero()

    def zero(self) -> None:
        self.total = self.completed = self.failed = self.cancelled = self.timed_out = 0
        self.seconds = 0.0

    def ended(self, state: int, seconds: float | None) -> None:
        """Count a task that ended in ``state``, having run ``seconds`` if it ran to its end."""
        if state == SUCCEEDED:
            self.completed += 1
        elif state == FAILED:
            self.failed += 1
        elif state == CANCELLED:
            self.cancelled += 1
        elif state == TIMED_OUT:
            self.timed_out += 1
        if seconds is not None:
            self.seconds += seconds


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
        self._lock = YieldingLock()  # guards the shard of callers holding no lock
        self._shards: dict[YieldingLock, _Counts] = {}

    def counts(self, lock: YieldingLock) -> _Counts:
        """The shard to change while holding ``lock``."""
        shard = self._shards.get(lock)
        if shard is None:
            shard = self._shards.setdefault(lock, _Counts(lock))  # atomic: one wins
        return shard

    def counted(self) -> _Counts:
        """The shard guarded by the record's own lock, for callers holding none."""
        return self.counts(self._lock)

    def snapshot(self) -> TaskMetrics:
        total = completed = failed = cancelled = timed_out = 0
        seconds = 0.0
        for shard in list(self._shards.values()):
            with shard.lock:
                total += shard.total
                completed += shard.completed
                failed += shard.failed
                cancelled += shard.cancelled
                timed_out += shard.timed_out
                seconds += shard.seconds
        ran = completed + failed
        total_ms = seconds * 1000.0
        return TaskMetrics(
            name=self.name,
            total_tasks=total,
            completed_tasks=completed,
            failed_tasks=failed,
            cancelled_tasks=cancelled,
            timed_out_tasks=timed_out,
            total_execution_time_ms=total_ms,
            average_execution_time_ms=total_ms / ran if ran else 0.0,
        )

    def reset(self) -> None:
        for shard in list(self._shards.values()):
            with shard.lock:
                shard.zero()


_records: dict[str, FunctionMetrics] = {}


def metrics_for(name: str) -> FunctionMetrics:
    """The record for ``name``, created on first use."""
    record = _records.get(name)
    if record is None:
        record = _records.setdefault(name, FunctionMetrics(name))  # atomic: one wins
    return record


def get_metrics(name: str) -> TaskMetrics | None:
    """A snapshot of the metrics of the function named ``name``, or ``None`` if unknown.

    The name is the ``name=`` given to ``@parallel`` or ``@profiled``, else the
    function's ``__qualname__`` (its plain name for a module-level function).
    """
    record = _records.get(name)
    return None if record is None else record.snapshot()


def get_all_metrics() -> dict[str, TaskMetrics]:
    """Snapshots of every function's metrics, by name."""
    return {name: record.snapshot() for name, record in list(_records.items())}


def reset_metrics() -> None:
    """Set every count and time back to zero.

    Tasks in flight at the time are counted when they end, so right after a
    reset the ended counts may briefly exceed ``total_tasks``.
    """
    for record in list(_records.values()):
        record.reset()


@overload
def profiled(fn: F, /) -> F: ...
@overload
def profiled(*, name: str | None = None) -> Callable[[F], F]: ...
def profiled(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Record metrics for a plain function called in the ordinary way.

    ``@parallel`` functions are always measured; ``@profiled`` gives the same
    record (``get_metrics(name)``) to a function that runs synchronously.

    Args:
        fn: the function to measure.
        name: the name to record under; defaults to the function's ``__qualname__``.
    """

    def decorate(function: F) -> F:
        if not callable(function):
            raise TypeError(f"@profiled needs a callable, got {function!r}")
        record = metrics_for(name or function.__qualname__)
        counts = record.counted()

        @functools.wraps(function)
        def measured(*args: Any, **kwargs: Any) -> Any:
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
                    counts.ended(state, time.perf_counter() - started)

        return measured  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)
