"""Any ``concurrent.futures.Executor`` as a backend: one adapter, every executor.

Data flow::

    submit(handle) --executor.submit(...)--> the executor's future
                                                 | done-callback
    handle settles  <--result / error / cancel---+

The executor does the queueing, the limits of its own and the running; this
adapter only hands it callables and maps each future's end onto the handle, so
handles, collectors, groups, maps, callbacks, metrics and events work as on
the library's own pools.

Two kinds of executor:

* **In this process** (``ThreadPoolExecutor`` and its subclasses, an
  ``mp.Executor`` on threads): the executor runs the handle itself. The task
  starts when a worker of the executor takes it, so timeouts count from there;
  ``report_progress``, ``check_cancelled`` and ``get_current_task_id`` work; a
  task still queued is run inline by a waiter, as on the thread pool.
* **Elsewhere** (processes, sub-interpreters, a cluster): the function and its
  arguments travel as the library pickles them (``@parallel`` functions by
  reference, lambdas and closures by value), the result as the executor does.
  The executor does not say when a task starts, so a task counts as running
  from its submission, and its timeout counts from there too. Progress and
  ``check_cancelled`` do not cross: inside the task they are no-ops.

Cancellation and timeouts map onto the future: ``future.cancel()`` stops a
task the executor has not started. A running task cannot be stopped by a
standard executor: at its timeout or cancellation its handle ends at once and
the call is abandoned (it may run to its end; its result is dropped).

A retry policy's next attempt is sent to the executor as the first was
(``_resume``). The outcome of an attempt that timed out and is retried is
dropped: its future is no longer the handle's.
"""

from __future__ import annotations

import functools
import pickle
import sys
import threading
import time
from concurrent.futures import BrokenExecutor
from typing import TYPE_CHECKING, Any, ClassVar

from .. import _deadlines, _events, _serialization
from .._coroutines import is_coroutine, run_to_end
from .._cpus import usable_cpu_count
from .._remote_errors import CarriedError, described, linked_errors
from .._states import CANCELLED, FAILED, HELD, INLINE, PENDING, RETRY_WAIT, RUNNING, SUCCEEDED, UNCLAIMED
from .._task_context import _local
from ..errors import ShutdownError, TaskCancelledError, TaskError, TaskSerializationError, WorkerCrashedError
from ._base import COROUTINE_CANCELLED, Backend, counted_by_name

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["REFUSALS_SHOWN_FOR", "ExecutorBackend", "call_remotely", "carried", "carried_if_unpicklable"]


#: Seconds ``health()`` reports an executor that refused a task (shut down) as failing every task.
REFUSALS_SHOWN_FOR = 10.0


class ExecutorBackend(Backend):
    """Runs tasks on a ``concurrent.futures.Executor`` that someone else owns.

    Args:
        executor: the executor; it stays the caller's: ``mp.shutdown()`` stops
            sending it tasks (and cancels those it has not started, if asked)
            but never shuts it down.
        in_process: whether the executor runs callables in this process; by
            default, true for thread pools (and not for their sub-interpreter
            subclass).
    """

    name: ClassVar[str] = "executor"
    holds_tasks = True
    #: Elsewhere only (:meth:`timeout_hint`): in this process the executor's thread runs the handle.
    stop_hint = (
        "it was cancelled on its executor if it had not started; a call already "
        "running there cannot be stopped and was abandoned (its result is dropped)"
    )

    def __init__(self, executor: Any, in_process: bool | None = None) -> None:
        super().__init__()
        self._executor = executor
        self._in_process = runs_in_this_process(executor) if in_process is None else in_process
        # Accepted, not ended and not waiting to retry: the executor's future, or the attempt's
        # _Unsent until it gave one.
        self._futures: dict[AsyncHandle[Any], Any] = {}
        # Timed out or cancelled while running (or timed out and retried): the future to cancel, for _abandoned().
        self._abandoning: dict[AsyncHandle[Any], Any] = {}
        # The futures of tasks that ended queued in an executor in this process, for _let_go_of_queued() to cancel.
        self._dropped: list[Any] = []
        # Sent elsewhere: the future of each task's last attempt, until it ends, when
        # the task's code has returned (what cancel_with_timeout waits for).
        self._last_sent: dict[AsyncHandle[Any], Any] = {}
        # Why the executor refused the last task submitted (shut down or closed), and when (time.monotonic());
        # None once one is taken.
        self._refused: tuple[str, float] | None = None
        # Held until their limits admit them (hold()): the call to send each.
        self._held: dict[AsyncHandle[Any], tuple[Any, ...]] = {}
        # The ids of the futures that close(cancel_pending=True) is cancelling now (_cancel_unstarted).
        self._cancelling_unstarted: set[int] = set()
        # Whether its workers send the error of pickling a result as the future's (_result_unsent).
        self._sends_result_errors = sends_result_errors(executor)
        # An mp.Executor's pool, which runs each call in a task of its own, and how (_carry): None for any other executor.
        self._carrier_pool: Backend | None = getattr(executor, "_makeparallel_pool", None)
        self._carrier = getattr(executor, "_makeparallel_carry", None)

    # -- what the runtime asks -------------------------------------------------------

    def info(self) -> dict[str, Any]:
        workers = self.reported_worker_count()  # not under the lock: Dask's may take it to bind a client
        with self._lock:
            return {
                "backend": self.name,
                "executor": repr(self._executor),
                "num_workers": workers,
                "in_process": self._in_process,
                "queued_tasks": self._queued_count_locked(workers),
                "busy_workers": self._busy_count_locked(workers),
                "active_tasks": self._active,
                "closed": self._closed,
                "refusing_tasks": self.refusing(),
            }

    def refusing(self) -> str | None:
        """Why the executor fails every task now, for ``health()``; None while it takes them.

        Learned at the last submission, not from the executor's state: one
        shut down (or a Dask client closed) that is sent no more tasks fails
        none. And only for ``REFUSALS_SHOWN_FOR`` seconds after it, so that a
        program that moved on to another executor, and kept an error that
        holds this one, is not reported for good. While every task failed with
        ``ShutdownError``, health said ok, and a load balancer kept sending
        requests to a replica that failed them all.
        """
        refused = self._refused
        if refused is None or time.monotonic() - refused[1] >= REFUSALS_SHOWN_FOR:
            return None
        return refused[0]

    def queued_by_name(self) -> dict[str, int]:
        """The tasks not started: held for their limits' slots (:meth:`hold`), or queued in the executor.

        A task sent to an executor in this process is pending until one of its
        workers takes it; counting only the held ones made the rest running
        in the metrics while their handles said pending. One sent elsewhere
        is running from its submission, as its handle says: so is one an
        ``mp.Executor`` of processes still has queued, whose pool does not
        count the task that carries it (it read as queued while its handle
        said running).
        """
        with self._lock:
            return counted_by_name(self._unstarted_locked())

    def active_count_beside(self, pools: list[Backend]) -> int:
        """Of the tasks accepted and not ended, those that the pool of an ``mp.Executor`` among ``pools`` does not count too.

        That executor runs each call in a task of its own pool (:meth:`_carry`),
        which counts it as long as it has not ended: ``get_active_task_count()``
        counted each call running there twice. Only those: a task held for its
        limits' slots, waiting to retry, or run inline by a waiter counts here alone.
        """
        if self._carrier_pool is None or self._carrier_pool not in pools:
            return self._active
        with self._lock:
            return self._active - sum(1 for future in self._futures.values() if _carried(future))

    def _unstarted_locked(self) -> list[AsyncHandle[Any]]:
        """The tasks accepted whose handles say pending: held, or queued in an executor in this process."""
        return [handle for handle in self._futures if handle._state == PENDING]

    def _queued_count_locked(self, workers: int) -> int:
        """How many tasks wait to start, for :meth:`info` (``health()``, the pool gauges); ``workers``: the executor's.

        In this process, the unstarted ones. An executor elsewhere does not say
        when it starts a call: there, the held ones and the calls sent and not
        ended beyond its ``workers`` (a call abandoned on a timeout or a cancel
        still holds a worker until it ends). That is exact while the executor
        runs as many calls at once as it has workers and no one else's; without
        it, the info had no queued tasks and ``health()`` said ok while they
        piled up behind busy workers.
        """
        unstarted = len(self._unstarted_locked())
        if self._in_process:
            return unstarted
        return unstarted + max(0, len(self._last_sent) - workers)

    def _busy_count_locked(self, workers: int) -> int:
        """How many of the executor's ``workers`` run this backend's tasks, for :meth:`info` (the pool gauges).

        In this process, the tasks a worker of the executor took and that have
        not ended: not one a waiter runs inline on its own thread. Elsewhere,
        the calls sent and not ended up to ``workers``, as :meth:`_queued_count_locked`
        counts the rest queued: exact on the same terms.

        Only this backend's tasks: the calls others give a shared executor are
        out of sight, so there the count is a lower bound, and the info has no
        idle or live workers, which would be guesses. In this process, a task
        cancelled or timed out while running counts no more, though its code
        holds the worker until its next ``check_cancelled()``.
        """
        if self._in_process:
            return sum(1 for handle in self._futures if handle._state == RUNNING and handle._on_worker != INLINE)
        return min(len(self._last_sent), workers)

    def reported_worker_count(self) -> int:
        """The worker count that :meth:`info` (``health()``, the pool infos) reports."""
        return self.worker_count()

    def worker_count(self) -> int:
        workers = getattr(self._executor, "_max_workers", None)
        return workers if isinstance(workers, int) and workers > 0 else usable_cpu_count()

    def close(self, cancel_pending: bool) -> None:
        with self._lock:
            self._closed = True
            futures = list(self._futures.items()) if cancel_pending else []
        for handle, future in futures:
            if not isinstance(future, _Unsent) and (handle._state == PENDING or not self._in_process):
                self._cancel_unstarted(future)  # an unstarted one is cancelled; its callback ends the handle

    def _cancel_unstarted(self, future: Any) -> None:
        """Cancel ``future`` for ``close(cancel_pending=True)``: its handle ends cancelled by the program, not the executor.

        Its done-callback (:meth:`_future_done`) runs within ``cancel()`` and
        tells this cancel from the executor's own by the mark. Unmarked, the
        handle said "cancelled by its executor <...>" after
        ``mp.shutdown(cancel_pending=True)``, blaming an executor that nobody
        had shut down; it now reads as on the library's own pools. (A future
        whose callbacks run later, elsewhere, finds no mark: it says the executor.)
        """
        with self._lock:
            self._cancelling_unstarted.add(id(future))
        try:
            self._cancel_future(future)
        finally:
            with self._lock:
                self._cancelling_unstarted.discard(id(future))

    # -- submission ------------------------------------------------------------------

    def submit(self, handle: AsyncHandle[Any]) -> None:
        call = self._call_for(handle)
        with self._lock:
            self._refuse_if_closed_locked()
            handle._observer.task_submitted(handle)  # first: a Ctrl-C at its entry leaves nothing counted
            # No Python call from here: a Ctrl-C at one would leave the task counted and not held.
            self._active += 1
            self._futures[handle] = unsent = _Unsent()
            if not self._in_process:  # it starts out of sight: running from now on
                handle._state = RUNNING
                handle._started_at = time.perf_counter()
        try:
            self._send(handle, call, unsent)
        except Exception as error:
            self._refused_as_sent(handle, error)
            raise

    def _refused_as_sent(self, handle: AsyncHandle[Any], error: Exception) -> None:
        """End a task the executor refused as it was sent (shut down, broken): failed, never started.

        Its caller is then raised ``error``. Left to the caller's withdrawal,
        the task was cancelled: the metrics counted a cancellation and
        listeners heard "cancelled", for a task its pool failed before it
        started, which counts as failed (as one held and refused so does,
        :meth:`release_held`). One a waiter runs inline meanwhile is its own.
        """
        handle._ask_breaker(error)
        with self._lock:
            if handle._state >= SUCCEEDED or (self._in_process and handle._state != PENDING):
                return
            handle._started_at = None  # sent out of sight, it was taken to run from its submission
            self._never_ran_locked(handle)
            announce = handle._settle_locked(FAILED, error)
        handle._after_settle(announce)

    def hold(self, handle: AsyncHandle[Any]) -> None:
        """Accept a task over a limit on a running event loop: sent once admitted (:meth:`release_held`).

        Counted as accepted from now on, and ended like a queued task if
        cancelled meanwhile; no waiter runs it inline before its slot.

        Raises:
            ShutdownError: the backend is closed.
            TaskSerializationError: the call cannot be pickled for an executor elsewhere.
        """
        call = self._call_for(handle)
        with self._lock:
            self._refuse_if_closed_locked()
            handle._observer.task_submitted(handle)  # first: a Ctrl-C at its entry leaves nothing counted
            self._active += 1
            self._futures[handle] = _Unsent()
            self._held[handle] = call
            handle._on_worker = HELD

    def release_held(self, handle: AsyncHandle[Any]) -> None:
        """Send a held task to the executor, unless it ended meanwhile; a refusal ends it."""
        with self._lock:
            call = self._held.pop(handle, None)
            if call is None or handle._state != PENDING:
                return
            unsent = self._futures[handle]
            handle._on_worker = UNCLAIMED
            if not self._in_process:  # it starts out of sight, as submit() has it
                handle._state = RUNNING
                handle._started_at = time.perf_counter()
        try:
            self._send(handle, call, unsent)
        except Exception as error:  # shut down or broken meanwhile: nobody to raise it to
            handle._ask_breaker(error)
            self._end(handle, FAILED, error)

    def _resume(self, handle: AsyncHandle[Any]) -> None:
        """Send the next attempt of a task that waited to retry, from a thread of its own.

        Not from the deadline thread that calls this: pickling the call, an
        executor whose submit blocks, or one that runs the call as it is
        submitted (``mp.Executor("sync")``) would hold up every other timeout.
        """
        try:
            threading.Thread(target=self._send_again, args=(handle,), name="makeparallel-retry", daemon=True).start()
        except RuntimeError as error:  # no thread to be had: the task fails with why (never raise here)
            handle._ask_breaker(error)
            self._end(handle, FAILED, error)

    def _send_again(self, handle: AsyncHandle[Any]) -> None:
        """Send the next attempt, as the first was sent; a refusal ends the task.

        The executor shut down or broken during the wait (or the call no
        longer pickles), the task ends as its last attempt did, as at a
        shutdown of makeparallel, the refusal in its note: the refusal's error
        alone hid what the task itself had raised, and counted an attempt that
        never ran.
        """
        unsent = _Unsent()
        if not self._queue_retry(handle, functools.partial(self._accepted_again_locked, unsent=unsent)):
            return
        try:
            self._send(handle, self._call_for(handle), unsent)
        except Exception as error:
            self._next_attempt_refused(handle, f"{type(error).__name__}: {error}")

    def _next_attempt_refused(self, handle: AsyncHandle[Any], why: str) -> None:
        """End a task whose next attempt the executor refused (``why``), unless a waiter runs it here."""
        with self._lock:
            if handle._state >= SUCCEEDED or (self._in_process and handle._state != PENDING):
                return  # cancelled, or a waiter took the queued attempt and runs it itself
            handle._started_at = handle._retry.retried_start  # the attempt refused never started
            self._never_ran_locked(handle)
            announce = handle._end_retries_locked(why)
        handle._after_settle(announce)

    def _accepted_again_locked(self, handle: AsyncHandle[Any], unsent: _Unsent) -> None:
        """Hold the next attempt of a retried task in the place ``unsent``, as ``submit`` holds the first."""
        self._futures[handle] = unsent
        if not self._in_process:
            handle._state = RUNNING
            handle._started_at = time.perf_counter()

    def _send(self, handle: AsyncHandle[Any], call: tuple[Any, ...], unsent: _Unsent) -> None:
        """Give ``call`` (``_call_for(handle)``) to the executor, and follow its future.

        ``unsent`` holds this attempt's place in ``_futures``; the future takes
        it only if nothing else did meanwhile (the task ended, or this attempt
        ran, failed and the next one took its place).

        Raises:
            ShutdownError: the executor is shut down (or its client closed).
            WorkerCrashedError: the executor is broken (``BrokenProcessPool``: a
                worker died earlier), its error chained.
            TypeError: the executor's ``submit`` returned no future.
        """
        try:
            future = self._carry(handle, call)
        except Exception as error:  # the task ends failed (_refused_as_sent, release_held, _send_again)
            if isinstance(error, BrokenExecutor):  # a worker died (or its initializer failed): it refuses every task now
                why = f"{self._executor!r} is broken ({error}); pass a working one as backend="
                self._refused = (why, time.monotonic())
                raise WorkerCrashedError(f"task {handle._id} ({handle.name}) was refused: {why}") from error
            if not self.is_closed_error(error):
                raise
            why = self.refusal(error)
            self._refused = (why, time.monotonic())
            raise ShutdownError(f"task {handle._id} ({handle.name}) was refused: {why}") from error
        if not (callable(getattr(future, "add_done_callback", None)) and callable(getattr(future, "cancel", None))):
            raise TypeError(
                f"{self._executor!r}.submit() returned {future!r}, not a concurrent.futures.Future, so "
                f"task {handle._id} ({handle.name}) cannot be followed; pass an executor that keeps the "
                "Executor contract as backend="
            )
        if self._refused is not None:
            self._refused = None
        with self._lock:
            ended = self._futures.get(handle) is not unsent
            if not ended:
                self._futures[handle] = future
            if not self._in_process:
                self._last_sent[handle] = future
                # This call is the task's code from now on. The attempt it retries (one that
                # timed out) was the last sent until here: ended since the retry was queued,
                # it marked the code as returned, and cancel_with_timeout() waited for nothing.
                handle._code_done = False
        if ended:
            # Cancelled (or timed out) while the executor took it, or run inline by a
            # waiter: the cancel found no future to cancel, so the executor's is cancelled
            # here (a call it already runs is abandoned, its result dropped). Or this
            # attempt ran and the next is queued: cancelling its done future does nothing.
            future.cancel()
        if not self._in_process:
            if _events.listeners:  # before the clock is set: a timeout's "finished" comes after it
                _events.emit("started", handle)
            if handle._timeout is not None:
                _deadlines.schedule(handle, handle._started_at + handle._timeout, weakly=True)  # type: ignore[operator]
        future.add_done_callback(functools.partial(self._future_done, handle))

    def _carry(self, handle: AsyncHandle[Any], call: tuple[Any, ...]) -> Any:
        """``executor.submit(*call)``; to an ``mp.Executor``, a call that carries ``handle``, counted and measured already.

        An ``mp.Executor`` runs each call as a task of its own pool: its
        ``submit`` counted, measured, admitted and announced that task as well
        as ``handle`` (a second metrics record, "ExecutorBackend._run" or
        "call_remotely"; a second slot of the concurrency limit, which under a
        limit of 1 was never free). Its ``_makeparallel_carry`` runs the call
        unseen, as what carries ``handle`` (through its ``submit``, where a
        subclass or the instance overrides it).
        """
        if self._carrier is None:
            return self._executor.submit(*call)
        return self._carrier(handle, *call)

    def timeout_hint(self, is_async: bool) -> str:
        """How a task that timed out is stopped, for its error: in this process, as on the thread pool.

        There the executor's thread runs the handle itself (:meth:`_run`), so its
        ``check_cancelled()`` raises and its coroutine is cancelled; the error
        said that the call could not be stopped, which holds only elsewhere.
        """
        if self._in_process:
            return COROUTINE_CANCELLED if is_async else Backend.stop_hint
        return self.stop_hint

    def _call_for(self, handle: AsyncHandle[Any]) -> tuple[Any, ...]:
        """What to give ``executor.submit``: the handle's runner, or the call to pickle."""
        if self._in_process:
            return (self._run, handle)
        try:
            function = _serialization.dumps_function(handle._fn)
            arguments = _serialization.dumps_in_band((handle._args, handle._kwargs))
        except Exception as error:
            raise TaskSerializationError(
                f"task {handle._id} ({handle.name}) cannot be sent to {self._executor!r}: its "
                f"function or arguments could not be pickled ({type(error).__name__}: {error})"
            ) from error
        return (call_remotely, function, arguments)

    def refusal(self, error: Exception) -> str:
        """Why the executor refused a task, raising ``error``: it is shut down, and what to do."""
        return (
            f"{self._executor!r} is shut down or closed ({error}); "
            "pass a running one as backend= (to @parallel, parallel_map or makeparallel.configure)"
        )

    def is_closed_error(self, error: Exception) -> bool:
        """Whether ``executor.submit`` raised because the executor is shut down."""
        message = str(error)
        return isinstance(error, RuntimeError) and ("shut" in message or "closed" in message)

    def _run(self, handle: AsyncHandle[Any]) -> None:
        """In the executor's worker thread: claim the handle and run it, unless it ended."""
        with self._lock:
            if handle._state != PENDING:
                return  # cancelled while queued, or a waiter ran it inline
            handle._state = RUNNING
        handle._run()

    # -- ends ------------------------------------------------------------------------

    def _future_done(self, handle: AsyncHandle[Any], future: Any) -> None:
        """The executor's future ended: end the handle the same way, if it has not ended."""
        if not self._in_process:
            with self._lock:
                returned = handle in self._last_sent and self._last_sent[handle] is future
                if returned:
                    del self._last_sent[handle]
            if returned:
                handle._code_returned()
        with self._lock:
            if handle not in self._futures or self._futures[handle] is not future:
                return  # the handle ended first (the common case in this process), or a retried attempt's
            del self._futures[handle]
            started = handle._started_at  # this attempt's: it may time out and be retried before _end
        if handle._state >= SUCCEEDED:
            return
        if self._in_process and not future.cancelled() and future.exception() is None:
            return  # _run found it claimed (a waiter runs it inline): it ends there, not here
        if future.cancelled():
            cancellation: BaseException
            if id(future) in self._cancelling_unstarted:  # by close(cancel_pending=True): the program's cancel
                state, cancellation = CANCELLED, handle._cancellation()
            else:
                state, cancellation = self.cancelled_by_executor(handle, future)
            handle._ask_breaker(cancellation)  # (Dask's is a ShutdownError where its client closed)
            self._end(handle, state, cancellation, started)
            return
        error: BaseException | None
        try:
            error = future.exception()
        except BaseException as raised:  # a cancellation that future.cancelled() did not report
            error = raised
        if error is None:
            self._end(handle, SUCCEEDED, future.result(), started)
        else:
            error = self.translate_error(handle, error)
            self._end(handle, handle._failed(error), error, started)  # retried where the task's policy says

    def _end(self, handle: AsyncHandle[Any], state: int, value: Any, started: float | None = None) -> None:
        """End an unfinished handle from outside its run (queued or out of sight).

        ``started``: the start of the attempt whose outcome this is, which ends
        nothing unless that attempt is still the one under way. It can time out
        and be retried between its future's end and this call (its outcome is
        read and its error asked of the retry policy outside the lock): its late
        error, settled on the next attempt, retried that one as it ran, and both
        ran at once. The task's circuit breaker judged a failure's ``value``
        before (``AsyncHandle._ask_breaker``): the settle only records it.
        """
        with self._lock:
            if handle._state >= SUCCEEDED:
                return
            if started is not None and (handle._state == RETRY_WAIT or handle._started_at is not started):
                return  # the attempt timed out and was retried meanwhile: its outcome is dropped
            if handle._started_at is None and state != CANCELLED:
                handle._started_at = time.perf_counter()  # ran where we could not see it
            self._never_ran_locked(handle)
            announce = handle._settle_locked(state, value)
        handle._after_settle(announce)

    def _never_ran_locked(self, handle: AsyncHandle[Any]) -> None:
        """The task ends from outside its run: if no attempt of it runs, say its code is done.

        None runs where the attempt under way is still queued in this process
        (PENDING), or where no future sent elsewhere is left unended
        (``_last_sent``): its future cancelled by the executor or its owner, its
        next attempt refused by an executor shut down or broken during the
        wait, a held task refused. Only a cancel marked such a task's code done
        (``_cancel_locked``): ended so, it read as running to
        ``cancel_with_timeout()``, which sat out its whole timeout and returned False.
        """
        unsent = handle._state == PENDING if self._in_process else handle not in self._last_sent
        if unsent:
            handle._code_returned()

    def cancelled_by_executor(self, handle: AsyncHandle[Any], future: Any) -> tuple[int, BaseException]:
        """How a handle ends whose ``future`` (its last attempt's) the executor, or its owner, cancelled."""
        error = TaskCancelledError(f"task {handle._id} ({handle.name}) was cancelled by its executor {self._executor!r}")
        return CANCELLED, error

    def translate_error(self, handle: AsyncHandle[Any], error: BaseException) -> BaseException:
        """The error the handle gives for what the future raised.

        A broken process pool (``BrokenProcessPool``, loky's ``TerminatedWorkerError``)
        becomes ``WorkerCrashedError``, its cause chained; an error the worker
        sent pickled by the library (:func:`call_remotely`) is unpickled; the
        executor's failure to pickle the result (:meth:`_result_unsent`)
        becomes ``TaskSerializationError``, its cause chained, as on the
        process backend; anything else stays itself.
        """
        if isinstance(error, CarriedError):
            return error.unwrapped()
        process = sys.modules.get("concurrent.futures.process")
        if process is not None and isinstance(error, process.BrokenProcessPool):
            crashed = WorkerCrashedError(
                f"a worker process of {type(self._executor).__name__} died while it held task "
                f"{handle._id} ({handle.name}): {error}"
            )
            crashed.__cause__ = error
            crashed._lost_elsewhere = True  # type: ignore[attr-defined]  # for a map (_process_chunks.after_crash)
            return crashed
        if not self._in_process and self._result_unsent(error):
            failure = TaskSerializationError(
                f"the result of task {handle._id} ({handle.name}) could not be pickled to send it back "
                f"from the worker of {self._executor!r}: {described(error)}. Return picklable data, "
                "or use backend='thread', which needs no pickling"
            )
            failure.__cause__ = error
            return failure
        return error

    def _result_unsent(self, error: BaseException) -> bool:
        """Whether ``error``, which did not come carried, is the executor's failure to pickle the task's result.

        Every error a call raises comes carried (:func:`call_remotely`; on a
        Dask worker, only one that can travel as itself does not, and that is
        an ``Exception``). So a ``SystemExit`` or ``KeyboardInterrupt`` that
        did not is not the task's: a result whose ``__reduce__`` raised it,
        which the worker of ``ProcessPoolExecutor`` or loky sent as the
        future's error, and ``get()`` raised it in the caller, ending the
        program. ``asyncio.CancelledError`` is a cancellation (of a Dask
        fetch). Those workers send the error of pickling a result that way
        whatever it is (a lock's ``TypeError``): for them any error but their
        own reports (a crash, a cancel, a shutdown: classes of
        ``concurrent.futures`` or loky) is that one, as the process backend
        says of a result it cannot pickle.
        """
        if not isinstance(error, Exception):
            # (Read as running_loop() reads it: half imported on another thread, it has no CancelledError yet.)
            cancelled = getattr(sys.modules.get("asyncio"), "CancelledError", None)
            return cancelled is None or not isinstance(error, cancelled)
        if not self._sends_result_errors:
            return False
        return type(error).__module__.partition(".")[0] not in ("concurrent", "loky") and not isinstance(error, TaskError)

    # -- hooks the handle calls -----------------------------------------------------

    def _holds(self, handle: AsyncHandle[Any]) -> bool:
        # Accepted and not ended: a submission that raised after this cancels it. One
        # waiting to retry has no place in _futures (_schedule_retry_locked).
        with self._lock:
            return handle._state < SUCCEEDED and (handle._state == RETRY_WAIT or handle in self._futures)

    def _steal(self, handle: AsyncHandle[Any]) -> bool:
        if not self._in_process:
            return False
        with self._lock:
            if handle._state != PENDING or handle._on_worker == HELD:
                return False
            handle._state = RUNNING
            handle._on_worker = INLINE  # an interrupted waiter tells its claim by it
            # The call runs here: the executor's future is no longer the task's (a _send still
            # under way finds its place taken, and cancels the future it gets).
            future = self._futures.get(handle)
            self._futures[handle] = _Unsent()
        if future is not None and not isinstance(future, _Unsent):
            self._cancel_future(future)  # the executor drops the call: see _let_go_of_queued()
        return True

    def _settled_locked(self, handle: AsyncHandle[Any], was_pending: bool) -> None:
        self._held.pop(handle, None)
        future = self._pop_future_locked(handle)
        if future is not None:
            if was_pending:
                self._dropped.append(future)  # queued in the executor: _let_go_of_queued() follows
            elif handle._state >= CANCELLED:
                self._abandoning[handle] = future  # the handle calls _abandoned() next
        super()._settled_locked(handle, was_pending)

    def _pop_future_locked(self, handle: AsyncHandle[Any]) -> Any:
        """Take ``handle``'s place in ``_futures``: the executor's future there, or None (none, or not given yet)."""
        future = self._futures.pop(handle, None)
        return None if isinstance(future, _Unsent) else future

    def _schedule_retry_locked(self, handle: AsyncHandle[Any], due: float) -> None:
        """The attempt that failed is no longer the task's: its future leaves ``_futures`` as it waits to retry.

        One that timed out is dropped if the executor has not started it: the
        handle calls ``_abandoned()`` next. Kept in ``_futures`` through the
        wait, it was taken for the task's own by a cancel (or a shutdown) during
        the wait, which kept it in ``_abandoning`` for good: no ``_abandoned()``
        follows the end of a task that waits to retry.
        """
        future = self._pop_future_locked(handle)
        if handle._retry.timed_out and future is not None:
            self._abandoning[handle] = future
        super()._schedule_retry_locked(handle, due)

    def _abandoned(self, handle: AsyncHandle[Any], force: bool = False) -> None:
        with self._lock:
            future = self._abandoning.pop(handle, None)
        if future is not None:
            self._cancel_future(future)

    def _let_go_of_queued(self) -> None:
        """Cancel the executor's futures of the tasks that ended while it had them queued.

        Left there, the call stayed in the executor until a worker reached it
        and found it ended: an ``mp.Executor``'s pool counted the task that
        carries it as active and queued all that while (in
        ``get_active_task_count()``, ``wait_until_idle()``, the function's
        metrics and the pool's info), and a ``ThreadPoolExecutor`` kept it in
        its queue. Cancelled outside the lock: the future's done-callback
        (:meth:`_future_done`) takes it.
        """
        if not self._dropped:
            return
        with self._lock:
            dropped, self._dropped = self._dropped, []
        for future in dropped:
            self._cancel_future(future)

    def _cancel_future(self, future: Any) -> None:
        """Ask the executor to drop ``future``; a standard one cannot once it runs."""
        future.cancel()


def _carried(future: Any) -> bool:
    """Whether ``future`` (a value of ``_futures``) is that of an ``mp.Executor``'s task carrying the handle, not ended.

    That task (``_carry``) is counted by the executor's pool until it ends,
    which it does after the handle it ran (or found claimed, and left to the
    waiter that runs it inline).
    """
    carrier = getattr(future, "handle", None)
    return carrier is not None and carrier._state < SUCCEEDED


class _Unsent:
    """The place of a task's attempt in ``_futures`` until the executor gives its future: one per attempt.

    An attempt can run, fail and be retried before its ``submit`` returns; its
    sender then finds the next attempt's place, not its own, and leaves it.
    With one placeholder (None) for all, it took the next attempt's place,
    whose future was then cancelled unstarted: the task stayed pending for good.
    """

    __slots__ = ()


def runs_in_this_process(executor: Any) -> bool:
    """Whether ``executor`` runs callables on threads of this process."""
    declared = getattr(executor, "_makeparallel_in_process", None)  # an mp.Executor says
    if isinstance(declared, bool):
        return declared
    thread = sys.modules.get("concurrent.futures.thread")
    if thread is None or not isinstance(executor, thread.ThreadPoolExecutor):
        return False
    interpreter = sys.modules.get("concurrent.futures.interpreter")
    return interpreter is None or not isinstance(executor, interpreter.InterpreterPoolExecutor)


def sends_result_errors(executor: Any) -> bool:
    """Whether ``executor``'s workers send the error of pickling a call's result as the future's.

    ``ProcessPoolExecutor``'s and loky's do.
    """
    process = sys.modules.get("concurrent.futures.process")
    if process is not None and isinstance(executor, process.ProcessPoolExecutor):
        return True
    loky = sys.modules.get("loky.process_executor")
    return loky is not None and isinstance(executor, loky.ProcessPoolExecutor)


@functools.lru_cache(maxsize=256)
def _load_function(data: bytes) -> Any:
    return pickle.loads(data)


def call_remotely(function: bytes, arguments: bytes) -> Any:
    """Run one task's call in the executor's worker; the function is unpickled once per worker.

    Function and arguments travel as the library pickles them (``@parallel``
    functions by reference, lambdas and closures by value), whatever pickler
    the executor uses; the result travels as the executor pickles it. An
    error the call raised (unpickling its function or arguments included)
    travels in a :class:`CarriedError` (:func:`carried`), pickled as the
    process backend pickles errors: the pickler of ``ProcessPoolExecutor``
    and loky sends an exception without its ``__cause__`` and
    ``__context__``. A Dask worker sends an error with its chain and its
    traceback's frames (with tblib): there, one that can travel as itself
    does (:func:`_sent_whole_by_dask`). An ``async def`` function's coroutine
    runs to its end there, on the worker thread's own event loop, as on the
    process backend: a coroutine object cannot travel back.

    No task is current while it runs, as on another process: an executor that
    runs calls on the submitting thread (one for debugging, say) would
    otherwise have the call take the task running there for its own, and a
    map chunk sent so from inside another would stream its results as that
    one's.
    """
    here = _local.__dict__
    outer = here.pop("task", None)
    try:
        args, kwargs = pickle.loads(arguments)
        fn = _load_function(function)
        value = fn(*args, **kwargs)
        return run_to_end(value, None) if is_coroutine(value) else value
    except BaseException as error:
        if _sent_whole_by_dask(error):
            raise
        error_carried = carried(error)
    finally:
        if outer is not None:
            here["task"] = outer
    raise error_carried  # outside the except clause: its context, the error, would be pickled with it


def _sent_whole_by_dask(error: BaseException) -> bool:
    """Whether this runs on a Dask worker, which sends ``error`` with its chain and traceback, as itself.

    Carried, it lost the frames of its traceback, which Dask sends as
    objects; so only one that cannot travel as itself is carried there
    (:func:`_travels_as_itself`). Asked only when a call raised.
    """
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:  # not in a task a Dask worker runs
        return False
    return _travels_as_itself(error)


def carried(error: BaseException) -> CarriedError:
    """``error`` in a :class:`CarriedError`, pickled by the library with its chain, its traceback as text.

    One that even the library cannot pickle (a ``__reduce__`` that raises)
    is carried as a ``TaskError`` that describes it. Costs a pickling of the
    error and a formatting of its traceback, and only when a call raised.
    """
    import traceback

    try:
        data = _serialization.dumps_in_band(error)
    except BaseException as unpicklable:  # noqa: BLE001  # SystemExit too: a __reduce__ that calls sys.exit()
        data = _serialization.dumps_in_band(
            TaskError(f"the task raised {described(error)} (it cannot be pickled: {described(unpicklable)})")
        )
    return CarriedError(data, "".join(traceback.format_exception(error)), described(error))


def carried_if_unpicklable(error: BaseException) -> CarriedError | None:
    """``error`` in a :class:`CarriedError` if it cannot travel as itself (:func:`_travels_as_itself`), else None."""
    if _travels_as_itself(error):
        return None
    return carried(error)


def _travels_as_itself(error: BaseException) -> bool:
    """Whether an executor that runs calls elsewhere sends ``error`` intact with its own pickler.

    Sending is pickling and unpickling: an error pickle dumps but cannot
    rebuild (an ``__init__`` that takes other arguments than its ``args``)
    failed as the executor's parent unpickled it, which broke a
    ``ProcessPoolExecutor`` or loky pool. An error that is no ``Exception``
    (``SystemExit``, ``KeyboardInterrupt``) does not: a Dask worker dies of
    one its task raised, as many times as the scheduler allows. Nor one whose
    ``str()`` raises: a Dask worker describes the error so as it sends it, and
    sent that ``str()``'s error instead. Nor one of whose chain any class has
    its own ``__setattr__`` (a frozen dataclass's, which refuses every
    attribute): a Dask worker pickles an error with tblib, whose unpickling
    sets the chain of each through it, and Dask sent a bare ``Exception``
    with its ``repr()`` in place of the error (of the error it caused too).
    Plain pickle, tried here, sets none of them, and rebuilt one that has
    no state.
    """
    if not isinstance(error, Exception) or _sets_its_own_attributes(error):
        return False
    try:
        str(error)
        pickle.loads(pickle.dumps(error))
    except BaseException:  # noqa: BLE001  # SystemExit too: a __reduce__ that calls sys.exit()
        return False
    return True


def _sets_its_own_attributes(error: BaseException) -> bool:
    """Whether the class of ``error``, or of one in its chain or among a group's members, has its own ``__setattr__``."""
    return any(type(linked).__setattr__ is not BaseException.__setattr__ for linked in linked_errors(error))

