"""``await handle``: wait for a task without blocking the event loop; cancellation crosses.

``handle.__await__`` returns at once for a task that ended; otherwise it drives
:func:`wait_for_end`, and the handle gets one done-callback. When the task ends, on
whatever thread ends it, the callback puts the await's future in its loop's
queue and, if none is scheduled yet, schedules one drain with
``call_soon_threadsafe``. A drain wakes at most ``_BATCH`` awaits per turn of the
loop and schedules itself again for the rest, so ten thousand tasks ending at
once cost the loop many short turns instead of one long one: other coroutines
(a web server's requests) keep being served between them.

An ``async def`` task awaiting other tasks on a pool's worker thread (on that
worker's own loop) lends the worker's place while it awaits, as a blocking
``get()`` there does: its children, queued behind it, still run on a full pool.

Cancellation crosses: when the coroutine awaiting a handle is cancelled
(``asyncio.timeout``, ``wait_for``, a ``TaskGroup`` failing, a client going away),
the task is cancelled too: a queued task never runs, a running one is asked to
stop (``check_cancelled()`` raises in it), and one whose function or
``mp.configure(async_cancel="force")`` says so is stopped as
``handle.cancel(force=True)`` stops it. ``asyncio.shield(handle)`` keeps the task
running.

A task of the ``"sync"`` backend called from a coroutine runs on that caller's
loop, which alone can end it, and nothing tells of that loop's close. An await on
another loop (another thread's, or a new one on that loop's thread after the close)
looks at the task's loop as it begins, and then every ``SLICE`` seconds on a timer of
its own loop (:class:`LoopWatch`), as the blocking waits look between their slices:
a task whose loop closed ends with ``ShutdownError``. Every other await costs one
test of an empty dictionary.

A timeout that an await of this library raises (``gather_async``'s,
``as_completed``'s, an ``async for`` over ``imap``'s, the awaited task's own) is an
``asyncio.TimeoutError`` too, as ``except asyncio.TimeoutError`` around
``asyncio.wait_for`` expects: from Python 3.11 that is the builtin ``TimeoutError``,
which ``TaskTimeoutError`` subclasses; on 3.10 it is a class apart, and
:func:`asyncio_timeout` makes the error a subclass that has it among its bases.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from ._backends._base import WorkerPlace, pool_of_this_thread
from ._coroutines import check_the_loop_of, end_those_of_closed_loops, on_callers_loops
from ._handle import cancel_all
from ._interruptible import SLICE
from ._states import SUCCEEDED
from .errors import TaskTimeoutError

if TYPE_CHECKING:
    from ._handle import AsyncHandle

__all__ = [
    "LoopWatch",
    "asyncio_timeout",
    "cancel_crossing",
    "ended",
    "lend_place_until",
    "on_its_loop",
    "on_other_loops",
    "running_loop_or_explain",
    "wait_for_end",
    "wake",
    "waker_for",
]

_BATCH = 256  # awaits woken per turn of the loop, at most

if sys.version_info >= (3, 11):  # asyncio.TimeoutError is TimeoutError, a base of TaskTimeoutError

    def asyncio_timeout(error: TaskTimeoutError) -> TaskTimeoutError:
        """``error``, which ``except asyncio.TimeoutError`` catches already."""
        return error

else:

    class AsyncioTaskTimeoutError(TaskTimeoutError, asyncio.TimeoutError):
        """A ``TaskTimeoutError`` raised by an await, on Python 3.10: an ``asyncio.TimeoutError`` too.

        Defined here, where asyncio is loaded, so that ``import makeparallel``
        does not load it for ``errors``. Pickled by reference to this module.
        """

    def asyncio_timeout(error: TaskTimeoutError) -> TaskTimeoutError:
        """``error``, made an :class:`AsyncioTaskTimeoutError` in place; a subclass of the user's is left as it is.

        In place: the error keeps its notes, traceback and cause, and a task's
        error stays the one object that ``get()`` raises too.
        """
        if type(error) is TaskTimeoutError:
            error.__class__ = AsyncioTaskTimeoutError
        return error


class _LoopWaker:
    """Runs small callbacks on one event loop, in batches, on behalf of any thread.

    It also counts the awaits of its loop that lend their worker's place
    (:func:`lend_place_until`): a loop closed while they wait never ends them,
    and it gives their place back once it finds the loop closed (:meth:`loop_closed`).
    """

    __slots__ = ("_closed", "_ended", "_lent", "_lock", "_loop", "_place", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ended: deque[tuple[Callable[[Any], object], Any]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._place: _Place | None = None  # the worker's place its awaits lend, once one does
        self._lent = 0  # its awaits that lend it and have not ended (counted under the place's lock)
        self._closed = False  # its loop was found closed: its awaits lend nothing any more

    def deliver(self, fn: Callable[[Any], object], arg: Any, _: object = None) -> None:
        """Call ``fn(arg)`` on the loop soon; a handle's done-callback, from any thread."""
        with self._lock:
            self._ended.append((fn, arg))
            # A drain scheduled on a loop that closed since went with it: try the loop again.
            if self._scheduled and not self._loop.is_closed():
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed, with these awaits abandoned on it
            # Nothing can wake them now: dropped, not kept. Kept, this waker (the thread's
            # until it runs another loop) held each abandoned await's asyncio task, its
            # coroutine and the handle, and asyncio's "Task was destroyed but it is
            # pending!" came whenever that next loop let them go, in some other code's time.
            with self._lock:
                self._ended.clear()
                self._scheduled = False
            self.loop_closed()

    def lend(self, pool: WorkerPlace, future: asyncio.Future[Any]) -> None:
        """Lend the place this thread holds in ``pool`` until ``future``, an await of this loop, is done (or the loop closed)."""
        place = self._place
        if place is None or place.pool is not pool:
            place = self._place = _place_of_this_thread(pool)
        with place.lock:
            if self._closed:
                return
            first = not place.awaits
            place.awaits += 1
            self._lent += 1
        if first:
            pool.worker_blocks()
        future.add_done_callback(self._give_back_one)

    def _give_back_one(self, _: object) -> None:
        """An await that lent the place ended (a done-callback, on the loop): the last one gives the place back."""
        place = self._place
        assert place is not None  # (set as it lent)
        with place.lock:
            if self._closed or not self._lent:  # given back with the loop (a close found meanwhile)
                return
            self._lent -= 1
            place.awaits -= 1
            last = not place.awaits
        if last:
            place.pool.worker_unblocks()

    def loop_closed(self) -> None:
        """The loop closed, found so by any thread: give back the place its awaits lent, which no end of theirs will.

        A loop closed as an ``await handle`` or ``asyncio.wait(handles)``
        waited never ran the callback that gave the place back: the pool
        counted its worker as lent for good, and ran one thread more than its
        size, while that thread's later awaits lent nothing.
        """
        place = self._place
        if place is None:
            self._closed = True
            return
        with place.lock:
            if self._closed:
                return
            self._closed = True
            lent, self._lent = self._lent, 0
            place.awaits -= lent
            last = lent and not place.awaits
        if last:
            place.pool.worker_unblocks()

    def _drain(self) -> None:
        ended = self._ended
        for _ in range(_BATCH):
            try:
                fn, arg = ended.popleft()
            except IndexError:
                break
            fn(arg)
        with self._lock:
            if not ended:
                self._scheduled = False
                return
        self._loop.call_soon(self._drain)  # the rest on the next turn: others run between


O = TypeVar("O")


class _OfThisThreadsLoop(threading.local):
    loop: Any = None
    made: Any = None


def _one_per_loop(make: Callable[[asyncio.AbstractEventLoop], O]) -> Callable[[asyncio.AbstractEventLoop], O]:
    """``make(loop)``, made once for the loop this thread runs and kept until it runs another (one at a time)."""
    kept = _OfThisThreadsLoop()

    def for_loop(loop: asyncio.AbstractEventLoop) -> O:
        if kept.loop is not loop:
            kept.loop = loop
            kept.made = make(loop)
        return kept.made  # type: ignore[no-any-return]

    return for_loop


class _OfThisThread(threading.local):
    waker: _LoopWaker | None = None
    place: _Place | None = None


_this_thread = _OfThisThread()


def waker_for(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    """The waker of ``loop``, the one this thread runs: made once, and kept until this thread runs another.

    The waker of the loop it ran before, found closed then, gives back the
    place its awaits lent (:meth:`_LoopWaker.loop_closed`): their tasks may
    never end, and nothing else would tell it.
    """
    kept = _this_thread.waker
    if kept is not None and kept._loop is loop:
        return kept
    if kept is not None and kept._loop.is_closed():
        kept.loop_closed()
    waker = _this_thread.waker = _LoopWaker(loop)
    return waker


class _Place:
    """The place this thread holds in a pool, lent while the awaits of its loops wait (:func:`lend_place_until`)."""

    __slots__ = ("awaits", "lock", "pool")

    def __init__(self, pool: WorkerPlace) -> None:
        self.pool = pool
        self.awaits = 0  # awaits of this thread's loops that lend it and have not ended
        self.lock = threading.Lock()  # a loop's close may be found on another thread


def _place_of_this_thread(pool: WorkerPlace) -> _Place:
    place = _this_thread.place
    if place is None or place.pool is not pool:
        place = _this_thread.place = _Place(pool)
    return place


def lend_place_until(future: asyncio.Future[Any]) -> None:
    """On a pool's worker thread, lend the worker's place until ``future`` is done.

    The loop running on a worker thread is the worker's own, running one
    task's coroutine: while that coroutine awaits other tasks the worker does
    nothing, and on a full pool the tasks it awaits would never start. The
    place is lent once however many awaits the coroutine has going at a time,
    and given back when the last one ends (its done-callbacks run on this
    thread), or once the loop is found closed with awaits still waiting
    (:meth:`_LoopWaker.loop_closed`).
    """
    pool = pool_of_this_thread()
    if pool is None or future.done():
        return
    waker_for(future.get_loop()).lend(pool, future)


class _Added(threading.local):
    """The handles one callback of asyncio's was added to on this thread, as ``asyncio.wait`` adds it to its handles.

    It adds the same callback to one handle after another, and the handle that
    refuses it (:class:`_OnItsLoop`) raises out of the wait with the callback
    left on those before it, which nothing removes: each lent the worker's place.
    Kept only while a task runs on its caller's loop (``on_callers_loops``), as
    one must for a refusal, and weakly: a wait abandoned on a closed loop is let
    go with its handles.
    """

    fn: weakref.ref[Callable[[Any], object]] | None = None
    handles: list[weakref.ref[AsyncHandle[Any]]]  # (set with fn)

    def adding(self, fn: Callable[[Any], object]) -> None:
        if self.fn is None or self.fn() is not fn:
            self.fn, self.handles = weakref.ref(fn), []

    def refused(self, fn: Callable[[Any], object]) -> None:
        """Take ``fn`` off the handles it was added to (in this step of the wait: none of it ran yet)."""
        handles, self.fn, self.handles = self.handles, None, []
        for each in handles:
            handle = each()
            if handle is not None:
                handle.remove_done_callback(fn)  # (an ended one's runs on the loop soon, and gives its place back)

    def ended(self, fn: Callable[[Any], object]) -> None:
        """One ``fn`` ran or was removed: the wait added it to all its handles by then."""
        if self.fn is not None and self.fn() is fn:
            self.fn, self.handles = None, []


_added = _Added()


class _OnItsLoop:
    """A done-callback of asyncio's own, called on the event loop of the thread that added it to a handle.

    ``asyncio.wait`` (Python 3.11+) takes handles for futures and adds its
    callback to each. asyncio calls a future's callbacks on its loop, and the
    callback is not thread-safe; ours run on the thread that ends the task,
    where it marked the wait's future done without waking the loop, which
    slept on. A loop closed meanwhile drops it, as the loop's waker drops awaits.

    A task whose coroutine runs on another loop is looked at as an await looks
    (:func:`on_other_loops`, :class:`LoopWatch`) until the callback ran or was
    removed: that loop closed, before or as the wait waits, ends the task, and
    the wait with it; unlooked at, the wait lasted for good.

    On a pool's worker thread the wait lends the worker's place, as an await
    does, until the callback ran or was removed (:meth:`removed`); a refusal
    (``RuntimeError``) takes the wait's callback off the handles it was added to
    before (:class:`_Added`), as the wait would on its way out.
    """

    __slots__ = ("_deliver", "_pending", "_watch", "on_its_loop_of")

    def __init__(self, fn: Callable[[Any], object], handle: AsyncHandle[Any], loop: asyncio.AbstractEventLoop) -> None:
        added = _added if on_callers_loops else None  # else none refuses it: one test of an empty dictionary
        if added is not None:
            added.adding(fn)
        try:
            elsewhere = on_other_loops((handle,), loop)  # first: it may raise, or end the task
        except BaseException:
            if added is not None:
                added.refused(fn)
            raise
        self.on_its_loop_of = fn  # what remove_done_callback looks for
        self._deliver = waker_for(loop).deliver
        self._watch = LoopWatch(loop, elsewhere) if elsewhere else None
        self._pending: asyncio.Future[None] = loop.create_future()
        lend_place_until(self._pending)
        if added is not None:
            added.handles.append(weakref.ref(handle))

    def __call__(self, handle: AsyncHandle[Any]) -> None:
        self._deliver(self._run, handle)

    def _run(self, handle: AsyncHandle[Any]) -> None:
        self.removed()
        self.on_its_loop_of(handle)

    def removed(self) -> None:
        """It ran, or was removed before it ran (on the loop's thread, by asyncio): nothing waits on it now."""
        if on_callers_loops:
            _added.ended(self.on_its_loop_of)
        wake(self._pending)
        if self._watch is not None:
            self._watch.stop()


def on_its_loop(fn: Callable[[Any], object], handle: AsyncHandle[Any]) -> Callable[[Any], object]:
    """``fn``, a done-callback of asyncio's for ``handle``, called on the loop running on this thread; ``fn`` itself where none runs.

    Raises:
        RuntimeError: the task's coroutine runs on a loop that is stopped, and
            that this thread ran: nothing can run it while this thread runs its
            own loop (as ``await handle`` raises).
    """
    loop = asyncio._get_running_loop()
    return fn if loop is None else _OnItsLoop(fn, handle, loop)


def running_loop_or_explain() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "awaiting a makeparallel handle needs a running asyncio event loop (asyncio, "
            "or anyio on its asyncio backend); trio is not supported: there, wait in a "
            "thread with `await trio.to_thread.run_sync(handle.get)`"
        ) from None


def wake(future: asyncio.Future[None]) -> None:
    """Mark ``future`` done, unless its waiter gave up already (a timeout, a cancel)."""
    if not future.done():
        future.set_result(None)


def wait_for_end(handle: AsyncHandle[Any]) -> Generator[Any, None, None]:
    """Suspend the awaiting coroutine until ``handle`` ended; cancelling it cancels the task.

    A plain generator rather than a coroutine, driven by ``handle.__await__``:
    ``asyncio.gather(*handles)`` wraps every handle in a task, and all those
    tasks take their first step in one turn of the loop, so that step must cost
    as little as it can.
    """
    try:
        if on_callers_loops and handle in on_callers_loops:  # its coroutine's loop may close as this waits
            yield from _ended_watching_its_loop(handle)
        else:
            yield from ended(handle).__await__()
    except asyncio.CancelledError:
        if not handle.done():
            handle.cancel(force=bool(getattr(handle._observer, "async_cancel_forced", False)))
        raise


def cancel_crossing(handles: list[AsyncHandle[Any]]) -> None:
    """Cancel the unfinished ``handles`` of a cancelled async collector, as a cancelled await would.

    Those whose function (or ``mp.configure``) says ``async_cancel="force"`` are
    stopped as ``handle.cancel(force=True)`` stops them; the rest are cancelled
    together, in one round of their backend's lock (``cancel_all``).
    """
    forced_by_function: dict[int, bool] = {}
    together: list[AsyncHandle[Any]] = []
    for handle in handles:
        if handle._state >= SUCCEEDED:
            continue
        observer = handle._observer
        forced = forced_by_function.get(id(observer))
        if forced is None:
            forced = forced_by_function[id(observer)] = bool(getattr(observer, "async_cancel_forced", False))
        if forced:
            handle.cancel(force=True)
        else:
            together.append(handle)
    cancel_all(together)


def ended(handle: AsyncHandle[Any]) -> asyncio.Future[None]:
    """A future of the running loop that is done once ``handle`` ended (nothing is cancelled with it)."""
    loop = running_loop_or_explain()
    future: asyncio.Future[None] = loop.create_future()
    handle._add_own_done_callback(functools.partial(waker_for(loop).deliver, wake, future))
    lend_place_until(future)
    return future


def on_other_loops(handles: Iterable[AsyncHandle[Any]], loop: asyncio.AbstractEventLoop) -> list[AsyncHandle[Any]]:
    """Before an await on ``loop``: those of ``handles`` whose coroutine runs on another loop, which may close as it waits.

    Each is looked at first, as a blocking wait looks (``check_the_loop_of``):
    one whose loop closed already ends here, and is left out. A task whose
    coroutine runs on ``loop`` itself is left out too: that loop cannot close
    while it runs the await.

    Raises:
        RuntimeError: the loop of one of them is open and stopped, and this
            thread ran it: nothing can run it while this thread runs ``loop``.
    """
    if not on_callers_loops:
        return []
    elsewhere = []
    for handle in handles:
        on = on_callers_loops.get(handle)
        if on is None or on.loop() is loop:
            continue
        check_the_loop_of(handle)
        if handle._state < SUCCEEDED:
            elsewhere.append(handle)
    return elsewhere


class LoopWatch:
    """While an await on ``loop`` waits, ends those of ``tasks`` whose coroutine's loop closed; looks every ``SLICE`` s.

    The looks are one timer of ``loop`` (``call_later``) for all its watches
    (:class:`_LoopLooks`): the await's own thread runs them, and nothing runs
    while nothing is watched. ``tasks`` is shrunk in place as its tasks end. An
    ended task wakes the await as its end always does (its done-callback).
    :meth:`stop` once the await ends, however it ends.
    """

    __slots__ = ("_looks", "tasks")

    def __init__(self, loop: asyncio.AbstractEventLoop, tasks: list[AsyncHandle[Any]]) -> None:
        self.tasks = tasks
        self._looks: _LoopLooks | None = _looks_for(loop)
        self._looks.add(self)

    def stop(self) -> None:
        """Look no more."""
        if self._looks is not None:
            self._looks.discard(self)
            self._looks = None


class _LoopLooks:
    """The one timer of a loop that looks at the tasks of its awaits' :class:`LoopWatch` es, every ``SLICE`` s.

    A timer for each await cost the loop a call for each, ten a second: 10,000
    handles awaited through ``asyncio.gather`` kept it busy for a third of its time.
    A look costs one test of each task watched; the timer is gone once nothing is.
    """

    __slots__ = ("_loop", "_timer", "_watches")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watches: dict[LoopWatch, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, watch: LoopWatch) -> None:
        self._watches[watch] = None
        if self._timer is None:
            self._timer = self._loop.call_later(SLICE, self._look)

    def discard(self, watch: LoopWatch) -> None:
        self._watches.pop(watch, None)
        if not self._watches and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _look(self) -> None:
        self._timer = None
        try:
            for watch in list(self._watches):  # (a task's end may stop a watch meanwhile)
                tasks = watch.tasks
                end_those_of_closed_loops(tasks)
                tasks[:] = [task for task in tasks if task in on_callers_loops]
                if not tasks:
                    self._watches.pop(watch, None)
        finally:
            if self._watches and self._timer is None:
                self._timer = self._loop.call_later(SLICE, self._look)


_looks_for = _one_per_loop(_LoopLooks)


def _ended_watching_its_loop(handle: AsyncHandle[Any]) -> Generator[Any, None, None]:
    """:func:`wait_for_end`'s wait for a task whose coroutine runs on its caller's loop: watched, where that is another."""
    loop = running_loop_or_explain()
    elsewhere = on_other_loops((handle,), loop)
    if handle._state >= SUCCEEDED:  # its loop closed: ended now
        return
    future = ended(handle)
    if not elsewhere:
        yield from future.__await__()
        return
    watch = LoopWatch(loop, elsewhere)
    try:
        yield from future.__await__()
    finally:
        watch.stop()
