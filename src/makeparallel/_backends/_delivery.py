"""What a worker process prints and logs reaches this process's streams and log handlers on a thread of its own.

The pool's loop thread reads every worker's results and keeps every task's
deadline. Writing a relayed ``print()`` to a ``sys.stdout`` whose reader does
not read (a paused terminal, a pipe to a slow consumer) held it in
``write()``, and a log handler that takes its time (one that sends each
record over the network) held it as long: every process task waited, on every
worker, and no timeout fired. So the loop hands each worker's output and log
records to that worker's thread, in order, a batch at a time, and reads no
more of that worker's messages until they are delivered
(``ProcessBackend._deliver``): its result still comes after what it printed
and logged, and a worker that prints into a blocked stream waits there, as a
thread task's ``print()`` would, while the others go on. A thread per worker,
not one per pool: on threads, a blocked stream or a slow handler holds only
the threads that write or log to it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["Delivery"]


class Delivery:
    """One thread that runs batches of deliveries in order, then says whose batch it delivered."""

    __slots__ = ("_batches", "_delivered", "_ready", "_stopping", "_thread")

    def __init__(self, delivered: Callable[[Any], None]) -> None:
        """``delivered(owner)`` is called once each batch of ``owner``'s has run, from the thread that ran it."""
        self._delivered = delivered
        self._batches: deque[tuple[Any, list[Callable[[], None]]]] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._stopping = False

    def put(self, owner: Any, batch: list[Callable[[], None]]) -> None:
        """Run ``batch`` on the thread, after the batches before it; started on the first batch.

        Where no thread can start (the system has none left), the batch runs
        here, as it did before there was a thread for it.
        """
        with self._ready:
            self._batches.append((owner, batch))
            self._ready.notify()
            if self._thread is not None:
                return
            self._stopping = False
            thread = threading.Thread(target=self._run, name="makeparallel-process-output", daemon=True)
            try:
                thread.start()
            except RuntimeError:
                pass
            else:
                self._thread = thread
                return
            self._batches.pop()
        _run_batch(batch)
        self._delivered(owner)

    def stop(self) -> None:
        """End the thread once the batches given before are delivered (its worker left the pool)."""
        with self._ready:
            self._stopping = True
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._batches and not self._stopping:
                    self._ready.wait()
                if not self._batches:
                    self._thread = None
                    return
                owner, batch = self._batches.popleft()
            _run_batch(batch)
            self._delivered(owner)


def _run_batch(batch: list[Callable[[], None]]) -> None:
    for deliver in batch:
        try:
            deliver()
        except BaseException:  # noqa: BLE001, S110  # each delivery reports its own failures; the thread must go on
            pass
