"""Taking a busy lock without sleeping on it: yield the GIL and try again.

Why: a ``threading.Lock`` that a thread blocks on is handed, on release, to that
sleeping thread, which must then wait for the GIL before it can run. Every other
thread that wants the lock meanwhile blocks too, and the pool degrades into a
lock convoy with a context switch per task (measured: one switch per four no-op
tasks, half the throughput). Critical sections here are a few dozen bytecodes
that never block, so on the hot paths a waiter yields the GIL with ``sleep(0)``
and tries again; it lets the holder finish and never joins a convoy.

The locks stay plain ``threading.Lock`` objects, so that everywhere else
``with lock:`` keeps its C-level enter and exit, which a Ctrl-C cannot split.
Hot paths inline the fast case::

    if not lock.acquire(False):
        acquire_yielding(lock)
    try: ...
    finally: lock.release()
"""

from __future__ import annotations

import threading
import time

__all__ = ["acquire_yielding"]


def acquire_yielding(lock: threading.Lock) -> None:
    """Take ``lock``, yielding the GIL (and the CPU) until it is free."""
    try_acquire = lock.acquire
    sleep = time.sleep
    while not try_acquire(False):
        sleep(0)
