"""The processes a worker's tasks started, and theirs: stopped with the worker when the pool stops it.

At a task's timeout, a forced cancel or a shutdown the pool stops the worker
with ``SIGTERM``, which ends it as the default action would (``_process_worker``).
What its task had started was left running, re-parented to init: the program it
waited for (``subprocess.run(["ffmpeg", ...])``) ran on after the timeout, and
the workers of a fork-based ``multiprocessing.Pool`` waited for work for good,
outliving the program. loky ends a worker's process tree the same way.

The tree is read from ``/proc`` (Linux): every process's parent, in one pass,
as ``pgrep -P`` would, without starting a program. Elsewhere there is no tree
to read, and nothing is stopped.
"""

from __future__ import annotations

import os

# typing.TYPE_CHECKING without importing typing: a worker imports this before its first task.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:
    import _signal as signal  # signal's functions without its enums (``_template``)

__all__ = ["descendants", "stop_descendants"]


def descendants(pid: int) -> list[int]:
    """The pids of the processes below ``pid``: its children, theirs, and so on; ``[]`` without ``/proc``."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # not Linux
        return []
    children: dict[int, list[int]] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                stat = file.read()
            # "pid (comm) state ppid ...": the name may hold spaces and parentheses.
            parent = int(stat[stat.rindex(b")") + 2 :].split(maxsplit=2)[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    below = children.get(pid, [])
    while below:
        found += below
        below = [grandchild for child in below for grandchild in children.get(child, [])]
    return found


def stop_descendants() -> None:
    """Send ``SIGTERM`` to every process below this one; one that ignores it, or ended meanwhile, is left."""
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:  # ended, or not ours to signal (a set-user-id program)
            pass
