"""The ``"sync"`` backend: every task runs inline, in the thread that submits it.

Same API and same errors as the pools, with nothing concurrent: for debugging
(breakpoints and tracebacks stay in your thread) and for deterministic tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._states import RUNNING
from ._base import Backend

if TYPE_CHECKING:
    from .._handle import AsyncHandle

__all__ = ["SyncBackend"]


class SyncBackend(Backend):
    """Runs each task to its end before ``submit`` returns."""

    name = "sync"

    def submit(self, handle: AsyncHandle[Any]) -> None:
        with self._lock:
            self._refuse_if_closed_locked()
            # Counted and RUNNING together, before any Python call that a Ctrl-C
            # could interrupt: _holds() then sees it, and the submitter cancels it.
            self._active += 1
            handle._state = RUNNING
            handle._observer.task_submitted(handle)
        handle._run()

    def _holds(self, handle: AsyncHandle[Any]) -> bool:
        return handle._state == RUNNING
