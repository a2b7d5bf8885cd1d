"""The metrics record users read: :class:`TaskMetrics`, one function's figures at one moment.

Apart from the counting (``_metrics``), so that ``dataclasses`` loads at the first
read of metrics, not with the package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["TaskMetrics"]


@dataclass(frozen=True)
class TaskMetrics(Mapping[str, Any]):
    """A snapshot of one function's metrics, read as attributes or as a mapping.

    ``retried_tasks`` counts tasks run more than once by their retry policy,
    ``retries`` the attempts after the first. A retried task's execution time is
    its last attempt's, and so is its queue wait: from the moment that retry was
    due to its start (the waits to retry and the earlier attempts are no queueing).
    A task its pool failed before it started (its worker process could not
    start, a shutdown stopped the workers, or an executor given as
    ``backend=`` refused it) counts as failed, not cancelled. So does a call
    refused as it was submitted, after :func:`~makeparallel.shutdown` or
    because a process task's call cannot be pickled (the call raised
    ``ShutdownError`` or ``TaskSerializationError``): counted in
    ``total_tasks`` and ``failed_tasks``, as the task events tell it
    (``"submitted"``, then ``"finished"`` as failed). ``queued_tasks`` counts
    the tasks not started, a task waiting to retry too (no worker holds it);
    ``running_tasks`` those a worker runs.

    Times are in milliseconds. Execution times count tasks that ran to their end
    (succeeded or failed); queue waits count every task that started. Percentiles
    come from a fixed-size histogram: they fall in the same bucket as the exact
    value. Between 1 us and about 3 minutes, buckets are a factor of sqrt(2)
    wide (typically within 20%, at worst 41% above or 29% below); under 1 us a
    percentile is only within 1 us of the exact value (the first bucket spans
    (0, 1 us]), and past about 3 minutes it lies between the last bound and the
    maximum.
    """

    name: str
    total_tasks: int
    completed_tasks: int
    failed_tasks: int
    cancelled_tasks: int
    timed_out_tasks: int
    running_tasks: int
    queued_tasks: int
    total_execution_time_ms: float
    average_execution_time_ms: float
    min_execution_time_ms: float
    max_execution_time_ms: float
    p50_execution_time_ms: float
    p95_execution_time_ms: float
    p99_execution_time_ms: float
    average_queue_wait_ms: float
    p50_queue_wait_ms: float
    p95_queue_wait_ms: float
    p99_queue_wait_ms: float
    max_queue_wait_ms: float
    retried_tasks: int = 0
    retries: int = 0

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
