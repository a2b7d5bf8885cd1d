"""``num_threads="auto"``: grow the thread pool while its tasks wait, shrink it when idle.

Threads help work that waits (I/O, sleeps, locks) far beyond the core count,
and work that computes only up to it. The pool starts at the usable cores; a
daemon thread samples the queue and the CPU time this process used
(``time.process_time()``, all threads together, as the GIL watch compares thread
CPU time with wall time): every 10 ms while tasks are queued, every 100 ms
otherwise. When tasks are queued, every worker is busy, and the busy workers used
less than half the CPU they could have (``min(busy, cores)`` cores over the
interval), they are mostly blocked: the pool grows at once to what would run
everything queued (at least by one), up to a bound (64 by default). After
``keep_alive`` seconds with idle workers and an empty queue, it shrinks back to
what is busy, never below the cores. Nothing is measured per task.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AutoSizePolicy", "AutoSizer"]

INTERVAL = 0.1  # seconds between samples while nothing is queued
BUSY_INTERVAL = 0.01  # and while tasks are queued: waiting work gains most from growing early
BLOCKED_BELOW = 0.5  # busy workers using less CPU than this fraction are mostly waiting


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
            cpu_fraction: CPU time used over the interval, divided by what the
                busy workers could have used (``min(busy, cores)`` cores).
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


class AutoSizer:
    """Samples a pool every 100 ms and resizes it by an :class:`AutoSizePolicy`.

    Args:
        policy: the decision.
        sample: returns ``(queued, busy)`` of the pool.
        resize: sets the pool's size.
        cores: the usable cores.
    """

    def __init__(
        self,
        policy: AutoSizePolicy,
        sample: Callable[[], tuple[int, int]],
        resize: Callable[[int], None],
        cores: int,
        cpu_clock: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._sample = sample
        self._resize = resize
        self._cores = cores
        self._cpu_clock = cpu_clock
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, float] | None = None

    def step(self) -> int:
        """Take one sample and apply the decision; return the size."""
        now, cpu = self._clock(), self._cpu_clock()
        queued, busy = self._sample()
        fraction = 1.0
        if self._last is not None and busy:
            wall = now - self._last[0]
            if wall > 0:
                fraction = (cpu - self._last[1]) / (min(busy, self._cores) * wall)
        self._last = (now, cpu)
        before = self.policy.size
        size = self.policy.decide(now, queued, busy, fraction)
        if size != before:
            self._resize(size)
        return size

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="makeparallel-autosize", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        interval = INTERVAL
        while not self._stop.wait(interval):
            self.step()
            interval = BUSY_INTERVAL if self._sample()[0] else INTERVAL

    def describe(self) -> dict[str, Any]:
        return {"auto": True, "auto_bound": self.policy.bound, "auto_base": self.policy.base}
