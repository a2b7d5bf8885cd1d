"""A forked child ends the tasks its parent had not finished: failed, at once, saying where they run.

``os.fork()`` (a web server forking workers from a preloaded app,
``multiprocessing`` with ``fork``) copies every handle into the child, and none
of the threads, worker processes or pipes that would end them. In the child,
``get()`` on a running task waited for good, and on a queued one ran the task
a second time, there, finding it still queued. So the child ends each of them
with a ``TaskError`` that names the process running it, the only one its
result reaches. The task that the forking thread itself runs goes on: its code
goes on in the child too.

Just before the fork, while the parent has unfinished tasks, the parent lists
them from where they wait: backends' queues and workers, the retries' deadline
heap, the admission limiters. Not a scan of the heap for handles (the
garbage collector's list of objects): that took 130 ms in a child of a
process of a million objects, and wrote to each of them, which made the child
copy every page that a forking server shares with its workers. A task
submitted between that list and the fork itself is not in it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from . import _deadlines
from ._admission import held_tasks
from ._backends._base import _RetryDue, every_backend
from ._handle import AsyncHandle
from ._states import SUCCEEDED
from ._task_context import current_task

__all__: list[str] = []

_unfinished: list[AsyncHandle[Any]] = []  # listed in the parent just before a fork; the child ends its copies


def _list_unfinished_tasks() -> None:
    """In the parent, about to fork: list the unfinished tasks, if there are any."""
    global _unfinished
    backends = every_backend()
    if not any(backend._active for backend in backends):
        return
    found = [handle for backend in backends for handle in backend._unfinished_tasks()]
    for due in _deadlines.pending():  # a task's timeout, or a retry's entry, which holds its task
        if isinstance(due, (AsyncHandle, _RetryDue)):
            found.append(due.handle if isinstance(due, _RetryDue) else due)
    _unfinished = found + held_tasks()


def _forget_unfinished_tasks() -> None:
    """In the parent, once forked: keep none of them alive."""
    global _unfinished
    _unfinished = []


def _end_the_parents_tasks() -> None:
    """In the child: end every task the parent had unfinished, but the one this thread runs.

    Their callbacks run on a thread of their own: one may take a lock that a
    thread of the parent held as it forked, held for good here. The lock of a
    ``concurrent.futures.Future`` that follows a handle (an ``Executor``'s, as
    its callback's owner) is made anew first, as the standard library does for
    its own locks after a fork: the parent's thread that started the task may
    have held it.
    """
    global _unfinished
    found, _unfinished = _unfinished, []
    if not found:
        return
    parent, running_here = os.getppid(), current_task()
    announcements = []
    for handle in found:
        if handle._state < SUCCEEDED and handle is not running_here:
            callbacks = handle._end_in_forked_child(parent)
            if callbacks:
                for _, callback in callbacks:
                    future = getattr(callback, "__self__", None)
                    if isinstance(future, concurrent.futures.Future):
                        future._condition = threading.Condition()
                announcements.append((handle, callbacks))
    if announcements:
        announce = functools.partial(_run_callbacks, announcements)
        try:
            threading.Thread(target=announce, name="makeparallel-fork-callbacks", daemon=True).start()
        except RuntimeError:  # no thread left: here, then
            announce()


def _run_callbacks(announcements: list[tuple[AsyncHandle[Any], list[tuple[int, Callable[..., Any]]]]]) -> None:
    for handle, callbacks in announcements:
        handle._announce(callbacks, None)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_list_unfinished_tasks,
        after_in_parent=_forget_unfinished_tasks,
        after_in_child=_end_the_parents_tasks,
    )
