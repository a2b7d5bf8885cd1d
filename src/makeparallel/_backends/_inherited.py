"""What a child process inherits beyond its environment: the umask, resource limits, CPU affinity and niceness.

A worker started as a fresh interpreter, or forked by ``multiprocessing``,
inherits these from the pool's process as they are at its start. A worker
forked from the template inherits the template's instead, which are the pool's
process's of the moment the template started: a program that lowers its
priority (``os.nice``), pins itself to some CPUs (``os.sched_setaffinity``),
tightens its umask or lowers a resource limit after its first process task
would find every later worker ignoring it. So the pool records what the
template inherits (:func:`snapshot`, read by the thread that starts it, just
before), sends with each fork request what differs from it now
(:func:`changes_since`), and the worker takes that on (:func:`take`) before its
first task. Where nothing changed, nothing is sent and the worker does nothing.

Affinity and niceness belong to each thread on Linux. A worker takes those of
the process's main thread: what ``os.nice`` and ``os.sched_setaffinity(0, ...)``
change when a program calls them there, and what the threads it starts later
inherit. Resource limits and the umask belong to the process.
"""

from __future__ import annotations

import os

# typing.TYPE_CHECKING without importing typing: the template imports this before its first fork.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["changes_since", "snapshot", "take"]

_LIMITS = "/proc/self/limits"  # the resource limits as text, compared without importing resource


def snapshot() -> tuple[int | None, set[int], int, bytes]:
    """What a process started from the calling thread now inherits: umask, CPUs, niceness, and the limits as text."""
    return _umask(), os.sched_getaffinity(0), os.getpriority(os.PRIO_PROCESS, 0), _read(_LIMITS)


def changes_since(inherited: tuple[int | None, set[int], int, bytes]) -> dict[str, Any] | None:
    """What differs in this process (its main thread) from ``inherited`` (a :func:`snapshot`); ``None`` if nothing.

    Costs two reads of ``/proc`` and two system calls, about 20 microseconds:
    once per worker started, never per task.
    """
    umask, cpus, niceness, limits = inherited
    main_thread = os.getpid()  # the main thread's id is the process's
    changes: dict[str, Any] = {}
    now = _umask()
    if now != umask and now is not None:
        changes["umask"] = now
    now_cpus = os.sched_getaffinity(main_thread)
    if now_cpus != cpus:
        changes["cpus"] = now_cpus
    now_niceness = os.getpriority(os.PRIO_PROCESS, main_thread)
    if now_niceness != niceness:
        changes["niceness"] = now_niceness
    if _read(_LIMITS) != limits:  # rare: only then is ``resource`` imported
        import resource

        changes["limits"] = {number: resource.getrlimit(number) for number in _limit_numbers(resource)}
    return changes or None


def take(changes: dict[str, Any]) -> None:
    """In a new worker: take on ``changes`` (from :func:`changes_since`).

    A change the system refuses is skipped: a worker without the privilege to
    lower its niceness keeps the template's, as close as it can get. A fresh
    interpreter would have inherited it; a fork cannot, and failing the
    worker would lose more than the setting.
    """
    if "umask" in changes:
        os.umask(changes["umask"])
    if "cpus" in changes:
        try:
            os.sched_setaffinity(0, changes["cpus"])
        except OSError:
            pass
    if "niceness" in changes:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, changes["niceness"])
        except OSError:
            pass
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
