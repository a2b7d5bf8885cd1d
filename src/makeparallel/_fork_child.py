"""In a forked child, the tasks its parent had not finished end, failed, as soon as anything waits on them.

``os.fork()`` (a web server forking workers from a preloaded app,
``multiprocessing`` with ``fork``) copies every handle into the child, and none
of the threads, worker processes or pipes that would end them. In the child,
``get()`` on a running task waited for good, and on a queued one ran the task
a second time, there, finding it still queued. So a handle made before the
fork, unfinished, ends in the child the moment anything waits on it, asks
whether it is done, adds a callback or cancels it: failed with a ``TaskError``
naming the process running it, the only one its result reaches. Its callbacks
are the parent's, and do not run in the child. The task that the forking
thread itself runs goes on: its code goes on in the child too.

A handle knows it is the parent's by its task id, below the next id at the
fork: the fork itself costs nothing more, whatever the number of tasks in
flight, and no handle is written to, so the child copies no page it shares
with the parent. (Ending them all at the fork, from lists the parent took just
before it, cost a millisecond per thousand tasks in flight on every fork,
missed the tasks submitted meanwhile and those run inline by a waiting thread,
and ran the parent's callbacks in every child.)
"""

from __future__ import annotations

import os

from ._task_context import current_task

__all__ = ["boundary", "owner", "running_here"]

#: Task ids below it are of a process that forked this one (0: none did).
boundary = 0
#: The id of the task the forking thread ran, which goes on here.
running_here = -1
_forks: list[tuple[int, int]] = []  # (boundary, the forking process), oldest first: a fork of a fork has two


def owner(task_id: int) -> int:
    """The process a task of the parent's (an id below :data:`boundary`) runs in: the one that forked first since."""
    return next(pid for below, pid in _forks if task_id < below)


def _note_the_fork() -> None:
    """In the child: tasks from now on are its own."""
    global boundary, running_here
    from ._handle import _task_ids  # imported by then: a handle exists only once it is

    boundary = next(_task_ids)
    _forks.append((boundary, os.getppid()))
    task = current_task()
    running_here = -1 if task is None else task._id


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_the_fork)
