"""The ``"thread"`` backend: a lean pool of daemon OS threads in this process.

Data flow::

    submit() --append--> queues[priority] (deques, highest priority first)
                              |                         ^
                  worker: pop + claim            get(): claim a queued task
                              v                   and run it inline
                         handle._run()  -->  handle settles, wakes its waiters

Why it is faster than ``ThreadPoolExecutor``:

* A submit takes the pool lock once and wakes a worker only if one is parked;
  no per-task ``Condition``, no second lock.
* ``handle.get()`` on a task still queued runs it right there. That is also what
  makes nested parallelism safe: a task waiting for the tasks it submitted runs
  them itself when every worker is busy.
* Queued entries are never searched for: a task claimed inline or cancelled is
  marked and skipped when a worker pops it.

Why it never hangs interpreter exit: workers are daemon threads, and the runtime
waits for unfinished tasks at exit only for a bounded time.

Timeouts: a task that is timed out or cancelled while running keeps its thread
until it returns, and so does an attempt timed out and retried. Each such
thread is replaced, up to ``num_threads`` extra threads, so the pool keeps its
capacity; the stuck thread retires when its task (or attempt) finally returns.
Shutdown and interpreter exit wait for that return too, within their timeouts
(:meth:`ThreadBackend.wait_abandoned`), as ``concurrent.futures`` waits for every
running call: a process that ended first cut the task's code short.
"""

from __future__ import annotations

import _thread
import itertools
import logging
import sys
import threading
import time
from collections import deque
from types import EllipsisType
from typing import TYPE_CHECKING, Any

from .. import _at_fork_in_child, _events, _fork_child, _interruptible
from .._cpus import usable_cpu_count
from .._states import ABANDONED, CANCELLED, FAILED, ON_WORKER, RETRY_WAIT, RUNNING, STOPPED, SUCCEEDED
from .._task_context import _local
from .._validation import as_integer, check_count
from .._yielding_lock import wait_while_held
from ._base import COROUTINE_CANCELLED, SHUT_DOWN, _this_thread, every_backend
from ._queueing import QueueingBackend

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["ThreadBackend", "default_thread_count"]

_log = logging.getLogger("makeparallel")
_MIN_STACK_SIZE = 32 * 1024
# Workers lent to tasks that block in a wait, at most: the default of Java's
# ForkJoinPool (DEFAULT_COMMON_MAX_SPARES), whose managedBlock does the same.
MAX_SPARES = 256
# Whether the warning that every place was lent was logged: once per process. A wait
# with a timeout then ends at its deadline though what it waits for never started,
# which looked like slow work ("gave up waiting") with nothing to tell them apart.
_all_lent_told = False
_stack_size_lock = threading.Lock()  # threading.stack_size() is process-wide
# The size in force outside _stack_size_lock (the program's own, 0 for the platform's), as
# its holder found it and sets it back: a process forked meanwhile gets it back too.
_stack_size_outside = 0
_release = _thread.LockType.release  # a worker's park lock, released from C (_wake_parked_locked)
_thread_numbers = itertools.count(1)
# Seconds a num_threads="auto" that ends (a fixed size configured) waits at most for its thread to end.
_SIZER_ENDS_WITHIN = 1.0
# Seconds a _spawn interrupted inside Thread.start() waits to learn whether the thread
# began: one that did says so at once; one that never will costs the Ctrl-C this delay.
_BEGINS_WITHIN = 0.5


def _reset_after_fork() -> None:
    """In a forked child: the pools the parent made have no thread here, and refuse tasks.

    Such a pool (an ``Executor``'s: the library's own are made anew) queued new
    tasks for workers it counted but did not have, and ``result()`` waited for
    good. It now refuses them, as a process pool the parent made does. Its tasks
    are the parent's (``_fork_child``).
    """
    global _stack_size_lock
    if _stack_size_lock.locked():  # forked as a thread of the parent started one, its size in force
        threading.stack_size(_stack_size_outside)  # not the pool's, for every thread started here
    _stack_size_lock = threading.Lock()  # a thread of the parent may have held it
    for pool in every_backend():
        if not isinstance(pool, ThreadBackend):
            continue
        pool._closed = True
        pool._workers = pool._busy = pool._stuck = pool._stopped = pool._stuck_async = pool._blocked = pool._active = 0
        pool._parked = []
        pool._idle_waiters = []
        pool._abandoned_waiters = []
        pool._retired = []
        pool._retire_waiters = []
        pool._threads = set()
        pool._autosizer = None
        pool._sizer_stopped = False
        pool._drop_queues_after_fork()


_at_fork_in_child(_reset_after_fork)


_NO_OUTCOME: tuple[int, Any, float | None] = (0, None, None)  # (state, value, started), as _execute returns


def default_thread_count() -> int:
    """The CPUs this process may use: its affinity, capped by its cgroup's CPU quota."""
    return usable_cpu_count()


def check_stack_size(stack_size: Any) -> int | None:
    """``None`` (the platform default) or an integer (NumPy's too) of at least 32 KiB, returned as a plain int.

    A thread is started with the size, and joined, before it is accepted
    (:func:`_check_a_thread_starts_with`): a size no thread can have is refused
    here, not by the first task.
    """
    if stack_size is None:
        return None
    size = as_integer(stack_size)
    if size is None:
        raise TypeError(f"stack_size must be an int number of bytes or None, got {stack_size!r}")
    if size < _MIN_STACK_SIZE:
        raise ValueError(
            f"stack_size must be at least {_MIN_STACK_SIZE} bytes (32 KiB) or None, got {stack_size}"
        )
    if size > sys.maxsize:  # threading.stack_size() would raise OverflowError at each thread start
        raise ValueError(f"stack_size must be at most {sys.maxsize} bytes (sys.maxsize), got {stack_size}")
    _check_a_thread_starts_with(size)
    return size


def _check_a_thread_starts_with(size: int) -> None:
    """Start one thread with ``size`` bytes of stack and join it; raise ``ValueError`` if the size is why none starts.

    No bound can be read beforehand: ``pthread_attr_setstacksize`` takes any
    size over its minimum, and the stack is mapped only as the thread starts,
    where what memory, the overcommit policy and ``RLIMIT_AS`` allow bounds it
    (1 TiB fails on most machines, and anything over the address space on
    all). Accepted unchecked, the size made every new worker fail with a bare
    ``RuntimeError: can't start new thread``, first surfacing at a task's
    submission. A thread of the default size is started too where that one
    failed: if it fails as well, the system refuses threads of any size (a
    full pids cgroup, ``ulimit -u``), and that ``RuntimeError`` is raised as is.
    """
    try:
        _start_and_join(size)
    except RuntimeError as refusal:
        try:
            _start_and_join(0)
        except RuntimeError:
            raise refusal from None  # no thread starts at all: not the size's doing
        raise ValueError(
            f"stack_size of {size} bytes ({_in_units(size)}) is more than this system gives a thread: "
            f"no thread could start with it ({refusal}; memory, overcommit and RLIMIT_AS bound a "
            "thread's stack). Use a smaller stack_size, such as a few MiB, or None for the platform default"
        ) from refusal


def _start_and_join(size: int) -> None:
    """Start a thread that returns at once with ``size`` bytes of stack (0: the default), and join it."""
    global _stack_size_outside
    thread = threading.Thread(target=int, name="makeparallel-stack-size-check", daemon=True)
    with _stack_size_lock:  # threading.stack_size() is process-wide, as _spawn sets it
        try:
            _stack_size_outside = previous = threading.stack_size(size)
        except ValueError as error:  # the platform's own rule (macOS: a multiple of its page size)
            raise ValueError(
                f"stack_size must be a size this platform accepts for a thread, got {size}: {error}"
            ) from None
        try:
            thread.start()
        finally:
            threading.stack_size(previous)
    thread.join()


def _in_units(size: int) -> str:
    """``size`` bytes in the largest binary unit it has one of: ``"1 TiB"``, ``"1.5 GiB"``."""
    for power, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if size >= 1 << power:
            return f"{size / (1 << power):,.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{size} bytes"


def _tell_all_lent() -> None:
    """Log, once per process, that every place a pool lends to tasks blocked in waits is lent."""
    global _all_lent_told
    if _all_lent_told:
        return
    _all_lent_told = True
    _log.warning(
        "makeparallel: all %d places a thread pool lends to tasks blocked waiting for other tasks are "
        "lent, so no more workers start for such waits: a wait with a timeout inside a task now ends at "
        "its deadline (TaskTimeoutError) even where the task it waits for never started. Nest such waits "
        "less deeply (a recursion of tasks each waiting for its own), or wait without a timeout inside "
        "tasks: such a wait runs a queued task itself",
        MAX_SPARES,
    )


class ThreadBackend(QueueingBackend):
    """A pool of worker threads with priorities, inline claiming and replacement."""

    name = "thread"
    #: A coroutine of this pool's is cancelled as its task is stopped (``_coroutines._cancel_when_stopped``).
    coroutine_stop_hint = COROUTINE_CANCELLED

    def __init__(self, num_threads: int | None = None, stack_size: int | None = None) -> None:
        super().__init__()
        self._num_threads = default_thread_count() if num_threads is None else num_threads
        self._stack_size = stack_size
        self._workers = 0  # live worker threads
        self._busy = 0  # workers running a task
        self._stuck = 0  # workers still running a task that was timed out or cancelled
        self._stopped = 0  # of those, workers whose task was stopped with its map or batch (STOPPED)
        self._abandoned_waiters: list[threading.Lock] = []  # waits for _stuck - _stopped to be 0 (shutdown's, exit's)
        # Of _stuck - _stopped, the async tasks' (their coroutine cancelled, it stops at its next await):
        # exit's warning advises by kind. Counted only as a task is abandoned or stopped, never per task.
        self._stuck_async = 0
        self._blocked = 0  # workers whose task waits for other tasks (worker_blocks)
        self._parked: list[threading.Lock] = []  # idle workers, each waiting on its lock
        self._capacity = self._num_threads  # live workers allowed, stuck ones replaced
        self._dead = 0  # workers that died of an error in the pool itself
        self._paused = False  # memory is short: one worker takes new tasks
        self._autosizer: Any = None  # num_threads="auto": grows and shrinks the pool
        self._sizer_stopped = False  # a shutdown stopped the sizer's thread: a reopen starts it again
        # Workers that left their loop, until end_threads() joins them or finds them ended; and the
        # waits of end_threads() for the rest to leave, woken as each one does.
        self._retired: list[threading.Thread] = []
        self._retire_waiters: list[threading.Lock] = []
        # This pool's worker threads, each from before its start until it leaves its loop: what
        # num_threads="auto" measures, not the threads of an Executor's pool, named alike.
        self._threads: set[threading.Thread] = set()

    # -- configuration ---------------------------------------------------------------

    def configure(self, num_threads: int | str | None, stack_size: int | None | EllipsisType) -> None:
        """Resize the pool and set the stack size of threads started from now on.

        Safe while tasks run: a larger pool starts threads for queued work at once;
        a smaller one lets surplus threads retire as they become idle.
        ``num_threads="auto"`` hands the size to an :class:`AutoSizer`.
        ``stack_size``: ``None`` is the platform's default, ``...`` keeps the size.
        """
        if stack_size is not ...:  # before any change: a refused call changes nothing
            stack_size = check_stack_size(stack_size)
        if num_threads == "auto":
            self._start_autosizer()
            if stack_size is not ...:  # checked above: configure() would start another thread to check it
                self._resize(None, stack_size, refusal_raises=True)
            return
        if isinstance(num_threads, str):
            raise TypeError(f'num_threads must be an int >= 1, "auto" or None, got {num_threads!r}')
        if num_threads is not None:
            num_threads = check_count(num_threads, "num_threads")
            self._stop_autosizer()
        self._resize(num_threads, stack_size, refusal_raises=True)

    def settings(self) -> tuple[int | str, int | None]:
        """The size, ``"auto"`` where an :class:`AutoSizer` sizes the pool, and the stack size."""
        return ("auto" if self._autosizer is not None else self._num_threads), self._stack_size

    def restore(self, settings: tuple[int | str | None, int | None]) -> None:
        """Take :meth:`settings`' configuration; a size of ``None`` keeps this pool's (its process's cores)."""
        num_threads, stack_size = settings
        self._resize(None, stack_size)  # checked as the parent set it: no thread started to check it again
        self.configure(num_threads, ...)

    def _start_autosizer(self) -> None:
        from .._autosize import AutoSizePolicy, AutoSizer, activity_of

        self._stop_autosizer()
        cores = default_thread_count()
        sizer = AutoSizer(
            AutoSizePolicy(cores), self._load, lambda size: self._resize(size, ..., sizer=sizer), cores,
            activity_of(self._worker_threads),
        )
        with self._lock:  # as _stop_autosizer() swaps it
            # The sizer of an "auto" call from another thread, set since the stop above: it is
            # replaced, and stopped here (left, its thread sampled for good, sizing nothing).
            replaced, self._autosizer = self._autosizer, sizer
            self._sizer_stopped = False
            previous = self._num_threads
        if replaced is not None:
            replaced.stop()
            replaced.join(_SIZER_ENDS_WITHIN)
        self._resize(cores, ..., sizer=sizer)  # not where a configure() ended the sizing since: its size stays
        try:
            self._start_if_current(sizer)
        except BaseException:  # no thread could start (or a Ctrl-C): the pool is not sized automatically,
            self._resize(previous, ...)  # nor resized: sized as before the call that raised
            raise

    def _start_if_current(self, sizer: Any) -> None:
        """Start ``sizer``'s sampling thread, if it still sizes the pool; dropped where its thread cannot start.

        Decided under the lock, as a stop takes the sizer: a configure() from
        another thread that ended the sizing since found no thread to stop,
        and the thread started after it sampled for good, sizing nothing. Nor
        where a shutdown stopped it meanwhile, or closed the pool before this
        call: left stopped, as a shutdown leaves it, for reopen() to start.
        Started there, it sampled the shut-down pool until a reset, past the
        shutdown that had ended the pool's threads.
        """
        with self._lock:
            if self._autosizer is not sizer or self._sizer_stopped:
                return
            if self._closed:
                self._sizer_stopped = True
                return
            try:
                sizer.start()
            except BaseException:
                self._autosizer = None
                raise

    def _stop_autosizer(self) -> None:
        """End the sizing: its thread is stopped and joined, for at most ``_SIZER_ENDS_WITHIN`` seconds."""
        with self._lock:  # as reopen() reads both: a reset in between started None
            sizer, self._autosizer = self._autosizer, None
            self._sizer_stopped = False
        if sizer is not None:
            sizer.stop()
            sizer.join(_SIZER_ENDS_WITHIN)

    def _worker_threads(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._threads)

    def _load(self) -> tuple[int, int]:
        with self._lock:
            return self._queued, self._busy

    def _resize(
        self,
        num_threads: int | None,
        stack_size: int | None | EllipsisType,
        refusal_raises: bool = False,
        sizer: Any = None,
    ) -> None:
        """Set the pool's size and stack size, and wake the idle workers to act on it (see :meth:`_spawn`).

        ``num_threads`` ``None`` keeps the size; ``stack_size`` ``...`` keeps the
        stack size, and ``None`` is the platform's default.

        ``sizer``: the :class:`AutoSizer` that asks; its size is applied only
        while it still sizes the pool. Stopping one does not stop a step past
        its decision, and that step's size replaced the one just configured.
        """
        spawn = 0
        try:
            with self._lock:
                if sizer is not None and sizer is not self._autosizer:
                    return
                if stack_size is not ...:
                    self._stack_size = stack_size
                if num_threads is not None:
                    self._num_threads = num_threads
                    self._set_capacity_locked()
                self._wake_parked_locked()  # each idle worker re-checks for work or retirement
                spawn = self._queued
        finally:
            self._spawn(spawn, refusal_raises)

    def worker_count(self) -> int:
        return self._num_threads

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {
                "backend": self.name,
                "current_num_threads": self._num_threads,
                "num_threads": self._num_threads,
                "live_threads": self._workers,
                "busy_threads": self._busy,
                "idle_threads": len(self._parked),
                "stuck_threads": self._stuck,
                "dead_threads": self._dead,
                "blocked_threads": self._blocked,
                "paused": self._paused,
                "auto": self._autosizer is not None,
                "queued_tasks": self._queued,
                "active_tasks": self._active,
                "stack_size": self._stack_size,
                "closed": self._closed,
            }

    # -- submission ------------------------------------------------------------------

    def submit(self, handle: AsyncHandle[Any]) -> None:
        lock = self._lock
        park = None
        spawn = False
        try:
            if lock.locked():
                wait_while_held(lock)
            with lock:  # not acquire(): a Ctrl-C as it returns would leave the lock taken
                if self._closed:
                    self._refuse_if_closed_locked()
                self._accept_locked(handle)
                parked = self._parked
                if parked:  # taken with no call: a Ctrl-C as pop() returned would lose it asleep
                    park = parked[-1]
                    del parked[-1]
                elif self._workers < self._capacity:
                    spawn = True
                elif self._autosizer is not None:
                    self._autosizer.poke()  # queued behind busy workers: may need more of them
        finally:  # also when a Ctrl-C lands as the lock is let go: the worker taken must wake
            if park is not None:
                park.release()
            elif spawn:
                self._spawn(1, refusal_raises=True)

    def _work_arrived(self) -> None:
        park = None
        spawn = 0
        try:
            with self._lock:
                parked = self._parked
                if parked:  # as in submit: taken with no call
                    park = parked[-1]
                    del parked[-1]
                else:
                    spawn = 1
        finally:  # as in submit: a Ctrl-C as the lock is let go must not strand the worker taken
            if park is not None:
                park.release()
            self._spawn(spawn)

    def _resume(self, handle: AsyncHandle[Any]) -> None:
        with self._lock:
            if handle._state != RETRY_WAIT:
                return  # cancelled during the wait
            waiters = None
            if self._closed:
                park = spawn = None
            else:
                waiters = handle._queued_again_locked()
                self._enqueue_locked(handle)
                park = self._parked.pop() if self._parked else None
                spawn = 0 if park is not None else 1
        for waiter in waiters or ():
            waiter.release()
        if spawn is None:
            handle._give_up_retrying(SHUT_DOWN)
        elif park is not None:
            park.release()
        else:
            self._spawn(spawn)

    def close(self, cancel_pending: bool) -> None:
        try:
            with self._lock:
                self._closed = True
                pending = self._unstarted_locked() if cancel_pending else []
            self._cancel_together(pending)
        finally:  # idle workers exit once nothing is queued, or go on after reset_shutdown
            with self._lock:
                self._wake_parked_locked()

    def reopen(self) -> None:
        with self._lock:
            self._closed = False
            if self._retire_waiters:  # (end_threads: the workers stay)
                _interruptible.wake(self._retire_waiters)
            if self._sizer_stopped:  # under the lock, as end_threads stops it: one decides at a time
                self._sizer_stopped = False
                try:
                    self._autosizer.start()
                except BaseException:  # (Ctrl-C, or no thread could start) the next reopen tries again
                    self._sizer_stopped = True
                    raise

    def end_threads(self, timeout: float, running_too: bool = True) -> None:
        """After a shutdown's wait: wait for the workers to leave, and join them, for at most ``timeout`` seconds.

        Closed, a worker leaves its loop once it has no task left to run, nor
        a callback of one: an idle one at once, woken by :meth:`close`. They
        left on their own, still alive as ``shutdown()`` returned, where a
        thread-leak check (``threading.active_count()``) saw every one. Not
        waited for: a worker whose task cannot be stopped (timed out or
        cancelled as it ran, its code going on: it leaves as that returns), and
        this thread, where it is one of the workers (a shutdown from a task or a
        callback). A worker counted busy is waited for only ``running_too``:
        where the shutdown's wait ran out, its task may run for long, and a
        ``shutdown(timeout_secs=0)`` took a second more for it, the one thing
        its caller asked not to do; where every task ended, it is in a callback
        of its last one. Reopened meanwhile (``reset_shutdown()``), the
        workers stay, and it returns at once. The thread of ``num_threads="auto"``
        is stopped and joined first (``reopen()`` starts it again).

        A Ctrl-C ends the wait (:mod:`._interruptible`): it is raised, and the
        workers leave on their own.
        """
        deadline = time.monotonic() + timeout
        with self._lock:  # the sizer first: it would start workers for nothing
            sizer = self._autosizer if self._closed and not self._sizer_stopped else None
            if sizer is not None:
                self._sizer_stopped = True
                sizer.stop()
        if sizer is not None:
            sizer.join(timeout)
        here = int(getattr(_this_thread, "pool", None) is self)
        while True:
            with self._lock:
                if not self._closed:
                    return
                if self._workers <= (self._stuck + here if running_too else self._busy):  # (stuck ones are busy)
                    break
                waiter = threading.Lock()
                waiter.acquire()
                self._retire_waiters.append(waiter)
            try:
                woken = _interruptible.acquire(waiter, max(0.0, deadline - time.monotonic()))
            finally:
                with self._lock:
                    if waiter in self._retire_waiters:
                        self._retire_waiters.remove(waiter)
            if not woken:
                break  # out of time: those that left are still joined
        with self._lock:
            left = self._retired[:]
        for thread in left:
            _interruptible.join(thread, max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._retired = [thread for thread in self._retired if thread.is_alive()]

    def _leaves_locked(self) -> None:
        """This worker leaves its loop: kept for :meth:`end_threads` to join (those ended since are let go), which is woken.

        No longer measured by ``num_threads="auto"``: once it ends, Linux gives its id to a later thread.
        """
        self._retired = [thread for thread in self._retired if thread.is_alive()]
        self._retired.append(threading.current_thread())
        self._threads.discard(threading.current_thread())
        if self._retire_waiters:
            _interruptible.wake(self._retire_waiters)

    def _wake_parked_locked(self) -> None:
        """Wake every idle worker, in two C calls.

        CPython raises a pending Ctrl-C at a function's entry and as a C call
        returns, never inside one: here it lands before any worker is taken
        off the list, or once all are woken. (Taken off, then woken in a loop
        of Python, a worker missed by an interrupt slept for good.)
        """
        wake = map(_release, self._parked)
        self._parked = []
        deque(wake, maxlen=0)

    # -- hooks the handle calls -----------------------------------------------------

    def _settled_locked(self, handle: AsyncHandle[Any], was_pending: bool) -> None:
        if was_pending:
            self._dequeued_locked()  # cancelled while queued
        elif handle._state >= CANCELLED and handle._on_worker == ON_WORKER:
            # Timed out or cancelled while a worker runs it: the worker stays busy
            # until the task returns. Marked here, under the lock that the worker's
            # own bookkeeping takes, so that the two always agree.
            handle._on_worker = ABANDONED
            self._stuck += 1
            self._stuck_async += handle._observer.is_async
            self._set_capacity_locked()
            if self._retire_waiters:  # end_threads() no longer waits for this worker
                _interruptible.wake(self._retire_waiters)
        self._active -= 1
        if self._active == 0 and self._idle_waiters:
            self._wake_idle_waiters_locked()

    def _schedule_retry_locked(self, handle: AsyncHandle[Any], due: float) -> None:
        """As a task that timed out with no retry: a worker that still runs the attempt retried counts as stuck.

        So the pool starts a replacement (``_abandoned`` follows), and the retry
        runs beside the late attempt: on a full pool it waited for that attempt
        to return, pending for good where it never did. The start of each such
        attempt is kept with the task's retries: a task can have several late
        attempts at once, and each worker is freed by its own
        (:meth:`_late_attempt_returned_locked`). An attempt that failed and
        is retried by its own worker's settle, or one a waiter ran inline, holds
        no worker of the pool's once it is retried.
        """
        record = handle._retry
        if record.timed_out and handle._on_worker == ON_WORKER:
            record.late_on_workers.append(record.retried_start)  # type: ignore[arg-type]  # (it started)
            self._stuck += 1
            self._stuck_async += handle._observer.is_async
            self._set_capacity_locked()
        super()._schedule_retry_locked(handle, due)

    def _late_attempt_returned_locked(self, handle: AsyncHandle[Any], started: float) -> bool:
        record = getattr(handle, "_retry", None)
        if record is None:
            return False  # never retried: ended (timed out, cancelled) as its first attempt ran
        late = record.late_on_workers
        for index, start in enumerate(late):
            if start is started:  # by identity, as the handle tells its attempts apart
                del late[index]
                self._unstuck_locked(handle)  # surplus now: the worker retires, as after a plain timeout
                return True
        return False

    def _unstuck_locked(self, handle: AsyncHandle[Any], stopped: bool = False) -> None:
        """A worker's task (or attempt), timed out or cancelled as it ran, returned: the worker is no longer stuck.

        ``stopped``: the task was stopped with its map or batch (:meth:`_stop_abandoned`),
        and no longer counted among the code waited for (nor, if async, in ``_stuck_async``).
        The waits for the code of every such task (:meth:`wait_abandoned`) wake with the last.
        """
        self._stuck -= 1
        self._stopped -= stopped
        if not stopped:
            self._stuck_async -= handle._observer.is_async
        self._set_capacity_locked()
        self._wake_abandoned_waiters_locked()

    def _wake_abandoned_waiters_locked(self) -> None:
        if self._stuck == self._stopped and self._abandoned_waiters:
            _interruptible.wake(self._abandoned_waiters)

    def abandoned_running(self) -> int:
        return self._stuck - self._stopped

    def abandoned_running_async(self) -> int:
        return self._stuck_async

    def wait_abandoned(self, timeout: float | None) -> bool:
        """Block until every task timed out or cancelled as it ran has returned on its worker, or ``timeout`` seconds pass.

        Its handle ended, and its code goes on on its daemon thread; shutdown
        and exit wait for it, within their timeouts: a program that ended
        meanwhile cut that code short (a file half written). A late attempt
        of a retried task counts too; the code of a task stopped with its map
        or batch does not (:meth:`_stop_abandoned`).
        """
        return _interruptible.wait_until(
            self._lock, lambda: self._stuck == self._stopped, self._abandoned_waiters, timeout
        )

    def _abandoned(self, handle: AsyncHandle[Any], force: bool = False) -> None:
        self._replace_stuck_workers()

    def _stop_abandoned(self, handle: AsyncHandle[Any]) -> None:
        """A task stopped with its map or batch still runs at its grace's end: its code is no longer waited for.

        The process backend kills its worker there (``cancel_and_stop``: an
        item's error, Ctrl-C while collecting, an ``imap`` left early). A
        thread cannot be killed, and its code goes on; shutdown and exit,
        which wait for the code of a task timed out or cancelled as it ran,
        do not wait for this one: waited for, a Ctrl-C that stopped a batch
        was held up at exit by the very code it stopped.
        """
        with self._lock:
            if handle._on_worker == ABANDONED and not handle._code_done:  # (else its worker counted its return)
                handle._on_worker = STOPPED
                self._stopped += 1
                self._stuck_async -= handle._observer.is_async
                self._wake_abandoned_waiters_locked()
        super()._stop_abandoned(handle)

    def _abandoned_all(self, handles: list[AsyncHandle[Any]]) -> None:
        if handles:
            self._replace_stuck_workers()  # once, for only what is still queued

    def _replace_stuck_workers(self) -> None:
        spawn = 0
        try:
            with self._lock:
                spawn = self._queued - len(self._parked)
        finally:  # as in submit: a Ctrl-C as the lock is let go must not leave the tasks without workers
            self._spawn(spawn)

    # -- workers ---------------------------------------------------------------------

    def set_paused(self, paused: bool) -> None:
        """Paused, one worker takes new tasks and surplus workers retire as their tasks end."""
        with self._lock:
            self._paused = paused
            self._set_capacity_locked()
            if paused:
                self._wake_parked_locked()  # idle workers re-check, and the surplus retires
                spawn = 0
            else:
                spawn = self._queued - len(self._parked)
        self._spawn(spawn)

    def _steal(self, handle: AsyncHandle[Any]) -> bool:
        """Claim a queued task for the waiting caller to run inline; while paused, only a task's wait or a worker's may.

        Paused for memory, the pool starts one task at a time. A thread outside
        its tasks that waited for a queued one (``get()``, a map, a group's
        end) ran it itself, beside the task the pool's worker ran: one more
        task at once per such thread (a service's request threads, each
        mapping, ran one each), over the limit. It waits for the worker
        instead. A task waiting for its children still runs them (nested work
        never deadlocks), and so does this pool's worker (its callbacks), or a
        wait where no worker is left to take it: none at exit, and none while
        stuck threads (tasks timed out or cancelled as they ran) fill the
        places, which a pause cuts to two. Refused there, the waiter waited
        until a stuck task returned or memory fell: for good where neither came.
        """
        if (
            self._paused
            and getattr(_local, "task", None) is None
            and getattr(_this_thread, "pool", None) is not self
        ):
            with self._lock:
                # Surplus workers retire without taking a task; stuck and blocked ones take none.
                if min(self._workers, self._capacity) > self._stuck + self._blocked:
                    return False
        return super()._steal(handle)

    def worker_blocks(self) -> None:
        """A worker's task waits for other tasks: run one more worker meanwhile.

        As ``ForkJoinPool.managedBlock`` does in Java: the blocked worker lends
        its place, so tasks queued behind its task (its children) still run and
        the wait ends on time whatever its timeout. At most ``MAX_SPARES`` such
        places are lent at once; beyond that a wait with a timeout still ends at
        its deadline, and one without runs the queued task it waits for inline.
        """
        with self._lock:
            self._blocked += 1
            self._set_capacity_locked()
            spawn = self._queued - len(self._parked)
            all_lent = self._blocked == MAX_SPARES
        self._spawn(spawn)
        if all_lent:
            _tell_all_lent()

    def worker_unblocks(self) -> None:
        """The wait ended: the place lent goes back, a parked surplus worker retires."""
        with self._lock:
            self._blocked -= 1
            self._set_capacity_locked()
            surplus = min(self._workers - self._capacity, len(self._parked))
            retiring = [self._parked.pop() for _ in range(surplus)]
        for park in retiring:
            park.release()

    def places_all_lent(self) -> bool:
        """Whether ``MAX_SPARES`` places are lent: a wait beginning now would lend none.

        Read without the lock, as a hint: a wait that reads it as another
        begins may find the last place taken once it sleeps, and lend none; the
        workers that do not wait still serve the queue.
        """
        return self._blocked >= MAX_SPARES

    def _set_capacity_locked(self) -> None:
        # Replace stuck threads, but never run more than twice the size for
        # them; lend a place per blocked worker, up to MAX_SPARES. Paused for
        # memory, the size is one.
        size = 1 if self._paused else self._num_threads
        self._capacity = size + min(self._stuck, size) + min(self._blocked, MAX_SPARES)

    def _spawn(self, wanted: int, refusal_raises: bool = False) -> None:
        """Start up to ``wanted`` workers, as many as the pool's capacity leaves room for.

        They are counted here, under the lock, not by the caller: a Ctrl-C at
        this function's entry (where CPython may raise it) then leaves no worker
        counted that never starts.

        A thread the system refuses (``RuntimeError: can't start new thread``: a
        full pids cgroup, ``ulimit -u``) is uncounted; with ``refusal_raises``
        (a submission, a resize: a caller to tell) the error is raised, else the
        tasks wait for a worker that is running, and fail with the refusal when
        none is (:meth:`_end_queued_if_no_worker`). Once the interpreter
        exits (some Pythons refuse every start from its exit hooks on), the
        refusal is never raised: the queued tasks run in this thread.
        """
        global _stack_size_outside
        count = started = 0
        running: threading.Event | None = None  # set by the thread being started as it begins
        listed: threading.Thread | None = None  # the thread being started, listed before: it may leave at once
        try:  # around the loop: a Ctrl-C lands at any call, Thread() included, and at the loop's turn
            if wanted <= 0:
                return
            with self._lock:
                count = max(0, min(wanted, self._capacity - self._workers))
                self._workers += count
            while started < count:
                park = threading.Lock()
                park.acquire()
                began = threading.Event()
                thread = threading.Thread(
                    target=self._work_or_report,
                    args=(park, began),
                    name=f"makeparallel-thread-{next(_thread_numbers)}",
                    daemon=True,
                )
                listed = thread
                with self._lock:
                    self._threads.add(thread)
                with _stack_size_lock:
                    _stack_size_outside = previous = threading.stack_size(self._stack_size or 0)
                    try:
                        running = began
                        thread.start()
                    finally:
                        threading.stack_size(previous)
                started += 1
                running = listed = None
        except BaseException as error:
            # This worker and the rest were counted but never started: keep the count honest.
            # A Ctrl-C inside start() may land once the thread runs (start() then waits for
            # it to begin): that worker stays counted, as it says at once if it began.
            runs = running is not None and not isinstance(error, RuntimeError) and _began(running)
            with self._lock:
                self._workers -= count - started - runs
                if listed is not None and not runs:
                    self._threads.discard(listed)
            if not isinstance(error, RuntimeError) or (refusal_raises and not _interpreter_exiting()):
                raise  # Ctrl-C landed here, or the caller is told of the refusal
            self._end_queued_if_no_worker(error)

    def _end_queued_if_no_worker(self, refusal: RuntimeError) -> None:
        """With no worker left to run them, the queued tasks fail with the refusal instead of waiting for ever.

        Once the interpreter exits, no worker ever will: they run here instead, in the
        thread that submitted them, as a wait would run its task inline
        (``AsyncHandle._run_here_if_queued``). Left queued for a wait, they
        ran under ``get()`` but kept ``gather``, ``as_completed`` and ``await``
        waiting for good. Only a task no wait runs there (one with its own
        timeout, which nothing could end there) fails.
        """
        exiting = _interpreter_exiting()
        with self._lock:
            if self._workers:
                return
            pending = self._pending_locked()
        for handle in pending:
            if exiting and handle._run_here_if_queued():
                continue
            if self._steal(handle):
                error = RuntimeError(f"no worker thread could start for task {handle._id} ({handle.name}): {refusal}")
                handle._finish(FAILED, error)

    def _work_or_report(self, park: threading.Lock, began: threading.Event) -> None:
        """Run :meth:`_work`; if it ever raises, log it, count the death, replace the worker.

        Callbacks and listeners cannot raise into a worker, so this is the net
        for a fault of the pool itself. The task the worker held may never end,
        so ``health()`` reports the process as not live from then on.
        """
        began.set()  # for a _spawn interrupted in start(): this worker runs
        try:
            self._work(park)
        except BaseException:
            try:
                _log.critical(
                    "makeparallel worker thread %s died; a task it ran may never end. "
                    "Restart the process (health() reports it as not live)",
                    threading.current_thread().name,
                    exc_info=True,
                )
            except BaseException:  # logging's last resort raises where sys.stderr was closed
                pass  # the count and the replacement must follow: else the pool counts a thread it lost
            with self._lock:
                self._dead += 1
                self._workers -= 1
                self._leaves_locked()
                spawn = self._queued - len(self._parked)
            self._spawn(spawn)

    def _execute_watched(self, handle: AsyncHandle[Any], watch: Any) -> tuple[int, Any, float | None]:
        """Run a task measuring its thread's CPU time, for the GIL watch."""
        overlapping = self._busy > 1
        cpu = time.thread_time()
        outcome = handle._execute(_local.__dict__)
        overlapping = overlapping or self._busy > 1
        watch.record(handle._started_at, time.perf_counter(), time.thread_time() - cpu, overlapping)
        # A failed task's traceback keeps this frame as it returns (its _execute's caller, f_back),
        # locals and all: not the handle with it, which its error would refer back to.
        del handle
        return outcome

    def _work(self, park: threading.Lock) -> None:
        _this_thread.pool = self
        here = _local.__dict__  # this thread's current-task slot
        lock = self._lock
        handle: AsyncHandle[Any] | None = None
        outcome = _NO_OUTCOME
        born = _fork_child.generation
        calling_back = False  # it runs the callbacks of the task it settled, and claims the next one after them
        while True:
            if _fork_child.generation != born and handle is not None:  # in a child the task forked
                error = outcome[1] if isinstance(outcome[1], BaseException) else None
                _fork_child.leave_forked_child(f"task {handle._id} ({handle.name})", error, outcome[0] != SUCCEEDED)
            if lock.locked():
                wait_while_held(lock)
            lock.acquire()  # no handler runs here (see _yielding_lock)
            try:
                announce = settled = None
                busy = handle is not None or calling_back  # counted busy since it claimed that task
                calling_back = False
                if handle is not None:
                    # One lock round per task: settle the last task, claim the next
                    # (after the callbacks of the last, where it has some: see below).
                    if handle._state == RUNNING:
                        announce = handle._settle_locked(outcome[0], outcome[1], outcome[2])
                        settled = handle
                    elif outcome[2] is not None and self._late_attempt_returned_locked(handle, outcome[2]):
                        pass  # an attempt retried past its timeout; the task waits to retry, or ended since
                    elif (handle._on_worker == ABANDONED or handle._on_worker == STOPPED) and outcome[0] != RUNNING:
                        self._unstuck_locked(handle, handle._on_worker == STOPPED)  # (RUNNING: a stale attempt's)
                    outcome = _NO_OUTCOME  # hold no result while idle or running the next task
                # A surplus worker (the pool shrank, or a stuck task came back)
                # retires rather than take more work. One with callbacks to run claims
                # nothing until they ran: a task claimed first waited for them, and for
                # good where a callback waited for it (or for a slot it held).
                if announce is not None and announce[0] is not None:
                    handle, calling_back = None, True
                else:
                    handle = None if self._workers > self._capacity else self._next_locked()
                    if handle is None:
                        if busy:
                            self._busy -= 1
                        if self._closed or self._workers > self._capacity:
                            self._workers -= 1
                            retire = True
                            self._leaves_locked()
                            # Woken for work it will not take: pass the wake-up on.
                            wake = self._parked.pop() if self._queued and self._parked else None
                        else:
                            self._parked.append(park)
                            retire = False
                    elif not busy:
                        self._busy += 1  # from one task to the next it stays busy: no count
            finally:
                lock.release()
            if settled is not None and (announce is not None or _events.listeners):
                settled._after_settle(announce)  # callbacks, waiters, listeners: outside the lock
            settled = announce = None  # neither an idle worker nor the next task keeps it alive
            if handle is None:
                if calling_back:
                    continue  # (still counted busy) to claim the next task
                if retire:
                    if wake is not None:
                        wake.release()
                    return
                park.acquire()
                continue
            if handle._state != RUNNING:
                continue  # cancelled by a callback announced just above: never start it
            watch = handle._observer.cpu_watch
            if watch is None:
                outcome = handle._execute(here)
            elif watch.active:
                outcome = self._execute_watched(handle, watch)
            else:  # it decided: stop asking
                handle._observer.cpu_watch = None
                outcome = handle._execute(here)


def _interpreter_exiting() -> bool:
    """Whether the interpreter exits: it runs its exit hooks, or finalizes.

    Python 3.12.0 to 3.12.2 refuse every new thread from the exit hooks on
    (gh-104690; 3.12.3 allows them again, gh-113964), where
    ``sys.is_finalizing()`` is still false. ``threading`` sets its flag as the
    interpreter starts to exit, before those hooks, on 3.10 to 3.13 alike.
    """
    return getattr(threading, "_SHUTTING_DOWN", False) or sys.is_finalizing()


def _began(began: threading.Event) -> bool:
    """Whether a thread whose start() was interrupted began, within ``_BEGINS_WITHIN`` seconds.

    A second Ctrl-C during this wait is raised once it is answered: cut short, it
    would leave the answer to a guess.
    """
    interrupted: BaseException | None = None
    deadline = time.monotonic() + _BEGINS_WITHIN
    while True:
        try:
            answer = began.wait(max(0.0, deadline - time.monotonic()))
            break
        except BaseException as error:
            interrupted = error
    if interrupted is not None:
        raise interrupted
    return answer
