"""The ``"sync"`` backend: every task runs inline, in the thread that submits it.

Same API and same errors as the pools, with nothing concurrent: for debugging
(breakpoints and tracebacks stay in your thread) and for deterministic tests.
A retry's wait, too, is spent in the calling thread.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .._states import RETRY_WAIT, RUNNING
from ._base import Backend

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["SyncBackend"]


class SyncBackend(Backend):
    """Runs each task to its end before ``submit`` returns."""

    name = "sync"

    def __init__(self) -> None:
        super().__init__()
        # The tasks whose attempts a submit() runs now, in its caller's thread. Not a
        # thread-local: a timeout's retry is decided on the deadline thread.
        self._inline: set[AsyncHandle[Any]] = set()

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

    def _accept_refused(self, handle: AsyncHandle[Any], error: BaseException) -> None:
        with self._lock:
            self._inline.add(handle)
        try:
            super()._accept_refused(handle, error)
            self._retry_here(handle)
        finally:
            with self._lock:
                self._inline.discard(handle)

    def _retry_here(self, handle: AsyncHandle[Any]) -> None:
        """Run the task's next attempts in the caller, each after its wait, as its circuit breaker admits them."""
        while handle._state == RETRY_WAIT:  # inline means the caller waits, here
            if handle._block(max(0.0, handle._retry.due - time.perf_counter())):
                break  # cancelled during the wait (from another thread): the caller goes on at once
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
