"""Memory-aware throttling: while memory in use is over the limit, pools start one task at a time.

A daemon thread reads the memory budget (:mod:`._memory_budget`) every 100 ms,
never per task. Crossing the limit pauses the pools: each keeps at most one
worker taking new tasks (the thread pool lowers its capacity to one, so surplus
workers retire as their tasks end; the process pool sends work to one worker at
a time). Submissions are still accepted (subject to the admission limits),
running tasks go on, and a task waiting for its children runs them itself as
always, so a pause slows nested work but never deadlocks it. Back under the
limit, the pools resume at full size.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from . import _at_fork_in_child
from ._memory_budget import MemoryBudget, memory_budget
from ._validation import is_real

__all__ = ["MemoryGuard", "check_percent", "configure_memory_limit", "current_guard", "follow"]

_log = logging.getLogger("makeparallel")
INTERVAL = 0.1  # seconds between reads of the memory figures


def check_percent(value: Any, name: str = "max_memory_percent") -> float:
    """A percentage in (0, 100]."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number in (0, 100] or None, got {value!r}")
    if not 0 < value <= 100:
        raise ValueError(f"{name} must be in (0, 100] (percent of the memory limit), got {value!r}")
    return float(value)


class MemoryGuard:
    """Pauses and resumes the pools as memory in use crosses ``limit_percent``.

    Args:
        limit_percent: percent of the budget's limit above which pools pause.
        pause: called with ``True`` to pause the pools, ``False`` to resume them.
        reader: returns the current :class:`MemoryBudget` (for tests: a fake).
    """

    def __init__(
        self,
        limit_percent: float,
        pause: Callable[[bool], None],
        reader: Callable[[], MemoryBudget] = memory_budget,
    ) -> None:
        self.limit_percent = limit_percent
        self._pause = pause
        self._reader = reader
        self._lock = threading.Lock()
        # Held across each pause or resume of the pools, taken by stop() too: the
        # pools hear a guard's changes in order, and none after stop()'s resume.
        self._pausing = threading.RLock()
        self._stopped = False  # stop() came: final, whatever the thread does after
        self.paused = False
        self.pauses = 0
        self.last: MemoryBudget | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreadable = False  # the last read failed: said once, not every 100 ms

    def check(self) -> bool:
        """Read memory once, pause or resume the pools if it crossed the limit; return whether paused.

        A read that fails is logged once, until a read succeeds again; the
        pools stay as they were meanwhile.
        """
        try:
            budget = self._reader()
        except Exception:
            if not self._unreadable:
                self._unreadable = True
                _log.exception(
                    "makeparallel could not read the memory figures; the memory limit is not applied "
                    "until they can be read (the pools stay %s meanwhile)",
                    "paused" if self.paused else "running at full size",
                )
            return self.paused
        self._unreadable = False
        with self._pausing:
            with self._lock:
                if self._stopped:  # a read that ended after stop(): stopped is final
                    return False
                self.last = budget
                over = budget.percent > self.limit_percent
                changed = over != self.paused
                if changed:
                    self.paused = over
                    self.pauses += over
            if not changed:
                return over
            self._pause(over)
            if over and self._stopped:
                # stop() came during the pause and waits for it, or Ctrl-C ended
                # its wait: resumed here, the pools are not left paused either way.
                with self._lock:
                    self.paused = False
                self._pause(False)
                return False
        if over:
            _log.warning(
                "makeparallel: memory is %.0f%% used (%s: %d of %d bytes), over the limit of %g%%: "
                "pools start new tasks one at a time until it falls",
                budget.percent, budget.source, budget.used, budget.limit, self.limit_percent,
            )
        return over

    def start(self) -> None:
        """Check every 100 ms from a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._watch, name="makeparallel-memory", daemon=True)
        self._thread.start()

    def watch_here(self) -> None:
        """Start watching again in a forked child, which has none of the parent's threads (``_after_fork``)."""
        if self._thread is None:
            with _guard_lock:
                if self._thread is None:
                    self.check()
                    self.start()

    def stop(self) -> None:
        """Stop watching and resume the pools if they were paused; final: the guard never pauses them again.

        It does not wait for the watching thread, which ends at its next
        wake-up: a thread held up in its read (a slow cgroup file system) is
        harmless, as its check finds the guard stopped and changes nothing. It
        waits only for a pause or resume of the pools under way, so that none
        comes after its own resume. It waited up to 5 s for the thread and
        then returned: the thread, its read done later, paused the pools for
        good; and :func:`configure_memory_limit` waited as long under the lock
        a new pool takes to follow the guard. Ctrl-C in the wait for a pause
        under way does not leave the pools paused: that pause, finding the
        guard stopped, resumes them itself.
        """
        self._stop.set()
        with self._lock:
            self._stopped = True
        with self._pausing:
            with self._lock:
                was_paused, self.paused = self.paused, False
            if was_paused:
                self._pause(False)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(INTERVAL)

    def snapshot(self) -> dict[str, Any]:
        """Plain figures for metrics and health."""
        with self._lock:
            last = self.last
            return {
                "limit_percent": self.limit_percent,
                "paused": self.paused,
                "pauses": self.pauses,
                "used_bytes": None if last is None else last.used,
                "limit_bytes": None if last is None else last.limit,
                "used_percent": None if last is None else last.percent,
                "source": None if last is None else last.source,
            }


_guard: MemoryGuard | None = None
_guard_lock = threading.Lock()


def current_guard() -> MemoryGuard | None:
    """The memory guard configured now, if any."""
    return _guard


def configure_memory_limit(
    max_memory_percent: float | None,
    pause: Callable[[bool], None],
    reader: Callable[[], MemoryBudget] = memory_budget,
) -> MemoryGuard | None:
    """Replace the guard: a new one watching ``max_memory_percent``, or none for ``None``."""
    global _guard
    limit = None if max_memory_percent is None else check_percent(max_memory_percent)
    with _guard_lock:
        old, _guard = _guard, None
        if old is not None:
            old.stop()
        if limit is None:
            return None
        guard = MemoryGuard(limit, pause, reader)
        guard.check()  # at once: a process started over the limit starts paused
        guard.start()
        _guard = guard
        return guard


def follow(pause: Callable[[bool], None]) -> None:
    """Call ``pause(True)`` for a new pool while the guard pauses the pools; the pool must be listed already.

    Listed where the guard's ``pause`` finds it, the guard's next pause or
    resume reaches it; one that came between reading the guard's state and
    pausing the pool did not: resumed first, the pool then paused itself and
    kept one worker at a time for good. So the state is read again after the
    pause, until it held still across it: any change after that reaches the
    pool after its own pause (the guard pauses or resumes every pool before it
    changes again). This holds for one guard: under the lock that
    :func:`configure_memory_limit` replaces it under, so that the old guard's
    stop, which resumes the pools, cannot come between: the pool, reading it
    again, resumed itself after the new guard had paused every pool.
    """
    current = _guard
    if current is None:
        return
    current.watch_here()  # in a forked child, its thread is the parent's: the first pool starts it
    with _guard_lock:
        current = _guard
        if current is None:
            return
        seen = None
        while (state := (current.pauses, current.paused)) != seen:
            if state[1] or seen is not None:  # (a pool starts running: nothing to set unless it paused)
                pause(state[1])
            seen = state


def _after_fork() -> None:
    """In a forked child: the guard's watching thread is the parent's; its new pools start it again.

    The child's limit went unwatched: its figures stayed those of the fork,
    and pools paused then stayed paused.
    """
    global _guard_lock
    _guard_lock = threading.Lock()
    guard = _guard
    if guard is not None:
        guard._lock = threading.Lock()
        guard._pausing = threading.RLock()
        guard._stop = threading.Event()
        guard._thread = None


_at_fork_in_child(_after_fork)
