"""The ``"sync"`` backend: every task runs inline, in the thread that submits it.

Same API and same errors as the pools, with nothing concurrent: for debugging
(breakpoints and tracebacks stay in your thread) and for deterministic tests.
A retry's wait, too, is spent in the calling thread.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

from .._coroutines import running_loop
from .._states import FAILED, HELD, PENDING, RETRY_WAIT, RUNNING, UNCLAIMED
from ..errors import ShutdownError
from ._base import SHUT_DOWN, Backend

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["SyncBackend"]


class SyncBackend(Backend):
    """Runs each task to its end before ``submit`` returns."""

    name = "sync"
    holds_tasks = True

    def __init__(self) -> None:
        super().__init__()
        # The tasks whose attempts a submit() runs now, in its caller's thread. Not a
        # thread-local: a timeout's retry is decided on the deadline thread.
        self._inline: set[AsyncHandle[Any]] = set()
        # Held over a limit on a running event loop (hold()): the loop each runs on once admitted.
        self._held: weakref.WeakKeyDictionary[AsyncHandle[Any], Any] = weakref.WeakKeyDictionary()

    def submit(self, handle: AsyncHandle[Any]) -> None:
        with self._lock:
            self._refuse_if_closed_locked()
            # Counted and RUNNING together, after any Python call that a Ctrl-C
            # could interrupt: _holds() then sees it, and the submitter cancels it.
            handle._observer.task_submitted(handle)
            self._active += 1
            handle._state = RUNNING
            self._inline.add(handle)
        try:
            handle._run()
            self._retry_here(handle)
        finally:
            with self._lock:
                self._inline.discard(handle)

    def hold(self, handle: AsyncHandle[Any]) -> None:
        """Accept a call over a limit on a running event loop: it runs there once admitted (:meth:`release_held`).

        Waiting for the slot on that loop's thread waited for good where an
        ``async def`` task held it: its coroutine, started on the same loop,
        could not end while the loop was blocked.

        Raises:
            ShutdownError: the backend is closed.
        """
        loop = running_loop()
        with self._lock:
            self._refuse_if_closed_locked()
            handle._observer.task_submitted(handle)  # first: a Ctrl-C at its entry leaves nothing counted
            self._active += 1
            handle._on_worker = HELD
            self._held[handle] = loop

    def release_held(self, handle: AsyncHandle[Any]) -> None:
        """Run a held task, now admitted, on its submitter's loop: at once if this is that loop's thread."""
        with self._lock:
            loop = self._held.pop(handle, None)
        if loop is None or handle._state != PENDING:
            return  # cancelled meanwhile
        if running_loop() is loop:  # admitted as it was submitted: run it as submit() would
            self._run_held(handle)
            return
        try:
            loop.call_soon_threadsafe(self._run_held, handle)
        except RuntimeError:  # the loop closed: nothing is left to run it on
            self._fail_held(handle)

    def _run_held(self, handle: AsyncHandle[Any]) -> None:
        with self._lock:
            if handle._state != PENDING:
                return  # cancelled meanwhile
            handle._on_worker = UNCLAIMED
            handle._state = RUNNING
            self._inline.add(handle)
        try:
            handle._run()
            self._retry_here(handle)
        finally:
            with self._lock:
                self._inline.discard(handle)

    def _fail_held(self, handle: AsyncHandle[Any]) -> None:
        error = ShutdownError(
            f"task {handle._id} ({handle.name}) waited for a slot on the \"sync\" backend, which runs it on the "
            "event loop it was submitted from, and that loop closed first"
        )
        handle._ask_breaker(error)
        with self._lock:
            if handle._state != PENDING:
                return
            announce = handle._settle_locked(FAILED, error)
        handle._after_settle(announce)

    def _accept_refused(self, handle: AsyncHandle[Any], error: BaseException) -> None:
        with self._lock:
            self._inline.add(handle)
        try:
            super()._accept_refused(handle, error)
            self._retry_here(handle)
        finally:
            with self._lock:
                self._inline.discard(handle)

    def close(self, cancel_pending: bool) -> None:
        """Refuse new tasks; end the calls whose callers wait to retry them, as a pool's are, at once.

        Their waits are on no deadline heap that a shutdown empties: each caller
        slept out its wait, the shutdown waiting with it, then ran one more
        attempt after it.
        """
        super().close(cancel_pending)
        with self._lock:
            waiting = [handle for handle in self._inline if handle._state == RETRY_WAIT]
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
            handle._run()

    def _schedule_retry_locked(self, handle: AsyncHandle[Any], due: float) -> None:
        if handle not in self._inline:
            # It failed after submit() returned (a coroutine on a running loop): no
            # caller waits for it, so the deadline thread ends it (see _resume).
            super()._schedule_retry_locked(handle, due)

    def _holds(self, handle: AsyncHandle[Any]) -> bool:
        # Waiting to retry too: a Ctrl-C that stopped submit() between attempts
        # left nobody to run the next one.
        return handle._state == RUNNING or handle._state == RETRY_WAIT
