"""How busy other processes keep this machine, in CPUs.

Two places need to tell "the work did not run in parallel" from "the machine
had no CPU to spare": the GIL watch, before it blames the GIL, and the demo,
before it explains a low speed-up. Both measure the machine's busy CPU time
(``psutil.cpu_times()``, all CPUs) over a window and subtract what this process
(and its worker processes) used; the rest is other processes' load.

``/proc/stat`` counts in clock ticks (10 ms per CPU), so a window shorter than
:data:`MIN_WINDOW` says nothing; for those, :func:`recent_load` reads the
kernel's one-minute load average instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

__all__ = ["BUSY_CPUS", "MIN_WINDOW", "LoadMeter", "recent_load"]

BUSY_CPUS = 0.5
"""Other processes using this many CPUs on average make a measurement unreliable."""
MIN_WINDOW = 0.1
"""Seconds: shorter windows are below the resolution of the CPU-time counters."""


def _this_process() -> Iterable[int | None]:
    return (None,)


class LoadMeter:
    """CPU time used by other processes between :meth:`start` and :meth:`stop`, in CPUs.

    Args:
        own_pids: the processes whose CPU time is ours (``None`` is this one),
            read at start and at stop (worker processes may change meanwhile).
        clock: seconds, for the window's length.
    """

    def __init__(
        self,
        own_pids: Callable[[], Iterable[int | None]] = _this_process,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._own_pids = own_pids
        self._clock = clock
        self._started = 0.0
        self._busy = 0.0
        self._ours = 0.0

    @staticmethod
    def _machine_busy() -> float:
        import psutil  # a runtime dependency, loaded only when load is measured

        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return sum(times) - idle

    def _our_cpu(self) -> float:
        import psutil

        total = 0.0
        for pid in self._own_pids():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:  # a worker that ended meanwhile
                continue
            total += times.user + times.system
        return total

    def start(self) -> None:
        self._ours = self._our_cpu()
        self._busy = self._machine_busy()
        self._started = self._clock()

    def stop(self) -> float | None:
        """Other processes' average CPU use since :meth:`start`.

        Returns:
            CPUs (1.5: one and a half CPUs kept busy on average), or ``None``
            when the window was shorter than :data:`MIN_WINDOW` or the counters
            did not move.
        """
        wall = self._clock() - self._started
        busy = self._machine_busy() - self._busy
        ours = self._our_cpu() - self._ours
        if wall < MIN_WINDOW or busy <= 0:
            return None
        return max(0.0, busy - ours) / wall


def recent_load(ours: float) -> float | None:
    """Other processes' load over the last minute, in CPUs: the load average less ``ours``.

    ``None`` where the platform has no load average (Windows).
    """
    try:
        one_minute = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None
    return max(0.0, one_minute - ours)
