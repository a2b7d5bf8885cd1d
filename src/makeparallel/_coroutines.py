"""Coroutines as tasks: each runs on an event loop owned by the thread that runs it.

A task whose function is ``async def``, or a plain function that returns a
coroutine (a ``functools.wraps`` wrapper, an object with ``async def __call__``, a
lambda), is run to completion by the worker that took it: every worker thread,
and the main thread of every worker process, keeps one event loop of its own,
created on first use, reused for the tasks after and closed when the thread
ends or, for a daemon worker still alive, at interpreter exit. A stopped task (cancelled,
timed out) cancels its coroutine on that loop. When the coroutine ends, the
asyncio tasks it left running are cancelled, as ``asyncio.run`` cancels them.

A thread whose own event loop is already running (a coroutine calls ``get()``,
which runs a queued task inline; the ``"sync"`` backend called from a
coroutine) cannot run a second loop: there the coroutine is started on the
running loop as an ``asyncio`` task, and the handle ends when it does. Waiting
for it there with ``get()`` would block the loop it needs, so the handle refuses
and says to ``await`` it instead. Only that loop can end it: closed first, the
task ends with ``ShutdownError`` when it is waited for (:func:`check_the_loop_of`).

``asyncio`` is imported only when a coroutine first shows up, so that
``import makeparallel`` stays light.
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from collections.abc import Callable, Coroutine, Iterable
from types import CoroutineType

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "LOOP_CLOSED",
    "attempt_cancels",
    "check_the_loop_of",
    "close_idle_loops",
    "end_those_of_closed_loops",
    "held_on",
    "is_coroutine",
    "on_callers_loops",
    "one_only_this_thread_can_end",
    "run_here",
    "run_to_end",
    "running_loop",
    "start_on_running_loop",
    "waiting_on",
]


class _OwnLoop:
    """One thread's event loop, closed when the thread ends (and its locals are dropped), or at exit.

    Its owner holds ``lock`` while a task runs on the loop; :func:`close_idle_loops`
    closes only a loop whose lock it gets at once.
    """

    __slots__ = ("__weakref__", "lock", "loop")

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.lock = threading.RLock()

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        # Not at interpreter shutdown (an error's traceback may keep it until then): the
        # modules close() needs may be torn down already, and the process ends anyway.
        # Nor while close_idle_loops() closes the loop: CPython runs this before it clears
        # the weak references, so the exit hook may have found this object through one as
        # its thread ended, and two closes at once raised from the second.
        if _finalizing() or not self.lock.acquire(blocking=False):
            return
        try:
            if not self.loop.is_closed() and not self.loop.is_running():
                self.loop.close()
        finally:
            self.lock.release()


_own = threading.local()
# Weak references in a plain set, copied in one C call at exit: a WeakSet iterates in Python,
# and a worker thread adding its loop meanwhile made that raise, out of the exit hook.
_every_own_loop: set[weakref.ref[_OwnLoop]] = set()

#: The cancel of the coroutine that each handle with a timeout and a retry policy runs here now. A
#: timeout that retries the task ends no handle, and the attempt's coroutine ran on to its end, for
#: nobody, holding its worker thread: the timeout calls it (``AsyncHandle._expire``).
attempt_cancels: weakref.WeakKeyDictionary[Any, Callable[[], None]] = weakref.WeakKeyDictionary()


class _OnCallersLoop:
    """A coroutine started on its caller's running loop (:func:`start_on_running_loop`), until it ends.

    Or, ``future`` ``None``: the task waits to retry, and only that loop can start
    its next attempt (:func:`waiting_on`); or it waits, held for its slots, to
    run on that loop's thread (:func:`held_on`), and ``fail`` ends it.

    It holds what it names weakly: a loop closed with the coroutine unfinished (or
    left unclosed, and collected) and its asyncio task are let go, as asyncio lets
    them go; the entry tells so (:meth:`closed`).
    """

    __slots__ = ("fail", "future", "loop", "started", "thread")

    def __init__(self, loop: Any, future: Any, started: float | None) -> None:
        self.loop = weakref.ref(loop)
        self.future = _no_future if future is None else weakref.ref(future)  # its asyncio task
        self.started = started  # the attempt's start, as the handle's own end of it gives it
        # The thread that ran the loop then: its object, never another's. Its ident was compared, and
        # the system gives an ended thread's ident to the next: a wait on that one, which never ran
        # the loop, was refused as if only it could run it.
        self.thread = threading.current_thread()
        self.fail: Callable[[], None] | None = None  # held for its slots (held_on): what ends it once the loop closed

    def closed(self) -> bool:
        """Whether the loop can never run the coroutine again: it closed, or was collected."""
        loop = self.loop()
        return loop is None or loop.is_closed()

    def stopped(self) -> bool:
        """Whether the loop is open and not running now."""
        loop = self.loop()
        return loop is not None and not loop.is_closed() and not loop.is_running()


def _no_future() -> None:
    return None


#: Why a task waiting to retry ends with its last error where its next attempt was its caller's loop's to start.
LOOP_CLOSED = "the event loop it was called from, which alone runs its coroutine, closed"

#: The handles whose coroutine runs on the loop of the code that called them (the ``"sync"``
#: backend called from a coroutine), or will as they retry. Only that loop can end it; closed
#: first, it never ends.
#: Held strongly, until the task ends or its loop is found closed: held weakly, a handle
#: nobody kept was forgotten with its loop, yet its task still counted as unfinished, and
#: every wait for all tasks (``wait_until_idle``, ``shutdown``, exit) waited out its timeout.
on_callers_loops: dict[Any, _OnCallersLoop] = {}


def is_coroutine(value: object) -> bool:
    """Whether ``value`` is a coroutine object (what calling an ``async def`` gives)."""
    return isinstance(value, CoroutineType)


def running_loop() -> Any:
    """The asyncio event loop running on this thread, or ``None``; never imports asyncio.

    While another thread imports asyncio for the first time, ``sys.modules``
    holds the module before it has its functions (``AttributeError``, which
    failed the submission or task asking). No loop runs anywhere before that
    import ends: ``None``.
    """
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio._get_running_loop()
    except AttributeError:  # asyncio half imported, on another thread
        return None


def run_here(coroutine: Coroutine[Any, Any, Any], task: Any) -> Any:
    """Run ``coroutine`` to its end on this thread's own loop; return its result.

    Args:
        coroutine: what the task's function returned.
        task: the task running on this thread (an ``AsyncHandle``, or a worker
            process's view of one); when it is stopped, the coroutine is cancelled.
            ``None`` where none is (a call in an executor's worker elsewhere):
            the coroutine runs to its end.

    Raises:
        TaskCancelledError: the coroutine was cancelled by something else than
            the task's own cancellation (whose outcome is dropped anyway).
        Exception: whatever the coroutine raised.
    """
    own = _own_loop()
    loop, lock = own.loop, own.lock
    del own  # a failed task's traceback holds this frame: not the _OwnLoop, which closes the loop as its thread ends
    try:
        return _run_on(loop, coroutine, task)
    finally:
        lock.release()


def _run_on(loop: Any, coroutine: Coroutine[Any, Any, Any], task: Any) -> Any:
    """:func:`run_here` on ``loop``, this thread's own."""
    import asyncio

    future = loop.create_task(coroutine)  # in the current context: the task's own
    cancel = _cancel_when_stopped(task, loop, future)
    observer = getattr(task, "_observer", None)  # a handle's; a worker process's task has none
    retried_at_timeout = observer is not None and observer.retry is not None and task._timeout is not None
    if retried_at_timeout:
        attempt_cancels[task] = cancel
    try:
        return loop.run_until_complete(future)
    except asyncio.CancelledError:
        from .errors import TaskCancelledError

        raise TaskCancelledError(f"the coroutine of {_named(task)} was cancelled") from None
    except BaseException:
        # KeyboardInterrupt and SystemExit leave the loop without run_until_complete
        # reading them from a task it did not make: read here, or asyncio logs the
        # task's error, which is the handle's, as never retrieved.
        if future.done() and not future.cancelled():
            future.exception()
        raise
    finally:
        if retried_at_timeout and attempt_cancels.get(task) is cancel:
            del attempt_cancels[task]
        _stop_cancelling(task, cancel)
        _cancel_left_behind(loop)


def _own_loop() -> _OwnLoop:
    """This thread's own event loop, made on first use (or once closed at exit), its lock held.

    Only the thread-local holds the ``_OwnLoop``: were the loop a local of
    ``run_here``, a failed task's traceback would hold it through that frame, and
    keep it past its thread's end, in the error's reference cycles. The garbage
    collector would then finalize the loop's sockets before the loop is closed.
    """
    own: _OwnLoop | None = getattr(_own, "loop", None)
    if own is not None:
        own.lock.acquire()
        if not own.loop.is_closed():
            return own
        own.lock.release()
    import asyncio

    own = _own.loop = _OwnLoop(asyncio.new_event_loop())
    own.lock.acquire()
    _every_own_loop.add(weakref.ref(own, _every_own_loop.discard))
    return own


def close_idle_loops() -> None:
    """Close every thread's own loop that no task runs on now; at interpreter exit.

    Worker threads are daemons: one still alive at exit keeps its loop to the
    interpreter's finalization, where closing it is no longer safe (``_OwnLoop``),
    and the loop and its sockets were finalized unclosed, each with a
    ``ResourceWarning``. A loop closed here is made anew if its thread runs
    another coroutine.
    """
    for ref in _every_own_loop.copy():
        own = ref()
        if own is None:
            continue
        if not own.lock.acquire(blocking=False):
            continue  # a task runs on it: its thread closes it, if it ends in time
        try:
            if not own.loop.is_closed() and not own.loop.is_running():
                own.loop.close()
        finally:
            own.lock.release()


def _cancel_left_behind(loop: Any) -> None:
    """Cancel the asyncio tasks a task's coroutine left running, and let them end, as ``asyncio.run`` does.

    The loop is reused for the worker's next task: what is left on it would
    otherwise run then, in that task's time, and an await left behind would
    keep its worker's place lent (``_await.lend_place_until``) and its task running.
    """
    import asyncio

    left = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not left:
        return
    for task in left:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))


def start_on_running_loop(
    loop: Any,
    coroutine: Coroutine[Any, Any, Any],
    task: Any,
    finish: Callable[[bool, Any], None],
) -> None:
    """Start ``coroutine`` on the loop running on this thread; ``finish(ok, value)`` at its end.

    Its steps run after the call returned, when the task is no longer current on
    this thread: each is run as ``task`` (:func:`_steps_as`), so that
    ``report_progress()``, ``check_cancelled()`` and ``get_current_task_id()``
    inside it are its own, not those of the caller's task, or of none.
    """
    future = loop.create_task(_as_task(task, coroutine))  # in the current context: the task's own
    cancel = _cancel_when_stopped(task, loop, future)
    retried_at_timeout = task._observer.retry is not None and task._timeout is not None
    if retried_at_timeout:  # as in _run_on: a timeout that retries the task ends no handle
        attempt_cancels[task] = cancel

    def ended(done: Any) -> None:
        _forget(task, here)
        if retried_at_timeout and attempt_cancels.get(task) is cancel:
            del attempt_cancels[task]
        _stop_cancelling(task, cancel)  # the next attempt, if any, has its own
        finish(*_outcome(done, task))

    here = on_callers_loops[task] = _OnCallersLoop(loop, future, task._started_at)
    future.add_done_callback(ended)


def waiting_on(loop: Any) -> _OnCallersLoop:
    """The entry of a task whose next attempts only ``loop``, running on this thread, can start.

    Put in :data:`on_callers_loops` while the task waits to retry (the ``"sync"``
    backend's ``_schedule_retry_locked``), its waits see the loop as they see a
    running attempt's: closed, the task ends with its last attempt's error;
    stopped, a wait on this thread is refused. Else it waited for good: its next
    attempt was posted to a loop that nothing would run again.
    """
    return _OnCallersLoop(loop, None, None)


def held_on(loop: Any, fail: Callable[[], None]) -> _OnCallersLoop:
    """The entry of a ``"sync"`` task held for its slots, to run on the thread of ``loop`` (running here) once admitted.

    Put in :data:`on_callers_loops` from the call until the task is claimed to
    run, or ends. Admitted as the loop was stopped, the task was posted to it;
    closed before it ran again, the loop dropped it, and the task stayed pending
    for good, its slots taken. Listed, its waits see the loop as they see a
    coroutine's: closed, ``fail()`` ends the task (as one admitted after the
    close ends); stopped, a wait on the thread that ran it is refused.
    """
    on = _OnCallersLoop(loop, None, None)
    on.fail = fail
    return on


def _outcome(done: Any, task: Any) -> tuple[bool, Any]:
    """``(ok, value)`` of the ended asyncio task ``done``, which ran ``task``'s coroutine."""
    if done.cancelled():
        from .errors import TaskCancelledError

        return False, TaskCancelledError(f"the coroutine of {_named(task)} was cancelled")
    if done.exception() is not None:
        return False, done.exception()
    return True, done.result()


def _forget(task: Any, on: _OnCallersLoop) -> None:
    if on_callers_loops.get(task) is on:
        on_callers_loops.pop(task, None)  # (another thread may have taken it meanwhile)


def check_the_loop_of(task: Any) -> None:
    """Before a blocking wait for ``task``: end it if its coroutine's loop closed; refuse a wait for good.

    A coroutine started on its caller's loop ends only as that loop runs it. A
    loop closed first (``run_until_complete``, then ``close``, without
    ``asyncio.run``'s cancelling) never will: the task ends with
    ``ShutdownError``, or with its coroutine's outcome where the coroutine ended
    and the close dropped the callback that was to say so. So does a task held
    for its slots to run on that loop's thread (:func:`held_on`).

    Raises:
        RuntimeError: the loop is open, not running, and this thread ran it: the
            wait would block the one thread that runs it, for good.
    """
    on = on_callers_loops.get(task)
    if on is None:
        return
    if on.closed():
        _end_off_a_closed_loop(task, on)
    elif on.stopped() and on.thread is threading.current_thread():
        if on.fail is not None:
            raise RuntimeError(
                f"task {task.get_task_id()} ({task.name}) was called over its concurrency limit from a "
                'coroutine (the "sync" backend) and runs, once admitted, on the thread of that event '
                "loop, which this thread ran and which is not running now: waiting here would wait for "
                "good, with nothing to run it. Run the loop until the task ends: "
                "`loop.run_until_complete(handle)`, or `await handle` in a coroutine that loop runs"
            )
        raise RuntimeError(
            f"task {task.get_task_id()} ({task.name}) runs its coroutine on the event loop it "
            'was called from (the "sync" backend called from a coroutine), which this thread '
            "ran and which is not running now: waiting here would wait for good, with nothing "
            "to run that loop. Run the loop until the task ends: `loop.run_until_complete(handle)`, "
            "or `await handle` in a coroutine that loop runs"
        )


def one_only_this_thread_can_end(backend: Any = None) -> Any:
    """A task (of ``backend``; ``None``: of any) whose coroutine's loop only this thread can run now; ``None`` if none.

    That loop runs here, or ran here and stopped: while this thread waits for
    the task, nothing runs the loop, and the task never ends. A wait for every
    task without a timeout (``shutdown``, ``wait_until_idle``,
    ``Executor.shutdown``) asks first, as :func:`check_the_loop_of` does for
    a wait for one task: it lasted for good. A task held for its slots
    (:func:`held_on`) counts only where its loop stopped: where it runs here,
    the wait runs the task in place once admitted (``Backend.wait_idle``).
    """
    here = threading.current_thread()
    running = running_loop()
    for task, on in list(on_callers_loops.items()):  # (a copy, as end_those_of_closed_loops makes)
        if backend is not None and task._backend is not backend:
            continue
        loop = on.loop()
        if loop is None or loop.is_closed():
            continue
        if (loop is running and on.fail is None) or (on.thread is here and not loop.is_running()):
            return task
    return None


def end_those_of_closed_loops(tasks: Iterable[Any] | None = None) -> None:
    """End each of ``tasks`` (``None``: every task) whose coroutine's loop closed before it ended.

    Before a wait for them, and between its slices (``_interruptible``'s
    ``between``): nothing tells of a loop's close, and a wait begun before it
    (the loop runs on another thread) lasted for good. Where it ends a task
    waited for, that task's end wakes the wait.
    """
    if tasks is None:
        # A copy, made in one C call: a loop's thread may take an entry meanwhile, and
        # iterating the dictionary itself would raise then.
        tasks = list(on_callers_loops)
    for task in tasks:
        on = on_callers_loops.get(task)
        if on is not None and on.closed():
            _end_off_a_closed_loop(task, on)


def _end_off_a_closed_loop(task: Any, on: _OnCallersLoop) -> None:
    _forget(task, on)
    if on.fail is not None:  # held for its slots (held_on): it never ran
        on.fail()
        return
    if on.future is _no_future:  # it waits to retry (waiting_on): no other attempt can start
        task._give_up_retrying(LOOP_CLOSED)
        return
    future = on.future()
    if future is not None and future.done():  # it ended; the close dropped the callback that was to say so
        task._finish_from_loop(on.started, *_outcome(future, task))
        return
    from .errors import ShutdownError

    task._finish_from_loop(
        on.started,
        False,
        ShutdownError(
            f"the coroutine of task {task.get_task_id()} ({task.name}) ran on the event loop it was "
            'called from (the "sync" backend called from a coroutine), and that loop closed before '
            "it ended: nothing can run it now. Run the loop until the task ends (await the handle "
            "there), or end it with asyncio.run, which cancels what is left"
        ),
    )


async def _as_task(task: Any, coroutine: Coroutine[Any, Any, Any]) -> Any:
    return await _steps_as(task, coroutine)


@types.coroutine
def _steps_as(task: Any, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive ``coroutine`` as ``yield from`` would, with ``task`` the current task during each of its steps."""
    from ._task_context import _local

    here = _local.__dict__
    step, arg = coroutine.send, None
    while True:
        outer = here.get("task")
        here["task"] = task
        try:
            yielded = step(arg)
        except StopIteration as end:
            return end.value
        finally:
            here["task"] = outer
        try:
            arg = yield yielded
            step = coroutine.send
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as error:  # thrown in by the loop (a cancel): the coroutine's to handle
            step, arg = coroutine.throw, error


def _cancel_when_stopped(task: Any, loop: Any, future: Any) -> Callable[[], None]:
    """Have ``future`` (the coroutine's asyncio task on ``loop``) cancelled once ``task`` is stopped; return that cancel."""

    def cancel(_: Any = None) -> None:  # (a done-callback's argument, the handle)
        if not future.done():
            try:
                loop.call_soon_threadsafe(future.cancel)
            except RuntimeError:  # the loop closed: nothing left to cancel
                pass

    if hasattr(task, "on_stop"):  # a worker process's task: its cancel message calls this, the one coroutine running
        task.on_stop = cancel
        if task._stop_error is not None:
            # Its cancel came before this (as the worker unpickled the call, importing a slow
            # module), and found no coroutine to cancel: it ran to its end, for nobody, holding
            # its worker. Cancelled here, on its loop's thread, it never starts, as a queued task.
            future.cancel()
    elif task is not None:  # a handle: it ends when stopped, and at the end
        task._add_own_done_callback(cancel)
    return cancel


def _stop_cancelling(task: Any, cancel: Callable[[], None]) -> None:
    """Take ``cancel`` (:func:`_cancel_when_stopped`'s) off ``task``'s done-callbacks: its coroutine ended.

    A map chunk's items each run a coroutine under the chunk's handle: each
    left a callback there until the chunk ended, holding its asyncio task, and
    every later item walked them all (``asyncio.all_tasks``): a chunk of
    10,000 items took 26 s.
    """
    forget = getattr(task, "_forget_done_callback", None)
    if forget is not None:
        forget(cancel)


def _named(task: Any) -> str:
    return "a call" if task is None else f"task {task.get_task_id()}"


def run_to_end(coroutine: Coroutine[Any, Any, Any], task: Any) -> Any:
    """``run_here``, from a thread whose own loop may be running: then on a new thread of its own.

    A map called where an event loop runs (a notebook cell) runs a queued chunk
    itself when the workers are busy, as for any function, and an executor may
    run a call on the thread that submitted it: a coroutine can run neither on
    the loop that the caller blocks, nor on a second one on this thread.
    """
    if running_loop() is None:
        return run_here(coroutine, task)
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, run_here(coroutine, task)))
        except BaseException as error:
            outcome.append((False, error))

    thread = threading.Thread(target=run, name="makeparallel-coroutine", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
