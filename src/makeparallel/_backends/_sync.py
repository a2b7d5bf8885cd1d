"""The ``"sync"`` backend: every task runs inline, in the thread that submits it.

Same API and same errors as the pools, with nothing concurrent: for debugging
(breakpoints and tracebacks stay in your thread) and for deterministic tests.
A retry's wait, too, is spent in the calling thread. Except for a coroutine
called on a running event loop: it runs on that loop, as an asyncio task that
ends after ``submit`` returned, so its retry waits on the deadline heap, as a
pool's does, leaving the loop free, and that loop runs its next attempt
(:meth:`SyncBackend._resume`).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from .. import _deadlines, _held_on_loop
from .._coroutines import (
    LOOP_CLOSED,
    held_on,
    on_callers_loops,
    running_loop,
    waiting_on,
)
from .._states import FAILED, HELD, PENDING, RETRY_WAIT, RUNNING, UNCLAIMED
from ..errors import ShutdownError
from ._base import COROUTINE_CANCELLED, SHUT_DOWN, Backend, counted_by_name

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["SyncBackend"]


class SyncBackend(Backend):
    """Runs each task to its end before ``submit`` returns."""

    name = "sync"
    holds_tasks = True
    #: A coroutine of this pool's is cancelled as its task is stopped (``_coroutines._cancel_when_stopped``).
    coroutine_stop_hint = COROUTINE_CANCELLED

    def __init__(self) -> None:
        super().__init__()
        # The tasks whose attempts a submit() runs now, in its caller's thread. Not a
        # thread-local: a timeout's retry is decided on the deadline thread.
        self._inline: set[AsyncHandle[Any]] = set()
        # Held over a limit on a running event loop (hold()), until admitted: the loop each runs on
        # then, by weak reference. Not its entry there (_coroutines.held_on, in on_callers_loops until
        # it is claimed or ends), whose fail names the task: a task that ended unadmitted, its entry
        # here left, was kept for good by its own value.
        self._held: weakref.WeakKeyDictionary[AsyncHandle[Any], weakref.ref[Any]] = weakref.WeakKeyDictionary()
        # Coroutine tasks called on a running event loop: the entry of the loop that starts
        # their next attempts (_coroutines.waiting_on), in on_callers_loops as they wait.
        self._loops: weakref.WeakKeyDictionary[AsyncHandle[Any], Any] = weakref.WeakKeyDictionary()
        self._failing: set[AsyncHandle[Any]] = set()  # held tasks being ended as their loop closed (_fail_held)

    def submit(self, handle: AsyncHandle[Any]) -> None:
        # Every call of a plain function comes here: the helpers shared with the held
        # and refused calls (_callers_loop, _take_locked, _run_first) are inlined.
        loop = running_loop() if handle._observer.is_async else None
        with self._lock:
            self._refuse_if_closed_locked()
            # Counted and RUNNING together, after any Python call that a Ctrl-C
            # could interrupt: _holds() then sees it, and the submitter cancels it.
            handle._observer.task_submitted(handle)
            self._active += 1
            handle._state = RUNNING
            if loop is None:
                self._inline.add(handle)
            else:
                self._loops[handle] = waiting_on(loop)
        if loop is not None:
            handle._run()  # its coroutine starts on the running loop
            return
        try:
            handle._run()
            if on_callers_loops and handle in on_callers_loops:
                self._to_its_loop(handle)  # a function learned only now to return coroutines
            else:
                self._retry_here(handle)
        finally:
            with self._lock:
                self._inline.discard(handle)

    def retries_here(self) -> AsyncHandle[Any] | None:
        """A task that waits to retry in its caller, this thread, which runs its next attempt once free; else ``None``.

        Its "retry" listeners are told there, before the wait: a wait there for
        every task could never see it end.
        """
        here = threading.get_ident()
        inline = tuple(self._inline)  # (a copy in one C call, without the lock: see Backend.retries_here)
        return next((handle for handle in inline if handle._state == RETRY_WAIT and handle._retry.caller == here), None)

    def queued_by_name(self) -> dict[str, int]:
        """Tasks not started, by name: those held for their slots, and the calls waiting to retry in their callers.

        Neither is in any queue, and none of their code runs: read as running
        otherwise. (The waits of the coroutines on their callers' loops are on
        the deadline heap, where the read finds them.)
        """
        with self._lock:
            return counted_by_name(
                handle
                for handle in [*self._held, *self._inline]
                if (handle._state == PENDING and handle._on_worker == HELD) or handle._state == RETRY_WAIT
            )

    def hold(self, handle: AsyncHandle[Any]) -> None:
        """Accept a call over a limit on a running event loop: it runs there once admitted (:meth:`release_held`).

        Waiting for the slot on that loop's thread waited for good where an
        ``async def`` task held it: its coroutine, started on the same loop,
        could not end while the loop was blocked. Only that loop's thread can
        run it: it is listed with the loop (``held_on``), so that the loop's
        close ends it, whoever waits.

        Raises:
            ShutdownError: the backend is closed.
        """
        held = held_on(running_loop(), functools.partial(self._fail_held, handle))
        with self._lock:
            self._refuse_if_closed_locked()
            handle._observer.task_submitted(handle)  # first: a Ctrl-C at its entry leaves nothing counted
            self._active += 1
            handle._on_worker = HELD
            self._held[handle] = held.loop
            on_callers_loops[handle] = held

    def release_held(self, handle: AsyncHandle[Any]) -> None:
        """Run a held task, now admitted, on its submitter's loop: at once if this is that loop's thread.

        Else on that thread as soon as it can (``_held_on_loop``): the loop
        runs it once free, or a blocking wait there runs it in place first.
        """
        with self._lock:
            on = self._held.pop(handle, None)
        if on is None or handle._state != PENDING:
            return  # cancelled meanwhile
        loop = on()
        if loop is None:  # collected unclosed: nothing is left to run it on
            self._fail_held(handle)
            return
        if running_loop() is loop:  # admitted as it was submitted: run it as submit() would
            self._run_held(handle)
            return
        try:
            _held_on_loop.admitted(loop, functools.partial(self._run_held, handle))
        except RuntimeError:  # the loop closed: nothing is left to run it on
            self._fail_held(handle)

    def _run_held(self, handle: AsyncHandle[Any]) -> None:
        """Claim an admitted held task and run it, on its loop's thread; nothing if it was claimed, or ended, meanwhile.

        Cut short by Ctrl-C once claimed and before its end is recorded, it
        would stay running for good, run by nobody: it is cancelled, as a
        submission cut short is (``withdraw``), and its slots are freed.
        """
        loop = self._callers_loop(handle)
        try:
            with self._lock:
                if handle._state != PENDING:
                    return  # cancelled meanwhile, or run already
                handle._on_worker = UNCLAIMED
                handle._state = RUNNING
                held = on_callers_loops.get(handle)
                if held is not None and held.fail is not None:  # it runs now: its loop's close ends it no more
                    del on_callers_loops[handle]
                inline = self._take_locked(handle, loop)
            self._run_first(handle, inline)
        except BaseException:
            if self._holds(handle) and handle._on_worker == UNCLAIMED:
                handle.cancel()
            raise

    def _fail_held(self, handle: AsyncHandle[Any]) -> None:
        """End a held task with ``ShutdownError``: the loop it was to run on closed before it ran.

        Two may find the loop closed at once, its admission and a wait for it
        (``held_on``'s ``fail``): the first claims the task, and its breaker,
        asked outside the lock, is asked once. Each asked it, and it counted
        one call's failure twice.
        """
        with self._lock:
            if handle._state != PENDING or handle in self._failing:
                return
            self._failing.add(handle)
        try:
            error = ShutdownError(
                f"task {handle._id} ({handle.name}) waited for a slot on the \"sync\" backend, which runs it on "
                "the event loop it was submitted from, and that loop closed first"
            )
            handle._ask_breaker(error)
            with self._lock:
                if handle._state != PENDING:
                    return
                announce = handle._settle_locked(FAILED, error)
        finally:
            with self._lock:
                self._failing.discard(handle)
        handle._after_settle(announce)

    def _accept_refused(self, handle: AsyncHandle[Any], error: BaseException) -> None:
        loop = self._callers_loop(handle)
        with self._lock:
            inline = self._take_locked(handle, loop)
        if not inline:  # its wait goes on the deadline heap, and the loop runs its next attempt
            super()._accept_refused(handle, error)
            return
        try:
            super()._accept_refused(handle, error)
            self._retry_here(handle)
        finally:
            with self._lock:
                self._inline.discard(handle)

    @staticmethod
    def _callers_loop(handle: AsyncHandle[Any]) -> Any:
        """The event loop running on this thread, where the task is known to be a coroutine's; else ``None``."""
        return running_loop() if handle._observer.is_async else None

    def _take_locked(self, handle: AsyncHandle[Any], loop: Any) -> bool:
        """Note who runs the task's next attempts; return whether it is its caller, here (under the lock).

        Its caller, inline, after each wait; or ``loop``, the running loop its
        coroutine runs on, which a wait in its thread would block.
        """
        if loop is None:
            self._inline.add(handle)
            return True
        self._loops[handle] = waiting_on(loop)
        return False

    def _run_first(self, handle: AsyncHandle[Any], inline: bool) -> None:
        """Run the task's first attempt here; inline, the attempts after it too."""
        if not inline:
            handle._run()  # its coroutine starts on the running loop
            return
        try:
            handle._run()
            if on_callers_loops and handle in on_callers_loops:
                self._to_its_loop(handle)  # a function learned only now to return coroutines
            else:
                self._retry_here(handle)
        finally:
            with self._lock:
                self._inline.discard(handle)

    def _to_its_loop(self, handle: AsyncHandle[Any]) -> None:
        """Have the loop running here start the next attempts of a task run inline whose coroutine it now runs.

        A function learned only now to return coroutines, on its first attempt
        or on a retry (the first raised before returning one, or its circuit
        breaker refused it): its coroutine fails after its caller went on, and
        no caller waits to run another attempt.
        """
        waiting = waiting_on(running_loop())
        with self._lock:
            self._loops[handle] = waiting
            self._inline.discard(handle)
            if handle._state == RETRY_WAIT:  # timed out meanwhile: its wait, left to the caller, goes on the heap
                self._schedule_retry_locked(handle, handle._retry.due)

    def close(self, cancel_pending: bool) -> None:
        """Refuse new tasks; end the calls that wait to retry, as a pool's are, at once.

        Those whose callers wait: their waits are on no deadline heap that a
        shutdown empties, and each caller slept out its wait, the shutdown
        waiting with it, then ran one more attempt after it. And the coroutines
        of a loop (an ``Executor("sync")`` shut down, which waits for them).
        With ``cancel_pending``, cancel the held tasks that have not run, as a
        pool cancels its queued and held ones: admitted, or still waiting for
        their slots, they ran later all the same.
        """
        super().close(cancel_pending)
        with self._lock:
            waiting = [handle for handle in (*self._inline, *self._loops) if handle._state == RETRY_WAIT]
        if cancel_pending and on_callers_loops:
            self._cancel_together(
                [
                    handle
                    for handle, on in list(on_callers_loops.items())  # (a copy: a loop's thread may take one meanwhile)
                    if on.fail is not None and handle._backend is self and handle._state == PENDING
                ]
            )
        for handle in waiting:
            handle._give_up_retrying(SHUT_DOWN)  # its end wakes its caller's wait

    def _retry_here(self, handle: AsyncHandle[Any]) -> None:
        """Run the task's next attempts in the caller, each after its wait, as its circuit breaker admits them."""
        while handle._state == RETRY_WAIT:  # inline means the caller waits, here
            if handle._block(max(0.0, handle._retry.due - time.perf_counter())):
                break  # cancelled during the wait (from another thread), or shut down: the caller goes on at once
            if self._closed:  # (closed as the wait ended: close() may have found it not yet waiting)
                handle._give_up_retrying(SHUT_DOWN)
                break
            if not handle._admit_retry():
                continue  # refused: it waits again, or ended
            with self._lock:
                if handle._state != RETRY_WAIT:
                    break  # cancelled meanwhile (by a callback, or another thread)
                handle._state = RUNNING
                handle._code_done = False  # as a pool's queued retry: cancel_with_timeout waits for this attempt
            handle._run()
            if on_callers_loops and handle in on_callers_loops:
                self._to_its_loop(handle)  # a function learned only now to return coroutines
                break

    def _schedule_retry_locked(self, handle: AsyncHandle[Any], due: float) -> None:
        if handle in self._inline:  # its caller waits, and runs the next attempt (_retry_here)
            if threading.current_thread() is not _deadlines._thread:  # (a timeout's retry is decided there)
                handle._retry.caller = threading.get_ident()  # settled in the caller: see retries_here
            return
        # A coroutine on its caller's running loop, which nobody waits for here: the
        # deadline thread resumes it when due, on that loop (_resume), whose close
        # ends it meanwhile (the waits for it look: _coroutines.waiting_on).
        waiting = self._loops.get(handle)
        if waiting is not None:
            on_callers_loops[handle] = waiting  # (in place of a timed-out attempt's, whose coroutine goes on)
        super()._schedule_retry_locked(handle, due)

    def _settled_locked(self, handle: AsyncHandle[Any], was_pending: bool) -> None:
        # Backend._settled_locked, inlined: every task's end comes here.
        self._active -= 1
        if self._active == 0 and self._idle_waiters:
            self._wake_idle_waiters_locked()
        if on_callers_loops:  # ended as it waited to retry on a loop, or held for its slots: it waits no more
            waiting = on_callers_loops.get(handle)
            if waiting is not None and (waiting.fail is not None or waiting is self._loops.get(handle)):
                del on_callers_loops[handle]

    def _resume(self, handle: AsyncHandle[Any]) -> None:
        """Have the loop that runs the task's coroutine start its next attempt (called by the deadline thread).

        Only that loop can: closed, the task ends with its last attempt's error.
        """
        with self._lock:
            waiting = self._loops.get(handle)
            closed = self._closed
        if closed:  # (close() ended it, unless it was admitted as close() looked)
            handle._give_up_retrying(SHUT_DOWN)
            return
        if waiting is None:  # (none runs on a loop: its caller ran it inline)
            super()._resume(handle)
            return
        loop = waiting.loop()
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._attempt_on_loop, handle)
                return
            except RuntimeError:  # it closed
                pass
        handle._give_up_retrying(LOOP_CLOSED)

    def _attempt_on_loop(self, handle: AsyncHandle[Any]) -> None:
        """Start the next attempt of a task that waited to retry, on its caller's loop (this thread, now)."""
        with self._lock:
            if handle._state != RETRY_WAIT:
                return  # cancelled meanwhile
            closed = self._closed
            if not closed:
                handle._state = RUNNING
                handle._code_done = False  # as a pool's queued retry: cancel_with_timeout waits for this attempt
        if closed:  # as a pool gives up a retry due after it closed
            handle._give_up_retrying(SHUT_DOWN)
            return
        handle._run()  # its coroutine starts on this loop, in place of the waiting entry

    def _holds(self, handle: AsyncHandle[Any]) -> bool:
        # Waiting to retry too: a Ctrl-C that stopped submit() between attempts
        # left nobody to run the next one.
        return handle._state == RUNNING or handle._state == RETRY_WAIT
