"""Taking a busy lock without sleeping on it: yield the GIL and try again.

Why: a ``threading.Lock`` that a thread blocks on is handed, on release, to that
sleeping thread, which must then wait for the GIL before it can run. Every other
thread that wants the lock meanwhile blocks too, and the pool degrades into a
lock convoy with a context switch per task (measured: one switch per four no-op
tasks, half the throughput). Critical sections here are a few dozen bytecodes
that never block, so on the hot paths a waiter yields the GIL with ``sleep(0)``
while the lock is busy; it lets the holder finish and never joins a convoy.

Code the main thread may run must also survive Ctrl-C. CPython runs a pending
signal's handler as a C call returns, so ``if lock.acquire(False): try: ...``
can raise ``KeyboardInterrupt`` with the lock taken and no ``finally`` armed
yet: the lock is never released and every thread of the pool waits on it for
good (the interrupted program hung without a traceback). ``with lock:`` enters
in C, with its exit armed at once, so such code waits for the lock to look free
and then takes it with ``with``::

    if lock.locked():
        wait_while_held(lock)
    with lock: ...

Worker threads never run signal handlers; their loop, the hottest path, keeps
the cheaper form (``with`` costs about 0.3 us more a round, CPython 3.11; and
``acquire(False)`` parses its argument, ``acquire()`` has none: 0.1 us)::

    if lock.locked():
        wait_while_held(lock)
    lock.acquire()
    try: ...
    finally: lock.release()

Taken in the instant between the two, the lock makes ``acquire()`` sleep on it
once: a rare convoy of one, not the steady one above.
"""

from __future__ import annotations

import threading
import time

__all__ = ["wait_while_held"]


def wait_while_held(lock: threading.Lock) -> None:
    """Yield the GIL (and the CPU) until ``lock`` looks free, without taking it."""
    locked = lock.locked
    sleep = time.sleep
    while locked():
        sleep(0)
