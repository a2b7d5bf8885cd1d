"""How busy other processes keep this machine, in CPUs.

Two places need to tell "the work did not run in parallel" from "the machine
had no CPU to spare": the GIL watch, before it blames the GIL, and the demo,
before it explains a low speed-up. Both measure the machine's busy CPU time
(``psutil.cpu_times()``, all CPUs) over a window and subtract what this process
(and its worker processes) used; the rest is other processes' load.

``/proc/stat`` counts in clock ticks (10 ms per CPU), so a window shorter than
:data:`MIN_WINDOW` says nothing; for those, :func:`recent_load` reads the
kernel's one-minute load average instead.

On Linux both are read from ``/proc`` (the files psutil reads there), and
psutil only where there is none (macOS). The GIL watch measures from a pool
thread, in the first tens of milliseconds of a program's first tasks: there
psutil's import (its ``namedtuple`` classes, each built by ``eval``) ran
while a Ctrl-C ended the main module, and CPython's ``eval`` cleared its
record that the program died of ``KeyboardInterrupt``. The program then
exited with status 1, not killed by ``SIGINT`` as a shell and ``make`` expect,
in most runs interrupted that early.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

__all__ = ["BUSY_CPUS", "MIN_WINDOW", "LoadMeter", "recent_load"]

_PROCFS = os.path.exists("/proc/stat")
_TICKS = os.sysconf("SC_CLK_TCK") if _PROCFS else 0  # clock ticks per second, /proc's unit of CPU time

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
        """Seconds all CPUs spent busy since the machine started: neither idle nor waiting for I/O."""
        if _PROCFS:
            with open("/proc/stat", "rb") as stat:
                # "cpu  user nice system idle iowait irq softirq steal guest guest_nice", in ticks;
                # a guest's time is counted in user and nice already.
                ticks = [int(field) for field in stat.readline().split()[1:9]]
            return (sum(ticks) - ticks[3] - ticks[4]) / _TICKS
        import psutil  # a runtime dependency, loaded only where there is no /proc

        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        return sum(times) - idle

    def _our_cpu(self) -> float:
        """Seconds of CPU time (user and system) the processes of ``own_pids`` used; one that ended counts none."""
        total = 0.0
        for pid in self._own_pids():
            if pid is None:
                times = os.times()
                total += times.user + times.system
            elif _PROCFS:
                total += _process_cpu(pid)
            else:
                import psutil

                try:
                    process_times = psutil.Process(pid).cpu_times()
                except psutil.Error:  # a worker that ended meanwhile
                    continue
                total += process_times.user + process_times.system
        return total

    def start(self) -> None:
        self._ours = self._our_cpu()
        self._busy = self._machine_busy()
        self._started = self._clock()

    def window(self) -> float:
        """Seconds since :meth:`start`: at least :data:`MIN_WINDOW` for :meth:`stop` to tell anything."""
        return self._clock() - self._started

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


def _process_cpu(pid: int) -> float:
    """Seconds of CPU time (user and system) process ``pid`` used, from ``/proc``; 0 if it ended."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        # "pid (comm) state ppid ...": the name may hold spaces and parentheses; utime and stime are
        # the 14th and 15th fields, the 12th and 13th after it.
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):  # a worker that ended meanwhile
        return 0.0


def recent_load(ours: float) -> float | None:
    """Other processes' load over the last minute, in CPUs: the load average less ``ours``.

    ``None`` where the platform has no load average (Windows).
    """
    try:
        one_minute = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None
    return max(0.0, one_minute - ours)
