"""What a running task can ask about itself: its id, its cancellation, its progress.

The task a thread is running is kept in a thread-local slot, set by the code that
runs the task and restored afterwards (a waiter that runs a queued task inline
nests one task inside another on the same thread). Outside any task these
functions are harmless, so a function written for ``@parallel`` can also be called
directly.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._handle import AsyncHandle

__all__ = ["check_cancelled", "current_task", "get_current_task_id", "report_progress"]

_local = threading.local()


def current_task() -> AsyncHandle[object] | None:
    """The handle of the task running on this thread, or ``None``."""
    return getattr(_local, "task", None)


def get_current_task_id() -> int | None:
    """The id of the task running on this thread, or ``None`` outside any task."""
    task = current_task()
    return None if task is None else task.get_task_id()


def check_cancelled() -> None:
    """A cooperative cancellation point: raise if this task should stop.

    Call it between units of work in a long task. It returns at once while the task
    may go on, and raises once the task was cancelled (``TaskCancelledError``) or
    ran past its timeout (``TaskTimeoutError``). Outside any task it does nothing.

    Raises:
        TaskCancelledError: the task was cancelled.
        TaskTimeoutError: the task ran past its timeout.
    """
    task = current_task()
    if task is not None:
        task._raise_if_stopped()


def report_progress(fraction: float, message: str | None = None) -> None:
    """Tell the task's handle how far the task has come.

    The value is readable with ``handle.get_progress()`` and reaches the handle's
    ``on_progress`` callbacks, which run on this thread. Outside any task the call
    only validates its arguments, so the same function can run directly.

    Args:
        fraction: progress between 0.0 and 1.0 inclusive.
        message: an optional short description of the current step.

    Raises:
        TypeError: ``fraction`` is not a real number or ``message`` not a string.
        ValueError: ``fraction`` is NaN, infinite or outside [0, 1].
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"progress must be a number between 0.0 and 1.0, got {fraction!r}")
    if not 0.0 <= fraction <= 1.0:  # also false for NaN
        raise ValueError(f"progress must be between 0.0 and 1.0, got {fraction!r}")
    if message is not None and not isinstance(message, str):
        raise TypeError(f"progress message must be a str or None, got {type(message).__name__}")
    task = current_task()
    if task is not None:
        task._report_progress(float(fraction), message)
