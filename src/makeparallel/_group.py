"""Structured groups of tasks: ``with ParallelContext() as ctx: ctx.submit(...)``.

A group owns the tasks submitted through it. Leaving the ``with`` block waits for
all of them. The first failure, in the body or in any task, cancels the tasks
not yet ended and is raised when the block exits; every task failure is kept on
``ctx.errors``. Cancellation of the siblings happens the moment a task fails, on
the thread that saw the failure, so a failing group does not run to the end.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Container, Coroutine, Iterable
from types import MethodType, TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, Union, overload

from . import _interruptible
from ._admission import Limiter, NoSlotInTime, holding_a_slot
from ._decorators import (
    ParallelFunction,
    _BoundParallelFunction,
    as_parallel,
    callable_of,
    own_parameters,
)
from ._handle import AsyncHandle, cancel_and_stop
from ._runtime import BackendOption, check_backend
from ._states import CANCELLED, PENDING, SUCCEEDED
from ._task_context import current_task
from ._validation import check_count, check_wait_timeout
from .errors import TaskCancelledError, TaskTimeoutError

__all__ = ["ParallelContext"]

T = TypeVar("T")
#: What runs to its result, not to what a call returns: a ``@parallel`` function or method, an async function.
_RunToResults = Union[
    ParallelFunction[..., T], _BoundParallelFunction[..., T], Callable[..., Coroutine[Any, Any, T]]
]


_COUNTED: Any = object()  # what _task_ended finds where another call counted the task first


class ParallelContext:
    """A group of tasks that end together: the structured way to fan out.

    Args:
        timeout: seconds from entering the block; when it passes while the block
            waits for its tasks, the rest are cancelled and ``TaskTimeoutError``
            is raised. It also bounds each ``submit``'s wait for a slot (the
            group's ``max_concurrent``, the function's, or
            ``mp.set_max_concurrent_tasks``): past it, nothing is submitted
            and ``submit`` times the group out (the block then raises
            ``TaskTimeoutError`` too, though that ``submit`` ran on another
            thread). Wherever it is met, the timeout is the group's own
            ending, not a failure: ``ctx.errors`` does not hold it.
        max_concurrent: at most this many of the group's tasks in flight; a
            submission over the limit waits until one ends (within the
            group's ``timeout``: past it, ``submit`` times the group out).
            One made by a task of the group, or by a task that such a task
            submitted, is admitted over the limit and counted: it would
            otherwise wait for slots only its own end could free.
        backend: the backend for plain functions submitted to the group
            (decorated functions keep their own).

    Raises:
        TypeError: ``timeout`` is not a number of seconds or ``None``,
            ``max_concurrent`` is not an int (a ``bool`` or a float
            included), or ``backend`` is neither a backend name nor an
            executor.
        ValueError: ``timeout`` is negative or NaN, ``max_concurrent`` is
            below 1, or ``backend`` names no backend.

    Example::

        with mp.ParallelContext(max_concurrent=8) as ctx:
            for path in paths:
                ctx.submit(resize, path)
        thumbnails = ctx.results()

    Groups nest, inside one another and inside tasks.
    """

    def __init__(
        self,
        timeout: float | None = None,
        max_concurrent: int | None = None,
        backend: BackendOption | None = None,
    ) -> None:
        timeout = check_wait_timeout(timeout)
        if backend is not None:
            check_backend(backend)
        if max_concurrent is not None:
            max_concurrent = check_count(max_concurrent, "max_concurrent")
        self._timeout = timeout
        self._limiter = None if max_concurrent is None else Limiter(max_concurrent, exempt_tasks=False)
        self._backend = backend
        self._handles: list[AsyncHandle[Any]] = []
        # The tasks appended whose end _task_ended has not counted yet: taken out by one dict.pop,
        # atomic, so the count is once without a lock (each end taking the group's lock, which every
        # submit takes too, made a group of 20,000 no-ops twice as slow).
        self._uncounted: dict[AsyncHandle[Any], None] = {}
        # Plain functions made parallel once per group; keyed by id (a method's: of its function and
        # instance), kept alive here.
        self._functions: dict[int | tuple[int, int], ParallelFunction[..., Any] | _BoundParallelFunction[..., Any]] = {}
        self._lock = threading.Lock()
        # Submits past their first check, not yet appended (or refused), by thread: the block's
        # end waits for those of other threads. (Its own has none under way as it ends; one a
        # Ctrl-C left counted, landing as the count was given back, would hold it for good.)
        self._making: dict[int, int] = {}
        self._made = threading.Condition(self._lock)
        # The limiters that submits to the group wait on for a slot now, by thread: the block's end
        # does not wait for those submits (a limit the group does not own, mp.set_max_concurrent_tasks,
        # may free no slot before the block has ended), and its end or failure wakes them to refuse.
        self._slot_waits: dict[int, list[Limiter]] = {}
        self._failed = False
        self._cancelling = False  # set once the group cancels its own tasks
        self._ended = False  # set, under the lock, once the block ended and waited for every task
        self._deadline: float | None = None
        # Set, under the lock, as a wait first meets the group's deadline; the message of its timeout
        # follows once its cancel has counted the tasks it cancelled (the other waits wait for it).
        self._timing_out = False
        self._timed_out: str | None = None
        # The refusals this group raised since it failed: one that ends the body is not its failure.
        self._refusals: weakref.WeakSet[BaseException] = weakref.WeakSet()
        # The TaskTimeoutErrors this group raised (results(), a submit, on any thread): one that ends the
        # body is the group's own ending, as at the block's end, not a failure for ctx.errors.
        self._timeouts: weakref.WeakSet[BaseException] = weakref.WeakSet()
        # The body's failure, until a task's end records the same object: then it was that task's.
        self._body_error: BaseException | None = None
        self.errors: list[BaseException] = []
        # The traceback of errors[0] as it was recorded: each raise of it starts from there, so that
        # results() read again lists no earlier reader's frames, nor keeps them alive (_first_failure).
        self._first_traceback: TracebackType | None = None
        """Every failure of the group's tasks (and of the body), in the order seen; each once.

        Not the group's own timeout, wherever it was met (the block's end, ``results()``, a submit)."""

    def __enter__(self) -> ParallelContext:
        if self._ended:  # as asyncio.TaskGroup: its tasks and errors are those of the block that ended
            raise self._ended_error()
        if self._timeout is not None:
            self._deadline = time.monotonic() + self._timeout
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        refused = exc is not None and exc in self._refusals  # the body submitted on after a failure
        # The group's own timeout, met inside the block (results(), a submit waiting for a slot): its
        # tasks are cancelled already, and it ends the block as the block's end meeting it does.
        timed_out = exc is not None and exc in self._timeouts
        if exc is not None and not refused and not timed_out:
            self._fail(exc, traceback, raised_by_the_body=True)
        try:
            self._wait_to_end()
        except BaseException as error:
            self._cancel_unfinished()  # a task made after this sees _cancelling: it is cancelled as made
            with self._lock:
                self._ended = True
            if timed_out and error in self._timeouts:
                return  # the same timeout, met again: the body's is raised, as it was
            if refused and error in self._timeouts:
                raise error from None  # the timeout that made the group refuse, not raised in handling the refusal
            raise
        if refused and not self.errors:  # refused as the group had timed out: its timeout, as the block had not seen it
            try:
                self._time_out()
            except TaskTimeoutError as timeout:
                raise timeout from None
        if refused:  # the failure that made the group refuse, as the block had not seen it
            failure = self._first_failure()  # from its first traceback, as below: no earlier reader's frames
            raise failure from failure.__cause__  # its own cause kept; not shown as raised in handling the refusal
        if exc is None and self.errors:
            raise self._first_failure()
        if exc is None and self._timing_out:  # met on another thread: the block's too, its message once made
            self._time_out()

    # Not for the type checkers: to them a group has no __aenter__, so that they flag `async with`
    # as they did before it had one (mypy took this one, typed NoReturn, for the protocol met).
    if not TYPE_CHECKING:

        def __aenter__(self) -> NoReturn:
            """Refused with a ``TypeError`` that says what to write: ``async with`` cannot enter a group.

            ``mp.TaskGroup`` has ``asyncio.TaskGroup``'s name, and ``async with`` is
            what a coroutine writes for that one; Python's own refusal named the
            protocol, not what to do instead. The block's end waits for the tasks,
            which would block the event loop: a coroutine awaits the handles.

            Raises:
                TypeError: always.
            """
            raise TypeError(
                f"{type(self).__name__} (mp.TaskGroup) is entered with `with`, not `async with`: the end of its "
                "block waits for its tasks, blocking the event loop. In a coroutine, await the handles instead: "
                "`await mp.gather_async([f(x) for x in items])` (cancelling the coroutine cancels them)"
            )

        async def __aexit__(self, *exc_info: object) -> None:  # never reached: __aenter__ refuses
            return None

    # -- submitting ----------------------------------------------------------------

    # A @parallel function runs as itself, not as a task that submits it, and an async function's
    # coroutine runs to its end: either way the handle holds the result (each first).
    @overload
    def submit(self, fn: _RunToResults[T], /, *args: Any, **kwargs: Any) -> AsyncHandle[T]: ...
    @overload
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> AsyncHandle[T]: ...
    @overload
    def submit(self, *, func: _RunToResults[T], args: tuple[Any, ...] | list[Any] = ()) -> AsyncHandle[T]: ...
    @overload
    def submit(self, *, func: Callable[..., T], args: tuple[Any, ...] | list[Any] = ()) -> AsyncHandle[T]: ...
    def submit(self, *positional: Any, **kwargs: Any) -> AsyncHandle[Any]:
        """Run ``fn(*args, **kwargs)`` as a task of the group; return its handle.

        The forms of makeparallel 0.2 work too: ``ctx.submit(fn, (a, b))`` (a
        single tuple and nothing else) passes the tuple's items as the arguments
        (to pass one tuple as the only argument, wrap it: ``ctx.submit(fn,
        ((a, b),))``), and so do ``ctx.submit(fn, args=(a, b))`` and
        ``ctx.submit(func=fn, args=(a, b))``. As for ``timeout=`` on a call,
        ``args=`` is the library's only when ``fn`` has no parameter named
        ``args``; otherwise it is passed to ``fn``.

        Raises:
            TypeError: no function was given, or it is not callable (``None``
                included), or ``args=`` came with positional arguments too, or
                is not a tuple or list.
            TaskCancelledError: the group already failed, or failed while this
                call waited for a slot of any limit (left to end the block, the
                block raises that failure instead), or timed out (a task made as
                it ends so is returned cancelled, with its other tasks; left to
                end the block, the block raises the timeout instead);
                or, inside a task, that task was cancelled while this call
                waited for a slot (``max_concurrent``): a cancellation point.
            TaskTimeoutError: the group's ``timeout`` passed while this call
                waited for a slot (of the group's ``max_concurrent``, the
                function's, or ``mp.set_max_concurrent_tasks``), met by this
                wait or another of the group's: the task is not submitted and
                the group's tasks are cancelled; or, inside a task, that task
                timed out meanwhile.
            ShutdownError: the library was shut down (before this call, or
                while it waited for a slot).
            RuntimeError: the group's ``with`` block has ended (without a
                failure or timeout, which refuse as above), before this call or
                while it waited for a slot of any limit (the end does not wait
                for that): it waited for its tasks then, and would neither wait
                for this one nor report its failure. Start a new group.
                Or, on a thread whose event loop runs, this call waited for
                a slot of the group's ``max_concurrent`` and the tasks holding
                every slot run coroutines on that loop, which the wait would
                block (a ``"sync"`` task run in place there returned one).
        """
        if positional:
            fn, positional = positional[0], positional[1:]
        elif "func" in kwargs:
            fn = kwargs.pop("func")
        else:
            raise TypeError("submit() needs the function to run: ctx.submit(fn, *args, **kwargs)")
        if "args" in kwargs and not own_parameters(fn, ("args",)):
            if positional:
                raise TypeError(
                    "submit() got positional arguments and args= too: give the arguments "
                    "one way, ctx.submit(fn, a, b) or ctx.submit(fn, args=(a, b))"
                )
            packed = kwargs.pop("args")
            if not isinstance(packed, (tuple, list)):
                raise TypeError(f"args= must be a tuple or list of arguments, got {packed!r}")
            positional = tuple(packed)
        elif len(positional) == 1 and not kwargs and type(positional[0]) is tuple:
            positional = positional[0]
        return self._submit(fn, positional, kwargs)

    def _submit(self, fn: Callable[..., Any], positional: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncHandle[Any]:
        """Run ``fn(*positional, **kwargs)`` as a task of the group, its arguments as given.

        A failure or the timeout of the group while the task is made (on
        another thread, after the checks) cancels the group's tasks before this
        one is among them: it is cancelled here instead, or it ran on after the
        group had ended. A submit past its first check is counted until its
        task is among the group's (or it raised), and the block's end waits for
        it: a task is refused before it is made, or waited for (unless the
        group cancels its tasks: then it is cancelled as made). Refused once
        made, as it was, it may have run all the same (inline, or on a free
        worker), though its caller was told it was not taken.
        """
        here = threading.get_ident()
        counted = False
        try:
            with self._lock:
                self._refuse_if_ended()
                self._making[here] = self._making.get(here, 0) + 1
                counted = True
            handle = self._make(fn, positional, kwargs)
            with self._lock:  # appended and given back at once: the close sees one or the other
                self._handles.append(handle)
                self._uncounted[handle] = None
                ended_meanwhile = self._cancelling
                counted = False  # first: interrupted in the call, it is not given back twice
                self._made_one_locked(here)
        finally:
            if counted:  # it raised, or a Ctrl-C landed before its task was appended
                with self._lock:
                    self._made_one_locked(here)
        handle._add_own_done_callback(self._task_ended)
        if ended_meanwhile:  # as the task was made: the group cancelled its tasks without this one
            cancel_and_stop([handle])
        return handle

    def _make(self, fn: Callable[..., Any], positional: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncHandle[Any]:
        """Make the task (waiting for a slot under ``max_concurrent``); the caller adds it to the group."""
        # Before the look-up, as as_parallel takes them: what they give is kept, as the key's object
        # must be (its id is the key). A staticmethod is not: the function it holds is (and may be
        # a bound method of a @parallel function, @classmethod over it from Python 3.13).
        fn = callable_of(fn)
        # A method is read anew (bound) at each submit: keyed by its function and instance, which
        # the first one kept holds, it is made parallel once, not once per submit.
        key: int | tuple[int, int]
        if type(fn) is MethodType:
            key = (id(fn.__func__), id(fn.__self__))
        elif type(fn) is _BoundParallelFunction:
            key = (id(fn._function), id(fn._instance))
        else:
            key = id(fn)
        function = self._functions.get(key)
        if function is None:
            function = self._functions.setdefault(key, as_parallel(fn, self._backend))
        try:
            admitted = self._limiter is None or self._limiter.acquire(self._deadline, self)
        except NoSlotInTime:  # another wait met the deadline first, its message still to come (_refuse_waiting)
            admitted = False
        if not admitted:
            self._time_out()
        try:
            self._refuse_if_ended()  # again: the slot this submit waited for may have been freed by a failure
            # The group's deadline and its stop bound the call's own waits for a slot too (the
            # function's max_concurrent, mp.set_max_concurrent_tasks): past either, nothing is submitted.
            if self._limiter is None:
                return function._submit_until(self._deadline, positional, kwargs, self)
            with holding_a_slot(self._limiter):  # the task, and those it makes, submit here over the limit
                return function._submit_until(self._deadline, positional, kwargs, self)
        except NoSlotInTime:
            pass  # timed out below, not while handling it: the group's error alone is shown
        except BaseException:
            if self._limiter is not None:
                self._limiter.release()
            raise
        if self._limiter is not None:
            self._limiter.release()
        self._time_out()

    def _slot_wait_begins(self, limiter: Limiter) -> None:
        """A submit on this thread waits for a slot of ``limiter`` (``_admission.Recipient``).

        Until the wait ends, the block's end does not wait for that submit
        (it is woken, and refuses, as the group ends or fails); told here, a
        close already waiting for it may go on.
        """
        with self._lock:
            self._slot_waits.setdefault(threading.get_ident(), []).append(limiter)
            self._made.notify_all()

    def _slot_wait_ends(self, limiter: Limiter) -> None:
        """That wait ended, with a slot or not (``_admission.Recipient``): the block's end waits for the submit again.

        Its caller checks the group's refusal after this: a close before
        this refuses the submit then (its slot goes back), one after waits
        for its task.
        """
        with self._lock:
            waits = self._slot_waits.get(threading.get_ident())
            if waits is None or limiter not in waits:  # a Ctrl-C landed before it was told
                return
            waits.remove(limiter)
            if not waits:
                del self._slot_waits[threading.get_ident()]

    def _slot_holders(self, limiter: Limiter) -> Container[Any]:
        """The tasks holding a slot of ``limiter`` where it is this group's limit (``_admission.Recipient``): its tasks.

        Each holds one from its submit (over the limit too, made by a task of
        the group) until its end; the tasks made inside one carry its mark
        (``holding_a_slot``), and hold none. Ended ones are left to the caller
        to skip.
        """
        if limiter is not self._limiter:
            return ()
        with self._lock:
            return set(self._handles)

    def _wake_slot_waits(self) -> None:
        """Wake the submits waiting for a slot, each to see that the group stopped taking tasks."""
        with self._lock:
            limiters = {id(limiter): limiter for waits in self._slot_waits.values() for limiter in waits}
        for limiter in limiters.values():
            limiter.wake_waiters()

    def _made_one_locked(self, thread: int) -> None:
        """A submit under way on ``thread`` ended (its task added, or it raised): the block's end may go on."""
        left = self._making.pop(thread) - 1
        if left:
            self._making[thread] = left
        else:
            self._made.notify_all()

    @overload
    def map(self, fn: _RunToResults[T], iterable: Iterable[Any]) -> list[AsyncHandle[T]]: ...
    @overload
    def map(self, fn: Callable[..., T], iterable: Iterable[Any]) -> list[AsyncHandle[T]]: ...
    def map(self, fn: Callable[..., Any], iterable: Iterable[Any]) -> list[AsyncHandle[Any]]:
        """Submit ``fn(item)`` for each item, one task each; return the handles.

        An item that is a tuple is passed as it is, one argument, as ``map()``
        does: not as the arguments of ``submit``'s 0.2 form.

        Raises:
            Exception: what :meth:`submit` raises, at the first item it refuses
                (the group's ``timeout`` passing as it waits for a slot, say);
                the items after it are not submitted.
        """
        return [self._submit(fn, (item,), {}) for item in iterable]

    def results(self) -> list[Any]:
        """Wait for every task so far and return their results in submission order.

        Raises the group's first failure, or its timeout, as leaving the block would.

        Raises:
            Exception: the group's first failure, as itself.
            TaskTimeoutError: the group's ``timeout`` passed (met by this wait
                or another of the group's, the block's end included): the
                block's own error, with its count of the tasks it cancelled,
                not the ``TaskCancelledError`` of one of them.
            RuntimeError: called from one of the group's own unfinished tasks,
                which would wait for its own end.
        """
        task = current_task()
        if task is not None and task._state < SUCCEEDED and any(handle is task for handle in self.handles):
            task._refuse_to_wait_for_itself()  # at once, not after waiting for the tasks before it
        self._wait_all()
        if self.errors:
            raise self._first_failure()
        if self._timing_out:  # its tasks, cancelled, are not failures: the timeout is what the block raised
            self._time_out()
        return [handle.get() for handle in self.handles]

    @property
    def handles(self) -> list[AsyncHandle[Any]]:
        """The handles of the group's tasks, in submission order."""
        with self._lock:
            return list(self._handles)

    # -- internals -------------------------------------------------------------------

    def _refuse_if_ended(self) -> None:
        """Refuse a task once the group cancels its own: at its first failure, its timeout, or Ctrl-C.

        A task of the group still running then (it has not seen its
        cancellation yet) would otherwise add one that runs after the block
        ended, which no one waits for. So would any submission once the
        block has ended: a group that failed or timed out refuses it as above
        (a task of the group running on sees a cancellation), one that ended
        well with ``RuntimeError``, for its failure would reach no one.
        """
        if self._failed:
            refusal = TaskCancelledError("the group already failed and takes no new tasks; see ctx.errors")
            self._refusals.add(refusal)  # if it ends the body, the block raises the failure instead
            raise refusal
        if self._cancelling:  # in the block: timed out (a Ctrl-C there fails the group, or ends the block)
            refusal = TaskCancelledError("the group timed out (or was interrupted) and takes no new tasks")
            self._refusals.add(refusal)  # if it ends the body, the block raises the timeout instead
            raise refusal
        if self._ended:
            raise self._ended_error()

    def _refuse_waiting(self) -> None:
        """Refuse a submit waiting for a slot once the group cancels its own (``_admission.Recipient``).

        As :meth:`_refuse_if_ended`, but a timeout met meanwhile by another of
        the group's waits (the block's end, ``results()``, a submit on another
        thread), which wakes this one, ends the wait as its deadline does
        (``NoSlotInTime``): the submit then raises the group's
        ``TaskTimeoutError`` (:meth:`_time_out`), as this wait meeting it first
        does. Which wait wakes first, at the one deadline, does not change what
        the submit (and a body it ends) raises. Not raised here: under a
        limiter's lock, this cannot wait for the message, made once the
        timeout's cancel has counted what it cancelled.
        """
        if self._timing_out and not self._failed:
            raise NoSlotInTime
        self._refuse_if_ended()

    def _task_ended(self, handle: AsyncHandle[Any]) -> None:
        """Count a task's end, once; a failure fails the group before its slot frees.

        A submit waiting for that slot (``max_concurrent``) then sees the
        failure and refuses its task, which would otherwise start after the
        group had cancelled the rest, and run to its end.

        Called by the task's done-callback, and by every wait of the group
        for that task (``_wait_all``): a handle reads as ended before its
        callbacks run, and a block's end that found it so raised no failure
        and left its slot taken, the callback still to come.
        """
        if handle not in self._uncounted or self._uncounted.pop(handle, _COUNTED) is _COUNTED:
            return
        state = handle._state
        try:
            if state != SUCCEEDED and not (state == CANCELLED and self._cancelling):  # not one this group cancelled
                error = handle._error_for_caller()
                # Its first traceback, not the one it has now: a wait of results() may have raised it already.
                self._fail(error, handle._origin)
        finally:
            if self._limiter is not None:
                self._limiter.release()

    def _fail(self, error: BaseException, origin: TracebackType | None, raised_by_the_body: bool = False) -> None:
        """Record a failure and, at the first, cancel the rest; the body's, a task's raised again, is not again.

        ``origin``: the traceback ``error`` had as it was first raised, where
        each raise of the first failure starts (:meth:`_first_failure`).

        The body may raise a task's own error (``handle.get()``, ``results()``)
        out of the block: that is the failure the task's end recorded (or
        records, its count still to come), not a second one. Only the body's
        is matched so: two tasks may fail with one exception object (each read
        one failed future), two failures, of which the second was not listed.
        """
        with self._lock:
            if raised_by_the_body:
                if any(seen is error for seen in self.errors):
                    return
                self._body_error = error
            elif error is self._body_error:  # the task whose error the body raised first
                self._body_error = None
                return
            self.errors.append(error)
            if len(self.errors) == 1:
                self._first_traceback = origin
            first = not self._failed
            self._failed = True
        if first:
            self._cancel_unfinished()

    def _first_failure(self) -> BaseException:
        """``errors[0]``, its traceback set back to the one it had as recorded: for a ``raise`` (see ``AsyncHandle._error_to_raise``)."""
        return BaseException.with_traceback(self.errors[0], self._first_traceback)

    def _cancel_unfinished(self) -> int:
        """Cancel what is left: the group ends as a whole, at its first failure or its timeout; return how many.

        A task still running on a worker process a moment later has its worker
        replaced (``cancel_and_stop``), as a map's: one stuck for good (a hung
        read) kept its worker busy after the group had ended, and the pool's
        next tasks waited for it.
        """
        with self._lock:
            self._cancelling = True
            self._made.notify_all()  # the block's end, waiting for a submit under way, need not any more
        self._wake_slot_waits()  # set first: a wait that begins after this sees it
        return cancel_and_stop(self.handles)

    def _ended_error(self) -> RuntimeError:
        failed = f", {len(self.errors)} failure(s) in ctx.errors" if self.errors else ""
        return RuntimeError(
            f"this ParallelContext's with block has already ended (it waited for its {len(self._handles)} "
            f"task(s){failed}): a group serves one block, and would neither wait for a task given after it "
            "nor report its error. Submit inside the block, or start a new group: "
            "with mp.ParallelContext() as ctx: ..."
        )

    def _wait_to_end(self) -> None:
        """Wait for every task, then close the group: no task can join it unwaited for after this.

        A submit under way (on another thread, past its first check) is waited
        for too, and then its task; within the group's ``timeout``. Not one
        waiting for a slot, nor any once the group cancels its tasks (a
        failure, Ctrl-C): a wait for a slot under a limit the group does not
        own (``mp.set_max_concurrent_tasks``) could outlast the block, whose
        end would wait for it (for good, if the slot's holder waits for what
        comes after the block). The close wakes such a wait, which refuses as
        a submit after the block's end does; one that got its slot first is
        waited for.
        """
        here = threading.get_ident()
        waited = self._wait_all()
        while True:
            with self._lock:  # a submit appends under it: one that got in past the last wait is waited for too
                if waited == len(self._handles) and (self._cancelling or not self._making_elsewhere_locked(here)):
                    self._ended = True
                    break
                in_time = waited < len(self._handles) or self._wait_for_submits_locked()
            if not in_time:
                self._time_out()
            waited = self._wait_all(waited)
        self._wake_slot_waits()  # ended first: a wait told after this refuses at its first check

    def _making_elsewhere_locked(self, here: int) -> bool:
        """Whether a submit on another thread than ``here`` is under way, past its waits for a slot."""
        waits = self._slot_waits
        return any(thread != here and count > len(waits.get(thread, ())) for thread, count in self._making.items())

    def _wait_for_submits_locked(self) -> bool:
        """Wait, the lock held, for a submit under way to end (it may return sooner); False past the deadline."""
        if self._deadline is None:
            _interruptible.wait(self._made, None)
            return True
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            return False
        _interruptible.wait(self._made, remaining)
        return True

    def _wait_all(self, waited: int = 0) -> int:
        """Wait for the tasks from the ``waited``-th on, those added meanwhile too; return how many there were."""
        while waited < len(self._handles):  # tasks may add tasks while we wait
            handle = self._handles[waited]
            waited += 1
            if self._deadline is None:
                # Queued, it runs here, as wait() would run it, cancelled with the task this runs in.
                # Only then: asked of every task, the call made a group's end 9% slower.
                if handle._state == PENDING:
                    handle._run_owned_here_if_queued()
                handle.wait()
            else:
                remaining = max(0.0, self._deadline - time.monotonic())
                if not handle.wait(remaining):  # a task that ended needs no time: only one unfinished times out
                    self._time_out()
            if handle in self._uncounted:
                self._task_ended(handle)
        return waited

    def _time_out(self) -> NoReturn:
        """The group's deadline passed: cancel what is left and raise ``TaskTimeoutError``.

        The first wait to meet it (the block's end, ``results()``, a submit on
        any thread) cancels, and its message counts the tasks that cancel
        ended: counted before it, a task that ended in between was said to be
        cancelled ("its 0 unfinished task(s) were cancelled" of the last). The
        others, the block's end too, wait for that message and raise it; the
        first makes it however it ends, a Ctrl-C from the mark on included.
        Marked before the cancelling, which may let the block end: met on another
        thread (a submit waiting for a slot there, say), the timeout reached
        only that thread, and the block, finding every task ended, ended
        without an error.
        """
        first = False
        try:  # marked inside: a Ctrl-C raised as the mark's lock is let go left the others waiting for good
            with self._lock:
                first, self._timing_out = not self._timing_out, True  # one line: marked and known together
            if first:  # made as the count comes: a Ctrl-C landing after the cancel cannot keep it back
                self._timed_out = self._timeout_message(self._cancel_unfinished())
        finally:
            if first:
                with self._lock:
                    if self._timed_out is None:  # interrupted, the others still get a message (without the count)
                        self._timed_out = self._timeout_message(None)
                    self._made.notify_all()
        if not first:
            with self._lock:
                while self._timed_out is None:  # in slices: made by an interrupted wait, it may come untold
                    _interruptible.wait(self._made, _interruptible.SLICE)
        error = TaskTimeoutError(self._timed_out)
        self._timeouts.add(error)  # if it ends the body, it is the group's ending, not a failure
        raise error

    def _timeout_message(self, cancelled: int | None) -> str:
        """What the group's timeout says, having cancelled ``cancelled`` tasks (``None``: interrupted, unknown)."""
        timed_out = f"the group timed out after {self._timeout:g} s"
        if cancelled is None:
            return f"{timed_out}; its unfinished tasks were cancelled"
        if not cancelled:
            return f"{timed_out}; no task of it was left unfinished, none was cancelled"
        return f"{timed_out}; its {cancelled} unfinished task(s) were cancelled"


TaskGroup = ParallelContext
"""``ParallelContext`` under the name of ``asyncio.TaskGroup``, whose way it follows: the same class."""
