"""Waits on the main thread, in slices, so that Ctrl-C always gets through.

CPython runs signal handlers only between bytecodes of the main thread, and a
wait in C (a lock's ``acquire``, a queue's ``get``) ends early only if the
signal lands while it sleeps. A SIGINT that arrives after the main thread last
checked for signals and before it starts to sleep (the GIL hand-off in between
leaves a window, wide when many threads run) is noted, but interrupts nothing:
the wait sleeps on and the Ctrl-C is lost until a second one. Measured: one
interrupted ``gather`` in ten hung so, with tasks waiting inside tasks.

So on the main thread a wait sleeps in slices of ``SLICE`` seconds, and between
two slices the interpreter runs any handler that is due. Other threads never
run signal handlers: they wait in one piece, at most ``threading.TIMEOUT_MAX``
(about 292 years): a lock refuses a longer wait with ``OverflowError``, which
made a wait that the main thread accepted fail inside a task (:func:`bounded`).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

__all__ = ["SLICE", "acquire", "bounded", "get", "wait"]

#: Seconds the main thread sleeps at most before it looks for a pending signal.
SLICE = 0.1


def bounded(timeout: float) -> float:
    """``timeout``, capped at the longest wait a lock accepts; a longer one never ends in practice."""
    return min(timeout, threading.TIMEOUT_MAX)


def _on_main_thread() -> bool:
    return threading.get_ident() == threading.main_thread().ident


def acquire(lock: threading.Lock, timeout: float | None) -> bool:
    """``lock.acquire(True, timeout)`` (``None``: no end); return whether it was taken."""
    if not _on_main_thread():
        return lock.acquire(True, -1 if timeout is None else bounded(timeout))
    if timeout is None:
        while not lock.acquire(True, SLICE):
            pass
        return True
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if lock.acquire(True, min(SLICE, max(0.0, remaining))):
            return True
        if remaining <= SLICE:
            return False


def get(items: queue.SimpleQueue[Any], timeout: float | None) -> Any:
    """``items.get(timeout=timeout)`` (``None``: no end).

    Raises:
        queue.Empty: ``timeout`` seconds passed first.
    """
    if not _on_main_thread():
        return items.get(timeout=None if timeout is None else bounded(timeout))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = SLICE if deadline is None else deadline - time.monotonic()
        try:
            return items.get(timeout=min(SLICE, max(0.0, remaining)))
        except queue.Empty:
            if remaining <= SLICE and deadline is not None:
                raise


def wait(condition: threading.Condition, timeout: float | None) -> None:
    """``condition.wait(timeout)`` (``None``: no end), its lock held; on the main thread one slice at most.

    It may return before anything changed: the caller checks what it waits
    for, and how long is left, and waits again.
    """
    if _on_main_thread():
        condition.wait(SLICE if timeout is None else min(SLICE, max(0.0, timeout)))
    else:
        condition.wait(None if timeout is None else bounded(timeout))
