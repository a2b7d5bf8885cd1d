"""The ``"interpreter"`` backend: sub-interpreters, each with its own GIL (Python 3.14+).

It is the executor adapter around a ``concurrent.futures.InterpreterPoolExecutor``
that the library owns: pure-Python code runs in parallel on a standard (GIL)
build without the cost of processes. What crosses is what crosses any executor
that runs elsewhere: functions (pickled by the library), arguments and results
(pickled by the pool), errors as themselves; progress and ``check_cancelled``
are no-ops inside the task, and a task's timeout abandons it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from .._cpus import usable_cpu_count
from ._adapter import ExecutorBackend

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["InterpreterBackend", "check_available"]

REQUIRED = (3, 14)


def check_available() -> None:
    """Raise ``RuntimeError`` naming the version needed, where Python has no interpreter pool."""
    if sys.version_info < REQUIRED:
        raise RuntimeError(
            "backend='interpreter' needs Python 3.14 or newer "
            "(concurrent.futures.InterpreterPoolExecutor); this is Python "
            f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}. "
            "Use backend='process' for pure-Python CPU work on this Python"
        )


class InterpreterBackend(ExecutorBackend):
    """An ``InterpreterPoolExecutor`` of the usable CPUs' size, started on first use."""

    name = "interpreter"

    def __init__(self) -> None:
        check_available()
        super().__init__(None, in_process=False)

    def submit(self, handle: AsyncHandle[Any]) -> None:
        with self._lock:
            if self._executor is None and not self._closed:
                from concurrent.futures import InterpreterPoolExecutor  # type: ignore[attr-defined, unused-ignore]

                self._executor = InterpreterPoolExecutor(max_workers=usable_cpu_count())
        super().submit(handle)

    def worker_count(self) -> int:
        return usable_cpu_count()

    def terminate(self) -> None:
        """Shut the pool down (shutdown or exit); a later task starts a new one."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
