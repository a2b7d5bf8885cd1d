"""The 0.2 retry decorators, ``retry(max_retries)`` and ``retry_backoff(...)``, over :class:`Retry`.

On a plain function they retry in the caller, sleeping between attempts (the
sleep releases the GIL); on an ``async def`` function, in the caller's
coroutine, awaiting between attempts. Stacked with ``@parallel``, in either order, they become
that task's ``retry=`` policy: one retry mechanism, never a retry inside a retry.
Their ``on`` is ``Exception``, as in 0.2.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable
from types import MethodType
from typing import Any, TypeVar, overload

from ._decorators import (
    ParallelFunction,
    _BoundParallelFunction,
    _describe,
    _generator_kind,
    _returns_coroutines,
    _sent_by_value,
    _wraps,
    held_under,
)
from ._interruptible import bounded
from ._notes import add_note
from ._retry import Attempts, Retry, _LinearRetry
from ._task_context import CancellationPoint, current_task
from ._validation import check_count, is_real

__all__ = ["RetryingFunction", "retry", "retry_backoff"]

F = TypeVar("F", bound=Callable[..., Any])

#: The longest single sleep of a retry in its caller, in seconds (about 31 years): time.sleep
#: refuses a wait past what the platform's clock can reach (about 292 years on Linux).
LONGEST_SLEEP = 1e9

BACKOFFS = ("exponential", "linear", "constant")


class RetryingFunction:
    """A plain function that retries in its caller by a :class:`Retry` policy.

    ``@parallel`` applied over it takes the policy as its ``retry=`` option.
    """

    def __init__(self, fn: Callable[..., Any], policy: Retry) -> None:
        functools.update_wrapper(self, fn)
        self.__makeparallel_retry__ = policy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        policy = self.__makeparallel_retry__
        fn = self.__wrapped__  # type: ignore[attr-defined]
        record = Attempts(time.perf_counter())
        while True:
            try:
                return fn(*args, **kwargs)
            except BaseException as error:
                wait = _wait_after(policy, record, error)
                if wait is None:
                    raise
                task = current_task()
                if task is not None:  # in the except block: the task's stop has this error as its context
                    _wait_in_task(task, wait)
                    continue
            while wait > LONGEST_SLEEP:  # a breaker's retry_at may lie past what one sleep takes
                time.sleep(LONGEST_SLEEP)
                wait -= LONGEST_SLEEP
            time.sleep(wait)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else functools.partial(self, instance)

    def __reduce__(self) -> tuple[Any, ...]:
        # By its name, as pickle sends a function, where that name gives this very object. Pickled
        # as its attributes, its function went by that same name, which gave the decorator, and
        # pickle refused it ("not the same object as mod.fn"): a multiprocessing Pool or a
        # ProcessPoolExecutor could not run a retried function (tenacity#147). One of the main
        # script or of a module cloudpickle sends by value, or not found by its name, travels as
        # its function and policy, as a parallel function does (_decorators.ParallelFunction);
        # multiprocessing's own pickler sends the main script's by name (_reduce_by_name).
        module = getattr(self, "__module__", None)
        if isinstance(module, str) and _sent_by_value(module):
            return (RetryingFunction, (self.__wrapped__, self.__makeparallel_retry__))  # type: ignore[attr-defined]
        return self._reduce_by_name()

    def _reduce_by_name(self) -> tuple[Any, ...]:
        """By its name wherever that name gives it (the main script's too), else as its function and policy.

        How multiprocessing's pickler sends it (``_let_multiprocessing_send_by_name``):
        its workers run the main script again (``spawn``) or are forks of it.
        """
        fn = self.__wrapped__  # type: ignore[attr-defined]
        module, qualname = getattr(self, "__module__", None), getattr(self, "__qualname__", None)
        if isinstance(module, str) and isinstance(qualname, str):
            target = held_under(module, qualname)
            if target is self:  # (_serialization: imported only where something is pickled)
                from ._serialization import imported_object

                return (imported_object, (module, qualname))
            if _bound_of(target) is self:  # a class method's, read on its class (up to 3.12: a partial)
                return (_named_unbound, (module, qualname))
        return (RetryingFunction, (fn, self.__makeparallel_retry__))

    def __repr__(self) -> str:
        return f"<retrying function {getattr(self, '__qualname__', self.__wrapped__)!r}>"  # type: ignore[attr-defined]


def _wait_in_task(task: Any, seconds: float) -> None:
    """Wait ``seconds`` before the next attempt in ``task``, the task running here; raise as it is stopped.

    A cancellation point, as ``check_cancelled()`` is: the task's cancel or
    timeout (or its attempt's, retried by its own policy) ends the wait and
    raises ``TaskCancelledError`` or ``TaskTimeoutError``, at once where the
    task was stopped as the attempt ran. A plain sleep slept on past the
    stop, then ran another attempt for a caller who had given up (one more
    call to the service that failed), and ``shutdown()`` and exit waited
    for the sleeps.
    """
    woken = threading.Event()
    with CancellationPoint(task, threading.Event.set, woken):
        deadline = time.monotonic() + seconds
        while not woken.is_set() and (left := deadline - time.monotonic()) > 0:
            woken.wait(bounded(left))  # a breaker's retry_at may lie past what one wait takes


def _let_multiprocessing_send_by_name(fn: Any) -> None:
    """Have multiprocessing's pickler send a retrying function by its name, where ``fn``'s module goes by value.

    A function of the main script goes as its function and policy, by value,
    for cloudpickle (Dask, joblib), whose workers do not run the script: the
    standard pickler sent that function by its name, which gave the decorator,
    and refused it, so a ``multiprocessing.Pool`` or a ``ProcessPoolExecutor``
    (whose workers run the script again, or are forks of it) could not run it
    (tenacity#147). Their pickler takes reducers of its own: this one goes by
    name. Registered as the main script decorates its first function (loading
    multiprocessing, about 5 ms, where it is not loaded yet); a function of any
    other module goes by name to every pickler.
    """
    module = getattr(fn, "__module__", None)
    if not (isinstance(module, str) and _sent_by_value(module)):
        return
    from multiprocessing.reduction import ForkingPickler

    ForkingPickler.register(RetryingFunction, RetryingFunction._reduce_by_name)


def _bound_of(target: Any) -> Any:
    """The retrying function ``target`` binds, where it is one bound (a class method read on its class), else None.

    Up to Python 3.12 a class method binds what it holds through that
    object's ``__get__``: for a :class:`RetryingFunction`, a partial of it and
    the class. From 3.13, a method.
    """
    if isinstance(target, functools.partial):
        return target.func
    return getattr(target, "__func__", None) if isinstance(target, MethodType) else None


def _named_unbound(module: str, qualname: str) -> RetryingFunction:
    """The retrying function that ``module``'s object under ``qualname`` binds: a class method's, unpickled by its name.

    Raises:
        ImportError: ``module`` cannot be imported here.
        AttributeError: it has no object of that name.
        TypeError: that name holds no retrying function bound to its class here.
    """
    from ._serialization import imported_object  # only where something is unpickled

    function = _bound_of(imported_object(module, qualname))
    if not isinstance(function, RetryingFunction):
        raise TypeError(
            f"{module}.{qualname} is no class method under a retry decorator here, as it was where it was "
            "pickled: import the same version of that module in both processes"
        )
    return function


def _retrying_coroutine_function(fn: Callable[..., Any], policy: Retry) -> Callable[..., Any]:
    """``fn``, an ``async def`` function, retrying in its caller's coroutine, awaiting between attempts.

    A :class:`RetryingFunction` gave the coroutine back at once, and its error
    came when it was awaited, past every retry. A function, not an object, so
    that ``inspect.iscoroutinefunction`` says what it is to the frameworks that
    ask (and it binds as a method, as any function does).
    """

    @_wraps(fn)
    async def retrying(*args: Any, **kwargs: Any) -> Any:
        import asyncio  # an async caller has it loaded already

        record = Attempts(time.perf_counter())
        while True:
            try:
                return await fn(*args, **kwargs)
            except BaseException as error:  # the caller's cancellation (a BaseException) is never retried
                wait = _wait_after(policy, record, error)
                if wait is None:
                    raise
            await asyncio.sleep(wait)

    retrying.__makeparallel_retry__ = policy  # type: ignore[attr-defined]
    return retrying


def _wait_after(policy: Retry, record: Attempts, error: BaseException) -> float | None:
    """Seconds to wait before the next attempt, after ``error``; None to raise it, with its note if retried."""
    now = time.perf_counter()
    attempt = len(record.failures) + 1
    record.failures.append((attempt, type(error).__name__, now - record.first_started))
    left = None if policy.timeout is None else policy.timeout - (now - record.first_started)
    if attempt < policy.attempts and policy.retries(error):
        wait = policy._wait_after(attempt, error, left)  # (None where a subclass's wait() failed: a note says so)
        if wait is not None and not record.out_of_time(policy.timeout, now, wait):
            return wait
    if attempt > 1 or record.stopped is not None:  # one attempt, and no other as its wait passes the timeout
        add_note(error, record.describe())
    return None


def _apply(policy: Retry, fn: Any) -> Any:
    if isinstance(fn, (staticmethod, classmethod)):
        return type(fn)(_apply(policy, fn.__func__))
    if isinstance(fn, (ParallelFunction, _BoundParallelFunction)):
        return fn.options(retry=policy)
    if not callable(fn):
        raise TypeError(f"a retry decorator needs a callable, got {fn!r}")
    _refuse_generator_function(fn)
    if _returns_coroutines(fn):
        return _retrying_coroutine_function(fn, policy)
    _let_multiprocessing_send_by_name(fn)
    return RetryingFunction(fn, policy)


def _refuse_a_count(fn: Any, decorator: str, keyword: str) -> None:
    """Refuse ``retry(3)``: an int where the function goes is the count, given without its keyword."""
    if isinstance(fn, int) and not isinstance(fn, bool):
        raise TypeError(
            f"{decorator}() takes its options as keywords: @{decorator}({keyword}={fn}), "
            f"got {fn} as the function to decorate"
        )


def _refuse_generator_function(fn: Any) -> None:
    """Raise ``TypeError`` for a function whose call only creates a generator, judged as ``@parallel`` judges it.

    The call cannot fail: its body runs as the caller iterates the generator,
    and an error there came past the decorator, never retried, with no word.
    """
    kind = _generator_kind(fn)
    if kind is None:
        return
    raise TypeError(
        f"a retry decorator cannot retry {_describe(fn)}: it is {'an' if kind.startswith('a') else 'a'} {kind} "
        f"function (or wraps one), so a call only creates the {kind}, which cannot fail; its body runs, and "
        "fails, as the caller iterates it, after items were handed out, where no retry can start it again. "
        "Retry a plain function that does the work of one item, or make this one return a list"
    )


@overload
def retry(fn: F, /) -> F: ...
@overload
def retry(*, max_retries: int = 3) -> Callable[[F], F]: ...
def retry(fn: Any = None, /, *, max_retries: int = 3) -> Any:
    """Retry a failing function up to ``max_retries`` times, at once (the 0.2 name).

    Every ``Exception`` is retried (never ``KeyboardInterrupt``, ``SystemExit`` or a
    cancellation); the last attempt's error is raised, with a note listing them all.
    Over or under ``@parallel`` it becomes the task's ``retry=`` policy.

    Inside a task (the decorated function called by a task, or mapped), the
    task's cancel or timeout ends the wait between attempts: the call raises
    ``TaskCancelledError`` or ``TaskTimeoutError`` there, as
    ``check_cancelled()`` does, and no attempt follows.

    Args:
        fn: the function, when used bare (``@retry``).
        max_retries: attempts after the first (an int >= 0).

    Raises:
        TypeError, ValueError: ``max_retries`` is not an int >= 0.
        TypeError: ``fn`` is not callable (an int there is the count without its
            keyword, ``retry(3)``: the message says ``@retry(max_retries=3)``),
            or is a generator or async generator
            function (or wraps one): a call only creates the generator, and its
            body fails later, as the caller iterates it, where no retry can
            start it again.
    """
    _refuse_a_count(fn, "retry", "max_retries")
    max_retries = check_count(max_retries, "max_retries", 0)
    policy = Retry(
        on=Exception, attempts=max_retries + 1, timeout=None, wait_initial=0.0, wait_max=0.0, wait_jitter=0.0
    )
    return functools.partial(_apply, policy) if fn is None else _apply(policy, fn)


@overload
def retry_backoff(fn: F, /) -> F: ...
@overload
def retry_backoff(
    *, max_attempts: int = 3, backoff: str = "exponential", initial_delay: float = 1.0, max_delay: float = 60.0
) -> Callable[[F], F]: ...
def retry_backoff(
    fn: Any = None,
    /,
    *,
    max_attempts: int = 3,
    backoff: str = "exponential",
    initial_delay: float = 1.0,
    max_delay: float = 60.0,
) -> Any:
    """Retry a failing function with growing waits between attempts (the 0.2 name).

    The wait after attempt n is ``initial_delay * 2 ** (n - 1)`` (``"exponential"``),
    ``initial_delay * n`` (``"linear"``) or ``initial_delay`` (``"constant"``), at
    most ``max_delay``; no jitter. An ``initial_delay`` past ``max_delay`` waits
    ``max_delay`` each time, as in 0.2 (:class:`Retry` refuses a ``wait_initial``
    past its ``wait_max``). Every ``Exception`` is retried. Over or under
    ``@parallel`` it becomes the task's ``retry=`` policy, whose waits hold no worker.
    Inside a task, its cancel or timeout ends the wait, as for :func:`retry`.

    Args:
        fn: the function, when used bare (``@retry_backoff``), as ``@retry``.
        max_attempts: attempts in all, the first included (an int >= 1).
        backoff: ``"exponential"``, ``"linear"`` or ``"constant"``.
        initial_delay: seconds before the second attempt.
        max_delay: the longest wait, in seconds.

    Raises:
        TypeError: an argument of the wrong type, ``fn`` is not callable (an
            int there is ``max_attempts`` without its keyword, as for
            :func:`retry`), or ``fn`` is a generator or async generator
            function (or wraps one), as for :func:`retry`.
        ValueError: ``max_attempts`` < 1, an unknown ``backoff``, negative delays.
    """
    _refuse_a_count(fn, "retry_backoff", "max_attempts")
    max_attempts = check_count(max_attempts, "max_attempts")
    if backoff not in BACKOFFS:
        raise ValueError(f"backoff must be one of {', '.join(map(repr, BACKOFFS))}, got {backoff!r}")
    kind = _LinearRetry if backoff == "linear" else Retry
    # 0.2's cap, as documented: every wait is max_delay (Retry refuses this). Only between valid
    # delays: an infinite initial_delay was taken, and a negative max_delay blamed on initial_delay.
    if is_real(initial_delay) and is_real(max_delay) and 0 <= max_delay < initial_delay < math.inf:
        initial_delay = max_delay
    try:
        policy = kind(
            on=Exception,
            attempts=max_attempts,
            timeout=None,
            wait_initial=initial_delay,
            wait_max=max_delay,
            wait_jitter=0.0,
            wait_exp_base=1.0 if backoff == "constant" else 2.0,
        )
    except (TypeError, ValueError) as error:  # name the argument as this function calls it
        message = str(error).replace("wait_initial", "initial_delay").replace("wait_max", "max_delay")
        raise type(error)(message) from None
    return functools.partial(_apply, policy) if fn is None else _apply(policy, fn)
