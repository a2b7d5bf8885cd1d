"""The items of ``test_map_limits``, in a module of their own.

A worker imports the module of each function and class it unpickles by name,
and a test module imports pytest: about 0.3 s for each new worker.

Items count one another through marker files, which threads and worker
processes alike see: ``running-<id>`` while an item runs, ``started-<id>`` once
it started, and ``most-<id>``, the most items it saw running at once.
"""

from __future__ import annotations

import os
from typing import Any

import makeparallel as mp
from pool_helpers import Flags, mark_then_wait, wait_until

WATCH = 0.1  # seconds each item watches for one more item running than the limit allows


def _count(flags: Flags, prefix: str) -> int:
    return sum(1 for name in os.listdir(flags.directory) if name.startswith(prefix))


def watched(job: tuple[Flags, int, Any]) -> Any:
    """Item ``job[2]`` of a map limited to ``job[1]`` items at once: it counts those running beside it.

    The first ``limit`` items to start wait (30 s at most) until ``limit`` run,
    which shows the map does run that many at once; each then watches for
    ``WATCH`` seconds for one more (which can only pass wrongly, never fail
    wrongly), and records the most it saw. The item ``"holder"`` then waits
    for flag ``holder-go``, still counted as running.
    """
    flags, limit, name = job
    running = flags.path(f"running-{name}")
    open(running, "w").close()
    most = 0

    def seen(at_least: int) -> bool:
        nonlocal most
        now = _count(flags, "running-")
        most = max(most, now)
        return now >= at_least

    try:
        flags.set(f"started-{name}")
        if _count(flags, "started-") <= limit:
            assert wait_until(lambda: seen(limit), 30), f"{limit} items never ran at once"
        wait_until(lambda: seen(limit + 1), WATCH)
        if name == "holder":
            assert flags.wait_for_release("holder-go")
    finally:
        flags.set(f"most-{name}", str(most))
        os.remove(running)
    return name


def most_at_once(flags: Flags) -> int:
    """The most items any item saw running at once."""
    names = [name for name in os.listdir(flags.directory) if name.startswith("most-")]
    return max(int(flags.read(name)) for name in names)


def mark_then_wait_for(job: tuple[Flags, str]) -> str:
    """:func:`pool_helpers.mark_then_wait` of one argument, to map: flag ``job[1]`` as it starts, then wait."""
    return mark_then_wait(*job)


class Watcher:
    """An object whose parallel method, limited to two at once, is mapped bound to it."""

    def __init__(self, flags: Flags) -> None:
        self.flags = flags

    @mp.parallel(max_concurrent=2)
    def watch(self, name: Any) -> Any:
        return watched((self.flags, 2, name))


class Waiter:
    """An object whose parallel method, limited to one at once, waits for its flag."""

    def __init__(self, flags: Flags) -> None:
        self.flags = flags

    @mp.parallel(max_concurrent=1)
    def wait(self, name: str) -> str:
        return mark_then_wait(self.flags, name)
