"""Task timeouts: the handle fails at the deadline, the task is asked to stop, and
a worker stuck in a timed-out task is replaced, within bounds.

Deadlines are short (0.1 s) and every wait for them is bounded by seconds, so a
slow machine makes these tests slower, never wrong.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import makeparallel as mp
from makeparallel.testing import wait_until_idle
from pool_helpers import resize, wait_until

# -- helpers ----------------------------------------------------------------------------


class Stopped:
    """What a cooperative task saw when ``check_cancelled()`` stopped it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: BaseException | None = None


def cooperate(stopped: Stopped, never: threading.Event) -> str:
    """Poll ``check_cancelled()`` until it raises; record what it raised."""
    try:
        for _ in range(3000):  # about 30 s at most: the test times out first
            if never.wait(0.01):
                return "released"
            mp.check_cancelled()
        return "never stopped"
    except BaseException as error:
        stopped.error = error
        raise
    finally:
        stopped.event.set()


class Monitor:
    """Samples the pool's live thread count from a thread of its own; keeps the maximum."""

    def __init__(self) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.most = max(self.most, mp.get_thread_pool_info()["live_threads"])

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()
        return self.most


# -- the handle and the task ------------------------------------------------------------


@pytest.mark.timeout(20)
def test_cooperative_task_times_out_with_a_clear_error(gate: threading.Event) -> None:
    stopped = Stopped()

    @mp.parallel(timeout=0.1)
    def poll() -> str:
        return cooperate(stopped, gate)

    handle = poll()
    with pytest.raises(mp.TaskTimeoutError) as caught:
        handle.get(timeout=5)
    error = caught.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, mp.TaskError)
    message = str(error)
    assert f"task {handle.get_task_id()} ({poll.__wrapped__.__qualname__})" in message
    assert "timed out after 0.1 s" in message
    assert "check_cancelled()" in message
    assert handle.status == "timed out"
    assert handle.is_ready() and not handle.cancelled()
    # Inside the task, check_cancelled() raised the same kind of error.
    assert stopped.event.wait(5)
    assert isinstance(stopped.error, mp.TaskTimeoutError)
    assert "timed out after 0.1 s" in str(stopped.error)


async def _sleep_until_cancelled(cancelled: threading.Event | None) -> str:
    try:
        await asyncio.sleep(30)  # the test's timeout comes first
    except asyncio.CancelledError:
        if cancelled is not None:
            cancelled.set()
        raise
    return "never cancelled"


def _returns_a_coroutine(cancelled: threading.Event | None) -> Any:
    return _sleep_until_cancelled(cancelled)


# Where a timed-out coroutine task runs, and what stops it there: its cancel at
# its next await, except on the process backend, where its worker is killed.
COROUTINE_TIMEOUTS = {
    "thread": ("thread", False, "its coroutine was cancelled: it stops at its next await"),
    "sync": ("sync", False, "its coroutine was cancelled: it stops at its next await"),
    "sync on the caller's loop": ("sync", True, "its coroutine was cancelled: it stops at its next await"),
    "process": ("process", False, "its worker process was stopped"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("function", [_sleep_until_cancelled, _returns_a_coroutine], ids=["async def", "returns one"])
@pytest.mark.parametrize("where", list(COROUTINE_TIMEOUTS))
def test_a_timed_out_coroutine_task_is_told_how_it_stops(where: str, function: Any) -> None:
    # On threads the message advised check_cancelled(), which a coroutine task
    # needs not call: it is cancelled, and stops at its next await.
    backend, on_a_loop, says = COROUTINE_TIMEOUTS[where]
    in_process = backend != "process"
    cancelled = threading.Event() if in_process else None
    task = mp.parallel(function).options(backend=backend, timeout=0.1)

    async def call_on_a_loop() -> mp.AsyncHandle[Any]:
        handle = task(cancelled)
        with pytest.raises(mp.TaskTimeoutError):
            await handle
        return handle

    handle = asyncio.run(call_on_a_loop()) if on_a_loop else task(cancelled)
    with pytest.raises(mp.TaskTimeoutError) as caught:
        handle.get(timeout=20)
    message = str(caught.value)
    assert "timed out after 0.1 s" in message and says in message, message
    assert "check_cancelled" not in message, message
    if cancelled is not None:
        assert cancelled.wait(10), "the coroutine was never cancelled"


@pytest.mark.timeout(20)
def test_the_handle_fails_at_the_deadline_even_if_the_task_goes_on(gate: threading.Event) -> None:
    started, finished = threading.Event(), threading.Event()

    @mp.parallel(timeout=0.1)
    def ignore_deadline() -> str:
        started.set()
        assert gate.wait(30)  # never calls check_cancelled()
        finished.set()
        return "late"

    handle = ignore_deadline()
    assert started.wait(5)
    started_at = time.monotonic()
    with pytest.raises(mp.TaskTimeoutError, match="timed out after 0.1 s"):
        handle.get(timeout=5)  # a wait that gave up would say "gave up waiting"
    assert time.monotonic() - started_at < 4
    assert not finished.is_set(), "the handle only failed once the task returned"
    assert handle.status == "timed out"
    gate.set()
    assert finished.wait(5)
    # The late result is dropped: the handle stays timed out.
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(timeout=5)
    assert handle.status == "timed out"


@pytest.mark.timeout(20)
def test_a_stuck_timed_out_task_does_not_block_the_pool(gate: threading.Event) -> None:
    resize(1)
    started, finished = threading.Event(), threading.Event()

    @mp.parallel(timeout=0.1)
    def stuck() -> None:
        started.set()
        assert gate.wait(30)
        finished.set()

    @mp.parallel
    def later() -> int:
        return threading.get_ident()

    stuck_handle = stuck()
    assert started.wait(5)
    queued = later()  # queued behind the stuck task on the one worker
    assert stuck_handle.wait(5)
    assert stuck_handle.status == "timed out"
    # A bounded get never runs the task inline: a replacement worker must run it.
    assert queued.get(timeout=5) != threading.get_ident()
    assert not finished.is_set(), "the stuck task was supposed to be still held"
    info = mp.get_thread_pool_info()
    assert info["stuck_threads"] == 1
    assert info["live_threads"] == 2
    gate.set()
    assert finished.wait(5)
    assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0)
    assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 1)


@pytest.mark.timeout(30)
def test_replacing_stuck_workers_is_bounded(gate: threading.Event) -> None:
    resize(1)
    started = [threading.Event() for _ in range(3)]
    monitor = Monitor()
    try:

        @mp.parallel(timeout=0.1)
        def stuck(i: int) -> int:
            started[i].set()
            assert gate.wait(30)
            return i

        handles = [stuck(i) for i in range(3)]
        # The first times out and is replaced; the second starts, times out too.
        assert started[0].wait(5)
        assert handles[0].wait(5)
        assert started[1].wait(5)
        assert handles[1].wait(5)
        assert [h.status for h in handles[:2]] == ["timed out", "timed out"]
        info = mp.get_thread_pool_info()
        # With 1 thread configured, at most 1 replacement: the third task waits.
        assert info["live_threads"] <= 2, info
        assert info["stuck_threads"] == 2, info
        assert info["queued_tasks"] == 1, info
        assert not started[2].is_set()
        assert handles[2].status == "pending"
    finally:
        gate.set()
        most = monitor.stop()
    assert most <= 2, f"a 1-thread pool ran {most} threads at once"
    # Released, the stuck workers run the last task and the pool shrinks back.
    assert handles[2].get(timeout=5) == 2
    assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0)
    assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 1), (
        mp.get_thread_pool_info()
    )


def _by_decorator(fn: Callable[..., str]) -> Callable[[], mp.AsyncHandle[str]]:
    return mp.parallel(timeout=0.1)(fn)


def _at_call_time(fn: Callable[..., str]) -> Callable[[], mp.AsyncHandle[str]]:
    parallel_fn = mp.parallel(fn)
    return lambda: parallel_fn(timeout=0.1)


def _by_options(fn: Callable[..., str]) -> Callable[[], mp.AsyncHandle[str]]:
    return mp.parallel(fn).options(timeout=0.1)


def _call_time_overrides_decorator(fn: Callable[..., str]) -> Callable[[], mp.AsyncHandle[str]]:
    parallel_fn = mp.parallel(timeout=60)(fn)
    return lambda: parallel_fn(timeout=0.1)


def _options_override_decorator(fn: Callable[..., str]) -> Callable[[], mp.AsyncHandle[str]]:
    return mp.parallel(timeout=60)(fn).options(timeout=0.1)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "make",
    [
        _by_decorator,
        _at_call_time,
        _by_options,
        _call_time_overrides_decorator,
        _options_override_decorator,
    ],
)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_every_way_of_setting_a_timeout(
    make: Callable[[Callable[..., str]], Callable[[], mp.AsyncHandle[str]]],
    backend: str,
    gate: threading.Event,
) -> None:
    mp.configure(backend=backend)
    stopped = Stopped()

    def poll() -> str:
        return cooperate(stopped, gate)

    submit = make(poll)
    handle = submit()
    if backend == "sync":
        # The task ran to its end (stopped by check_cancelled) inside the call.
        assert handle.is_ready()
    with pytest.raises(mp.TaskTimeoutError, match="timed out after 0.1 s"):
        handle.get(timeout=5)
    assert stopped.event.wait(5)
    assert isinstance(stopped.error, mp.TaskTimeoutError)
    assert handle.status == "timed out"


@pytest.mark.timeout(20)
def test_sync_backend_timeout_reports_the_thread_it_ran_on(gate: threading.Event) -> None:
    stopped = Stopped()
    ran_on: list[int] = []

    @mp.parallel(backend="sync", timeout=0.1)
    def poll() -> str:
        ran_on.append(threading.get_ident())
        return cooperate(stopped, gate)

    handle = poll()
    assert ran_on == [threading.get_ident()]
    assert handle.status == "timed out"
    assert isinstance(stopped.error, mp.TaskTimeoutError)
    with pytest.raises(TimeoutError):
        handle.get()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_task_that_ends_in_time_is_not_timed_out_later(
    backend: str, gate: threading.Event
) -> None:
    @mp.parallel(backend=backend, timeout=0.1)
    def quick() -> str:
        return "done"

    handle = quick()
    assert handle.get(timeout=5) == "done"

    # Deadlines are handled in order by one thread: once a later deadline has
    # fired, the quick task's deadline has been handled too.
    stopped = Stopped()

    @mp.parallel(timeout=0.2)
    def marker() -> str:
        return cooperate(stopped, gate)

    later = marker()
    assert later.wait(5)
    assert later.status == "timed out"
    assert handle.status == "succeeded"
    assert handle.get() == "done"
    assert handle.exception() is None


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
def test_bad_timeouts_are_rejected(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="timeout must be a number of seconds"):
        mp.parallel(timeout=value)

    f = mp.parallel(lambda: None)
    with pytest.raises(error, match="timeout must be a number of seconds"):
        f(timeout=value)  # type: ignore[call-arg]
    with pytest.raises(error, match="timeout must be a number of seconds"):
        f.options(timeout=value)
    assert mp.get_active_task_count() == 0  # a rejected call submits nothing


@pytest.mark.timeout(20)
def test_infinite_timeout_means_none(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(timeout=float("inf"))
    def held() -> int:
        started.set()
        assert gate.wait(30)
        return threading.get_ident()

    handle = held()
    # No timeout, so an unbounded get from an idle thread may run it inline:
    # what matters is that it never times out.
    assert started.wait(5)
    assert not handle.wait(0.2)
    gate.set()
    assert handle.get(timeout=5) != threading.get_ident()


# -- seconds too many for a float ------------------------------------------------------------

HUGE = 10**400  # seconds: an int too large for a float (float(HUGE) raises OverflowError)


def _done() -> str:
    return "done"


def _same(value: int) -> int:
    return value


async def _as_completed_async(handle: mp.AsyncHandle[str], timeout: Any) -> list[str]:
    return [ended.get() async for ended in mp.as_completed([handle], timeout=timeout)]


def _in_group(timeout: Any) -> str:
    with mp.TaskGroup(timeout=timeout) as group:
        handle = group.submit(_done)
    return handle.get()


def _executor_map(timeout: Any) -> list[int]:
    with mp.Executor(max_workers=1) as executor:
        return list(executor.map(_same, [1, 2], timeout=timeout))


# Every public parameter of seconds where math.inf means no limit: its name, a call
# given an ended task and the seconds, and what that call gives without a limit.
UNLIMITED: list[tuple[str, str, Callable[[mp.AsyncHandle[str], Any], object], object]] = [
    ("parallel(timeout)", "timeout", lambda ended, t: mp.parallel(timeout=t)(_done)().get(30), "done"),
    ("call-time timeout", "timeout", lambda ended, t: mp.parallel(_done)(timeout=t).get(30), "done"),  # type: ignore[call-arg]
    ("options(timeout)", "timeout", lambda ended, t: mp.parallel(_done).options(timeout=t)().get(30), "done"),
    ("get", "timeout", lambda ended, t: ended.get(t), "done"),
    ("result", "timeout", lambda ended, t: ended.result(t), "done"),
    ("exception", "timeout", lambda ended, t: ended.exception(t), None),
    ("wait", "timeout", lambda ended, t: ended.wait(t), True),
    ("wait(timeout_secs)", "timeout_secs", lambda ended, t: ended.wait(timeout_secs=t), True),
    ("cancel_with_timeout", "timeout_secs", lambda ended, t: ended.cancel_with_timeout(t), True),
    ("mp.wait", "timeout", lambda ended, t: mp.wait([ended], timeout=t).done == {ended}, True),
    ("gather", "timeout", lambda ended, t: mp.gather([ended], timeout=t), ["done"]),
    ("as_completed", "timeout", lambda ended, t: [h.get() for h in mp.as_completed([ended], timeout=t)], ["done"]),
    ("async for as_completed", "timeout", lambda ended, t: asyncio.run(_as_completed_async(ended, t)), ["done"]),
    ("gather_async", "timeout", lambda ended, t: asyncio.run(mp.gather_async([ended], timeout=t)), ["done"]),
    ("parallel_map", "timeout", lambda ended, t: mp.parallel_map(_same, [1, 2], timeout=t), [1, 2]),
    ("imap", "timeout", lambda ended, t: list(mp.imap(_same, [1, 2], timeout=t)), [1, 2]),
    ("TaskGroup", "timeout", lambda ended, t: _in_group(t), "done"),
    ("Executor.map", "timeout", lambda ended, t: _executor_map(t), [1, 2]),
    ("wait_until_idle", "timeout", lambda ended, t: wait_until_idle(t), True),
    ("configure(exit_timeout)", "exit_timeout", lambda ended, t: mp.configure(exit_timeout=t), None),
    ("shutdown", "timeout_secs", lambda ended, t: mp.shutdown(timeout_secs=t), True),  # the fixture resets it
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "call", "unlimited"), [row[1:] for row in UNLIMITED], ids=[row[0] for row in UNLIMITED])
def test_seconds_too_many_for_a_float_mean_no_limit_as_infinity_does(
    name: str, call: Callable[[mp.AsyncHandle[str], Any], object], unlimited: object
) -> None:
    # float(HUGE) raised OverflowError, from the check or from the wait itself.
    ended = mp.parallel(_done)()
    assert ended.wait(30)
    assert call(ended, math.inf) == unlimited
    assert call(ended, HUGE) == unlimited


# Executor.map takes a negative timeout as a deadline already past, as the standard map does.
REFUSING_NEGATIVE = [row for row in UNLIMITED if row[0] != "Executor.map"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "call"), [row[1:3] for row in REFUSING_NEGATIVE], ids=[row[0] for row in REFUSING_NEGATIVE])
def test_negative_seconds_too_many_for_a_float_are_refused_by_name(
    name: str, call: Callable[[mp.AsyncHandle[str], Any], object]
) -> None:
    # Refused with OverflowError, not the ValueError of -1; and its 401 digits have no place in a message.
    ended = mp.parallel(_done)()
    assert ended.wait(30)
    with pytest.raises(ValueError, match=rf"^{name} must be a number of seconds >=? 0.* got an int of about -10\*\*400$"):
        call(ended, -HUGE)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("waiter", ["main thread", "task"])
def test_a_wait_of_seconds_too_many_for_a_float_ends_with_the_task(gate: threading.Event, waiter: str) -> None:
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "done"

    handle = held()
    assert started.wait(10)
    # The gate opens while the waiter waits, or before: either way the wait must end with the task.
    opener = threading.Thread(target=gate.set)
    opener.start()
    try:
        if waiter == "main thread":  # in slices, as Ctrl-C needs
            assert handle.get(HUGE) == "done"
        else:  # in one piece, as long as a lock takes
            assert mp.parallel(lambda: handle.get(HUGE))().get(30) == "done"
    finally:
        opener.join()


class _FaultyDeadline:
    """A deadline whose ``_expire()`` raises, as a fault of the library itself would."""

    def _expire(self) -> None:
        raise RuntimeError("a fault while ending a task")


class _NotedDeadline:
    def __init__(self) -> None:
        self.expired = threading.Event()

    def _expire(self) -> None:
        self.expired.set()


@pytest.mark.timeout(20)
def test_a_fault_ending_one_deadline_leaves_the_others_enforced(caplog: pytest.LogCaptureFixture) -> None:
    from makeparallel import _deadlines

    faulty, later = _FaultyDeadline(), _NotedDeadline()
    now = time.perf_counter()
    with caplog.at_level("CRITICAL", logger="makeparallel"):
        _deadlines.schedule(faulty, now)
        _deadlines.schedule(later, now + 0.01)  # due after the faulty one, already waiting on the heap
        assert later.expired.wait(10), "the deadline thread died of the fault: later timeouts never fired"
    assert any("a fault while ending a task" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.timeout(20)
def test_a_deadline_centuries_away_leaves_the_deadline_thread_waiting() -> None:
    from makeparallel import _deadlines

    far, near = _NotedDeadline(), _NotedDeadline()
    now = time.perf_counter()
    _deadlines.schedule(far, now + 1e10, weakly=True)  # 317 years: past what a lock's wait takes
    _deadlines.schedule(near, now)
    assert near.expired.wait(10)
    watcher = _deadlines._thread
    assert watcher is not None
    watcher.join(0.5)  # the thread goes on to wait for the far one: it must not die of it
    assert watcher.is_alive(), "the deadline thread died waiting for a far deadline"
    del far


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("value", "error"), [("soon", TypeError), (-1, ValueError)])
def test_exit_timeout_s_refusal_does_not_offer_none(value: object, error: type[Exception]) -> None:
    # configure()'s None leaves a setting as it is: "or None" in the message offered a no-op.
    with pytest.raises(error, match="^exit_timeout must be a number of seconds") as refused:
        mp.configure(exit_timeout=value)  # type: ignore[arg-type]
    assert "None" not in str(refused.value)
