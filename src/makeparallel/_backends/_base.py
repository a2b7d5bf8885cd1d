"""What every backend shares: the lock over its tasks' states, counts, closing.

A backend runs the tasks it is given and nothing else: it knows nothing of
decorators, metrics or limits. The handle drives its own state machine under the
backend's lock and calls the ``_locked`` hooks here while holding it.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .. import _at_fork_in_child, _deadlines, _events, _held_on_loop, _interruptible
from .._coroutines import (
    end_those_of_closed_loops,
    one_only_this_thread_can_end,
    running_loop,
)
from .._states import CANCELLED, PENDING, RETRY_WAIT, RUNNING, SUCCEEDED
from ..errors import ShutdownError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .._handle import AsyncHandle

__all__ = ["Backend", "BlockingWait", "counted_by_name", "pool_of_this_thread", "terminate_all"]


def counted_by_name(handles: Iterable[AsyncHandle[Any]]) -> dict[str, int]:
    """How many of ``handles`` each function has, by its name: a pool's :meth:`Backend.queued_by_name`."""
    counts: dict[str, int] = {}
    for handle in handles:
        name = handle._observer.name
        counts[name] = counts.get(name, 0) + 1
    return counts

#: Why a task waiting to retry ends with its last error at shutdown (its retry record's note says).
SHUT_DOWN = "makeparallel was shut down"

#: How a timed-out coroutine task is stopped where the pool runs it in this process (``Backend.coroutine_stop_hint``).
COROUTINE_CANCELLED = "its coroutine was cancelled: it stops at its next await"

_this_thread = threading.local()  # .pool: the backend whose worker this thread is
_every: weakref.WeakSet[Backend] = weakref.WeakSet()  # every backend alive: the runtime's, executors', adapters'


def _new_locks_after_fork() -> None:
    """In a forked child, every backend gets a new lock: a thread of the parent may have held its own as it forked.

    The child's pools are new, but the parent's tasks keep their backend, and
    their error's note, metadata and callbacks take its lock there (``_fork_child``).
    """
    for backend in list(_every):
        backend._lock = threading.Lock()


_at_fork_in_child(_new_locks_after_fork)


def every_backend() -> list[Backend]:
    """Every backend alive in this process, whoever made it."""
    return list(_every)


def terminate_all(backends: list[Backend]) -> None:
    """Stop the workers of ``backends`` together: each is told to stop first, then each is waited for.

    A worker stuck in a C call that holds the GIL takes two grace periods to
    stop (``SIGTERM``, then ``SIGKILL``). Stopped one pool after another, a
    program with three process pools took three times that to exit.
    """
    for backend in backends:
        backend.begin_terminate()
    for backend in backends:
        backend.terminate()


class WorkerPlace(Protocol):
    """What a thread that runs tasks does as one of them blocks: a pool's worker, or a Dask worker's thread.

    A backend's worker thread is its backend (``ThreadBackend.worker_blocks``);
    a Dask worker's thread secedes (``_dask._SecedingPlace``), and is no backend.
    """

    def worker_blocks(self) -> None: ...

    def worker_unblocks(self) -> None: ...

    def places_all_lent(self) -> bool: ...


def pool_of_this_thread() -> WorkerPlace | None:
    """The place this thread holds as it runs tasks (the backend whose worker it is), or ``None``."""
    return getattr(_this_thread, "pool", None)


class BlockingWait:
    """Around a wait that blocks: a pool's worker lends its place while it waits.

    Outside a pool's worker thread it does nothing. Inside one, the pool may run
    one more worker until the wait ends, so that a task waiting for tasks queued
    behind it cannot stall its pool (see ``ThreadBackend.worker_blocks``).
    """

    __slots__ = ("_pool",)

    def __enter__(self) -> None:
        pool = self._pool = pool_of_this_thread()
        if pool is not None:
            pool.worker_blocks()

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.worker_unblocks()


class Backend:
    """The base of every backend: a lock, a count of unfinished tasks, a closed flag."""

    name: ClassVar[str]
    #: How a task that timed out is stopped, for the error message.
    stop_hint: ClassVar[str] = "it was asked to stop at its next check_cancelled()"
    #: How a timed-out task's coroutine (an async task's) is stopped, where that differs from
    #: ``stop_hint``: in this process, it is cancelled, which needs no ``check_cancelled()``.
    coroutine_stop_hint: ClassVar[str | None] = None
    #: Whether :meth:`hold` and :meth:`release_held` work here: a call over a limit on a
    #: running event loop returns at once, its task held until admitted (``_admission``).
    holds_tasks: ClassVar[bool] = False
    #: Whether ``makeparallel.shutdown()`` leaves this pool taking tasks (an ``mp.Executor``'s, which
    #: refuses them after its own ``shutdown()`` only): its tasks wait for their slots through it.
    outlives_shutdown = False
    #: The one thread that reads this pool's results (a process pool's loop thread), on
    #: which a wait for one of its tasks could never end; ``None`` where there is none.
    _loop: threading.Thread | None = None
    #: Where :meth:`reads_results_here` holds, what a task waited for there is and what the
    #: thread is, for the refusal of a wait for the task (``AsyncHandle._refuse_to_block_a_loop``)...
    waited_for_on_reader: ClassVar[str] = (
        "runs in a worker process, and this is its pool's loop thread (a process task's callback runs here)"
    )
    #: ...and of ``shutdown()`` without a timeout (:meth:`wait_for_all_refused_here`).
    called_on_reader: ClassVar[str] = "in a process task's callback, on the pool's loop thread"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._active = 0  # submitted and not yet ended
        self._idle_waiters: list[threading.Lock | _Wake] = []
        _every.add(self)

    def settings(self) -> Any:
        """What the user configured this pool with, for :meth:`restore`; ``None`` where nothing is configured."""
        return None

    def restore(self, settings: Any) -> None:
        """Take the configuration :meth:`settings` gave, as a forked child makes the pool anew (``_runtime``)."""

    def timeout_hint(self, is_async: bool) -> str:
        """How a task of this pool that timed out is stopped, for its error (``AsyncHandle._timeout_error``).

        Args:
            is_async: whether the task's function is async (its record's): then
                ``coroutine_stop_hint``, where the pool has one.
        """
        return (is_async and self.coroutine_stop_hint) or self.stop_hint

    def reads_results_here(self, handle: AsyncHandle[Any] | None = None) -> bool:
        """Whether this thread is the one that reads this pool's results (:attr:`_loop`): ``handle``'s, where given.

        A wait here for one of its unfinished tasks could never end: a
        process task's callback runs on that thread (a Dask task's on its
        client's event loop thread: ``DaskBackend.reads_results_here``).
        """
        loop = self._loop
        return loop is not None and loop is threading.current_thread()

    def retries_here(self) -> AsyncHandle[Any] | None:
        """A task of this pool waiting to retry whose next attempt only this thread runs, once free; else ``None``.

        Only the ``"sync"`` pool has one (``SyncBackend.retries_here``): a pool's
        retry waits on the deadline heap. Asked without the lock, as a wait
        for every task asks, maybe in a signal handler whose interrupted code holds it.
        """
        return None

    def wait_refused_here(self, handle: AsyncHandle[Any]) -> str:
        """Why a wait for ``handle`` is refused where :meth:`reads_results_here` holds, and what to do instead."""
        return (
            f"{self.waited_for_on_reader}, which reads the result this wait is for: the wait could "
            "never end. Submit the follow-up work from the callback and return, or wait from another thread"
        )

    def wait_for_all_refused_here(self, call: str, done: str, bound: str) -> str:
        """Why ``call``, a wait for every task with no bound, is refused where :meth:`reads_results_here` holds, and what to do instead.

        ``done`` says what became of the call (``"; nothing was shut down"``),
        ``bound`` names the argument that bounds its wait (``"a timeout_secs"``).
        """
        return (
            f"{call} called {self.called_on_reader}, which reads the results it waits for, would wait "
            f"for good{done}. Give it {bound}, or call it from your program's own thread"
        )

    #: Whether a wait for every task *with* a timeout is refused where :meth:`reads_results_here`
    #: holds (:meth:`timed_wait_for_all_refused_here`): the process pool's loop thread, whose
    #: wait saw no task end, waited out its timeout, and a shutdown then stopped the workers
    #: with results unread. Not on a Dask client's loop, whose shutdown there the README
    #: documents: it asks Dask to cancel once the loop is free, and stops no worker.
    refuses_timed_wait_for_all: ClassVar[bool] = True

    def timed_wait_for_all_refused_here(self, call: str, then: str) -> str:
        """Why ``call``, a wait for every task with a timeout, is refused where :meth:`reads_results_here` holds.

        ``then`` says what the call would do once its timeout passed (``", and
        return False"``).
        """
        return (
            f"{call} called {self.called_on_reader}, which reads the results it waits for: it could see "
            f"no task end, so it would wait out its whole timeout{then}. Call it from another thread "
            "(`threading.Thread(target=mp.shutdown, args=(30,)).start()`), or submit the follow-up "
            "work from the callback and return"
        )

    def submit(self, handle: AsyncHandle[Any]) -> None:
        """Take ``handle`` to run; raise ``ShutdownError`` when closed."""
        raise NotImplementedError

    def hold(self, handle: AsyncHandle[Any]) -> None:
        """Accept ``handle`` now, not to start before :meth:`release_held` (where :attr:`holds_tasks`)."""
        raise NotImplementedError

    def release_held(self, handle: AsyncHandle[Any]) -> None:
        """Let a held task start, unless it ended meanwhile."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Plain data describing the backend, for humans and health checks."""
        with self._lock:
            return {"backend": self.name, "active_tasks": self._active, "closed": self._closed}

    def locks_shutdown_takes(self) -> list[Any]:
        """The locks of this pool that a shutdown takes, read without taking them (``_runtime._interrupted_holding_a_lock``)."""
        return [self._lock]

    def worker_count(self) -> int:
        """How many tasks can run at once here."""
        return 1

    def queued_by_name(self) -> dict[str, int]:
        """Tasks queued here and not started, by the name of their function."""
        return {}

    def active_count(self) -> int:
        """Tasks submitted here that have not ended."""
        return self._active

    def active_count_beside(self, pools: list[Backend]) -> int:
        """Of :meth:`active_count`, the tasks that none of ``pools`` counts too (all, but for an adapter's)."""
        return self._active

    def close(self, cancel_pending: bool) -> None:
        """Refuse new tasks from now on; cancel the queued ones if asked."""
        with self._lock:
            self._closed = True

    def reopen(self) -> None:
        """Accept tasks again after :meth:`close`."""
        with self._lock:
            self._closed = False

    def wait_idle(self, timeout: float | None) -> bool:
        """Block until no task is unfinished here, or ``timeout`` seconds pass.

        A ``"sync"`` task whose coroutine runs on its caller's loop ends only as
        that loop runs it: the wait ends such tasks whose loop closed, first and
        then between slices (the loop may close on another thread as this waits).
        Looking only first, a wait begun before the close (``shutdown``,
        ``wait_until_idle``, ``Executor.shutdown``, exit) ran out its timeout, or
        lasted for good without one.

        On a thread whose event loop runs, the ``"sync"`` tasks held there for
        their slots are run in place meanwhile (:meth:`_wait_idle_beside_held`).

        Raises:
            RuntimeError: ``timeout`` is ``None``, this thread's loop runs, and
                a task run in place left a coroutine on that loop (a plain
                function that returned one): nothing would run it.
        """
        end_those_of_closed_loops()
        loop = running_loop()
        if loop is not None:
            return self._wait_idle_beside_held(timeout, loop)
        with self._lock:
            if self._active == 0:
                return True
            waiter = threading.Lock()
            waiter.acquire()
            self._idle_waiters.append(waiter)
        if _interruptible.acquire(waiter, timeout, end_those_of_closed_loops):
            return True
        with self._lock:
            if waiter in self._idle_waiters:
                self._idle_waiters.remove(waiter)
            return self._active == 0

    def abandoned_running(self) -> int:
        """Tasks that ended as they ran here (timed out, cancelled) whose code still runs on a worker thread of this process.

        Only the thread pool has such code: a thread cannot be stopped, and its
        task's code goes on until it returns. Elsewhere none.
        """
        return 0

    def abandoned_running_async(self) -> int:
        """Of :meth:`abandoned_running`, the tasks of async functions: their coroutine, cancelled, stops at its next await."""
        return 0

    def wait_abandoned(self, timeout: float | None) -> bool:
        """Block until :meth:`abandoned_running` is 0, or ``timeout`` seconds pass (``None``: no end); return whether it is."""
        return True

    def _wait_idle_beside_held(self, timeout: float | None, loop: Any) -> bool:
        """:meth:`wait_idle` on the thread of ``loop``, which runs: the ``"sync"`` tasks admitted to run here run in place.

        A task held for its slots, called from a coroutine of ``loop``, runs on
        this thread once admitted, and only the loop ran it: the wait, which
        blocks the loop, lasted for good, or its whole timeout. It runs them
        as ``AsyncHandle._wait_beside_held`` does (``_held_on_loop``), every one
        admitted, since any of them may hold the slot that another task of
        this backend waits for.
        """
        inbox: queue.SimpleQueue[None] = queue.SimpleQueue()
        waiter = _Wake(inbox)
        deadline = None if timeout is None else time.monotonic() + timeout
        with _held_on_loop.listening(loop, waiter.release):
            while True:
                if _held_on_loop.run_one(loop):
                    if timeout is None and (stuck := one_only_this_thread_can_end(self)) is not None:
                        raise RuntimeError(
                            f"a wait for every task without a timeout ran task {stuck.get_task_id()} "
                            f"({stuck.name}), held for its slot, in place on the thread of the event loop it "
                            "was called from, and it returned a coroutine, which runs on that loop: nothing "
                            "runs the loop while this thread waits. Await the handle in a coroutine that "
                            "loop runs before waiting, or give the wait a timeout"
                        )
                    continue
                with self._lock:
                    if self._active == 0:
                        return True
                    self._idle_waiters.append(waiter)
                try:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    try:
                        _interruptible.get(inbox, remaining, end_those_of_closed_loops)
                    except queue.Empty:
                        pass  # the timeout passed: looked at once more above
                finally:
                    with self._lock:
                        if waiter in self._idle_waiters:
                            self._idle_waiters.remove(waiter)

    def _refuse_if_closed_locked(self) -> None:
        if self._closed:
            raise ShutdownError(
                "makeparallel is shut down and accepts no new tasks; call "
                "makeparallel.reset_shutdown() to accept tasks again"
            )

    # -- hooks the handle calls -----------------------------------------------------

    def _holds(self, handle: AsyncHandle[Any]) -> bool:
        """Whether ``handle`` was accepted and has not started (or, inline, not ended)."""
        return False

    def _steal(self, handle: AsyncHandle[Any]) -> bool:
        """Claim a queued task for the caller to run inline; False if not possible."""
        return False

    def _settled_locked(self, handle: AsyncHandle[Any], was_pending: bool) -> None:
        """A task ended (under the lock): count it and wake idle waiters."""
        self._active -= 1
        if self._active == 0 and self._idle_waiters:
            self._wake_idle_waiters_locked()

    def _wake_idle_waiters_locked(self) -> None:
        for waiter in self._idle_waiters:
            waiter.release()
        self._idle_waiters.clear()

    def _schedule_retry_locked(self, handle: AsyncHandle[Any], due: float) -> None:
        """``handle`` waits to retry until ``due`` (``perf_counter``): the deadline thread resumes it."""
        _deadlines.schedule(_RetryDue(handle), due)

    def _late_attempt_returned_locked(self, handle: AsyncHandle[Any], started: float) -> bool:
        """The attempt of ``handle`` that started at ``started``, timed out and retried, returned; under the lock.

        Whether a worker of this backend ran it and was counted as stuck meanwhile
        (then it no longer is). Only the thread pool counts such workers.
        """
        return False

    def set_paused(self, paused: bool) -> None:
        """Start one task at a time (memory is short) or resume; backends without a pool ignore it."""

    def _accept_refused(self, handle: AsyncHandle[Any], error: BaseException) -> None:
        """Accept a task whose first attempt a circuit breaker refused, to retry it later."""
        with self._lock:
            self._refuse_if_closed_locked()
            handle._observer.task_submitted(handle)  # first: a Ctrl-C at its entry leaves nothing counted
            self._active += 1
            handle._state = RETRY_WAIT
            handle._code_done = True  # none ran: cancel_with_timeout() has nothing to wait for until a retry starts
        handle._refused_again(error)

    def _queue_retry(self, handle: AsyncHandle[Any], queue_locked: Callable[[AsyncHandle[Any]], None]) -> bool:
        """Take back a task whose retry wait is over, ``queue_locked`` queuing it under the lock; whether it was.

        Not when it was cancelled during the wait; and a closed backend gives
        up, the task failing with its last attempt's error. Its waiters are
        woken: a pool lets a waiter run a queued task itself.
        """
        with self._lock:
            if handle._state != RETRY_WAIT:
                return False  # cancelled during the wait
            closed = self._closed
            waiters = None
            if not closed:
                waiters = handle._queued_again_locked()
                queue_locked(handle)
        for waiter in waiters or ():
            waiter.release()
        if closed:
            handle._give_up_retrying(SHUT_DOWN)
            return False
        return True

    def _resume(self, handle: AsyncHandle[Any]) -> None:
        """Queue the next attempt of a task that waited to retry (still counted as active).

        A backend that cannot run a task twice keeps this default: the task fails
        with its last attempt's error (it runs on the deadline thread: never raise).
        """
        handle._give_up_retrying(f"the {self.name} backend cannot run it again from here")

    def _holds_locked(self, handle: AsyncHandle[Any]) -> bool:
        """Whether ``handle``, running as far as its state says, is held back from its worker: not started.

        A process pool holds the first tasks given to a worker until the worker
        is ready (``_process``): to its user such a task is pending, and
        cancelling it keeps its code from ever running. Called with the lock held.
        """
        return False

    def _abandoned(self, handle: AsyncHandle[Any], force: bool = False) -> None:
        """A running task was timed out or cancelled; ``force`` asks to kill it if possible."""

    def _stops_before_timing_out_locked(self, handle: AsyncHandle[Any]) -> float | None:
        """Seconds this backend takes at most to stop ``handle``, past its timeout, before it is timed out; under the lock.

        ``None``: the handle times out now (a thread cannot be stopped). A
        backend that kills the task's process times it out itself, with
        ``handle._time_out_stopped()``, once what the task wrote has been
        written; the handle's deadline does it at the end of these seconds.
        """
        return None

    def _let_go_of_queued(self) -> None:
        """Tasks of this backend ended while queued (cancelled, timed out with their map): called after the lock.

        A pool's own queue skips an ended task when it reaches it. Only the
        executor adapter queues tasks where it cannot: in the executor, which
        it asks here to drop them (``ExecutorBackend._let_go_of_queued``).
        """

    def _stop_abandoned(self, handle: AsyncHandle[Any]) -> None:
        """A task cancelled with a map or a batch that was stopped as a whole still runs: kill it if possible.

        As a forced cancel, but the library's own step (``cancel_and_stop``), not the user's.
        """
        self._abandoned(handle, True)

    def _cancel_together(self, handles: list[AsyncHandle[Any]]) -> int:
        """Cancel these tasks of this backend in one lock round; return how many ended."""
        return self._end_together(handles, CANCELLED)

    def _end_together(self, handles: list[AsyncHandle[Any]], state: int) -> int:
        """End these tasks of this backend as ``state`` (cancelled, or timed out) in one lock round; return how many ended.

        Callbacks and waiters follow outside the lock, then the running tasks
        lost are reported at once (see ``makeparallel._handle.cancel_all``
        and ``time_out_all``).
        """
        ended: list[tuple[AsyncHandle[Any], Any]] = []
        running: list[AsyncHandle[Any]] = []
        queued: list[AsyncHandle[Any]] = []  # nobody waits: ended in bulk, then those without callbacks
        told: list[tuple[AsyncHandle[Any], Any]] = []  # ... and those with, and their callbacks
        # The one-by-one path allocates an error per task, and each garbage
        # collection that this triggers scans every object alive: with a large
        # batch that cost three times the cancellation itself (measured, 200,000 tasks).
        collecting = gc.isenabled()
        gc.disable()
        try:
            with self._lock:
                for handle in handles:
                    previous = handle._state
                    if previous >= SUCCEEDED:
                        continue  # ended meanwhile, or listed twice
                    if (  # queued, never started, nobody waits: end_queued_locked
                        previous == PENDING
                        and handle._started_at is None
                        and handle._waiters is None
                        and not handle._permits
                    ):
                        queued.append(handle)
                        continue
                    ended.append((handle, handle._stop_locked(state)))
                    if previous == RUNNING:
                        running.append(handle)
                if queued:
                    queued, told = _handle.end_queued_locked(queued, state)
                    self._cancelled_queued_locked([*queued, *(handle for handle, _ in told)])
                    ended += told
            self._announce_cancelled(ended)
            if queued and _events.listeners:
                for handle in queued:
                    handle._after_cancel(None)
        finally:
            if collecting:
                gc.enable()
            self._abandoned_all(running)
            self._let_go_of_queued()
        return len(ended) + len(queued)

    def _cancelled_queued_locked(self, handles: list[AsyncHandle[Any]]) -> None:
        """Queued tasks were ended together (:func:`cancel_all`, :func:`time_out_all`): count them as ended."""
        for handle in handles:
            self._settled_locked(handle, True)

    @staticmethod
    def _announce_cancelled(ended: list[tuple[AsyncHandle[Any], Any]]) -> None:
        announced = 0
        try:
            for handle, announce in ended:
                handle._after_cancel(announce)
                announced += 1
        except BaseException:
            # A second Ctrl-C in a callback: still wake everyone who waits, then stop.
            for _, announce in ended[announced:]:
                for waiter in (announce and announce[1]) or ():
                    if waiter.locked():
                        waiter.release()
            raise

    def _abandoned_all(self, handles: list[AsyncHandle[Any]]) -> None:
        """Running tasks ended together (:func:`cancel_all`, :func:`time_out_all`)."""
        for handle in handles:
            self._abandoned(handle)

    def worker_blocks(self) -> None:
        """One of this backend's worker threads starts waiting for other tasks."""

    def worker_unblocks(self) -> None:
        """That wait ended."""

    def places_all_lent(self) -> bool:
        """Whether a worker that blocked now would lend no place: every one this pool may lend is."""
        return False

    def begin_terminate(self) -> None:
        """Start stopping the workers and return at once; :meth:`terminate` waits for them to stop."""

    def terminate(self) -> None:
        """Stop the workers now (after shutdown's wait, or at exit); threads cannot be."""

    def end_threads(self, timeout: float, running_too: bool = True) -> None:
        """After a shutdown stopped the workers: join the threads of this pool that have no task left, for at most ``timeout`` seconds.

        Only the thread pool has such threads (``ThreadBackend.end_threads``);
        a process pool's loop thread is joined by :meth:`terminate`.
        """


class _Wake:
    """An idle waiter (``Backend._idle_waiters``) that puts a ``None`` into a queue, which a held task's admission wakes too."""

    __slots__ = ("_inbox",)

    def __init__(self, inbox: queue.SimpleQueue[None]) -> None:
        self._inbox = inbox

    def release(self) -> None:
        self._inbox.put(None)


class _RetryDue:
    """A deadline-heap entry that starts a task's next attempt instead of timing it out."""

    __slots__ = ("handle",)

    def __init__(self, handle: AsyncHandle[Any]) -> None:
        self.handle = handle

    def _expire(self) -> None:
        self.handle._retry_due()

    def _spent(self) -> bool:
        """Whether its task ended (given up at a shutdown, cancelled): no attempt is due then."""
        return self.handle._state >= SUCCEEDED

    def give_up(self) -> None:
        """Shutdown: end the task with its last error now, rather than at its due time."""
        self.handle._give_up_retrying(SHUT_DOWN)


# Last, as a module (handles import this one first, and find it whole): bound at import, not
# in the call. Imported there, a cancel as the interpreter tore down (an unfinished map's
# close, run by its collection) failed with "ImportError: sys.meta_path is None".
from .. import _handle
