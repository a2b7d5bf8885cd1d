"""``@parallel``: turn a function into one that returns an :class:`AsyncHandle` at once.

The decorated function keeps its signature for type checkers (``ParamSpec``) and
its name, docstring and ``__wrapped__`` for humans. Options are checked when the
decorator is applied, so a mistake shows at the line that made it.

Call-time options: ``f(x, timeout=2)`` and ``f(x, priority=5)`` set the task's
timeout and priority, unless ``f`` has a parameter of that name, in which case
the argument is the function's. ``f.options(timeout=2)(x)`` always works.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import BuiltinFunctionType, CodeType, FunctionType, MethodType
from typing import (
    TYPE_CHECKING,
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    TypeVar,
    overload,
)

from . import _events, _runtime
from ._admission import Limiter, NoSlotInTime, PendingAdmission, Recipient
from ._backends._base import Backend
from ._coroutines import running_loop
from ._gil_watch import GilWatch
from ._handle import AsyncHandle
from ._metrics import FOLD_AT, Counts, FunctionMetrics, metrics_for
from ._states import CANCELLED, FAILED, HELD, PENDING, SUCCEEDED
from ._validation import (
    as_called,
    check_count,
    check_name,
    check_priority,
    check_task_timeout,
    code_is_real,
)
from ._worker_reductions import for_worker_functions, for_workers
from .errors import CircuitOpenError, ShutdownError, TaskSerializationError

_log = logging.getLogger("makeparallel")

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Protocol

    from ._circuit import CircuitBreaker
    from ._retry import Retry

    class _Decorator(Protocol):
        """What ``parallel(...)`` with options returns: ``parallel`` itself, its options bound."""

        @overload
        def __call__(self, fn: Callable[P, Coroutine[Any, Any, T]], /) -> ParallelFunction[P, T]: ...
        @overload
        def __call__(self, fn: Callable[P, T], /) -> ParallelFunction[P, T]: ...

__all__ = [
    "ParallelFunction",
    "as_parallel",
    "held_under",
    "own_parameters",
    "parallel",
    "parallel_function_named",
    "wraps_async",
]

P = ParamSpec("P")
Q = ParamSpec("Q")
T = TypeVar("T")
S = TypeVar("S")  # what a method's first parameter takes: its instance (self)
C = TypeVar("C", bound=type)  # what a class method's first parameter takes: its class (cls)

OPTION_NAMES = ("async_cancel", "backend", "circuit_breaker", "max_concurrent", "name", "priority", "retry", "timeout")
_CALL_TIME_OPTIONS = ("timeout", "priority")


class TaskSpec:
    """What every task of one decorated function shares; it observes their ends."""

    #: Listeners hear of every task (``TaskObserver.unseen``).
    unseen = False

    __slots__ = (
        "_last_shard",
        "async_cancel",
        "backend",
        "breaker",
        "cpu_watch",
        "function_name",
        "is_async",
        "limiter",
        "metrics",
        "name",
        "owned",
        "priority",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        name: str,
        backend: str | Backend | None,
        timeout: float | None,
        priority: int,
        limiter: Limiter | None,
        is_async: bool = False,
        async_cancel: str | None = None,
        function_name: str | None = None,
        retry: Retry | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.function_name = function_name or name
        self.retry = retry
        self.breaker = breaker
        self.is_async = is_async
        self.async_cancel = async_cancel
        self.backend = backend
        self.timeout = timeout
        self.priority = priority
        self.limiter = limiter
        self.metrics: FunctionMetrics = metrics_for(name, function_name)
        self._last_shard: tuple[Any, Counts] = (None, self.metrics.counted())  # no lock is None
        self.cpu_watch = None if _runtime.free_threaded() else GilWatch(name)
        self.owned = False  # (TaskObserver.owned) true for a map's chunks: the map reads their outcomes

    @property
    def async_cancel_forced(self) -> bool:
        """Whether an ``await`` of this function's task, when cancelled, stops it by force."""
        return (self.async_cancel or _runtime.async_cancel_mode()) == "force"

    def _shard(self, lock: threading.Lock) -> Counts:
        """The metrics shard for ``lock``; the last one is kept at hand."""
        last_lock, shard = self._last_shard
        if last_lock is not lock:
            shard = self.metrics.counts(lock)
            self._last_shard = (lock, shard)  # one store: readers see a whole pair
        return shard

    def task_submitted(self, handle: AsyncHandle[Any]) -> None:
        """Count the task (called under the backend lock)."""
        lock = handle._backend._lock
        last_lock, shard = self._last_shard  # _shard(), inlined: once per task
        if last_lock is not lock:
            shard = self._shard(lock)
        shard.total += 1

    def task_retried(self, handle: AsyncHandle[Any], first: bool) -> None:
        """An attempt failed and another is scheduled (under the backend lock): nothing is counted yet.

        The retry has not run: a cancel or a shutdown during its wait ends
        the task without it. It counts once its attempt ran (:meth:`retries_ran`).
        """

    def retries_ran(self, handle: AsyncHandle[Any]) -> None:
        """Count the retries of ``handle`` whose attempts ran, not counted yet, and the task as retried at its first (under the backend lock).

        Called as an attempt fails (before the next is scheduled) and as a
        retried task ends: a retry counts once its attempt ran, as
        ``handle.attempts`` counts it. Counted as it was scheduled, a retry
        that a cancel or a shutdown stopped during its wait was counted too.
        """
        record = handle._retry
        ran = handle.attempts - 1
        counted = record.counted
        if ran <= counted:
            return
        shard = self._shard(handle._backend._lock)
        shard.retries += ran - counted
        if counted == 0:
            shard.retried += 1
        record.counted = ran

    def tasks_ended(self, lock: threading.Lock, state: int, count: int) -> None:
        """Count ``count`` tasks that ended together as ``state`` before they started (under ``lock``).

        Cancelled, or timed out: the chunks of a map that met its timeout.
        """
        shard = self._shard(lock)
        if state == CANCELLED:
            shard.cancelled += count
        else:
            shard.timed_out += count

    def task_withdrawn(self, handle: AsyncHandle[Any]) -> None:
        """Count a task no backend had as submitted and ended as its state says.

        Failed: its backend refused it (shut down, or its call unpicklable), as
        listeners are told, and as a refusal by an executor given as
        ``backend=`` is counted. Cancelled: a listener's Ctrl-C as it was told
        submitted (:func:`tell_submitted`). No backend counted it, so its shard
        is the record's own; its slots went back in :func:`withdraw` (or
        :func:`tell_submitted`).
        """
        shard = self.metrics.counted()
        with shard.lock:
            shard.total += 1
            shard.count_end(handle._state, None, None)

    def task_finished(self, handle: AsyncHandle[Any]) -> None:
        """Count the task's end and free its admission slots (under the backend lock)."""
        permits = handle._permits
        if permits:
            for limiter in permits:
                limiter.release()
        lock = handle._backend._lock
        last_lock, shard = self._last_shard  # _shard(), inlined: once per task
        if last_lock is not lock:
            shard = self._shard(lock)
        state = handle._state
        started = handle._started_at
        if state == SUCCEEDED and started is not None:  # the common case, inlined
            shard.completed += 1
            shard.new_durations.append(handle._finished_at - started)  # type: ignore[operator]
            waits = shard.new_waits
            waits.append(started - handle._submitted_at)
            if len(waits) >= FOLD_AT:
                shard.fold()
        elif started is None:  # cancelled before it started, or failed by a pool that could not start it
            shard.count_end(state, None, None)
        else:
            ran_to_end = state == FAILED
            shard.count_end(
                state,
                handle._finished_at - started if ran_to_end else None,  # type: ignore[operator]
                started - handle._submitted_at,
            )



class RetryingTaskSpec(TaskSpec):
    """A :class:`TaskSpec` with a retry policy: a retried task's queue wait is its last attempt's.

    Not from its submission, which counted its waits to retry and its earlier
    attempts as queueing (``AsyncHandle._queue_wait``). A subclass, so that
    functions without a policy pay nothing for it.
    """

    __slots__ = ()

    def task_finished(self, handle: AsyncHandle[Any]) -> None:
        if getattr(handle, "_retry", None) is None:  # never retried: it waited from its submission
            super().task_finished(handle)
            return
        self.retries_ran(handle)  # its last attempt, if a retry's, ran to this end
        for limiter in handle._permits:
            limiter.release()
        state, started = handle._state, handle._started_at
        ran_to_end = started is not None and (state == SUCCEEDED or state == FAILED)
        self._shard(handle._backend._lock).count_end(
            state,
            handle._finished_at - started if ran_to_end else None,  # type: ignore[operator]
            handle._queue_wait(),
        )


class _Admitting(threading.local):
    round: int | None = None


class GuardedTaskSpec(RetryingTaskSpec):
    """A :class:`TaskSpec` behind a circuit breaker: each attempt's outcome is recorded in it.

    A subclass, so that functions without a breaker pay nothing for it.
    """

    __slots__ = ("_rounds", "_verdicts", "admitting")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The breaker's round of each task's permit, by task id, until the task ends (``_circuit``).
        self._rounds: dict[int, int | None] = {}
        #: By task id, the error its last attempt failed with and whether the breaker counts it (``judge``).
        self._verdicts: dict[int, tuple[BaseException, bool]] = {}
        #: Per thread, the round of the permit a call took, until its backend accepts the task.
        self.admitting = _Admitting()

    def task_submitted(self, handle: AsyncHandle[Any]) -> None:
        super().task_submitted(handle)
        admitting = self.admitting
        self._rounds[handle._id] = admitting.round  # None: accepted refused, to retry
        admitting.round = None  # taken: from now on the task's end gives the permit back

    def permit_taken(self, handle: AsyncHandle[Any], admitted_in: int) -> None:
        """The breaker admitted ``handle``'s next attempt in round ``admitted_in``: keep it till the attempt ends."""
        self._rounds[handle._id] = admitted_in

    def judge(self, handle: AsyncHandle[Any], error: BaseException) -> None:
        """Ask the breaker whether ``error``, an attempt's, is a failure, before its settle takes the backend lock.

        Its ``on`` may be the user's predicate, which may call the library (read
        a pool's info, submit a task): asked under the lock as the task ended,
        it waited for that lock for good, and the pool, holding it, with it.
        """
        verdicts = self._verdicts
        verdicts[handle._id] = (error, self.breaker.counts_as_failure(error))  # type: ignore[union-attr]
        if handle._state >= SUCCEEDED:  # ended meanwhile (cancelled): its end took no verdict, and none will
            verdicts.pop(handle._id, None)

    def _counts_as_failure(self, verdict: tuple[BaseException, bool] | None, error: BaseException) -> bool:
        """``judge``'s ``verdict``, if it is on ``error``; else the breaker's, asked now (another error of the task was judged since)."""
        if verdict is not None and verdict[0] is error:
            return verdict[1]
        return self.breaker.counts_as_failure(error)  # type: ignore[union-attr]

    def task_retried(self, handle: AsyncHandle[Any], first: bool) -> None:
        super().task_retried(handle, first)
        error = handle._retry.last_error
        assert error is not None
        if handle._retry.refused:  # a refused attempt never ran (a CircuitOpenError its code raised is an outcome)
            return
        if not self.breaker.answered(error):  # type: ignore[union-attr]  # stopped (a ShutdownError): nothing
            self._verdicts.pop(handle._id, None)
            self.breaker.release(self._rounds.get(handle._id))  # type: ignore[union-attr]
            return
        started = handle._started_at
        self._record(self._counts_as_failure(self._verdicts.pop(handle._id, None), error), None if started is None else time.perf_counter() - started, self._rounds.get(handle._id))

    def release_permit(self, handle: AsyncHandle[Any]) -> None:
        """Give back ``handle``'s permit: cancelled with others while queued, or its next attempt never ran."""
        self.breaker.release(self._rounds.pop(handle._id, None))  # type: ignore[union-attr]

    def task_finished(self, handle: AsyncHandle[Any]) -> None:
        super().task_finished(handle)
        breaker = self.breaker
        assert breaker is not None
        state, value, started = handle._state, handle._value, handle._started_at
        admitted_in = self._rounds.pop(handle._id, None)
        verdict = self._verdicts.pop(handle._id, None)  # (a late attempt's, where its retry succeeded)
        record = getattr(handle, "_retry", None)
        if record is not None and not record.holds_permit:
            return  # ended as it waited to retry (cancelled, given up): its last outcome was recorded then
        if state == CANCELLED or (state != SUCCEEDED and not breaker.answered(value)):
            breaker.release(admitted_in)
        elif not (record is not None and record.refused and record.last_error is value):  # refused: it never ran
            failed = state != SUCCEEDED and self._counts_as_failure(verdict, value)
            self._record(failed, None if started is None else handle._finished_at - started, admitted_in)  # type: ignore[operator]

    def _record(self, failed: bool, seconds: float | None, admitted_in: int | None) -> None:
        breaker = self.breaker
        assert breaker is not None
        # Under the backend lock here: listeners hear of a change from a thread of its own. Where
        # none could start, they hear of it at the next change: raised here, the error killed
        # the worker ending the task.
        if breaker.record(failed, seconds, admitted_in) and not breaker.tell_aside():
            _log.warning(
                "makeparallel: no thread could start to tell listeners that %r changed state; they are told at its next change",
                breaker,
            )


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if unknown:
        raise TypeError(
            f"unknown option {', '.join(map(repr, unknown))}; the options are "
            f"{', '.join(OPTION_NAMES)}"
        )
    checked = dict(options)
    if options.get("backend") is not None:
        _runtime.check_backend(options["backend"])
    if "timeout" in options:
        checked["timeout"] = check_task_timeout(options["timeout"])
    if "priority" in options:
        checked["priority"] = check_priority(options["priority"])
    if "retry" in options:
        from ._retry import check_retry  # loaded by the functions that use retries only

        checked["retry"] = check_retry(options["retry"])
    if "circuit_breaker" in options:
        from ._circuit import check_breaker

        checked["circuit_breaker"] = check_breaker(options["circuit_breaker"])
    if options.get("max_concurrent") is not None:
        checked["max_concurrent"] = check_count(options["max_concurrent"], "max_concurrent")
    check_name(options.get("name"))
    if options.get("async_cancel") is not None:
        _runtime.check_async_cancel(options["async_cancel"])
    return checked


# The code flags inspect's predicates read (inspect.CO_*), fixed by CPython.
_CO_GENERATOR, _CO_COROUTINE, _CO_ASYNC_GENERATOR = 0x20, 0x80, 0x200


def _plain_code(fn: Any) -> CodeType | None:
    """The code of ``fn`` if it is a plain function, which ``inspect`` would judge by its code alone.

    Most decorated functions are: reading their code object spares the first
    ``@parallel`` the import of ``inspect``, which costs about what importing
    ``concurrent.futures`` does. C functions (``abs``, ``zlib.compress``) are
    judged by their type and their ``__text_signature__``. Anything else goes
    to ``inspect``: partials, methods, callable objects, and functions with
    attributes of their own (a ``functools.wraps`` wrapper's ``__wrapped__``, a
    ``__signature__``, a coroutine marker, a ``partialmethod``...).
    """
    if type(fn) is not FunctionType or fn.__dict__:
        return None
    return fn.__code__


def own_parameters(fn: Callable[..., Any], names: tuple[str, ...]) -> set[str]:
    """Which of ``names`` ``fn`` takes as a named parameter (so the library must not).

    ``**kwargs`` does not count: only a parameter that names itself claims a name.
    A callable object is read by its class's ``__call__`` bound as a call binds
    it (:func:`as_called`): a ``staticmethod``'s first parameter is no ``self``.
    """
    code = _plain_code(fn)
    if code is not None:  # co_varnames: positional parameters, keyword-only ones, then the rest
        named = code.co_varnames[code.co_posonlyargcount : code.co_argcount + code.co_kwonlyargcount]
        return {name for name in named if name in names}
    if type(fn) is BuiltinFunctionType:
        # inspect reads a C function's signature from this text (tokenizing it:
        # about 7 ms the first time, a regex compiled); a name not in it is no parameter.
        text: str | None = getattr(fn, "__text_signature__", None)
        if text is None or not any(name in text for name in names):
            return set()
    import inspect

    try:
        parameters = inspect.signature(as_called(fn)).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return set()
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name in names}


class ParallelFunction(Generic[P, T]):
    """A function that runs in parallel: calling it returns an :class:`AsyncHandle`.

    Made by :func:`parallel`. ``f.options(...)`` gives a copy with other options;
    ``f.__wrapped__`` is the plain function, still callable directly.
    """

    __wrapped__: Callable[P, T]

    def __new__(cls, fn: Callable[P, T], options: dict[str, Any], limiter: Limiter | None = None) -> Any:
        if cls is ParallelFunction and options.get("circuit_breaker") is not None:
            cls = _GuardedParallelFunction  # its own __call__: no cost to functions without one
        return super().__new__(cls)

    def __init__(self, fn: Callable[P, T], options: dict[str, Any], limiter: Limiter | None = None) -> None:
        functools.update_wrapper(self, fn)
        runs = fn
        if for_worker_functions:  # @profiled made a wrapper in this process: fn may be one, or hold one
            fn, runs, options = _measured_by_the_task(fn, options)
            self.__wrapped__ = fn
        self._fn = runs
        self._options = options
        max_concurrent = options.get("max_concurrent")
        if limiter is None and max_concurrent is not None:
            limiter = Limiter(max_concurrent)
        backend = options.get("backend")
        breaker = options.get("circuit_breaker")
        if breaker is not None:
            spec_kind: type[TaskSpec] = GuardedTaskSpec
        else:
            spec_kind = TaskSpec if options.get("retry") is None else RetryingTaskSpec
        self._spec = spec_kind(
            name=options.get("name") or _describe(fn),
            # An executor is resolved to its adapter once, here, not per call.
            backend=backend if backend is None or isinstance(backend, str) else _runtime.get_backend(backend),
            timeout=options.get("timeout"),
            priority=options.get("priority", 0),
            limiter=limiter,
            is_async=_returns_coroutines(fn),
            async_cancel=options.get("async_cancel"),
            function_name=_short_name(fn),
            retry=options.get("retry"),
            breaker=breaker,
        )
        own = own_parameters(fn, _CALL_TIME_OPTIONS)
        self._call_time = tuple(o for o in _CALL_TIME_OPTIONS if o not in own)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AsyncHandle[T]:
        # The hot path: one handle, one backend lock round, nothing else unless
        # limits or call-time options are in play.
        spec = self._spec
        timeout = spec.timeout
        priority = spec.priority
        if kwargs and self._call_time:
            if "timeout" in kwargs and "timeout" in self._call_time:
                timeout = check_task_timeout(kwargs.pop("timeout"))
            if "priority" in kwargs and "priority" in self._call_time:
                priority = check_priority(kwargs.pop("priority"))
        backend = _runtime._default_instance if spec.backend is None else None
        if backend is None:
            backend = _runtime.get_backend(spec.backend)
        handle = AsyncHandle(
            self._fn, args, kwargs, contextvars.copy_context(), spec, backend, priority, timeout
        )
        if spec.limiter is not None or _runtime.global_limiter.limit is not None:
            loop = running_loop()
            if loop is not None and backend.holds_tasks:
                return self._admit_on_loop(handle, backend, loop)
            handle._permits = self._admit(handle)
        if _events.listeners:  # before submit: an inline backend runs the task within it
            tell_submitted(handle)
        try:
            backend.submit(handle)
        except BaseException as error:
            withdraw(handle, backend, error)
            raise
        return handle

    def _submit_until(
        self,
        deadline: float | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        recipient: Recipient | None = None,
    ) -> AsyncHandle[T]:
        """Call this function, a map's chunk or a group's task, waiting for a slot no later than ``deadline``.

        ``deadline`` (a ``time.monotonic()`` value; ``None``: none) bounds the
        wait under each limit that applies (``max_concurrent``,
        ``mp.set_max_concurrent_tasks``), as the map's or group's ``timeout``
        bounds the wait for its results; so does ``recipient`` (a group), whose
        stop ends it with its refusal (``Limiter.acquire``). A path of its own,
        so that ``__call__``, the hot path, carries neither.

        Raises:
            NoSlotInTime: ``deadline`` passed while the call waited for a slot;
                nothing was submitted and no slot is kept.
            Exception: ``recipient``'s refusal: it stopped taking tasks while
                the call waited for a slot; nothing was submitted. Else what
                calling the function raises.
        """
        if deadline is None and recipient is None:
            return self(*args, **kwargs)
        return self._submit_by(deadline, args, kwargs, recipient)

    def _submit_by(
        self,
        deadline: float | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        recipient: Recipient | None = None,
    ) -> AsyncHandle[T]:
        """:meth:`__call__`, its waits for a slot ending at ``deadline`` or ``recipient``'s stop (:meth:`_submit_until`)."""
        spec = self._spec
        timeout = spec.timeout
        priority = spec.priority
        if kwargs and self._call_time:
            kwargs = dict(kwargs)  # the caller's own: the options are taken out of a copy
            if "timeout" in kwargs and "timeout" in self._call_time:
                timeout = check_task_timeout(kwargs.pop("timeout"))
            if "priority" in kwargs and "priority" in self._call_time:
                priority = check_priority(kwargs.pop("priority"))
        backend = _runtime.get_backend(spec.backend)
        handle = AsyncHandle(self._fn, args, kwargs, contextvars.copy_context(), spec, backend, priority, timeout)
        if spec.limiter is not None or _runtime.global_limiter.limit is not None:
            loop = running_loop()
            if loop is not None and backend.holds_tasks:  # no wait there: the task waits for its slots instead
                return self._admit_on_loop(handle, backend, loop)
            handle._permits = self._admit(handle, deadline, recipient)
        if _events.listeners:
            tell_submitted(handle)
        try:
            backend.submit(handle)
        except BaseException as error:
            withdraw(handle, backend, error)
            raise
        return handle

    def options(self, **options: Any) -> ParallelFunction[P, T]:
        """A copy of this function with some options changed.

        Accepts the options of :func:`parallel`. The copy shares this function's
        metrics (unless renamed) and its ``max_concurrent`` slots (unless changed).
        """
        checked = _check_options(options)
        keeps_limit = "max_concurrent" not in checked
        return ParallelFunction(
            self._fn,
            {**self._options, **checked},
            self._spec.limiter if keeps_limit else None,
        )

    # Read on its class, the function itself; read on an instance, the method bound to it,
    # which takes the parameters after the first (self) and gives the same handles. For the
    # type checkers, which see the function under @staticmethod and @classmethod (either
    # order): a function whose first parameter takes the instance is a method, one whose
    # first parameter is a class (cls) a class method, bound on its class too; any other
    # a static method. `self` is matched as a Callable: mypy checks a ParallelFunction[...]
    # self-type's parameters only after their types are erased, and would bind them all.
    @overload
    def __get__(
        self: Callable[Concatenate[C, Q], AsyncHandle[T]], instance: None, owner: C
    ) -> _BoundParallelFunction[Q, T]: ...
    @overload
    def __get__(self, instance: None, owner: type | None = None) -> ParallelFunction[P, T]: ...
    @overload
    def __get__(
        self: Callable[Concatenate[S, Q], AsyncHandle[T]], instance: S, owner: type | None = None
    ) -> _BoundParallelFunction[Q, T]: ...
    @overload
    def __get__(  # type: ignore[misc]  # (mypy: no P starts with type[S]; a class method's does)
        self: Callable[Concatenate[type[S], Q], AsyncHandle[T]], instance: S, owner: type | None = None
    ) -> _BoundParallelFunction[Q, T]: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> ParallelFunction[P, T]: ...
    def __get__(self: ParallelFunction[..., Any], instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else _BoundParallelFunction(self, instance)

    def __reduce__(self) -> tuple[Any, ...]:
        # For pickle and every other pickler but the process backend's (_reduce_for_workers), as
        # they pickle a function: by its name, where that gives this very function (unpickled in
        # this process, it is this one; in another, the one that name gives there). Sent as its
        # function, it was refused: pickle sends a function by name, and the name gave the
        # decorator. A copy with other options: its function, by that name, and its options. Any
        # other (a lambda's, a closure's): its function itself, which cloudpickle sends by value
        # and pickle refuses, naming it.
        fn = self.__wrapped__  # what it is made of (its task may run it through MeasuredByItsTask)
        named = parallel_function_named(fn)
        # Nor one whose function cloudpickle sends by value, of the main script or of a module it
        # was told to (register_pickle_by_value: a cluster's workers cannot import it): by name,
        # it failed there (Dask's own submit, loky), and only pickle refuses it.
        if named is None or _sent_by_value(fn.__module__):
            return (ParallelFunction, (fn, self._portable_options()))
        reference = (fn.__module__, fn.__qualname__)
        if named is self:
            return (_named, reference)
        return (_named_copy, (*reference, self._portable_options()))

    def _reduce_for_workers(self) -> tuple[Any, ...]:
        # The process backend's pickler's (_worker_reductions): its function itself, which that
        # pickler sends by name where a worker imports it, by value where not. One of the main
        # script, which workers never run, would not be found there by its name.
        return (ParallelFunction, (self.__wrapped__, self._portable_options()))

    def _portable_options(self) -> dict[str, Any]:
        # Sent to another process: the function and options travel, not the
        # limiter, the breaker, the metrics record or an executor, which belong to this process.
        return {
            k: v
            for k, v in self._options.items()
            if k != "circuit_breaker" and (k != "backend" or isinstance(v, str))
        }

    def __copy__(self) -> ParallelFunction[P, T]:
        # Itself, as copy gives a plain function. Made through __reduce__, which is for
        # other processes, a copy (of an object holding it, too) lost in this one its
        # breaker (it ran while the breaker was open), its limiter and an executor backend.
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ParallelFunction[P, T]:
        return self

    def __repr__(self) -> str:
        return f"<parallel function {self._spec.name}>"

    def _admit_on_loop(self, handle: AsyncHandle[T], backend: Backend, loop: Any) -> AsyncHandle[T]:
        """Accept the task at once; it starts when the limits admit it (the loop never waits)."""
        limiters = [
            limiter
            for limiter in (self._spec.limiter, _runtime.global_limiter)
            if limiter is not None and limiter.limit is not None
        ]
        hold_for_admission(handle, backend, limiters, loop)
        return handle

    def _admit(
        self, handle: AsyncHandle[T], deadline: float | None = None, recipient: Recipient | None = None
    ) -> tuple[Limiter, ...]:
        """Take a slot for ``handle`` from each limit that applies, waiting while one is full (until ``deadline``, if given).

        Raises:
            NoSlotInTime: ``deadline`` passed first; no slot is kept.
            ShutdownError: the library was shut down as the call waited for a
                slot (or before it, the limit full); no slot is kept, and
                ``handle`` ends refused, as a pool's refusal ends it
                (:func:`refused_by_a_limit`).
            Exception: ``recipient``'s refusal, as it stopped first; no slot is kept.
        """
        # Picked before the try: CPython leaves the jumps that skip a loop's turn (a limit not set)
        # out of the try's range, and a Ctrl-C raised at one (a loop's turn) passed its handler by.
        limiters = [
            limiter
            for limiter in (self._spec.limiter, _runtime.global_limiter)
            if limiter is not None and limiter.limit is not None
        ]
        try:
            return take_slots(limiters, deadline, recipient)
        except ShutdownError as error:
            refused_by_a_limit(handle, error)
            raise


def _measured_by_the_task(
    fn: Callable[P, T], options: dict[str, Any]
) -> tuple[Callable[P, T], Callable[P, T], dict[str, Any]]:
    """What a parallel function of ``fn`` is made of, what its tasks run, and its options, where ``fn`` is or holds a ``@profiled`` function.

    Each task is measured already, from its start to its end: running the
    profiled wrapper, it counted every call twice (once as the task, once as
    the call). The task runs the function underneath, under the name
    ``@profiled`` gave it unless ``name=`` says another, as a function
    profiled again under another name is measured under that one alone. So
    does a partial of a profiled function (made again of the function
    underneath); a program's own wrapper of one (``functools.wraps``) runs as
    it is, its call of the profiled function left to the task to count
    (``_metrics.MeasuredByItsTask``). Called only where a profiled wrapper was
    made: a program without one pays one truth test of a dict, when a
    parallel function is made, never on a call.
    """
    if id(getattr(fn, "__code__", None)) in for_worker_functions:  # a @profiled wrapper, maybe
        from ._metrics import unprofiled  # (loaded: it made the wrapper)

        measured = unprofiled(fn)
        if measured is None:
            return fn, fn, options
        function, layer = measured
        if layer.name is not None and not options.get("name"):
            options = {**options, "name": layer.record}  # kept by copies (options()) and for workers
        return function, function, options
    if type(fn) is not functools.partial and getattr(fn, "__wrapped__", None) is None:
        return fn, fn, options  # a plain function, the usual case
    from ._metrics import MeasuredByItsTask, task_of_profiled

    if type(fn) is MeasuredByItsTask:  # sent to a worker as its parallel function's, made already
        return fn.__wrapped__, fn, options  # type: ignore[attr-defined]
    held = task_of_profiled(fn)
    if held is None:
        return fn, fn, options
    made_of, runs, layer = held
    if not options.get("name"):  # a partial's task was "partial(<name>)", where @profiled counted the call
        options = {**options, "name": layer.record}
    return made_of, runs, options


def refused_by_a_limit(handle: AsyncHandle[Any], error: ShutdownError) -> None:
    """End ``handle``, which a limit closed by a shutdown refused before any pool saw it, as a pool's refusal ends one.

    Told "submitted" then "finished" (failed), and counted submitted and
    failed: with the limit full, a call after ``shutdown()``, or one waiting
    for a slot as it came, raised ``ShutdownError`` from the limit's wait,
    told to no listener and counted nowhere, where the same call with a slot
    free was refused by the pool and counted.
    """
    if _events.listeners:
        tell_submitted(handle)
    handle._withdrawn(error)


def take_slots(
    limiters: list[Limiter],
    deadline: float | None = None,
    recipient: Recipient | None = None,
    through_shutdown: bool = False,
) -> tuple[Limiter, ...]:
    """Take a slot from each of ``limiters`` in turn, waiting while one is full: a call's, or ``mp.Executor``'s.

    ``through_shutdown``: as ``Limiter.acquire`` has it (an ``mp.Executor``'s task).

    Raises:
        NoSlotInTime: ``deadline`` passed first; no slot is kept.
        ShutdownError: makeparallel was shut down before or during a wait (not ``through_shutdown``).
        Exception: ``recipient``'s refusal, as it stopped first; no slot is kept.
    """
    permits: list[Limiter] = []
    try:
        for limiter in limiters:
            if not limiter.acquire(deadline, recipient, through_shutdown):
                raise NoSlotInTime
            permits.append(limiter)
        return tuple(permits)  # inside: a Ctrl-C as tuple() returns gives the slots back too
    except BaseException:
        for limiter in permits:
            limiter.release()
        raise


def hold_for_admission(handle: AsyncHandle[Any], backend: Backend, limiters: list[Limiter], loop: Any) -> None:
    """Accept ``handle`` at once, held until ``limiters`` admit it: a call's, or ``mp.Executor``'s, on a running loop.

    A Ctrl-C landing in ``backend.hold`` (a C call's return in it) ends the
    task cancelled: taken, it stayed held for good, no admission started for
    it, counted active and never told "finished"; not taken, it was told
    "submitted" and nothing more.

    Raises:
        BaseException: what ``backend.hold`` raised (``ShutdownError``, say); the task is withdrawn,
            or cancelled (a ``KeyboardInterrupt``).
    """
    if _events.listeners:
        tell_submitted(handle)
    try:
        backend.hold(handle)
    except BaseException as error:
        if handle._on_worker == HELD:  # taken (set last, under the pool's lock): cancelled as withdraw() does
            handle.cancel()
            backend.release_held(handle)  # forgotten there: it is no longer pending
        elif handle._state == PENDING and not isinstance(error, (ShutdownError, TaskSerializationError)):
            handle._interrupted_unsubmitted()
        else:
            handle._withdrawn(error)
        raise
    PendingAdmission(handle, backend, limiters, loop).start()


def tell_submitted(handle: AsyncHandle[Any]) -> None:
    """Tell the listeners that ``handle`` was submitted, before any backend has it; a call's, or ``mp.Executor``'s.

    On the main thread a listener's ``KeyboardInterrupt`` (Ctrl-C landing in
    it) is raised again once every listener was told. The task then ends
    cancelled, where no backend ever had it, its slots given back, and is told
    "finished" and counted so: else the listeners, told it was submitted, heard
    nothing more of it (an exporter counting the tasks in flight counted it for
    good), and the metrics, which never counted it, disagreed with them.

    Raises:
        KeyboardInterrupt: a listener's, on the main thread; ``handle`` ended cancelled.
    """
    try:
        _events.emit("submitted", handle)
    except BaseException:
        permits, handle._permits = handle._permits, ()  # taken first: withdraw() then gives none back again
        for limiter in permits:
            limiter.release()
        handle._interrupted_unsubmitted()
        raise


def withdraw(handle: AsyncHandle[Any], backend: Backend, error: BaseException) -> None:
    """Undo a submission that raised ``error`` (shut down, or Ctrl-C landed inside it): a call's, or ``mp.Executor``'s.

    A task the backend took and started (or ran to its end, inline) frees its
    slots as it ends; freed here too, a Ctrl-C landing once it ran gave a
    slot back twice, and the limit let one task more run at once for good.
    """
    if backend._holds(handle):
        handle.cancel()  # accepted: its end frees the slots, like any other
        return
    if handle._state != PENDING:  # taken: it runs, waits to retry, or ended
        # One that ended already (its executor refused it as sent, the call raising that) lost
        # no error: its caller has it, and never had the handle to read it from.
        handle._outcome_taken()
        return
    for limiter in handle._permits:
        limiter.release()
    handle._withdrawn(error)


class _GuardedParallelFunction(ParallelFunction[P, T]):
    """A parallel function behind a circuit breaker: each call first asks it for a permit."""

    _spec: GuardedTaskSpec

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AsyncHandle[T]:
        return self._submit_by(None, args, kwargs)

    def _submit_by(
        self, deadline: float | None, args: Any, kwargs: Any, recipient: Recipient | None = None
    ) -> AsyncHandle[T]:
        """Ask the breaker, then submit as a plain call does, its waits for a slot bounded as :meth:`_submit_until` says."""
        spec = self._spec
        breaker = spec.breaker
        assert breaker is not None
        permit = breaker.admit()
        if not isinstance(permit, int):
            return self._refused(permit, args, kwargs)
        # Kept for its backend's acceptance (task_submitted), however long the
        # call waits for its max_concurrent slot first.
        admitting = spec.admitting
        admitting.round = permit
        try:
            if deadline is None and recipient is None:
                return super().__call__(*args, **kwargs)
            return super()._submit_by(deadline, args, kwargs, recipient)
        except BaseException:
            if admitting.round is not None:  # never accepted: its permit goes back (else the task's end gives it)
                admitting.round = None
                breaker.release(permit)
            raise

    def _refused(self, error: CircuitOpenError, args: Any, kwargs: Any) -> AsyncHandle[T]:
        """A handle already failed with ``error``; or, when its retry policy names it, waiting to retry."""
        spec = self._spec
        timeout, priority = spec.timeout, spec.priority
        if kwargs and self._call_time:
            if "timeout" in kwargs and "timeout" in self._call_time:
                timeout = check_task_timeout(kwargs.pop("timeout"))
            if "priority" in kwargs and "priority" in self._call_time:
                priority = check_priority(kwargs.pop("priority"))
        backend = _runtime.get_backend(spec.backend)
        handle = AsyncHandle(self._fn, args, kwargs, contextvars.copy_context(), spec, backend, priority, timeout)
        retry = spec.retry
        if retry is not None and retry.attempts > 1 and retry.retries(error):
            if _events.listeners:  # accepted, to retry: its events begin as any accepted task's
                tell_submitted(handle)
            try:
                backend._accept_refused(handle, error)
            except BaseException as refusal:
                handle._withdrawn(refusal)
                raise
        else:
            handle._refused_outright(error)
        return handle


class _BoundParallelFunction(Generic[P, T]):
    """A parallel method bound to its instance (what ``obj.method`` gives).

    Generic as :class:`ParallelFunction` is: ``P`` is the method's parameters
    after the one the instance fills, ``T`` its result.
    """

    __slots__ = ("_function", "_instance")

    def __init__(self, function: ParallelFunction[Concatenate[Any, P], T], instance: Any) -> None:
        self._function = function
        self._instance = instance

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AsyncHandle[T]:
        return self._function(self._instance, *args, **kwargs)

    def _submit_until(
        self,
        deadline: float | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        recipient: Recipient | None = None,
    ) -> AsyncHandle[T]:
        """:meth:`ParallelFunction._submit_until` of the method, bound to the instance."""
        return self._function._submit_until(deadline, (self._instance, *args), kwargs, recipient)

    def options(self, **options: Any) -> _BoundParallelFunction[P, T]:
        """A copy bound to the same instance, with some options changed.

        Accepts the options of :func:`parallel`, as :meth:`ParallelFunction.options` does.

        Raises:
            TypeError: an option is unknown or of the wrong type.
            ValueError: an option has a value out of range.
        """
        return _BoundParallelFunction(self._function.options(**options), self._instance)

    def __reduce__(self) -> tuple[Any, ...]:
        # Its function and instance, each pickled as itself (the function by its name, for
        # pickle). Pickled as its slots, it was made again without them, and unpickling asked it
        # for __setstate__, which __getattr__ looked up on its function, not set yet: for good
        # (RecursionError), whatever the pickler, the process backend's too.
        return (_BoundParallelFunction, (self._function, self._instance))

    # As copy treats a bound method: the function itself, bound to the instance (deepcopy: to
    # its copy). Else __getattr__ answered for the function: copy.copy recursed for good (on
    # an instance with no slots set yet), and copy.deepcopy gave the function, unbound.
    def __copy__(self) -> _BoundParallelFunction[P, T]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _BoundParallelFunction[P, T]:
        import copy  # (only where something is copied)

        return _BoundParallelFunction(self._function, copy.deepcopy(self._instance, memo))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._function, name)

    def __repr__(self) -> str:
        return f"<bound parallel method {self._function._spec.name} of {self._instance!r}>"


def callable_of(fn: Any) -> Any:
    """``fn`` as what a call of it runs, for the maps, executors, groups and the pool's initializer.

    A staticmethod object (as its class's body reads it, in a table of steps
    there, say; callable since 3.10) is the function it holds, nested ones too:
    a ``@parallel`` one's, called, gave its handle. And a ``@parallel``
    function under ``@classmethod`` is its :class:`_BoundParallelFunction`:
    read on its class, such a method binds the class through the function's
    ``__get__`` only up to Python 3.12; from 3.13 it is a plain bound method
    of the ``ParallelFunction``, called as a function returning handles
    (``@parallel`` over ``@classmethod`` binds itself: :class:`_ParallelClassMethod`).
    Anything else is ``fn`` itself.
    """
    while isinstance(fn, staticmethod):
        fn = fn.__func__
    if type(fn) is MethodType and isinstance(fn.__func__, ParallelFunction):
        return _BoundParallelFunction(fn.__func__, fn.__self__)
    return fn


class _ParallelClassMethod(classmethod):  # type: ignore[type-arg]
    """A parallel class method (``@parallel`` over ``@classmethod``): it binds its class itself.

    A plain ``classmethod`` binds the class through the ``__get__`` of what it
    wraps only up to Python 3.12; from 3.13 it gives a plain bound method, whose
    ``options()`` lost the class and which a map ran as a function returning handles.
    """

    __func__: ParallelFunction[..., Any]

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        # (mypy reads __func__ through ParallelFunction.__get__, as if it were this class's method.)
        return _BoundParallelFunction(self.__func__, type(instance) if owner is None else owner)  # type: ignore[arg-type]

    def __reduce__(self) -> tuple[Any, ...]:
        # A class sent by value to a worker process (one of the main script) carries its methods.
        return (_ParallelClassMethod, (self.__func__,))


# The process backend's pickler sends a parallel function so, not as its __reduce__ says.
for_workers[ParallelFunction] = for_workers[_GuardedParallelFunction] = ParallelFunction._reduce_for_workers


def _unbound(target: Any) -> Any:
    """The parallel function a class method read on its class binds; anything else as it is.

    Bound by :class:`_ParallelClassMethod`, or from Python 3.13 under
    ``@classmethod``, a method whose ``__func__`` it is.
    """
    if type(target) is _BoundParallelFunction:
        return target._function
    return target.__func__ if isinstance(target, MethodType) else target


def parallel_function_named(fn: Any) -> ParallelFunction[..., Any] | None:
    """The parallel function of ``fn`` that ``fn``'s module holds under ``fn``'s qualified name, or None.

    A method's is read on its class, a class method's through the class it
    binds. The module is looked up, not imported: a function's module is
    imported. Defined after the classes: a thread that imports this module
    finds it half imported (``_serialization._parallel_reference``).
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    target = _unbound(held_under(module, qualname))
    return target if isinstance(target, ParallelFunction) and target.__wrapped__ is fn else None


def held_under(module: str, qualname: str) -> Any:
    """What ``module``, as imported here (looked up, not imported), holds under ``qualname``; None where nothing."""
    target: Any = sys.modules.get(module)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target


def _sent_by_value(module: str) -> bool:
    """Whether cloudpickle sends the functions of ``module`` by value: the main script's, or a registered module's.

    A cluster's workers (Dask's, loky's under joblib) never run the main
    script, and cannot import a module registered with
    ``cloudpickle.register_pickle_by_value``, or one of a package registered
    so. Not imported here: nothing is registered before cloudpickle is.
    """
    if module == "__main__":
        return True
    cloudpickle = sys.modules.get("cloudpickle")
    if cloudpickle is None:
        return False
    registered = cloudpickle.list_registry_pickle_by_value()
    parts = module.split(".")
    return any(".".join(parts[:end]) in registered for end in range(1, len(parts) + 1))


def _named(module: str, qualname: str) -> ParallelFunction[..., Any]:
    """The parallel function ``module`` holds under ``qualname``: a parallel function unpickled, by its name.

    Raises:
        ImportError: ``module`` cannot be imported here.
        AttributeError: it has no object of that name.
        TypeError: the name holds no parallel function here.
    """
    # Imported here, as this unpickles: a program of thread tasks needs no pickler.
    from ._serialization import imported_object

    target = imported_object(module, qualname)
    function = _unbound(target)
    if not isinstance(function, ParallelFunction):
        raise TypeError(
            f"a @parallel function pickled as {module}.{qualname} cannot be unpickled: that name holds "
            f"{target!r} of type {type(target).__qualname__} here. Unpickle it where its module "
            "defines it as it did where it was pickled"
        )
    return function


def _named_copy(module: str, qualname: str, options: dict[str, Any]) -> ParallelFunction[..., Any]:
    """The function of the parallel function ``module`` holds under ``qualname``, made parallel with ``options``: a copy unpickled.

    Raises:
        ImportError, AttributeError, TypeError: as :func:`_named`.
    """
    return ParallelFunction(_named(module, qualname).__wrapped__, options)


def _returns_coroutines(fn: Any) -> bool:
    """Whether calling ``fn`` is known to give a coroutine (``async def``, or its ``__call__``)."""
    code = _plain_code(fn)
    if code is not None:
        return bool(code.co_flags & _CO_COROUTINE)
    if type(fn) is BuiltinFunctionType:  # a C function: never async def
        return False
    import inspect

    # A mock made with spec= of a function is asked nothing: its code flags are mocks (code_is_real).
    return any(
        inspect.iscoroutinefunction(each) for each in (fn, getattr(fn, "__call__", None)) if code_is_real(each)
    )


def wraps_async(fn: Any) -> bool:
    """Whether ``fn`` is a decorator's wrapper (``functools.wraps``) around an ``async def`` function: a map and a task of a profiled function's wrapper await it."""
    seen: set[int] = set()
    wrapped = getattr(fn, "__wrapped__", None)
    while wrapped is not None and id(wrapped) not in seen:
        seen.add(id(wrapped))
        if _returns_coroutines(wrapped):
            return True
        wrapped = getattr(wrapped, "__wrapped__", None)
    return False


def _describe(fn: Any) -> str:
    """A short, stable name for ``fn``: its ``__qualname__``, else its class's (``partial(f)`` for a partial).

    Not its ``repr``: a partial's holds every argument bound to it (a lookup
    table made a name of megabytes, which each process task carried and each
    metrics label repeated), and a callable object's its address (one metrics
    record per instance).
    """
    name = getattr(fn, "__qualname__", None)
    if isinstance(name, str) and name:
        return name
    if isinstance(fn, functools.partial):
        return f"partial({_describe(fn.func)})"
    return type(fn).__qualname__


def _short_name(fn: Any) -> str | None:
    """The ``__name__`` of ``fn`` if it is a str, else ``None`` (a mock made with ``spec=`` of a function has a mock)."""
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else None


# What a function's attributes must be, of those functools.wraps copies onto one.
_WRAPPER_KINDS = {"__name__": str, "__qualname__": str, "__annotations__": dict, "__type_params__": tuple}


def _wraps(fn: Any) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """``functools.wraps(fn)``, less the attributes that a function cannot take from ``fn``.

    A mock made with ``spec=`` of a function has a mock for its name and its
    annotations, which a function's must be a str and a dict: ``functools.wraps``
    raised ``TypeError``. The wrapper keeps its own there.
    """
    assigned = tuple(
        name
        for name in functools.WRAPPER_ASSIGNMENTS
        if name not in _WRAPPER_KINDS or isinstance(getattr(fn, name, None), _WRAPPER_KINDS[name])
    )
    return functools.wraps(fn, assigned=assigned)


def as_parallel(
    fn: Callable[..., T], backend: _runtime.BackendOption | None = None
) -> ParallelFunction[..., T] | _BoundParallelFunction[..., T]:
    """``fn`` itself if it is already parallel, else a parallel version of it.

    Raises:
        TypeError: ``fn`` is not callable. Checked here, for ``None`` above
            all: ``parallel(None)`` is the decorator that ``@parallel(...)``
            returns, which the caller would then take for a parallel function.
    """
    if isinstance(fn, (ParallelFunction, _BoundParallelFunction)):
        return fn
    if not callable(fn):
        raise TypeError(f"a task needs a callable (a function or method) to run, got {fn!r} of type {type(fn).__name__}")
    return parallel(fn) if backend is None else parallel(backend=backend)(fn)


# An async def function's handle holds what its coroutine returns: the task runs it to the end.
@overload
def parallel(fn: Callable[P, Coroutine[Any, Any, T]], /) -> ParallelFunction[P, T]: ...
@overload
def parallel(fn: Callable[P, T], /) -> ParallelFunction[P, T]: ...
@overload
def parallel(
    *,
    backend: _runtime.BackendOption | None = None,
    timeout: float | None = None,
    priority: int = 0,
    max_concurrent: int | None = None,
    name: str | None = None,
    async_cancel: str | None = None,
    retry: Retry | None = None,
    circuit_breaker: CircuitBreaker | None = None,
) -> _Decorator: ...
def parallel(fn: Any = None, /, **options: Any) -> Any:
    """Make a function run in parallel: each call returns an :class:`AsyncHandle` at once.

    Use it bare (``@parallel``) or with options (``@parallel(timeout=5)``), on
    functions, methods, static methods and class methods, plain or ``async def``.
    An ``async def`` function's coroutine (or the coroutine a plain function
    returns) runs to completion on an event loop owned by the worker that runs
    it, one per worker thread or worker process, reused; await its handle from
    asyncio code. ``parallel_fast``, ``parallel_pool`` and ``parallel_priority``
    are the same decorator under the names makeparallel 0.2 used.

    Example::

        @parallel(backend="process", timeout=60)
        def count_primes(limit: int) -> int: ...

        handle = count_primes(100_000)  # returns at once
        print(handle.get())             # waits, then the result or the task's error

    Keyword Args:
        backend (str | concurrent.futures.Executor | None): where tasks run:
            ``"thread"`` (a pool of threads in this process; the default unless
            ``configure(backend=...)`` or the ``MAKEPARALLEL_BACKEND`` environment
            variable says otherwise), ``"process"`` (a pool of worker processes,
            each with its own GIL: pure-Python CPU work), ``"auto"`` (threads on
            a free-threaded Python, processes otherwise), ``"sync"`` (inline in
            the caller, for debugging and tests), ``"interpreter"``
            (sub-interpreters, Python 3.14+), ``"dask"`` (a Dask cluster:
            ``configure(dask_client=...)`` or the current client) or any
            ``concurrent.futures.Executor`` instance (its adapter runs the
            tasks there). ``None``: the default backend.
        timeout (float | None): seconds a task may run once started; then its
            handle fails with ``TaskTimeoutError`` and ``check_cancelled()``
            raises inside it.
        priority (int): queued tasks with a higher priority start first, tasks
            of equal priority in submission order.
        max_concurrent (int | None): at most this many tasks of the function in
            flight; a call over the limit waits until one ends. Called on a
            thread whose asyncio event loop runs, it returns the handle at once
            and the task waits for its slot instead; on ``"sync"``, a blocking
            wait for it on that thread runs it there once its slot frees.
        name (str | None): the name in metrics and error notes (default:
            ``__qualname__``; over ``@profiled``, the name it records under).
        async_cancel (str | None): what cancelling the coroutine that awaits a
            task does to it: ``"cooperative"`` (``handle.cancel()``) or
            ``"force"`` (``handle.cancel(force=True)``: on the process backend
            the worker is stopped); default: ``configure(async_cancel=...)``.
        retry (Retry | None): run a failed task again, after a backoff that
            holds no worker; the handle stays unfinished meanwhile.
        circuit_breaker (CircuitBreaker | None): a breaker to ask before each
            call; while it is open, the call returns a handle already failed
            with ``CircuitOpenError`` and the task never runs.

    Returns:
        A :class:`ParallelFunction` (used bare), or a decorator that makes one
        (called with options).

    Raises:
        TypeError: ``fn`` is not callable, is a generator or async generator
            function (also behind ``functools.partial`` or a ``functools.wraps``
            decorator: use :func:`imap`, or return a list), or an option is
            unknown or of the wrong type.
        ValueError: an option has a value out of range.

    Over @profiled:
        Each task is measured already, from its start to its end, so a
        ``@profiled`` function made parallel (``@parallel`` above
        ``@profiled``) runs the function underneath, which is its
        ``__wrapped__``: a call counts once, as the task, under the name
        ``@profiled`` records under, or under ``name=`` alone where it gives
        another (as a function profiled again under another name is measured).
        So does a ``functools.partial`` of one (made again of the function
        underneath), and a wrapper of your own around one (``functools.wraps``),
        which runs as it is: its call of the profiled function, the first in
        the task, is the task's; later calls (the function calling itself)
        count as calls.
    """
    checked = _check_options(options)

    def decorate(function: Any) -> Any:
        if isinstance(function, staticmethod):
            return staticmethod(decorate(function.__func__))
        if isinstance(function, classmethod):
            return _ParallelClassMethod(decorate(function.__func__))
        if not callable(function):
            raise TypeError(
                f"@parallel needs a callable (a function or method), got "
                f"{function!r} of type {type(function).__name__}"
            )
        if isinstance(function, (ParallelFunction, _BoundParallelFunction)):
            raise TypeError(
                f"{_describe(function.__wrapped__)} is already parallel; use "
                ".options(...) to change its options"
            )
        _refuse_generator_function(function)
        policy = getattr(function, "__makeparallel_retry__", None)
        if policy is not None:  # @parallel over @retry(...): the policy becomes retry=
            plain = function.__wrapped__
            if type(function) is MethodType:  # one read on its instance (an async def's): bound to it still
                plain = MethodType(plain, function.__self__)
            return ParallelFunction(plain, {"retry": policy, **checked})
        return ParallelFunction(function, checked)

    return decorate if fn is None else decorate(fn)


def _generator_kind(fn: Any) -> str | None:
    """``"generator"`` or ``"async generator"`` if calling ``fn`` makes one, else ``None``.

    Looks through ``functools.partial``, bound methods, ``functools.wraps``
    decorators (their ``__wrapped__``) and the ``__call__`` of callable objects.
    """
    code = _plain_code(fn)
    if code is not None:
        if code.co_flags & _CO_ASYNC_GENERATOR:
            return "async generator"
        return "generator" if code.co_flags & _CO_GENERATOR else None
    if type(fn) is BuiltinFunctionType:  # a C function: no generator function
        return None
    import inspect

    seen: set[int] = set()
    while id(fn) not in seen:
        seen.add(id(fn))
        if not code_is_real(fn):  # a mock made with spec= of a function: called, it makes its return value
            return None
        if inspect.isasyncgenfunction(fn):
            return "async generator"
        if inspect.isgeneratorfunction(fn):  # also sees through partials and methods
            return "generator"
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif inspect.ismethod(fn):
            fn = fn.__func__
        elif getattr(fn, "__wrapped__", None) is not None:
            fn = fn.__wrapped__
        elif not inspect.isroutine(fn) and not isinstance(fn, type) and callable(fn):
            fn = type(fn).__call__
    return None


def _refuse_generator_function(fn: Any) -> None:
    """Raise ``TypeError`` for a function whose call only creates a generator.

    A task would hand back a generator whose body never ran, on any thread: the
    work would happen later, on the thread that iterates it, not in parallel.
    """
    kind = _generator_kind(fn)
    if kind is None:
        return
    article = "an" if kind.startswith("a") else "a"
    raise TypeError(
        f"@parallel cannot run {_describe(fn)}: it is {article} {kind} function (or wraps one), "
        f"so a task would only create the {kind} and none of its body would run in "
        "parallel. Map a plain function over the items with makeparallel.imap(fn, items) "
        "(or parallel_map), or make the function return a list"
    )


parallel_fast = parallel
"""``parallel`` under a name makeparallel 0.2 used, so that 0.2 code runs as it is: the same decorator."""
parallel_pool = parallel
"""``parallel`` under a name makeparallel 0.2 used, so that 0.2 code runs as it is: the same decorator."""
parallel_priority = parallel
"""``parallel`` under a name makeparallel 0.2 used, so that 0.2 code runs as it is: the same decorator."""
parallel_async = parallel
"""``parallel`` under the name async code looks for: the same decorator.

It takes ``async def`` functions as well as plain ones, and what it returns is
awaited: ``await fetch(url)`` from a coroutine, or ``await mp.gather_async(...)``.
"""
