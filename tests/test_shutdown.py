"""Shutdown, interpreter exit and Ctrl-C: the library never hangs a process.

In-process tests drive ``shutdown()``/``reset_shutdown()``; the exit tests run
real interpreters in subprocesses, because only a real exit runs the exit hook.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from types import CodeType, FrameType
from typing import TypeVar

import psutil
import pytest

import makeparallel as mp
from makeparallel import _admission, _handle, _runtime
from makeparallel._admission import Limiter
from makeparallel._backends._base import Backend, terminate_all
from handler_scripts import CALLS_UNDER_THE_LOCK, REFUSED_OR_OK
from makeparallel.testing import wait_until_idle
from pool_helpers import (
    EXIT_WAITS,
    CalledBack,
    Flags,
    fresh_process_pool,
    hold_one_worker,
    interrupted_once_it_says,
    resize,
    wait_until,
)

SRC = Path(__file__).resolve().parents[1] / "src"
T = TypeVar("T")

# -- helpers ----------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def run_python(code: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``code`` in a fresh interpreter; return the result and the wall time."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        timeout=timeout,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    return result, time.monotonic() - started


# -- shutdown() and reset_shutdown() ----------------------------------------------------


@pytest.mark.timeout(20)
def test_shutdown_waits_for_running_tasks_and_returns_true(gate: threading.Event) -> None:
    mp.configure_thread_pool(num_threads=2)
    started = threading.Barrier(3)

    @mp.parallel
    def held(i: int) -> int:
        started.wait(5)
        assert gate.wait(30)
        return i

    handles = [held(0), held(1)]
    started.wait(5)
    outcome: list[bool] = []
    returned = threading.Event()

    def stop() -> None:
        outcome.append(mp.shutdown(timeout_secs=10))
        returned.set()

    thread = threading.Thread(target=stop)
    thread.start()
    assert not returned.wait(0.2), "shutdown() returned while tasks were still running"
    gate.set()
    assert returned.wait(5)
    thread.join(5)
    assert outcome == [True]
    assert [h.get() for h in handles] == [0, 1]
    assert mp.get_active_task_count() == 0


@pytest.mark.timeout(20)
def test_shutdown_takes_a_timeout_longer_than_a_lock_accepts(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel
    def held() -> int:
        started.set()
        assert gate.wait(30)
        return 1

    handle = held()
    assert started.wait(5)
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(mp.shutdown(timeout_secs=threading.TIMEOUT_MAX * 10)))
    thread.start()
    assert not outcome, "shutdown() returned while a task was still running"
    gate.set()
    thread.join(10)
    assert outcome == [True]
    assert handle.get() == 1


def test_shutdown_with_nothing_running_returns_true() -> None:
    @mp.parallel
    def quick(i: int) -> int:
        return i

    assert [h.get(timeout=5) for h in [quick(i) for i in range(10)]] == list(range(10))
    assert mp.shutdown() is True
    assert mp.shutdown(timeout_secs=0) is True  # a second call is harmless


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_shutdown_refuses_new_tasks_until_reset(backend: str) -> None:
    @mp.parallel(backend=backend)
    def quick() -> str:
        return "ran"

    assert mp.shutdown(timeout_secs=5) is True
    with pytest.raises(mp.ShutdownError, match=r"call makeparallel\.reset_shutdown\(\)") as caught:
        quick()
    assert isinstance(caught.value, mp.TaskError)
    with pytest.raises(mp.ShutdownError):
        quick.options(priority=1)()
    assert mp.get_active_task_count() == 0

    mp.reset_shutdown()
    assert quick().get(timeout=5) == "ran"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["shutdown", "wait_until_idle"])
def test_a_timed_wait_for_every_task_in_the_callback_of_a_process_pools_last_task_works(call: str) -> None:
    # It ran on the pool's loop thread, and joined that thread: RuntimeError("cannot join
    # current thread"), logged as the callback's error, after waiting its whole timeout.
    # The pool has no task left whose result that thread would read: the wait sees every
    # task end, and is not refused as one with tasks of that pool unfinished is.
    wait = {"shutdown": lambda: mp.shutdown(timeout_secs=20), "wait_until_idle": lambda: wait_until_idle(20)}[call]
    in_callback = CalledBack(wait)
    mp.parallel(backend="process")(abs)(-1).on_complete(in_callback)
    assert in_callback.called.wait(30)
    assert in_callback.outcome is True, in_callback.outcome
    assert _runtime.is_shut_down() == (call == "shutdown")
    mp.reset_shutdown()
    assert mp.parallel(backend="process")(abs)(-2).get(timeout=20) == 2


SHUTDOWN_FOR_GOOD = r"shutdown\(timeout_secs=None\) called .* would wait for good; nothing was shut down"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_shutdown_without_a_timeout_inside_a_task_raises_at_once(backend: str) -> None:
    # It waited for the task's own end, for good.
    @mp.parallel(backend=backend)
    def stop_everything() -> None:
        mp.shutdown(timeout_secs=None)

    with pytest.raises(RuntimeError, match=SHUTDOWN_FOR_GOOD + ".*timeout_secs"):
        stop_everything().get(timeout=30)
    assert mp.parallel(backend=backend)(abs)(-1).get(timeout=30) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["shutdown", "wait_until_idle"])
def test_an_infinite_timeout_inside_a_task_raises_at_once_as_none_does(call: str) -> None:
    # math.inf (as configure(exit_timeout=math.inf) takes for no limit) passed the check
    # that refuses None: the wait included the task's own end, and lasted for good.
    wait = {"shutdown": lambda: mp.shutdown(timeout_secs=math.inf), "wait_until_idle": lambda: wait_until_idle(math.inf)}[call]
    with pytest.raises(RuntimeError, match=rf"{call}\(timeout(_secs)?=inf\) called inside task .* would wait for good.* finite"):
        mp.parallel(wait)().get(timeout=10)
    assert not _runtime.is_shut_down()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_wait_until_idle_without_a_timeout_inside_a_task_raises_at_once(backend: str) -> None:
    # It waited for the task's own end, for good, as shutdown(timeout_secs=None) did.
    @mp.parallel(backend=backend)
    def wait_for_every_task() -> bool:
        return wait_until_idle()

    with pytest.raises(RuntimeError, match=r"wait_until_idle\(timeout=None\) called inside task .* would wait for good\. Give it a timeout"):
        wait_for_every_task().get(timeout=30)
    assert mp.parallel(backend=backend)(wait_until_idle)(0).get(timeout=30) is False  # itself runs
    assert wait_until_idle(30)


@pytest.mark.timeout(60)
def test_wait_until_idle_without_a_timeout_in_a_process_tasks_callback_raises_at_once(tmp_path: Path) -> None:
    flags = Flags(str(tmp_path))
    wait_for_every_task = CalledBack(wait_until_idle)
    mp.parallel(backend="process")(flags.wait_for_release)("end").on_complete(wait_for_every_task)
    flags.set("end")
    assert wait_for_every_task.called.wait(30)
    assert isinstance(wait_for_every_task.outcome, RuntimeError), wait_for_every_task.outcome
    assert "on the pool's loop thread" in str(wait_for_every_task.outcome)
    assert wait_until_idle(30)


@pytest.mark.timeout(60)
def test_shutdown_without_a_timeout_in_a_callback_on_the_only_worker_raises_at_once(gate: threading.Event) -> None:
    # It waited for the task queued behind, which only the worker the callback held could run.
    resize(1)
    stop_everything = CalledBack(lambda: mp.shutdown(timeout_secs=None))
    mp.parallel(gate.wait)(30).on_complete(stop_everything)
    behind = mp.parallel(abs)(-3)
    gate.set()
    assert stop_everything.called.wait(30)
    assert isinstance(stop_everything.outcome, RuntimeError), stop_everything.outcome
    assert "on a thread pool's worker" in str(stop_everything.outcome)
    assert behind.get(timeout=30) == 3


@pytest.mark.timeout(60)
def test_shutdown_without_a_timeout_in_a_process_tasks_callback_raises_at_once(tmp_path: Path) -> None:
    # It ran on the pool's loop thread, which reads the results it waited for: with
    # another task of the pool unfinished, it waited for good.
    flags = Flags(str(tmp_path))
    stop_everything = CalledBack(lambda: mp.shutdown(timeout_secs=None))
    # Registered before the task can end: registered after, it ran on this thread, and shut down.
    mp.parallel(backend="process")(flags.wait_for_release)("end").on_complete(stop_everything)
    flags.set("end")
    assert stop_everything.called.wait(30)
    assert isinstance(stop_everything.outcome, RuntimeError), stop_everything.outcome
    assert "on the pool's loop thread" in str(stop_everything.outcome)
    assert mp.parallel(backend="process")(abs)(-2).get(timeout=30) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["shutdown", "wait_until_idle"])
def test_a_wait_for_every_task_with_a_timeout_in_a_process_tasks_callback_raises_at_once(
    tmp_path: Path, call: str
) -> None:
    # On the pool's loop thread, which reads the results, the wait could see no task
    # end: it waited out its whole timeout, and shutdown() then stopped the workers,
    # failing a task whose result was there unread as "still running".
    flags = Flags(str(tmp_path))
    wait = {"shutdown": lambda: mp.shutdown(timeout_secs=20), "wait_until_idle": lambda: wait_until_idle(20)}[call]
    in_callback = CalledBack(wait)
    other = mp.parallel(backend="process")(flags.wait_for_release)("other")
    mp.parallel(backend="process")(flags.wait_for_release)("end").on_complete(in_callback)
    flags.set("end")
    assert in_callback.called.wait(30)
    flags.set("other")
    assert isinstance(in_callback.outcome, RuntimeError), in_callback.outcome
    assert f"{call}(" in str(in_callback.outcome) and "on the pool's loop thread" in str(in_callback.outcome)
    assert "another thread" in str(in_callback.outcome)
    assert other.get(timeout=30) is True  # not stopped, not lost
    assert not _runtime.is_shut_down()


def test_a_backend_first_used_after_shutdown_refuses_too() -> None:
    # Only the thread backend may exist yet; "sync" is created after shutdown.
    mp.shutdown(timeout_secs=5)

    @mp.parallel(backend="sync")
    def quick() -> str:
        return "ran"

    with pytest.raises(mp.ShutdownError):
        quick()
    mp.reset_shutdown()
    assert quick().get() == "ran"


@pytest.mark.timeout(20)
def test_shutdown_with_a_stuck_task_returns_false_in_time(gate: threading.Event) -> None:
    # After its wait, shutdown() stops the worker processes, for up to two seconds
    # more: an earlier test's idle workers took 0.6 to 0.9 s to stop on a loaded
    # machine. Stopped first, they leave the wait for the stuck task alone timed.
    assert mp.shutdown(timeout_secs=10)
    mp.reset_shutdown()
    started = threading.Event()

    @mp.parallel
    def stuck() -> str:
        started.set()
        assert gate.wait(30)
        return "released"

    handle = stuck()
    assert started.wait(5)
    began = time.monotonic()
    assert mp.shutdown(timeout_secs=0.2) is False
    elapsed = time.monotonic() - began
    assert 0.2 <= elapsed + 0.01 and elapsed < 2, elapsed
    assert mp.get_active_task_count() == 1
    gate.set()
    assert handle.get(timeout=5) == "released"  # the task was not harmed
    assert mp.get_active_task_count() == 0


# A thread task that timed out or was cancelled as it ran ends its handle at once,
# but its code goes on on its daemon thread (threads cannot be stopped): shutdown and
# exit wait for that code too, as concurrent.futures waits for every running call.
HOW_A_RUNNING_TASK_ENDS = {
    "timed out": mp.TaskTimeoutError,
    "cancelled": mp.TaskCancelledError,
}


def ended_while_its_code_runs(how: str, gate: threading.Event) -> list[str]:
    """Run a thread task held on ``gate`` and end it as it runs (``how``); return the list its code says "returned" in."""
    started = threading.Event()
    returned: list[str] = []

    @mp.parallel(timeout=0.05 if how == "timed out" else None)
    def goes_on() -> None:
        started.set()
        assert gate.wait(30)
        returned.append("returned")

    handle = goes_on()
    assert started.wait(5)
    if how == "cancelled":
        assert handle.cancel()
    with pytest.raises(HOW_A_RUNNING_TASK_ENDS[how]):
        handle.get(timeout=5)
    assert mp.get_active_task_count() == 0  # its handle ended; its code did not
    return returned


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", list(HOW_A_RUNNING_TASK_ENDS))
def test_shutdown_returns_false_while_the_code_of_a_task_that_ended_still_runs(how: str, gate: threading.Event) -> None:
    returned = ended_while_its_code_runs(how, gate)
    assert mp.shutdown(timeout_secs=0.2) is False
    assert returned == []
    gate.set()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", list(HOW_A_RUNNING_TASK_ENDS))
def test_shutdown_waits_for_the_code_of_a_task_that_ended_to_return(
    how: str, gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    returned = ended_while_its_code_runs(how, gate)
    shutting_down, outcome = shutdown_on_a_thread_until_it_waits(monkeypatch)
    gate.set()
    shutting_down.join(10)
    assert outcome == [True]
    assert returned == ["returned"]  # before shutdown() returned


@pytest.mark.timeout(30)
def test_shutdown_does_not_wait_for_the_code_of_a_map_stopped_as_a_whole(gate: threading.Event) -> None:
    # A map that ended early stops its chunks as a whole: on processes their workers are
    # killed at the grace's end. A thread cannot be killed, and its code is not waited for.
    mp.configure_thread_pool(num_threads=2)
    started, returned = threading.Event(), []

    def item(i: int) -> int:
        if i == 0:
            assert started.wait(10)
            raise ValueError("the map ends here")
        started.set()
        assert gate.wait(30)
        returned.append(i)
        return i

    with pytest.raises(ValueError, match="the map ends here"):
        mp.parallel_map(item, [0, 1], chunksize=1)
    assert mp.shutdown(timeout_secs=10) is True
    assert returned == []  # it still runs: shutdown did not wait for it
    gate.set()


@pytest.mark.timeout(30)
def test_shutdown_waits_for_the_code_of_a_task_that_timed_out_before_its_group_was_stopped(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The task's own timeout is its group's failure, and the group stops what is left as a
    # whole. The task had ended one by one before: shutdown still waits for its code, as for
    # any task that timed out as it ran. It was forced with the rest at the group's grace's end,
    # and its code, left to a program that ended meanwhile, was no longer waited for.
    expired = threading.Event()
    expire = _handle._StopIfRunning._expire

    def expire_and_tell(self: _handle._StopIfRunning) -> None:
        expire(self)
        expired.set()

    monkeypatch.setattr(_handle._StopIfRunning, "_expire", expire_and_tell)
    returned: list[str] = []

    @mp.parallel(backend="thread", timeout=0.05)
    def goes_on() -> None:
        assert gate.wait(30)
        returned.append("returned")

    with pytest.raises(mp.TaskTimeoutError), mp.ParallelContext() as ctx:
        ctx.submit(goes_on)
    assert expired.wait(10)  # the group's grace is over
    assert mp.shutdown(timeout_secs=0.2) is False
    assert returned == []
    gate.set()


@pytest.mark.timeout(20)
def test_cancel_pending_cancels_queued_tasks_and_lets_running_ones_finish(
    gate: threading.Event,
) -> None:
    held = hold_one_worker(gate)
    ran: list[int] = []

    @mp.parallel
    def queued(i: int) -> int:
        ran.append(i)
        return i

    handles = [queued(i) for i in range(3)]
    assert mp.get_active_task_count() == 4  # one running, three queued
    assert mp.shutdown(timeout_secs=0.1, cancel_pending=True) is False
    assert [h.status for h in handles] == ["cancelled"] * 3
    for handle in handles:
        with pytest.raises(mp.TaskCancelledError):
            handle.get()
    assert mp.get_thread_pool_info()["queued_tasks"] == 0
    assert mp.get_active_task_count() == 1
    assert held.running()
    gate.set()
    assert held.get(timeout=5) == "held"
    assert ran == []
    assert mp.get_active_task_count() == 0


@pytest.mark.timeout(20)
def test_without_cancel_pending_queued_tasks_still_run(gate: threading.Event) -> None:
    held = hold_one_worker(gate)

    @mp.parallel
    def queued(i: int) -> int:
        return i

    handles = [queued(i) for i in range(3)]
    assert mp.shutdown(timeout_secs=0.1) is False
    assert [h.status for h in handles] == ["pending"] * 3
    gate.set()
    # Accepted before the shutdown, they are run to their end.
    assert [h.get(timeout=5) for h in handles] == [0, 1, 2]
    assert held.get(timeout=5) == "held"
    assert mp.shutdown(timeout_secs=5) is True


@pytest.mark.timeout(20)
def test_active_task_count_counts_queued_and_running(gate: threading.Event) -> None:
    held = hold_one_worker(gate)
    assert mp.get_active_task_count() == 1

    @mp.parallel
    def queued() -> None:
        return None

    handles = [queued() for _ in range(4)]
    assert mp.get_active_task_count() == 5
    gate.set()
    assert held.wait(5)
    for handle in handles:
        assert handle.wait(5)
    assert mp.get_active_task_count() == 0


@pytest.mark.timeout(20)
def test_idle_workers_exit_after_shutdown() -> None:
    resize(2)
    together = threading.Barrier(3)
    threads: list[threading.Thread] = []

    @mp.parallel
    def meet() -> None:
        threads.append(threading.current_thread())
        together.wait(5)

    handles = [meet(), meet()]
    together.wait(5)
    for handle in handles:
        assert handle.wait(5)
    assert mp.shutdown(timeout_secs=5) is True
    assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 0), (
        mp.get_thread_pool_info()
    )
    assert wait_until(lambda: not any(t.is_alive() for t in threads))
    # After a reset the pool starts threads again.
    mp.reset_shutdown()
    assert mp.parallel(threading.current_thread)().get(timeout=5) not in threads


@mp.parallel(backend="process")
def doubled_in_a_worker(x: int) -> int:
    return 2 * x


def shutdown_on_a_thread_until_it_waits(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Thread, list[bool]]:
    """Start ``mp.shutdown(timeout_secs=30)`` on a thread; return once it waits for the tasks, with what it returns."""
    waiting = threading.Event()
    wait_for_tasks = _runtime._wait_for_every_task

    def wait_and_tell(pools: Callable[[], list[Backend]], timeout: float | None) -> bool:
        waiting.set()
        return wait_for_tasks(pools, timeout)

    monkeypatch.setattr(_runtime, "_wait_for_every_task", wait_and_tell)
    outcome: list[bool] = []
    shutting_down = threading.Thread(target=lambda: outcome.append(mp.shutdown(timeout_secs=30)))
    shutting_down.start()
    assert waiting.wait(10)
    return shutting_down, outcome


@pytest.mark.timeout(60)
def test_a_reset_while_shutdown_waits_leaves_every_pool_running(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shutdown went on as if it still stood: it stopped the worker processes under
    # the tasks accepted after the reset, and left the process pool failing every
    # later task with ShutdownError, the library not shut down.
    assert doubled_in_a_worker(1).get(timeout=30) == 2  # the process pool exists as shutdown begins
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "held"

    handle = held()
    assert started.wait(5)
    shutting_down, outcome = shutdown_on_a_thread_until_it_waits(monkeypatch)
    mp.reset_shutdown()
    accepted = doubled_in_a_worker(2)
    gate.set()
    shutting_down.join(30)
    assert outcome == [True]
    assert handle.get(timeout=5) == "held"
    assert accepted.get(timeout=30) == 4
    assert doubled_in_a_worker(3).get(timeout=30) == 6
    assert mp.parallel(abs)(-4).get(timeout=5) == 4


@pytest.mark.timeout(60)
def test_a_reset_before_shutdown_closes_the_pools_leaves_them_taking_tasks_as_it_waits(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shutdown closed them after the reset, and reopened them only as it returned:
    # through its whole wait, every task was refused with ShutdownError ("call
    # makeparallel.reset_shutdown()"), the library not shut down.
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "held"

    handle = held()
    assert started.wait(5)
    limiters = _runtime.all_limiters
    resets: list[threading.Thread] = []

    def reset_first() -> list[Limiter]:
        if not resets:  # the shutdown's call, before it closes anything: the reset comes first
            resets.append(threading.Thread(target=mp.reset_shutdown))
            resets[0].start()
            resets[0].join(20)
        return limiters()

    monkeypatch.setattr(_runtime, "all_limiters", reset_first)
    shutting_down, outcome = shutdown_on_a_thread_until_it_waits(monkeypatch)
    assert not _runtime.is_shut_down()
    accepted = mp.parallel(abs)(-2)  # as the shutdown waits
    gate.set()
    shutting_down.join(30)
    assert outcome == [True]
    assert handle.get(timeout=5) == "held"
    assert accepted.get(timeout=5) == 2


@pytest.mark.timeout(30)
def test_a_shutdown_begun_as_a_reset_reopens_the_pools_stays_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reset reopened the pools after it let go of the runtime's lock: a shutdown
    # from another thread in between closed them first, and the reset reopened them
    # under it. The library said it was shut down, and its pools took every task.
    assert mp.parallel(abs)(-1).get(timeout=5) == 1  # the thread pool exists
    mp.shutdown(timeout_secs=5)
    limiters = _runtime.all_limiters
    outcome: list[bool] = []
    shutting_down = threading.Thread(target=lambda: outcome.append(mp.shutdown(timeout_secs=5)))

    def shut_down_meanwhile() -> list[Limiter]:
        if not shutting_down.is_alive() and not outcome:  # the reset's own call, as it reopens
            shutting_down.start()
            if not _runtime._lock.locked():  # the reset let go of it: the shutdown comes in between
                shutting_down.join(20)
        return limiters()

    monkeypatch.setattr(_runtime, "all_limiters", shut_down_meanwhile)
    mp.reset_shutdown()
    monkeypatch.setattr(_runtime, "all_limiters", limiters)
    shutting_down.join(20)
    assert outcome == [True]
    assert _runtime.is_shut_down()
    with pytest.raises(mp.ShutdownError):
        mp.parallel(abs)(-2)


def call_tracing_each_line(call: Callable[[], T], listings: Collection[CodeType], at_each_line: Callable[[], None]) -> T:
    """Return ``call()``, run with ``at_each_line()`` called at each line run inside one of ``listings``.

    Lines of what a listing calls count too; ``at_each_line`` stands for another
    thread that acts between any two of them. The trace set before is restored.
    """

    def each_line(frame: FrameType, event: str, arg: object) -> object:
        if event == "line":
            at_each_line()
        return each_line

    def in_a_listing(frame: FrameType, event: str, arg: object) -> object:
        caller: FrameType | None = frame
        while caller is not None and caller.f_code not in listings:
            caller = caller.f_back
        return None if caller is None else each_line(frame, event, arg)

    tracing = sys.gettrace()
    sys.settrace(in_a_listing)
    try:
        return call()
    finally:
        sys.settrace(tracing)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", ["reset_shutdown", "shutdown"])
def test_a_limiter_made_as_the_limiters_are_listed_leaves_shutdown_and_reset_whole(call: str) -> None:
    # The limiters were listed by iterating a WeakSet in Python: one made meanwhile on
    # another thread (a TaskGroup's with max_concurrent, per request) raised "Set changed
    # size during iteration" out of the reset, the library not shut down and its pools
    # refusing every task, or out of the shutdown, the library shut down and taking them.
    assert mp.parallel(abs)(-1).get(timeout=5) == 1  # the thread pool exists
    if call == "reset_shutdown":
        mp.shutdown(timeout_secs=5)
    made: list[Limiter] = []

    def make_one() -> None:
        if len(made) < 10:
            made.append(Limiter(2))  # as another thread may, at any line of the listing

    outcome = call_tracing_each_line(getattr(mp, call), {_runtime.all_limiters.__code__}, make_one)
    assert made  # (the listing ran under the trace)
    if call == "shutdown":
        assert outcome is True
        assert _runtime.is_shut_down()
        with pytest.raises(mp.ShutdownError):
            mp.parallel(abs)(-2)
    else:
        assert not _runtime.is_shut_down()
        assert mp.parallel(abs)(-2).get(timeout=5) == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", ["shutdown", "get_active_task_count", "health"])
def test_an_executors_adapter_made_as_the_pools_are_listed_leaves_the_listing_whole(call: str) -> None:
    # The executors' adapters were listed by iterating a WeakValueDictionary in Python: one
    # made meanwhile on another thread (an executor's first task) raised "dictionary changed
    # size during iteration" out of the count, out of health(), or out of shutdown()'s wait,
    # its pools closed and their worker processes not stopped.
    executor = concurrent.futures.ThreadPoolExecutor(1)
    made: list[tuple[concurrent.futures.Executor, Backend]] = [(executor, _runtime.get_backend(executor))]
    listings = {_runtime._all_backends.__code__, _runtime.pool_infos.__code__}

    def make_one() -> None:
        # (Not under the runtime's lock, which shutdown() lists the pools under, and makes one under.)
        if len(made) < 50 and not _runtime._lock.locked():
            another = concurrent.futures.ThreadPoolExecutor(1)
            made.append((another, _runtime.get_backend(another)))  # as another thread may, at any line

    try:
        outcome = call_tracing_each_line(getattr(mp, call), listings, make_one)
    finally:
        for pool, _ in made:
            pool.shutdown()
    assert len(made) > 1  # (the listing ran under the trace)
    if call == "shutdown":
        assert outcome is True
        assert _runtime.is_shut_down()
    elif call == "get_active_task_count":
        assert outcome == 0
    else:
        assert f"executor-{id(executor):x}" in outcome["pools"]


def started_then_stuck_in_c(markers: str) -> int:
    """Leave a file named by this worker's pid, then hold the GIL in one C call for hours.

    Such a worker reads no end of file and runs no SIGTERM handler: only SIGKILL stops it.
    """
    Path(markers, str(os.getpid())).touch()
    return sum(range(10**13))


@pytest.mark.timeout(60)
def test_shutdown_stops_every_busy_worker_process_however_many(tmp_path: Path) -> None:
    # A worker stuck in C code takes two grace periods to stop (SIGTERM, then SIGKILL).
    # Stopped one after another, four of them outlasted what terminate() waits for the
    # pool's loop, and shutdown() returned with workers still running.
    fresh_process_pool(4)
    stuck = mp.parallel(backend="process")(started_then_stuck_in_c)
    handles = [stuck(str(tmp_path)) for _ in range(4)]
    assert wait_until(lambda: len(list(tmp_path.iterdir())) == 4, 30)
    pids = [int(marker.name) for marker in tmp_path.iterdir()]
    assert mp.shutdown(timeout_secs=0.1) is False
    assert mp.get_process_pool_info()["live_workers"] == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, and reaped
    for handle in handles:
        with pytest.raises(mp.ShutdownError):
            handle.get(timeout=10)


@pytest.mark.timeout(60)
def test_shutdown_ends_every_task_of_a_pool_whose_worker_reads_nothing(tmp_path: Path) -> None:
    # Short tasks open a window of tasks sent ahead to a busy worker. Behind a task stuck
    # in a C call, 1 MB tasks filled the pipe the worker no longer read, and the pool's
    # loop blocked on it for good: shutdown() left the worker running, and every handle
    # pending. Tasks still queued when the workers stop were left pending too.
    fresh_process_pool(1)
    quick = mp.parallel(backend="process")(abs)
    assert [handle.get(timeout=30) for handle in [quick(i) for i in range(200)]] == list(range(200))
    stuck = mp.parallel(backend="process")(started_then_stuck_in_c)(str(tmp_path))
    assert wait_until(lambda: any(tmp_path.iterdir()), 30)
    large = [mp.parallel(backend="process")(len)(b"x" * 1_000_000) for _ in range(4)]
    assert mp.shutdown(timeout_secs=0.1) is False
    assert mp.get_process_pool_info()["live_workers"] == 0
    for handle in [stuck, *large]:
        with pytest.raises(mp.ShutdownError):
            handle.get(timeout=10)


def stuck_in_c_initializer(markers: str) -> None:
    """A worker initializer that leaves a file named by the worker's pid, then never returns."""
    started_then_stuck_in_c(markers)


@pytest.mark.timeout(60)
def test_tasks_sent_to_a_worker_stuck_in_its_initializer_say_they_had_not_started_and_name_it(
    tmp_path: Path,
) -> None:
    # Stopped by shutdown(), the first task sent to a worker stuck in the pool's
    # initializer said it "was still running", which sent the user looking for a slow
    # task rather than the initializer; those sent behind it did not name it.
    fresh_process_pool(1)
    name = f"stopped-unstarted-{uuid.uuid4().hex}"
    quick = mp.parallel(backend="process", name=name)(abs)
    assert [handle.get(timeout=30) for handle in [quick(i) for i in range(200)]] == list(range(200))
    mp.configure_process_pool(initializer=stuck_in_c_initializer, initargs=(str(tmp_path),))
    try:
        handles = [quick(-i) for i in range(8)]
        assert wait_until(lambda: any(tmp_path.iterdir()), 30)
        info = mp.get_process_pool_info()
        sent = len(handles) - (info["queued_tasks"] - info["held_tasks"])  # to the stuck worker, or held for it
        assert mp.shutdown(timeout_secs=0.1) is False
        messages = []
        for handle in handles:
            with pytest.raises(mp.ShutdownError, match="had not started") as caught:
                handle.get(timeout=10)
            messages.append(str(caught.value))
        named = [m for m in messages if "still running the initializer stuck_in_c_initializer" in m]
        assert sent >= 1 and len(named) >= sent, messages
        assert mp.get_process_pool_info()["live_workers"] == 0
        # They failed, and count so: not as cancelled, which nobody asked for.
        metrics = mp.get_metrics(name)
        assert metrics is not None and (metrics.failed_tasks, metrics.cancelled_tasks) == (8, 0)
    finally:
        mp.configure_process_pool(initializer=None)


@contextlib.contextmanager
def one_worker_stuck_in_its_initializer(markers: Path) -> Iterator[None]:
    """A pool of one worker whose initializer leaves a file named by its pid in ``markers``, then never returns.

    The initializer is exec, a builtin, in its C call at once: one of this module
    would first be imported in the worker, whose reader thread would meanwhile
    take in a whole task.
    """
    fresh_process_pool(1)
    marker = f"open({str(markers)!r} + '/' + str(__import__('os').getpid()), 'w').close()"
    mp.configure_process_pool(initializer=exec, initargs=(f"{marker}\nsum(range(10**13))",))
    try:
        yield
    finally:
        mp.configure_process_pool(initializer=None)


@pytest.mark.timeout(60)
def test_shutdown_stops_a_worker_stuck_in_its_initializer_however_large_the_task_for_it(
    tmp_path: Path,
) -> None:
    # A 32 MB task was sent to a worker whose initializer held the GIL in a C call, and
    # so read nothing: the pool's loop blocked in the send for good. shutdown() then
    # returned after 6 s with the worker running and the task pending, and the pool
    # ran nothing again after reset_shutdown().
    with one_worker_stuck_in_its_initializer(tmp_path):
        large = mp.parallel(backend="process")(len)(b"x" * 32_000_000)
        assert wait_until(lambda: any(tmp_path.iterdir()), 30)
        pid = int(next(tmp_path.iterdir()).name)
        assert mp.shutdown(timeout_secs=0.1) is False
        assert mp.get_process_pool_info()["live_workers"] == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, and reaped
        with pytest.raises(mp.ShutdownError, match="had not started"):
            large.get(timeout=10)
        mp.reset_shutdown()
        mp.configure_process_pool(initializer=None)
        assert mp.parallel(backend="process")(len)(b"x" * 32_000_000).get(timeout=30) == 32_000_000


@pytest.mark.timeout(60)
def test_a_task_with_a_long_name_never_blocks_the_pool_behind_a_worker_stuck_in_its_initializer(
    tmp_path: Path,
) -> None:
    # What goes to a worker still starting is bounded, but the bound counted the
    # pickled call and not the task's name, which travels with it: a 300 KB name
    # blocked the pool's loop for good.
    with one_worker_stuck_in_its_initializer(tmp_path):
        handle = mp.parallel(backend="process", name="n" * 300_000)(abs)(-1)
        assert wait_until(lambda: any(tmp_path.iterdir()), 30)
        assert mp.shutdown(timeout_secs=0.1) is False
        assert mp.get_process_pool_info()["live_workers"] == 0
        with pytest.raises(mp.ShutdownError) as caught:
            handle.get(timeout=10)
        message = str(caught.value).replace("n" * 300_000, "<name>")
        assert message.endswith("which was still running the initializer exec"), message


@pytest.mark.timeout(60)
def test_a_task_stopped_at_shutdown_names_the_initializer_its_worker_was_running(tmp_path: Path) -> None:
    # The initializer is the culprit, rather than the task, which never started.
    with one_worker_stuck_in_its_initializer(tmp_path):
        small = mp.parallel(backend="process")(abs)(-1)
        assert wait_until(lambda: any(tmp_path.iterdir()), 30)
        assert mp.shutdown(timeout_secs=0.1) is False
        with pytest.raises(mp.ShutdownError, match="still running the initializer exec"):
            small.get(timeout=10)


def test_the_tasks_given_to_a_worker_stuck_in_an_initializer_since_replaced_run_on_a_new_worker(
    tmp_path: Path,
) -> None:
    # Held in the parent until that worker is ready, they are not its own once the
    # pool is set up anew. A small one used to be sent to it at once, and was lost
    # with it at shutdown.
    with one_worker_stuck_in_its_initializer(tmp_path):
        small = mp.parallel(backend="process")(abs)(-1)
        assert wait_until(lambda: any(tmp_path.iterdir()), 30)
        large = mp.parallel(backend="process")(len)(b"x" * 100_000)
        mp.configure_process_pool(initializer=print)  # the stuck worker is still running exec
        assert large.get(timeout=30) == 100_000
        assert small.get(timeout=30) == 1


@pytest.mark.timeout(60)
def test_a_new_initializer_replaces_a_recycled_worker_stuck_in_the_old_one(tmp_path: Path) -> None:
    # With max_tasks_per_child=1, the worker given its one task while starting was
    # recycled already; the new set-up left it so, and it kept its place and the
    # tasks it held: the replacement, ready, ran nothing while it was stuck.
    with one_worker_stuck_in_its_initializer(tmp_path):
        mp.configure_process_pool(max_tasks_per_child=1)
        try:
            small = mp.parallel(backend="process")(abs)(-1)
            assert wait_until(lambda: any(tmp_path.iterdir()), 30)
            large = mp.parallel(backend="process")(len)(b"x" * 100_000)  # held for it: too large to send
            mp.configure_process_pool(initializer=print)
            later = mp.parallel(backend="process")(abs)(-2)
            assert later.get(timeout=30) == 2
            assert large.get(timeout=30) == 100_000
            assert small.get(timeout=30) == 1  # held for it too: it gave both back
        finally:
            mp.configure_process_pool(max_tasks_per_child=None)


def wait_for_a_go_file(markers: str) -> None:
    """An initializer: leave a file named by this worker's pid, then wait until a file named go exists."""
    Path(markers, str(os.getpid())).touch()
    while not Path(markers, "go").exists():
        time.sleep(0.01)


@pytest.mark.timeout(60)
def test_a_worker_given_a_large_task_while_starting_is_replaced_meanwhile(tmp_path: Path) -> None:
    # With max_tasks_per_child=1, a worker given its one task is replaced while it
    # runs it. A task over the bound of what a starting worker is sent waited in the
    # queue instead, so its worker was replaced only once ready, and set-ups ran one
    # after another: twice the time with an initializer of 0.5 s.
    fresh_process_pool(1)
    mp.configure_process_pool(
        initializer=wait_for_a_go_file, initargs=(str(tmp_path),), max_tasks_per_child=1
    )
    try:
        handles = [mp.parallel(backend="process")(len)(b"x" * 100_000) for _ in range(2)]
        # Both workers are in the initializer at once: the second started before the first was ready.
        assert wait_until(lambda: len(list(tmp_path.iterdir())) >= 2, 30)
        (tmp_path / "go").touch()
        assert [handle.get(timeout=30) for handle in handles] == [100_000, 100_000]
    finally:
        mp.configure_process_pool(initializer=None, max_tasks_per_child=None)


@pytest.mark.timeout(60)
def test_a_task_cancelled_while_held_for_a_starting_worker_leaves_the_others_to_run(tmp_path: Path) -> None:
    # Tasks too large for a worker still starting are held for it until it is ready.
    # One cancelled meanwhile had dropped its pickled call, and sending the rest
    # killed the pool's loop thread: every other task failed.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=wait_for_a_go_file, initargs=(str(tmp_path),))
    try:
        handles = [mp.parallel(backend="process")(len)(b"x" * (100_000 + i)) for i in range(3)]
        assert wait_until(lambda: any(tmp_path.iterdir()), 30)
        assert handles[0].cancel()
        (tmp_path / "go").touch()
        assert [handle.get(timeout=30) for handle in handles[1:]] == [100_001, 100_002]
        with pytest.raises(mp.TaskCancelledError):
            handles[0].get(timeout=10)
    finally:
        mp.configure_process_pool(initializer=None)


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)]
)
def test_bad_shutdown_timeouts_are_rejected_without_shutting_down(
    value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="timeout_secs must be a number of seconds"):
        mp.shutdown(timeout_secs=value)  # type: ignore[arg-type]
    assert mp.parallel(lambda: 1)().get(timeout=5) == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize("value", ["no", 1, None])
def test_a_cancel_pending_not_a_bool_is_rejected_without_shutting_down(value: object) -> None:
    # "no" is truthy: taken as it was, it cancelled every queued task.
    with pytest.raises(TypeError, match=f"cancel_pending must be a bool, got {value!r}"):
        mp.shutdown(1, value)  # type: ignore[arg-type]
    assert mp.parallel(lambda: 1)().get(timeout=5) == 1


# -- the threads shutdown() ends --------------------------------------------------------


def _pool_threads() -> list[threading.Thread]:
    """The thread pool's workers and its sizer's thread that are alive now."""
    prefixes = ("makeparallel-thread-", "makeparallel-autosize")
    return [thread for thread in threading.enumerate() if thread.name.startswith(prefixes) and thread.is_alive()]


def worker_in_callback(gate: threading.Event) -> None:
    """Have a task end, its worker then held in the task's callback until ``gate`` is set."""
    registered, in_callback = threading.Event(), threading.Event()

    @mp.parallel
    def ends_once_called_back() -> int:
        assert registered.wait(10)  # registered later, the callback ran in this thread
        return 1

    def called_back(_: object) -> None:
        in_callback.set()
        assert gate.wait(30)

    ends_once_called_back().on_complete(called_back)
    registered.set()
    assert in_callback.wait(10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("callbacks", [False, True], ids=["idle", "in-callbacks"])
def test_shutdown_returns_with_the_thread_pools_workers_ended(gate: threading.Event, callbacks: bool) -> None:
    # The workers, woken to retire, were still alive as shutdown() returned: a
    # thread-leak check (threading.active_count() after it) saw every one of them.
    resize(4)

    @mp.parallel
    def quick(i: int) -> int:
        return i

    assert mp.gather([quick(i) for i in range(16)], timeout=10) == list(range(16))
    if callbacks:  # a task ended, its worker still in its callback as the shutdown waits
        worker_in_callback(gate)
        assert wait_until_idle(10)
        threading.Thread(target=gate.set).start()
    assert _pool_threads()
    assert mp.shutdown(timeout_secs=10) is True
    assert _pool_threads() == []
    mp.reset_shutdown()
    assert quick(1).get(timeout=10) == 1  # the pool starts workers again


@pytest.mark.timeout(30)
def test_shutdown_leaves_only_the_worker_of_a_task_that_cannot_be_stopped(gate: threading.Event) -> None:
    resize(3)
    started = threading.Event()

    @mp.parallel
    def stuck() -> None:
        started.set()
        gate.wait(30)

    @mp.parallel
    def quick(i: int) -> int:
        return i

    handle = stuck()
    assert started.wait(10)
    assert mp.gather([quick(i) for i in range(6)], timeout=10) == list(range(6))
    handle.cancel()  # it ended, its code goes on: the one thread shutdown cannot end
    assert mp.shutdown(timeout_secs=0.2) is False
    assert len(_pool_threads()) == 1, _pool_threads()
    gate.set()
    assert wait_until(lambda: not _pool_threads())
    mp.reset_shutdown()


@pytest.mark.timeout(60)
def test_a_shutdown_whose_wait_ran_out_waits_for_no_busy_worker(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shutdown(timeout_secs=0) took a second more, waiting for the worker of a task still running."""
    monkeypatch.setattr(_runtime, "_THREADS_END_WITHIN", 3600.0)  # a wait for that worker would last till the gate
    resize(3)
    started = threading.Event()

    @mp.parallel
    def busy() -> None:
        started.set()
        gate.wait(60)

    handle = busy()
    assert started.wait(10)
    returned = threading.Event()
    shutting_down = threading.Thread(target=lambda: (mp.shutdown(timeout_secs=0), returned.set()))
    shutting_down.start()
    try:
        assert returned.wait(30), "the shutdown waited for the worker of the running task"
        assert len(_pool_threads()) == 1, _pool_threads()  # the idle ones were joined all the same
    finally:
        gate.set()
        shutting_down.join(60)
    handle.wait(10)
    mp.reset_shutdown()


@pytest.mark.timeout(30)
def test_ctrl_c_as_shutdown_waits_for_the_workers_to_end_is_raised(gate: threading.Event) -> None:
    resize(2)
    worker_in_callback(gate)
    pool = _runtime._backends["thread"]
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:  # once the shutdown waits for the worker still in its callback
        assert wait_until(lambda: bool(pool._retire_waiters), 20)  # type: ignore[attr-defined]
        signal.pthread_kill(main, signal.SIGINT)

    interrupting = threading.Thread(target=interrupt)
    interrupting.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mp.shutdown(timeout_secs=10)
        assert _runtime._last_shutdown is not None and _runtime._last_shutdown.ended == "Ctrl-C"
    finally:
        interrupting.join(30)
        gate.set()
    assert wait_until(lambda: not _pool_threads())
    mp.reset_shutdown()


LIBRARY_THREADS = ("makeparallel-admission", "makeparallel-deadlines")


def _library_threads() -> list[str]:
    """The names of the admission and deadlines threads alive now."""
    return sorted(t.name for t in threading.enumerate() if t.name in LIBRARY_THREADS and t.is_alive())


def _admitted_from_a_loop_with_a_timeout() -> list[int]:
    """Run three tasks with a timeout over a limit of one from an event loop: both threads start."""

    @mp.parallel(max_concurrent=1, timeout=30)
    def double(i: int) -> int:
        return 2 * i

    async def main() -> list[int]:
        return list(await asyncio.gather(*[double(i) for i in range(3)]))

    return asyncio.run(main())


@pytest.mark.timeout(30)
def test_shutdown_ends_the_admission_and_deadlines_threads_and_later_use_starts_them_again() -> None:
    # Each waited for work for good: a thread-leak check after shutdown() saw both.
    assert _admitted_from_a_loop_with_a_timeout() == [0, 2, 4]
    assert _library_threads() == sorted(LIBRARY_THREADS)
    assert mp.shutdown(timeout_secs=10) is True
    assert _library_threads() == []
    mp.reset_shutdown()
    assert _admitted_from_a_loop_with_a_timeout() == [0, 2, 4]
    assert _library_threads() == sorted(LIBRARY_THREADS)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("interrupted", ["backend", "admission"])
def test_a_ctrl_c_in_a_shutdowns_join_still_ends_the_library_threads(
    monkeypatch: pytest.MonkeyPatch, interrupted: str
) -> None:
    # A Ctrl-C in one of the joins ended the shutdown before it told the threads after it
    # to end: they waited for work for good, until the next reset.
    assert _admitted_from_a_loop_with_a_timeout() == [0, 2, 4]

    def ctrl_c(*args: object) -> None:
        raise KeyboardInterrupt

    if interrupted == "backend":
        monkeypatch.setattr(type(_runtime.get_backend("thread")), "end_threads", ctrl_c)
    else:
        monkeypatch.setattr(_admission, "end_thread", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        mp.shutdown(timeout_secs=10)
    monkeypatch.undo()
    left = {"backend": LIBRARY_THREADS, "admission": ("makeparallel-deadlines",)}[interrupted]
    assert wait_until(lambda: not set(left) & set(_library_threads()), 10), _library_threads()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("retried", [False, True], ids=["plain", "retried"])
def test_a_task_left_running_by_a_shutdown_still_times_out(gate: threading.Event, retried: bool) -> None:
    # The deadlines thread stays while a task it must time out still runs, and ends after;
    # also where its timeout is retried (on the closed pool, no attempt runs).
    started = threading.Event()
    retry = mp.Retry(on=TimeoutError, attempts=2, wait_initial=0.01, wait_jitter=0.0) if retried else None

    @mp.parallel(timeout=0.5, retry=retry)
    def runs_past_its_timeout() -> None:
        started.set()
        gate.wait(30)

    handle = runs_past_its_timeout()
    assert started.wait(10)
    assert mp.shutdown(timeout_secs=0) is False
    assert "makeparallel-deadlines" in _library_threads()
    with pytest.raises((mp.TaskTimeoutError, mp.ShutdownError)):  # retried: the closed pool runs no attempt
        handle.get(timeout=20)
    assert wait_until(lambda: "makeparallel-deadlines" not in _library_threads(), 20)
    gate.set()
    assert wait_until_idle(10)
    mp.reset_shutdown()
    started.clear()
    gate.clear()
    with pytest.raises(mp.TaskTimeoutError):  # a new thread enforces the timeouts after the reset
        runs_past_its_timeout().get(timeout=20)
    gate.set()


@pytest.mark.timeout(30)
def test_a_step_handed_on_as_the_admission_thread_ends_runs_after_the_steps_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shutdown does not wait for good for a step that runs on (it joins within its bound),
    # and a step handed on meanwhile starts a new thread, which runs it only once the old one
    # ran its own: admissions stay in turn.
    monkeypatch.setattr(_runtime, "_THREADS_END_WITHIN", 0.0)
    in_first, release, ran = threading.Event(), threading.Event(), []

    def first() -> None:
        in_first.set()
        assert release.wait(30)
        ran.append(("first", threading.current_thread()))

    _admission._hand_on(first)
    assert in_first.wait(10)
    assert mp.shutdown(timeout_secs=10) is True  # (the thread, in its step, is told to end)
    old = _admission._thread
    assert old is not None and old.is_alive()
    _admission._hand_on(lambda: ran.append(("second", threading.current_thread())))
    new = _admission._thread
    assert new is not None and new is not old
    release.set()
    new_ended = _admission._admitter
    old.join(10)
    assert wait_until(lambda: len(ran) == 2, 10)
    assert [name for name, _ in ran] == ["first", "second"]
    assert [thread for _, thread in ran] == [old, new]
    mp.reset_shutdown()
    _admission.end_thread(10)
    assert new_ended is not None and new_ended.is_set()


@pytest.mark.timeout(30)
def test_shutdown_stops_the_auto_sizing_thread_and_a_reset_starts_it_again() -> None:
    mp.configure_thread_pool(num_threads="auto")
    try:
        assert any(thread.name == "makeparallel-autosize" for thread in _pool_threads())
        assert mp.parallel(abs)(-1).get(timeout=10) == 1
        assert mp.shutdown(timeout_secs=10) is True
        assert _pool_threads() == []
        assert mp.get_thread_pool_info()["auto"] is True  # still the pool's setting
        mp.reset_shutdown()
        assert [thread.name for thread in _pool_threads()] == ["makeparallel-autosize"]
        assert mp.parallel(abs)(-2).get(timeout=10) == 2
    finally:
        mp.configure_thread_pool(num_threads=None)


@pytest.mark.timeout(30)
def test_auto_sizing_configured_after_a_shutdown_starts_its_thread_at_the_reset() -> None:
    # Its sampling thread started at once, and sampled the shut-down pool until a reset,
    # or for good: shutdown() had ended the pool's threads already.
    assert mp.shutdown(timeout_secs=10) is True
    try:
        mp.configure_thread_pool(num_threads="auto")
        assert _pool_threads() == []
        assert mp.get_thread_pool_info()["auto"] is True  # the setting is taken
        mp.reset_shutdown()
        assert [thread.name for thread in _pool_threads()] == ["makeparallel-autosize"]
        assert mp.parallel(abs)(-2).get(timeout=10) == 2
    finally:
        mp.reset_shutdown()
        mp.configure_thread_pool(num_threads=None)


@pytest.mark.timeout(30)
def test_a_reset_as_shutdown_stops_the_auto_sizing_thread_has_it_join_the_thread_it_stopped() -> None:
    # A reset between the stop and the join started a new sampling thread, which the
    # join then waited for, its whole second, never to end; the one stopped went unjoined.
    mp.configure_thread_pool(num_threads="auto")
    try:
        pool = _runtime._backends["thread"]
        sizer = pool._autosizer  # type: ignore[attr-defined]
        stopped = sizer._thread
        join = sizer.join
        joined: list[bool] = []

        def reset_then_join(timeout: float) -> bool:  # a reset from another thread lands just before the join
            resetting = threading.Thread(target=mp.reset_shutdown)
            resetting.start()
            resetting.join(10)
            joined.append(join(timeout))
            return joined[-1]

        sizer.join = reset_then_join
        try:
            mp.shutdown(timeout_secs=10)
        finally:
            del sizer.join
        assert joined == [True]
        assert not stopped.is_alive()
        sampling = [thread for thread in _pool_threads() if thread.name == "makeparallel-autosize"]
        assert sampling == [sizer._thread]  # the reset's, running
        assert mp.parallel(abs)(-3).get(timeout=10) == 3
    finally:
        mp.configure_thread_pool(num_threads=None)


# -- interpreter exit -------------------------------------------------------------------

# An imap left half read in a module's global lives until the interpreter
# clears the modules, after the exit hook, where its generator is closed: that
# close cancelled its chunks, importing as it went, and printed "Exception
# ignored ... ImportError: sys.meta_path is None" below the program's output.
HALF_READ_IMAP = """
import sys
import makeparallel as mp

def work(i):
    return i

results = mp.imap(work, range(10_000_000), backend=sys.argv[1], ordered=sys.argv[2] == "ordered", progress=sys.argv[3] == "bar")
for first in results:
    break
print("first", first, flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("backend", "ordered", "bar"),
    [
        ("thread", "ordered", "no bar"),
        ("thread", "unordered", "no bar"),
        ("process", "ordered", "no bar"),
        ("process", "unordered", "no bar"),
        pytest.param(
            "thread",
            "ordered",
            "bar",
            # tqdm's own __del__ at exit crashes it while any generator is suspended, without makeparallel too.
            marks=pytest.mark.skipif(sys.version_info[:3] == (3, 13, 0), reason="a segmentation fault of Python 3.13.0"),
        ),
    ],
)
def test_an_imap_left_half_read_in_a_global_exits_quietly(backend: str, ordered: str, bar: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HALF_READ_IMAP), backend, ordered, bar],
        timeout=50,
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("first "), result.stdout
    assert "Exception ignored" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


STUCK_FOREVER = """
import threading
import makeparallel as mp
{configure}
never = threading.Event()

@mp.parallel
def stuck():
    never.wait()

handle = stuck()
print("submitted", flush=True)
"""


def run_python_timing_its_exit(code: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``code`` in a fresh interpreter; return the result, less the line it adds, and the seconds its exit took.

    The exit is timed from the end of ``code`` to the end of the process: the
    interpreter's start, which took a few seconds on a loaded machine, is not.
    """
    result, _ = run_python(code + "\nimport time\nprint(time.monotonic(), flush=True)\n")
    ended = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the system
    printed, _, exit_began = result.stdout.rstrip("\n").rpartition("\n")
    result.stdout = printed + "\n" if printed else ""
    return result, ended - float(exit_began)


@pytest.mark.timeout(40)
def test_exit_abandons_a_stuck_task_after_the_default_exit_timeout() -> None:
    result, exiting = run_python_timing_its_exit(STUCK_FOREVER.format(configure=""))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "submitted\n"
    assert "1 task(s) still unfinished at interpreter exit were abandoned" in result.stderr
    assert "after waiting 5 s" in result.stderr
    assert 5 <= exiting < 10, exiting


@pytest.mark.timeout(40)
def test_exit_abandons_a_stuck_task_after_a_configured_exit_timeout() -> None:
    result, exiting = run_python_timing_its_exit(STUCK_FOREVER.format(configure="mp.configure(exit_timeout=0.5)"))
    assert result.returncode == 0, result.stderr
    assert "1 task(s) still unfinished at interpreter exit were abandoned" in result.stderr
    assert "after waiting 0.5 s" in result.stderr
    assert 0.5 <= exiting < 3, exiting


@pytest.mark.timeout(40)
def test_exit_does_not_wait_again_after_a_shutdown_that_returned_false() -> None:
    # The program chose how long to wait: exit must not add exit_timeout (60 s
    # here, longer than this test's own limit) on top of it.
    result, _ = run_python(
        STUCK_FOREVER.format(configure="mp.configure(exit_timeout=60)")
        + "print(mp.shutdown(timeout_secs=0.2, cancel_pending=True), flush=True)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "submitted\nFalse\n"
    assert "1 task(s) still unfinished at interpreter exit were abandoned" in result.stderr
    assert "after makeparallel.shutdown() waited 0.2 s;" in result.stderr
    # The advice fits: exit_timeout plays no part after shutdown().
    assert "give shutdown() a longer timeout_secs" in result.stderr and "exit_timeout" not in result.stderr


ENDED_WHILE_ITS_CODE_RUNS = """
import threading
import makeparallel as mp

mp.configure(exit_timeout={exit_timeout})
go = threading.Event()
started = threading.Event()

@mp.parallel
def writes(path):
    started.set()
    assert go.wait(30)
    with open(path, "w") as f:
        for line in range(10_000):
            f.write(f"{{line}}\\n")

handle = writes.options(timeout={timeout})({path!r})
started.wait(5)
if {cancel}:
    handle.cancel()
try:
    handle.get(timeout=5)
except (mp.TaskTimeoutError, mp.TaskCancelledError) as error:
    print(type(error).__name__, flush=True)
"""


def ended_while_its_code_runs_program(how: str, path: Path, exit_timeout: float) -> str:
    timeout = 0.05 if how == "timed out" else None
    return ENDED_WHILE_ITS_CODE_RUNS.format(exit_timeout=exit_timeout, timeout=timeout, path=str(path), cancel=how == "cancelled")


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", list(HOW_A_RUNNING_TASK_ENDS))
def test_exit_waits_for_the_code_of_a_task_that_ended_to_return(how: str, tmp_path: Path) -> None:
    out = tmp_path / "lines.txt"
    result, _ = run_python(ended_while_its_code_runs_program(how, out, exit_timeout=20) + "go.set()\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{HOW_A_RUNNING_TASK_ENDS[how].__name__}\n"
    assert "abandoned" not in result.stderr
    assert out.read_text().split() == [str(line) for line in range(10_000)]  # the whole file


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", list(HOW_A_RUNNING_TASK_ENDS))
def test_exit_abandons_the_code_of_a_task_that_ended_after_the_exit_timeout(how: str, tmp_path: Path) -> None:
    result, _ = run_python(ended_while_its_code_runs_program(how, tmp_path / "lines.txt", exit_timeout=0.5))
    assert result.returncode == 0, result.stderr
    assert (
        "makeparallel: the code of 1 timed out or cancelled task(s) still running "
        "at interpreter exit were abandoned after waiting 0.5 s" in result.stderr
    ), result.stderr
    # Its handle ended: collecting results or shutting down does not stop its code.
    assert "collect results" not in result.stderr, result.stderr
    assert "makeparallel.check_cancelled()" in result.stderr, result.stderr
    assert not (tmp_path / "lines.txt").exists()


STUCK_BETWEEN_AWAITS = """
import asyncio
import threading
import makeparallel as mp

mp.configure(exit_timeout=0.5)
go = threading.Event()

@mp.parallel(backend="thread")
def plain(started):
    started.set()
    go.wait(30)

@mp.parallel(backend="thread")
async def coroutine(started):
    started.set()
    go.wait(30)  # no await until then: its stop reaches it only there
    await asyncio.sleep(0)

for function in {functions}:
    started = threading.Event()
    handle = function.options(timeout={timeout})(started)
    assert started.wait(10)
    if {cancel}:
        handle.cancel()
    try:
        handle.get(timeout=5)
    except (mp.TaskTimeoutError, mp.TaskCancelledError) as error:
        print(type(error).__name__, flush=True)
"""

_PLAIN_STOPS = "a task's code stops at its timeout or cancel only where it calls makeparallel.check_cancelled()"
_COROUTINE_STOPS = "an async task's coroutine stops at its timeout or cancel at its next await"
_BOTH_STOP = (
    "a plain task's code stops at its timeout or cancel only where it calls makeparallel.check_cancelled(), "
    "an async task's coroutine at its next await"
)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("how", list(HOW_A_RUNNING_TASK_ENDS))
@pytest.mark.parametrize(
    ("functions", "advice"),
    [("plain", _PLAIN_STOPS), ("coroutine", _COROUTINE_STOPS), ("plain, coroutine", _BOTH_STOP)],
)
def test_exits_advice_on_the_code_it_abandons_fits_the_kind_of_task(functions: str, advice: str, how: str) -> None:
    # It said a task's code stops only where it calls check_cancelled(), also of an
    # async task's, whose coroutine is cancelled and stops at its next await.
    timeout = 0.05 if how == "timed out" else None
    program = STUCK_BETWEEN_AWAITS.format(functions=f"[{functions}]", timeout=timeout, cancel=how == "cancelled")
    result, _ = run_python(program)
    assert result.returncode == 0, result.stderr
    count = functions.count(",") + 1
    assert result.stdout == f"{HOW_A_RUNNING_TASK_ENDS[how].__name__}\n" * count, result.stdout
    assert (
        f"makeparallel: the code of {count} timed out or cancelled task(s) still running at interpreter exit "
        f"were abandoned after waiting 0.5 s; {advice}, or raise configure(exit_timeout=...)" in result.stderr
    ), result.stderr


@pytest.mark.timeout(30)
def test_exits_advice_after_its_timeout_fits_the_counts_its_warning_gives(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The advice was chosen from one read of the counts and the warning made from a
    # later one: a task that timed out in between (unfinished, then its code still
    # running) was told to be collected, though only its code was left.
    reads: list[str] = []

    def active(backends: object) -> int:
        reads.append("active")
        return 1 if reads.count("active") == 1 else 0

    monkeypatch.setattr(_runtime, "_unfinished", lambda backends: 1)
    monkeypatch.setattr(_runtime, "_wait_ended", lambda backends, timeout: False)
    monkeypatch.setattr(_runtime, "_active", active)
    monkeypatch.setattr(_runtime, "_abandoned_running", lambda backends: 1)
    monkeypatch.setattr(_runtime, "_slots_taken", lambda: 0)
    with caplog.at_level("WARNING", logger="makeparallel"):
        assert _runtime._wait_or_abandon([], []) is True
    (record,) = caplog.records
    message = record.getMessage()
    unfinished = "1 task(s) still unfinished" in message
    assert unfinished == ("collect results" in message), message
    assert unfinished != ("check_cancelled()" in message), message


# What exit's warning names, by what is left: (unfinished tasks, the running code of
# ended ones, slots of limits taken) -> its start, or None for no warning.
WHAT_EXIT_ABANDONS = {
    "unfinished tasks": ((2, 0, 0), "2 task(s) still unfinished at"),
    "ended tasks' code": ((0, 2, 0), "the code of 2 timed out or cancelled task(s) still running at"),
    "both": ((1, 2, 0), "1 task(s) still unfinished and the code of 2 timed out or cancelled task(s) still running at"),
    "slots only": ((0, 0, 3), "calls holding a slot of a limit (max_concurrent, set_max_concurrent_tasks), not yet submitted, at"),
    "ended tasks' code and slots": ((0, 1, 3), "the code of 1 timed out or cancelled task(s) still running at"),
    "nothing, any more": ((0, 0, 0), None),
}


@pytest.mark.parametrize("left", list(WHAT_EXIT_ABANDONS))
def test_exits_warning_names_only_what_it_abandons(
    left: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # After a Ctrl-C it read "0 task(s) still unfinished and the code of 2 timed
    # out or cancelled task(s) still running ... were abandoned".
    (active, running, slots), says = WHAT_EXIT_ABANDONS[left]
    monkeypatch.setattr(_runtime, "_active", lambda backends: active)
    monkeypatch.setattr(_runtime, "_abandoned_running", lambda backends: running)
    monkeypatch.setattr(_runtime, "_slots_taken", lambda: slots)
    with caplog.at_level("WARNING", logger="makeparallel"):
        _runtime._log_abandoned([], "after Ctrl-C", _runtime._CHECK_CANCELLED_ADVICE)
    if says is None:
        assert not caplog.records, caplog.text
        return
    [record] = caplog.records
    message = record.getMessage()  # not caplog.text, whose line number of the call may hold a "0 "
    assert f"makeparallel: {says} interpreter exit were abandoned after Ctrl-C; " in message, message
    assert re.search(r"\b0 ", message) is None, message


# How a shutdown's wait ends (a Ctrl-C noted first, its timeout: None waits on
# until exit), and what exit's warning then says of the stuck task it left.
SHUTDOWN_ENDS = {
    "its timeout passed": (
        False,
        0,
        "abandoned after the test's shutdown waited 0 s; raise its setting to wait for them",
    ),
    # An integration's wait ended by a Ctrl-C as its thread's shutdown waited on:
    # the timeout that thread reaches afterwards does not make it a timeout.
    "a Ctrl-C ended the wait, then its timeout passed": (
        True,
        0,
        "abandoned after Ctrl-C ended the test's shutdown; a task stops sooner when it calls makeparallel.check_cancelled()",
    ),
    # A lifespan cancelled as its shutdown's thread waited on, until the program ended.
    "it still waits": (
        False,
        None,
        "abandoned while the test's shutdown still waited for them; the program ended before that wait did",
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("end", SHUTDOWN_ENDS)
def test_the_warning_at_exit_after_a_shutdown_says_how_its_wait_ended(
    end: str, gate: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    ctrl_c_first, timeout, says = SHUTDOWN_ENDS[end]
    started = threading.Event()

    @mp.parallel
    def stuck() -> None:
        started.set()
        assert gate.wait(30)

    handle = stuck()
    assert started.wait(10)
    call = _runtime.ShutdownCall("the test's shutdown", "raise its setting")
    if ctrl_c_first:
        call.interrupted()  # as the FastAPI lifespan's SIGINT handler does
    stopper = threading.Thread(target=call.run, args=(timeout, False))
    stopper.start()
    try:
        if timeout is not None:
            stopper.join(10)
            assert not stopper.is_alive()
        assert wait_until(_runtime.is_shut_down)
        with caplog.at_level("WARNING", logger="makeparallel"):
            assert _runtime._wait_or_abandon(_runtime._all_backends(), []) is False
        assert f"1 task(s) still unfinished at interpreter exit were {says}" in caplog.text, caplog.text
    finally:
        gate.set()
        stopper.join(10)
        handle.wait(10)


@pytest.mark.timeout(30)
def test_an_uncaught_ctrl_c_after_a_shutdown_cancels_the_tasks_not_started(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Exit abandoned them with a warning, but the pool's threads went on starting
    # them while the program's later exit hooks ran, after the user's Ctrl-C.
    running = hold_one_worker(gate)
    queued = mp.parallel(abs)(-1)
    assert mp.shutdown(timeout_secs=0) is False  # (the Ctrl-C may also have cut it short: the same)
    monkeypatch.setattr(sys, "last_value", KeyboardInterrupt(), raising=False)  # how exit knows of it
    with caplog.at_level("WARNING", logger="makeparallel"):
        assert _runtime._wait_or_abandon(_runtime._all_backends(), []) is False
    assert queued.is_cancelled()
    assert "1 task(s) still unfinished at interpreter exit were abandoned" in caplog.text, caplog.text
    gate.set()
    assert running.get(timeout=10) == "held"


# A child script's start: its one worker thread runs a task that never ends, and the next waits.
ONE_RUNNING_ONE_QUEUED = """
mp.configure_thread_pool(1)
never, started = threading.Event(), threading.Event()

@mp.parallel
def stuck():
    started.set()
    never.wait()

running = stuck()
assert started.wait(10)
queued = stuck()
"""

INTERRUPTED_SHUTDOWN = """
import threading
import makeparallel as mp

mp.configure(exit_timeout=60)
""" + ONE_RUNNING_ONE_QUEUED + """
# shutdown() cancels the queued task first, on this thread: its callback says
# that shutdown is under way, and the signal then lands in its endless wait.
queued.on_error(lambda error: print("ready", flush=True))
try:
    mp.shutdown(timeout_secs=None, cancel_pending=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.timeout(40)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process (POSIX)")
def test_exit_does_not_wait_again_after_ctrl_c_interrupted_shutdown() -> None:
    result = interrupted_once_it_says(  # exit_timeout is 60 s
        [sys.executable, "-c", textwrap.dedent(INTERRUPTED_SHUTDOWN)], "ready", timeout=30, env=child_env()
    )
    stdout, stderr = result.stdout, result.stderr
    assert result.returncode == 0, stderr
    assert stdout == "interrupted\n"
    # Not "give shutdown() a longer timeout_secs": it had none, and the user ended it.
    assert (
        "1 task(s) still unfinished at interpreter exit were abandoned after Ctrl-C ended makeparallel.shutdown(); "
        "a task stops sooner when it calls makeparallel.check_cancelled()"
    ) in stderr, stderr
    assert "timeout_secs" not in stderr, stderr


CTRL_C_WHILE_EXIT_WAITS = """
import os, signal, sys, threading
import makeparallel as mp

mp.configure(exit_timeout=60)
mp.configure_thread_pool(1)
never = threading.Event()
""" + EXIT_WAITS + """
@mp.parallel
def interrupt_the_exit_wait():
    while not exit_waits():
        never.wait(0.001)
    os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, once exit waits for this task
    never.wait()

running = interrupt_the_exit_wait()
queued = interrupt_the_exit_wait()
print("submitted", flush=True)
"""


@pytest.mark.timeout(40)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT (POSIX)")
def test_ctrl_c_while_exit_waits_abandons_the_tasks_with_a_warning_and_no_traceback() -> None:
    result, wall = run_python(CTRL_C_WHILE_EXIT_WAITS)  # exit_timeout is 60 s
    assert result.returncode == 0, result.stderr
    assert result.stdout == "submitted\n"
    assert "1 task(s) still unfinished at interpreter exit were abandoned after Ctrl-C" in result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr
    assert wall < 30


# The program's own end is normal; the user's Ctrl-C (a real SIGINT from outside) comes as
# exit waits for a task that never ends. A daemon thread says when: a process task cannot.
CTRL_C_FROM_OUTSIDE_AS_EXIT_WAITS = """
import sys, threading, time
import makeparallel as mp

mp.configure(exit_timeout=60)
never = threading.Event()
""" + EXIT_WAITS + """
def say_when_exit_waits():
    while not exit_waits():
        never.wait(0.001)
    print("exit waits", flush=True)

task = mp.parallel(backend=sys.argv[1])(time.sleep)(600)  # (a function that pickles, for a worker process)
while not task.running():  # not queued: exit would cancel it, and have none to abandon
    never.wait(0.001)
threading.Thread(target=say_when_exit_waits, daemon=True).start()
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process (POSIX)")
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_ctrl_c_as_exit_waits_ends_the_program_with_status_0(backend: str) -> None:
    # As CPython ends one interrupted in its own exit's wait (threading's join of the
    # threads left, concurrent.futures' wait for its workers, an atexit handler): status 0,
    # the program's own end having been normal; killed by SIGINT is for a Ctrl-C that
    # ended the program itself. The README said the latter of both.
    result = interrupted_once_it_says(
        [sys.executable, "-c", CTRL_C_FROM_OUTSIDE_AS_EXIT_WAITS, backend], "exit waits", timeout=30, env=child_env()
    )
    assert (result.returncode, result.stdout) == (0, ""), result.stderr  # (its first line was read)
    assert "1 task(s) still unfinished at interpreter exit were abandoned after Ctrl-C" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# A service's SIGTERM handler raises SystemExit, as the README advises, or an error of
# its own; the service manager's SIGTERM comes as exit waits for a task that never ends
# (the program ended normally, or after a first SIGTERM). The handler runs on the main
# thread, in exit's wait.
SIGTERM_AS_EXIT_WAITS = """
import signal, sys, threading, time
import makeparallel as mp
from makeparallel import _runtime

class Terminated(Exception):
    pass

def on_sigterm(signum, frame):
    if sys.argv[2] == "SystemExit":
        sys.exit(0)
    raise Terminated("SIGTERM")

signal.signal(signal.SIGTERM, on_sigterm)
mp.configure(exit_timeout=60)
never = threading.Event()
""" + EXIT_WAITS + """
def say_when_exit_waits():
    while not exit_waits():
        never.wait(0.001)
    print("exit waits", flush=True)

if sys.argv[1] == "flask":  # its exit hook shuts down first, with its timeout
    from flask import Flask
    from makeparallel.flask import MakeParallel

    app = Flask(__name__)
    app.config["MAKEPARALLEL_SHUTDOWN_TIMEOUT"] = 60
    MakeParallel(app, registry=None)
task = mp.parallel(backend="thread" if sys.argv[1] == "flask" else sys.argv[1])(time.sleep)(600)
while not task.running():
    never.wait(0.001)
_runtime.after_pools_at_exit(lambda: print("flushed", file=sys.stderr, flush=True))  # an exporter's last flush
threading.Thread(target=say_when_exit_waits, daemon=True).start()
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGTERM to a child process (POSIX)")
@pytest.mark.parametrize("raised", ["SystemExit", "Terminated"])
@pytest.mark.parametrize("backend", ["thread", "process", "flask"])
def test_a_signal_handlers_exit_or_error_as_exit_waits_abandons_the_tasks_with_a_warning(
    backend: str, raised: str
) -> None:
    if backend == "flask":
        pytest.importorskip("flask")
        pytest.importorskip("prometheus_client")
    # It went up through exit's hook: Python printed it as ignored with the library's frames,
    # and the hook's rest was skipped (the workers' stop, the exporters' last flush). The
    # handler's own error (not SystemExit) is logged once, with its traceback.
    child = subprocess.Popen(
        [sys.executable, "-c", SIGTERM_AS_EXIT_WAITS, backend, raised],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "exit waits\n"
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert (child.returncode, stdout) == (0, ""), stderr
    assert "Exception ignored" not in stderr, stderr
    if raised == "SystemExit":
        assert "Traceback" not in stderr, stderr
    else:
        wait = "the makeparallel.flask extension's shutdown" if backend == "flask" else "the wait for the tasks"
        assert f"makeparallel: {wait} at interpreter exit was ended by Terminated: SIGTERM" in stderr, stderr
        assert stderr.count("Traceback") == 1 and stderr.count("Terminated: SIGTERM\n") == 1, stderr
    abandoned = "1 task(s) still unfinished at interpreter exit were abandoned "
    if backend == "flask":  # (the extension's shutdown waited, not exit's own wait)
        abandoned += "while the makeparallel.flask extension's shutdown still waited for them"
    else:
        abandoned += f"after {raised} ended the wait for them"
    assert abandoned in stderr, stderr
    assert stderr.endswith("flushed\n"), stderr


# The first SIGTERM ends exit's wait; a second one comes as the warning of the tasks abandoned
# is written, by a logging handler that ships it elsewhere (and takes a while).
SECOND_SIGTERM_AS_EXIT_ABANDONS = """
import logging, os, signal, sys, threading, time
import makeparallel as mp
from makeparallel import _runtime

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
mp.configure(exit_timeout=60)
never = threading.Event()
""" + EXIT_WAITS + """
class SecondSigterm(logging.Handler):
    def emit(self, record):
        print(record.getMessage(), file=sys.stderr, flush=True)
        if "abandoned" in record.getMessage():
            os.kill(os.getpid(), signal.SIGTERM)

logging.getLogger("makeparallel").addHandler(SecondSigterm())
task = mp.parallel(backend=sys.argv[1])(time.sleep)(600)
while not task.running():
    never.wait(0.001)
_runtime.after_pools_at_exit(lambda: print("flushed", file=sys.stderr, flush=True))

def sigterm_when_exit_waits():
    while not exit_waits():
        never.wait(0.001)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=sigterm_when_exit_waits, daemon=True).start()
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGTERM to itself (POSIX)")
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_second_sigterm_as_exit_abandons_the_tasks_still_stops_the_workers_and_flushes(backend: str) -> None:
    # It went up through exit's hook, as a second Ctrl-C there does not: printed as ignored
    # with the library's frames, the workers' stop and the exporters' last flush skipped.
    result = subprocess.run(
        [sys.executable, "-c", SECOND_SIGTERM_AS_EXIT_ABANDONS, backend],
        check=False,
        timeout=40,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert "1 task(s) still unfinished at interpreter exit were abandoned after SystemExit" in result.stderr
    assert result.stderr.endswith("flushed\n"), result.stderr


# A SIGTERM handler raises an exception of its own, no Exception (as KeyboardInterrupt is
# not), as an exporter's last flush runs at exit; another exporter flushes after it.
SIGTERM_AS_AN_EXPORTER_FLUSHES = """
import signal, sys, threading
import makeparallel as mp
from makeparallel import _runtime

class Stop(BaseException):
    pass

def on_sigterm(signum, frame):
    raise Stop("SIGTERM")

def flush_ended_by_sigterm():
    signal.raise_signal(signal.SIGTERM)
    threading.Event().wait(30)  # (its handler raises before this wait, or in it)
    print("not ended", file=sys.stderr, flush=True)

signal.signal(signal.SIGTERM, on_sigterm)
if sys.argv[1] == "pool":  # the hooks run in the pools' exit hook; else atexit runs each
    mp.parallel(abs)(-1).result()
_runtime.after_pools_at_exit(flush_ended_by_sigterm)
_runtime.after_pools_at_exit(lambda: print("flushed", file=sys.stderr, flush=True))
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="a SIGTERM handler (POSIX)")
@pytest.mark.parametrize("pool", ["pool", "no pool"])
def test_a_signal_handlers_base_exception_in_an_exit_flush_is_logged_and_the_other_flushes_run(pool: str) -> None:
    # It went up through the exit hook: Python printed it as ignored with the library's frames,
    # and the exporters' flushes after it were skipped.
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_AS_AN_EXPORTER_FLUSHES, pool],
        check=False,
        timeout=40,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    stderr = result.stderr
    assert result.returncode == 0, stderr
    assert "Exception ignored" not in stderr and "not ended" not in stderr, stderr
    assert re.search(
        r"makeparallel: the exit hook <function flush_ended_by_sigterm at \w+> at interpreter exit was ended by "
        r"Stop: SIGTERM, raised in it \(by a signal handler, where the traceback ends in one\); exit goes on\n",
        stderr,
    ), stderr
    assert stderr.count("Traceback") == 1 and stderr.count("Stop: SIGTERM\n") == 1, stderr
    assert stderr.count("flushed\n") == 1, stderr


# A handler's "reload" (shutdown, then reset), both deferred as it interrupted a submission,
# behind a task that never ends: exit waits for the reset, then for the shutdown. The service
# manager's SIGTERM comes in each wait; the program's handler raises SystemExit.
SIGTERM_AS_EXIT_WAITS_FOR_A_DEFERRED_RESET = """
import os, signal, sys, threading
import makeparallel as mp
from makeparallel import _runtime

signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
never, started = threading.Event(), threading.Event()


def main_thread_in(name):
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code.co_name != name:
        frame = frame.f_back
    return frame is not None


@mp.parallel
def runs_on():
    started.set()
    never.wait()


handle = runs_on()
assert started.wait(15)
signal.signal(signal.SIGHUP, lambda *_: (mp.shutdown(timeout_secs=60), mp.reset_shutdown()))
with _runtime.get_backend("thread")._lock:
    signal.raise_signal(signal.SIGHUP)
_runtime.after_pools_at_exit(lambda: print("flushed", file=sys.stderr, flush=True))


def sigterm_in_each_wait():
    for wait in ("_join_at_exit", "_wait_at_exit"):
        while not main_thread_in(wait):
            never.wait(0.001)
        os.kill(os.getpid(), signal.SIGTERM)


threading.Thread(target=sigterm_in_each_wait, daemon=True).start()
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="sends SIGHUP and SIGTERM to itself (POSIX)")
def test_a_signal_handlers_system_exit_as_exit_waits_for_a_deferred_reset_prints_no_traceback() -> None:
    # The wait for the deferred reset took a Ctrl-C only: SystemExit went up through its exit
    # hook, and Python printed it as ignored, with the library's frames.
    result = subprocess.run(
        [sys.executable, "-c", SIGTERM_AS_EXIT_WAITS_FOR_A_DEFERRED_RESET],
        check=False,
        timeout=40,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert "1 task(s) still unfinished at interpreter exit were abandoned" in result.stderr, result.stderr
    assert result.stderr.endswith("flushed\n"), result.stderr


# Typed at the interactive prompt: the prompt catches the Ctrl-C, and the session goes
# on. Its task ends once exit waits for it, and says so.
CTRL_C_CAUGHT_BY_THE_PROMPT = """
import os, signal, sys, threading, time
import makeparallel as mp
mp.configure(exit_timeout=60)
never = threading.Event()
""" + EXIT_WAITS + """
@mp.parallel
def ends_once_exit_waits():
    while not exit_waits():
        never.wait(0.001)
    print("ended as exit waited", flush=True)

os.kill(os.getpid(), signal.SIGINT); time.sleep(30)
handle = ends_once_exit_waits()
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT (POSIX)")
def test_a_ctrl_c_the_interactive_prompt_caught_does_not_end_the_wait_at_exit() -> None:
    # Python keeps the last error the prompt printed in sys.last_value: exit took that
    # Ctrl-C for one that ended the program, at the end of a session that went on, and
    # abandoned its tasks without waiting (and the Flask extension skipped its shutdown).
    result = subprocess.run(
        [sys.executable, "-i", "-q"],
        input=CTRL_C_CAUGHT_BY_THE_PROMPT,
        timeout=50,
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    assert "KeyboardInterrupt" in result.stderr, result.stderr  # the prompt caught it
    assert result.stdout == "ended as exit waited\n", result.stderr
    assert "abandoned" not in result.stderr, result.stderr


# The worker holds the GIL in one C call with SIGTERM ignored: it reads no end of
# file and dies only at the SIGKILL a grace period later, so exit is certainly
# still stopping it when the main thread's stack shows terminate().
CTRL_C_WHILE_EXIT_STOPS_WORKERS = """
import os, signal, sys, threading, time
import makeparallel as mp

mp.configure(exit_timeout=0)

@mp.parallel(backend="process")
def deaf(started):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(started, "w") as f:
        f.write(str(os.getpid()))
    sum(range(10**12))

def exit_stops_workers():
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code.co_name != "terminate":
        frame = frame.f_back
    return frame is not None

def interrupt_the_stopping():
    while not exit_stops_workers():
        time.sleep(0.001)
    print("interrupting", flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, once exit stops the worker

handle = deaf({started!r})
deadline = time.monotonic() + 20
# Written, not only made: the Ctrl-C ends this program at once, and the worker with it
# (its parent-death signal), maybe between the two, the file left empty.
while not (os.path.exists({started!r}) and os.path.getsize({started!r})) and time.monotonic() < deadline:
    time.sleep(0.005)
threading.Thread(target=interrupt_the_stopping, daemon=True).start()
"""


@pytest.mark.timeout(40)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sends SIGINT; the worker dies by its parent-death signal")
def test_ctrl_c_while_exit_stops_the_workers_ends_the_program_with_no_traceback(tmp_path: Path) -> None:
    started = tmp_path / "started"
    result, wall = run_python(CTRL_C_WHILE_EXIT_STOPS_WORKERS.format(started=str(started)))
    assert result.stdout == "interrupting\n", result.stderr  # the Ctrl-C certainly landed as exit stopped the worker
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    worker = int(started.read_text())
    assert wait_until(lambda: not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE)
    assert wall < 30


SECOND_CTRL_C_AS_EXIT_ABANDONS = """
import os, signal, threading
import makeparallel as mp
""" + ONE_RUNNING_ONE_QUEUED + """
# Exit cancels the queued task on this thread: its callback is the user's second Ctrl-C.
queued.on_error(lambda error: os.kill(os.getpid(), signal.SIGINT))
print("interrupting", flush=True)
os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C, which ends the program
never.wait()
"""


@pytest.mark.timeout(40)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT (POSIX)")
def test_a_second_ctrl_c_as_exit_abandons_the_tasks_prints_only_the_programs_traceback() -> None:
    result, wall = run_python(SECOND_CTRL_C_AS_EXIT_ABANDONS)
    assert result.stdout == "interrupting\n", result.stderr
    # Killed by SIGINT, or exit status 1 where another thread ran Python code as the
    # program ended: CPython releases without the fix of gh-128130 keep one
    # process-wide flag for an uncaught KeyboardInterrupt, which that clears.
    assert result.returncode in (-signal.SIGINT, 1), result.stderr
    # The program's own traceback, for the Ctrl-C that ended it, and no other.
    assert result.stderr.count("Traceback") == 1 and result.stderr.count("KeyboardInterrupt") == 1, result.stderr
    assert "Exception ignored" not in result.stderr, result.stderr
    assert wall < 30


@pytest.mark.timeout(40)
def test_exit_waits_again_once_the_shutdown_was_reset(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    result, _ = run_python(
        f"""
        import threading
        import makeparallel as mp

        mp.shutdown(timeout_secs=1)
        mp.reset_shutdown()  # a new start: tasks submitted now are waited for at exit
        go = threading.Event()

        @mp.parallel
        def work():
            assert go.wait(20)
            with open({str(out)!r}, "w") as f:
                f.write("done")

        handle = work()
        go.set()
        """
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "done"


# A daemon thread's call waits for a slot of a limit, and the task holding that slot
# ends as the program does: the slot is handed to the call, whose task exists only
# once the call goes on. Exit, which counted only the tasks, found none and let it go.
SLOT_HANDED_OVER_AT_EXIT = """
import sys, threading, time
import makeparallel as mp

mp.configure(exit_timeout=20)
go = threading.Event()
started = threading.Event()

@mp.parallel({limit})
def work(name):
    if name == "first":
        started.set()
        assert go.wait(30)
    else:
        with open({path!r}, "w") as f:
            f.write(name)

def exit_waits():
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code.co_name != "_wait_ended":
        frame = frame.f_back
    return frame is not None

def between_the_slot_and_the_submit(event):
    # The producer has its slot and has not submitted yet: held there until exit waits.
    if event.kind == "submitted" and threading.current_thread().name == "producer":
        for _ in range(3000):
            if exit_waits():
                return
            threading.Event().wait(0.01)

mp.add_task_listener(between_the_slot_and_the_submit)
{setup}
first = work("first")
assert started.wait(10)
producer = threading.Thread(target=work, args=("second",), name="producer", daemon=True)
producer.start()
limiter = {limiter}
for _ in range(1000):  # until the producer waits for the slot
    if limiter._waiters:
        break
    threading.Event().wait(0.01)
assert limiter._waiters
go.set()
first.get(timeout=10)  # its slot was handed to the producer as it ended
"""

SLOT_LIMITS = {  # the decorator's arguments, a setting, the limiter
    "max_concurrent": ("max_concurrent=1", "", "work._spec.limiter"),
    "set_max_concurrent_tasks": ("", "mp.set_max_concurrent_tasks(1)", "mp._runtime.global_limiter"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", list(SLOT_LIMITS))
def test_exit_waits_for_a_daemon_threads_call_handed_a_slot_as_a_task_ended(limit: str, tmp_path: Path) -> None:
    out = tmp_path / "second.txt"
    decorator, setup, limiter = SLOT_LIMITS[limit]
    program = SLOT_HANDED_OVER_AT_EXIT.format(limit=decorator, setup=setup, limiter=limiter, path=str(out))
    result, _ = run_python(program, timeout=50)
    assert result.returncode == 0, result.stderr
    assert "abandoned" not in result.stderr
    assert out.read_text() == "second"


# A "sync" task that forks goes on in the child, whose limits start with no slot taken:
# its end there frees one more than the child took, and that limit counts -1. Exit, which
# waits for the slots, summed the counts: -1 read as a slot still taken, while each
# limit's own wait found none, and the child's exit passed over them again for good.
FORKED_IN_A_SYNC_TASK = """
import os, signal, threading, time
import makeparallel as mp

mp.configure(exit_timeout=30)  # beyond the parent's wait: the child must not wait at all
{setup}

@mp.parallel(backend="sync"{limit})
def forks():
    return os.fork()

pid = forks().get()
if pid:  # the parent: how the child ended, or that it never did
    deadline = time.monotonic() + 20
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            print("the child's exit hung", flush=True)
            break
        threading.Event().wait(0.01)
    else:
        print("the child exited", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("limit", list(SLOT_LIMITS))
def test_exit_of_a_child_a_sync_task_forked_ignores_a_limit_that_counts_below_zero(limit: str) -> None:
    decorator, setup, _ = SLOT_LIMITS[limit]
    program = FORKED_IN_A_SYNC_TASK.format(setup=setup, limit=f", {decorator}" if decorator else "")
    result, _ = run_python(program, timeout=50)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the child exited\n", result.stderr
    assert "abandoned" not in result.stderr


@pytest.mark.timeout(40)
def test_exit_runs_every_uncollected_task(tmp_path: Path) -> None:
    out = tmp_path / "done.txt"
    result, _ = run_python(
        f"""
        import threading
        import makeparallel as mp

        go = threading.Event()
        lock = threading.Lock()

        @mp.parallel
        def work(i):
            assert go.wait(20)
            with lock, open({str(out)!r}, "a") as f:
                f.write(f"{{i}}\\n")

        handles = [work(i) for i in range(50)]
        go.set()  # the last statement: every task is still unfinished at exit
        """
    )
    assert result.returncode == 0, result.stderr
    assert "abandoned" not in result.stderr
    assert sorted(int(line) for line in out.read_text().split()) == list(range(50))


STUCK_IN_C_IN_THREE_POOLS = """
import os, sys, time
from pathlib import Path
import makeparallel as mp

markers = Path(sys.argv[1])

def stuck_in_c():
    (markers / str(os.getpid())).touch()
    return sum(range(10**13))  # one C call holding the GIL: deaf to SIGTERM

mp.configure(exit_timeout=0)
handles = [mp.parallel(backend="process")(stuck_in_c)()]
executors = [mp.Executor(backend="process", max_workers=1) for _ in range(2)]
futures = [executor.submit(stuck_in_c) for executor in executors]
deadline = time.monotonic() + 30
while len(list(markers.iterdir())) < 3 and time.monotonic() < deadline:
    time.sleep(0.01)
print(len(list(markers.iterdir())), flush=True)
print(time.monotonic(), flush=True)  # the exit begins: the clock is the system's, the test reads it too
"""


@pytest.mark.timeout(60)
def test_exit_stops_the_workers_of_every_pool_and_executor_together(tmp_path: Path) -> None:
    # Each pool's worker stuck in C takes two grace periods to stop (SIGTERM, then
    # SIGKILL). Stopped one pool after another, this program took 7 s to exit; stopped
    # together, the two grace periods once. Only the exit is timed: the start of the
    # interpreter and of its three workers took up to 5 s of a loaded machine.
    result = subprocess.run(
        [sys.executable, "-c", STUCK_IN_C_IN_THREE_POOLS, str(tmp_path)],
        timeout=50,
        capture_output=True,
        text=True,
        env=child_env(),
    )
    ended = time.monotonic()
    assert result.returncode == 0, result.stderr
    stuck, exit_began = result.stdout.split()
    assert stuck == "3"  # every worker was stuck in C when the program ended
    for marker in tmp_path.iterdir():
        with pytest.raises(ProcessLookupError):
            os.kill(int(marker.name), 0)  # killed, none left behind
    exiting = ended - float(exit_began)  # CLOCK_MONOTONIC: one clock for every process of the system
    assert exiting < 6, exiting  # one pool after another: 3 x 2 s of grace at least


class _RecordedBackend(Backend):
    """Records when it is told to stop and when it is waited for."""

    name = "recorded"

    def __init__(self, label: str, record: list[str]) -> None:
        super().__init__()
        self._label = label
        self._record = record

    def begin_terminate(self) -> None:
        self._record.append(f"begin {self._label}")

    def terminate(self) -> None:
        self._record.append(f"wait {self._label}")


@pytest.mark.timeout(10)
def test_terminate_all_tells_every_pool_to_stop_before_waiting_for_any() -> None:
    record: list[str] = []
    terminate_all([_RecordedBackend("a", record), _RecordedBackend("b", record), _RecordedBackend("c", record)])
    assert record == ["begin a", "begin b", "begin c", "wait a", "wait b", "wait c"]


@pytest.mark.timeout(10)
def test_shutdown_tells_every_pool_to_stop_before_waiting_for_any(monkeypatch: pytest.MonkeyPatch) -> None:
    record: list[str] = []
    pools = [_RecordedBackend("a", record), _RecordedBackend("b", record)]
    monkeypatch.setattr(_runtime, "_all_backends", lambda: pools)
    try:
        assert mp.shutdown(timeout_secs=1) is True
    finally:
        mp.reset_shutdown()
    assert record == ["begin a", "begin b", "wait a", "wait b"]


@pytest.mark.timeout(40)
def test_sync_backend_at_exit() -> None:
    result, _ = run_python(
        """
        import atexit
        import makeparallel as mp

        @mp.parallel(backend="sync")
        def double(x):
            print("double", x, flush=True)
            return 2 * x

        # Registered before the library's own exit hook, so it runs after it.
        @atexit.register
        def late():
            print("late", double(21).get(), flush=True)

        handles = [double(i) for i in range(3)]  # never collected
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        "double 0",
        "double 1",
        "double 2",
        "double 21",
        "late 42",
    ]


EXIT_HOOK_PROGRAM = """
import atexit
import threading
import makeparallel as mp

@mp.parallel
def double(x):
    return 2 * x

@atexit.register
def late():
{hook}

mp.configure_thread_pool(num_threads=2)  # the pool exists, its exit hook too: it runs first
"""


def run_exit_hook(hook: str) -> subprocess.CompletedProcess[str]:
    """Run a program whose exit hook ``late``, run after the thread pool's own, is ``hook``; ``double`` is a task."""
    result, _ = run_python(EXIT_HOOK_PROGRAM.format(hook=textwrap.indent(textwrap.dedent(hook), "    ")))
    return result


@pytest.mark.timeout(40)
def test_thread_backend_task_submitted_after_the_exit_hook_still_runs() -> None:
    # Python 3.12+ refuses to start threads this late; get() then runs the task inline.
    result = run_exit_hook('print("late", double(21).get(), flush=True)')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "late 42\n"


def test_a_process_task_submitted_from_an_exit_hook_run_after_the_pools_own_still_runs() -> None:
    # The pool's exit hook stops every worker; one of the program's registered before the
    # first pool runs after it, and its process tasks failed with ShutdownError, where on
    # threads they ran. The workers started for them still end with the program. (Python
    # 3.12.0 to 3.12.2 start no thread there, the pool's loop thread neither: they say so.)
    result, _ = run_python(
        """
        import atexit
        import threading
        import psutil
        import makeparallel as mp

        @atexit.register  # before the pool exists: it runs after the pool's own exit hook
        def late():
            try:
                threading.Thread(target=int).start()
            except RuntimeError as refusal:
                try:
                    mp.parallel(backend="process")(abs)(-5)
                except RuntimeError as error:
                    print("refused", str(error) == str(refusal), flush=True)
                return
            results = mp.parallel_map(abs, [-1, -2], backend="process"), mp.parallel(backend="process")(abs)(-5).get(30)
            print("late", *results, flush=True)
            print(*(child.pid for child in psutil.Process().children(recursive=True)), flush=True)

        print("main", mp.parallel(backend="process")(abs)(-3).get(timeout=30), flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    if (3, 12, 0) <= sys.version_info[:3] < (3, 12, 3):
        assert result.stdout.splitlines() == ["main 3", "refused True"]
        return
    main, late, started = result.stdout.splitlines()
    assert (main, late) == ("main 3", "late [1, 2] 5")
    processes = []
    for pid in map(int, started.split()):
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=20)
    assert not alive


def test_a_task_submitted_from_an_exit_hook_where_no_thread_may_start_runs_in_the_submitting_thread() -> None:
    # Python 3.12.0 to 3.12.2 refuse every new thread from the exit hooks on, as
    # this program's hook makes every Python do.
    result = run_exit_hook(
        """
        def refuse(self):
            raise RuntimeError("can't create new thread at interpreter shutdown")

        threading.Thread.start = refuse
        print("late", double(21).get(), mp.gather([double(1), double(2)]), flush=True)
        print(sorted(h.get() for h in mp.as_completed([double(3), double(4)])), flush=True)
        try:
            double.options(timeout=5)(1).get(timeout=10)  # no wait may run it: it fails at once
        except RuntimeError as error:
            print("timed:", error, flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "late 42 [2, 4]",
        "[6, 8]",
        "timed: no worker thread could start for task 6 (double): can't create new thread at interpreter shutdown",
    ]


# -- Ctrl-C -----------------------------------------------------------------------------


@pytest.mark.timeout(40)
@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a child process (POSIX)")
def test_ctrl_c_interrupts_a_waiting_get() -> None:
    code = textwrap.dedent(
        """
        import threading
        import makeparallel as mp

        started = threading.Event()

        @mp.parallel
        def long():
            started.set()
            for _ in range(6000):  # about a minute, checking for cancellation
                mp.check_cancelled()
                threading.Event().wait(0.01)

        handle = long()
        assert started.wait(10)
        print("ready", flush=True)
        handle.get()
        print("get returned", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert "get returned" not in stdout
    assert elapsed < 10, f"exit took {elapsed:.1f} s after Ctrl-C"


# The lock named on the command line, held by a pool of that backend or by the library,
# after a first task there (a limit set): ``locks`` names each.
HELD_LOCKS = """
held = sys.argv[1]
backend = "process" if held == "process pool" else "thread"
mp.set_max_concurrent_tasks(4)
task = mp.parallel(backend=backend)(abs)
assert task(-1).get() == 1
locks = {
    "thread pool": lambda: _runtime.get_backend("thread")._lock,
    "process pool": lambda: _runtime.get_backend("process")._lock,
    "runtime": lambda: _runtime._lock,
    "deadline heap": lambda: _deadlines._condition,
    "limit": lambda: _runtime.global_limiter._lock,
}
"""
# A signal handler that shuts down runs on the main thread between two of its bytecodes:
# here, inside the with block, as the code it interrupted holds the lock.
SHUTDOWN_IN_A_HANDLER = """
import signal, sys, threading
import makeparallel as mp
from makeparallel import _deadlines, _runtime
""" + HELD_LOCKS + """
lock = locks[held]()
returned = []
signal.signal(signal.SIGTERM, lambda *_: returned.append(mp.shutdown(timeout_secs=5)))
with lock:
    signal.raise_signal(signal.SIGTERM)
    print("handler returned", returned, flush=True)
shutting = next(thread for thread in threading.enumerate() if thread.name == "makeparallel-shutdown")
shutting.join(30)
try:
    task(-2)
except mp.ShutdownError:
    print("shut down", flush=True)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("held", ["thread pool", "process pool", "runtime", "deadline heap", "limit"])
def test_shutdown_in_a_signal_handler_that_interrupted_a_held_lock_goes_on_in_a_thread(held: str) -> None:
    # It waited for the lock that the code it interrupted held: for good (a service's
    # SIGTERM handler, 1 run in 4 as the main thread submitted tasks).
    result = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_IN_A_HANDLER, held], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (0, "handler returned [False]\nshut down\n"), result.stderr
    assert "called from a signal handler that interrupted the main thread" in result.stderr


# The handler interrupts the main thread as it sends a task to an idle worker, its send lock held.
SHUTDOWN_IN_A_HANDLER_DURING_A_SEND = """
import signal, threading
import makeparallel as mp
from makeparallel import _runtime

task = mp.parallel(backend="process")(abs)
assert task(-1).get() == 1
worker = _runtime.get_backend("process")._workers[0]
returned = []
signal.signal(signal.SIGTERM, lambda *_: returned.append(mp.shutdown(timeout_secs=5)))
with worker.send_lock:
    signal.raise_signal(signal.SIGTERM)
    print("handler returned", returned, "channel open", worker.conn.fileno() != -1, flush=True)
next(thread for thread in threading.enumerate() if thread.name == "makeparallel-shutdown").join(30)
print("workers", len(_runtime.get_backend("process")._workers), flush=True)
"""


@pytest.mark.timeout(90)
def test_shutdown_in_a_signal_handler_that_interrupted_a_send_to_a_worker_goes_on_in_a_thread() -> None:
    # The shutdown closed the worker's channel under the send after a second: the send went
    # on with its message gone, and raised IndexError from the program's submission.
    result = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_IN_A_HANDLER_DURING_A_SEND], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (0, "handler returned [False] channel open True\nworkers 0\n"), (
        result.stdout + result.stderr
    )
    assert "called from a signal handler that interrupted the main thread" in result.stderr


@pytest.mark.timeout(90)
def test_shutdown_without_a_timeout_in_a_signal_handler_that_interrupted_a_held_lock_goes_on_in_a_thread() -> None:
    # Its check that a wait for good could end took the runtime's lock first: held below, for good.
    script = SHUTDOWN_IN_A_HANDLER.replace("mp.shutdown(timeout_secs=5)", "mp.shutdown(timeout_secs=None)")
    result = subprocess.run(
        [sys.executable, "-c", script, "runtime"], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (0, "handler returned [False]\nshut down\n"), result.stderr


# Every call a handler may make, in one handler, as the code it interrupted holds one lock:
# each returns, raises, or is deferred at once, and those deferred run in the order called.
CALLS_IN_A_HANDLER = """
import faulthandler, signal, sys, threading
import flask
import makeparallel as mp
from makeparallel import _deadlines, _runtime
from makeparallel.flask import MakeParallel

faulthandler.dump_traceback_later(20, exit=True)  # a hang names the call
""" + HELD_LOCKS + """
breaker = mp.CircuitBreaker("dependency", min_calls=1, window=1)
breaker.force_open()
measured = mp.profiled(name="measured")(abs)
measured(-1)
locks["open breaker"] = lambda: breaker._lock
locks["profiled record"] = lambda: mp._metrics.metrics_for("measured")._lock
lock = locks[held]()


def outcome(call):
    try:
        value = call()
    except Exception as error:
        return type(error).__name__
    if isinstance(value, dict) and "reasons" in value:
        return "unread" if any(r.startswith("not read") for r in value["reasons"]) else "report"
    return "ok" if not isinstance(value, bool) and value is not None else repr(value)


calls = {
    "health": mp.health,
    "get_all_metrics": mp.get_all_metrics,
    "get_metrics": lambda: mp.get_metrics("abs"),
    "metrics_snapshot": mp.metrics_snapshot,
    "shutdown": lambda: mp.shutdown(timeout_secs=5),
    "reset_shutdown": mp.reset_shutdown,
    "init_app": lambda: MakeParallel(flask.Flask("app")),
}
outcomes = []
signal.signal(signal.SIGTERM, lambda *_: outcomes.extend(f"{name}={outcome(call)}" for name, call in calls.items()))
with lock:
    signal.raise_signal(signal.SIGTERM)
print(*outcomes, flush=True)
for thread in threading.enumerate():
    if thread.name.startswith("makeparallel-") and thread.name.endswith(("shutdown", "reset")):
        thread.join(30)
print("shut down", _runtime.is_shut_down(), "task", task(-2).get(), flush=True)
"""

_UNREAD = "health=unread get_all_metrics=RuntimeError get_metrics=RuntimeError metrics_snapshot=RuntimeError"
_DEFERRED = "shutdown=False reset_shutdown=None init_app=RuntimeError"


class _HeldForLooks:
    """A lock seen held by its first ``looks`` looks, then free: another thread's brief hold."""

    def __init__(self, looks: int) -> None:
        self.looks = looks

    def locked(self) -> bool:
        self.looks -= 1
        return self.looks >= 0


class _PausingClock:
    """``time`` for ``_runtime``: each look at the clock a second after the last, as on a main thread starved of the GIL."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    def sleep(self, seconds: float) -> None:
        pass


@pytest.mark.timeout(30)
def test_a_brief_hold_seen_across_a_long_pause_of_the_main_thread_is_not_one_held_below(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The main thread, starved of the GIL past the bound, saw another thread's brief hold
    # on both sides of its pause: health() said "not read", the metrics raised, in a
    # program with no signal handler. A hold below is one seen held look after look.
    monkeypatch.setattr(_runtime, "time", _PausingClock())
    assert not _runtime.held_below(lambda: [_HeldForLooks(3)])
    assert _runtime.held_below(lambda: [_HeldForLooks(10**6)])  # held for good: the interrupted code's


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("held", "outcomes"),
    [
        ("thread pool", f"{_UNREAD} {_DEFERRED}"),
        ("process pool", f"{_UNREAD} {_DEFERRED}"),
        ("runtime", f"health=report get_all_metrics=ok get_metrics=ok metrics_snapshot=ok {_DEFERRED}"),
        (
            "deadline heap",
            "health=report get_all_metrics=RuntimeError get_metrics=RuntimeError metrics_snapshot=RuntimeError "
            + _DEFERRED,
        ),
        ("limit", f"health=report get_all_metrics=ok get_metrics=ok metrics_snapshot=ok {_DEFERRED}"),
        (
            "open breaker",
            "health=unread get_all_metrics=ok get_metrics=ok metrics_snapshot=RuntimeError "
            + "shutdown=True reset_shutdown=None init_app=ok",
        ),
        (
            "profiled record",
            "health=report get_all_metrics=RuntimeError get_metrics=ok metrics_snapshot=RuntimeError "
            + "shutdown=True reset_shutdown=None init_app=ok",
        ),
    ],
)
def test_calls_in_a_signal_handler_that_interrupted_a_held_lock_never_wait_for_it(held: str, outcomes: str) -> None:
    # health(), the metrics and reset_shutdown() (Flask's init_app too) waited for good for the
    # lock that the code the handler interrupted held (a handler logging them on SIGUSR1).
    # A reset deferred behind a deferred shutdown comes after it: the library ends open.
    pytest.importorskip("flask")
    result = subprocess.run(
        [sys.executable, "-c", CALLS_IN_A_HANDLER, held], capture_output=True, text=True, timeout=100, check=False
    )
    assert (result.returncode, result.stdout) == (0, f"{outcomes}\nshut down False task 2\n"), result.stderr


# A handler's "reload" (shutdown, then reset) deferred behind a task that runs on, and the
# program's own shutdown after it, from the thread that argv names: the library ends shut down.
SHUTDOWN_AFTER_A_DEFERRED_RESET = """
import faulthandler, signal, sys, threading
import makeparallel as mp
from makeparallel import _runtime

faulthandler.dump_traceback_later(20, exit=True)  # a hang names the call
gate, started = threading.Event(), threading.Event()


@mp.parallel
def runs_on():
    started.set()
    return gate.wait(15)


handle = runs_on()
assert started.wait(15)
signal.signal(signal.SIGHUP, lambda *_: print("handler", mp.shutdown(timeout_secs=15), mp.reset_shutdown(), flush=True))
with _runtime.get_backend("thread")._lock:
    signal.raise_signal(signal.SIGHUP)
def programs_shutdown():
    print("program's shutdown", mp.shutdown(timeout_secs=0), flush=True)
if sys.argv[1] == "main":
    programs_shutdown()
else:
    thread = threading.Thread(target=programs_shutdown)
    thread.start()
    thread.join()
gate.set()
assert handle.get() is True
for thread in threading.enumerate():
    if thread.name in ("makeparallel-shutdown", "makeparallel-reset"):
        thread.join(15)
print("shut down", _runtime.is_shut_down(), flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
@pytest.mark.parametrize("called_on", ["main", "another thread"])
def test_a_shutdown_called_after_a_deferred_reset_is_not_undone_by_it(called_on: str) -> None:
    # The reset, deferred behind the handler's shutdown (which waits for the task), ran once
    # that ended: after the program's own shutdown, called later, which it undid.
    result = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_AFTER_A_DEFERRED_RESET, called_on],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    expected = "handler False None\nprogram's shutdown False\nshut down True\n"
    assert (result.returncode, result.stdout) == (0, expected), result.stderr


# A handler that logs the pools on SIGUSR1, as the code it interrupted holds a pool's lock
# (or the runtime's, with no pool made yet): each info call returns or raises at once.
POOL_INFO_IN_A_HANDLER = """
import faulthandler, signal, sys
import makeparallel as mp
from makeparallel import _runtime

faulthandler.dump_traceback_later(20, exit=True)  # a hang names the call
held = sys.argv[1]
if held != "runtime":
    assert mp.parallel(backend=held)(abs)(-1).get() == 1
lock = _runtime._lock if held == "runtime" else _runtime.get_backend(held)._lock


def outcome(call):
    try:
        return "ok" if isinstance(call(), dict) else "?"
    except RuntimeError as error:
        assert "signal handler" in str(error) and "another thread" in str(error), error
        return "RuntimeError"


outcomes = []
calls = {"thread": mp.get_thread_pool_info, "process": mp.get_process_pool_info}
signal.signal(signal.SIGUSR1, lambda *_: outcomes.extend(f"{name}={outcome(call)}" for name, call in calls.items()))
with lock:
    signal.raise_signal(signal.SIGUSR1)
print(*outcomes, *(f"{name}={outcome(call)}" for name, call in calls.items()), flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")
@pytest.mark.parametrize(
    ("held", "outcomes"),
    [
        ("thread", "thread=RuntimeError process=ok"),
        ("process", "thread=ok process=RuntimeError"),
        ("runtime", "thread=RuntimeError process=RuntimeError"),
    ],
)
def test_pool_info_in_a_signal_handler_that_interrupted_a_held_lock_never_waits_for_it(held: str, outcomes: str) -> None:
    # get_thread_pool_info() and get_process_pool_info() waited for good for the lock that the
    # code the handler interrupted held (a handler logging the pools on SIGUSR1). Out of the
    # handler, the lock released, both read the pools again.
    result = subprocess.run(
        [sys.executable, "-c", POOL_INFO_IN_A_HANDLER, held], capture_output=True, text=True, timeout=50, check=False
    )
    assert (result.returncode, result.stdout) == (0, f"{outcomes} thread=ok process=ok\n"), result.stderr


# A handler that configures the library on SIGUSR1 (a "reload"), as the code it interrupted
# holds one of its locks: each call applies its change, or raises at once and changes nothing.
CONFIGURE_IN_A_HANDLER = """
import faulthandler, signal, sys
import makeparallel as mp
from makeparallel import _deadlines, _memory_guard, _runtime

faulthandler.dump_traceback_later(20, exit=True)  # a hang names the call
mp.configure_memory_limit(99.99)
""" + HELD_LOCKS + """
locks["memory limit"] = lambda: _memory_guard._guard_lock
dask = {}
if held == "dask pool":
    import distributed

    dask = {"dask_client": object.__new__(distributed.Client)}  # its type is checked, then it is kept
    locks[held] = lambda: _runtime.get_backend("dask")._lock
lock = locks[held]()
""" + REFUSED_OR_OK + """

calls = {
    "configure": lambda: mp.configure(exit_timeout=7, **dask),
    "thread": lambda: mp.configure_thread_pool(3),
    "process": lambda: mp.configure_process_pool(2),
    "memory": lambda: mp.configure_memory_limit(99.98),
    "limit": lambda: mp.set_max_concurrent_tasks(8),
    "process_info": mp.get_process_pool_info,
}
""" + CALLS_UNDER_THE_LOCK + """
print("limit", _runtime.global_limiter.limit, flush=True)
print(*(f"{name}={outcome(call)}" for name, call in calls.items()), flush=True)
"""
_CONFIGURED = "configure=ok thread=ok process=ok memory=ok limit=ok process_info=ok"


@pytest.mark.timeout(90)
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")
@pytest.mark.parametrize(
    ("held", "outcomes", "limit"),
    [
        ("thread pool", "configure=ok thread=RuntimeError process=ok memory=RuntimeError limit=ok process_info=ok", 8),
        (
            "process pool",
            "configure=ok thread=ok process=RuntimeError memory=RuntimeError limit=ok process_info=RuntimeError",
            8,
        ),
        ("runtime", "configure=ok thread=ok process=RuntimeError memory=ok limit=ok process_info=RuntimeError", 8),
        ("deadline heap", _CONFIGURED, 8),
        ("limit", "configure=ok thread=ok process=ok memory=ok limit=RuntimeError process_info=ok", 4),
        (
            "memory limit",
            "configure=ok thread=ok process=RuntimeError memory=RuntimeError limit=ok process_info=RuntimeError",
            8,
        ),
        ("dask pool", "configure=RuntimeError thread=ok process=ok memory=ok limit=ok process_info=ok", 8),
    ],
)
def test_configuring_in_a_signal_handler_that_interrupted_a_held_lock_never_waits_for_it(
    held: str, outcomes: str, limit: int
) -> None:
    # configure(dask_client=...), configure_thread_pool(), configure_process_pool(),
    # configure_memory_limit() and set_max_concurrent_tasks() waited for good for the lock
    # that the code the handler interrupted held (a handler reconfiguring on SIGUSR1), as did
    # get_process_pool_info() with no pool made yet as that code held the memory limit's.
    # Refused, a call changes nothing (the limit stays 4); out of the handler, each applies.
    if held == "dask pool":
        pytest.importorskip("distributed")
    result = subprocess.run(
        [sys.executable, "-c", CONFIGURE_IN_A_HANDLER, held], capture_output=True, text=True, timeout=80, check=False
    )
    expected = f"{outcomes}\nlimit {limit}\n{_CONFIGURED}\n"
    assert (result.returncode, result.stdout) == (0, expected), result.stderr


# The same, a task that never ends: exit waits for the shutdown going on, until a Ctrl-C.
DEFERRED_SHUTDOWN_AT_EXIT = """
import signal, threading
import makeparallel as mp
from makeparallel import _interruptible, _runtime

join = _interruptible.join


def joined_at_exit(thread, timeout):  # says when exit waits: the Ctrl-C comes then
    print("exit waits", flush=True)
    return join(thread, timeout)


_interruptible.join = joined_at_exit

started = threading.Event()


@mp.parallel
def forever():
    started.set()
    threading.Event().wait()


forever()
started.wait(30)
signal.signal(signal.SIGTERM, lambda *_: mp.shutdown(timeout_secs=None))
with _runtime._lock:
    signal.raise_signal(signal.SIGTERM)
"""


@pytest.mark.timeout(90)
def test_a_ctrl_c_ends_exits_wait_for_a_shutdown_that_goes_on_in_a_thread() -> None:
    # The thread was not a daemon: the interpreter waited for it in one piece, which
    # a Ctrl-C did not end, and shutdown(None) beside a task that never ends held the exit for good.
    err = interrupted_once_it_says([sys.executable, "-c", DEFERRED_SHUTDOWN_AT_EXIT], "exit waits", timeout=60).stderr
    assert "Traceback" not in err, err
    assert "abandoned after Ctrl-C ended makeparallel.shutdown()" in err, err


# A deferred shutdown that ended, then reset_shutdown(): exit waits for the tasks taken since, as ever.
DEFERRED_SHUTDOWN_RESET = """
import atexit, signal, threading
import makeparallel as mp
from makeparallel import _runtime

ran = []
atexit.register(lambda: print("ran", ran, flush=True))  # registered first: runs last
mp.parallel(abs)(1).result()  # the pools' exit hook registered before the shutdown's
signal.signal(signal.SIGTERM, lambda *_: mp.shutdown(timeout_secs=5))
with _runtime._lock:
    signal.raise_signal(signal.SIGTERM)
for thread in threading.enumerate():
    if thread.name == "makeparallel-shutdown":
        thread.join()
mp.reset_shutdown()

exit_waits = threading.Event()
wait_ended = _runtime._wait_ended


def wait_ended_at_exit(backends, timeout):  # the task ends only once exit waits for it
    exit_waits.set()
    return wait_ended(backends, timeout)


_runtime._wait_ended = wait_ended_at_exit


@mp.parallel
def later():
    exit_waits.wait()
    ran.append(1)


later()
"""


@pytest.mark.timeout(90)
def test_exit_waits_for_the_tasks_taken_after_a_reset_that_followed_a_shutdown_gone_on_in_a_thread() -> None:
    # Exit's hook for that shutdown marked the library shut down once more, its thread long over:
    # the pools' hook then abandoned the tasks the program submitted after reset_shutdown().
    result = subprocess.run(
        [sys.executable, "-c", DEFERRED_SHUTDOWN_RESET], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout) == (0, "ran [1]\n"), result.stderr
    assert "abandoned" not in result.stderr, result.stderr
