"""Helpers shared by the pool tests: bounded polling, exact pool sizes, a held worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import makeparallel as mp


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; return whether it held.

    Only for state the library reaches by itself with no event to wait on (a
    thread retiring, a process exiting): everything else synchronises on events.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.005)
    return True


def resize(num_threads: int) -> None:
    """Size the thread pool and wait until threads left over from earlier tests are gone.

    Surplus and stuck workers of an earlier test retire on their own, shortly
    after that test's teardown; waiting for them keeps each test's pool exact.
    """
    mp.configure_thread_pool(num_threads=num_threads)

    def settled() -> bool:
        info = mp.get_thread_pool_info()
        return bool(info["live_threads"] <= num_threads and info["stuck_threads"] == 0)

    assert wait_until(settled), mp.get_thread_pool_info()


def hold_one_worker(gate: threading.Event) -> mp.AsyncHandle[str]:
    """Size the pool to one thread and occupy it with a task blocked on ``gate``."""
    resize(1)
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "held"

    handle = held()
    assert started.wait(5)
    return handle
