"""Admission control: at most N tasks in flight, the next submission waits.

A limit counts tasks from submission until their handle ends. A submission over
the limit blocks the submitting thread (backpressure: a producer can never run
ahead of the pool), and is never dropped.

Nested parallelism: a task that submits more tasks is never made to wait. If it
were, tasks holding every slot while waiting for their children would deadlock.
Such submissions are admitted over the limit and counted like any other.
"""

from __future__ import annotations

import os
import threading
import weakref

from ._task_context import current_task
from .errors import ShutdownError

__all__ = ["Limiter", "all_limiters"]

_limiters: weakref.WeakSet[Limiter] = weakref.WeakSet()


def all_limiters() -> list[Limiter]:
    """Every limiter alive, for shutdown to wake their waiters."""
    return list(_limiters)


class Limiter:
    """Counts tasks in flight against an optional limit."""

    __slots__ = ("__weakref__", "_closed", "_condition", "_exempt_tasks", "_in_flight", "limit")

    def __init__(self, limit: int | None, exempt_tasks: bool = True) -> None:
        """``exempt_tasks``: admit submissions from inside tasks without waiting."""
        self.limit = limit
        self._exempt_tasks = exempt_tasks  # read-only outside set_limit(); a plain slot for the hot path
        self._in_flight = 0
        self._closed = False
        self._condition = threading.Condition(threading.Lock())
        _limiters.add(self)

    @property
    def in_flight(self) -> int:
        """Tasks admitted through this limiter that have not ended."""
        return self._in_flight

    def set_limit(self, limit: int | None) -> None:
        """Change the limit; waiting submissions re-check it at once."""
        with self._condition:
            self.limit = limit
            self._condition.notify_all()

    def acquire(self) -> None:
        """Admit one task, waiting while the limit is reached (unless exempt).

        Raises:
            ShutdownError: the library was shut down while this call waited.
        """
        with self._condition:
            if not (self._exempt_tasks and current_task() is not None):
                while self.limit is not None and self._in_flight >= self.limit:
                    if self._closed:
                        raise ShutdownError(
                            "makeparallel was shut down while this submission waited for a "
                            "free slot; call makeparallel.reset_shutdown() to accept tasks again"
                        )
                    self._condition.wait()
            self._in_flight += 1

    def release(self) -> None:
        """One admitted task ended."""
        with self._condition:
            self._in_flight -= 1
            self._condition.notify()

    def close(self) -> None:
        """Make every waiting and future blocked submission raise ``ShutdownError``."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reopen(self) -> None:
        with self._condition:
            self._closed = False

    def _reset_after_fork(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._in_flight = 0  # the parent's tasks do not exist in the child


def _reset_all_after_fork() -> None:
    for limiter in _limiters:
        limiter._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_after_fork)
