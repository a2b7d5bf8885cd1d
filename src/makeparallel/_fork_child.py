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
import sys
from typing import NoReturn

from . import _at_fork_in_child
from ._task_context import current_task

__all__ = ["boundary", "generation", "leave_forked_child", "owner", "running_here"]

#: Task ids below it are of a process that forked this one (0: none did).
boundary = 0
#: The id of the task the forking thread ran, which goes on here.
running_here = -1
#: Forks since this module was imported: a pool's worker thread that sees it change is in a child its task forked.
generation = 0
_forks: list[tuple[int, int]] = []  # (boundary, the forking process), oldest first: a fork of a fork has two


def owner(task_id: int) -> int:
    """The process a task of the parent's (an id below :data:`boundary`) runs in: the one that forked first since."""
    return next(pid for below, pid in _forks if task_id < below)


def leave_forked_child(what: str, error: BaseException | None, failed: bool) -> NoReturn:
    """End a process that a task forked on a pool's worker, once the task returned into the worker.

    The task's code went on in the child (it did not end it with
    ``os._exit()``), and returned into the worker's loop, which would run the
    parent's next tasks there, or, on a worker process, talk to the parent on
    the worker's own pipe. The process exits instead, with status 1 if the
    task raised (its traceback printed first), 0 if it returned.
    """
    if error is not None:
        import traceback

        traceback.print_exception(error)
    sys.stderr.write(
        f"makeparallel: {what} forked process {os.getpid()}, whose copy of the task returned into the "
        f"pool's worker; it exits here with status {int(failed)}. End a forked child with os._exit()\n"
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(failed))


def _note_the_fork() -> None:
    """In the child: tasks from now on are its own."""
    global boundary, generation, running_here
    generation += 1
    handles = sys.modules.get(f"{__package__}._handle")
    if handles is None:  # no task was ever made here
        return
    boundary = next(handles._task_ids)
    _forks.append((boundary, os.getppid()))
    task = current_task()
    running_here = -1 if task is None else task._id


_at_fork_in_child(_note_the_fork)
