"""The handle of one task: its state machine, its outcome and everything that watches it.

State machine::

    PENDING --claim--> RUNNING --return/raise--> SUCCEEDED | FAILED
       |  ^               |
       |  |               +--raise/deadline, its retry policy agrees--> RETRY_WAIT
       |  +---------------------- the wait is over: queued again <---------+
       |                  |                                                |
       +--cancel()--------+--cancel()-----------------------------------+--+--> CANCELLED
                          +--deadline--> TIMED_OUT

Every transition happens under the lock of the backend that owns the task, so
exactly one of "the runner finished", "the deadline passed" and "someone cancelled"
wins. A task that loses (it timed out or was cancelled while running) goes on until
it returns or calls ``check_cancelled()``; its late outcome is dropped.

Hot path: a handle is one object with ``__slots__``. Nothing is allocated for
waiting until somebody actually blocks on an unfinished task (``_waiters``), and
nothing for callbacks or metadata until they are used.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable
from contextvars import Context
from types import CoroutineType, FrameType, FunctionType, TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from . import _deadlines, _events, _fork_child, _held_on_loop, _interruptible
from ._backends._base import BlockingWait, pool_of_this_thread
from ._coroutines import (
    attempt_cancels,
    check_the_loop_of,
    end_those_of_closed_loops,
    on_callers_loops,
    run_here,
    running_loop,
    start_on_running_loop,
)
from ._notes import add_note
from ._states import (
    CANCELLED,
    FAILED,
    HELD,
    INLINE,
    PENDING,
    RETRY_WAIT,
    RUNNING,
    STATE_NAMES,
    SUCCEEDED,
    TIMED_OUT,
    UNCLAIMED,
)
from ._task_context import CancellationPoint, _local, blocked, wake_waits_of
from ._validation import UNRUN_CODE as _UNRUN_CODE
from ._validation import (
    check_seconds,
    check_wait_timeout,
    refuse_unfitting_call,
    refuse_unused_call,
)
from ._yielding_lock import wait_while_held
from .errors import (
    ShutdownError,
    TaskCancelledError,
    TaskError,
    TaskSerializationError,
    TaskTimeoutError,
)

if TYPE_CHECKING:
    from ._backends._base import Backend
    from ._decorators import GuardedTaskSpec
    from ._retry import Attempts

__all__ = ["AsyncHandle", "TaskObserver", "cancel_all", "cancel_and_stop", "stop_if_running", "time_out_all"]

# Covariant: a handle only gives its result out, so an ``AsyncHandle[int]`` is an
# ``AsyncHandle[object]``, and handles of functions with different result types
# mix in one list given to gather, wait or as_completed.
T_co = TypeVar("T_co", covariant=True)

# Callback kinds, kept with each callback in one list. _ON_DONE: the caller's, through
# add_done_callback, which hands it the task's outcome; _ON_DONE_OWN: the library's own,
# which reads what it needs itself (a collector's, an await's, a group's).
_ON_COMPLETE, _ON_ERROR, _ON_PROGRESS, _ON_DONE, _ON_DONE_OWN = range(5)
# Where a callback runs, for the error that refuses one.
_ENDS_OR_REPORTS = "the thread that ends the task or reports its progress"

# A registered callback, with its kind: for _ON_PROGRESS, the callback's _ProgressListener.
_Registered = tuple[int, Any]
_Announcement = tuple[list[_Registered] | None, list[threading.Lock] | None]
# What _settle_locked returns when the task did not end: it waits to retry, or
# the outcome was a stale attempt's (timed out, retried, and returned late).
_RETRYING: _Announcement = (None, None)
_DROPPED: _Announcement = (None, None)

_log = logging.getLogger("makeparallel")
_now = time.perf_counter
_run_in = Context.run  # called unbound: context.run made a bound method per task
_allocate_lock = threading.Lock
_task_ids = itertools.count(1)
#: Whether a handle became an ``_UnreadFailure`` since the start: exit then collects garbage
#: once, so that one dropped in a reference cycle logs (``_runtime._collect_failures_dropped_unread``).
failed_unread = False
# ``_origin`` until the task fails, or its error (one the library made) is first handed out.
_UNSET: Any = object()
# ``_origin`` of a failure not handed out yet is a 1-tuple of the traceback it ended with (no
# traceback is a tuple): the one slot says both where to raise from and whether the note was added.
#: Seconds that the code of tasks cancelled by :func:`cancel_and_stop` has to stop by
#: itself (a map chunk stops between slices of about a millisecond) before it is forced.
STOP_GRACE = 0.1
#: The keyword arguments of every task called without any; never changed.
NO_KWARGS: dict[str, Any] = {}


class TaskObserver(Protocol):
    """Who learns of each task's end: the decorated function's runtime record."""

    name: str
    #: The function's ``__name__``, for ``handle.get_name()``.
    function_name: str
    #: Measures tasks on threads to notice GIL-bound work, or ``None``.
    cpu_watch: Any
    #: Whether the function is known to return coroutines (set once one came back).
    is_async: bool
    #: The retry policy (a ``Retry``), or ``None``.
    retry: Any
    #: The circuit breaker (a ``CircuitBreaker``), or ``None``.
    breaker: Any
    #: Whether listeners are told nothing of the tasks: true only for those that run another task, told already.
    unseen: bool
    #: Whether the tasks are the library's own (a map's chunks, an executor's carriers), whose outcomes
    #: it reads or drops itself: a failure of one that nobody read is not logged as its handle is collected.
    owned: bool

    def task_submitted(self, handle: AsyncHandle[Any]) -> None:
        """Called once per accepted task, under the backend lock: keep it short."""

    def task_finished(self, handle: AsyncHandle[Any]) -> None:
        """Called once per task that ``tasks_ended`` does not count, under the backend lock."""

    def tasks_ended(self, lock: threading.Lock, state: int, count: int) -> None:
        """``count`` queued tasks ended together as ``state``, before they started (under ``lock``).

        ``CANCELLED``, or ``TIMED_OUT``: the chunks of a map that met its timeout.
        """

    def task_withdrawn(self, handle: AsyncHandle[Any]) -> None:
        """A task its backend refused before accepting it ended failed (under no lock)."""

    def task_retried(self, handle: AsyncHandle[Any], first: bool) -> None:
        """Called when an attempt failed and another is scheduled, under the backend lock."""

    def retries_ran(self, handle: AsyncHandle[Any]) -> None:
        """Called as an attempt of a retried task fails, and as one ends, under the backend lock: count the retries that ran."""


class _ProgressListener:
    """An ``on_progress`` callback of a running task, and who calls it now (see ``AsyncHandle._deliver_progress``).

    ``busy`` and ``pending`` are read and written under the backend's lock.
    """

    __slots__ = ("busy", "callback", "pending")

    def __init__(self, callback: Callable[[float], object]) -> None:
        self.callback = callback
        self.busy = False  # a thread calls callback, or is about to
        self.pending: float | None = None  # the report recorded since, which that thread calls it with next


class AsyncHandle(Generic[T_co]):
    """The handle of a task submitted to run in parallel.

    You get one from calling a ``@parallel`` function. It gives the result or the
    error, progress, metadata and cancellation. It speaks two vocabularies: the
    makeparallel one (``get``, ``is_ready``, ``try_get``...) and the one of
    ``concurrent.futures.Future`` (``result``, ``done``, ``exception``...). It can
    be awaited from asyncio code.

    Errors:
        An exception raised by the task comes back from ``get()`` as itself, same
        type and traceback, with a note naming the task id, function, elapsed time
        and metadata. The library's own outcomes are ``TaskTimeoutError`` and
        ``TaskCancelledError``. An error nobody read (``get()``, ``exception()``,
        ``await``, a ``gather``, an ``on_error`` or ``add_done_callback``
        callback) by the time the handle is garbage collected is logged once,
        at ERROR on the ``makeparallel`` logger with its traceback; a
        cancellation never is.

    Callbacks:
        ``on_complete``, ``on_error``, ``on_progress`` and ``add_done_callback`` run
        once, on the thread that completes the task (or reports the progress),
        before anyone blocked in ``get()`` is woken; for a timeout, on a thread of
        their own, so that a slow callback delays no other task's timeout.
        Registered after the event,
        they run at once on the registering thread. A callback that raises
        anything, ``SystemExit`` and other ``BaseException`` included, is logged
        with its traceback on the ``makeparallel`` logger and harms nothing else:
        the other callbacks run and waiters are woken. Only a
        ``KeyboardInterrupt`` on the main thread is raised again, after that.

    Thread-safety:
        Every method may be called from any thread.
    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_backend",
        "_callbacks",
        "_code_done",
        "_context",
        "_event_order",
        "_finished_at",
        "_fn",
        "_id",
        "_kwargs",
        "_metadata",
        "_observer",
        "_on_worker",
        "_origin",
        "_payload",
        "_permits",
        "_priority",
        "_progress",
        "_progress_message",
        "_retry",
        "_started_at",
        "_state",
        "_stop_event",
        "_submitted_at",
        "_timeout",
        "_value",
        "_waiters",
    )

    _payload: Any  # the pickled call, set by the process backend only
    _retry: Attempts  # set at the first retry only: reading it costs nothing before
    _event_order: Any  # set as "submitted" is told, where a listener listens (``_events``)

    def __init__(
        self,
        fn: Callable[..., T_co],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        context: Context,
        observer: TaskObserver,
        backend: Backend,
        priority: int = 0,
        timeout: float | None = None,
    ) -> None:
        self._id = next(_task_ids)
        self._fn: Callable[..., T_co] | None = fn
        self._args: tuple[Any, ...] | None = args
        # No keyword arguments: the shared empty dict, so that a queued task keeps
        # one object fewer alive for the garbage collector to scan.
        self._kwargs: dict[str, Any] | None = kwargs or NO_KWARGS
        # An empty context (the usual case outside asyncio) is not kept: the task
        # gets a fresh empty one when it starts, so a queued task holds one object
        # fewer for the garbage collector (and 72 bytes less).
        self._context: Context | None = context if context else None
        self._observer = observer
        self._backend = backend
        self._priority = priority
        self._timeout = timeout
        self._state = PENDING
        self._value: Any = None
        self._submitted_at = _now()
        self._started_at: float | None = None
        self._finished_at: float | None = None
        self._waiters: list[threading.Lock] | None = None
        self._callbacks: list[_Registered] | None = None
        self._progress: float | None = None
        self._progress_message: str | None = None
        self._metadata: dict[str, Any] | None = None
        # The traceback the task's error had as the task failed with it, or, for an error the
        # library made, as it was first handed out: each raise of it starts from there
        # (_error_to_raise). _UNSET until then; a 1-tuple until a failure is first handed out.
        self._origin: Any = _UNSET
        self._on_worker = UNCLAIMED  # who holds it, where a backend says (_states)
        self._permits: tuple[Any, ...] = ()
        # The task's code has returned, or will never run (see cancel_with_timeout).
        self._code_done = False
        self._stop_event: _CodeStopped | None = None

    # -- results -----------------------------------------------------------------

    def get(self, timeout: float | None = None) -> T_co:
        """Wait for the task and return its result, or raise its error.

        A task that is still queued when you ask for it without a timeout is run
        right here, on this thread: waiting for it could not be faster, and a task
        waiting for the tasks it submitted can never deadlock the pool.

        Args:
            timeout: the longest to wait, in seconds; ``None`` waits as long as it
                takes.

        Returns:
            The task's return value.

        Raises:
            TaskTimeoutError: the wait gave up (the task goes on; the message
                says if it ended just as the wait gave up, its outcome then
                ready for the next call), or the task ran past its own timeout.
            TaskCancelledError: the task was cancelled.
            TypeError: ``timeout`` is not a number of seconds or ``None``.
            ValueError: ``timeout`` is negative or NaN.
            RuntimeError: the wait could never end here: the task is async and
                this thread's event loop runs, or its coroutine runs on the loop
                of the code that called it (the ``"sync"`` backend called from a
                coroutine), which this thread ran and which is not running now;
                or it is a process task and this is its pool's loop thread (a
                process task's callback).
            ShutdownError: the task's coroutine ran on the loop of the code that
                called it, and that loop closed before the coroutine ended.
            Exception: whatever the task raised, as itself.
            KeyboardInterrupt, SystemExit: the task raised it, as any error of its
                own; one raised as the task ran here, inline on the main thread
                (a thread backend's task, with no timeout of its own), is also
                taken as meant for the program (see :meth:`wait`).
        """
        if timeout is not None:
            timeout = check_wait_timeout(timeout)
        # Read once: a worker may settle the task between two reads, and a task read as
        # running, then as ended, was taken for a failure (its result raised as its error).
        state = self._state
        if state == SUCCEEDED:  # the common case first: collecting ended tasks
            return self._value  # type: ignore[no-any-return]
        if state < SUCCEEDED:
            self._wait_for_end(timeout)
            if self._state == SUCCEEDED:
                return self._value  # type: ignore[no-any-return]
        raise self._error_to_raise()

    def result(self, timeout: float | None = None) -> T_co:
        """``concurrent.futures`` name of :meth:`get`."""
        return self.get(timeout)

    def try_get(self) -> T_co | None:
        """The result if the task succeeded, ``None`` while it runs; raises its error."""
        if not self.is_ready():
            return None
        return self.get()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the task and return its error, or ``None`` if it succeeded.

        As in ``concurrent.futures``, a cancelled task raises ``TaskCancelledError``
        here instead of returning it. A task that ran past its own timeout
        returns its ``TaskTimeoutError``.

        Args:
            timeout: the longest to wait, in seconds; ``None`` waits as long as it
                takes.

        Returns:
            The exception the task raised (as :meth:`get` would raise it), its
            ``TaskTimeoutError`` or another error of the library that ended it,
            or ``None`` if it succeeded.

        Raises:
            TaskTimeoutError: the wait gave up before the task ended (the task
                goes on).
            TaskCancelledError: the task was cancelled.
            TypeError: ``timeout`` is not a number of seconds or ``None``.
            ValueError: ``timeout`` is negative or NaN.
            RuntimeError: the wait could never end here, as for :meth:`get`.
            KeyboardInterrupt, SystemExit: without a timeout on the main thread,
                a thread backend's task still queued, with no timeout of its own,
                runs here, and one of these that it raised is taken as meant for
                the program (Ctrl-C, a signal handler's ``sys.exit``): it is
                raised again (the task failed with it). A process task, or one
                with a timeout of its own, is left to a worker: its error is
                returned as any other.
        """
        if timeout is not None:
            timeout = check_wait_timeout(timeout)
        if self._state < SUCCEEDED:
            self._wait_for_end(timeout)
        if self._state == SUCCEEDED:
            return None
        if self._state == CANCELLED:
            raise self._error_to_raise()
        return self._error_to_raise()  # not with the frames of the last get() that raised it

    def wait(self, timeout: float | None = None, *, timeout_secs: float | None = None) -> bool:
        """Block until the task ends or ``timeout`` seconds pass; return whether it ended.

        Never raises the task's error, but for a ``KeyboardInterrupt`` or
        ``SystemExit`` of a queued thread task it ran on the main thread (below).
        ``timeout_secs=`` is the makeparallel 0.2 name of ``timeout``.

        Raises:
            TypeError: both ``timeout`` and ``timeout_secs`` were given.
            TypeError, ValueError: the one given is not a number of seconds
                >= 0 or ``None``; the error names it as it was given.
            RuntimeError: the wait could never end here, as for :meth:`get`.
            KeyboardInterrupt, SystemExit: without a timeout on the main thread,
                a thread backend's task still queued, with no timeout of its own,
                runs here, and one of these that it raised is taken as meant for
                the program (Ctrl-C, a signal handler's ``sys.exit``): it is
                raised again (the task failed with it). A process task, or one
                with a timeout of its own, is left to a worker: this returns.
        """
        if timeout_secs is not None:
            if timeout is not None:
                raise TypeError("give wait() either timeout or timeout_secs (its 0.2 name), not both")
            timeout = check_wait_timeout(timeout_secs, "timeout_secs")
        else:
            timeout = check_wait_timeout(timeout)
        if self._state >= SUCCEEDED or (self._id < _fork_child.boundary and self._the_parents()):
            return True
        if timeout is None and self._run_here_if_queued():
            return True
        self._refuse_to_block_a_loop()
        if self._on_worker == HELD:  # waiting for its slots: on a loop's thread, see _wait_beside_held
            loop = running_loop()
            if loop is not None:
                return self._wait_beside_held(timeout, loop)
        if self._observer.retry is not None:  # woken as an attempt is queued again: not the end
            return self._wait_retrying(timeout)
        return self._block(timeout)

    # -- state ---------------------------------------------------------------------

    def is_ready(self) -> bool:
        """Whether the task has ended, in any way."""
        return self._state >= SUCCEEDED or (self._id < _fork_child.boundary and self._the_parents())

    def done(self) -> bool:
        """``concurrent.futures`` name of :meth:`is_ready`."""
        return self._state >= SUCCEEDED or (self._id < _fork_child.boundary and self._the_parents())

    @property
    def _condition(self) -> Any:
        """Refuses ``concurrent.futures.wait()`` and ``as_completed()``, which take the lock of this name of each future.

        They failed with "'AsyncHandle' object has no attribute '_condition'",
        which says nothing of what to do. Still an ``AttributeError``, so that
        tools looking for attributes (``hasattr``, ``inspect.getmembers``) see
        none, as before.
        """
        raise AttributeError(
            "makeparallel handles are not concurrent.futures.Future objects, which concurrent.futures.wait() "
            "and as_completed() take: use mp.wait(handles, ...) or mp.as_completed(handles, ...), "
            "which take the same arguments and return_when constants"
        )

    def running(self) -> bool:
        """Whether the task is running now (not while a process pool holds it for a worker still starting)."""
        return self._seen_state() == RUNNING

    def _seen_state(self) -> int:
        """The task's state as its user sees it: pending while a process pool holds it for a worker still starting."""
        state = self._state
        if state == RUNNING:
            with self._backend._lock:
                state = self._state
                if state == RUNNING and self._backend._holds_locked(self):
                    state = PENDING
        return state

    def cancelled(self) -> bool:
        """Whether the task was cancelled."""
        return self._state == CANCELLED

    def is_cancelled(self) -> bool:
        """Whether the task was cancelled."""
        return self._state == CANCELLED

    @property
    def status(self) -> str:
        """``"pending"``, ``"running"``, ``"waiting to retry"``, ``"succeeded"``, ``"failed"``, ``"cancelled"`` or ``"timed out"``."""
        return STATE_NAMES[self._seen_state()]

    @property
    def attempts(self) -> int:
        """How many attempts the task made: 0 while first queued, more than 1 after retries.

        An attempt its circuit breaker refused counts (it failed at once with
        ``CircuitOpenError``), as the note on the task's final error lists it:
        a call refused outright, never retried, made 1.
        """
        record: Attempts | None = getattr(self, "_retry", None)
        if record is None:
            return int(self._started_at is not None)
        # Each attempt sets a new start time: one that differs from the retried attempt's started since.
        return record.retries + int(self._started_at is not record.retried_start)

    def _queue_wait(self) -> float | None:
        """Seconds the attempt that started last waited for a worker; ``None`` if none started.

        Counted from the task's submission; for a later attempt, from the moment
        its retry was due: the wait to retry, and the attempts before, are no
        queueing. An attempt queued but not started yet leaves the one before it
        the last started.
        """
        started = self._started_at
        if started is None:
            return None
        record: Attempts | None = getattr(self, "_retry", None)
        if record is None:
            return started - self._submitted_at
        if started is record.retried_start:  # no attempt started since the one retried last
            return record.retried_wait
        return started - record.queued_at

    def get_task_id(self) -> int:
        """The task's id, unique in this process."""
        return self._id

    @property
    def name(self) -> str:
        """The name of the task's function, as metrics know it."""
        return self._observer.name

    def get_name(self) -> str:
        """The ``__name__`` of the task's function (makeparallel 0.2's name for it).

        :attr:`name` is the name metrics know, by default the ``__qualname__``.
        """
        return self._observer.function_name

    def get_timeout(self) -> float | None:
        """The task's own timeout in seconds, or ``None`` if it has none."""
        return self._timeout

    def elapsed_time(self) -> float:
        """Seconds from submission to the end of the task, or to now while it runs."""
        end = self._finished_at
        return (end if end is not None else _now()) - self._submitted_at

    # -- cancellation ----------------------------------------------------------------

    def cancel(self, force: bool = False) -> bool:
        """Cancel the task; return whether it was still unfinished.

        Args:
            force: on the process backend, terminate the worker process running
                the task (a new one takes its place), also when the handle
                already ended (cancelled without ``force``, timed out) but the
                task's code still runs there. Threads cannot be killed, so
                elsewhere it changes nothing.

        Returns:
            Whether the task was still unfinished: ``False`` for one that had
            ended, even where ``force`` stopped the code it left running.

        Cancellation:
            A queued task never runs. A running task is asked to stop: the handle
            ends at once as cancelled, and the task's next ``check_cancelled()``
            raises so that it can return (Python cannot stop a thread from outside).
            Unlike ``concurrent.futures``, this works on running tasks too.

        Raises:
            TypeError: ``force`` is not a ``bool``; nothing is cancelled then.
        """
        _check_force(force)
        if self._id < _fork_child.boundary and self._the_parents():
            return False
        backend = self._backend
        with backend._lock:
            previous = self._state
            announce = self._cancel_locked() if previous < SUCCEEDED else None
        if previous >= SUCCEEDED:
            # Ended (cancelled without force, timed out) with its code still running: a
            # plain cancel() and then a forced one, the escalation, left a task that never
            # calls check_cancelled() holding its worker for good.
            if force and not self._code_done:
                backend._abandoned(self, True)
            return False
        self._after_settle(announce)
        if previous == RUNNING:
            wake_waits_of(self)
            backend._abandoned(self, force)
        elif previous == PENDING:
            backend._let_go_of_queued()
        return True

    def cancel_with_timeout(self, timeout_secs: float, force: bool = False) -> bool:
        """Cancel the task, then wait up to ``timeout_secs`` for its code to stop.

        :meth:`cancel` ends the handle at once, but a running task's code goes on
        until it returns or reaches ``check_cancelled()``. This waits for that too,
        also for a task that already ended as timed out; for a task sent to an
        executor elsewhere (its processes, Dask), until its call there ended.

        Args:
            timeout_secs: the longest to wait, in seconds.
            force: as for :meth:`cancel`: on the process backend, terminate the
                worker process running the task, also when the handle already
                ended (timed out or cancelled) but its code still runs.

        Returns:
            Whether the task's code is no longer running (it returned, or never
            started): ``False`` if it still runs after ``timeout_secs``.

        Raises:
            TypeError, ValueError: ``timeout_secs`` is not a number >= 0, or
                ``force`` not a ``bool``.
        """
        timeout_secs = check_seconds(timeout_secs, "timeout_secs")
        _check_force(force)
        with self._backend._lock:
            if self._stop_event is None:
                self._stop_event = _CodeStopped()
            stopped = self._stop_event
        self.cancel(force)  # (forced, it also stops code that runs on after the handle ended)
        # The runner sets _code_done, then reads _stop_event; this set _stop_event,
        # then reads _code_done: one of the two sees the other's write.
        if self._code_done:
            return True
        task = getattr(_local, "task", None)  # inside a task, its own cancel or timeout ends the wait
        with CancellationPoint(task, stopped.interrupt, None):
            return stopped.wait(timeout_secs, task)

    def _cancel_locked(self) -> _Announcement | None:
        return self._stop_locked(CANCELLED)

    def _stop_locked(self, state: int) -> _Announcement | None:
        """End the unfinished task as ``state``: ``CANCELLED``, or ``TIMED_OUT`` with its map (:func:`time_out_all`)."""
        if self._state == PENDING:
            self._code_done = True  # it will never run
        if self._timing_out():  # its own timeout came first: its worker is being stopped (_expire)
            return self._settle_locked(TIMED_OUT, self._value)
        return self._settle_locked(state, self._stop_error(state))

    def _stop_error(self, state: int) -> TaskCancelledError | TaskTimeoutError:
        """The error of this task's end as ``state``: its cancellation, or its map's timeout."""
        if state == CANCELLED:
            return self._cancellation()
        return TaskTimeoutError(f"task {self._id} ({self._observer.name}) timed out: the map it ran for reached its timeout")

    def _cancellation(self) -> TaskCancelledError:
        """The error of this task's cancellation."""
        return TaskCancelledError(f"task {self._id} ({self._observer.name}) was cancelled")

    # -- progress and metadata ----------------------------------------------------

    def get_progress(self) -> float:
        """The last progress the task reported (0.0 before any), 1.0 once it succeeded."""
        if self._state == SUCCEEDED:
            return 1.0
        progress = self._progress
        return 0.0 if progress is None else progress

    def get_progress_message(self) -> str | None:
        """The message of the last progress report, if it had one."""
        return self._progress_message

    def set_metadata(self, key: str, value: Any) -> None:
        """Attach a value to the task; it appears in the note of the task's error.

        Raises:
            TypeError: ``key`` is not a ``str``.
        """
        if not isinstance(key, str):
            raise TypeError(f"metadata key must be a str, got {key!r} of type {type(key).__name__}")
        with self._backend._lock:
            if self._metadata is None:
                self._metadata = {}
            self._metadata[key] = value

    def get_metadata(self, key: str, default: Any = None) -> Any:
        """The metadata value stored under ``key``, or ``default``."""
        metadata = self._metadata
        return default if metadata is None else metadata.get(key, default)

    def get_all_metadata(self) -> dict[str, Any]:
        """A copy of all the task's metadata."""
        with self._backend._lock:
            return dict(self._metadata or {})

    # -- callbacks -----------------------------------------------------------------

    def on_complete(self, callback: Callable[[T_co], object]) -> AsyncHandle[T_co]:
        """Call ``callback(result)`` once, if and when the task succeeds. Returns the handle.

        Raises:
            TypeError: ``callback`` is not callable, or is a class or async
                (see :meth:`on_progress`), or cannot take one argument.
        """
        refuse_unused_call("on_complete", callback, "as the task succeeds", "function(result)", _ENDS_OR_REPORTS)
        refuse_unfitting_call("on_complete's callback", callback, "result", "as the task succeeds")
        self._register(_ON_COMPLETE, callback)
        return self

    def on_error(self, callback: Callable[[BaseException], object]) -> AsyncHandle[T_co]:
        """Call ``callback(error)`` once, if and when the task fails, times out or is cancelled.

        Raises:
            TypeError: ``callback`` is not callable, or is a class or async
                (see :meth:`on_progress`), or cannot take one argument.
        """
        refuse_unused_call("on_error", callback, "as the task fails", "function(error)", _ENDS_OR_REPORTS)
        refuse_unfitting_call("on_error's callback", callback, "error", "as the task fails")
        self._register(_ON_ERROR, callback)
        return self

    def on_progress(self, callback: Callable[[float], object]) -> AsyncHandle[T_co]:
        """Call ``callback(fraction)`` at each progress report; at once with the last one if one came already.

        A success ends the calls with 1.0, as :meth:`get_progress` then says,
        whenever the callback was added: once, where the task's last report
        said 1.0 already. Added once the task ended, it is called at once with
        what :meth:`get_progress` says: 1.0 if the task succeeded, else its last
        report, and not at all where none came.

        Raises:
            TypeError: ``callback`` is not callable, or calling it makes what
                nothing would use, as ``progress=`` refuses it: an object (a
                class), a coroutine or an async generator (an ``async def``
                function, an object whose ``__call__`` is one), or a generator
                (a function that yields); also behind ``functools.partial``;
                or its signature cannot take one argument (one written in C,
                as a list's ``append``, or with no signature to read is taken).
        """
        refuse_unused_call(
            "on_progress", callback, "at each progress report", "function(fraction)", _ENDS_OR_REPORTS
        )
        refuse_unfitting_call("on_progress's callback", callback, "fraction", "at each progress report")
        self._register(_ON_PROGRESS, callback)
        return self

    def add_done_callback(self, fn: Callable[[AsyncHandle[T_co]], object]) -> None:
        """Call ``fn(handle)`` once when the task ends, however it ends.

        A callback of asyncio's own, added on a thread whose event loop runs, is
        called on that loop, as asyncio calls a future's: ``asyncio.wait(handles)``
        (Python 3.11+) adds one to each handle, and it is not thread-safe. A task
        whose coroutine runs on another loop is looked at meanwhile, as an await
        looks: that loop's close ends it with ``ShutdownError``.

        Raises:
            TypeError: ``fn`` is not callable, or is an ``async def`` function
                or a generator function, whose call only makes a coroutine or
                a generator that nothing awaits or iterates, or that cannot
                take one argument. (Only a function is looked at, not a method or
                an object, where :meth:`on_complete` looks at any callable: the
                library's own collectors add a callback to each task.)
            RuntimeError: ``fn`` is asyncio's, and the task's coroutine runs on a
                stopped loop that this thread ran (as ``await handle`` raises).
        """
        # asyncio's is a plain function (asyncio.wait's _on_completion): the library's
        # own collectors pass bound methods, and pay one type check (a coroutine's cancel, a
        # function, skips this: _add_own_done_callback).
        if type(fn) is FunctionType:
            if fn.__code__.co_flags & _UNRUN_CODE:
                refuse_unused_call("add_done_callback", fn, "as the task ends", "function(handle)", _ENDS_OR_REPORTS)
            refuse_unfitting_call("add_done_callback's fn", fn, "handle", "as the task ends")
            if type(fn.__module__) is str and fn.__module__.partition(".")[0] == "asyncio":
                from ._await import on_its_loop  # asyncio is imported already

                fn = on_its_loop(fn, self)
        self._register(_ON_DONE, fn)

    def remove_done_callback(self, fn: Callable[[AsyncHandle[T_co]], object]) -> int:
        """Remove every ``fn`` added with :meth:`add_done_callback` that has not run; return how many.

        As ``asyncio.Future.remove_done_callback``: ``asyncio.wait(handles)``
        (Python 3.11+) removes its callback from the handles not done when it returns.
        """
        with self._backend._lock:
            registered = [callback for kind, callback in self._callbacks or () if kind == _ON_DONE]
        removed = 0
        for callback in registered:  # compared outside the lock: == may be the user's code
            if callback == fn and self._forget_done_callback(callback):
                removed += 1
            elif getattr(callback, "on_its_loop_of", None) == fn and self._forget_done_callback(callback):
                cast(Any, callback).removed()  # add_done_callback's _await._OnItsLoop
                removed += 1
        return removed

    # -- protocol --------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, T_co]:
        if not self.is_ready():
            if getattr(_local, "task", None) is self:  # its coroutine, on its worker's own loop
                self._refuse_to_wait_for_itself()
            from ._await import wait_for_end  # asyncio only once somebody waits

            yield from wait_for_end(self)
        return self._awaited_result()

    def _awaited_result(self) -> T_co:
        """:meth:`get`, for a task that ended, from an await: a ``StopIteration`` or ``asyncio.CancelledError`` of the task becomes a ``RuntimeError`` naming it.

        No await can pass a ``StopIteration`` on (PEP 479): Python made it
        "generator raised StopIteration", raised from this library's code. A
        task's own ``asyncio.CancelledError`` (asyncio code it ran raised it),
        passed on, looked like the cancellation of the awaiting coroutine:
        ``except Exception`` let it through, and a ``TaskGroup`` or
        ``asyncio.gather`` took that coroutine as cancelled, where nothing
        cancelled it (as ``asyncio.to_thread`` passes it on). A ``TaskTimeoutError``
        is made an ``asyncio.TimeoutError`` too (``_await.asyncio_timeout``): on
        Python 3.10 that is a class apart, which ``except asyncio.TimeoutError``
        around the await names.
        """
        try:
            return self.get()
        except TaskTimeoutError as error:
            from ._await import asyncio_timeout  # (loaded: something awaits)

            asyncio_timeout(error)
            raise
        except StopIteration as error:
            raise RuntimeError(
                f"task {self._id} ({self.name}) raised StopIteration, which no await can pass on (PEP 479); "
                "it is this error's cause, and handle.get() raises it as itself. In the function, "
                "catch it, or give next() a default: next(iterator, None)"
            ) from error
        except BaseException as error:
            from asyncio import CancelledError  # (loaded: something awaits)

            if not isinstance(error, CancelledError):
                raise
            raise RuntimeError(
                f"task {self._id} ({self.name}) raised asyncio.CancelledError, which an await would pass on as "
                "the cancellation of the awaiting coroutine; nothing cancelled the task or that coroutine. "
                "The CancelledError is this error's cause, and handle.get() raises it as itself"
            ) from error

    def __bool__(self) -> bool:
        raise TypeError(
            "an AsyncHandle has no truth value: use handle.is_ready() to ask whether "
            "the task ended, or handle.get() for its result"
        )

    def __reduce__(self) -> Any:
        # A handle is its task's one link to the pool that runs it: a copy (copy.copy
        # makes one from this) was never ended by the pool, and a wait on a queued
        # copy ran the task a second time, dropping the original's queue entry.
        raise TypeError(
            f"task {self._id} ({self.name}) cannot be pickled or copied: its handle belongs to the "
            "process that submitted it. Pass its result (handle.get()) instead"
        )

    def __repr__(self) -> str:
        # The raw state: a repr takes no lock, wherever it is made (status may take the backend's).
        return f"<AsyncHandle task={self._id} fn={self.name} {STATE_NAMES[self._state]}>"

    # -- engine side: running --------------------------------------------------------

    def _run(self) -> None:
        """Run the claimed task on this thread and record its outcome.

        On the main thread, a ``KeyboardInterrupt`` or ``SystemExit`` from the task
        is recorded and then raised again: signals land there, so it is most likely
        Ctrl-C (or a signal handler's ``sys.exit``) meant for the caller running the
        task inline. On any other thread no signal lands: every ``BaseException``
        is the task's own error, as when a worker runs it, so a task's wait for a
        child it ran inline ends as if a worker had run the child.
        """
        state, value, started = self._execute(_local.__dict__)
        if state == RUNNING:
            return  # a coroutine, started on the event loop running on this thread
        # Judged already (_execute asked the predicates, as a worker's run does): not
        # through _finish, which asked them again, calling the user's predicates twice.
        self._settle_judged(state, value, started)
        if (
            state == FAILED
            and isinstance(value, (KeyboardInterrupt, SystemExit))
            and threading.current_thread() is threading.main_thread()
        ):
            self._outcome_taken()  # raised to the program here: no error lost
            raise value

    def _execute(self, here: dict[str, Any]) -> tuple[int, Any, float | None]:
        """Call the task's function on this thread; return the state and value it ends with.

        And, for a timed task with a retry policy, when the attempt started (else
        ``None``): a retry of it that is claimed or starts before the outcome is settled
        makes it stale, which only the settle, under the lock, can tell (``_settle_locked``).
        Always three items, passed on one by one: a call with ``*outcome`` cost a
        worker about 5% of its time per no-op task (CPython 3.11).

        ``here``: this thread's task-context slots (``_local.__dict__``, what
        ``current_task()`` reads): the task is current there while it runs,
        then the one it ran inside of (a wait ran it inline), if any, again.
        A worker looks the dict up once, not a thread-local attribute twice per task.
        """
        outer = here.get("task")
        self._started_at = started = _now()
        if _events.listeners:  # before the clock is set: a timeout's "finished" comes after it
            here["task"] = self  # current for its listeners too (a log line they write names it)
            try:
                _events.emit("started", self)
            except BaseException:  # a Ctrl-C in a listener: the task is not left current on this thread
                here["task"] = outer
                raise
        if self._timeout is not None:  # (only a timed attempt can be late, and end as its retry runs)
            self._code_done = False  # the attempt retried may have ended since this one was queued
            _deadlines.schedule(self, started + self._timeout, weakly=True)
        on_loop = False  # the code goes on as an asyncio task of the running loop
        context = self._context
        if context is None:  # its caller's context was empty
            context = self._context = Context()
        value: Any
        # Current only now, just before the try that sets it back: no call in between, where
        # Ctrl-C could land (a C call's return) and leave it current for good. Its waits would
        # then take the thread for a task that was cancelled, and raise (CancellationPoint).
        here["task"] = self
        try:
            args, kwargs = self._args, self._kwargs
            if kwargs:
                value = _run_in(context, self._fn, *args, **kwargs)  # type: ignore[arg-type, misc]
            elif args:
                value = _run_in(context, self._fn, *args)  # type: ignore[arg-type]
            else:  # no argument: no call through a tuple
                value = _run_in(context, self._fn)  # type: ignore[arg-type]
            if type(value) is CoroutineType:  # is_coroutine(), inlined: no subclass of it exists
                state, value = self._run_coroutine(value)
                on_loop = state == RUNNING
            else:
                state = SUCCEEDED
        except BaseException as error:
            state, value = self._failed(error), error
        finally:
            here["task"] = outer
            # Not where a retry of this attempt (it timed out) started since: that one's
            # code still runs. It said so, and cancel_with_timeout() waited for nothing.
            if not on_loop and self._started_at is started:
                self._code_done = True
                if self._stop_event is not None:
                    self._stop_event.set()
        if self._started_at is not started:
            # Timed out, and a retry started since: this outcome is stale. Its start goes with
            # it: the settle tells the backend that this late attempt's worker is free again.
            return RUNNING, None, started
        if self._timeout is not None and self._observer.retry is not None:
            return state, value, started
        return state, value, None

    def _failed(self, error: BaseException) -> int:
        """FAILED, or RETRY_WAIT where the retry policy wants another attempt.

        The policy's ``on`` may be the user's predicate: it is asked here, outside
        every lock; attempts and time are counted under the lock, at the settle.
        So is a circuit breaker's (``_ask_breaker``).
        """
        self._ask_breaker(error)
        retry = self._observer.retry
        return RETRY_WAIT if retry is not None and retry.retries(error) else FAILED

    def _ask_breaker(self, error: BaseException) -> None:
        """Have the circuit breaker, if any, judge ``error`` here, before a settle with it takes the backend's lock.

        The settle records that answer. Every end with an error asks this first:
        an attempt's, a timeout's, and one the library makes as the task ends (a
        slot or an executor refused at shutdown), whose predicate, asked under
        the lock, waited for that lock for good if it called the library, and
        held up the pool and the shutdown with it.
        """
        observer = self._observer
        if observer.breaker is not None:
            cast("GuardedTaskSpec", observer).judge(self, error)

    def _code_returned(self) -> None:
        """The task's code ended elsewhere (a worker process, a loop): wake ``cancel_with_timeout``."""
        self._code_done = True
        if self._stop_event is not None:
            self._stop_event.set()

    def _run_coroutine(self, coroutine: Any) -> tuple[int, Any]:
        """Run what an async function returned: on this thread's own loop, or the running one.

        On the running loop the coroutine ends after this attempt returned: its end
        comes with the attempt's start (``_finish_from_loop``), which tells a late one.
        """
        self._observer.is_async = True  # learned, for functions that are not ``async def``
        context = self._context
        if context is None:
            # The task ended (cancelled, timed out) as its function made the coroutine, and dropped
            # its context: none of it runs, as asyncio cancels a coroutine that has not started.
            # Unclosed, it warned "never awaited" as it was collected (an error under -W error).
            coroutine.close()
            raise TaskCancelledError(f"the coroutine of task {self._id} was cancelled")
        loop = running_loop()
        if loop is None:
            return SUCCEEDED, context.run(run_here, coroutine, self)
        started = self._started_at  # this attempt's, as _execute set it just before

        def finish(ok: bool, value: Any) -> None:
            self._finish_from_loop(started, ok, value)

        context.run(start_on_running_loop, loop, coroutine, self, finish)
        return RUNNING, None

    def _finish_from_loop(self, started: float | None, ok: bool, value: Any) -> None:
        """The coroutine of the attempt that started at ``started`` ended on its loop.

        Only the attempt under way marks the task's code as returned (as in
        ``_execute``), and the settle drops a late attempt's outcome
        (``_settle_locked``): an attempt that timed out and was retried goes on
        until it returns, as its retry runs on another thread, and its end is
        not the retry's.
        """
        if self._started_at is started:
            self._code_returned()
        self._finish(SUCCEEDED if ok else FAILED, value, started)

    def _finish(self, state: int, value: Any, started: float | None = None) -> None:
        """Settle an attempt's outcome that arrived from elsewhere (a worker process, a loop), judging a failure first."""
        if state == FAILED:
            state = self._failed(value)
        self._settle_judged(state, value, started)

    def _settle_judged(self, state: int, value: Any, started: float | None = None) -> None:
        """Settle an attempt's outcome whose failure the retry policy and breaker judged already (``_failed``)."""
        lock = self._backend._lock
        if lock.locked():
            wait_while_held(lock)
        with lock:  # the main thread may be here (a task run inline): see _yielding_lock
            if self._state != RUNNING:
                return  # it timed out or was cancelled while running
            announce = self._settle_locked(state, value, started)
        if announce is not None or _events.listeners:
            self._after_settle(announce)

    def _expire(self) -> None:
        """The deadline passed: end the handle if the task is still running.

        A backend that stops the task first (a process worker, killed) has the
        handle timed out once what the task wrote before it was stopped has been
        written (:meth:`_time_out_stopped`), or its grace period is over: this
        is called again then. A waiter woken before saw the error while the
        output was still on its way, and it went to whatever ``sys.stdout`` was
        by the time it came (the next task's ``redirect_stdout``).
        """
        if self._timing_out():
            self._time_out_stopped()  # the grace is over, what the task wrote or not
            return
        backend = self._backend
        error = None
        record: Attempts | None = getattr(self, "_retry", None)
        if (
            self._observer.breaker is not None
            and self._state == RUNNING
            and _now() >= self._started_at + self._timeout  # type: ignore[operator]
            and (record is None or self._started_at is not record.retried_start)  # (see below)
        ):  # its predicate is asked outside the lock, as in _failed, and checked again under it
            error = self._timeout_error()
            self._ask_breaker(error)
        with backend._lock:
            if self._state != RUNNING or _now() < self._started_at + self._timeout:  # type: ignore[operator]
                return  # ended, or this deadline was an earlier attempt's
            record = getattr(self, "_retry", None)
            if record is not None and self._started_at is record.retried_start:
                return  # an earlier attempt's, which failed: its retry is claimed, not started (its own deadline comes)
            if error is None:
                error = self._timeout_error()
            retry = self._observer.retry
            grace = None
            if retry is not None and retry.retries(error) and self._retry_later_locked(error, timed_out=True):
                announce: _Announcement | None = _RETRYING
            else:
                grace = backend._stops_before_timing_out_locked(self)
                if grace is None:
                    announce = self._settle_locked(TIMED_OUT, error)
                else:
                    self._value = error  # (_timing_out)
        if grace is not None:
            _deadlines.schedule(self, _now() + grace, weakly=True)  # times it out if the backend has not by then
            backend._abandoned(self)
            return
        self._after_settle_aside(announce)
        wake_waits_of(self)  # (retried: the attempt is over, its handle not)
        if announce is _RETRYING:
            cancel_coroutine = attempt_cancels.pop(self, None)
            if cancel_coroutine is not None:  # the late attempt is a coroutine on a worker thread's loop
                cancel_coroutine()
            backend._abandoned(self, True)  # stop the late attempt where a backend can
            return
        backend._abandoned(self)

    def _time_out_stopped(self) -> None:
        """Time the task out, its backend having stopped it at its deadline (:meth:`_expire`).

        The backend calls it once the output the stopped task wrote before it
        ended has been written; the deadline thread at the end of the grace
        period, whatever came of it. The task may have ended otherwise
        meanwhile (cancelled, or its result came as it was stopped: that is
        dropped, the task timed out), and the second call does nothing.
        """
        lock = self._backend._lock
        if lock.locked():
            wait_while_held(lock)
        with lock:  # (as in _settle_judged: the main thread may be here)
            if not self._timing_out():
                return
            announce = self._settle_locked(TIMED_OUT, self._value)
        self._after_settle_aside(announce)
        wake_waits_of(self)

    def _timing_out(self) -> bool:
        """Whether the task met its timeout and times out once its backend stopped it (:meth:`_expire`).

        Its ``TaskTimeoutError`` waits in ``_value`` meanwhile, which a running
        task has no other use for: a slot of its own made every handle 8 bytes larger.
        """
        return self._state == RUNNING and self._value is not None

    def _spent(self) -> bool:
        """Whether the task ended: its deadline's :meth:`_expire` does nothing then (:func:`._deadlines.end`)."""
        return self._state >= SUCCEEDED

    def _timeout_error(self) -> TaskTimeoutError:
        """The error of the attempt under way, past its timeout."""
        # An async task's coroutine is cancelled where the pool runs it here: advice to call
        # check_cancelled() was wrong for it.
        hint = self._backend.timeout_hint(self._observer.is_async)
        return TaskTimeoutError(
            f"task {self._id} ({self.name}) timed out after {self._timeout:g} s; "
            f"{hint}. Raise the timeout if the task needs longer"
        )

    def _settle_locked(self, state: int, value: Any, started: float | None = None) -> _Announcement | None:
        """Record the end; return the callbacks to run and the waiters to wake, if any.

        ``state`` RETRY_WAIT: the attempt failed and its policy would retry; it
        does if attempts, time and the backend allow (then ``_RETRYING``), else the
        task fails. RUNNING, or ``started`` given and not the start of the attempt
        under way: a stale attempt's outcome, dropped (``_DROPPED``). So is the
        outcome of the attempt retried last (it timed out): its retry may be
        claimed, RUNNING again, and not have set its own start yet. Settled
        then, the timed-out attempt's outcome ended the task, and the retry
        claimed was never run.
        """
        if started is not None:
            record: Attempts | None = getattr(self, "_retry", None)
            if started is not self._started_at or (record is not None and started is record.retried_start):
                # A timed-out attempt's, which ended as its retry was claimed or started.
                if record is not None and record.late_on_workers:
                    self._backend._late_attempt_returned_locked(self, started)
                return _DROPPED
        if state < SUCCEEDED:
            if state == RUNNING:
                return _DROPPED
            if self._retry_later_locked(value):
                return _RETRYING
            state = FAILED
        was_pending = self._state == PENDING
        # The value first: get() reads the state without the lock, then the value.
        self._value = value
        if state >= FAILED:  # (one test, as for a failure alone: a success pays nothing more)
            if state == FAILED:
                # Its traceback now: another task that raised the same error (its get()) has it
                # raised again from that one's own, and this one's first read would list that reader.
                traceback = value.__traceback__
                self._origin = (traceback,)
                if traceback is not None and traceback.tb_frame.f_code is _EXECUTE:
                    _clear_frames_that_ran_it(traceback)
            if state != CANCELLED:
                self._log_if_dropped_unread()  # before the state: a reader that sees the end may take it
        self._state = state
        self._finished_at = _now()
        # Drop the references the task held, so a kept handle keeps nothing alive.
        self._fn = self._args = self._kwargs = self._context = self._payload = None
        self._backend._settled_locked(self, was_pending)
        self._observer.task_finished(self)
        callbacks = self._callbacks
        waiters = self._waiters
        if callbacks is None and waiters is None:
            return None  # nobody to tell: the common case stores nothing more
        self._callbacks = self._waiters = None
        return callbacks, waiters

    def _after_cancel(self, announce: _Announcement | None) -> None:
        """What follows a cancellation made in bulk, if anyone is to hear of it: its waits inside too."""
        wake_waits_of(self)
        if announce is not None or _events.listeners:
            self._after_settle(announce)

    def _after_settle(self, announce: _Announcement | None) -> None:
        """Run callbacks, wake waiters, tell listeners: everything after the end."""
        if announce is not None:
            callbacks, waiters = announce
            if callbacks is None and waiters is None:  # not ended: it waits to retry, or a stale outcome
                if announce is _RETRYING and _events.listeners:
                    record = self._retry
                    _events.emit("retry", self, attempt=len(record.failures), error=record.last_error, wait=record.wait)
                return
            self._announce(callbacks, waiters)
        if _events.listeners:
            _events.emit("finished", self)

    # -- engine side: retrying -------------------------------------------------------

    def _retry_later_locked(self, error: BaseException, timed_out: bool = False, refused: bool = False) -> bool:
        """Schedule the next attempt if attempts, time and the backend allow; under the lock.

        ``timed_out``: the attempt that failed with ``error`` timed out (a task
        given up on afterwards ends timed out, as one whose attempts ran out).
        ``refused``: its circuit breaker refused that attempt, which never ran.
        """
        if self._state != RUNNING:
            return False
        retry = self._observer.retry
        now = _now()
        record = getattr(self, "_retry", None)
        if record is None:
            from ._retry import Attempts  # the first retry of this task: nothing loads before

            started = self._started_at
            record = self._retry = Attempts(started if started is not None else now, queued_at=self._submitted_at)
        attempt = len(record.failures) + 1
        record.failures.append((attempt, type(error).__name__, now - record.first_started))
        if attempt > 1:  # a retry's attempt, which ran: counted now, not as it was scheduled
            self._observer.retries_ran(self)
        record.last_error = error
        record.timed_out = timed_out
        record.refused = refused
        if attempt >= retry.attempts:
            return False
        if self._backend._closed:
            from ._backends._base import SHUT_DOWN

            record.stopped = SHUT_DOWN
            return False
        left = None if retry.timeout is None else retry.timeout - (now - record.first_started)
        wait = retry._wait_after(attempt, error, left)
        if wait is None or record.out_of_time(retry.timeout, now, wait):
            return False
        record.wait = wait
        record.due = now + wait
        record.retries += 1
        record.retried_wait = self._queue_wait()
        record.queued_at = record.due
        record.retried_start = self._started_at
        record.holds_permit = False
        if self._context is not None:  # a timed-out attempt may still run in it: one context, one thread
            self._context = self._context.copy()
        self._state = RETRY_WAIT
        self._observer.task_retried(self, attempt == 1)
        self._backend._schedule_retry_locked(self, record.due)  # (it reads who ran the attempt that failed)
        self._on_worker = UNCLAIMED  # no worker holds it now
        return True

    def _queued_again_locked(self) -> list[threading.Lock] | None:
        """The next attempt is queued (under the lock): return the waiters to wake, so they may run it."""
        self._state = PENDING
        self._code_done = False  # the code runs again: cancel_with_timeout waits for this attempt
        waiters, self._waiters = self._waiters, None
        return waiters

    def _retry_due(self) -> None:
        """The wait is over: queue the next attempt (called by the deadline thread)."""
        if self._state == RETRY_WAIT and self._admit_retry():
            self._backend._resume(self)

    def _admit_retry(self) -> bool:
        """Whether the next attempt may start: its circuit breaker, if any, admits it.

        A refused attempt fails at once with ``CircuitOpenError``: the task waits
        to retry again if its policy says so, else it ends.
        """
        breaker = self._observer.breaker
        if breaker is None:
            return True
        admitted_in = breaker.admit()
        if not isinstance(admitted_in, int):
            self._refused_again(admitted_in)
            return False
        with self._backend._lock:
            waiting = self._state == RETRY_WAIT
            if waiting:
                self._retry.holds_permit = True  # its cancel from now on gives the permit back
                cast("GuardedTaskSpec", self._observer).permit_taken(self, admitted_in)  # a breaker's observer
        if not waiting:  # cancelled as it was admitted
            breaker.release(admitted_in)
        return waiting

    def _refused_again(self, error: BaseException) -> None:
        """A circuit breaker refused this attempt: retry later if the policy names the error, else fail."""
        with self._backend._lock:
            if self._state != RETRY_WAIT:
                return
            self._state = RUNNING  # an attempt that started and failed at once
            self._started_at = _now()
            retry = self._observer.retry
            if retry is not None and retry.retries(error) and self._retry_later_locked(error, refused=True):
                announce: _Announcement | None = _RETRYING
            else:
                announce = self._settle_locked(FAILED, error)
        self._after_settle_aside(announce)

    def _reject(self, error: BaseException) -> None:
        """End a task that was never submitted (its circuit breaker refused it) with ``error``.

        Its code never runs: ``cancel_with_timeout()`` sat out its whole timeout
        waiting for it, then said it still ran.
        """
        self._code_done = True
        self._state = FAILED
        self._value = error
        self._finished_at = _now()
        self._fn = self._args = self._kwargs = self._context = None

    def _refused_outright(self, error: BaseException) -> None:
        """End a call its circuit breaker refused, not to be retried, with ``error``: one attempt, failed at once.

        As each refused attempt of a retried task counts (``_refused_again``):
        ``attempts`` said 0 for it, as for a task never tried.
        """
        self._reject(error)
        self._started_at = self._finished_at
        self._log_if_dropped_unread()

    def _interrupted_unsubmitted(self) -> None:
        """End as cancelled a task a Ctrl-C interrupted before any backend had it: as it was told submitted, or as it was held.

        Counted submitted and cancelled, and told "finished", as a task the
        interrupted submission's backend held is cancelled (``withdraw``).
        """
        self._code_done = True
        self._state = CANCELLED
        self._value = self._cancellation()
        self._finished_at = _now()
        self._fn = self._args = self._kwargs = self._context = None
        self._observer.task_withdrawn(self)
        if getattr(self, "_event_order", None) is not None:  # told "submitted" (else no listener heard of it)
            _events.emit("finished", self)

    def _withdrawn(self, error: BaseException) -> None:
        """End a task whose submission raised ``error``, where its backend refused it.

        A backend raises ``ShutdownError`` or ``TaskSerializationError`` before
        it accepts a task; anything else (a Ctrl-C) may land once it did, and
        the backend then ends the task as it ends any. Listeners told it was
        submitted are told it finished (failed): else an exporter that counts
        the tasks in flight counted it for good. The metrics count it the same,
        submitted and failed, as they count a task an executor given as
        ``backend=`` refused: they counted none, and after a shutdown they and
        the events told of different tasks.
        """
        if not isinstance(error, (ShutdownError, TaskSerializationError)):
            return
        self._reject(error)
        self._observer.task_withdrawn(self)
        if getattr(self, "_event_order", None) is not None:
            _events.emit("finished", self)

    def _the_parents(self) -> bool:
        """Whether this is a task of a process that forked this one; it has ended here then, failed if unfinished there.

        Asked first by whatever waits on the task, asks whether it ended, adds
        a callback or cancels it (``_fork_child``). Its waiters and callbacks
        are the parent's: dropped, not run.
        """
        if self._id >= _fork_child.boundary or self._id == _fork_child.running_here:
            return False
        if self._state < SUCCEEDED:
            self._value = TaskError(
                f"task {self._id} ({self.name}) was unfinished when process {_fork_child.owner(self._id)} "
                "forked this one (or its parent): it runs in that process, and its result reaches no "
                "other. Wait for a task in the process that submitted it"
            )
            self._origin = None  # a failure of no code of its own here: nothing to note
            self._finished_at = _now()
            self._fn = self._args = self._kwargs = self._context = self._payload = None
            self._callbacks = self._waiters = None
            self._state = FAILED  # last: a thread that sees it ended finds the error there
        return True

    def _give_up_retrying(self, why: str) -> None:
        """The backend cannot run another attempt (``why``: it shut down): end with the last one's outcome."""
        with self._backend._lock:
            if self._state != RETRY_WAIT:
                return
            announce = self._end_retries_locked(why)
        self._after_settle_aside(announce)

    def _end_retries_locked(self, why: str) -> _Announcement | None:
        """End as the attempt that failed last did (failed, or timed out), no other to come (``why``); under the lock."""
        record = self._retry
        record.stopped = why
        if record.holds_permit:  # its circuit breaker admitted the attempt that never ran
            record.holds_permit = False
            cast("GuardedTaskSpec", self._observer).release_permit(self)
        self._state = RUNNING  # settle as that attempt
        return self._settle_locked(TIMED_OUT if record.timed_out else FAILED, record.last_error)

    def _after_settle_aside(self, announce: _Announcement | None) -> None:
        """``_after_settle``; on the deadline thread, callbacks and listeners (then waiters) get a thread of their own.

        That one thread serves every timeout, and ends tasks there (a timeout, a
        retry refused by a circuit breaker or given up at shutdown): a slow
        callback or listener must not hold back all the others. Waiters alone
        are woken there.
        """
        if threading.current_thread() is not _deadlines._thread:
            self._after_settle(announce)
        elif announce is not None and announce[0] or _events.listeners:
            threading.Thread(
                target=self._after_settle, args=(announce,), name="makeparallel-timeout-callbacks", daemon=True
            ).start()
        elif announce is not None:
            self._announce(*announce)

    def _announce(
        self,
        callbacks: list[_Registered] | None,
        waiters: list[threading.Lock] | None,
    ) -> None:
        """Run the callbacks, then wake the waiters, whatever the callbacks raise.

        Ctrl-C raised by a callback on the main thread is raised again, but only
        after every other callback ran and every waiter was woken.
        """
        interrupt: KeyboardInterrupt | None = None
        try:
            for kind, callback in callbacks or ():
                try:
                    if kind != _ON_PROGRESS:
                        self._invoke(kind, callback)
                    elif self._state == SUCCEEDED and self._progress != 1.0:  # a success its last report did not say
                        self._complete_progress(callback)
                except KeyboardInterrupt as error:
                    interrupt = interrupt or error
        finally:
            for waiter in waiters or ():
                waiter.release()
        if interrupt is not None:
            raise interrupt

    # -- engine side: waiting ------------------------------------------------------

    def _wait_for_end(self, timeout: float | None) -> None:
        if self._id < _fork_child.boundary and self._the_parents():
            return
        if timeout is None and self._run_here_if_queued() and self._state >= SUCCEEDED:
            return  # (a retrying task may instead wait to retry: then wait below)
        self._refuse_to_block_a_loop()
        if self._on_worker == HELD:  # waiting for its slots: on a loop's thread, see _wait_beside_held
            loop = running_loop()
            if loop is not None:
                if not self._wait_beside_held(timeout, loop):
                    raise self._gave_up(timeout)  # type: ignore[arg-type]
                return
        if self._observer.retry is not None:  # it may be queued again: run or wait for each attempt
            if not self._wait_retrying(timeout):
                raise self._gave_up(timeout)  # type: ignore[arg-type]
            return
        if not self._block(timeout):
            raise self._gave_up(timeout)  # type: ignore[arg-type]

    def _gave_up(self, timeout: float) -> TaskTimeoutError:
        # The state as status shows it: a process task held for a worker still
        # starting is pending, though its raw state says running. Read once, and
        # phrased from that: a task that ended as the wait's time ran out read
        # "it is still failed and goes on".
        state = self._seen_state()
        if state >= SUCCEEDED:
            return TaskTimeoutError(
                f"gave up waiting for task {self._id} ({self.name}) after {timeout:g} s; it ended "
                f"({STATE_NAMES[state]}) just as the wait gave up: ask again for its outcome, ready now"
            )
        return TaskTimeoutError(
            f"gave up waiting for task {self._id} ({self.name}) after {timeout:g} s; "
            f"it is still {STATE_NAMES[state]} and goes on. Wait again, or "
            "cancel it with handle.cancel()"
        )

    def _wait_retrying(self, timeout: float | None) -> bool:
        """Wait for a task that may retry; without a timeout, run each queued attempt here. Return whether it ended.

        Waiters are woken when an attempt is queued again, so a task waiting for
        a retrying child it submitted runs the child's next attempt itself, and
        nested work cannot deadlock the pool. With a timeout nothing runs here:
        a worker that waits lends its place, as in :meth:`_block`. (Woken so in
        :meth:`_block`, ``wait()`` said that a task being retried had ended.)
        """
        backend = self._backend
        deadline = None if timeout is None else _now() + timeout
        while self._state < SUCCEEDED:
            seen = self._state
            if deadline is None and self._run_here_if_queued():
                continue
            remaining = None if deadline is None else deadline - _now()
            if remaining is not None and remaining <= 0:
                return False
            with backend._lock:
                if self._state >= SUCCEEDED:
                    return True
                if self._state == PENDING and seen != PENDING:
                    continue  # queued again just now: try to run it here
                waiter = _allocate_lock()
                waiter.acquire()
                self._waiters = [waiter] if self._waiters is None else [*self._waiters, waiter]
            self._sleep_on(waiter, remaining)
        return True

    def _wait_beside_held(self, timeout: float | None, loop: Any) -> bool:
        """Wait for a task held for its slots, on the thread of ``loop``, which runs; return whether it ended.

        Meanwhile the ``"sync"`` tasks admitted to run on this thread are run
        here, in the loop's place (``_held_on_loop``): this one once its slot
        frees, and those admitted before it, which may hold that slot. The
        loop, which this wait blocks, would have run them: waited for, such a
        task never ran, and the wait lasted for good. A wait for a task held
        on another backend runs them too: the slot it waits for may be one
        that they hold (``set_max_concurrent_tasks``).

        As any wait: ``timeout`` bounds it, Ctrl-C ends it, and inside a task
        it is a cancellation point.

        Raises:
            RuntimeError: this task, run in place, started a coroutine on
                ``loop`` (a plain function that returned one), which this wait
                would block, as ``get()`` refuses for an async task there.
        """
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        put = inbox.put  # one object: the done-callback taken off at the end
        wake = functools.partial(put, None)
        deadline = None if timeout is None else time.monotonic() + timeout
        task = getattr(_local, "task", None)
        # Held for another loop than this thread's, it ends as that loop closes, which nothing tells of.
        between = functools.partial(end_those_of_closed_loops, (self,)) if self in on_callers_loops else None
        self._add_own_done_callback(put)
        try:
            with CancellationPoint(task, put, None), BlockingWait(), _held_on_loop.listening(loop, wake):
                while self._state < SUCCEEDED:
                    if _held_on_loop.run_one(loop):
                        # Run in place, a plain function may have returned a coroutine, which
                        # runs on this loop: now an async task of it, which get() refuses to block on.
                        self._refuse_to_block_a_loop()
                        continue
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    try:
                        _interruptible.get(inbox, remaining, between)
                    except queue.Empty:
                        return self._state >= SUCCEEDED
                    if task is not None:
                        task._raise_if_stopped()
        finally:
            self._forget_done_callback(put)
        return True

    def _run_here_if_queued(self) -> bool:
        """Run the task here if it is still queued; return whether it ended.

        A task with its own timeout stays on the pool: run inline, its deadline
        could not end the wait. Except where this thread is a pool's worker whose
        every place to lend is lent (``MAX_SPARES``): no spare would ever start
        the task, and this wait, which has no deadline, would last for good. An
        async task stays queued on a thread whose event loop runs: it would have
        to run on that loop, which this wait blocks. Nothing runs inline in a
        task that was cancelled or timed out: its wait raises instead (``_sleep_on``).
        """
        if (
            self._state != PENDING
            or (self._id < _fork_child.boundary and self._the_parents())
            or (self._timeout is not None and not _no_place_to_lend())
            or (self._observer.is_async and running_loop() is not None)
            or _in_a_stopped_task()
        ):
            return False
        try:
            if not self._backend._steal(self):
                return False
            self._run()
        except BaseException:
            # Ctrl-C between the claim and the task's end being recorded (CPython
            # raises it at a function's entry, or as a C call returns): nobody
            # else will run this attempt or end it. (A retry's next attempt that
            # a worker took is not this one.)
            if self._state == RUNNING and self._on_worker == INLINE:
                self.cancel()
            raise
        return self._state >= SUCCEEDED

    def _run_owned_here_if_queued(self) -> bool:
        """:meth:`_run_here_if_queued`, for a task of a map or group whose wait runs it; return whether it ended.

        The task this thread runs is the one the map or group runs in: its
        cancel or timeout cancels this task too as it runs here, and this
        task's ``check_cancelled()`` tells it to return. The map or group
        would cancel it anyway once its wait was left, but the wait could be
        left only once this task returned by itself: late, or never (a map's
        chunk may hold all its items). A task run inline for a plain wait
        (``get()``, ``gather``) is left to end: it may be another's to use.
        Outside any task it is :meth:`_run_here_if_queued`.

        Raises:
            TaskCancelledError: the task this thread runs was cancelled.
            TaskTimeoutError: the task this thread runs timed out.
        """
        task = getattr(_local, "task", None)
        if task is None:
            return self._run_here_if_queued()
        with CancellationPoint(task, _cancel_run_inline, self):
            return self._run_here_if_queued()

    def _refuse_to_block_a_loop(self) -> None:
        """Raise ``RuntimeError`` where a wait for this unfinished task would block the loop that must end it.

        An async task is awaited, not waited for, on a thread whose event loop
        runs. A process task is not waited for on its pool's loop thread (in a
        process task's callback), nor a Dask task on its client's event loop
        thread (in a Dask task's callback): that thread reads the result the
        wait is for, so the wait ran out its whole timeout, or without one
        lasted for good.
        """
        if self._state >= SUCCEEDED:
            return
        backend = self._backend
        if backend.reads_results_here(self):
            raise RuntimeError(f"task {self._id} ({self.name}) {backend.wait_refused_here(self)}")
        if self._observer.is_async and running_loop() is not None:
            raise RuntimeError(
                f"task {self._id} ({self.name}) runs a coroutine, and this thread's event "
                "loop is running: waiting here with get(), result(), exception(), wait() "
                "or the blocking mp.gather, mp.wait and mp.as_completed would block that "
                "loop. Use `await handle` (or mp.gather_async, `async for` over "
                "mp.as_completed) instead"
            )
        if on_callers_loops:
            # Its coroutine may run on the loop of the code that called it, which alone can end it;
            # or, held for its slots, it runs on that loop's thread once admitted.
            check_the_loop_of(self)

    def _refuse_to_wait_for_itself(self) -> None:
        """A task waits for its own end, which its wait would hold off for good: raise ``RuntimeError`` instead."""
        raise RuntimeError(
            f"task {self._id} ({self.name}) waits for its own end, which would never come: it "
            "waited for its own handle, or gathered, waited for or collected the results of "
            "tasks that include itself (a ParallelContext's ctx.results() from one of its own "
            "tasks, say). Wait for it from outside the task"
        )

    def _block(self, timeout: float | None) -> bool:
        backend = self._backend
        with backend._lock:
            if self._state >= SUCCEEDED:
                return True
            waiter = _allocate_lock()
            waiter.acquire()
            if self._waiters is None:
                self._waiters = [waiter]
            else:
                self._waiters.append(waiter)
        return self._sleep_on(waiter, timeout)

    def _sleep_on(self, waiter: threading.Lock, timeout: float | None) -> bool:
        """Sleep until ``waiter`` is released or ``timeout`` passes; return whether the task ended.

        Inside a task the wait is a cancellation point: that task's cancel or
        timeout releases ``waiter`` too, and the wait raises. It is one as a
        ``CancellationPoint`` is, written out, listed under ``waiter`` (its
        own): an object made and entered per wait cost a task waiting for its
        children one by one a twentieth more per child.
        """
        task = getattr(_local, "task", None)
        if task is None:
            return self._sleep_lending(waiter, timeout)
        if task is self:
            self._forget_waiter(waiter)
            self._refuse_to_wait_for_itself()
        blocked[waiter] = (task, self._stop_waiting, waiter)
        try:
            task._raise_if_stopped()
            ended = self._sleep_lending(waiter, timeout)
        finally:
            del blocked[waiter]
        task._raise_if_stopped()  # woken by the stop, the wait took its waiter for the task's end
        return ended

    def _sleep_lending(self, waiter: threading.Lock, timeout: float | None) -> bool:
        pool = pool_of_this_thread()
        if pool is None:
            return self._sleep(waiter, timeout)
        pool.worker_blocks()  # a task waits: its worker lends its place meanwhile
        try:
            return self._sleep(waiter, timeout)
        finally:
            pool.worker_unblocks()

    def _sleep(self, waiter: threading.Lock, timeout: float | None) -> bool:
        if on_callers_loops and self in on_callers_loops:  # its loop may close as this waits
            acquired = _interruptible.acquire(waiter, timeout, functools.partial(end_those_of_closed_loops, (self,)))
        else:
            acquired = _interruptible.acquire(waiter, timeout)
        if acquired:
            return True
        self._forget_waiter(waiter)
        return self._state >= SUCCEEDED

    def _forget_waiter(self, waiter: threading.Lock) -> bool:
        """Take ``waiter`` off those the task's end releases; return whether it was still there.

        Exactly one of this and the end (or the queueing of a retry) takes it, so it is released once.
        """
        with self._backend._lock:
            waiters = self._waiters
            if waiters is None or waiter not in waiters:
                return False
            waiters.remove(waiter)
            return True

    def _stop_waiting(self, waiter: threading.Lock) -> None:
        """The task that sleeps on ``waiter`` was cancelled or timed out: wake it, unless this task's end did."""
        if self._forget_waiter(waiter):
            waiter.release()

    # -- engine side: inside the task ------------------------------------------------

    def _raise_if_stopped(self) -> None:
        state = self._state
        if state in (CANCELLED, TIMED_OUT):
            # A fresh exception: the handle's own may be raised concurrently by get().
            raise type(self._value)(*self._value.args)
        if self._timeout is not None and self._attempt_here_timed_out():  # (only a timed attempt can be late)
            raise TaskTimeoutError(
                f"task {self._id} ({self.name}): this attempt ran past its timeout of {self._timeout:g} s "
                "and the task was retried; its outcome is dropped"
            )

    def _attempt_here_timed_out(self) -> bool:
        """Whether the attempt this thread runs timed out and the task was retried (its handle has not ended)."""
        started = self._retried_attempt_started_here()
        return started is not None and (self._state != RUNNING or started is not self._started_at)

    def _retried_attempt_started_here(self) -> float | None:
        """When the attempt this thread runs started, where the task is timed and was retried; else ``None``.

        Such a thread may run an attempt that timed out, whose code goes on
        as its retry runs (``_retry`` is set at the first retry).
        """
        if self._timeout is not None and self._observer.retry is not None and getattr(self, "_retry", None) is not None:
            return _attempt_started_here(self)
        return None

    def _report_progress(self, fraction: float, message: str | None) -> None:
        """Record a report of the task's code, unless it comes late.

        Late: the handle ended (a cancelled or timed-out task's code goes on),
        or the report is an attempt's that timed out and was retried.
        """
        started = self._retried_attempt_started_here()
        claimed = None
        with self._backend._lock:
            if self._state >= SUCCEEDED or (started is not None and started is not self._started_at):
                return
            self._progress = fraction
            self._progress_message = message
            for kind, listener in self._callbacks or ():
                if kind != _ON_PROGRESS:
                    continue
                if listener.busy:  # another thread calls it now: it calls it with this report next
                    listener.pending = fraction
                elif claimed is None:
                    listener.busy = True
                    claimed = [listener]
                else:
                    listener.busy = True
                    claimed.append(listener)
        for listener in claimed or ():
            self._deliver_progress(listener, fraction)

    def _deliver_progress(self, listener: _ProgressListener, fraction: float) -> None:
        """Call ``listener``'s callback with ``fraction``, then with the report that came meanwhile, if one did.

        The caller claimed the listener (``busy``, under the lock), so that one
        thread at a time calls it. A report recorded while it is called is left
        for this thread (``pending``, the newest only), so the callback sees the
        reports in the order they were recorded, each at most once: two threads
        that each called it with the value they read after leaving the lock
        called it twice with the newer report, or with the older one last.
        """
        lock = self._backend._lock
        callback = listener.callback
        while True:
            try:
                callback(fraction)
            except BaseException as error:  # noqa: BLE001  # logged; Ctrl-C on the main thread is raised again
                try:
                    self._callback_raised(callback, error)
                except BaseException:  # Ctrl-C on the main thread goes on: let the next report call it
                    with lock:
                        listener.busy = False
                        listener.pending = None
                    raise
            with lock:
                pending = listener.pending
                if pending is None:
                    listener.busy = False
                    return
                listener.pending = None
            fraction = pending

    def _complete_progress(self, listener: _ProgressListener) -> None:
        """Call a succeeded task's ``listener`` with 1.0, its final progress, after the reports it was called with.

        As ``get_progress()`` says 1.0 once the task succeeded, so the callback
        sees its progress end there, whenever it was added: one added while
        the task ran was otherwise left at its last report, or never called.
        Through the listener's claim, as a report is (:meth:`_deliver_progress`):
        a thread that calls it now, with a report or as it was added, calls it
        with 1.0 next.
        """
        with self._backend._lock:
            if listener.busy:
                listener.pending = 1.0
                return
            listener.busy = True
        self._deliver_progress(listener, 1.0)

    # -- callbacks and errors ---------------------------------------------------------

    def _register(self, kind: int, callback: Callable[..., Any]) -> None:
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if self._id < _fork_child.boundary:
            self._the_parents()
        progress: float | None = None  # the last report, where it is called with it while the task runs
        with self._backend._lock:
            if self._state < SUCCEEDED:
                if self._callbacks is None:
                    self._callbacks = []
                if kind != _ON_PROGRESS:
                    self._callbacks.append((kind, callback))
                    return
                # Claimed as it is added, with the last report read under the lock: a report
                # that comes before it is called waits for this thread (_deliver_progress).
                listener = _ProgressListener(callback)
                self._callbacks.append((kind, listener))
                progress = self._progress
                if progress is None:
                    return
                listener.busy = True
        if progress is None:  # it ended: called at once with its final state
            self._invoke(kind, callback)
        else:
            self._deliver_progress(listener, progress)

    def _add_own_done_callback(self, fn: Callable[[AsyncHandle[T_co]], object]) -> None:
        """:meth:`add_done_callback` for a function of the library's own, which fits: without its checks.

        Each ``async def`` task, and each item of a map of one, adds one
        (``_coroutines._cancel_when_stopped``): reading its signature cost
        them 0.4 us. Its call hands the outcome to nobody: a failure it sees
        is still logged if nobody reads it (:class:`_UnreadFailure`).
        """
        self._register(_ON_DONE_OWN, fn)

    def _forget_done_callback(self, callback: Callable[..., Any]) -> bool:
        """Remove a done-callback registered with ``add_done_callback``, if the task has not ended; return whether it did.

        For collectors that stop following a task before it ends (a timeout, the
        first failure, ``FIRST_COMPLETED``): each call would otherwise leave one
        callback on every unfinished task, and a loop of waits pile them up.
        """
        with self._backend._lock:
            callbacks = self._callbacks
            if callbacks is None:
                return False
            for index, (kind, registered) in enumerate(callbacks):
                if (kind == _ON_DONE or kind == _ON_DONE_OWN) and registered is callback:
                    del callbacks[index]
                    return True
            return False

    def _invoke(self, kind: int, callback: Callable[..., Any]) -> None:
        state = self._state
        try:
            if kind == _ON_DONE_OWN:
                callback(self)
            elif kind == _ON_DONE:
                if type(self) is _UnreadFailure:  # the caller has the handle, and its error with it
                    self._outcome_taken()
                callback(self)
            elif kind == _ON_PROGRESS:
                # The last report: the event being replayed. A callback added once the task
                # succeeded gets 1.0, as get_progress() says: its last report (0.5, say), or
                # none at all, said the task had not got there, as add_done_callback's final state does not.
                progress = 1.0 if state == SUCCEEDED else self._progress
                if progress is not None:
                    callback(progress)
            elif kind == _ON_COMPLETE:
                if state == SUCCEEDED:
                    callback(self._value)
            elif state >= FAILED:
                callback(self._error_to_raise())  # as exception() gives it
        except BaseException as error:  # noqa: BLE001  # logged; Ctrl-C on the main thread is raised again
            self._callback_raised(callback, error)

    def _callback_raised(self, callback: Callable[..., Any], error: BaseException) -> None:
        """Log what ``callback`` raised (in an ``except`` block); Ctrl-C on the main thread is raised again.

        SystemExit, GeneratorExit or any BaseException from a callback must not
        end the worker or loop thread that runs it; only Ctrl-C on the main
        thread goes on, as it would from any other code there.
        """
        if isinstance(error, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            raise error
        try:
            _log.exception("callback %r of task %d (%s) raised", callback, self._id, self.name)
        except Exception:  # logging's last resort raises where sys.stderr was closed: the thread goes on
            pass

    def _log_if_dropped_unread(self) -> None:
        """The task failed: have its handle log the error as it is collected, if nobody read it by then.

        It becomes an :class:`_UnreadFailure`. Not a handle of another subclass,
        which keeps its class, nor one of the library's own tasks
        (``TaskObserver.owned``), whose outcomes the library reads or drops itself.
        """
        if type(self) is AsyncHandle and not self._observer.owned:
            global failed_unread
            self.__class__ = _UnreadFailure
            failed_unread = True

    def _outcome_taken(self) -> None:
        """Someone took the failed task's outcome without its error being handed out: its collection logs nothing.

        A callback of ``add_done_callback`` (it is given the handle),
        ``gather(on_error="skip")`` or ``"none"`` (the caller said to drop
        failures), a Ctrl-C the task raised again to the program. Handing the
        error out needs no call: ``_origin`` says it was (:class:`_UnreadFailure`).
        """
        if type(self) is _UnreadFailure:
            self.__class__ = AsyncHandle  # type: ignore[assignment]  # (mypy reads self as the subclass here)

    def _error_for_caller(self) -> BaseException:
        """The task's error; a user's exception, or a timeout after retries, gets its note the first time out.

        An error the library made (a cancellation, a timeout) has its traceback
        then kept as ``_origin``, where each raise of it starts
        (:meth:`_error_to_raise`); a failure's was kept as the task failed.
        """
        error: BaseException | None = self._value
        if error is None:  # cancelled or timed out in bulk: its error is made when first asked for
            with self._backend._lock:
                if self._value is None:
                    self._value = self._stop_error(self._state)
                error = self._value
        origin = self._origin
        if origin is not _UNSET and type(origin) is not tuple:
            return error
        with self._backend._lock:
            origin = self._origin
            first = origin is _UNSET or type(origin) is tuple
            if first:
                self._origin = error.__traceback__ if origin is _UNSET else origin[0]
        state = self._state
        if first and (state == FAILED or (state == TIMED_OUT and getattr(self, "_retry", None) is not None)):
            add_note(error, self._describe_failure())
        return error

    def _error_to_raise(self) -> BaseException:
        """The task's error, its traceback set back to the one it ended with (``_origin``): for a ``raise``, or to hand out.

        Raised as it was, the error's traceback grew by the raiser's frames at
        each raise (``raise`` adds to the traceback an exception has), and kept
        each of them alive with its locals: a service that polled a failed
        task's handle kept every request that asked, for as long as it kept the
        handle. asyncio's ``Future.result()`` does the same, for the same reason.
        Handed out as it was (``exception()``, an ``on_error`` callback), it
        listed the last reader that raised it as where it was raised, printed
        or logged, and kept that reader alive for as long as it was held.
        """
        error = self._error_for_caller()
        return BaseException.with_traceback(error, self._origin)

    def _describe_failure(self) -> str:
        note = f"makeparallel: task {self._id} ({self.name}) failed after {self.elapsed_time():.3f} s"
        metadata = self._metadata
        if metadata:
            note = f"{note}; metadata: {_metadata_repr(metadata)}"
        record = getattr(self, "_retry", None)
        if record is None:
            return note
        if record.last_error is not self._value:  # the last attempt failed in a way not retried
            record.failures.append(
                (len(record.failures) + 1, type(self._value).__name__, self._finished_at - record.first_started)
            )
            record.last_error = self._value
        return f"{note}\n{record.describe()}"


class _UnreadFailure(AsyncHandle[Any]):
    """The handle of a task that failed or timed out: collected before anyone read its error, it logs it.

    A task failed, and its handle dropped unread (fire and forget), lost its
    error without a word; asyncio logs "Task exception was never retrieved" for
    the same. The handle changes to this class as its task fails
    (``AsyncHandle._log_if_dropped_unread``), so that only a failure pays for a
    finalizer: a ``__del__`` on ``AsyncHandle`` itself would cost every task a call.
    Same slots, so the assignment is allowed. Whether the error was handed
    out is what ``_origin`` says already: a failure not handed out holds a
    1-tuple there, and a timeout's error the library made ``_UNSET``. What
    takes the outcome without handing the error out turns the handle back into
    an ``AsyncHandle`` (``_outcome_taken``).
    """

    __slots__ = ()

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        # Bound at definition: as the interpreter ends, the module's names may be gone, and
        # logging with them. Whatever fails here is dropped: a finalizer's error is printed
        # with a traceback, from whatever code the collection interrupted.
        if _finalizing():
            return
        try:
            origin = self._origin
            if (origin is not _UNSET and type(origin) is not tuple) or self._id < _fork_child.boundary:
                return  # handed out; or a task of the process that forked this one, which tells of it
            error = self._value
            raised_from = origin[0] if type(origin) is tuple else error.__traceback__
            _log.error(
                "makeparallel: task %d (%s) %s and its error was never retrieved: its handle was dropped "
                "unread. Read the outcome (handle.get(), handle.exception(), await handle, mp.gather), "
                "or add handle.on_error(callback) to handle errors nobody waits for",
                self._id,
                self._observer.name,
                STATE_NAMES[self._state],
                exc_info=(type(error), error, raised_from),
            )
        except Exception:  # noqa: BLE001, S110  # logging's last resort raises where sys.stderr was closed: nothing may leave a finalizer
            pass


_EXECUTE = AsyncHandle._execute.__code__


def _clear_frames_that_ran_it(traceback: TracebackType | None) -> None:
    """Clear the locals of the library's frames atop a failed task's traceback: ``_execute``'s, and those it called down to the task's code.

    They ran the task and returned, and their locals held the handle (``self``),
    the task's arguments and context. Kept by the error that the handle keeps,
    they made a reference cycle: a handle dropped unread was freed, and its
    error logged, only at the collector's next pass, and a kept failed handle
    kept those locals alive. A cleared frame still gives the traceback its file, line
    and code: what is printed is the same. The frames of the task's own code
    keep their locals, for a debugger's post-mortem.

    Each frame also keeps its caller's (``f_back``), locals and all once it
    returns: a pool worker's loop, which lets go of the task it settled, and
    ``_execute_watched``, which drops the handle before it returns. A task run
    where it is submitted (``"sync"``), inline by a wait, or by an executor given
    as ``backend=`` is still in a cycle: its callers hold the handle as they
    return, after this runs.
    """
    while traceback is not None:
        frame = traceback.tb_frame
        if not frame.f_globals.get("__name__", "").startswith("makeparallel."):
            return
        try:
            frame.clear()
        except RuntimeError:  # still running: another task raised the same error object meanwhile
            return
        traceback = traceback.tb_next


def _attempt_started_here(handle: AsyncHandle[Any]) -> float | None:
    """When the attempt of ``handle`` that this thread runs started (``_execute``'s ``started``); None if it runs none.

    Read from the stack, not kept per attempt: only the ``check_cancelled()`` and
    ``report_progress()`` of a retried task ask, and keeping it would cost every task a store. An
    attempt that timed out and was retried goes on running on its worker
    thread, and was never told to stop: each took a worker for good where a
    dependency hung.
    """
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code is _EXECUTE and frame.f_locals.get("self") is handle:
            started: float | None = frame.f_locals.get("started")
            return started
        frame = frame.f_back
    return None


def _cancel_run_inline(handle: AsyncHandle[Any]) -> None:
    """Cancel ``handle``, a map's or group's task run inline by a task just stopped (``_run_owned_here_if_queued``).

    On the deadline thread (a timeout) the cancel, which runs the task's
    callbacks and listeners, goes to a thread of its own, as the deadline
    thread's own settles do theirs (``_after_settle_aside``).
    """
    if threading.current_thread() is _deadlines._thread:
        threading.Thread(target=handle.cancel, name="makeparallel-timeout-callbacks", daemon=True).start()
    else:
        handle.cancel()


def _in_a_stopped_task() -> bool:
    """Whether this thread runs a task that was cancelled or timed out: its waits run no child inline then, they raise.

    Or an attempt of one that timed out and was retried (its handle has not ended).
    """
    task = getattr(_local, "task", None)
    if task is None:
        return False
    if task._state >= SUCCEEDED:
        return True
    return isinstance(task, AsyncHandle) and task._timeout is not None and task._attempt_here_timed_out()


def _check_force(force: Any) -> None:
    """``cancel(force=...)`` is a bool: a truthy ``"no"`` would stop the worker process running the task."""
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool (True stops the worker process running the task), got {force!r}")


def _no_place_to_lend() -> bool:
    """Whether this thread is a pool's worker that could lend no place if it blocked now."""
    pool = pool_of_this_thread()
    return pool is not None and pool.places_all_lent()


def _metadata_repr(metadata: dict[str, Any]) -> str:
    """``repr(metadata)`` for the error note; a value whose ``repr()`` raises shows as its type.

    The note is made as the task's error is first handed out: raised there,
    the error of a value's repr (an ORM object whose session closed) came out
    of ``get()`` in place of the task's own, which an ``on_error`` callback
    then never received.
    """
    try:
        return repr(metadata)
    except Exception:  # noqa: BLE001  # whatever a value's repr raises: the note goes on without it
        return "{" + ", ".join(f"{key!r}: {_value_repr(value)}" for key, value in list(metadata.items())) + "}"


def _value_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as error:  # noqa: BLE001  # as above, value by value
        return f"<{type(value).__name__} object; repr() raised {type(error).__name__}>"


def end_queued_locked(
    handles: list[AsyncHandle[Any]], state: int
) -> tuple[list[AsyncHandle[Any]], list[tuple[AsyncHandle[Any], _Announcement]]]:
    """End queued tasks that nobody waits on as ``state`` (cancelled, or timed out), under their backend's lock.

    What ``_stop_locked`` and ``_settle_locked`` do for one task, for a batch:
    with no waiter or admission permit, the batch is counted at once, and each
    task's error (``TaskCancelledError``, ``TaskTimeoutError``) is made only if
    someone asks for it (``_error_for_caller``): most are never asked for after
    a Ctrl-C. Returns
    the tasks it ended (each once, however often listed) that have no
    callbacks, and those that have, with the callbacks to run; the backend's
    own counts follow in ``_cancelled_queued_locked``.
    """
    now = _now()
    ended: list[AsyncHandle[Any]] = []
    told: list[tuple[AsyncHandle[Any], _Announcement]] = []
    observer: TaskObserver | None = None
    release_permit = None
    count = 0
    for handle in handles:
        if handle._state != PENDING:
            continue  # listed twice
        handle._state = state
        handle._code_done = True  # it will never run
        handle._finished_at = now
        handle._fn = handle._args = handle._kwargs = handle._context = handle._payload = None
        if handle._callbacks is None:
            ended.append(handle)
        else:
            told.append((handle, (handle._callbacks, None)))
            handle._callbacks = None
        if handle._observer is not observer:
            if observer is not None:
                observer.tasks_ended(handle._backend._lock, state, count)
            observer, count = handle._observer, 0
            release_permit = getattr(observer, "release_permit", None)  # a circuit breaker's
        count += 1
        if release_permit is not None:
            release_permit(handle)
    if observer is not None:
        observer.tasks_ended(handles[0]._backend._lock, state, count)
    return ended, told


def cancel_all(handles: Iterable[AsyncHandle[Any]]) -> int:
    """Cancel every unfinished handle of ``handles`` at once; return how many it cancelled.

    Why not ``handle.cancel()`` in a loop: a batch of 200,000 tasks cancelled one
    by one took a lock round each, and each running task cancelled while the rest
    were still queued made the pool start a thread to replace its worker. Here each
    backend's tasks are cancelled in one round of its lock (no worker can start
    one of them meanwhile), callbacks and waiters follow outside the lock, and the
    backend then learns of the running tasks it lost all at once, when nothing of
    the batch is left queued for a replacement thread to run.
    """
    return _end_all(handles, CANCELLED)


def time_out_all(handles: Iterable[AsyncHandle[Any]]) -> int:
    """End every unfinished handle of ``handles`` as timed out at once; return how many it ended.

    The chunks of a map that met its timeout, running or still queued (the
    map's clock starts at its call): they end, are counted (``timed_out_tasks``)
    and told (``"timed out"``) as a task whose own ``timeout=`` passed, not as
    cancelled, which nobody asked for. As :func:`cancel_all` otherwise, but a
    running task's worker process is not killed for it here, as at a task's
    own timeout: the map stops its workers itself (``_stop_abandoned``).
    """
    return _end_all(handles, TIMED_OUT)


def _end_all(handles: Iterable[AsyncHandle[Any]], state: int) -> int:
    """End every unfinished handle of ``handles`` as ``state`` (:func:`cancel_all`, :func:`time_out_all`)."""
    handles = list(handles)
    if _fork_child.boundary:  # in a forked child: the parent's end here, their callbacks not run
        handles = [handle for handle in handles if not handle._the_parents()]
    backends = {handle._backend for handle in handles}
    if len(backends) == 1:  # the usual batch: no grouping (ended handles are skipped there)
        return backends.pop()._end_together(handles, state)
    by_backend: dict[Backend, list[AsyncHandle[Any]]] = {}
    for handle in handles:
        if handle._state < SUCCEEDED:
            group = by_backend.get(handle._backend)
            if group is None:
                by_backend[handle._backend] = group = []
            group.append(handle)
    return sum(backend._end_together(group, state) for backend, group in by_backend.items())


def cancel_and_stop(handles: list[AsyncHandle[Any]]) -> int:
    """:func:`cancel_all`, then force the tasks whose code still runs ``STOP_GRACE`` seconds later; return how many it cancelled.

    For what the user stopped as a whole: a map that ended early (an item's
    error, Ctrl-C, an ``imap`` loop left) and Ctrl-C while collecting. A plain
    cancel only asks a running task to stop at its next ``check_cancelled()``:
    an item or task still running went on to its end on its worker process,
    for seconds or for good, and the pool's next tasks waited for it. Forced,
    such a worker is replaced, as at a timeout; code that stops by itself
    within the grace (a map chunk of cheap items, between slices) keeps its
    worker. Threads cannot be stopped: their code goes on, as after any cancel.
    """
    cancelled = cancel_all(handles)
    stop_if_running(handles, CANCELLED)
    return cancelled


def stop_if_running(handles: list[AsyncHandle[Any]], state: int) -> None:
    """Force those of ``handles`` that ended as ``state`` and whose code still runs ``STOP_GRACE`` seconds from now.

    ``state``: how the whole was stopped, ``CANCELLED`` (:func:`cancel_and_stop`)
    or ``TIMED_OUT`` (a map's timeout, :func:`time_out_all`). A task that
    timed out by its own ``timeout=`` before the whole was stopped is left as
    it ended, one by one: forced with the rest, a thread task's code was no
    longer waited for by shutdown and exit (``ThreadBackend._stop_abandoned``).
    """
    running = [handle for handle in handles if not handle._code_done]
    if running:
        _deadlines.schedule(_StopIfRunning(running, state), _now() + STOP_GRACE)


class _CodeStopped:
    """Set once a task's code stopped running: what :meth:`AsyncHandle.cancel_with_timeout` waits for.

    Not a ``threading.Event``: inside a task, the wait ends at that task's own
    cancel or timeout too (:meth:`interrupt`, its ``CancellationPoint``'s wake),
    as its other waits for its children do. On an event it waited its whole
    timeout, the cancelled task's code running on meanwhile.
    """

    __slots__ = ("_changed", "_set")

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._set = False

    def set(self) -> None:
        with self._changed:
            self._set = True
            self._changed.notify_all()

    def interrupt(self, _: object = None) -> None:
        """Wake the waits, for each to look whether the task it runs in was stopped."""
        with self._changed:
            self._changed.notify_all()

    def wait(self, timeout: float, task: AsyncHandle[Any] | None) -> bool:
        """Whether it was set within ``timeout`` seconds.

        Raises:
            TaskCancelledError, TaskTimeoutError: ``task``, the one this thread
                runs (None: none), was stopped meanwhile.
        """
        deadline = time.monotonic() + timeout
        with self._changed:  # (looked at under it: a stop after the look wakes the wait)
            while not self._set:
                if task is not None:
                    task._raise_if_stopped()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # In slices on the main thread: in one piece, a Ctrl-C that another thread took
                # (or that landed just before the sleep) ended the wait only at its timeout.
                _interruptible.wait(self._changed, left)
            return True


class _StopIfRunning:
    """Tasks stopped as a whole to force at their grace's end (a :mod:`_deadlines` entry), if their code still runs then.

    Those that ended as the whole was stopped (``state``: cancelled, or timed
    out with their map); a task that ended otherwise, by itself or by its own
    timeout, is left alone.
    """

    __slots__ = ("_handles", "_state")

    def __init__(self, handles: list[AsyncHandle[Any]], state: int) -> None:
        self._handles = handles
        self._state = state

    def _expire(self) -> None:
        for handle in self._handles:
            if not handle._code_done and handle._state == self._state:
                handle._backend._stop_abandoned(handle)

    def _spent(self) -> bool:
        """Whether none of its tasks is left to force: each one's code returned, or it ended otherwise."""
        return all(handle._code_done or handle._state != self._state for handle in self._handles)
