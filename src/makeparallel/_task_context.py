"""What a running task can ask about itself: its id, its cancellation, its progress.

The task a thread is running is kept in a thread-local slot, set by the code that
runs the task and restored afterwards (a waiter that runs a queued task inline
nests one task inside another on the same thread). Outside any task these
functions are harmless, so a function written for ``@parallel`` can also be called
directly.
"""

from __future__ import annotations

import threading
import weakref

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, overload

    from ._handle import AsyncHandle

__all__ = [
    "CancellationPoint",
    "blocked",
    "check_cancelled",
    "current_task",
    "get_current_task_id",
    "report_progress",
    "wake_waits_of",
]

_local = threading.local()
# Tasks whose id get_current_task_id() gave out, for report_progress(task_id=...).
_known: weakref.WeakValueDictionary[int, AsyncHandle[object]] = weakref.WeakValueDictionary()


def current_task() -> AsyncHandle[object] | None:
    """The handle of the task running on this thread, or ``None``."""
    return getattr(_local, "task", None)


class _AttemptTaskId(int):
    """The id of a retried task as one of its attempts gives it out: equal to the id, and knowing its attempt.

    Every attempt of a task has the task's id, and a thread that an attempt
    started may go on after the attempt failed or timed out: its
    ``report_progress(task_id=...)`` overwrote the progress of the retry that
    runs meanwhile. ``report_progress`` drops the reports of an attempt that is
    no longer the task's current one (:func:`_of_an_earlier_attempt`), as it
    drops those of the late attempt's own code. Pickled as a plain ``int``: a
    copy knows no attempt, and reports as the id always did.
    """

    started: float | None  # the start of the attempt that asked, the handle's ``_started_at`` object as it ran

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        return (int, (int(self),))


def _of_an_earlier_attempt(task_id: Any, task: Any) -> bool:
    """Whether ``task_id`` was given out by an attempt of ``task`` other than the one it runs now (it was retried)."""
    return type(task_id) is _AttemptTaskId and task_id.started is not task._started_at


def get_current_task_id() -> int | None:
    """The id of the task running on this thread, or ``None`` outside any task.

    ``report_progress(fraction, task_id)`` with this id reports for this task
    from any thread (one the task started, for instance). In a task with a
    retry policy it reports for the attempt that gave it: once the task is
    retried, the reports of threads an earlier attempt started are dropped
    (in a worker process the id is a plain ``int``: there a thread of an
    attempt that failed still reports while the retry runs in that worker).
    """
    task = current_task()
    if task is None:
        return None
    task_id = task.get_task_id()
    if task_id not in _known:
        _known[task_id] = task
    if getattr(getattr(task, "_observer", None), "retry", None) is None:  # one attempt: the id is all there is
        return task_id
    given = _AttemptTaskId(task_id)
    # This thread's attempt: one that timed out goes on, and asked late, the handle's start is its retry's.
    started = task._retried_attempt_started_here()
    given.started = task._started_at if started is None else started
    return given


def check_cancelled() -> None:
    """A cooperative cancellation point: raise if this task should stop.

    Call it between units of work in a long task. It returns at once while the task
    may go on, and raises once the task was cancelled (``TaskCancelledError``) or
    ran past its timeout (``TaskTimeoutError``). Outside any task it does nothing.
    A wait of the task for tasks it submitted raises so too (``CancellationPoint``).

    Raises:
        TaskCancelledError: the task was cancelled.
        TaskTimeoutError: the task ran past its timeout. Raised where an event
            loop runs (in an ``async def`` task), it is an
            ``asyncio.TimeoutError`` too, on Python 3.10 as from 3.11, where
            that is ``TimeoutError`` (``_await.asyncio_timeout``).
    """
    task = current_task()
    if task is not None:
        try:
            task._raise_if_stopped()
        except Exception as stopped:
            _timeout_for_asyncio_code(stopped)
            raise


def _timeout_for_asyncio_code(error: Exception) -> None:
    """Make ``error``, a ``TaskTimeoutError`` raised where an event loop runs, an ``asyncio.TimeoutError`` too.

    From Python 3.11 it is one (``TimeoutError``); on 3.10 ``except
    asyncio.TimeoutError`` in an ``async def`` task missed its own timeout,
    which it catches from 3.11 (``_await.asyncio_timeout``). Imports only
    here: a worker imports this module before its first task.
    """
    from ._coroutines import running_loop
    from .errors import TaskTimeoutError

    if isinstance(error, TaskTimeoutError) and running_loop() is not None:
        from ._await import asyncio_timeout  # (asyncio is loaded: a loop runs)

        asyncio_timeout(error)


class CancellationPoint:
    """Around a wait that blocks inside a task: the task's cancel or timeout ends the wait.

    A task waiting for its children never reached ``check_cancelled()``:
    cancelled or timed out, it waited on for every child, and a map or group it
    ran went on to its end. Here the wait is a cancellation point: entered in a
    task already stopped, it raises at once (before the worker lends its
    place, which would start a child); meanwhile it is listed in ``blocked``,
    and the task's cancel or timeout, or the timeout of the attempt it waits
    in when that is retried, calls ``wake(argument)`` (:func:`wake_waits_of`),
    which must end the wait; left, the wait raises what ``check_cancelled()``
    raises there. Outside any task it does nothing.

    Listed, not a done-callback of the task: registering one and taking it off
    took the pool's lock twice a wait, and a task that waited for 2,000
    children one by one took 15% longer per child.

    Raises:
        TaskCancelledError: the task was cancelled.
        TaskTimeoutError: the task ran past its timeout.
    """

    __slots__ = ("_task", "_wake", "_with")

    def __init__(self, task: Any, wake: Callable[[Any], object], argument: Any) -> None:
        """``task``: the one current on this thread (None: no wait to end); ``wake(argument)`` ends the wait."""
        self._task = task
        self._wake = wake
        self._with = argument

    def __enter__(self) -> None:
        task = self._task
        if task is not None:
            # Listed, then checked: a stop before the check raises here, one after it wakes the wait.
            blocked[self] = (task, self._wake, self._with)
            try:
                task._raise_if_stopped()
            except BaseException:
                del blocked[self]
                raise

    def __exit__(self, exc_type: object, *_: object) -> None:
        task = self._task
        if task is None:
            return
        del blocked[self]
        if exc_type is None:
            task._raise_if_stopped()


# The waits blocked inside tasks now, each under a key of its own: its task, and the call
# that ends it, ``wake(argument)`` (CancellationPoint; a handle's wait lists itself inline).
blocked: dict[Any, tuple[Any, Callable[[Any], object], Any]] = {}


def wake_waits_of(task: Any) -> None:
    """End the waits blocked inside ``task``: it was cancelled or timed out (or its attempt, to be retried)."""
    if blocked:
        for waiting, wake, argument in blocked.copy().values():
            if waiting is task:
                wake(argument)


if TYPE_CHECKING:  # the signatures checkers see; at run time, the one below

    @overload
    def report_progress(fraction: float, message: str | int | None = None, *, task_id: int | None = None) -> None: ...
    @overload
    def report_progress(*, progress: float, message: str | None = None, task_id: int | None = None) -> None: ...


def report_progress(
    fraction: Any = None,
    message: Any = None,
    *,
    progress: Any = None,
    task_id: Any = None,
) -> None:
    """Tell the task's handle how far the task has come.

    The value is readable with ``handle.get_progress()`` and reaches the handle's
    ``on_progress`` callbacks, which run on this thread. Outside any task the call
    only validates its arguments, so the same function can run directly.

    Args:
        fraction: progress between 0.0 and 1.0 inclusive.
        message: an optional short description of the current step. An ``int``
            here is a task id instead, as makeparallel 0.2's second argument
            was: ``report_progress(0.3, mp.get_current_task_id())``.
        progress: makeparallel 0.2's name of ``fraction``.
        task_id: report for this task rather than the one running on this
            thread: the task itself, or one whose id ``get_current_task_id()``
            gave. For an id never given out the call does nothing, and so it
            does for a task that has ended (cancelled or timed out, its code
            may still run and report), and for an id an attempt of a retried
            task gave once the task was retried: a thread that attempt started
            may still run and report, as the next attempt runs (not in a
            worker process, as :func:`get_current_task_id` says).

    Raises:
        TypeError: ``fraction`` is missing or not a real number (an ``int``,
            a ``float``, any ``numbers.Real`` such as NumPy's ``float32`` or
            a ``Fraction``, or a 0-d NumPy array of one; not a ``bool``),
            ``message`` is
            neither a string nor a task id, or a task id is given twice.
        ValueError: ``fraction`` is NaN, infinite or outside [0, 1].
    """
    if progress is not None:
        if fraction is not None:
            raise TypeError("report_progress() got both fraction and progress=, its 0.2 name")
        fraction = progress
    if isinstance(message, int) and not isinstance(message, bool):
        if task_id is not None:
            raise TypeError("report_progress() got a task id twice: as its second argument and as task_id=")
        message, task_id = None, message
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        fraction = _as_real(fraction)
    if not 0.0 <= fraction <= 1.0:  # also false for NaN
        raise ValueError(f"progress must be between 0.0 and 1.0, got {fraction!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress message must be a str or None, got {type(message).__name__}")
    if task_id is not None and (isinstance(task_id, bool) or not isinstance(task_id, int)):
        raise TypeError(f"task_id must be an int (a task's id), got {task_id!r}")
    task = current_task()
    if task_id is not None and (task is None or task.get_task_id() != task_id):
        task = _known.get(task_id)
    if task is not None and not _of_an_earlier_attempt(task_id, task):  # (one that ended ignores it)
        task._report_progress(float(fraction), message)


def _as_real(fraction: Any) -> float:
    """``fraction`` as a float if it is a real number that is neither an int nor a float: NumPy's, a ``Fraction``.

    ``numpy.float32`` and ``numpy.int64`` subclass neither ``float`` nor
    ``int``, but are ``numbers.Real``, as ``progress = done / total`` over
    NumPy counts gives; a 0-d NumPy array of one counts too, as it does for
    seconds (``_validation.is_real``). That module is imported only here: a
    worker process imports this one before its first task.

    Raises:
        TypeError: ``fraction`` is not a real number (a ``Decimal``, a
            complex, an array of one dimension or more, a string), or is a ``bool``.
    """
    from ._validation import is_real

    if is_real(fraction):
        try:
            return float(fraction)
        except OverflowError:  # (a Fraction too large for a float) outside [0, 1] all the same: the ValueError's
            return float("inf") if fraction > 0 else float("-inf")
    raise TypeError(
        f"progress must be a real number between 0.0 and 1.0 (an int, float or other "
        f"numbers.Real), got {fraction!r} of type {type(fraction).__name__}"
    )
