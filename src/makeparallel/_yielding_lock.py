"""A mutex that never puts a thread to sleep on it: a waiter yields instead.

Why: a ``threading.Lock`` that a thread blocks on is handed, on release, to that
sleeping thread, which must then wait for the GIL before it can run. Every other
thread that wants the lock meanwhile blocks too, and the pool degrades into a
lock convoy with a context switch per task (measured: one switch per four no-op
tasks, half the throughput). Critical sections here are a few dozen bytecodes
that never block, so a waiter that yields the GIL with ``sleep(0)`` and tries
again lets the holder finish and never joins a convoy.

Hot paths inline the fast case::

    if not lock.try_acquire(False):
        lock.acquire()
    try: ...
    finally: lock.release()

Everything else uses ``with lock:``.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

__all__ = ["YieldingLock"]


class YieldingLock:
    """A non-reentrant mutex for short critical sections that never block."""

    __slots__ = ("release", "try_acquire")

    def __init__(self) -> None:
        lock = threading.Lock()
        self.try_acquire = lock.acquire
        self.release = lock.release

    def acquire(self) -> None:
        """Take the lock, yielding the GIL (and the CPU) until it is free."""
        try_acquire = self.try_acquire
        sleep = time.sleep
        while not try_acquire(False):
            sleep(0)

    def __enter__(self) -> None:
        if not self.try_acquire(False):
            self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
