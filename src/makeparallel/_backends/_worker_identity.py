"""A worker's name and parent as ``multiprocessing`` and ``logging`` give them: ``makeparallel-process-N``, the program.

A worker is a program of its own to ``multiprocessing``: in a task,
``current_process().name`` said ``MainProcess`` and ``parent_process()`` was
None, and so a record's ``processName``, which ``logging`` reads from
``multiprocessing``, read as if the program had logged it. The pool names each
worker it starts, numbered in this program as its thread pool's threads are
(``makeparallel-thread-N``), and tells it, with the program's own name, in its
set-up message (:func:`take_on`).

A worker imports ``multiprocessing`` (6 ms and more) only when a task, or a module
it imports, does: it is renamed as ``multiprocessing.process`` is imported
(:func:`name_in`, run by ``_process_worker``'s ``sys.meta_path`` entry), and
until then a record takes the worker's name from the record factory
``_worker_logging`` installs (:func:`worker_name`).

Only the name and the parent change: the process object stays
``multiprocessing``'s main process, not a daemon, so that a task may start
processes of its own (a ``Pool``), which a ``Pool``'s daemonic worker may not;
its children name it as their parent.
"""

from __future__ import annotations

import os
import sys

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["name_for_worker", "name_in", "process_name", "take_on", "worker_name"]

_name: str | None = None  # this worker's, once its set-up came; None in the program, or before
_parent_name = "MainProcess"  # the program's, as multiprocessing names it there
_parent_pid = 0  # the program's process id, once the set-up came


def process_name() -> str:
    """This process's name as ``multiprocessing.current_process()`` gives it, without importing ``multiprocessing``.

    The name a worker started here gives its parent: ``MainProcess`` in a
    program, the worker's own name in a worker (one whose task starts a pool).
    """
    module = sys.modules.get("multiprocessing")
    current_process = getattr(module, "current_process", None)  # None while another thread imports it
    if current_process is None:
        return _name or "MainProcess"
    return str(current_process().name)


def name_for_worker(number: int) -> str:
    """The name of the ``number``-th worker started here: ``makeparallel-process-N``, or under this worker's.

    In a worker (a task's own process pool), its name then ``:N``
    (``makeparallel-process-1:2``), as ``multiprocessing`` names a child's
    children (``Process-1:2``): numbered from 1 in each worker, a nested pool's
    workers took the names of the program's, their own parent's among them, and
    their records, forwarded to the program, read as that worker's.
    """
    return f"makeparallel-process-{number}" if _name is None else f"{process_name()}:{number}"


def worker_name() -> str | None:
    """This worker's name while ``multiprocessing`` is not imported here (then it says itself); else None."""
    return None if "multiprocessing" in sys.modules else _name


def take_on(name: str, parent_name: str) -> None:
    """Name this worker ``name``, its parent (the program) ``parent_name``: before its initializer runs.

    Where ``multiprocessing`` is imported already (a ``sitecustomize`` that
    imports it), its process objects are named now, else once it is.
    """
    global _name, _parent_name, _parent_pid
    _name, _parent_name, _parent_pid = name, parent_name, os.getppid()
    module = sys.modules.get("multiprocessing.process")
    if module is not None:
        name_in(module)


def name_in(module: Any) -> None:
    """Give ``multiprocessing.process`` (``module``) this worker's name, and the program as its parent.

    Before the set-up names the worker, nothing: :func:`take_on` does it then.

    ``parent_process()`` is the program: its process id (``os.getppid()`` as
    the worker was set up, the program's in a forked worker too), its name,
    and its end watched through a pidfd, the sentinel ``is_alive()`` and
    ``join()`` wait on (a ``multiprocessing`` child's is a pipe its parent
    holds). Where the system gives none (before Linux 5.3, macOS),
    ``parent_process()`` stays None: a parent whose end cannot be watched
    would be alive for good. A process the task forks with ``os.fork`` keeps
    this name and parent, as one forked so in a ``multiprocessing`` child does.
    """
    if _name is None:
        return
    current = module.current_process()
    current.name = _name
    program = _parent_pid
    current._parent_pid = program  # shown by its repr(), as a multiprocessing child's is
    current._parent_name = _parent_name
    parent = getattr(module, "_ParentProcess", None)  # multiprocessing's own, since Python 3.8
    sentinel = _watch(program)
    if parent is not None and sentinel is not None:
        module._parent_process = parent(_parent_name, program, sentinel)


def _watch(pid: int) -> int | None:
    """A pidfd of process ``pid``, readable once it ends; None where the system has none."""
    from ._fd_numbers import standard_numbers_held

    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        with standard_numbers_held():  # a task that closed its standard streams writes there in vain, not here
            return int(pidfd_open(pid))  # close-on-exec: a program the task runs does not hold it
    except OSError:  # ENOSYS (a seccomp filter), ESRCH (the program died: this worker follows it)
        return None
