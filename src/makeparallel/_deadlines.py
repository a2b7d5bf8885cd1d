"""Task timeouts: one daemon thread that ends handles whose deadline passed.

Only tasks that have a timeout come here, once per start. The thread sleeps
until the earliest deadline (or until an earlier one arrives) and then calls
``handle._expire()``, which ends the handle only if the task is still running
that attempt. Retries use the same heap: their entry's ``_expire()`` queues the
next attempt. It is a daemon thread: it never holds up interpreter exit.

A shutdown ends the thread once nothing needs it (:func:`end`): at once where
no task waits for a deadline, else as the last one that does ends (a task left
running by a shutdown whose wait ran out keeps its timeout). The next task
with a timeout starts it again.

Where no thread can start (at the user's process limit, which counts threads),
the deadline waits on the heap, and the next one scheduled tries again, with a
warning once: the error reached the caller, the process pool's loop thread,
which died of it. Until then no timeout is enforced. A deadline whose
``_expire()`` raises (a fault of the library itself) is logged, and the
thread goes on with the others.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

from . import _at_fork_in_child
from ._interruptible import bounded, join

__all__ = ["Due", "end", "held", "keep", "schedule"]


class Due(Protocol):
    """What the heap holds: a handle (its timeout) or a retry entry."""

    def _expire(self) -> None: ...

    def _spent(self) -> bool:
        """Whether ``_expire()`` would do nothing now, nor ever: what :func:`end` lets go of."""
        ...


_condition = threading.Condition(threading.Lock())
# A task's timeout is held weakly: a task that ended before its deadline keeps
# nothing alive here. A retry is held: its task is not done until it runs.
_heap: list[tuple[float, int, Callable[[], Due | None]]] = []
_order = itertools.count()  # breaks ties between equal deadlines without comparing handles
# The entries held strongly (retries', stops'), by their order number, while on the heap: what
# held() lists. Walking the heap for them walked every timeout too, left there until its
# deadline long after its task ended: 11 ms a metrics read with 200,000 tasks of an hour's
# timeout run, under the lock that each such task's start takes.
_held: dict[int, Due] = {}
_thread: threading.Thread | None = None
_warned = False  # that no thread could start, since one last did
# A shutdown asked the thread to end once nothing needs it (end); cleared by a reset (keep) and
# for a new thread, not by schedule(): an entry scheduled after the shutdown for what it left
# running (a map's stop of its tasks) would otherwise keep the thread once it was spent.
_ending = False
# Seconds between looks, while ending, for entries spent before their deadline (their task ended): none
# tells the thread, which would otherwise stay until the last deadline, an hour's timeout's maybe.
_LOOK_AGAIN_WITHIN = 1.0
_log = logging.getLogger("makeparallel")


def schedule(handle: Due, deadline: float, *, weakly: bool = False) -> None:
    """Call ``handle._expire()`` at ``deadline`` (a ``time.perf_counter`` value).

    ``weakly``: forget it if nothing else holds ``handle`` by then.
    """
    global _thread, _warned, _ending
    warn = False
    with _condition:
        ref: Callable[[], Due | None] = weakref.ref(handle) if weakly else (lambda: handle)
        entry = (deadline, next(_order), ref)
        if not weakly:
            _held[entry[1]] = handle
        heapq.heappush(_heap, entry)
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_watch, name="makeparallel-deadlines", daemon=True)
            _ending = False  # a new thread, for a new use
            try:
                _thread.start()
                _warned = False
            except RuntimeError:  # can't start new thread
                _thread = None
                warn, _warned = not _warned, True
        elif _heap[0] is entry:
            _condition.notify()
    if warn:  # outside the lock; and a handler that raises must not fail the caller, a pool's loop thread
        try:
            _log.warning(
                "makeparallel: no thread could start to enforce task timeouts (the process limit counts "
                "threads); none is enforced until one can, at the next task with a timeout or retry"
            )
        except Exception:
            pass


def held() -> list[Due]:
    """The entries scheduled not ``weakly`` that wait on the heap now (a snapshot): retries' and stops'.

    Not the timeouts': there is one for each start of a task with a timeout,
    left on the heap until its deadline. Their number does not slow this.
    """
    with _condition:
        return list(_held.values())


def end(timeout: float) -> None:
    """End the thread once nothing needs it, and join it if that is now, for at most ``timeout`` seconds (a shutdown's).

    The entries spent (their task ended, or dropped) are let go now. Where one
    is left (a task still running, its timeout to enforce), the thread stays
    and ends once the last one is spent or expired (an entry scheduled
    meanwhile, for what the shutdown left running, is one more); a reset (:func:`keep`) keeps it, and the
    next :func:`schedule` after it ended starts a new one. Not joined from the thread itself (a
    shutdown from its ``_expire()``). A Ctrl-C ends the join.
    """
    global _ending
    with _condition:
        thread = _thread
        if thread is None:
            return
        _ending = True
        _drop_spent_locked()
        _condition.notify()
        if _heap:
            return
    if thread is not threading.current_thread():
        join(thread, timeout)


def keep() -> None:
    """A reset (``reset_shutdown()``): the thread stays, where a shutdown had it end once nothing needed it."""
    global _ending
    with _condition:
        _ending = False


def _drop_spent_locked() -> None:
    """Let go of the entries whose ``_expire()`` would do nothing now, nor ever."""
    kept = []
    for entry in _heap:
        due = entry[2]()
        if due is None or due._spent():
            _held.pop(entry[1], None)
        else:
            kept.append(entry)
    if len(kept) != len(_heap):
        _heap[:] = kept
        heapq.heapify(_heap)


def _watch() -> None:
    global _thread
    while True:
        with _condition:
            while True:
                if _ending:
                    _drop_spent_locked()
                    if not _heap:  # a shutdown asked, and nothing needs the thread: it ends
                        if _thread is threading.current_thread():
                            _thread = None  # (under the lock: the next schedule() starts a new one)
                        return
                if _heap:
                    delay = _heap[0][0] - time.perf_counter()
                    if delay <= 0:
                        _, order, ref = heapq.heappop(_heap)
                        handle = ref()
                        _held.pop(order, None)
                        # Its closure holds a retry's task: kept here, it lived on, result and all,
                        # until the next deadline came, however long after the task ended.
                        del ref
                        break
                    if _ending:
                        delay = min(delay, _LOOK_AGAIN_WITHIN)
                    # A timeout of centuries overflows a lock's wait (OverflowError) and killed
                    # the thread: wait at most what the platform takes, then look again.
                    _condition.wait(bounded(delay))
                else:
                    _condition.wait()
        if handle is not None:  # else it ended, and was dropped, before its deadline
            try:
                handle._expire()
            except BaseException:  # a fault of the library's own: the deadlines after it must still fire
                _report_fault(handle)
            handle = None


def _report_fault(due: Due) -> None:
    """Log a deadline whose ``_expire()`` raised; the thread goes on with the next one.

    Left to kill the thread, it stopped every other task's timeout until the
    next one was scheduled. The task it was for may not have ended.
    """
    try:
        _log.critical(
            "makeparallel: ending %r at its deadline failed; it may never end. Other timeouts go on",
            due,
            exc_info=True,
        )
    except BaseException:  # logging's last resort raises where sys.stderr was closed
        pass


def busy() -> bool:
    """Whether a thread holds the heap's lock now (``shutdown()`` in a signal handler asks: ``_runtime``)."""
    return bool(_condition._lock.locked())  # type: ignore[attr-defined]


def _reset_after_fork() -> None:
    global _condition, _thread, _warned, _ending
    _ending = False
    _condition = threading.Condition(threading.Lock())
    _heap.clear()
    _held.clear()
    _thread = None
    _warned = False


_at_fork_in_child(_reset_after_fork)  # a forked child has no deadline thread
