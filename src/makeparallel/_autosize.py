"""``num_threads="auto"``: grow the thread pool while its tasks wait, shrink it when idle.

Threads help work that waits (I/O, sleeps, locks) far beyond the core count,
and work that computes only up to it. The pool starts at the usable cores; a
daemon thread samples the queue every 100 ms, and at once when a task is queued
behind busy workers (the pool pokes it), then every 10 ms while tasks are queued.
While every worker is busy, tasks are queued and the pool is under its bound,
it measures over windows of 30 ms how active each worker thread was: the share
of the window it ran or was ready to run (on Linux, ``schedstat``: on-CPU plus
run-queue time; elsewhere the process's CPU time over what the busy workers
could have used). If the least active busy worker was active under 3/8 of a
window, or under 3/4 of two windows in a row, the pool is partly blocked,
unless its threads wait for the GIL (below): it grows at once to what would
run everything queued (at least by one), up to a bound (64 by default). After
``keep_alive`` seconds with idle workers and an empty queue, it shrinks back
to what is busy, never below the cores. Nothing is measured per task.

Why per thread, with run-queue time: ``time.process_time()`` cannot tell a
thread that waits for I/O from one ready to compute while other processes hold
the CPUs, so on a busy machine a pool of hashing threads looked blocked and grew
to 64 threads (8 runs in 8 on the shared 2-core machine; 1 in 8 now, the first,
when imports do block). A window that was partly idle, or a single 10 ms
sample, misjudged computing threads too.

Why the GIL is asked too: a thread waiting for the GIL sleeps, as one waiting
for I/O does, so threads running pure Python look mostly blocked, each active
a 1/n share, and a stream of such tasks grew the pool to 29-64 threads, no
faster. Each sample that could grow the pool also lets go of the GIL and takes
it back (:func:`gil_was_held`): where the pool's threads run Python, another
thread holds it through a whole switch interval nearly every time (97-99 in
100, 2 to 32 threads, on the loaded 2-core machine; 34-55 where other
processes keep the CPUs busy, and the activity check holds the pool there);
where they wait for I/O or run C code that releases it, nearly never (none in
500 beside sleeping threads, 1-2 in 100 beside hashing ones that also wait). The pool grows only
where at least 3 of the window's asks found the GIL free and no more than a
quarter found it held: more threads only lengthen the queue for the GIL.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import _interruptible

__all__ = ["AutoSizePolicy", "AutoSizer", "activity_of"]

INTERVAL = 0.1  # seconds between samples while nothing is queued
BUSY_INTERVAL = 0.01  # and while tasks are queued: waiting work gains most from growing early
WINDOW = 0.03  # seconds of activity a decision looks at, at least: a few scheduler time slices
LONGEST_WINDOW = 0.3  # and at most: then it starts again, to notice a change of work
BLOCKED_BELOW = 0.75  # a busy worker active less than this share of the time is partly waiting
GIL_FREE_AT_LEAST = 3  # asks of a window that must find the GIL free before the pool may grow


class AutoSizePolicy:
    """The decision, from samples, with the time passed in (tests use a fake clock).

    Args:
        base: the size it starts at and never goes below (the usable cores).
        bound: the size it never goes above.
        keep_alive: seconds of idleness before it shrinks.
    """

    def __init__(self, base: int, bound: int = 64, keep_alive: float = 30.0) -> None:
        self.base = base
        self.bound = max(base, bound)
        self.keep_alive = keep_alive
        self.size = base
        self._idle_since: float | None = None

    def decide(self, now: float, queued: int, busy: int, cpu_fraction: float) -> int:
        """The size to run at now: grown at once to run what is queued, if blocked; shrunk after idling.

        Args:
            now: the time, in seconds.
            queued: tasks waiting to start.
            busy: workers running a task.
            cpu_fraction: the share of the interval the least active busy
                worker ran or was ready to run (1.0: no evidence of waiting).
        """
        if queued > 0 and busy >= self.size and cpu_fraction < BLOCKED_BELOW:
            self.size = min(self.bound, max(self.size + 1, busy + queued))
            self._idle_since = None
        elif queued == 0 and busy < self.size and self.size > self.base:
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= self.keep_alive:
                self.size = max(self.base, busy)
                self._idle_since = None
        else:
            self._idle_since = None
        return self.size


def pool_thread_activity(threads: Iterable[threading.Thread]) -> dict[int, float]:
    """Seconds each of ``threads`` (a pool's workers) has run or been ready to run (waiting for a CPU), by native id.

    Linux counts both in ``/proc/self/task/<tid>/schedstat`` (on-CPU and
    run-queue ns, the first two fields). Their sum tells a thread that waits
    for I/O (it grows slowly) from one that computes, even while other
    processes keep the CPUs busy (it grows with the wall clock either way);
    ``time.process_time()`` alone tells neither.

    The pool's own threads, not every ``makeparallel-thread-N``: an
    ``Executor``'s threads are named alike, and where they computed, the
    sizer took them for its busy workers and the pool never grew.
    """
    active: dict[int, float] = {}
    for thread in threads:
        tid = thread.native_id
        if tid is None:  # not started yet
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as stats:
                ran, waited = stats.read().split()[:2]
        except (OSError, ValueError):  # it ended meanwhile
            continue
        active[tid] = (int(ran) + int(waited)) / 1e9
    return active


def thread_is_runnable(tid: int) -> bool:
    """Whether the thread ``tid`` of this process is running or ready to run now (state ``R``).

    Run-queue wait is added to ``schedstat`` only when the thread gets a CPU,
    so a thread kept waiting for a whole interval looks idle there; its state
    says otherwise.
    """
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] == b"R"
    except (OSError, IndexError):
        return False


def gil_was_held() -> bool:
    """Whether another thread held the GIL through a whole switch interval as this one asked for it back.

    ``time.sleep(0)`` lets go of the GIL and takes it back: at once where it
    is free; where another thread runs Python, only after the switch interval
    (``sys.getswitchinterval()``, 5 ms by default), when the holder is made to
    let go. On a free-threaded build there is none to wait for.
    """
    interval = sys.getswitchinterval()
    started = time.perf_counter()
    time.sleep(0)
    return time.perf_counter() - started >= interval


_SCHEDSTAT = os.path.exists(f"/proc/self/task/{threading.get_native_id()}/schedstat")
Activity = Callable[[], dict[int, float]]


def activity_of(threads: Callable[[], Iterable[threading.Thread]]) -> Activity | None:
    """The per-thread activity of the pool whose worker threads ``threads()`` returns; ``None`` without ``schedstat``."""
    if not _SCHEDSTAT:
        return None
    return lambda: pool_thread_activity(threads())


class AutoSizer:
    """Samples a pool and resizes it by an :class:`AutoSizePolicy`.

    Args:
        policy: the decision.
        sample: returns ``(queued, busy)`` of the pool.
        resize: sets the pool's size.
        cores: the usable cores.
        activity: per-thread activity of the pool's threads (:func:`activity_of`,
            where Linux provides it), or ``None`` to judge by ``cpu_clock`` for
            the whole process.
        runnable: whether a thread is running or ready to run now: one that
            looks idle by ``activity`` but is, was kept waiting for a CPU.
        cpu_clock: CPU seconds of the process, without ``activity``.
        clock: wall-clock seconds.
        gil_held: lets go of the GIL and takes it back; returns whether
            another thread held it through a switch interval meanwhile
            (:func:`gil_was_held`): its threads then wait for the GIL, which
            more threads would not help.
    """

    def __init__(
        self,
        policy: AutoSizePolicy,
        sample: Callable[[], tuple[int, int]],
        resize: Callable[[int], None],
        cores: int,
        activity: Activity | None = None,
        runnable: Callable[[int], bool] = thread_is_runnable,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        gil_held: Callable[[], bool] = gil_was_held,
    ) -> None:
        self.policy = policy
        self._sample = sample
        self._resize = resize
        self._cores = cores
        self._activity = activity
        self._runnable = runnable
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._gil_held = gil_held
        self._asked = self._held = 0  # the GIL asked for, and found held, since the window began
        self._runs = 0  # starts so far: a watching thread whose start is not the last returns (stop() counts one)
        self._wake = threading.Event()
        self._idle = True  # the watcher sleeps INTERVAL: new queued work should wake it
        self._thread: threading.Thread | None = None
        self._stopped: threading.Thread | None = None  # the thread the last stop() stopped, for join()
        self._last: tuple[float, Any] | None = None  # when the pool could grow since, and its reading then

    def step(self) -> int:
        """Take one sample and apply the decision; return the size.

        Activity is read only while the pool could grow (tasks queued, every
        worker busy, under the bound), and judged over at least ``WINDOW``
        seconds that were all so; the GIL is asked for at each such sample,
        and workers that look blocked while it is held count as ready to run.
        """
        queued, busy = self._sample()
        fraction = 1.0
        if queued > 0 and busy >= self.policy.size and self.policy.size < self.policy.bound:
            held = self._gil_held()  # first: its wait must not come between the clock and the reading
            now = self._clock()
            elapsed = now - self._last[0] if self._last is not None else 0.0
            if self._last is None or elapsed >= LONGEST_WINDOW:
                self._last = (now, self._read())
                self._asked, self._held = 1, int(held)
            else:
                self._asked += 1
                self._held += held
                if elapsed >= WINDOW and self._gil_free():
                    # Over all the time since it could grow: clearly blocked after one
                    # window, partly blocked over two (short dips average out).
                    measured = self._fraction(elapsed, busy, self._last[1], self._read())
                    if measured < BLOCKED_BELOW / 2 or elapsed >= 2 * WINDOW:
                        fraction = measured
        else:
            now = self._clock()
            self._last = None
        before = self.policy.size
        size = self.policy.decide(now, queued, busy, fraction)
        if size != before:
            self._resize(size)
        return size

    def _gil_free(self) -> bool:
        """Whether the window's asks found the GIL free: ``GIL_FREE_AT_LEAST`` times, held at a quarter at most.

        Otherwise workers that look blocked may wait for the GIL, not for I/O:
        they are taken as ready to run. One ask in a few dozen finds the GIL
        free between threads that compute (just handed over), and a single
        such ask must not grow the pool to the whole queue.
        """
        return self._asked - self._held >= GIL_FREE_AT_LEAST and 4 * self._held <= self._asked

    def _read(self) -> Any:
        return self._activity() if self._activity is not None else self._cpu_clock()

    def _fraction(self, wall: float, busy: int, before: Any, after: Any) -> float:
        """The share of a CPU the least active busy worker used or waited for.

        The ``busy`` most active pool threads are taken to be the busy ones:
        threads that are idle or retiring are not active at all. Without
        per-thread figures: the CPU the process used, over what the busy
        workers could have used (``min(busy, cores)`` CPUs).
        """
        if self._activity is None:
            return float(after - before) / (min(busy, self._cores) * wall)
        shares = sorted(((after[tid] - before[tid]) / wall, tid) for tid in after.keys() & before.keys())[-busy:]
        least = 1.0
        for share, tid in shares:
            if share < least and not (share < BLOCKED_BELOW and self._runnable(tid)):
                least = share
        return least

    def poke(self) -> None:
        """Tasks were queued behind busy workers: sample now rather than at the end of an idle interval."""
        if self._idle:
            self._wake.set()

    def start(self) -> None:
        """Sample from a daemon thread of its own until :meth:`stop`; after a stop, from a new one.

        A shutdown stops the thread, and :func:`reset_shutdown` starts it
        again (``ThreadBackend.end_threads``, ``reopen``). A thread stopped
        that had not returned yet returns all the same: it is not the last start.
        """
        self._runs += 1
        thread = threading.Thread(target=self._watch, args=(self._runs,), name="makeparallel-autosize", daemon=True)
        thread.start()
        self._thread = thread  # only once it started: join() of one that never did raised RuntimeError

    def stop(self) -> None:
        """Have the sampling thread return, woken now; :meth:`join` waits for it."""
        self._runs += 1
        self._stopped = self._thread
        self._wake.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread :meth:`stop` stopped to end; return whether it did.

        The thread ends at once, unless it is in the middle of a step (a
        resize). A Ctrl-C ends the wait (:mod:`._interruptible`) and is raised.
        That thread, not the one a :meth:`start` since began: a reset as a
        shutdown stopped it started one, which the join waited for, never to
        end, its whole timeout.
        """
        thread = self._stopped
        if thread is None or thread is threading.current_thread():
            return True
        return _interruptible.join(thread, timeout)

    def _watch(self, run: int) -> None:
        interval = INTERVAL
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            if self._runs != run:  # stopped, or started again on a new thread
                return
            self.step()
            interval = BUSY_INTERVAL if self._sample()[0] else INTERVAL
            self._idle = interval == INTERVAL

    def describe(self) -> dict[str, Any]:
        return {"auto": True, "auto_bound": self.policy.bound, "auto_base": self.policy.base}
