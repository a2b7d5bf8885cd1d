"""``Executor``: the library's pools behind the standard ``concurrent.futures.Executor`` interface.

For code that takes an executor (``loop.run_in_executor``, libraries with an
``executor=`` argument): each ``Executor`` owns a pool of its own, sized by
``max_workers``, and runs tasks with the library's engine (priority queues,
metrics, the process backend's fault handling). Its ``shutdown`` stops that pool
only, never the shared pools that ``@parallel`` functions use.

What ``submit`` returns is a real ``concurrent.futures.Future`` (a subclass):
``asyncio.wrap_future`` asserts the type, and ``concurrent.futures.wait`` and
``as_completed`` read its private state. The task's :class:`AsyncHandle` is on
``future.handle``, for metadata, progress and the library's callbacks. The future
follows the handle: one done-callback per task, set before the task can start.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from types import FunctionType, MethodType, TracebackType
from typing import Any, TypeVar, overload

from . import _events, _fork_child, _runtime
from ._admission import Limiter, NoSlotInTime, Recipient, ResultReady, UntilReady
from ._backends._base import Backend, pool_of_this_thread
from ._backends._sync import SyncBackend
from ._backends._thread import ThreadBackend
from ._coroutines import (
    is_coroutine,
    on_callers_loops,
    one_only_this_thread_can_end,
    run_to_end,
    running_loop,
)
from ._cpus import usable_cpu_count
from ._decorators import (
    ParallelFunction,
    TaskSpec,
    _BoundParallelFunction,
    _describe,
    _GuardedParallelFunction,
    callable_of,
    hold_for_admission,
    take_slots,
    tell_submitted,
    withdraw,
)
from ._gil_watch import EXECUTOR_REMEDY
from ._handle import _ON_DONE_OWN, AsyncHandle
from ._interruptible import bounded
from ._process_chunks import UNREPLACED, disown_worker_death, short_repr, template_died
from ._states import CANCELLED, HELD, PENDING, RUNNING, SUCCEEDED
from ._task_context import current_task
from ._unsendable_chunk import (
    TOO_DEEP,
    caused,
    first_unsendable_together,
    refuse_unsendable_function,
    too_deep,
)
from ._validation import as_seconds, check_count, check_wait_timeout, is_real
from ._worker_reductions import for_worker_functions
from .errors import (
    ShutdownError,
    TaskSerializationError,
    TaskTimeoutError,
    WorkerCrashedError,
)

__all__ = ["Executor", "ExecutorFuture"]

T = TypeVar("T")

_BACKENDS = ("thread", "process", "sync", "auto")


class ExecutorFuture(concurrent.futures.Future[T]):
    """The ``concurrent.futures.Future`` of a task submitted to an :class:`Executor`.

    It behaves as the standard future does; ``handle`` is the task's
    :class:`AsyncHandle`, for metadata, progress and ``on_progress`` callbacks.

    Cancellation:
        As in ``concurrent.futures``, ``cancel()`` cancels a task that has not
        started and returns ``False`` for one that runs or ended. The handle's own
        ``future.handle.cancel()`` also stops a running task, cooperatively (its
        next ``check_cancelled()`` raises); the future then reads as cancelled.
    """

    handle: AsyncHandle[T]

    def __init__(self, handle: AsyncHandle[T]) -> None:
        super().__init__()
        self.handle = handle

    def cancel(self) -> bool:
        """Cancel the task if it has not started; return whether it is cancelled."""
        handle = self.handle
        if _fork_child.boundary and self._the_parents():
            return False
        backend = handle._backend
        with backend._lock:
            # Held for a process worker still starting, it has not started either.
            held = handle._state == RUNNING and backend._holds_locked(handle)
            if handle._state != PENDING and not held:
                return handle._state == CANCELLED
            announce = handle._cancel_locked()
        handle._after_settle(announce)  # runs _follow below: the future is cancelled
        if held:
            backend._abandoned(handle)  # the worker's held tasks lose it: its code never runs
        return True

    def running(self) -> bool:
        """Whether the task is running now."""
        return not self.done() and self.handle.running()

    def __repr__(self) -> str:
        """As the standard future's, with ``state=running`` while the task runs.

        The standard future's own state goes from pending to finished here
        (its handle runs the task; ``set_running_or_notify_cancel`` is only
        for its end), so its repr said ``state=pending`` for a running task.
        """
        if self.running():
            return f"<{type(self).__name__} at {id(self):#x} state=running>"
        return super().__repr__()

    def done(self) -> bool:
        """Whether the task ended (in a forked child, a task of the parent's has: ``_fork_child``)."""
        if _fork_child.boundary:
            self._the_parents()
        return super().done()

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[T]], object]) -> None:
        """Call ``fn(future)`` once the task ends, at once if it has (``concurrent.futures``)."""
        if _fork_child.boundary:
            self._the_parents()
        super().add_done_callback(fn)

    def result(self, timeout: float | None = None) -> T:
        """The task's result, as ``concurrent.futures.Future.result`` gives it.

        Inside a task of one of the library's pools it waits as the handle does
        (see :meth:`_wait_inside_a_task`), so that a task waiting for futures of
        its own executor cannot deadlock it.

        An exception that is false (``__bool__`` or ``__len__``) is raised too:
        the standard ``result()`` tests ``if self._exception`` up to Python 3.13
        and returned ``None`` for it. ``timeout=math.inf``, or an int too large
        for a float, waits as long as it takes, as ``None`` does: the standard
        one raises ``OverflowError`` for either. Any real number of seconds is
        taken (NumPy's ``float32``, a ``Fraction``), where the standard one
        raised ``TypeError`` for a pending future.

        Raises:
            RuntimeError: the task has not ended and this is its process pool's
                loop thread (in a done-callback of this executor's futures),
                which reads the result waited for: the wait could never end; or
                its coroutine runs on the event loop of the code that submitted
                it (the ``"sync"`` backend, from a coroutine), and this thread
                runs that loop, or ran it and it is stopped.
            ShutdownError: that loop closed before the coroutine ended.
        """
        error = super().exception(self._wait_inside_a_task(timeout))
        if error is None:
            return self._result  # type: ignore[return-value]  # finished without an exception: the result is set
        try:
            # The handle's error (_follow): raised from its first traceback, not with every earlier raise's frames.
            raise self.handle._error_to_raise() if error is self.handle._value else error
        finally:
            del self, error  # the traceback holds this frame: no cycle back to the error (as the standard result())

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception, as ``concurrent.futures.Future.exception`` gives it (see :meth:`result`).

        The handle's error comes with the traceback it ended with, not with the
        frames of the last :meth:`result` that raised it: ``asyncio.wrap_future``
        reads it here, and raised from that traceback at every ``await``.
        """
        error = super().exception(self._wait_inside_a_task(timeout))
        return self.handle._error_to_raise() if error is not None and error is self.handle._value else error

    def _wait_inside_a_task(self, timeout: float | None) -> float | None:
        """On a pool's worker, wait through the handle; return what is left of ``timeout``.

        ``concurrent.futures``' own wait would block the worker while the task it
        waits for stays queued behind it: on a pool of one, forever. The handle's
        wait runs a queued task inline (without a timeout) or lends the worker's
        place (with one). The future's done-callback runs before the handle's
        waiters are woken, so once the handle ended the future has too. Outside
        a pool's worker the task still runs on the pool; in a task there (the
        sync backend's, one run inline on the main thread) the wait is the
        handle's blocking one all the same: the task's cancel or timeout ends it
        (``CancellationPoint``), which the standard wait never did.
        On the thread of a running event loop, a task held there for its slot
        (see ``mp.set_max_concurrent_tasks``) is waited for by the handle too:
        a ``"sync"`` one runs there once admitted, which the loop, blocked by
        this wait, never did.

        What is left is capped at the longest wait a lock takes: the standard
        wait passes a longer one (``math.inf``) to a lock, which refuses it
        with ``OverflowError``. It is a float where ``timeout`` is any real
        number (NumPy's ``float32``, a ``Fraction``), as the handle's waits take
        it: a lock takes only an int or a float, and raised ``TypeError``.
        """
        if timeout is not None and is_real(timeout):
            timeout = as_seconds(timeout)  # (anything else, as the standard wait takes it)
        if _fork_child.boundary:
            self._the_parents()
        if self.done():
            return None if timeout is None else bounded(timeout)
        if self.handle._backend.reads_results_here():
            # As the handle's own wait refuses there (AsyncHandle._refuse_to_block_a_loop).
            raise RuntimeError(
                f"the future of task {self.handle._id} ({self.handle.name}) is waited for on its "
                "process pool's loop thread (a done-callback of the executor's futures runs here), "
                "which reads the result this wait is for: the wait could never end, and no other "
                "task of the executor could either. Submit the follow-up work from the callback "
                "and return, or wait from another thread"
            )
        handle = self.handle
        if handle._on_worker == HELD and running_loop() is not None:
            # Held for its slot, submitted from a coroutine: a "sync" task then runs on that loop's
            # thread, which this wait blocks. The handle's wait runs it here once admitted
            # (AsyncHandle._wait_beside_held); the standard wait lasted for good, or its whole timeout.
            handle.wait(None if timeout is None else bounded(max(0.0, timeout)))
            return None if timeout is None else 0.0
        if on_callers_loops and handle in on_callers_loops:
            # Its coroutine runs on the loop of the code that called it, which alone ends it (or,
            # held for its slot, it runs on that loop's thread once admitted): the handle's wait
            # ends it if that loop closed (also while it waits), or refuses where nothing could
            # run the loop. The standard wait never looked, and lasted for good.
            handle._refuse_to_block_a_loop()
            handle._block(None if timeout is None else bounded(max(0.0, timeout)))
            return None if timeout is None else 0.0
        if pool_of_this_thread() is None:
            if current_task() is None:
                return None if timeout is None else bounded(timeout)
            self.handle._block(None if timeout is None else bounded(max(0.0, timeout)))  # nothing inline, nor lent
            return None if timeout is None else 0.0
        if timeout is None:
            self.handle.wait()
            return None
        self.handle.wait(max(0.0, timeout))
        return 0.0

    def _the_parents(self) -> bool:
        """Whether this is the future of a task of a process that forked this one; it has then ended here, as its handle.

        The handle's callbacks, this one's ``_follow`` among them, and the
        future's own are the parent's, and do not run in the child: the future
        follows here. Its lock is made anew first, as the standard library does
        for its own after a fork: the parent's thread that started the task may
        have held it. ``concurrent.futures.wait()`` and ``as_completed()`` read
        its state directly, and are not told.
        """
        handle = self.handle
        if handle._id >= _fork_child.boundary or handle._id == _fork_child.running_here:
            return False
        if self._state in ("PENDING", "RUNNING"):  # read without its lock
            handle._the_parents()
            self._condition = threading.Condition()
            self._done_callbacks.clear()  # type: ignore[attr-defined]  # the parent's
            self._follow(handle)
        return True

    def _follow(self, handle: AsyncHandle[T]) -> None:
        """The handle ended: end the future the same way (its done-callback)."""
        state = handle._state
        if state == SUCCEEDED:
            self.set_result(handle._value)
        elif state == CANCELLED:
            super().cancel()
            self.set_running_or_notify_cancel()  # wakes concurrent.futures.wait()
        else:
            self.set_exception(handle._error_for_caller())


class Executor(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` running tasks on a pool of the library's own.

    Args:
        backend: ``"thread"`` (the default), ``"process"``, ``"auto"`` (threads on
            a free-threaded Python, processes otherwise) or ``"sync"`` (each task
            runs inside ``submit``).
        max_workers: threads or worker processes in this executor's pool, an int
            >= 1; default: the CPUs this process may use (affinity and cgroup
            quota, :func:`makeparallel._cpus.usable_cpu_count`).

    Raises:
        ValueError: ``backend`` is not one of the names above, or ``max_workers``
            is below 1.
        TypeError: ``max_workers`` is not an int.
        RuntimeError: made in a signal handler that interrupted the main
            thread as it held the library's lock (a first task's pool being
            made, another ``Executor`` being made) or the memory limit's, both
            of which making one takes: raised within 0.25 s, where it waited
            for good; nothing is made. Make it from another thread, or have
            the handler set a flag and make it in your program's own flow.

    Example::

        with mp.Executor(max_workers=4) as executor:
            squares = list(executor.map(pow, range(10), itertools.repeat(2)))
            result = await loop.run_in_executor(executor, blocking_call)

    Differences from the standard executors:
        A worker process that dies (crash, signal, ``os._exit``) fails only the
        task it ran, with ``WorkerCrashedError``; a new worker takes its place
        and the executor stays usable, where ``ProcessPoolExecutor`` breaks as a
        whole (``BrokenProcessPool``). Functions and arguments for worker
        processes travel with cloudpickle, so lambdas and closures work. A
        ``@parallel`` function given to ``submit`` or ``map`` runs as its plain
        function on this executor's pool, as ``parallel_map`` runs it (see
        :meth:`submit`).

    Shutdown:
        ``shutdown()`` stops this executor's pool only, and only it makes the
        executor refuse tasks (``RuntimeError``), as the standard executors'
        own ``shutdown()`` does. ``makeparallel.shutdown()``, which refuses
        ``@parallel`` calls with ``ShutdownError``, leaves the executor
        taking tasks whatever the state of ``set_max_concurrent_tasks``' limit
        (or a function's ``max_concurrent``): over it, a task waits for its
        slot before, through and after that shutdown, as at any other time
        (on an event loop's thread, held without blocking the loop). An executor garbage
        collected without it is shut down as by ``shutdown(wait=False)``, as the
        standard executors are: the tasks it was given still run, and their
        futures end; then its workers stop. At interpreter exit, the tasks it
        was given run first, also after ``shutdown(wait=False)``, as the standard
        executors' do (waited for as ``@parallel`` tasks are, at most
        ``configure(exit_timeout=...)``); then its worker processes are stopped.
        A Ctrl-C (``KeyboardInterrupt``) leaving a ``with`` block, in its body
        or as its end waits for the tasks, cancels the tasks not started and
        does not wait for the running ones, where the standard executors wait
        for their whole queue.
    """

    def __init__(self, backend: str = "thread", max_workers: int | None = None) -> None:
        if backend not in _BACKENDS:
            accepted = ", ".join(repr(name) for name in _BACKENDS)
            raise ValueError(f"backend must be one of {accepted}, got {backend!r}")
        self._max_workers = usable_cpu_count() if max_workers is None else check_count(max_workers, "max_workers")
        # Its pool, made below, takes the locks every new pool's making takes.
        _runtime.refuse_under_a_held_lock(
            "mp.Executor()",
            _runtime.locks_making_a_pool_takes,
            "Nothing was made. Make it from another thread, or have the handler set a flag and make it "
            "from your program's own flow",
        )
        self._backend = _make_backend(_runtime.resolve_auto(backend), self._max_workers)
        self._backend.outlives_shutdown = True  # its tasks wait for their slots through mp.shutdown()
        # Read by the executor adapter, should this executor itself serve as a backend: whether calls
        # run in this process, and the pool whose tasks carry its tasks (_makeparallel_carry).
        self._makeparallel_in_process = self._backend.name != "process"
        self._makeparallel_pool = self._backend
        self._carriers: dict[str, _Carrier] = {}
        self._specs: dict[str, TaskSpec] = {}
        # Those of @parallel functions' tasks, by name, limiter and priority (_spec_of).
        self._parallel_specs: dict[tuple[str, Limiter | None, int], TaskSpec] = {}
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        self._pid = os.getpid()  # a forked child's copy refuses tasks (_refusal)
        # Stopped at interpreter exit (_left_at_exit), and listed by health() and the pool gauges (_named_pools).
        _names[id(self._backend)] = f"Executor-{id(self):x}"
        _live.add(weakref.ref(self._backend, functools.partial(_forget, id(self._backend))))
        _runtime.stop_at_exit(_left_at_exit)
        _runtime.report_pools(_named_pools)
        _runtime.follow_memory_pause(self._backend)  # listed above first: see there
        # Garbage collected without shutdown(): its tasks finish, then its pool stops.
        self._finalizer = weakref.finalize(self, _release_in_background, self._backend)
        self._finalizer.atexit = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """End a ``with`` block: ``shutdown(wait=True)``, as the standard executors do; after Ctrl-C, no wait.

        A ``KeyboardInterrupt`` leaving the block, or interrupting that wait
        for the tasks, cancels the tasks not yet started and returns at once
        (``shutdown(wait=False, cancel_futures=True)``): the wait for a long
        queue came after the user's Ctrl-C, a hang until a second one. The
        tasks still running end in the background, or are abandoned with a
        warning (their worker processes stopped) when the program ends on
        that Ctrl-C, as after a Ctrl-C while collecting.
        """
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.shutdown(wait=False, cancel_futures=True)
            return
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            # Landed in the wait for the queue, where a block that only submits spends its time:
            # it leaves the block all the same, and cancels as one in the body does. Uncancelled
            # (shutdown() leaves the pool to be freed in the background), the whole queue ran on
            # in a notebook, or any program that caught the Ctrl-C and went on. Shut down again, not
            # only cancelled: the Ctrl-C may have landed before shutdown() left the pool to be freed
            # (in its close of the pool), whose worker processes then stayed up while the executor lived.
            self.shutdown(wait=False, cancel_futures=True)
            raise

    @property
    def backend(self) -> str:
        """The name of the backend that runs this executor's tasks."""
        return self._backend.name

    @property
    def max_workers(self) -> int:
        """The size of this executor's pool."""
        return self._max_workers

    # A @parallel function's plain function runs in the task, and an async function's coroutine
    # runs to its end there: the future holds its result, not a handle or a coroutine (first).
    @overload
    def submit(
        self, fn: ParallelFunction[..., T] | _BoundParallelFunction[..., T], /, *args: Any, **kwargs: Any
    ) -> ExecutorFuture[T]: ...
    @overload
    def submit(self, fn: Callable[..., Coroutine[Any, Any, T]], /, *args: Any, **kwargs: Any) -> ExecutorFuture[T]: ...
    @overload
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> ExecutorFuture[T]: ...
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ExecutorFuture[Any]:
        """Schedule ``fn(*args, **kwargs)``; return its future at once.

        Over ``mp.set_max_concurrent_tasks``' limit it waits for a slot, except on
        a thread whose event loop runs (``loop.run_in_executor``): there the
        task waits for its slot, as a ``@parallel`` call's does, not the loop.

        A ``@parallel`` function (or a bound ``@parallel`` method, or a
        staticmethod object around one, as its class's body reads it) is taken as
        ``parallel_map`` takes it: its plain function runs, as this executor's
        task, and the future holds its value (called, it would start a task of
        its own elsewhere, and give its handle). The task is named and measured
        as the function; its ``max_concurrent`` holds (the slot is taken as for
        a call of it, the call's own as for ``mp.set_max_concurrent_tasks``),
        and its ``priority`` orders the task in this executor's queue. Its
        ``backend``, ``timeout``, ``retry`` and ``circuit_breaker`` do not: the
        executor runs the call once, on its own pool; and ``kwargs`` all go to
        the function (``timeout=`` and ``priority=`` are no call-time options here).

        A ``@profiled`` function (or a method of one) runs the function it
        measures: the task is measured already, from its start to its end,
        and counts once, under the name ``@profiled`` records under (the
        wrapper run as the task counted each call a second time).

        Args:
            fn: the callable to run; an ``async def`` function's coroutine runs
                to its end in the task.
            args: its positional arguments.
            kwargs: its keyword arguments.

        Returns:
            The task's :class:`ExecutorFuture`; ``future.handle`` is its handle.

        Raises:
            RuntimeError: the executor was shut down (its own ``shutdown()``;
                ``makeparallel.shutdown()`` leaves it taking tasks: see the class).
            TaskSerializationError: on the process backend, ``fn`` or an argument
                cannot be pickled.
        """
        kind = type(fn)
        if kind in _RUN_AS_PLAIN:  # the checks a plain function pays for (tens of ns)
            return self._submit_plain_of(fn, args, kwargs)
        if (
            for_worker_functions  # @profiled made a wrapper in this process: fn may be one, or hold one
            and kind is FunctionType
            and (id(fn.__code__) in for_worker_functions or "__wrapped__" in fn.__dict__)  # (functools.wraps sets it there)
        ):
            fn, name = _measured_by_the_task(fn)
            return self._submit(self._spec_named(name), fn, args, kwargs)
        return self._submit(self._spec_named(_describe(fn)), fn, args, kwargs)

    def _submit_plain_of(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ExecutorFuture[Any]:
        """:meth:`submit` of a ``@parallel`` function or method, or of a map's chunk of one: its plain function runs.

        Or of a staticmethod object, as its class's body reads it: of the function it holds; or
        of a ``functools.partial`` (``loop.run_in_executor`` takes no keywords): of its function's.
        Any other bound method or partial runs as it is.
        """
        fn = callable_of(fn)
        if type(fn) not in _RUN_AS_PLAIN or type(fn) is MethodType:  # a plain function or method, run as it is
            fn, name = _measured_by_the_task(fn)  # (or what it measures, if it is @profiled)
            return self._submit(self._spec_named(name), fn, args, kwargs)
        if type(fn) is functools.partial:  # of a @parallel function, its plain function's (the arguments kept)
            plain, own = _plain_of(fn)
            if own is None:  # a partial of another function: of a @profiled one, a task of what it measures
                plain, name = _measured_by_the_task(plain)
                return self._submit(self._spec_named(name), plain, args, kwargs)
            return self._submit(self._spec_of(own), plain, args, kwargs)
        if type(fn) is _CarriedCall:  # an adapter's call, through a subclass's submit (_makeparallel_carry)
            if kwargs:  # (the subclass's own, added: its own call, then, seen as such)
                return self._submit(self._spec_named(_describe(fn.fn)), fn.fn, args, kwargs)
            return self._carry(fn.task, fn.fn, args)
        if isinstance(fn, _MapChunks):  # a map's chunk, through a subclass's submit (_map_submitter)
            return self._submit(self._spec_of(fn.own, " [map]"), fn, args, kwargs)
        if isinstance(fn, _BoundParallelFunction):
            args = (fn._instance, *args)
            fn = fn._function
        return self._submit(self._spec_of(fn._spec), fn._fn, args, kwargs)

    def _submit(
        self,
        spec: TaskSpec,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        deadline: float | None = None,
        recipient: Recipient | None = None,
    ) -> ExecutorFuture[T]:
        """:meth:`submit`, its task observed (named, measured) by ``spec``.

        ``deadline`` (a ``time.monotonic()`` value) bounds the wait for a slot
        under the concurrency limit: past it nothing is submitted, and
        :class:`NoSlotInTime` is raised (a map's ``timeout``). So does
        ``recipient`` (a map's :class:`UntilReady`, which raises ``ResultReady``).
        """
        backend = self._backend
        handle: AsyncHandle[T] = AsyncHandle(fn, args, kwargs, contextvars.copy_context(), spec, backend, spec.priority)
        future = ExecutorFuture(handle)
        handle._callbacks = [(_ON_DONE_OWN, future._follow)]  # before anyone else can see it
        if self._shut_down:
            raise self._refusal()
        limiter = _runtime.global_limiter
        if limiter.limit is not None or spec.limiter is not None:  # (a @parallel function's max_concurrent)
            # The function's first, then the global one, as a call of the function takes them.
            limiters = [each for each in (spec.limiter, limiter) if each is not None and each.limit is not None]
            loop = running_loop()
            if loop is not None and backend.holds_tasks:
                return self._admit_on_loop(future, backend, limiters, loop)
            if deadline is None:  # a map's call through an overriding submit (_map_submitter) has the map's
                deadline = _deadline_of_a_map(self)
            # Through makeparallel.shutdown(), which leaves this executor taking tasks (see the class).
            handle._permits = take_slots(limiters, deadline, recipient, through_shutdown=True)
        if _events.listeners:  # before submit, as a @parallel call tells it: an inline backend runs the task within it
            tell_submitted(handle)
        try:
            backend.submit(handle)
        except BaseException as error:
            self._withdraw(handle, backend, error)
            raise
        return future

    def _makeparallel_carry(
        self, task: AsyncHandle[Any], fn: Callable[..., Any], /, *args: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)``, the call by which the adapter of this executor runs ``task`` (``@parallel(backend=executor)``).

        ``task`` is counted, measured, admitted through the concurrency limits
        and told to listeners by the adapter, as its function's task: the task
        of this pool that carries it is none of these (:class:`_Carrier`),
        and takes no slot. As an ordinary ``submit``, it was a second task of
        every count, a second metrics record ("ExecutorBackend._run", or
        "call_remotely" on processes), and took a second slot of the limit,
        which under a limit of 1 its own call held: it waited for good. It is
        named as ``task`` (in an error of this pool, a worker's death) and
        queued at its priority. Where a subclass or the instance overrides
        ``submit``, the call goes through it, as any call does.

        Raises:
            RuntimeError: the executor was shut down (the adapter fails the
                task with ``ShutdownError``).
        """
        if getattr(self.submit, "__func__", None) is not Executor.submit:
            # As it is handed on to Executor.submit, which carries it as below (_submit_plain_of).
            return self.submit(_CarriedCall(fn, task), *args)
        return self._carry(task, fn, args)

    def _carry(self, task: AsyncHandle[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> ExecutorFuture[Any]:
        """The task of this pool that runs ``fn(*args)`` and carries ``task``, unseen (:meth:`_makeparallel_carry`)."""
        if self._shut_down:
            raise self._refusal()
        carrier = self._carriers.get(task.name)
        if carrier is None:
            carrier = self._carriers[task.name] = _Carrier(task.name, task._observer.function_name)
        backend = self._backend
        handle: AsyncHandle[Any] = AsyncHandle(fn, args, {}, contextvars.copy_context(), carrier, backend, task._priority)
        future = ExecutorFuture(handle)
        handle._callbacks = [(_ON_DONE_OWN, future._follow)]  # before anyone else can see it
        try:
            backend.submit(handle)
        except BaseException as error:
            self._withdraw(handle, backend, error)
            raise
        return future

    def _withdraw(self, handle: AsyncHandle[Any], backend: Backend, error: BaseException) -> None:
        """Take back ``handle``, which ``backend`` did not take (its ``submit`` raised ``error``).

        Raises:
            RuntimeError: ``error`` is the pool's ``ShutdownError``: this
                executor's refusal, as ``concurrent.futures`` words it.
        """
        withdraw(handle, backend, error)
        if isinstance(error, ShutdownError):
            raise self._refusal() from None

    def _admit_on_loop(
        self, future: ExecutorFuture[T], backend: Backend, limiters: list[Limiter], loop: Any
    ) -> ExecutorFuture[T]:
        """Under a limit on a thread whose event loop runs: the task waits for its slots, the loop does not."""
        try:
            hold_for_admission(future.handle, backend, limiters, loop)
        except ShutdownError:
            raise self._refusal() from None
        return future

    @overload
    def map(
        self,
        fn: ParallelFunction[..., T] | _BoundParallelFunction[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., Coroutine[Any, Any, T]],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]: ...
    @overload
    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]: ...
    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Like ``map(fn, *iterables)``, with the calls running in this executor.

        As ``concurrent.futures.Executor.map`` of Python 3.14, on every Python
        this library supports: results come in input order; without
        ``buffersize`` every call is submitted at once, with it only that many
        (chunks) are in flight and the input is read as results are taken.
        A ``submit`` that a subclass overrides (or that is replaced on the
        instance) makes each call, as the standard ``map`` has it: with
        ``chunksize`` above 1, each chunk is one call of a callable taking the
        chunk's argument tuples, as ``ProcessPoolExecutor.map`` submits them.

        Args:
            fn: a callable taking as many arguments as there are iterables. A
                ``@parallel`` function (or bound method) maps as in
                ``parallel_map``: its plain function runs in this executor, and
                its ``max_concurrent`` holds, each task (call, or chunk of
                calls) taking one of its slots; its ``priority`` orders them in
                the queue. The rest of its options do not apply (see :meth:`submit`).
            timeout: seconds, from this call, within which every result must be
                available; ``None`` waits as long as it takes. A negative one
                has passed already, as in the standard ``map``
                (``deadline - time.monotonic()``): the results already there
                are given, then ``TimeoutError``. It also bounds
                each call's wait for a slot under ``mp.set_max_concurrent_tasks``
                (in this call, or in ``next()`` with ``buffersize``): a call
                with no slot by then is never submitted. With ``buffersize``,
                a call's wait for a slot ends as the oldest result is ready,
                which is handed out first; the call is submitted after it.
            chunksize: items per task; above 1, each task runs a chunk of calls
                (worth it on the process backend for short calls).
            buffersize: at most this many tasks in flight; the rest of the input
                is read lazily (use it for long or endless inputs).

        Returns:
            An iterator of the results. Leaving it early cancels the calls not
            yet started.

        Raises:
            TimeoutError: (``TaskTimeoutError``, from ``next()``) a result was not
                available within ``timeout``, or its call got no slot under the
                concurrency limit within it; the calls not yet started are
                cancelled.
            ValueError: ``chunksize`` or ``buffersize`` is below 1, or ``timeout`` is NaN.
            TypeError: ``buffersize`` is not an int or ``None``, or ``timeout``
                not a number or ``None``.
            RuntimeError: the executor was shut down.
            TaskSerializationError: on the process backend, ``fn`` cannot be
                pickled (raised from ``map()``, naming the function), or an
                argument cannot be: that call ends the input, as in
                ``ProcessPoolExecutor.map``; the calls before it run and
                ``next()`` gives their results, in order, then raises this
                error, which names the argument (its position and a short
                repr) and its call's index in the map; where each argument
                pickles alone, the first call (its index and arguments) that
                cannot be pickled with the calls before it in its chunk. No
                call after it is read or submitted.
            WorkerCrashedError: from ``next()``, a worker process died running a
                call; with ``chunksize`` above 1 the calls of its chunk fail
                together, the error naming their range.
            Exception: from ``next()``, what a call raised, as itself.
        """
        if timeout is not None and is_real(timeout) and as_seconds(timeout) < 0:  # as the standard map: a deadline past
            timeout = 0.0
        timeout = check_wait_timeout(timeout)
        chunksize = check_count(chunksize, "chunksize")
        if buffersize is not None:
            try:
                buffersize = check_count(buffersize, "buffersize")
            except (TypeError, ValueError) as error:
                raise type(error)(f"buffersize must be an int >= 1 or None, got {buffersize!r}") from None
        deadline = None if timeout is None else time.monotonic() + timeout
        calls = zip(*iterables)
        chunks: Iterator[tuple[Any, ...]] = calls if chunksize == 1 else _batched(calls, chunksize)
        submit_one = self._map_submitter(fn, chunksize, deadline)
        locate = functools.partial(_unsendable_call if chunksize > 1 else _unsendable_single_call, fn=_plain_of(fn)[0])
        feed = _Feed(submit_one, chunks if buffersize is not None else None, buffersize or 0, locate)
        try:
            if buffersize is None:
                feed.submit_all(chunks)
            else:
                feed.fill(buffersize)
        except NoSlotInTime:  # the timeout passed while a call waited for a slot: the rest are never submitted
            feed.cut_short()
        return _results(feed, deadline, timeout, flatten=chunksize > 1)

    def _map_submitter(self, fn: Callable[..., Any], chunksize: int, deadline: float | None) -> _SubmitOne:
        """How :meth:`map` submits a call's arguments (``chunksize`` 1) or a chunk of them: its future, and its calls.

        Through ``self.submit`` wherever that is not this class's own (a
        subclass's, or one set on the instance, as ``mock.patch.object`` does),
        as the standard ``Executor.map`` does: code that logs, counts or wraps
        calls there sees each call, and each chunk as one call of a callable
        with the chunk as its only argument, as ``ProcessPoolExecutor.map``
        submits its chunks. Otherwise straight to :meth:`_submit`, which takes
        the function's name once for the whole map: ``submit``'s own fast path,
        decided once per map, not per call.

        The overriding ``submit`` takes no deadline: the map's reaches the wait
        for a slot in :meth:`_submit` of this executor through ``_maps_deadline``,
        on this thread, and that wait only: another executor's ``submit`` made in
        there, or its ``map`` without a timeout, waits as its caller asked.

        The recipient given with each call (:class:`_Feed`'s) ends its wait as
        the oldest result is ready, on the fast path; through an overriding
        ``submit``, which the ``ResultReady`` it raises would cross, the wait
        goes on as the map's deadline allows.
        """
        submit = self.submit
        plain, own = _plain_of(fn)
        if getattr(submit, "__func__", None) is Executor.submit:
            if chunksize == 1:
                if own is None:  # (a @profiled function's calls are tasks measured already: what it measures runs)
                    plain, name = _measured_by_the_task(plain)
                spec = self._spec_named(name) if own is None else self._spec_of(own)
                return lambda args, until: (self._submit(spec, plain, args, {}, deadline, until), 1)
            # As parallel_map names its chunks.
            chunk_spec = self._spec_named(f"{_describe(fn)} [map]") if own is None else self._spec_of(own, " [map]")
            return lambda chunk, until: (
                self._submit(chunk_spec, _run_chunk, (plain, chunk), {}, deadline, until),
                len(chunk),
            )
        if chunksize == 1:  # a @parallel function as given: the overriding submit sees the caller's function
            return lambda args, _: (_submit_for_a_map(self, submit, deadline, fn, args), 1)
        if own is None:
            run_chunk = functools.partial(_run_chunk, plain)
            # submit names the chunks' tasks from it (_describe), as the fast path names them.
            run_chunk.__qualname__ = f"{_describe(fn)} [map]"  # type: ignore[attr-defined]  # a partial's own dict
        else:  # submit names and admits them as the function's chunks
            run_chunk = _MapChunks(_run_chunk, plain)
            run_chunk.own = own
            run_chunk.__qualname__ = f"{own.name} [map]"  # type: ignore[attr-defined]  # as above
        return lambda chunk, _: (_submit_for_a_map(self, submit, deadline, run_chunk, (chunk,)), len(chunk))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks and free the pool once the submitted ones end.

        Args:
            wait: block until every submitted task has ended, and the code
                of those ended as they ran (cancelled through
                ``future.handle.cancel()`` on threads, whose code goes on) has
                returned, as ``concurrent.futures`` waits for every running
                call; then worker processes are stopped, and worker threads
                joined, for at most one second more (a callback of a task may
                still run in one): as it returns, none is alive. With ``False``
                return at once and free the pool in the background; so is it
                freed when a Ctrl-C interrupts the wait.
            cancel_futures: cancel the tasks that have not started.

        Calling it more than once is harmless. It never touches the pools of
        ``@parallel`` functions.

        Raises:
            RuntimeError: ``wait`` is true and this is called from one of this
                executor's own tasks, which would wait for itself forever, or
                from a callback on a thread of its pool (a worker, or a process
                pool's loop thread, where its tasks' callbacks run), which the
                tasks waited for may need; the standard ``ThreadPoolExecutor``
                raises in both places too. Or on the thread of an event loop
                that runs the coroutine of one of its ``"sync"`` tasks
                (submitted from a coroutine), in that loop or once it stopped:
                nothing runs the loop while the thread waits. Nothing is shut
                down. (A task held for its slot there is run in place by the
                wait on that loop's thread, and refused only once it stopped.)
        """
        if wait and _runs_a_task_of(self._backend):
            raise RuntimeError(
                "Executor.shutdown(wait=True) was called from one of this executor's own tasks, "
                "and would wait for that task to end forever; call shutdown(wait=False) there"
            )
        if wait and _holds_a_thread_of(self._backend):
            raise RuntimeError(
                "Executor.shutdown(wait=True) was called from a callback on a thread of this "
                "executor's own pool, which the tasks it would wait for may need to end: it would "
                "wait for good; call shutdown(wait=False) there"
            )
        if wait and on_callers_loops and (held := one_only_this_thread_can_end(self._backend)) is not None:
            raise RuntimeError(
                "Executor.shutdown(wait=True) was called on the thread of the event loop that runs "
                f'the coroutine of its task {held.get_task_id()} ({held.name}) (the "sync" backend '
                "called from a coroutine), or the task itself once it has its slot, which nothing "
                "runs while this thread waits: it would wait for good. Run the loop until the task ends first: `loop.run_until_complete(future.handle)`, "
                "or `await future.handle` in a coroutine that loop runs"
            )
        with self._shutdown_lock:
            self._shut_down = True
        backend = self._backend
        backend.close(cancel_pending=cancel_futures)
        frees = self._finalizer.detach() is not None  # shut down, it leaves nothing to do when collected
        if not wait:
            if frees:  # the first call frees the pool
                _release_in_background(backend)
            return
        try:
            backend.wait_idle(None)  # (which ends the "sync" tasks whose loop closed, also as it waits)
            # And for the code of tasks ended as they ran (cancelled through future.handle),
            # which goes on on its thread: idle, the pool had it still running as this returned,
            # where mp.shutdown() and exit wait for it. Not for a task stopped with its map.
            backend.wait_abandoned(None)
        except BaseException:
            # Interrupted (Ctrl-C): the pool is freed once its tasks end, as by shutdown(wait=False).
            # Its finalizer detached above, nothing else did: its worker processes stayed up for good.
            if frees:
                _release_in_background(backend)
            raise
        backend.terminate()  # worker processes stop now
        # And worker threads, as mp.shutdown() joins the shared pool's: they left on their own,
        # still alive as this returned, where a thread-leak check after the with block saw them.
        backend.end_threads(_runtime._THREADS_END_WITHIN)

    def __repr__(self) -> str:
        state = "shut down" if self._shut_down else f"{self._backend.active_count()} task(s) unfinished"
        return f"<makeparallel.Executor backend={self.backend!r} max_workers={self._max_workers} {state}>"

    def _refusal(self) -> RuntimeError:
        """The error of a task this executor refuses: it was shut down, or made by the process that forked this one."""
        if os.getpid() != self._pid:
            return RuntimeError(
                f"cannot schedule new futures: this executor was made by process {self._pid}, which "
                "forked this one, and its pool stays there. Make an executor in this process"
            )
        return RuntimeError("cannot schedule new futures after shutdown")

    def _spec_named(self, name: str) -> TaskSpec:
        """The observer of the tasks named ``name``: metrics by the function's name, as ``@parallel``."""
        spec = self._specs.get(name)
        if spec is None:
            spec = self._specs[name] = _advising_processes(TaskSpec(name, None, None, 0, None))
        return spec

    def _spec_of(self, own: TaskSpec, suffix: str = "") -> TaskSpec:
        """The observer of this executor's tasks of a ``@parallel`` function, ``own`` its spec (``suffix``: of its map's chunks).

        Named and measured as the function (metrics by name), admitted through
        its ``max_concurrent`` limiter and queued at its priority, as
        ``parallel_map``'s chunks are; nothing else of it (its timeout, retry,
        breaker, backend) applies to a task this executor runs. A chunk's task
        is no async one, whatever the function: ``_run_chunk`` runs the
        coroutines to their end on its own thread, and a wait for it from a
        running loop blocks nothing that task needs.
        """
        name = own.name + suffix
        key = (name, own.limiter, own.priority)
        spec = self._parallel_specs.get(key)
        if spec is None:
            is_async = own.is_async and not suffix
            spec = self._parallel_specs[key] = _advising_processes(
                TaskSpec(name, None, None, own.priority, own.limiter, is_async, function_name=own.function_name)
            )
        return spec


class _Carrier:
    """The observer of an ``Executor``'s tasks that each run a task of its adapter's (:meth:`Executor._makeparallel_carry`).

    It counts, measures and tells nothing (``unseen``): the task carried is
    counted and measured under its function's name, and told to listeners,
    by the adapter. The executor's pool counts the carrier among its active
    tasks, which ``get_active_task_count()`` takes for the task carried
    (``ExecutorBackend.active_count_beside``).
    """

    __slots__ = ("cpu_watch", "function_name", "is_async", "name")
    retry = None
    breaker = None
    unseen = True
    owned = True  # its future hands each outcome to the adapter, which ends the task carried with it

    def __init__(self, name: str, function_name: str) -> None:
        self.name = name
        self.function_name = function_name
        self.cpu_watch = None  # the task carried is run by its adapter, not watched as this pool's
        self.is_async = False

    def task_submitted(self, handle: AsyncHandle[Any]) -> None:
        pass

    def task_finished(self, handle: AsyncHandle[Any]) -> None:
        pass  # (it took no slot)

    def tasks_ended(self, lock: threading.Lock, state: int, count: int) -> None:
        pass

    def task_withdrawn(self, handle: AsyncHandle[Any]) -> None:
        pass

    def task_retried(self, handle: AsyncHandle[Any], first: bool) -> None:
        pass

    def retries_ran(self, handle: AsyncHandle[Any]) -> None:
        pass


def _measured_by_the_task(fn: Callable[..., T]) -> tuple[Callable[..., T], str]:
    """What a task of ``fn`` runs, and the name it is measured under: ``fn``'s function where ``fn`` is ``@profiled``.

    Each task is measured already, from its start to its end, under the name
    of its function: running the profiled wrapper, which copies that name, a
    call counted twice under it. The task runs the function underneath, under
    the name ``@profiled`` records under, as ``@parallel`` over ``@profiled``
    does (``_decorators._measured_by_the_task``). A profiled method read on
    its instance is bound to it again. So is a ``functools.partial`` of a
    profiled function (made again of the function underneath), and a
    program's own wrapper of one (``functools.wraps``), which runs as it is,
    its first call of the profiled function left to the task to count
    (``_metrics.MeasuredByItsTask``). Any other ``fn`` runs as it is, under
    its own name.
    """
    if not for_worker_functions:  # no @profiled wrapper in this process: no import, nothing to look for
        return fn, _describe(fn)
    if id(getattr(fn, "__code__", None)) in for_worker_functions:  # a @profiled wrapper, maybe
        from ._metrics import unprofiled  # (loaded where a wrapper was made)

        measured = unprofiled(fn)
        if measured is None:
            return fn, _describe(fn)
        function, layer = measured
        return function, layer.record
    if type(fn) is not functools.partial and getattr(fn, "__wrapped__", None) is None:
        return fn, _describe(fn)  # a plain function, the usual case
    from ._metrics import task_of_profiled

    held = task_of_profiled(fn)
    if held is None:
        return fn, _describe(fn)
    _, runs, layer = held
    return runs, layer.record


def _advising_processes(spec: TaskSpec) -> TaskSpec:
    """``spec``, whose GIL warning advises an executor of processes: its function's backend is not this executor's."""
    if spec.cpu_watch is not None:
        spec.cpu_watch.remedy = EXECUTOR_REMEDY
    return spec


class _MapChunks(functools.partial[Any]):
    """``partial(_run_chunk, plain)``: a map's chunk of a ``@parallel`` function's calls, for a subclass's ``submit``.

    ``Executor.submit`` knows it by its type, as it knows a ``@parallel``
    function: the chunk is named, admitted and queued as the function's (its
    spec, :attr:`own`), as on :meth:`Executor.map`'s own path. It travels to a
    worker process as a plain partial, without that spec (a metrics record,
    a limiter), which belongs to this process.
    """

    own: TaskSpec

    def __reduce__(self) -> tuple[Any, ...]:
        return (functools.partial, (self.func, *self.args))


class _CarriedCall:
    """The adapter's call that runs ``task`` (``@parallel(backend=executor)``), as a subclass's ``submit`` is given it.

    ``Executor.submit`` knows it by its type: handed on there, the call runs
    unseen, carrying ``task`` (:meth:`Executor._carry`). As the call itself,
    it was a second task of every count and metrics record, and took a
    second slot of the concurrency limit, which under a limit of 1 the task
    held: the call waited for good. Called, it is the call; it travels to a
    worker process as that call, without ``task``, which belongs to this process.
    """

    __slots__ = ("fn", "task")

    def __init__(self, fn: Callable[..., Any], task: AsyncHandle[Any]) -> None:
        self.fn = fn
        self.task = task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_the_call, (self.fn,))

    def __repr__(self) -> str:
        return repr(self.fn)


def _the_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A :class:`_CarriedCall` unpickled: the call it wrapped."""
    return fn


# What submit runs the plain function of, by exact type: a set lookup costs a plain function's
# submit a third of what isinstance() against these classes did. (@parallel with a circuit
# breaker makes a _GuardedParallelFunction; no other subclasses are made.) And a staticmethod
# object or a partial, which may hold a @parallel function: submit runs the function it holds.
# And bound methods, looked at there: from Python 3.13, @classmethod over @parallel gives one.
_RUN_AS_PLAIN = frozenset(
    (
        ParallelFunction,
        _GuardedParallelFunction,
        _BoundParallelFunction,
        _MapChunks,
        _CarriedCall,
        staticmethod,
        functools.partial,
        MethodType,
    )
)


def _plain_of(fn: Callable[..., Any]) -> tuple[Callable[..., Any], TaskSpec | None]:
    """The callable a map of ``fn`` calls, and ``fn``'s spec if it is ``@parallel`` (bound: with its instance).

    A staticmethod object (as its class's body reads it) is taken as the function it holds, and
    a ``functools.partial`` of a ``@parallel`` function as a partial of its plain function.
    """
    fn = callable_of(fn)
    if type(fn) is functools.partial:  # (not a _MapChunks, a subclass)
        plain, own = _plain_of(fn.func)
        return (fn, None) if own is None else (functools.partial(plain, *fn.args, **fn.keywords), own)
    if isinstance(fn, _BoundParallelFunction):
        return functools.partial(fn._function._fn, fn._instance), fn._function._spec
    if isinstance(fn, ParallelFunction):
        return fn._fn, fn._spec
    return fn, None


def _runs_a_task_of(backend: Backend) -> bool:
    """Whether the task this thread runs now (on a worker, or inline) is one of ``backend``'s.

    Or runs within one on its worker: with this executor given as a backend
    (``@parallel(backend=executor)``), the task current there is the
    ``@parallel`` call's, which the executor's own task runs. On a worker
    process, the task current there is the worker's stand-in for the parent's
    (``_process_worker._RemoteTask``), which has no pool: none of this
    process's executors runs it.
    """
    task = current_task()
    return task is not None and (getattr(task, "_backend", None) is backend or pool_of_this_thread() is backend)


def _holds_a_thread_of(backend: Backend) -> bool:
    """Whether this thread is one that ``backend``'s tasks need to end, outside any task (a callback there).

    One of its workers, which a task queued behind may need (with one worker,
    it never starts), or its loop thread (a process pool's), which reads every
    result. ``ThreadPoolExecutor.shutdown(wait=True)`` raises on its workers too.
    """
    return pool_of_this_thread() is backend or backend.reads_results_here()


def _make_backend(name: str, workers: int) -> Backend:
    if name == "thread":
        return ThreadBackend(num_threads=workers)
    if name == "process":
        from ._backends._process import ProcessBackend  # subprocess, sockets: only when used

        return ProcessBackend(num_workers=workers)
    return SyncBackend()


# The pools of executors not shut down, and of those finishing their tasks in the
# background: stopped at interpreter exit, whatever became of their executor.
_live: set[weakref.ref[Backend]] = set()
_releasing: set[Backend] = set()
# The name of each pool of _live in the pool infos, by id(pool): "Executor-<id(executor)>".
_names: dict[int, str] = {}


def _forget(key: int, pool: weakref.ref[Backend]) -> None:
    """A pool of ``_live`` was collected (``key``: its id): it is neither stopped at exit nor listed any more."""
    _live.discard(pool)
    _names.pop(key, None)


def _named_pools() -> dict[str, Backend]:
    """The pools that ``health()`` and the pool gauges list (:func:`_runtime.report_pools`), by name.

    Each executor's, named ``"Executor-<id(executor) in hex>"`` (an executor
    given as ``backend=`` has an adapter of its own, ``"executor-<id>"``),
    until it is shut down and its tasks have ended: the pool of one garbage
    collected without ``shutdown()`` finishes its tasks in the background, and
    is listed meanwhile, under the name of its executor. A new executor may
    take that id: the older pool's name then ends with its own id.
    """
    pools: dict[str, Backend] = {}
    releasing = _releasing.copy()
    for pool in sorted(_left_at_exit(), key=lambda pool: pool in releasing):  # the executors alive first
        name = _names.get(id(pool))
        if name is None or (pool._closed and pool.active_count() == 0):
            continue
        pools[f"{name}-{id(pool):x}" if name in pools else name] = pool
    return pools


def _release_in_background(backend: Backend) -> None:
    """Refuse new tasks, and stop ``backend`` once its tasks have ended, from a thread of its own.

    Also what the finalizer of an executor garbage collected without
    ``shutdown()`` calls, so that its futures end, as the standard executors'
    do. It runs in whatever thread dropped the last reference: maybe one of
    this very pool's, holding the lock that ``close()`` takes, so even that is
    left to the new thread.
    """
    _releasing.add(backend)
    try:
        threading.Thread(target=_free_when_idle, args=(backend,), name="makeparallel-executor-shutdown", daemon=True).start()
    except RuntimeError:  # no thread left, or the interpreter is exiting: stop it now, its queued tasks cancelled
        _free_when_idle(backend, wait=False)


def _free_when_idle(backend: Backend, wait: bool = True) -> None:
    """Close ``backend``, wait for its tasks to end (``wait``; else cancel the queued ones), then stop it."""
    try:
        backend.close(cancel_pending=not wait)
        if wait:
            backend.wait_idle(None)
        backend.terminate()
    finally:
        _releasing.discard(backend)


def _left_at_exit() -> list[Backend]:
    """The pools of the executors left as the interpreter exits, which exit stops with the runtime's."""
    # Copied in one C call each: a thread making an executor meanwhile, or a finalizer the
    # garbage collector runs, made iterating them raise, and exit then stopped no pool.
    # (A lock around them deadlocked: a finalizer may run while its own thread holds it.)
    live = [ref() for ref in _live.copy()]
    # One being released in the background may be live still: each once (exit counts their tasks).
    return list(dict.fromkeys([*(backend for backend in live if backend is not None), *_releasing.copy()]))


# The executor, and the deadline, of the map whose call this thread submits through an
# overriding submit (_map_submitter).
_maps_deadline = threading.local()


def _submit_for_a_map(
    executor: Executor,
    submit: Callable[..., concurrent.futures.Future[Any]],
    deadline: float | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
) -> concurrent.futures.Future[Any]:
    """``submit(fn, *args)``, an overriding ``submit`` of ``executor``, with the map's ``deadline`` for its wait for a slot."""
    outer = getattr(_maps_deadline, "value", None)  # a map made within the overriding submit
    _maps_deadline.value = (executor, deadline)
    try:
        return submit(fn, *args)
    finally:
        _maps_deadline.value = outer


def _deadline_of_a_map(executor: Executor) -> float | None:
    """The deadline of the map of ``executor`` whose call this thread submits through an overriding submit, if any.

    Only that executor's: the overriding submit may submit to another executor
    too (a plain ``submit``, with no timeout, or a ``map`` without one), whose
    wait the map's timeout does not bound. Given it, a plain ``submit`` raised
    ``NoSlotInTime`` at its caller, and a map without a timeout failed on it.
    """
    made = getattr(_maps_deadline, "value", None)
    return made[1] if made is not None and made[0] is executor else None


def _batched(calls: Iterator[tuple[Any, ...]], size: int) -> Iterator[tuple[Any, ...]]:
    """Tuples of up to ``size`` argument tuples (``itertools.batched`` of 3.12)."""
    while chunk := tuple(itertools.islice(calls, size)):
        yield chunk


def _unsendable_call(
    error: TaskSerializationError, chunk: tuple[tuple[Any, ...], ...], first: int, fn: Callable[..., Any]
) -> tuple[int, TaskSerializationError]:
    """Where ``chunk`` (argument tuples, ``first`` the map's index of its first call), which could not be pickled, fails.

    The offset in ``chunk`` of the call at fault, and the error naming it
    (``error``, the submission's, its cause): the first call an argument of
    which cannot be pickled alone, naming that argument; else, where each
    can be, the first call that cannot be pickled with the calls before it
    in the chunk (found by halving, as ``parallel_map`` finds an item: a
    recursion limit reached by the chunk as a whole, an object whose pickling
    fails once it was seen in the same pickle). Where the chunk pickles now,
    no call can be named: offset 0 and an error naming the chunk's calls,
    which says they nest too deep where the submission reached the recursion
    limit (the task sent wraps them deeper than this test does), else that
    their failure does not repeat. The submission's error named the task's
    own arguments (``argument 1 (tuple)`` for a chunk, ``task 12`` for a
    call): not what the map was given.

    Raises:
        TaskSerializationError: ``fn``, the map's function, cannot be pickled
            (tried first, as a chunk pickles it first): every call would fail.
    """
    from . import _serialization  # on this failure path only

    refuse_unsendable_function(fn, f"the function {_describe(fn)} of Executor.map", error)
    for offset, args in enumerate(chunk):
        for position, value in enumerate(args):
            try:
                _serialization.dumps(value)
            except Exception as problem:
                return offset, caused(
                    f"argument {position} ({short_repr(value)}) of call {first + offset} of Executor.map "
                    f"cannot be sent to a worker process: {type(problem).__name__}: {problem}. Every "
                    "argument must be picklable; backend='thread' needs no pickling",
                    error,
                )
    calls = f"call {first}" if len(chunk) == 1 else f"calls {first} to {first + len(chunk) - 1}"
    found = first_unsendable_together(fn, chunk)
    cause = error.__cause__ or error
    if found is None and too_deep(error):
        # The task sent wraps its calls in more levels than this test of them: too deep there only.
        return 0, caused(
            f"{calls} of Executor.map could not be sent to a worker process: "
            f"{'it nests' if len(chunk) == 1 else 'they nest'} too deep to pickle ({type(cause).__name__}: {cause}), "
            f"though each argument alone can be pickled. {TOO_DEEP}",
            error,
        )
    if found is None:
        return 0, caused(
            f"{calls} of Executor.map could not be sent to a worker process ({type(cause).__name__}: {cause}), "
            f"though each argument alone can be pickled, and {'it' if len(chunk) == 1 else 'they'} could be "
            "when tried again: their pickling does not fail the same way twice (an object whose pickling "
            "depends on what was pickled before it). Make the arguments' pickling repeatable, or use "
            "backend='thread', which needs no pickling",
            error,
        )
    low, failed = found
    at = f"call {first + low} ({short_repr(chunk[low])}) of Executor.map"
    if too_deep(failed):
        return low, caused(
            f"{at} cannot be sent to a worker process: it nests too deep to pickle "
            f"({type(failed).__name__}: {failed}), though each argument alone can be pickled. {TOO_DEEP}",
            error,
        )
    failure = f"{type(failed).__name__}: {failed}"
    if len(chunk) == 1:
        return 0, caused(
            f"{at} cannot be sent to a worker process: its arguments cannot be pickled together, though each "
            f"alone can be: {failure}. Every call must be picklable; backend='thread' needs no pickling",
            error,
        )
    return low, caused(
        f"{at} cannot be sent to a worker process with the calls before it in its chunk (calls {first} to "
        f"{first + low}): {failure}. Each of its arguments alone can be pickled, but a chunk's calls are pickled together (a "
        "recursion limit reached by the chunk as a whole, an object shared by calls that pickles only "
        "once); pass chunksize=1 to send each call alone, or use backend='thread', which needs no pickling",
        error,
    )


def _unsendable_single_call(
    error: TaskSerializationError, args: tuple[Any, ...], first: int, fn: Callable[..., Any]
) -> tuple[int, TaskSerializationError]:
    """:func:`_unsendable_call` for a map of one call per task: ``args``, the call's arguments, is call ``first``."""
    return _unsendable_call(error, (args,), first, fn)


def _run_chunk(fn: Callable[..., T], chunk: tuple[tuple[Any, ...], ...]) -> list[T]:
    """The results of a chunk's calls, in one task.

    Calls that give coroutines (of an ``async def``) have them run to their end,
    as ``submit`` does. A call that raises as it is made (a wrapper checking its
    arguments) comes after the coroutines of the calls before it ran, as one by
    one; they were dropped unawaited, their bodies never run.
    """
    results: list[Any] = []
    try:
        try:
            for args in chunk:  # one by one: a call's error keeps what those before it gave
                results.append(fn(*args))
        except Exception:
            _run_coroutines_to_their_end(results)
            raise
        return _run_coroutines_to_their_end(results)
    except Exception as error:  # a call's own error, even the crash of a task it waited for
        disown_worker_death(error)
        raise


def _run_coroutines_to_their_end(values: list[Any]) -> list[Any]:
    """``values``, each coroutine among them run to its end in turn; when one raises, those after it are closed unstarted.

    The first value tells whether the calls give coroutines, so that plain calls pay nothing.
    """
    if not values or not is_coroutine(values[0]):
        return values
    task = current_task()
    for position, value in enumerate(values):
        if is_coroutine(value):
            try:
                values[position] = run_to_end(value, task)
            except BaseException:
                for left in values[position + 1 :]:
                    if is_coroutine(left):
                        left.close()
                raise
    return values


def _map_timed_out(timeout: float | None) -> TaskTimeoutError:
    return TaskTimeoutError(f"Executor.map timed out after {timeout:g} s; the calls not yet started were cancelled")


# Submits a map's call (or chunk) of arguments, its wait for a slot ending as the recipient says, if given.
_SubmitOne = Callable[[tuple[Any, ...], "Recipient | None"], tuple[concurrent.futures.Future[Any], int]]
# Where a call (or chunk) that could not be pickled fails, given its submission's error and its first call's index.
_Locate = Callable[[TaskSerializationError, tuple[Any, ...], int], tuple[int, TaskSerializationError]]


class _Feed:
    """The calls of an ``Executor.map`` in flight, and, with ``buffersize``, those to submit next from its input.

    With a call in flight, a submission's wait for a slot ends as the oldest
    call's result is ready (:class:`UntilReady`): the call read is kept
    (:attr:`unsent`), the result handed out, and the call submitted after it.
    Waiting on held back the results ready meanwhile, and for good where the
    submitter holding the slot waited for what the consumer does with the next one.

    A call an argument of which cannot be pickled (on worker processes) ends
    the input there (:meth:`_send`), as in ``ProcessPoolExecutor.map``: the
    calls before it run, their results are handed out, then its error is
    raised. Raised as it was submitted, it cancelled the calls in flight and
    lost their results, and those of its chunk's calls before it.
    """

    def __init__(
        self, submit_one: _SubmitOne, calls: Iterator[tuple[Any, ...]] | None, buffer: int, locate: _Locate
    ) -> None:
        self.in_flight: deque[tuple[concurrent.futures.Future[Any], int]] = deque()
        self.unsent: tuple[Any, ...] | None = None  # read from the input, its wait for a slot ended by a result
        self.short = False  # the calls after those in flight were never submitted: the deadline passed first
        # The error of the call that could not be pickled, which ended the input: raised after the results before it.
        self.unsendable: TaskSerializationError | None = None
        self._calls = calls  # None once read to its end, or cut short
        self._buffer = buffer
        self._submit_one = submit_one
        self._locate = locate
        self._submitted = 0  # calls submitted: the map's index of the next one
        self._until_ready = UntilReady(self._oldest_ready, self._calls_in_flight)

    def _oldest_ready(self) -> bool:
        """Whether the oldest call ended (asked under the limiter's lock: it takes none, as ``done()`` would)."""
        if not self.in_flight:
            return False
        future = self.in_flight[0][0]
        return future.handle.is_ready() if isinstance(future, ExecutorFuture) else False

    def _calls_in_flight(self) -> list[concurrent.futures.Future[Any]]:
        """The calls in flight, whose ends a wait for a slot may be woken by (:class:`UntilReady`)."""
        return [future for future, _ in self.in_flight]

    def cut_short(self) -> None:
        """The deadline passed as a call waited for its slot: nothing more is submitted."""
        self._calls = self.unsent = None
        self.short = True

    def fill(self, room: int) -> None:
        """Submit calls until ``room`` are in flight, the input ends, or the oldest result is ready first.

        Raises:
            NoSlotInTime: the map's deadline passed as a call waited for its slot.
        """
        while len(self.in_flight) < room:
            if self.unsent is None:
                if self._calls is None:
                    return
                self.unsent = next(self._calls, None)
                if self.unsent is None:
                    self._calls = None
                    return
            try:
                entry = self._send(self.unsent, self._until_ready if self.in_flight else None)
            except ResultReady:
                return
            if entry is not None:
                self._until_ready.follow(entry[0], _runtime.global_limiter.limit is not None)  # its end may end such a wait

    def submit_all(self, calls: Iterator[tuple[Any, ...]]) -> None:
        """Submit every call (or chunk) of ``calls`` now, as a map without ``buffersize`` does, up to one that cannot be pickled.

        Raises:
            NoSlotInTime: the map's deadline passed as a call waited for its slot.
            TaskSerializationError: the map's function cannot be pickled.
        """
        for call in calls:
            self.unsent = call
            self._send(call, None)
            if self.unsendable is not None:
                return

    def _send(self, call: tuple[Any, ...], until: Recipient | None) -> tuple[concurrent.futures.Future[Any], int] | None:
        """Submit ``call`` (:attr:`unsent`), its wait for a slot ended by ``until``; return its entry in flight.

        One that cannot be pickled is cut before its first call that cannot
        be: the calls before it are submitted (their entry returned; None
        where there are none), and its error, which names that call
        (``_locate``), is kept in :attr:`unsendable`; no call after it is read.

        Raises:
            ResultReady: ``until``'s: the oldest result is ready first; :attr:`unsent` is kept.
            NoSlotInTime: the map's deadline passed as the call waited for its slot.
            TaskSerializationError: the map's function cannot be pickled: every call would fail.
        """
        while True:
            try:
                entry = self._submit_one(call, until)
            except TaskSerializationError as error:
                offset, self.unsendable = self._locate(error, call, self._submitted)
                self._calls = None
                self.unsent = call[:offset] if offset else None  # kept there should a result be ready first
                if self.unsent is None:
                    return None
                call = self.unsent
                continue
            self.unsent = None
            self.in_flight.append(entry)
            self._submitted += entry[1]
            return entry

    def refill(self) -> None:
        """Before the oldest call's result is waited for: one more in flight for each one taken (as 3.14's)."""
        if self._calls is None and self.unsent is None:
            return
        try:
            self.fill(self._buffer + 1)
        except NoSlotInTime:
            self.cut_short()


def _results(feed: _Feed, deadline: float | None, timeout: float | None, flatten: bool) -> Iterator[Any]:
    """Yield each future's result (each item of it, for chunks) in order.

    Each future comes with how many calls it runs. Leaving early (an error, a
    timeout, ``close()``) cancels the rest. ``feed.short``: the calls after
    those in flight were never submitted, their wait for a slot under
    the concurrency limit having run past ``deadline``.

    Timeouts: as in ``concurrent.futures``, past the deadline a result that is
    ready is still given, and the first that is not raises ``TaskTimeoutError``;
    so does a call that got no slot by then (``cut_short``, or a refill's),
    once the results before it are given. A submission's wait for a slot ends
    at the deadline, so that ``map()`` or ``next()`` never blocks past it there.
    """
    first = 0  # the index of the first call of the oldest future
    in_flight = feed.in_flight
    try:
        while True:
            feed.refill()
            if not in_flight:
                break
            future, calls = in_flight[0]
            # Bounded: a lock refuses a longer wait (``timeout=math.inf``) with OverflowError.
            remaining = None if deadline is None else bounded(max(0.0, deadline - time.monotonic()))
            try:
                results = future.result(remaining) if flatten else [future.result(remaining)]
            except concurrent.futures.TimeoutError as error:
                # The call's own TimeoutError (a socket's, a nested wait's) is its error, not this wait's
                # (a future that ends just after the wait gave up has another error, or none).
                if future.done() and not future.cancelled() and future.exception() is error:
                    raise
                raise _map_timed_out(timeout) from None
            except WorkerCrashedError as error:
                how = getattr(error, "_how", None)  # set by the process backend for a worker's death
                if not flatten or how is None:
                    raise
                # Dead as its pool shut down, with no task left for a worker: none replaced it, template or not.
                unreplaced = getattr(error, "_unreplaced", False)
                if getattr(error, "_with_template", False):
                    raise WorkerCrashedError(
                        f"calls {first} to {first + calls - 1} of Executor.map were lost with their "
                        f"worker process ({how}): {template_died(not unreplaced)}"
                    ) from error
                aftermath = UNREPLACED[0].upper() + UNREPLACED[1:] if unreplaced else "A new worker takes its place"
                raise WorkerCrashedError(
                    f"calls {first} to {first + calls - 1} of Executor.map were lost with their "
                    f"worker process ({how}): with chunksize above 1 they ran as one task, so no "
                    f"one of them can be blamed. {aftermath}, and the other "
                    "chunks were not affected; pass chunksize=1 to run each call as a task of its own"
                ) from error
            in_flight.popleft()
            first += calls
            del future  # hold no finished future while the consumer has the result
            # Nor the result: each is popped as it is given (as concurrent.futures does),
            # so that one the consumer dropped is freed at once, not at the next one.
            results.reverse()
            while results:
                yield results.pop()
        if feed.short:
            raise _map_timed_out(timeout)
        if feed.unsendable is not None:
            raise feed.unsendable
    finally:
        for future, _ in in_flight:
            future.cancel()
