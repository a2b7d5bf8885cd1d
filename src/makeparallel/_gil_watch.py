"""Noticing GIL-bound work on the thread backend, and saying so once.

On a standard CPython, threads that run pure-Python code take turns on the GIL:
several of them together use about one core. That is measurable: while tasks
overlap, add up the CPU time each task's thread used and divide by the wall time
in which at least one of them ran. Code that releases the GIL (hashlib, NumPy,
I/O...) gets close to one core per thread; waiting on I/O uses almost none;
GIL-bound code stays near one core however many threads run it. Not the time
from the first task's start to the last one's end: a service runs a function's
tasks in bursts, a request at a time, and the idle time between them divided
both the speed-up and the tasks at once, so that GIL-releasing work on more
threads than cores looked GIL-bound and GIL-bound work looked as if it ran alone.

Each decorated function watches its first tasks that ran alongside others and
took at least a millisecond (16 of them, or at least 4 that ran for a tenth of
a second together), decides once, and stops measuring. On a
free-threaded build nothing is watched.

The cores kept busy are the speed-up only for work that computes all the time.
A task that also waits (a network call, a file) uses part of a core even alone:
eight threads running tasks of 5 ms of Python and 20 ms of waiting kept half a
core busy together, and ran them 3.9 times as fast as one after another, where
the processes the warning advised (one per core) ran them 1.9 times as fast. So
the watch also keeps what the function's tasks that ran alone used of a core
(the median of their first few), and takes the speed-up as the cores kept busy
over that share: the same for work that computes, far more for work that waits.
Where no task ran alone (a service busy from its start), it has no such share,
and takes the cores kept busy as the speed-up, as before.

A machine that other processes keep busy looks the same from inside: threads
that release the GIL get less than a core each, too. So the watch also measures
the other processes' load while it samples (``_load``), and stays silent when
they kept half a CPU or more busy: it cannot tell, and a warning that blames the
GIL for hashlib work on a loaded machine would teach the wrong fix. Its samples
must span ``_load.MIN_WINDOW`` (0.1 s) for that: sixteen tasks of a few
milliseconds end sooner, and it samples on until they do. It decided from
the one-minute load average instead, less the tasks running at once, which
a burst that young has hardly entered: two threads hashing beside two busy
processes read no other load, and were told to use processes. Likewise a
process that may use one core only (its affinity, or a cgroup CPU quota of one
CPU, on a host with more): threads share that core whatever they run, and
processes would share it too. Tasks count as running at once only up to the
usable cores, read once, as the watch decides.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
import weakref

from . import _at_fork_in_child, _load
from ._cpus import usable_cpu_count

__all__ = ["DECORATOR_REMEDY", "EXECUTOR_REMEDY", "MAP_REMEDY", "GilBoundWarning", "GilWatch"]

_log = logging.getLogger("makeparallel")

_SAMPLES = 16  # overlapping tasks to look at before deciding
_FEWEST_SAMPLES = 4  # or as few as this, where they ran for _load.MIN_WINDOW together
_GIVE_UP_AFTER = 1_000  # tasks seen without enough samples (too short, or alone)
_MIN_TASK_SECONDS = 0.001
_ALONE_SAMPLES = 3  # tasks that ran alone, at least, before their share of a core counts
# The share of what processes would gain that the threads must reach for the watch to stay
# silent: on 2 cores (processes: 2x), a speed-up of 1.25x, the bound it had before it measured
# tasks alone; on more cores, as much more (processes gain as many times as tasks run at once,
# up to the cores).
_SHARE_OF_PROCESS_GAIN = 0.625
# What the warning advises, by where the tasks come from (GilWatch.remedy). An executor's
# tasks ignore their function's backend: the decorator's argument was no advice for them.
DECORATOR_REMEDY = "run it with @parallel(backend='process') (or backend='auto')"
MAP_REMEDY = "map it with backend='process' (parallel_map(fn, items, backend='process'), imap's too)"
EXECUTOR_REMEDY = "run it on mp.Executor(backend='process')"


def _busy_time(spans: list[tuple[float, float]]) -> float:
    """Seconds in which at least one of ``spans`` ran: the length of their union."""
    total = 0.0
    end = float("-inf")
    for started, ended in sorted(spans):
        if ended > end:
            total += ended - max(started, end)
            end = ended
    return total


class GilBoundWarning(RuntimeWarning):
    """A ``@parallel`` function on threads is held back by the GIL."""


class GilWatch:
    """Measures overlapping tasks of one function until it can tell."""

    __slots__ = (
        "__weakref__",
        "_alone",
        "_cpu",
        "_load",
        "_lock",
        "_seen",
        "_samples",
        "_spans",
        "_wall",
        "active",
        "name",
        "remedy",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        #: How to run the function's tasks on processes, as its warning advises: the
        #: decorator's argument for a @parallel function, a map's or an executor's own.
        self.remedy = DECORATOR_REMEDY
        self.active = (os.cpu_count() or 1) > 1
        self._lock = threading.Lock()
        self._seen = self._samples = 0
        self._cpu = self._wall = 0.0
        self._spans: list[tuple[float, float]] = []  # (started, ended) of each sample
        self._alone: list[float] = []  # the share of a core each of the first tasks that ran alone used
        self._load: _load.LoadMeter | None = None  # started with the first sample
        _watches.add(self)

    def record(self, started: float, ended: float, cpu: float, overlapping: bool) -> None:
        """One task ran from ``started`` to ``ended``, using ``cpu`` seconds of its thread."""
        with self._lock:
            if not self.active:
                return
            self._seen += 1
            if not overlapping and ended - started >= _MIN_TASK_SECONDS and len(self._alone) < _SAMPLES:
                self._alone.append(cpu / (ended - started))
            if overlapping and ended - started >= _MIN_TASK_SECONDS:
                if self._load is None:
                    self._load = _load.LoadMeter()
                    self._load.start()
                self._samples += 1
                self._cpu += cpu
                self._wall += ended - started
                self._spans.append((started, ended))
            enough = self._samples >= _SAMPLES or self._ran_long_enough()
            if not enough and self._seen < _GIVE_UP_AFTER:
                return
            if self._seen < _GIVE_UP_AFTER and self._load is not None and self._load.window() < _load.MIN_WINDOW:
                return  # a burst too brief for the CPU counters: sample on until the load can be told
            self.active = False
            if not enough:
                return
            span = _busy_time(self._spans)
            self._spans = []
            cores = self._cpu / span  # cores kept busy: what the threads achieved
            concurrency = self._wall / span  # tasks running at once, on average
            speedup = cores / self._alone_share()  # over running them one after another
        within_reach = min(concurrency, usable_cpu_count())  # what processes would gain over that
        if (
            within_reach >= 1.5
            and 0.5 <= cores
            and speedup < _SHARE_OF_PROCESS_GAIN * max(2.0, within_reach)
            and not self._machine_busy(concurrency)
        ):
            self._warn(cores, speedup, concurrency)

    def _ran_long_enough(self) -> bool:
        """Whether a few samples ran for ``_load.MIN_WINDOW`` together: evidence enough without 16.

        Eight tasks of 80 ms, or a map of eight chunks, never gave 16 samples,
        and were never judged; sixteen of a few milliseconds cover less time.
        """
        return (
            self._samples >= _FEWEST_SAMPLES
            and self._wall >= _load.MIN_WINDOW  # the union is never longer: most calls stop here
            and _busy_time(self._spans) >= _load.MIN_WINDOW
        )

    def _alone_share(self) -> float:
        """The share of a core a task used running alone: the median of the first few, else 1 (it computes)."""
        shares = sorted(self._alone)
        if len(shares) < _ALONE_SAMPLES:
            return 1.0
        return min(1.0, max(shares[len(shares) // 2], 1e-3))

    def _machine_busy(self, concurrency: float) -> bool:
        """Whether other processes kept the CPUs busy while the tasks were sampled."""
        others = self._load.stop() if self._load is not None else None
        if others is None:  # sampled too briefly to measure: the last minute's load
            others = _load.recent_load(ours=concurrency)
        if others is None or others < _load.BUSY_CPUS:
            return False
        _log.debug(
            "makeparallel: %r kept about one core busy, but other processes used %.1f CPUs "
            "meanwhile, so the GIL cannot be told from the load: no warning",
            self.name,
            others,
        )
        return True

    def _warn(self, cores: float, speedup: float, concurrency: float) -> None:
        message = (
            f"parallel function {self.name!r} looks GIL-bound: {concurrency:.1f} tasks ran "
            f"at once on threads but together used {cores:.2f} cores, a speed-up of "
            f"{speedup:.2f}x. Pure-Python code needs the GIL on this Python; {self.remedy} to use every core"
        )
        try:
            warnings.warn(message, GilBoundWarning, stacklevel=2)
        except Exception:  # warnings turned into errors: a worker thread is no place to raise
            _log.warning(message)


_watches: weakref.WeakSet[GilWatch] = weakref.WeakSet()  # every function's, for _after_fork


def _after_fork() -> None:
    """In a forked child: a thread of the parent may have held a watch's lock, taking a sample.

    The function's decorator (and its watch) lives on in the child, whose pools
    run its tasks: the first to end waited for that lock for good.
    """
    for watch in list(_watches):
        watch._lock = threading.Lock()


_at_fork_in_child(_after_fork)
