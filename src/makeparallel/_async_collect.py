"""Collecting handles from asyncio code: ``async for`` over ``as_completed``, ``gather_async``.

The same rules as the blocking collectors (``_collect``), without blocking the
loop: each handle's end is delivered to the loop through the batching waker of
``_await``, into an ``asyncio.Queue`` read in the order the tasks end. One
difference: cancelling the coroutine that collects (a timeout around it, a
failing ``TaskGroup``, a client gone) cancels every task not yet ended, as
cancelling an ``await handle`` cancels its task. ``asyncio`` is imported on
first use, so that ``import makeparallel`` stays light.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ._collect import OnError, _as_handles, check_on_error, collect_timeout_error
from ._handle import AsyncHandle, cancel_all
from ._states import SUCCEEDED
from ._validation import check_wait_timeout

if TYPE_CHECKING:
    import asyncio

__all__ = ["AsyncCompletions", "as_completed_async", "gather_async"]

T = TypeVar("T")

_BATCH = 256  # handles taken in a row, at most, before the loop gets a turn


class AsyncCompletions:
    """Handles in the order they end, awaited on the running loop.

    Args:
        timeout: seconds from now after which :meth:`next` raises ``TaskTimeoutError``.
    """

    def __init__(self, timeout: float | None) -> None:
        import asyncio

        from ._await import running_loop_or_explain, waker_for

        loop = running_loop_or_explain()
        self._ended: asyncio.Queue[AsyncHandle[Any]] = asyncio.Queue()
        self._deliver = waker_for(loop).deliver
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._timeout = timeout
        self.outstanding = 0
        self._total = 0
        self._without_yield = 0  # handles taken in a row without the loop getting a turn

    @classmethod
    async def of(cls, handles: list[AsyncHandle[Any]], timeout: float | None) -> AsyncCompletions:
        """Follow ``handles``, giving the loop a turn every ``_BATCH`` of them."""
        import asyncio

        completions = cls(timeout)
        for start in range(0, len(handles), _BATCH):
            if start:
                await asyncio.sleep(0)
            for handle in handles[start : start + _BATCH]:
                completions.add(handle)
        return completions

    def add(self, handle: AsyncHandle[Any]) -> None:
        """Follow one more handle."""
        self.outstanding += 1
        self._total += 1
        put = self._ended.put_nowait
        if handle.done():
            put(handle)  # no callback, no hop through the waker
            return
        deliver = self._deliver
        handle.add_done_callback(lambda ended: deliver(put, ended))

    async def next(self) -> AsyncHandle[Any]:
        """The next handle to end.

        Handles that ended already are taken without suspending; every
        ``_BATCH`` of them in a row, the loop gets a turn, so that collecting
        thousands of ended tasks never stalls the other coroutines.
        """
        import asyncio

        self._without_yield += 1
        if self._without_yield >= _BATCH:
            self._without_yield = 0
            await asyncio.sleep(0)
        if self._deadline is None:
            handle = await self._ended.get()
        else:
            try:
                handle = await asyncio.wait_for(self._ended.get(), max(0.0, self._deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise collect_timeout_error(self._timeout, self.outstanding, self._total) from None
        self.outstanding -= 1
        return handle


async def as_completed_async(items: list[AsyncHandle[T]], timeout: float | None) -> AsyncIterator[AsyncHandle[T]]:
    """What ``async for handle in mp.as_completed(...)`` iterates over."""
    import asyncio

    try:
        completions = await AsyncCompletions.of(items, timeout)
    except asyncio.CancelledError:
        cancel_all(items)
        raise
    while completions.outstanding:
        try:
            handle = await completions.next()
        except asyncio.CancelledError:
            cancel_all(items)
            raise
        yield handle


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
        TaskTimeoutError: ``timeout`` passed; the tasks go on.
        asyncio.CancelledError: the awaiting coroutine was cancelled; every task
            not yet ended is cancelled too.
        RuntimeError: no asyncio event loop runs (under trio, for one).
        Exception: with ``on_error="raise"``, the first task error, as itself.
    """
    import asyncio

    items = _as_handles(handles, "gather_async")
    check_on_error(on_error)
    check_wait_timeout(timeout)
    try:
        completions = await AsyncCompletions.of(items, timeout)
        while completions.outstanding:
            handle = await completions.next()
            if on_error == "raise" and handle._state != SUCCEEDED:
                handle.get()  # raises the task's error, with its note
    except asyncio.CancelledError:
        cancel_all(items)
        raise
    if on_error == "skip":
        return [h._value for h in items if h._state == SUCCEEDED]
    return [h._value if h._state == SUCCEEDED else None for h in items]
