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
A wait that must look at something between slices (``between``: whether a
coroutine's loop closed, which nothing tells of) takes them on every thread.
Every sliced wait is :func:`in_slices`.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["SLICE", "acquire", "bounded", "get", "in_slices", "join", "wait", "wait_until", "wake"]

#: Seconds the main thread sleeps at most before it looks for a pending signal.
SLICE = 0.1


def bounded(timeout: float) -> float:
    """``timeout``, capped at the longest wait a lock accepts; a longer one never ends in practice."""
    return min(timeout, threading.TIMEOUT_MAX)


def _on_main_thread() -> bool:
    return threading.get_ident() == threading.main_thread().ident


def acquire(lock: threading.Lock, timeout: float | None, between: Callable[[], object] | None = None) -> bool:
    """``lock.acquire(True, timeout)`` (``None``: no end); return whether it was taken.

    ``between``, if given, is called between two slices, which are then taken
    on every thread: something it looks for may have to end the wait, which
    nothing else would tell of (it releases ``lock`` then).
    """
    if between is None and not _on_main_thread():
        return lock.acquire(True, -1 if timeout is None else bounded(timeout))
    return in_slices(functools.partial(lock.acquire, True), timeout, between)


def get(items: queue.SimpleQueue[Any], timeout: float | None, between: Callable[[], object] | None = None) -> Any:
    """``items.get(timeout=timeout)`` (``None``: no end); ``between`` as for :func:`acquire`.

    Raises:
        queue.Empty: ``timeout`` seconds passed first.
    """
    if between is None and not _on_main_thread():
        return items.get(timeout=None if timeout is None else bounded(timeout))
    got: list[Any] = []

    def get_one(seconds: float) -> bool:
        try:
            got.append(items.get(timeout=seconds))
        except queue.Empty:
            return False
        return True

    if not in_slices(get_one, timeout, between):
        raise queue.Empty
    return got[0]


def join(thread: threading.Thread, timeout: float | None) -> bool:
    """``thread.join(timeout)`` (``None``: no end), in slices; return whether ``thread`` ended."""

    def joined(seconds: float) -> bool:
        thread.join(seconds)
        return not thread.is_alive()

    return in_slices(joined, timeout)


def in_slices(attempt: Callable[[float], bool], timeout: float | None, between: Callable[[], object] | None = None) -> bool:
    """``attempt(seconds)``, a wait of up to that long, in slices of ``SLICE``, until it succeeds or ``timeout`` passes; whether it did.

    Args:
        attempt: waits once for up to the seconds it is given; returns whether
            what it waits for came.
        timeout: the longest to wait in all, in seconds; ``None``: no end.
        between: called after each slice that did not succeed, but the last.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if attempt(SLICE if remaining is None else min(SLICE, max(0.0, remaining))):
            return True
        if remaining is not None and remaining <= SLICE:
            return False
        if between is not None:
            between()


def wait(condition: threading.Condition, timeout: float | None) -> None:
    """``condition.wait(timeout)`` (``None``: no end), its lock held; on the main thread one slice at most.

    It may return before anything changed: the caller checks what it waits
    for, and how long is left, and waits again.
    """
    if _on_main_thread():
        condition.wait(SLICE if timeout is None else min(SLICE, max(0.0, timeout)))
    else:
        condition.wait(None if timeout is None else bounded(timeout))


def wait_until(
    lock: threading.Lock, holds: Callable[[], bool], waiters: list[threading.Lock], timeout: float | None
) -> bool:
    """Block until ``holds()``, read under ``lock``, or ``timeout`` seconds pass (``None``: no end); return whether it holds.

    The wait sleeps on a lock of its own in ``waiters`` (:func:`acquire`, so
    Ctrl-C gets through); whoever makes ``holds()`` true, under ``lock``,
    calls :func:`wake` on ``waiters``.
    """
    with lock:
        if holds():
            return True
        waiter = threading.Lock()
        waiter.acquire()
        waiters.append(waiter)
    if acquire(waiter, timeout):
        return True
    with lock:
        if waiter in waiters:
            waiters.remove(waiter)
        return holds()


def wake(waiters: list[threading.Lock]) -> None:
    """Wake every :func:`wait_until` on ``waiters``, under the lock its condition is read under."""
    woken = waiters[:]
    waiters.clear()
    for waiter in woken:
        waiter.release()
