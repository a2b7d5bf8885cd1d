"""Collecting many handles: gather, as_completed, wait.

All three follow the tasks as they end, through one :class:`Completions` queue fed
by done-callbacks, so a failure is seen the moment it happens, not when the
collector reaches it in list order.

A collector that is itself a task (nested parallelism) runs queued tasks inline
while it has nothing else to do, as ``handle.get()`` does, so that tasks waiting
for their children can never deadlock the pool. Any other collector only waits:
busy running a task, it could not report another task's failure at once.

Ctrl-C while collecting cancels the tasks not yet ended, in bulk (one lock
round per backend, see ``cancel_all``), and re-raises; the pool stays usable.
A task still running on a worker process a moment later has its worker
replaced (``cancel_and_stop``): what the user stopped does not go on.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
)
from concurrent import futures
from typing import Any, Literal, NamedTuple, TypeVar, overload

from . import _held_on_loop, _interruptible
from ._backends._base import BlockingWait
from ._coroutines import end_those_of_closed_loops, on_callers_loops, running_loop
from ._handle import AsyncHandle, cancel_and_stop
from ._progress import GATHERED, ProgressOption, open_progress
from ._states import HELD, PENDING, SUCCEEDED
from ._task_context import CancellationPoint, current_task
from ._validation import check_wait_timeout
from .errors import TaskTimeoutError

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "Completed",
    "FIRST_EXCEPTION",
    "Completions",
    "DoneAndNotDone",
    "as_completed",
    "check_on_error",
    "collect_timeout_error",
    "gather",
    "read_elsewhere",
    "reading_alone",
    "results_of",
    "stop_following",
    "taken",
    "unfinished_of",
    "wait",
]

ALL_COMPLETED = futures.ALL_COMPLETED
"""``wait(..., return_when=ALL_COMPLETED)`` returns when every task has ended (the default): the constant of ``concurrent.futures``."""
FIRST_COMPLETED = futures.FIRST_COMPLETED
"""``wait(..., return_when=FIRST_COMPLETED)`` returns when any task ends: the constant of ``concurrent.futures``."""
FIRST_EXCEPTION = futures.FIRST_EXCEPTION
"""``wait(..., return_when=FIRST_EXCEPTION)`` returns when a task ends without a result (it failed, timed out or was
cancelled), else when every task has ended: the constant of ``concurrent.futures``."""

T = TypeVar("T")
OnError = Literal["raise", "skip", "none"]
_ON_ERROR = ("raise", "skip", "none")
_RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)


def check_on_error(on_error: Any) -> OnError:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be one of 'raise', 'skip', 'none', got {on_error!r}")
    return on_error  # type: ignore[no-any-return]


def _as_handles(handles: Iterable[AsyncHandle[T]], caller: str) -> list[AsyncHandle[T]]:
    """The handles as a list; a ``TypeError`` naming ``caller`` for anything else.

    Ctrl-C while an iterator is read (``gather(f(x) for x in items)``, whose
    next call may wait for a ``max_concurrent`` slot) cancels the tasks read
    so far, as Ctrl-C while the collector waits does: nothing else can see
    those handles again, and they ran on, a process task's worker kept busy.
    """
    items: list[AsyncHandle[T]] = []
    try:
        items.extend(handles)  # not list(): what an iterator yielded before it raised stays in items
    except KeyboardInterrupt:
        cancel_and_stop([item for item in items if isinstance(item, AsyncHandle)])
        raise
    except TypeError:
        if hasattr(handles, "__iter__"):
            raise  # the iterable itself failed: its own error says why
        raise TypeError(
            f"{caller}() takes an iterable of AsyncHandle objects as its handles argument, "
            f"got {handles!r} ({type(handles).__name__}); pass a list such as [f(1), f(2)]"
        ) from None
    for item in items:
        if not isinstance(item, AsyncHandle):
            raise TypeError(_not_a_handle(caller, item))
    return items


def _not_a_handle(caller: str, item: object) -> str:
    """What :func:`_as_handles` says of ``item``, which is no handle; for a future, what to pass instead."""
    expected = f"{caller}() expected AsyncHandle objects (what a @parallel function returns) in its handles argument"
    if not isinstance(item, futures.Future):
        return f"{expected}, got {item!r}"
    if isinstance(getattr(item, "handle", None), AsyncHandle):  # an mp.Executor's (_executor.ExecutorFuture)
        return f"{expected}, got an mp.Executor future {item!r}: pass its future.handle, the task's AsyncHandle"
    return (
        f"{expected}, got a concurrent.futures.Future {item!r}: wait for standard futures with "
        "concurrent.futures.wait() or as_completed(), or give their executor to @mp.parallel(backend=executor) "
        "to get handles"
    )


def _cancel_after_interrupt(handles: object, items: list[AsyncHandle[Any]] | None) -> None:
    """Ctrl-C while collecting: cancel the tasks, even if it landed while reading ``handles``."""
    if items is None:
        if not isinstance(handles, (list, tuple, set, frozenset)):
            return  # an iterator, partly read: its handles cannot be seen again
        items = [h for h in handles if isinstance(h, AsyncHandle)]
    cancel_and_stop(items)


def stop_following(handles: Iterable[AsyncHandle[Any]], callback: Callable[..., Any]) -> None:
    """Remove a collector's ``callback`` from those of ``handles`` that have not ended.

    A collector that returns before every task ended (a timeout, the first
    failure, ``FIRST_COMPLETED``, a loop left early) would otherwise leave its
    callback, and everything the callback holds, on each unfinished task: a
    loop of ``mp.wait(pending, timeout=1)`` piled up one per task per turn.
    """
    for handle in handles:
        if handle._state < SUCCEEDED:
            handle._forget_done_callback(callback)


def collect_timeout_error(timeout: float | None, outstanding: int, total: int) -> TaskTimeoutError:
    """The error of a collector whose ``timeout`` passed with tasks still unfinished.

    ``outstanding`` 0: every task ended since the wait gave up (their ends
    not yet told to it, :func:`unfinished_of` counts them ended), which it
    says: "0 of 1 tasks unfinished; they go on" was said of one that had ended.
    """
    if not outstanding:
        return TaskTimeoutError(
            f"timed out after {timeout:g} s; its {total} task(s) ended just as the wait gave up: "
            "ask again for their outcomes, ready now"
        )
    return TaskTimeoutError(
        f"timed out after {timeout:g} s with {outstanding} of {total} tasks unfinished; they go on unless cancelled"
    )


def unfinished_of(handles: Collection[AsyncHandle[Any]]) -> tuple[int, int]:
    """How many of the distinct tasks of ``handles`` are unfinished, and how many distinct tasks they are.

    For a collector's timeout message: a task listed twice is one task, as
    ``as_completed``, which yields it once, counts it. Counted as the error is
    made, not as the tasks are followed: a ``gather`` that ends in time pays nothing.
    """
    distinct = dict.fromkeys(handles)
    return sum(1 for handle in distinct if not handle.done()), len(distinct)


class Completions:
    """Handles in the order they end; a consumer inside a task runs queued ones meanwhile.

    Args:
        timeout: seconds from now after which :meth:`next` raises ``TaskTimeoutError``.
        owned: the handles are the consumer's own (a map's chunks), which it
            cancels when it leaves its wait early: one run inline is cancelled
            as the task that runs it here is stopped
            (``AsyncHandle._run_owned_here_if_queued``).
    """

    def __init__(self, timeout: float | None, *, owned: bool = False) -> None:
        self._run_inline = AsyncHandle._run_owned_here_if_queued if owned else AsyncHandle._run_here_if_queued
        self._ended: queue.SimpleQueue[AsyncHandle[Any]] = queue.SimpleQueue()
        self._put = self._ended.put  # the done-callback, one object so that it can be removed
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self.outstanding = 0
        self._total = 0
        self._counted: Collection[AsyncHandle[Any]] | None = None  # see of()
        self.timed_out = False  # the timeout passed: a TaskTimeoutError from next() is its own
        # To run inline, oldest first: only for a consumer that is itself a task.
        # Held weakly: a queued task is held by its pool, and an ended one must
        # not be kept alive here once the consumer took and dropped it.
        self._task = current_task()  # the task that collects, if any: it may not wait for itself
        self._itself = 0  # how often that task's own unfinished handle is followed
        self._candidates: deque[weakref.ref[AsyncHandle[Any]]] | None = (
            deque() if timeout is None and self._task is not None else None
        )
        # Those whose coroutine runs on the loop of the code that called them: only that loop
        # ends them, and nothing tells of its close, so the wait looks between slices.
        self._on_callers_loops: list[AsyncHandle[Any]] = []
        # The loop running on this thread, once a task held for its slots is followed: see _next_beside_held.
        self._loop: Any = None

    @classmethod
    def of(
        cls, handles: list[AsyncHandle[Any]], timeout: float | None, *, counted: Collection[AsyncHandle[Any]] | None = None
    ) -> Completions:
        """Completions following ``handles``.

        ``counted``: the handles a timeout's error counts the unfinished ones of
        (:func:`unfinished_of`), a collection the caller keeps: ``gather``'s as
        listed, ``as_completed``'s not yet yielded (it lets go of the others).
        Without it (a map's chunks), the error counts the handles not taken
        yet: one that ended just as the wait gave up counts as unfinished, and
        one listed twice as two.
        """
        completions = cls(timeout)
        completions._counted = counted
        for handle in handles:
            completions.add(handle)
        return completions

    def add(self, handle: AsyncHandle[Any]) -> None:
        """Follow one more handle.

        Raises:
            RuntimeError: ``handle`` is an unfinished async task and this
                thread's event loop runs (the wait would block it), as ``get()``.
        """
        handle._refuse_to_block_a_loop()
        if handle._on_worker == HELD and self._loop is None:
            self._loop = running_loop()
        if on_callers_loops and handle in on_callers_loops:
            self._on_callers_loops.append(handle)
        if handle is self._task and handle._state < SUCCEEDED:
            self._itself += 1  # other tasks' ends may still end the wait (FIRST_COMPLETED): refused in next()
        self.outstanding += 1
        self._total += 1
        candidates = self._candidates
        if candidates is not None:
            if len(candidates) > 2 * self.outstanding + 16:  # mostly ended ones: drop them
                self._candidates = candidates = deque(r for r in candidates if _pending(r))
            candidates.append(weakref.ref(handle))
        handle._add_own_done_callback(self._put)

    def refuse_to_wait_for_all_and_itself(self) -> None:
        """For a wait that needs every handle's end: raise ``RuntimeError`` at once where the collecting task is one.

        Raises:
            RuntimeError: the task that collects follows its own unfinished
                handle: the wait would end only with that task's end.
        """
        if self._itself:
            assert self._task is not None
            self._task._refuse_to_wait_for_itself()

    def stop_following(self, handles: Iterable[AsyncHandle[Any]]) -> None:
        """Remove this collector's done-callback from the tasks that have not ended."""
        stop_following(handles, self._put)

    def has_ended(self) -> bool:
        """Whether :meth:`next` has a handle to give without waiting (it takes no lock)."""
        return not self._ended.empty()

    def next(self) -> AsyncHandle[Any]:
        """The next handle to end (already-ended ones first, in no set order).

        Inside a task, a wait here is a cancellation point: the task's cancel or
        timeout wakes it (its handle is put in the queue) and it raises.

        Raises:
            TaskTimeoutError: ``timeout`` passed (then ``timed_out`` is set), or
                the task this runs in timed out.
            TaskCancelledError: the task this runs in was cancelled.
            RuntimeError: the only handles left are the collecting task's own:
                nothing but its end, which this wait holds off, could end the wait.
        """
        ended = self._ended
        if self._candidates is not None:
            while ended.empty() and self._run_one_queued():
                pass
        if self._itself and self.outstanding == self._itself and ended.empty():
            task = self._task
            assert task is not None
            if task._state < SUCCEEDED:  # (else its end is on its way into the queue)
                task._refuse_to_wait_for_itself()
        try:
            if self._loop is not None:
                handle = self._next_beside_held(self._loop)
            elif not ended.empty():
                handle = ended.get()
            else:
                with CancellationPoint(current_task(), self._put, None), BlockingWait():
                    deadline = self._deadline
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    watching = self._on_callers_loops  # tasks whose loop may close as this waits: looked at between slices
                    handle = _interruptible.get(ended, remaining, functools.partial(end_those_of_closed_loops, watching) if watching else None)
        except queue.Empty:
            self.timed_out = True
            counted = self._counted
            if counted is None:
                raise collect_timeout_error(self._timeout, self.outstanding, self._total) from None
            unfinished, distinct = unfinished_of(counted)
            # Those followed, less the repeats among those counted: gather's are all of them.
            raise collect_timeout_error(self._timeout, unfinished, self._total - (len(counted) - distinct)) from None
        self.outstanding -= 1
        return handle

    def _next_beside_held(self, loop: Any) -> AsyncHandle[Any]:
        """The next handle to end, waited for on the thread of ``loop`` (running), where a task followed waits for its slots.

        Meanwhile the ``"sync"`` tasks admitted to run on this thread are run
        here, in the loop's place, as ``AsyncHandle._wait_beside_held`` does:
        the loop, which this wait blocks, would have run them, and they may
        be followed here, or hold the slots of those that are. Each is
        announced by a ``None`` in the queue of ended tasks, as a stop of the
        task this runs in is; a ``None`` is never returned.

        Raises:
            queue.Empty: the timeout passed.
            RuntimeError: a task followed, run in place, started a coroutine
                on ``loop`` (a plain function that returned one), which this
                wait would block, as :meth:`add` refuses for one already async.
        """
        ended, put = self._ended, self._put
        task = current_task()
        watching = self._on_callers_loops
        between = functools.partial(end_those_of_closed_loops, watching) if watching else None
        wake = functools.partial(put, None)  # type: ignore[arg-type]  # a None wakes the wait, as CancellationPoint's does
        with CancellationPoint(task, put, None), BlockingWait(), _held_on_loop.listening(loop, wake):
            while True:
                if ended.empty() and _held_on_loop.run_one(loop):
                    for followed in watching:  # (the held ones are among them) run in place, one may
                        if followed._state < SUCCEEDED:  # have started a coroutine on this loop (add())
                            followed._refuse_to_block_a_loop()
                    continue
                deadline = self._deadline
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                handle = _interruptible.get(ended, remaining, between)
                if handle is not None:
                    return handle  # type: ignore[no-any-return]
                if task is not None:
                    task._raise_if_stopped()

    def _run_one_queued(self) -> bool:
        candidates = self._candidates
        assert candidates is not None
        while candidates:
            handle = candidates.popleft()()
            if handle is not None and self._run_inline(handle):
                return True
        return False


def _pending(ref: weakref.ref[AsyncHandle[Any]]) -> bool:
    handle = ref()
    return handle is not None and handle._state == PENDING


@overload
def gather(
    handles: Iterable[AsyncHandle[T]],
    on_error: Literal["raise", "skip"] = "raise",
    timeout: float | None = None,
    progress: ProgressOption = False,
) -> list[T]: ...
@overload
def gather(
    handles: Iterable[AsyncHandle[T]],
    on_error: Literal["none"],
    timeout: float | None = None,
    progress: ProgressOption = False,
) -> list[T | None]: ...
@overload
def gather(
    handles: Iterable[AsyncHandle[T]],
    on_error: OnError,
    timeout: float | None = None,
    progress: ProgressOption = False,
) -> list[T | None]: ...
def gather(
    handles: Iterable[AsyncHandle[T]],
    on_error: OnError = "raise",
    timeout: float | None = None,
    progress: ProgressOption = False,
) -> list[Any]:
    """Wait for every handle and return their results in submission order.

    Args:
        handles: the handles to collect; any mix of functions and backends.
        on_error: ``"raise"`` raises the first failure as soon as it happens and
            leaves the other tasks running (cancel them if you want); ``"skip"``
            leaves failed tasks out of the list; ``"none"`` puts ``None`` in
            their place. Timed-out and cancelled tasks count as failed.
        timeout: the longest to wait, in seconds, for all of them.
        progress: ``True`` for a progress bar (``tqdm.auto``), a dict of tqdm
            options for one, or a callable ``(done, total)`` called as each task
            ends (see :func:`imap`). The bar's total is the number of handles; a
            ``total`` in the options must be that number.

    Returns:
        The results in the order of ``handles``: ``list[T]``, or
        ``list[T | None]`` with ``on_error="none"`` (type checkers see which,
        from the literal).

    Duplicates keep their places. Ctrl-C while it waits cancels the tasks not
    yet ended (all at once, however many) and is raised again.

    Raises:
        TypeError: ``handles`` is not an iterable of handles, or ``progress``
            has the wrong type.
        ValueError: ``on_error`` or ``timeout`` is out of range, or a ``total``
            in ``progress`` is not the number of handles.
        ImportError: a progress bar is asked for and tqdm is not installed.
        TaskTimeoutError: ``timeout`` passed; the message says how many tasks were
            unfinished (they go on), or that all ended just as the wait gave up.
        RuntimeError: an unfinished task runs a coroutine and this thread's
            event loop is running: the wait would block that loop (await instead);
            or the task that gathers is among them (it would wait for its own end).
        Exception: with ``on_error="raise"``, the first task error, as itself.
    """
    items = None
    bar = None
    failed = None
    try:
        items = _as_handles(handles, "gather")
        check_on_error(on_error)
        timeout = check_wait_timeout(timeout)
        bar = open_progress(progress, len(items), "gather", GATHERED)
        completions = Completions.of(items, timeout, counted=items)
        try:
            completions.refuse_to_wait_for_all_and_itself()
            while completions.outstanding:
                handle = completions.next()
                if bar is not None:
                    bar.advance()
                if on_error == "raise" and handle._state != SUCCEEDED:
                    failed = handle
                    break
        finally:
            completions.stop_following(items)
    except KeyboardInterrupt:
        _cancel_after_interrupt(handles, items)
        raise
    finally:
        if bar is not None:
            bar.close()
    if failed is not None:  # raised here: a task's own KeyboardInterrupt is its failure, not Ctrl-C at this wait
        failed.get()  # raises the task's error, with its note
    return results_of(items, on_error)


def results_of(items: list[AsyncHandle[Any]], on_error: OnError) -> list[Any]:
    """The results of ``items``, all ended, as ``gather`` returns them: a failure left out or ``None``, as ``on_error`` says.

    The failures it leaves out, the caller asked it to: each counts as read,
    and is not logged as unread when its handle is collected (``_outcome_taken``).
    """
    if on_error != "raise":  # (with "raise", none failed)
        for handle in items:
            if handle._state != SUCCEEDED:
                handle._outcome_taken()
    if on_error == "skip":
        return [h._value for h in items if h._state == SUCCEEDED]
    return [h._value if h._state == SUCCEEDED else None for h in items]


def as_completed(
    handles: Iterable[AsyncHandle[T]], timeout: float | None = None
) -> Completed[T]:
    """Yield the handles as their tasks end, ended ones first.

    Iterate with ``for`` (blocking) or, in asyncio code, with ``async for``
    (the loop is never blocked; cancelling the consuming coroutine while it
    waits cancels the tasks not yet ended).

    Each distinct handle is yielded once, however often it is listed (as
    ``concurrent.futures.as_completed`` does). Ctrl-C while it waits for the
    next one cancels the tasks not yet ended.

    Args:
        handles: the handles to follow; any mix of functions and backends.
        timeout: the longest to wait, in seconds, for all of them, counted
            from the first ``next()`` (or ``anext()``), as
            ``concurrent.futures.as_completed`` counts it; ``None`` waits as
            long as it takes.

    Returns:
        An iterator of the handles, each as its task ends.

    Raises:
        TypeError: ``handles`` is not an iterable of handles, or ``timeout``
            is not a number of seconds or ``None``.
        ValueError: ``timeout`` is negative or NaN.
        TaskTimeoutError: ``timeout`` seconds passed before all ended.
        RuntimeError: an unfinished task runs a coroutine and this thread's
            event loop is running: the wait would block that loop (await instead);
            or the next handle could only be that of the task that iterates
            (it would wait for its own end).
    """
    pending = dict.fromkeys(_as_handles(handles, "as_completed"))
    return Completed(pending, check_wait_timeout(timeout))


class Completed(Iterator[AsyncHandle[T]], AsyncIterator[AsyncHandle[T]]):
    """What :func:`as_completed` returns: an iterator and an async iterator.

    Read it with ``for`` or ``next()``, or in asyncio code with ``async for``
    or ``await anext()``. ``async for`` and ``anext()`` read one iteration:
    ``anext()`` then ``async for`` reads on from there. ``aiter()`` of it is
    the async generator both read, as for :class:`~makeparallel._map.MapIterator`.
    ``next()`` and ``anext()`` in turn read two iterations, each yielding only
    the handles the other has not: every handle comes once, to whichever asks.

    One thread reads it at a time: a ``next()`` while another runs (on another
    thread) raises ``RuntimeError``, and takes nothing from that one.

    It follows the handles not yet yielded (to cancel them on Ctrl-C) and lets
    go of each one as it is yielded, so a result the consumer dropped is freed
    while the iteration goes on (as ``concurrent.futures.as_completed`` does
    since bpo-27144).
    """

    def __init__(self, pending: dict[AsyncHandle[T], None], timeout: float | None) -> None:
        self._pending = pending
        self._timeout = timeout
        self._iterator: Iterator[AsyncHandle[T]] | None = None
        # What `async for` and anext() read, made at the first of them (their own, as aiter()
        # gave it, had no __anext__ on this object: `await anext(mp.as_completed(...))` was a TypeError).
        self._async_iterator: AsyncIterator[AsyncHandle[T]] | None = None
        self._closer: Any = None  # the _async_collect.Closer of the async generator, made with it
        # Held by the next() that makes the generator: two threads' first next() at once each
        # found none and made one, and read on at once, neither told it was not for two.
        self._starting = threading.Lock()

    def __next__(self) -> AsyncHandle[T]:
        """The next handle to end.

        Raises:
            StopIteration: every handle was yielded.
            TaskTimeoutError: the ``timeout`` of :func:`as_completed` passed.
            RuntimeError: another ``next()`` on it runs now (on another
                thread): read it from one thread at a time (see
                :func:`read_elsewhere`).
        """
        iterator = self._iterator
        if iterator is None:
            iterator = self._start()
        try:
            return next(iterator)
        except ValueError:
            if iterator.gi_running:  # type: ignore[attr-defined]  # "generator already executing"
                raise read_elsewhere("as_completed()") from None
            raise

    def _start(self) -> Iterator[AsyncHandle[T]]:
        """The generator ``next()`` reads, made at the first ``next()``.

        Raises:
            RuntimeError: another thread's first ``next()`` makes it at this moment.
        """
        with reading_alone(self._starting, "as_completed()"):
            if self._iterator is None:
                self._iterator = _yield_completed(self._pending, self._timeout)
            return self._iterator

    def __aiter__(self) -> AsyncIterator[AsyncHandle[T]]:  # noqa: PYI034  # (not self: see MapIterator)
        """The async generator ``async for`` reads, which ``anext()`` on this object reads too; one per call."""
        return self._async_started()

    def __anext__(self) -> Awaitable[AsyncHandle[T]]:
        """The next handle to end, awaited (``await anext(it)``); ``StopAsyncIteration`` once all were.

        Raises:
            TaskTimeoutError: the ``timeout`` of :func:`as_completed` passed.
        """
        iterator = self._async_iterator
        if iterator is None:
            iterator = self._async_started()
        return iterator.__anext__()  # the generator's own awaitable: no frame of ours per handle

    async def aclose(self) -> None:
        """Stop following the handles (they go on), awaited; every ``anext()`` after it raises ``StopAsyncIteration``.

        What ``aiter()`` of it gave, an async generator, had it. Awaited as
        another coroutine waits in ``anext()`` (the generator runs), it ends
        that wait: that ``anext()`` raises ``StopAsyncIteration``, and no handle
        ended meanwhile is yielded; ``anext()`` and ``async for`` read an
        ended generator from then on, even before that coroutine resumes. (An
        async generator's own ``aclose()`` raised "asynchronous generator is
        already running" there.)
        """
        iterator = self._async_started()
        if getattr(iterator, "ag_running", False):
            self._closer.close()
            # That coroutine resumes only later: until then its generator runs, and raised
            # "asynchronous generator is already running" to an anext() right after this.
            from ._async_collect import nothing

            self._async_iterator = nothing()
            return
        await iterator.aclose()  # type: ignore[attr-defined]  # (an async generator: as_completed_async)

    def _async_started(self) -> AsyncIterator[AsyncHandle[T]]:
        """The async generator ``async for`` and ``anext()`` read, made at the first of them."""
        if self._async_iterator is None:
            # asyncio only for async callers
            from ._async_collect import Closer, as_completed_async

            self._closer = Closer()
            self._async_iterator = as_completed_async(self._pending, self._timeout, self._closer)
        return self._async_iterator


@contextlib.contextmanager
def reading_alone(starting: threading.Lock, made_by: str) -> Iterator[None]:
    """Hold ``starting`` while a first read makes the generator of an iterator of ``made_by``, alone.

    Raises:
        RuntimeError: another thread's first read holds it, making that
            generator at this moment (:func:`read_elsewhere`).
    """
    if not starting.acquire(blocking=False):  # (that thread reads it next: not for two)
        raise read_elsewhere(made_by)
    try:
        yield
    finally:
        starting.release()


def read_elsewhere(made_by: str) -> RuntimeError:
    """The error of a ``next()`` on an iterator that ``made_by`` returned, as another ``next()`` on it runs.

    Those iterators read a generator, which refuses a second reader while the
    first waits in it: the ``ValueError`` it raised, "generator already
    executing", named a generator the program never made, and not what to do.
    Nothing is lost: the generator was not entered, and the other reader
    goes on. Not made to serve several readers: a lock taken per ``next()``
    would cost every loop over an ``imap`` (it more than doubled the time of a
    no-op result), and a reader waiting on it would be bound by no timeout and
    miss the first reader's error (docs/architecture.md).
    """
    return RuntimeError(
        f"this iterator of {made_by} is being read by another next() call at this moment (on another "
        "thread, or from a progress callback): read it from one thread at a time. To share the work among "
        "threads, have one thread read it and hand each result to the others through a queue.Queue"
    )


class TakenElsewhere(Exception):
    """A handle the other reader of the same :class:`Completed` yielded already (see :func:`taken`)."""


def taken(pending: dict[AsyncHandle[T], None], handle: AsyncHandle[T]) -> AsyncHandle[T]:
    """``handle``, no longer pending: returned straight into a ``yield``, so no frame keeps it.

    Raises:
        TakenElsewhere: ``handle`` is no longer pending. One ``Completed``
            has a reader for ``for`` and one for ``async for`` (``next()``
            and ``anext()`` on it mixed), each following the handles pending
            as it began: the other yielded this one, which its reader skips.
            Let through, it was a ``KeyError`` naming the handle.
    """
    try:
        del pending[handle]
    except KeyError:
        raise TakenElsewhere from None
    return handle


def _yield_completed(pending: dict[AsyncHandle[T], None], timeout: float | None) -> Iterator[AsyncHandle[T]]:
    try:
        completions = Completions.of(list(pending), timeout, counted=pending)
        try:
            while completions.outstanding:
                try:  # (no cost from Python 3.11 on) only taken() raises it: nothing thrown in at the yield is one
                    yield taken(pending, completions.next())
                except TakenElsewhere:
                    continue
        finally:  # also when the consumer leaves the loop early
            completions.stop_following(pending)
    except KeyboardInterrupt:  # raised while waiting here, not in the consumer's loop body
        cancel_and_stop(list(pending))
        raise


# Types, not the strings this module's annotations are: typing.NamedTuple compiles
# each string into a ForwardRef, about a millisecond of a program's first wait or map.
DoneAndNotDone = NamedTuple("DoneAndNotDone", [("done", set[AsyncHandle[Any]]), ("not_done", set[AsyncHandle[Any]])])
DoneAndNotDone.__doc__ = """What :func:`wait` returns, as ``concurrent.futures.wait`` does."""


def wait(
    handles: Iterable[AsyncHandle[T]],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDone:
    """Wait until all, the first, or the first failing of the handles end.

    Args:
        handles: the handles to wait for.
        timeout: the longest to wait, in seconds; on expiry it returns what is
            done so far (it does not raise), as ``concurrent.futures.wait``.
        return_when: ``ALL_COMPLETED``, ``FIRST_COMPLETED`` or ``FIRST_EXCEPTION``
            (the ``concurrent.futures`` constants, re-exported here).

    Returns:
        ``(done, not_done)``, two sets of handles.

    Raises:
        TypeError: ``handles`` is not an iterable of handles.
        ValueError: ``timeout`` or ``return_when`` is not valid.
        RuntimeError: an unfinished task runs a coroutine and this thread's
            event loop is running: the wait would block that loop (await instead);
            or the task that waits is among them and nothing but its own end
            could end the wait (``ALL_COMPLETED``, or only its own handle left).

    Ctrl-C while it waits cancels the tasks not yet ended and is raised again.
    """
    items = list(dict.fromkeys(_as_handles(handles, "wait")))
    timeout = check_wait_timeout(timeout)
    if return_when not in _RETURN_WHEN:
        raise ValueError(
            "return_when must be FIRST_COMPLETED, FIRST_EXCEPTION or ALL_COMPLETED, "
            f"got {return_when!r}"
        )
    try:
        completions = Completions.of(items, timeout)
        try:
            if return_when == ALL_COMPLETED:
                completions.refuse_to_wait_for_all_and_itself()
            while completions.outstanding:
                handle = completions.next()
                if return_when == FIRST_COMPLETED:
                    break
                if return_when == FIRST_EXCEPTION and handle._state != SUCCEEDED:
                    break
        finally:
            completions.stop_following(items)
    except TaskTimeoutError:
        if not completions.timed_out:  # the task this wait runs in timed out
            raise
    except KeyboardInterrupt:
        cancel_and_stop(items)
        raise
    done = {h for h in items if h.done()}
    return DoneAndNotDone(done, set(items) - done)
