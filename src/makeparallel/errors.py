"""The library's own failures.

An exception raised by *your* function comes back from ``handle.get()`` as itself
(same type, same traceback, plus a note naming the task). The classes here are for
what the library itself has to tell you: the task ran out of time, it was
cancelled, or the library is shut down. They share one base, :class:`TaskError`,
and subclass the standard types a caller already catches (``TimeoutError``,
``concurrent.futures.CancelledError``).
"""

# No ``from __future__ import annotations``: this module loads with the package,
# and that line would import the ``__future__`` module too; these annotations
# are valid at run time.
import concurrent.futures

__all__ = [
    "CircuitOpenError",
    "ShutdownError",
    "TaskCancelledError",
    "TaskError",
    "TaskSerializationError",
    "TaskTimeoutError",
    "WorkerCrashedError",
]


class TaskError(Exception):
    """Base of every failure the library itself reports."""


# On 3.10 ``concurrent.futures.TimeoutError`` is its own class; from 3.11 it *is*
# the builtin ``TimeoutError``. Subclass both where they differ so that either
# ``except`` clause catches ours.
_TIMEOUT_BASES: tuple[type[BaseException], ...] = (
    (TimeoutError,)
    if concurrent.futures.TimeoutError is TimeoutError
    else (TimeoutError, concurrent.futures.TimeoutError)
)


class TaskTimeoutError(TaskError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A task, or a wait for tasks, ran past its time limit.

    Raised by ``handle.get()`` when the task's own ``timeout`` expired, by
    ``check_cancelled()`` inside that task so that it can stop, and by a bounded
    wait such as ``handle.get(timeout=...)`` that gave up while the task goes on.
    """


class TaskCancelledError(TaskError, concurrent.futures.CancelledError):
    """The task was cancelled before it produced a result.

    Raised by ``handle.get()`` on a cancelled task, and by ``check_cancelled()``
    inside that task so that it can stop.
    """


class ShutdownError(TaskError):
    """The library was shut down: it refuses new tasks, and stopped the worker processes.

    A task submitted after ``makeparallel.shutdown()`` fails with it at once; so
    does a process task that had not ended when the shutdown stopped the worker
    processes, running or still queued: its message says whether it had
    started, and names the pool's initializer when its worker was still
    running it. Call ``makeparallel.reset_shutdown()`` to accept tasks again.

    So does a task whose event loop closed under it: a task of the ``"sync"``
    backend called from a coroutine runs on that coroutine's loop (an ``async
    def`` function's coroutine; over a limit, the whole task once admitted), and
    fails with it if that loop closed first.
    """


class WorkerCrashedError(TaskError):
    """The worker process running the task died (a crash, a signal, ``os._exit``).

    Only that task fails; a new worker takes its place. The message gives the
    exit code or the signal, as ``SIGKILL(-9)``. Where the pool's template
    process (which forks the workers on Linux) was killed, every worker forked
    from it died with it: each task they ran fails so, and the message says
    that the template died, not the task.
    """


class TaskSerializationError(TaskError):
    """A task's function, arguments or result could not be sent between processes.

    Raised at submission for the function and arguments, and by ``get()`` for a
    result. The message names the object that failed; the thread backend needs no
    pickling at all. Also raised by ``get()`` for an exception the task raised
    that cannot be unpickled here (a class of a module only the worker imports):
    the message gives its type and message, and the worker's traceback hangs
    below it as its ``__cause__``, as below an error that arrives as itself.
    """


class CircuitOpenError(TaskError):
    """A circuit breaker refused the call: its dependency has been failing.

    The task never ran. ``breaker`` names the breaker, ``failure_rate`` is the
    failure rate that opened it (0 to 1), ``retry_at`` the ``time.time()`` at
    which it lets trial calls through again (``None`` when forced open, and when
    half-open with its trial calls all taken: no time is known then).

    Forced open (``force_open()``), no rate opened it: ``failure_rate`` is then
    the rate of the breaker's window as it refused the call, what
    ``statistics().failure_rate`` reads (0.0 with no call in it), not the rate
    that opened it before, which may have closed since; the message says
    "forced open", as ``health()`` does.
    """

    def __init__(self, message: str, breaker: str = "", failure_rate: float = 0.0, retry_at: float | None = None) -> None:
        super().__init__(message)
        self.breaker = breaker
        self.failure_rate = failure_rate
        self.retry_at = retry_at

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (*self.args, self.breaker, self.failure_rate, self.retry_at))
