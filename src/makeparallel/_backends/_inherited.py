"""What a child process inherits from the process beyond its environment: the umask and the resource limits.

A worker started as a fresh interpreter, or forked by ``multiprocessing``,
inherits these from the pool's process as they are at its start. A worker
forked from the template inherits the template's instead, which are the pool's
process's of the moment the template started: a program that tightened its
umask or lowered a resource limit after its first process task found every
later worker ignoring it. So the pool records what the template inherits
(:func:`snapshot`), sends each forked worker what differs from it now
(:func:`changes_since`), and the worker takes that on (:func:`take`) before its
first task. Where nothing changed, nothing is sent and the worker does nothing.

Settings of a thread rather than of the process (CPU affinity, niceness and
scheduling policy on Linux) are not followed: a new process takes them from the
thread that starts it, and every worker is forked from the template, which took
them from the thread whose task started it (as ``multiprocessing.Pool``'s first
workers take those of the thread that made the pool). Following the main
thread's at each fork instead spreads a mistake: OpenMP with ``OMP_PROC_BIND``
pins the main thread to one CPU, and every later worker would run there.
"""

from __future__ import annotations

import os

# typing.TYPE_CHECKING without importing typing: the template imports this before its first fork.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["changes_since", "snapshot", "take"]

_LIMITS = "/proc/self/limits"  # the resource limits as text, compared without importing resource


def snapshot() -> tuple[int | None, bytes]:
    """What a process started now inherits: the umask, and the resource limits as text."""
    return _umask(), _read(_LIMITS)


def changes_since(inherited: tuple[int | None, bytes]) -> dict[str, Any] | None:
    """What differs in this process from ``inherited`` (a :func:`snapshot`); ``None`` if nothing.

    Costs two reads of ``/proc``, about 35 microseconds: once per worker
    started, never per task.
    """
    umask, limits = inherited
    changes: dict[str, Any] = {}
    now = _umask()
    if now != umask and now is not None:
        changes["umask"] = now
    if _read(_LIMITS) != limits:  # rare: only then is ``resource`` imported
        import resource

        changes["limits"] = {number: resource.getrlimit(number) for number in _limit_numbers(resource)}
    return changes or None


def take(changes: dict[str, Any]) -> None:
    """In a new worker: take on ``changes`` (from :func:`changes_since`).

    A limit the system refuses is skipped: a fresh interpreter would have
    inherited it, a fork must ask for it, and failing the worker would lose
    more than the limit.
    """
    if "umask" in changes:
        os.umask(changes["umask"])
    if "limits" in changes:
        import resource

        for number, limit in changes["limits"].items():
            if resource.getrlimit(number) != limit:
                try:
                    resource.setrlimit(number, limit)
                except (OSError, ValueError):
                    pass


def _umask() -> int | None:
    """The umask, read without changing it (``os.umask`` sets one: a file another thread made meanwhile would get it).

    ``None`` where ``/proc/self/status`` does not say (Linux before 4.7).
    """
    for line in _read("/proc/self/status").splitlines():
        if line.startswith(b"Umask:"):
            return int(line.split()[1], 8)
    return None


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""


def _limit_numbers(resource: Any) -> list[int]:
    """The resource limits this Python knows (``RLIMIT_*``)."""
    return sorted({getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")})
