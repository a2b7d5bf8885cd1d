"""Collecting handles from asyncio code: ``async for`` over ``as_completed``, ``gather_async``.

The same rules as the blocking collectors (``_collect``), without blocking the
loop, and waking it as seldom as they can: a done-callback runs on whatever
thread ends a task, and each wake-up of the loop from another thread costs it a
turn (a write to its self-pipe, a ``select``, a callback) and the thread that
ends the task a hand-over of the GIL.

- ``gather_async`` counts the tasks down on the threads that end them and wakes
  the loop once: when the last one ends, or the first one fails (with
  ``on_error="raise"``). Ten thousand tasks cost the loop one wake-up.
- ``as_completed`` (``async for``) keeps the ended handles in a deque that those
  threads append to, and wakes the loop only when the consumer waits for one:
  handles that end while the consumer is busy cost the loop nothing.

Following many handles gives the loop a turn every ``_BATCH`` of them, and so
does taking many ended handles in a row. A task whose coroutine runs on its
caller's loop, another than the collector's, is looked at as the collector
begins and on a timer while it waits (``_await.LoopWatch``): nothing tells of
that loop's close, which ends it. One difference from the blocking
collectors: cancelling the coroutine that collects (a timeout around it, a
failing ``TaskGroup``, a client gone) cancels every task not yet ended, as
cancelling an ``await handle`` cancels its task. ``asyncio`` is imported on
first use, so that ``import makeparallel`` stays light.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ._collect import (
    OnError,
    TakenElsewhere,
    _as_handles,
    check_on_error,
    collect_timeout_error,
    results_of,
    stop_following,
    taken,
    unfinished_of,
)
from ._coroutines import on_callers_loops
from ._handle import AsyncHandle
from ._states import SUCCEEDED
from ._validation import check_wait_timeout

if TYPE_CHECKING:
    import asyncio

    from ._await import LoopWatch

__all__ = ["AsyncCompletions", "Closer", "CompletionsClosed", "as_completed_async", "gather_async", "nothing"]

T = TypeVar("T")

_BATCH = 256  # handles followed, or taken, in a row at most before the loop gets a turn


async def _follow(handles: list[AsyncHandle[Any]], follow: Any) -> None:
    """Call ``follow(handle)`` for each handle, giving the loop a turn every ``_BATCH``."""
    import asyncio

    for start in range(0, len(handles), _BATCH):
        if start:
            await asyncio.sleep(0)
        for handle in handles[start : start + _BATCH]:
            follow(handle)


class CompletionsClosed(Exception):
    """What :meth:`AsyncCompletions.next` raises once :meth:`AsyncCompletions.close` was called."""


class AsyncCompletions:
    """Handles in the order they end, awaited on the running loop.

    Args:
        timeout: seconds from now after which :meth:`next` raises ``TaskTimeoutError``.
    """

    def __init__(self, timeout: float | None) -> None:
        from ._await import lend_place_until, running_loop_or_explain, wake, waker_for

        self._lend_place_until = lend_place_until
        self._loop = running_loop_or_explain()
        self._deliver = waker_for(self._loop).deliver
        self._wake = wake
        self._ended: deque[AsyncHandle[Any]] = deque()  # appended on any thread, taken on the loop's
        self._waiting: asyncio.Future[None] | None = None  # set while the consumer waits
        self._lock = threading.Lock()
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self.outstanding = 0
        self._total = 0
        self._without_yield = 0  # handles taken in a row without the loop getting a turn
        self._elsewhere: list[AsyncHandle[Any]] = []  # those whose coroutine runs on another loop (_await.on_other_loops)
        self.callback = self._on_end  # one object, so that stop_following can remove it
        self.closed = False

    def add(self, handle: AsyncHandle[Any]) -> None:
        """Follow one more handle.

        Raises:
            RuntimeError: its coroutine runs on the loop of the code that called
                it, which is stopped, and which this thread ran (``on_other_loops``).
        """
        if on_callers_loops and handle in on_callers_loops:
            from ._await import on_other_loops

            self._elsewhere += on_other_loops((handle,), self._loop)
        self.outstanding += 1
        self._total += 1
        if handle.done():
            self._ended.append(handle)  # on the loop: nobody waits meanwhile
        else:
            handle._add_own_done_callback(self.callback)

    def _on_end(self, handle: AsyncHandle[Any]) -> None:
        """A followed task ended (on the thread that ended it): wake the consumer if it waits."""
        with self._lock:
            self._ended.append(handle)
            waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._deliver(self._wake, waiting)

    def close(self) -> None:
        """Have :meth:`next`, awaited now or later, raise ``CompletionsClosed``; on the loop's thread.

        For another coroutine to stop the one that waits in :meth:`next`: a
        handle ended and not yet taken is not taken either.
        """
        with self._lock:
            self.closed = True
            waiting, self._waiting = self._waiting, None
        if waiting is not None:
            self._wake(waiting)

    async def next(self) -> AsyncHandle[Any]:
        """The next handle to end.

        Handles that ended already are taken without suspending; every
        ``_BATCH`` of them in a row, the loop gets a turn, so that collecting
        thousands of ended tasks never stalls the other coroutines.

        Raises:
            TaskTimeoutError: the ``timeout`` given at construction passed
                (an ``asyncio.TimeoutError`` too, on Python 3.10 as on 3.11+),
                and no task not yet taken had ended by then.
            CompletionsClosed: :meth:`close` was called, before or while it waited.
        """
        import asyncio

        self._without_yield += 1
        if self._without_yield >= _BATCH:
            self._without_yield = 0
            await asyncio.sleep(0)
        while True:
            with self._lock:
                if self.closed:
                    raise CompletionsClosed
                if self._ended:
                    handle = self._ended.popleft()
                    break
                self._waiting = waiting = self._loop.create_future()
            self._lend_place_until(waiting)
            self._without_yield = 0
            watch = self._watch_their_loops() if self._elsewhere else None
            try:
                if self._deadline is None:
                    await waiting
                else:
                    await asyncio.wait_for(waiting, max(0.0, self._deadline - time.monotonic()))
            except asyncio.TimeoutError:
                # A task may have ended in time, its wake-up not yet run by the loop: take it.
                with self._lock:
                    ended_in_time = bool(self._ended)
                if not ended_in_time:
                    from ._await import asyncio_timeout

                    timed_out = collect_timeout_error(self._timeout, self.outstanding, self._total)
                    raise asyncio_timeout(timed_out) from None
            finally:
                if watch is not None:
                    watch.stop()
                with self._lock:
                    if self._waiting is waiting:  # it gave up (a timeout, a cancel): nobody waits now
                        self._waiting = None
        self.outstanding -= 1
        return handle

    def _watch_their_loops(self) -> LoopWatch | None:
        """As the consumer begins to wait: look at the tasks whose coroutine runs on another loop while it waits.

        Each was looked at as it was added; looking at them all again at every
        wait cost the loop time quadratic in them, where they end one by one. The
        watch shrinks the list as they end. An ended one wakes the wait as it ends
        (its done-callback, on this thread).
        """
        from ._await import LoopWatch

        return LoopWatch(self._loop, self._elsewhere) if self._elsewhere else None


class _Countdown:
    """Counts tasks down on the threads that end them; one future of the loop says when to look.

    The future is done once every followed task ended or, with
    ``stop_at_failure``, once the first one did not succeed (``failed``).
    """

    def __init__(self, total: int, stop_at_failure: bool) -> None:
        from ._await import lend_place_until, running_loop_or_explain, wake, waker_for

        loop = running_loop_or_explain()
        self.future: asyncio.Future[None] = loop.create_future()
        self.left = total
        self.failed: AsyncHandle[Any] | None = None
        self._stop_at_failure = stop_at_failure
        self._lock = threading.Lock()
        self._deliver = waker_for(loop).deliver
        self._wake = wake
        self.callback = self.ended  # one object, so that stop_following can remove it
        if not total:
            self.future.set_result(None)
        lend_place_until(self.future)

    def drop(self) -> None:
        """Have the future done however the gather ended: a worker's place lent until then goes back.

        Cancelled while following, the future was not yet awaited. Not on a closed loop: a
        gather abandoned there ends as its coroutine is closed, when it is collected, and a
        cancel would raise there ("Event loop is closed"), from the garbage collector, to
        whatever code runs then; nothing is lent there any more anyway.
        """
        if not self.future.done() and not self.future.get_loop().is_closed():
            self.future.cancel()

    def follow(self, handle: AsyncHandle[Any]) -> None:
        if handle.done():
            self.ended(handle)
        else:
            handle._add_own_done_callback(self.callback)

    def finished(self) -> bool:
        """Whether the future is, or is about to be, done: every task ended, or the first failed."""
        with self._lock:
            return not self.left or self.failed is not None

    def ended(self, handle: AsyncHandle[Any]) -> None:
        """One followed task ended; on whatever thread ended it."""
        with self._lock:
            self.left -= 1
            first_failure = self._stop_at_failure and self.failed is None and handle._state != SUCCEEDED
            if first_failure:
                self.failed = handle
            if not first_failure and self.left:
                return
        self._deliver(self._wake, self.future)


class Closer:
    """Ends one ``async for`` over ``as_completed`` from another coroutine, as that one waits for the next handle.

    ``aclose()`` of an async generator that an ``anext()`` is awaiting raises
    "asynchronous generator is already running": nothing can be thrown into
    it then. ``close()`` has the wait end instead (the generator returns:
    the awaiting ``anext()`` raises ``StopAsyncIteration``), as
    ``MapIterator.aclose`` stops an imap in that case.
    """

    __slots__ = ("completions",)

    def __init__(self) -> None:
        self.completions: AsyncCompletions | None = None  # set as the generator starts, before it can wait

    def close(self) -> None:
        if self.completions is not None:
            self.completions.close()


async def nothing() -> AsyncIterator[Any]:
    """An async generator that yields nothing: what ``as_completed`` reads once closed as its own still ran (``Completed.aclose``)."""
    return
    yield


async def as_completed_async(
    pending: dict[AsyncHandle[T], None], timeout: float | None, closer: Closer | None = None
) -> AsyncIterator[AsyncHandle[T]]:
    """What ``async for handle in mp.as_completed(...)`` iterates over.

    ``pending`` holds the handles not yet yielded, each dropped as it is yielded.
    ``closer.close()`` ends it, from another coroutine, while it waits.
    """
    import asyncio

    try:
        completions = AsyncCompletions(timeout)
        if closer is not None:
            closer.completions = completions
        try:
            await _follow(list(pending), completions.add)
            while completions.outstanding:
                try:  # the `for` reader of the same as_completed yielded it (taken() says why)
                    yield taken(pending, await completions.next())
                except TakenElsewhere:
                    continue
        except CompletionsClosed:  # closed by another coroutine while this one waited (Closer)
            return
        finally:  # also when the consumer leaves the loop early
            stop_following(pending, completions.callback)
    except asyncio.CancelledError:
        from ._await import cancel_crossing

        cancel_crossing(list(pending))
        raise


@overload
async def gather_async(
    handles: Iterable[AsyncHandle[T]],
    on_error: Literal["raise", "skip"] = "raise",
    timeout: float | None = None,
) -> list[T]: ...
@overload
async def gather_async(
    handles: Iterable[AsyncHandle[T]],
    on_error: Literal["none"],
    timeout: float | None = None,
) -> list[T | None]: ...
@overload
async def gather_async(
    handles: Iterable[AsyncHandle[T]],
    on_error: OnError,
    timeout: float | None = None,
) -> list[T | None]: ...
async def gather_async(
    handles: Iterable[AsyncHandle[T]],
    on_error: OnError = "raise",
    timeout: float | None = None,
) -> list[Any]:
    """Await every handle and return their results in submission order.

    The asyncio peer of :func:`gather`, with the same options; the event loop is
    never blocked.

    Args:
        handles: the handles to collect; any mix of functions and backends.
        on_error: ``"raise"`` raises the first failure as soon as it happens and
            leaves the other tasks running; ``"skip"`` leaves failed tasks out;
            ``"none"`` puts ``None`` in their place.
        timeout: the longest to wait, in seconds, for all of them.

    Returns:
        The results, in the order of ``handles``: ``list[T]``, or
        ``list[T | None]`` with ``on_error="none"`` (type checkers see which,
        from the literal).

    Raises:
        TypeError: ``handles`` is not an iterable of handles, or ``timeout``
            is not a number of seconds or ``None``.
        ValueError: ``on_error`` is not one of its three values, or
            ``timeout`` is negative or NaN.
        TaskTimeoutError: ``timeout`` passed; the tasks go on. It is an
            ``asyncio.TimeoutError`` too, on Python 3.10 as on 3.11+.
        asyncio.CancelledError: the awaiting coroutine was cancelled; every task
            not yet ended is cancelled too.
        RuntimeError: no asyncio event loop runs (under trio, for one); or
            the coroutine of one of ``handles`` runs on the loop of the code
            that called it (the ``"sync"`` backend called from a coroutine),
            which this thread ran and which is not running now: nothing could
            run it while this thread runs the awaiting loop.
        Exception: with ``on_error="raise"``, the first task error, as itself;
            ``ShutdownError`` for a task whose coroutine ran on the loop of
            the code that called it, where that loop closed before it ended.
    """
    import asyncio

    items = _as_handles(handles, "gather_async")
    check_on_error(on_error)
    timeout = check_wait_timeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    countdown = _Countdown(len(items), stop_at_failure=on_error == "raise")
    watch = None
    try:
        if on_callers_loops:  # tasks whose coroutine's loop, another, may close as this waits: looked at
            from ._await import LoopWatch, on_other_loops

            loop = countdown.future.get_loop()
            elsewhere = on_other_loops(items, loop)
            await _follow(items, countdown.follow)
            if elsewhere:
                watch = LoopWatch(loop, elsewhere)
        else:
            await _follow(items, countdown.follow)
        if deadline is None:
            await countdown.future
        else:
            await asyncio.wait_for(countdown.future, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        # The countdown may have finished before the loop heard of it: the tasks
        # ended on time (all of them before a timeout of 0), only the wake-up did not.
        if not countdown.finished():
            from ._await import asyncio_timeout

            raise asyncio_timeout(collect_timeout_error(timeout, *unfinished_of(items))) from None
    except asyncio.CancelledError:
        from ._await import cancel_crossing

        cancel_crossing(items)
        raise
    finally:
        if watch is not None:
            watch.stop()
        stop_following(items, countdown.callback)
        countdown.drop()
    if countdown.failed is not None:
        countdown.failed._awaited_result()  # raises the task's error, with its note
    return results_of(items, on_error)
