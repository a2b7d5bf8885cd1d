"""``mp.Executor`` behaves as a ``concurrent.futures.Executor``: the standard library's expectations.

The behaviours CPython's own executor tests check (map order and timeout,
shutdown with cancel_futures, submit after shutdown, exceptions, a broken
worker), on the thread and process backends, plus what only this library
adds: the handle behind each future, and a crash that fails only its task.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import concurrent.futures as cf
import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import pytest

import makeparallel as mp
from makeparallel import _executor, _runtime
from makeparallel._admission import Limiter, Recipient

# The tasks live in pool_helpers: a new worker imports the module of a task it runs,
# and this one imports pytest (about 0.3 s a worker, for every executor's workers).
from pool_helpers import (
    CalledBack,
    FalseyError,
    Flags,
    SubmitCounting,
    SubmitNegating,
    double_later,
    exit_on,
    exit_on_four,
    fail,
    fail_falsely,
    fail_on_b,
    make_payload,
    mark_later_checked,
    mark_then_wait,
    Scaler,
    Steps,
    mul,
    own_task_id,
    parallel_double_later,
    parallel_mul,
    pid_once_released,
    queued_behind_the_first,
    refusal_to_shut_down_from_its_own_task,
    run_an_executor_of_its_own,
    time_out,
    wait_for_a_dying_task_on_four,
    wait_for_flag,
    wait_until,
)

BACKENDS = ["thread", "process"]


@pytest.fixture(params=BACKENDS)
def executor(request: pytest.FixtureRequest) -> Iterator[mp.Executor]:
    with mp.Executor(backend=request.param, max_workers=2) as executor:
        yield executor


@pytest.fixture
def flags(tmp_path: object) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("release")  # whatever the test did, no task waits past its end


def test_submit_returns_a_real_future_linked_to_its_handle(executor: mp.Executor) -> None:
    future = executor.submit(mul, 6, y=7)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 42
    assert isinstance(future.handle, mp.AsyncHandle)
    assert future.handle.get() == 42
    assert future.done() and not future.running() and not future.cancelled()


def test_map_keeps_input_order(executor: mp.Executor) -> None:
    assert list(executor.map(mul, range(50), range(50, 100))) == [x * y for x, y in zip(range(50), range(50, 100))]


@pytest.mark.parametrize("chunksize", [1, 3, 100])
@pytest.mark.parametrize("buffersize", [None, 1, 4])
def test_map_chunksize_and_buffersize_keep_order(executor: mp.Executor, chunksize: int, buffersize: int | None) -> None:
    results = executor.map(mul, range(20), itertools.repeat(3), chunksize=chunksize, buffersize=buffersize)
    assert list(results) == [3 * x for x in range(20)]


def test_map_with_buffersize_reads_an_endless_input_lazily() -> None:
    with mp.Executor(max_workers=2) as executor:
        results = executor.map(abs, itertools.count(), buffersize=4)
        assert list(itertools.islice(results, 10)) == list(range(10))
        results.close()  # type: ignore[attr-defined]


def test_map_without_buffersize_submits_everything_at_the_call() -> None:
    seen: list[int] = []
    with mp.Executor(backend="sync") as executor:
        executor.map(seen.append, range(5))  # never iterated
    assert seen == list(range(5))


@pytest.mark.parametrize(("chunksize", "buffersize"), [(1, None), (3, None), (1, 2), (3, 1)])
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_map_makes_its_calls_through_a_subclasss_submit(backend: str, chunksize: int, buffersize: int | None) -> None:
    # As concurrent.futures' map (and ProcessPoolExecutor's, a chunk a call): a subclass that logs,
    # counts or wraps calls in submit sees every call a map makes. Ours went around it.
    with SubmitCounting(backend=backend, max_workers=2) as executor:
        results = executor.map(mul, range(7), itertools.repeat(3), chunksize=chunksize, buffersize=buffersize)
        assert list(results) == [3 * x for x in range(7)]
    calls = [(x, 3) for x in range(7)]
    if chunksize == 1:
        assert executor.calls == [(mul, call) for call in calls]
    else:  # each chunk is one call, with the chunk's argument tuples as its one argument
        assert [list(args[0]) for _, args in executor.calls] == [calls[:3], calls[3:6], calls[6:]]
        assert all(len(args) == 1 for _, args in executor.calls)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_with_buffersize_refills_through_a_subclasss_submit(chunksize: int) -> None:
    # As Python 3.14's: buffersize calls at the call, then one more as each result is taken.
    with SubmitCounting(max_workers=2) as executor:
        results = executor.map(abs, itertools.count(), chunksize=chunksize, buffersize=2)
        assert len(executor.calls) == 2
        assert list(itertools.islice(results, 5 * chunksize)) == list(range(5 * chunksize))
        assert len(executor.calls) == 2 + 5
        results.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", BACKENDS)
def test_map_runs_the_calls_a_subclasss_submit_wraps(backend: str) -> None:
    with SubmitNegating(backend=backend, max_workers=2) as executor:
        assert executor.submit(mul, 2, 3).result(timeout=30) == -6
        assert list(executor.map(mul, range(5), itertools.repeat(2))) == [-2 * x for x in range(5)]


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_makes_its_calls_through_a_submit_replaced_on_the_instance(chunksize: int) -> None:
    # mock.patch.object(executor, "submit", ...) is how tests count calls: the class's submit is ours still.
    with mp.Executor(max_workers=2) as executor:
        with mock.patch.object(executor, "submit", wraps=executor.submit) as submit:
            assert list(executor.map(abs, range(-4, 0), chunksize=chunksize)) == [4, 3, 2, 1]
        assert submit.call_count == 4 // chunksize


def test_map_takes_the_futures_of_a_submit_that_submits_elsewhere() -> None:
    # A subclass's submit may hand the call to another executor: its futures are standard ones.
    class Forwarding(mp.Executor):
        def __init__(self, other: cf.Executor) -> None:
            super().__init__(backend="sync")
            self.other = other
            self.forwarded = 0

        def submit(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> cf.Future[object]:
            self.forwarded += 1
            return self.other.submit(fn, *args, **kwargs)  # type: ignore[return-value]

    with cf.ThreadPoolExecutor(max_workers=2) as other, Forwarding(other) as executor:
        assert list(executor.map(mul, range(6), itertools.repeat(2), chunksize=4, timeout=30)) == [2 * x for x in range(6)]
        assert executor.forwarded == 2
        results = executor.map(fail_on_b, ["a", "b", "c"])
        assert next(results) == "a"
        with pytest.raises(ValueError, match="b"):
            next(results)
        assert executor.forwarded == 2 + 3


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"chunksize": 0}, ValueError, "chunksize must be an int >= 1, got 0"),
        ({"buffersize": 0}, ValueError, "buffersize must be an int >= 1 or None, got 0"),
        ({"buffersize": 1.5}, TypeError, "buffersize must be an int >= 1 or None, got 1.5"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a number of seconds >= 0"),
    ],
)
def test_map_rejects_bad_options(options: dict[str, object], error: type[Exception], pattern: str) -> None:
    with mp.Executor(backend="sync") as executor, pytest.raises(error, match=pattern):
        executor.map(abs, [1], **options)


def test_map_timeout_raises_timeout_error_and_cancels_the_rest(flags: Flags) -> None:
    with mp.Executor(max_workers=1) as executor:
        results = executor.map(wait_for_flag, [flags, flags, flags], ["release"] * 3, timeout=0.05)
        with pytest.raises(TimeoutError):
            next(results)
        futures_left = executor._backend.active_count()
        flags.set("release")
    assert futures_left <= 1  # the running one goes on; the queued ones were cancelled


def test_map_with_a_timeout_already_past_gives_what_has_ended_then_times_out(flags: Flags) -> None:
    # timeout=deadline - time.monotonic() goes negative once the deadline passed: the
    # standard map takes it as a deadline already past, and gives the results that are
    # there; this one raised ValueError from map() itself.
    with mp.Executor(backend="sync") as executor:  # each call ends as it is submitted
        assert list(executor.map(abs, [-1, -2], timeout=-1)) == [1, 2]
        assert list(executor.map(abs, [-3], timeout=-(10**400))) == [3]  # too many seconds for a float: as -inf
    with mp.Executor(max_workers=1) as executor:
        results = executor.map(wait_for_flag, [flags, flags], ["release"] * 2, timeout=-0.5)
        with pytest.raises(TimeoutError):
            next(results)
        flags.set("release")


def answer_once_awaited_by(waiting_thread: int, given_up: threading.Event) -> Callable[..., str]:
    """A task that answers once ``waiting_thread`` waits in a ``threading.Condition`` (or ``given_up`` is set)."""

    def result_awaited() -> bool:
        frame = sys._current_frames().get(waiting_thread)
        return frame is not None and frame.f_code is threading.Condition.wait.__code__

    def answer_once_awaited(*_: object) -> str:
        wait_until(lambda: given_up.is_set() or result_awaited(), 30)
        given_up.wait(1)  # a wait that cannot block fails as it starts: not long after it was seen
        return "answer"

    return answer_once_awaited


@pytest.mark.timeout(60)
def test_map_with_an_endless_timeout_waits_as_long_as_it_takes() -> None:
    # Accepted as every wait of the library accepts it, it overflowed the lock's wait at next().
    given_up = threading.Event()
    answer_once_awaited = answer_once_awaited_by(threading.get_ident(), given_up)
    with mp.Executor(max_workers=1) as executor:
        try:
            assert list(executor.map(answer_once_awaited, [0], timeout=math.inf)) == ["answer"]
        finally:
            given_up.set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["result", "exception"])
@pytest.mark.parametrize("timeout", [math.inf, 10**400], ids=["inf", "int too large for a float"])
def test_a_future_waits_without_limit_for_a_timeout_longer_than_a_lock_takes(method: str, timeout: float) -> None:
    # concurrent.futures hands the timeout to a lock's wait, which refused both with
    # OverflowError; every other wait of the library takes them for no limit.
    given_up = threading.Event()
    with mp.Executor(max_workers=1) as executor:
        future = executor.submit(answer_once_awaited_by(threading.get_ident(), given_up))
        try:
            outcome = getattr(future, method)(timeout)
        finally:
            given_up.set()
    assert outcome == ("answer" if method == "result" else None)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_runs_an_async_def_functions_coroutines_to_their_end(executor: mp.Executor, chunksize: int) -> None:
    # As submit() does. In chunks, each call's coroutine was handed out unawaited, its
    # body never run (on processes, the chunk failed: a coroutine does not pickle).
    assert list(executor.map(double_later, range(7), chunksize=chunksize)) == [2 * x for x in range(7)]
    with pytest.raises(ValueError, match="negative: -1"):
        list(executor.map(double_later, [1, -1, 2], chunksize=chunksize))


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_runs_the_coroutines_of_the_calls_before_one_that_raises_as_it_is_called(
    executor: mp.Executor, chunksize: int, flags: Flags
) -> None:
    # As one by one: their bodies run, then the error comes. In chunks, the coroutines
    # made before it were dropped unawaited (a RuntimeWarning), their bodies never run.
    with pytest.raises(ValueError, match="negative: -1"):
        list(executor.map(mark_later_checked, itertools.repeat(flags), [1, 2, -1], chunksize=chunksize))
    assert flags.is_set("ran 1") and flags.is_set("ran 2")


def test_map_raises_a_call_error_when_its_result_is_reached(executor: mp.Executor) -> None:
    results = executor.map(fail, ["first", "second"])
    with pytest.raises(ValueError, match="first"):
        next(results)


@pytest.mark.parametrize("chunksize", [1, 2])
@pytest.mark.parametrize("timeout", [None, 30.0])
def test_map_raises_a_calls_own_timeout_error_as_itself(
    executor: mp.Executor, chunksize: int, timeout: float | None
) -> None:
    # A call's TimeoutError is its error, not the map's timeout: it was taken for one,
    # and without a timeout the message meant to describe it raised TypeError instead.
    results = executor.map(time_out, ["socket read"], timeout=timeout, chunksize=chunksize)
    with pytest.raises(TimeoutError) as raised:
        next(results)
    assert type(raised.value) is TimeoutError and str(raised.value) == "socket read"


def test_exceptions_come_back_as_themselves(executor: mp.Executor) -> None:
    future = executor.submit(fail, "boom")
    error = future.exception(timeout=30)
    assert type(error) is ValueError and str(error) == "boom"
    with pytest.raises(ValueError, match="boom"):
        future.result()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 2])
def test_an_exception_that_is_false_is_raised_not_taken_for_success(executor: mp.Executor, chunksize: int) -> None:
    # concurrent.futures.Future.result() tests "if self._exception" up to Python 3.13,
    # and returned None for such an error (map then failed on its chunk being None).
    future = executor.submit(fail_falsely, "boom")
    with pytest.raises(FalseyError, match="boom"):
        future.result(timeout=30)
    assert type(future.exception()) is FalseyError
    with pytest.raises(FalseyError, match="boom"):
        list(executor.map(fail_falsely, ["boom"], chunksize=chunksize))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_keeps_no_reference_to_a_result_it_gave(executor: mp.Executor, chunksize: int) -> None:
    # As CPython's test_free_reference: a result the consumer dropped is freed at once.
    for payload in executor.map(make_payload, range(10), chunksize=chunksize):
        given = weakref.ref(payload)
        del payload
        gc.collect()
        assert given() is None


def test_submit_after_shutdown_raises_runtime_error(executor: mp.Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.submit(abs, 1)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        executor.map(abs, [1])
    executor.shutdown()  # twice is harmless


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["thread", "loop"])
@pytest.mark.parametrize("limit", ["none", "free", "full", "full as it comes"])
def test_mp_shutdown_leaves_an_executor_taking_tasks_whatever_the_limit(limit: str, where: str, gate: threading.Event) -> None:
    # mp.shutdown() refuses @parallel calls (ShutdownError) until reset_shutdown(); an Executor is
    # its owner's and refuses only after its own shutdown(), as concurrent.futures' do. It took a
    # task while mp.set_max_concurrent_tasks' limit had a slot free, and refused it where the
    # limit was full: its submission raised ShutdownError, or its future failed with it.
    limiter = _runtime.global_limiter
    with mp.Executor(max_workers=2) as executor:
        if limit != "none":
            mp.set_max_concurrent_tasks(2 if limit == "free" else 1)
        holder = executor.submit(gate.wait, 30)  # holds a slot until the gate opens
        waits = limit.startswith("full")
        if limit != "full as it comes":
            mp.shutdown(timeout_secs=0)  # (the holder's slot stays taken: it does not wait for it)
        got: list[int] = []

        async def submit_on_a_loop() -> int:
            future = executor.submit(pow, 2, 5)  # held for its slot, where it must wait: the loop is not blocked
            if limit == "full as it comes":
                await asyncio.to_thread(mp.shutdown, 0)
            gate.set()
            return await asyncio.wrap_future(future)

        def submit() -> None:
            got.append(asyncio.run(submit_on_a_loop()) if where == "loop" else executor.submit(pow, 2, 5).result(30))

        submitter = threading.Thread(target=submit)
        submitter.start()
        try:
            if waits and where == "thread":
                assert wait_until(lambda: len(limiter._waiters) == 1, timeout=30), "the submission never waited for a slot"
                if limit == "full as it comes":
                    mp.shutdown(timeout_secs=0)
                assert submitter.is_alive()
            gate.set()
            submitter.join(30)
        finally:
            gate.set()
        assert not submitter.is_alive()
        assert got == [32]
        assert holder.result(30) is True
        with pytest.raises(mp.ShutdownError):
            mp.parallel(abs)(1)  # while @parallel calls are refused


def test_shutdown_cancel_futures_cancels_what_has_not_started(gate: threading.Event) -> None:
    executor = mp.Executor(max_workers=1)
    started = threading.Event()

    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "ran"

    running = executor.submit(held)
    assert started.wait(10)
    queued = [executor.submit(abs, -i) for i in range(5)]
    stopper = threading.Thread(target=executor.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    assert all(f.cancelled() for f in queued) or wait_until(lambda: all(f.cancelled() for f in queued))
    gate.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert running.result() == "ran"
    done, not_done = cf.wait(queued, timeout=30)
    assert not not_done and all(f.cancelled() for f in done)
    with pytest.raises(cf.CancelledError):
        queued[0].result()


@pytest.mark.timeout(60)
def test_shutdown_with_wait_waits_for_the_code_of_a_task_cancelled_as_it_ran(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its handle ends at once, its code goes on on its thread: shutdown(wait=True) waited
    # for the pool to be idle only, and returned as that code ran, where mp.shutdown()
    # and exit wait for it (and concurrent.futures waits for every running call).
    executor = mp.Executor(backend="thread", max_workers=2)
    started = threading.Event()
    returned: list[str] = []

    def goes_on() -> None:
        started.set()
        assert gate.wait(30)
        returned.append("returned")

    future = executor.submit(goes_on)
    assert started.wait(10)
    assert future.handle.cancel()
    with pytest.raises(cf.CancelledError):
        future.result(timeout=10)
    backend = executor._backend
    wait_for_code = backend.wait_abandoned
    waits_or_returned = threading.Event()

    def tell_then_wait(timeout: float | None) -> bool:
        waits_or_returned.set()
        return wait_for_code(timeout)

    monkeypatch.setattr(backend, "wait_abandoned", tell_then_wait)
    outcome: list[list[str]] = []

    def shut_down() -> None:
        executor.shutdown(wait=True)
        outcome.append(list(returned))
        waits_or_returned.set()

    stopper = threading.Thread(target=shut_down)
    stopper.start()
    assert waits_or_returned.wait(10)
    assert outcome == []  # it did not return while the code ran
    gate.set()
    stopper.join(30)
    assert outcome == [["returned"]]


def _threads_of(executor: mp.Executor) -> list[threading.Thread]:
    """The worker threads of ``executor``'s pool alive now."""
    pool = executor._backend
    return [thread for thread in threading.enumerate() if getattr(getattr(thread, "_target", None), "__self__", None) is pool]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ends", ["shutdown", "with"])
def test_shutdown_with_wait_returns_with_its_worker_threads_ended(ends: str) -> None:
    # It waited for the tasks, then returned with every idle worker still alive, for a few
    # hundred milliseconds: a thread-leak check after a with block (or shutdown(wait=True))
    # saw them all, where concurrent.futures joins its threads and mp.shutdown() joins the pool's.
    executor = mp.Executor(backend="thread", max_workers=3)
    with executor:
        assert list(executor.map(abs, range(-9, 0))) == list(range(9, 0, -1))
        threads = _threads_of(executor)
        assert threads
        if ends == "shutdown":
            executor.shutdown(wait=True)
    assert [thread for thread in threads if thread.is_alive()] == []


def test_shutdown_without_wait_returns_while_tasks_run(gate: threading.Event) -> None:
    executor = mp.Executor(max_workers=1)
    future = executor.submit(gate.wait, 30)
    executor.shutdown(wait=False)
    assert not future.done()
    gate.set()
    assert future.result(timeout=30) is True


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_shutdown_with_wait_from_its_own_task_raises_instead_of_hanging(backend: str) -> None:
    # It would wait for the task that calls it: ThreadPoolExecutor raises there too.
    executor = mp.Executor(backend=backend, max_workers=1)

    def shut_down_from_inside() -> None:
        executor.shutdown(wait=True)

    error = executor.submit(shut_down_from_inside).exception(timeout=10)
    assert isinstance(error, RuntimeError) and "own tasks" in str(error)
    assert executor.submit(abs, -1).result(timeout=30) == 1  # nothing was shut down
    executor.shutdown()


def test_shutdown_with_wait_from_a_task_it_runs_as_a_backend_raises_instead_of_hanging() -> None:
    # Given as @parallel's backend, the executor's own task runs the call's: that one is current there.
    assert "own tasks" in refusal_to_shut_down_from_its_own_task()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["with", "shutdown()"])
@pytest.mark.parametrize("inner", ["thread", "process", "sync"])
@pytest.mark.parametrize("outer", BACKENDS)
def test_an_executor_made_in_a_task_shuts_down_with_wait(outer: str, inner: str, how: str) -> None:
    # In a process task the current task is the worker's stand-in for the parent's, which
    # has no pool of this process: asking whether it was the executor's own task raised
    # AttributeError ('_RemoteTask' object has no attribute '_backend') instead of waiting.
    in_a_task = mp.parallel(backend=outer)(run_an_executor_of_its_own)
    assert in_a_task(inner, how).get(timeout=60) == ([True] * 3, [0, 1, 2], True)


@pytest.mark.parametrize("outer", BACKENDS)
def test_shutdown_with_wait_from_a_task_it_runs_as_a_backend_raises_in_a_task_too(outer: str) -> None:
    # The refusal holds where the executor was made in a task, a process task's too.
    in_a_task = mp.parallel(backend=outer)(refusal_to_shut_down_from_its_own_task)
    assert "own tasks" in in_a_task().get(timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_with_wait_from_a_done_callback_raises_instead_of_hanging(backend: str, flags: Flags) -> None:
    # The callback holds the thread that must end the tasks it would wait for: the only
    # worker, which the queued task needs, or the process pool's loop thread, which reads
    # every result. ThreadPoolExecutor raises there too ("cannot join current thread").
    executor = mp.Executor(backend=backend, max_workers=1)
    outcome: list[BaseException | None] = []
    called = threading.Event()

    def shut_down_from_the_callback(_: cf.Future[str]) -> None:
        try:
            executor.shutdown(wait=True)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001  # the test reads it below
            outcome.append(error)
        called.set()

    first = executor.submit(wait_for_flag, flags, "release")
    queued = executor.submit(abs, -2)
    first.add_done_callback(shut_down_from_the_callback)
    flags.set("release")
    assert called.wait(30), "shutdown(wait=True) in the callback waited for good"
    [error] = outcome
    assert isinstance(error, RuntimeError) and "callback" in str(error)
    assert queued.result(timeout=30) == 2
    assert executor.submit(abs, -1).result(timeout=30) == 1  # nothing was shut down
    executor.shutdown()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["result", "exception"])
def test_a_wait_in_a_process_futures_done_callback_raises_instead_of_hanging(method: str, flags: Flags) -> None:
    # The callback runs on the pool's loop thread, which reads the result the wait is for:
    # it waited for good, and no other task of the executor could end meanwhile.
    with mp.Executor(backend="process", max_workers=2) as executor:
        later = executor.submit(wait_for_flag, flags, "later")
        wait_for_the_later_one = CalledBack(getattr(later, method))
        first = executor.submit(wait_for_flag, flags, "first")
        first.add_done_callback(wait_for_the_later_one)
        flags.set("first")
        assert wait_for_the_later_one.called.wait(30), f"{method}() in the callback waited for good"
        flags.set("later")
        error = wait_for_the_later_one.outcome
        assert isinstance(error, RuntimeError) and "loop thread" in str(error)
        assert later.result(timeout=30) == "later"  # the pool serves on


def test_a_submission_over_the_global_limit_never_blocks_a_running_loop(gate: threading.Event) -> None:
    # As a @parallel call there: the task waits for its slot, the loop (run_in_executor's caller) does not.
    mp.set_max_concurrent_tasks(1)
    release_if_blocked = threading.Timer(10, gate.set)  # without it, a blocked submit would wait forever
    release_if_blocked.start()
    try:
        with mp.Executor(max_workers=2) as executor:
            holder = executor.submit(gate.wait, 30)

            async def submit_from_the_loop() -> tuple[bool, int]:
                loop = asyncio.get_running_loop()
                waiting = loop.run_in_executor(executor, abs, -7)
                returned_before_the_slot_was_free = not gate.is_set()
                gate.set()
                return returned_before_the_slot_was_free, await waiting

            assert asyncio.run(submit_from_the_loop()) == (True, 7)
            assert holder.result(timeout=30) is True
    finally:
        release_if_blocked.cancel()
        release_if_blocked.join()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("chunksize", "buffersize"), [(1, None), (2, None), (1, 1)], ids=["calls", "chunks", "buffersize"]
)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("executor_class", [mp.Executor, SubmitCounting], ids=["plain", "submit-overridden"])
def test_map_timeout_bounds_the_wait_for_a_slot_under_the_global_limit(
    backend: str, chunksize: int, buffersize: int | None, flags: Flags, executor_class: type[mp.Executor]
) -> None:
    # As concurrent.futures: next() raises TimeoutError once the timeout from the call has passed.
    # A call waiting for a slot (map() submitting, or next() refilling) waited past it, for as long
    # as the tasks holding the slots ran; the calls it never submitted must not run later either.
    # So too where the calls go through a subclass's submit, which takes no deadline.
    mp.set_max_concurrent_tasks(2)
    rescue = threading.Timer(20, lambda: (flags.set("holder-go"), flags.set("call-go")))
    with executor_class(backend=backend, max_workers=3) as executor:
        holder = executor.submit(mark_then_wait, flags, "holder")  # one slot, until released
        assert flags.wait("holder", 30)
        rescue.start()  # without it, a wait for a slot that ignores the timeout would last for good
        try:
            with pytest.raises(TimeoutError, match=r"Executor.map timed out after 0.3 s"):
                results = executor.map(
                    mark_then_wait, [flags] * 6, ["call"] * 6, timeout=0.3, chunksize=chunksize, buffersize=buffersize
                )  # the first task takes the other slot and waits; the next waits for a slot
                next(results)
            assert not flags.is_set("holder-go"), "the map waited for a slot until the tasks were released"
        finally:
            rescue.cancel()
            rescue.join()
            flags.set("holder-go")
            flags.set("call-go")
        assert holder.result(timeout=30) == "holder"
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, timeout=30)
    started = flags.read("call").count("started") if flags.is_set("call") else 0
    assert started <= chunksize  # the first task's calls at most: none submitted after the timeout ran


@pytest.mark.parametrize("inner", ["submit", "map"])
def test_a_maps_timeout_bounds_no_wait_for_a_slot_of_another_executor_made_in_a_subclasss_submit(inner: str) -> None:
    # The map's deadline reaches its executor's wait for a slot past the overriding submit, on
    # this thread: it must not reach another executor's submit made there (it raised the internal
    # NoSlotInTime out of a submit that has no timeout), nor a map there with no timeout (whose
    # message then read the timeout it was never given, None, and raised TypeError).
    deadlines: list[float | None] = []
    acquire_a_slot = Limiter.acquire

    def acquire(
        limiter: Limiter, deadline: float | None = None, recipient: Recipient | None = None, through_shutdown: bool = False
    ) -> bool:
        if limiter is _runtime.global_limiter:
            deadlines.append(deadline)
        return acquire_a_slot(limiter, deadline, recipient, through_shutdown)

    with mp.Executor(max_workers=1) as other:

        class Auditing(mp.Executor):
            def submit(self, fn: Callable[..., object], /, *args: object, **kwargs: object) -> cf.Future[object]:
                if inner == "submit":
                    assert other.submit(abs, -1).result(timeout=30) == 1
                else:
                    assert list(other.map(abs, [-1])) == [1]
                return super().submit(fn, *args, **kwargs)  # type: ignore[return-value]

        mp.set_max_concurrent_tasks(10)  # a limit: the submissions ask it for a slot
        with Auditing(max_workers=1) as executor, mock.patch.object(Limiter, "acquire", acquire):
            assert list(executor.map(abs, [-2, -3], timeout=30)) == [2, 3]
    # Per call of the map: the other executor's submission first, with no deadline; then the map's own.
    assert [deadline is None for deadline in deadlines] == [True, False, True, False]


@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_with_cancel_futures_cancels_the_tasks_held_for_the_global_limit(backend: str, flags: Flags) -> None:
    # Submitted on a running loop over the limit, they wait for a slot in no queue: not started, so cancelled.
    mp.set_max_concurrent_tasks(1)
    executor = mp.Executor(backend=backend, max_workers=2)
    try:
        holder = executor.submit(mark_then_wait, flags, "holder")
        assert flags.wait("holder", 30)  # it runs: only the submissions below wait

        async def submit_then_shut_down() -> list[cf.Future[int]]:
            held = [executor.submit(abs, -i) for i in range(3)]
            executor.shutdown(wait=False, cancel_futures=True)
            return held

        held = asyncio.run(submit_then_shut_down())
        assert [future.cancelled() for future in held] == [True, True, True]
        flags.set("holder-go")
        assert holder.result(timeout=30) == "holder"
        assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, timeout=30)
        assert [future.cancelled() for future in held] == [True, True, True]
    finally:
        flags.set("holder-go")
        executor.shutdown()


def interrupt_once(monkeypatch: pytest.MonkeyPatch, target: Any, method: str) -> list[bool]:
    """Make ``target.method`` raise ``KeyboardInterrupt`` on its first call, as a Ctrl-C landing there; the list says it did."""
    real = getattr(target, method)
    interrupted: list[bool] = []

    def once(*args: Any, **kwargs: Any) -> Any:
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(target, method, once)
    return interrupted


def submit_then_leave_on_ctrl_c(executor: mp.Executor, flags: Flags) -> tuple[cf.Future[str], list[cf.Future[int]]]:
    """A ``with`` block that only submits (one task running, three queued), left by a Ctrl-C at its end."""
    with pytest.raises(KeyboardInterrupt), executor:
        running = executor.submit(mark_then_wait, flags, "running")
        assert flags.wait("running", 30)
        queued = [executor.submit(abs, -i) for i in range(3)]
    return running, queued


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_as_a_with_block_waits_at_its_end_cancels_the_queue_and_frees_the_pool(
    backend: str, flags: Flags, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The block's body only submits, so its end's wait for the queue is where a Ctrl-C lands,
    # and a notebook, a REPL or a program that goes on catches it. There it left the queue
    # running, every task of it, and the pool's worker processes alive for good.
    executor = mp.Executor(backend=backend, max_workers=1)
    backend_of = executor._backend
    interrupted = interrupt_once(monkeypatch, backend_of, "wait_idle")  # the block's wait: a Ctrl-C lands in it
    try:
        running, queued = submit_then_leave_on_ctrl_c(executor, flags)
        assert interrupted
        assert [future.cancelled() for future in queued] == [True, True, True]
        assert not running.done()  # not waited for
        flags.set("running-go")
        assert running.result(timeout=30) == "running"
        # Then the pool is freed, as by shutdown(wait=False): its workers stop.
        assert wait_until(lambda: backend_of not in _executor._releasing, timeout=30)
        assert backend_of.info().get("live_workers", 0) == 0
    finally:
        flags.set("running-go")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_as_a_with_block_begins_its_closing_shutdown_shuts_it_down_and_frees_the_pool(
    backend: str, flags: Flags, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Ctrl-C lands in shutdown() before its wait: in its close of the pool, whose finalizer
    # is still attached. The block's end only cancelled the queue there: the executor did not
    # count as shut down, and its pool, never freed, kept its worker processes while it lived.
    executor = mp.Executor(backend=backend, max_workers=1)
    backend_of = executor._backend
    interrupted = interrupt_once(monkeypatch, backend_of, "close")  # shutdown()'s close, before its wait
    try:
        running, queued = submit_then_leave_on_ctrl_c(executor, flags)
        assert interrupted
        assert [future.cancelled() for future in queued] == [True, True, True]
        assert "shut down" in repr(executor)
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(abs, 1)
        assert not running.done()  # not waited for
        flags.set("running-go")
        assert running.result(timeout=30) == "running"
        # Then the pool is freed, as by shutdown(wait=False), though the executor lives on.
        assert wait_until(lambda: backend_of not in _executor._releasing and not backend_of.info().get("live_workers", 0))
    finally:
        flags.set("running-go")
        executor.shutdown()


def test_shutdown_never_touches_the_shared_pools() -> None:
    @mp.parallel
    def shared(x: int) -> int:
        return x + 1

    for backend in ("thread", "process"):
        with mp.Executor(backend=backend, max_workers=1) as executor:
            assert executor.submit(abs, -1).result(timeout=30) == 1
    assert shared(1).get(timeout=30) == 2
    assert not _runtime.is_shut_down()


def test_cancel_follows_concurrent_futures(gate: threading.Event) -> None:
    with mp.Executor(max_workers=1) as executor:
        started = threading.Event()

        def held() -> None:
            started.set()
            assert gate.wait(30)

        running = executor.submit(held)
        assert started.wait(10)
        queued = executor.submit(abs, -1)
        assert running.running() and not queued.running()
        assert running.cancel() is False  # a running future is not cancelled
        assert queued.cancel() is True
        assert queued.cancelled() and queued.done()
        assert queued.cancel() is True  # still cancelled
        gate.set()
        assert running.result(timeout=30) is None
        assert running.cancel() is False


def test_a_futures_repr_says_running_while_its_task_runs(gate: threading.Event) -> None:
    # The standard future's state never becomes RUNNING here (the handle runs the task): its repr said pending.
    with mp.Executor(max_workers=1) as executor:
        started = threading.Event()

        def held() -> int:
            started.set()
            assert gate.wait(30)
            return 7

        running = executor.submit(held)
        assert started.wait(10)
        queued = executor.submit(abs, -1)
        assert "state=running" in repr(running)
        assert "state=pending" in repr(queued)
        gate.set()
        assert running.result(timeout=30) == 7
        assert "state=finished returned int" in repr(running)


def test_the_handle_cancels_a_running_task_cooperatively(gate: threading.Event) -> None:
    with mp.Executor(max_workers=1) as executor:
        started = threading.Event()

        def cooperative() -> str:
            started.set()
            while not gate.wait(0.01):
                mp.check_cancelled()
            return "finished"

        future = executor.submit(cooperative)
        assert started.wait(10)
        assert future.handle.cancel() is True
        assert future.cancelled()
        assert cf.wait([future], timeout=30).done == {future}


def test_progress_and_metadata_reach_the_handle() -> None:
    reached = threading.Event()

    def reports() -> int:
        mp.report_progress(0.5, "half")
        return mp.get_current_task_id() or 0

    with mp.Executor(backend="sync") as executor:
        future = executor.submit(reports)
        future.handle.set_metadata("user", "ada")
        future.handle.on_progress(lambda fraction: reached.set())
        assert future.result() == future.handle.get_task_id()
        assert reached.is_set()
        assert future.handle.get_metadata("user") == "ada"


def test_metrics_count_executor_tasks() -> None:
    def measured_by_executor() -> None:
        return None

    with mp.Executor(max_workers=2) as executor:
        cf.wait([executor.submit(measured_by_executor) for _ in range(3)], timeout=30)
    metrics = mp.get_metrics(measured_by_executor.__qualname__)
    assert metrics is not None and metrics.completed_tasks == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_metrics_count_the_tasks_an_executor_has_not_started_as_queued(backend: str, flags: Flags) -> None:
    # As a @parallel function's: they read as running, on a pool of one worker three at once.
    with mp.Executor(backend=backend, max_workers=1) as executor:
        futures = [executor.submit(queued_behind_the_first, flags) for _ in range(3)]
        try:
            assert wait_until(lambda: flags.is_set("started"), 30)
            metrics = mp.get_metrics(queued_behind_the_first.__qualname__)
            assert metrics is not None
            assert (metrics.running_tasks, metrics.queued_tasks) == (1, 2)
        finally:
            flags.set("release")
        cf.wait(futures, timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_executors_pool_shows_in_health_until_it_is_shut_down(backend: str, flags: Flags) -> None:
    # It was missing: health() said ok with its queue saturated, and the exporters had no gauges for it.
    with mp.Executor(backend=backend, max_workers=1) as executor:
        name = f"Executor-{id(executor):x}"
        futures = [executor.submit(queued_behind_the_first, flags) for _ in range(4)]
        try:
            assert wait_until(lambda: flags.is_set("started"), 30)
            report = mp.health(memory_limit_percent=100.0, queue_limit=2)
            info = report["pools"][name]
            assert info["backend"] == backend
            assert info["queued_tasks"] == 3
            assert info["busy_threads" if backend == "thread" else "busy_workers"] == 1
            assert f"{name} pool saturated: 3 tasks queued for 1 workers (limit 2)" in report["reasons"]
        finally:
            flags.set("release")
        cf.wait(futures, timeout=30)
        assert _runtime.pool_infos()[name]["queued_tasks"] == 0
    assert name not in _runtime.pool_infos()  # shut down, its tasks ended: nothing of it is left to report


def test_a_killed_worker_fails_only_its_task() -> None:
    with mp.Executor(backend="process", max_workers=1) as executor:
        pid = executor.submit(os.getpid).result(timeout=30)
        crash = executor.submit(os.kill, pid, signal.SIGKILL)
        error = crash.exception(timeout=30)
        assert isinstance(error, mp.WorkerCrashedError)
        assert "SIGKILL" in str(error)
        assert executor.submit(mul, 2, 3).result(timeout=30) == 6  # not broken


@pytest.mark.parametrize("executor_class", [mp.Executor, SubmitCounting], ids=["plain", "submit-overridden"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_map_chunks_are_named_and_measured_after_the_function(backend: str, executor_class: type[mp.Executor]) -> None:
    with executor_class(backend=backend, max_workers=2) as executor:
        with pytest.raises(ValueError) as caught:
            list(executor.map(fail_on_b, ["a", "b", "c", "d"], chunksize=2))
        notes = "\n".join(caught.value.__notes__)
        assert "fail_on_b [map]" in notes and "_run_chunk" not in notes
        assert wait_until(lambda: executor._backend.active_count() == 0, 30)
    metrics = mp.get_metrics("fail_on_b [map]")
    assert metrics is not None and metrics.failed_tasks >= 1
    assert mp.get_metrics("_run_chunk") is None and mp.get_metrics("partial(_run_chunk)") is None


@pytest.mark.parametrize("chunksize", [1, 3])
def test_a_worker_dying_inside_map_names_the_calls_lost(chunksize: int) -> None:
    with mp.Executor(backend="process", max_workers=1) as executor:
        results = executor.map(exit_on_four, range(9), chunksize=chunksize)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        if chunksize == 1:
            assert next(results) == 3
        with pytest.raises(mp.WorkerCrashedError) as caught:
            next(results)
        assert "exit code 7" in str(caught.value)
        if chunksize == 1:  # the call was its own task
            assert "exit_on_four" in str(caught.value) and "no other task was affected" in str(caught.value)
        else:
            assert "calls 3 to 5 of Executor.map" in str(caught.value)
            assert "chunksize=1" in str(caught.value)
            assert "exit code 7" in str(caught.value.__cause__)
        assert list(executor.map(exit_on_four, [5, 6, 8], chunksize=chunksize)) == [5, 6, 8]  # not broken


@pytest.mark.parametrize("buffersize", [None, 1])
@pytest.mark.parametrize(("culprit", "lost"), [(0, "calls 0 to 3"), (6, "calls 4 to 7"), (9, "calls 8 to 10")], ids=["first", "middle", "last-short"])
def test_the_calls_lost_with_a_chunk_are_named_by_their_range(culprit: int, lost: str, buffersize: int | None) -> None:
    with mp.Executor(backend="process", max_workers=1) as executor:
        results = executor.map(exit_on, range(11), [culprit] * 11, chunksize=4, buffersize=buffersize)
        taken = list(itertools.islice(results, culprit // 4 * 4))  # the chunks before the culprit's
        with pytest.raises(mp.WorkerCrashedError, match=rf"{lost} of Executor.map were lost with their worker process \(exit code 7\)"):
            next(results)
        assert taken == list(range(culprit // 4 * 4))
        assert list(executor.map(exit_on, range(11), [-1] * 11, chunksize=4, buffersize=buffersize)) == list(range(11))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
def test_a_call_raising_the_crash_of_its_own_task_is_not_its_chunks_worker_dying(backend: str) -> None:
    with mp.Executor(backend=backend, max_workers=2) as executor:
        with pytest.raises(mp.WorkerCrashedError, match=r"running task \d+ \(exit_alone\) died with exit code 9") as caught:
            list(executor.map(wait_for_a_dying_task_on_four, range(9), chunksize=3))
        assert "Executor.map" not in str(caught.value)  # the call raised it, as itself: no chunk's calls were lost


class HoldsALock:
    """An object a bound method of which cannot be pickled: it holds a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def double(self, x: int) -> int:
        return 2 * x


@pytest.mark.parametrize("buffersize", [None, 2])
def test_a_chunked_maps_unpicklable_function_or_argument_is_named(buffersize: int | None) -> None:
    # The error named the chunk task's arguments ("argument 0 (method)", "argument 1
    # (tuple)"), not the map's function, nor which call's argument could not be pickled.
    with mp.Executor(backend="process", max_workers=1) as executor:
        pattern = r"the function HoldsALock.double of Executor.map cannot be sent to a worker process: TypeError"
        with pytest.raises(mp.TaskSerializationError, match=pattern) as caught:
            list(executor.map(HoldsALock().double, range(6), chunksize=3, buffersize=buffersize))
        assert "argument 0" not in str(caught.value)
        calls = [1, 2, 3, 4, threading.Lock(), 6]
        pattern = r"argument 1 \(<unlocked _thread\..*\) of call 4 of Executor.map cannot be sent to a worker process: TypeError"
        with pytest.raises(mp.TaskSerializationError, match=pattern):
            list(executor.map(mul, range(6), calls, chunksize=3, buffersize=buffersize))
        assert list(executor.map(mul, range(6), range(6), chunksize=3, buffersize=buffersize)) == [x * x for x in range(6)]


class PicklesOnTurns:
    """An argument whose pickling raises ``error`` except on the turns given (1 its first), whatever is pickled with it.

    It stands for one that pickles alone but not with the rest of its call or
    chunk (a recursion limit reached by the chunk as a whole, an object shared
    by calls that pickles only once), or not the first time. It is never sent.
    The submission pickles the task's call (turn 1), then each of the task's
    arguments to name the culprit (turn 2); the map then pickles each argument
    alone (turn 3), then the call or chunk again.
    """

    def __init__(self, turns: set[int], always_after: bool, error: type[Exception] = RuntimeError) -> None:
        self.turns, self.always_after, self.error, self.taken = turns, always_after, error, 0

    def __reduce__(self) -> Any:
        self.taken += 1
        if self.taken in self.turns or (self.always_after and self.taken > max(self.turns)):
            return (PicklesOnTurns, (self.turns, self.always_after, self.error))
        raise self.error(f"refused on turn {self.taken}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("chunksize", "argument", "pattern", "before"),
    [
        (
            3,
            PicklesOnTurns({3}, always_after=False),
            (
                r"call 4 \(\(4, <test_executor\.Pic.*>\)\) of Executor\.map cannot be sent to a worker process with the "
                r"calls before it in its chunk \(calls 3 to 4\): RuntimeError: refused on turn \d+\..*chunksize=1"
            ),
            4,
        ),
        (
            1,
            PicklesOnTurns({3}, always_after=False),
            (
                r"call 4 \(\(4, <test_executor\.Pic.*>\)\) of Executor\.map cannot be sent to a worker process: its "
                r"arguments cannot be pickled together, though each alone can be: RuntimeError: refused on turn 4"
            ),
            4,
        ),
        (
            3,
            PicklesOnTurns({2}, always_after=True),
            (
                r"calls 3 to 5 of Executor\.map could not be sent to a worker process \(.*refused on turn 1\), though "
                r"each argument alone can be pickled, and they could be when tried again"
            ),
            3,
        ),
        (
            3,
            PicklesOnTurns({3}, always_after=False, error=RecursionError),
            (
                r"call 4 \(\(4, <test_executor\.Pic.*>\)\) of Executor\.map cannot be sent to a worker process: it nests "
                r"too deep to pickle \(.*recursion.*\), though each argument alone can be pickled.*sys\.setrecursionlimit"
            ),
            4,
        ),
        (
            3,
            PicklesOnTurns({2}, always_after=True, error=RecursionError),
            (
                r"calls 3 to 5 of Executor\.map could not be sent to a worker process: they nest too deep to pickle "
                r"\(.*recursion.*\), though each argument alone can be pickled.*sys\.setrecursionlimit"
            ),
            3,
        ),
        (
            1,
            PicklesOnTurns({2}, always_after=True, error=RecursionError),
            (
                r"call 4 of Executor\.map could not be sent to a worker process: it nests too deep to pickle "
                r"\(.*recursion.*\), though each argument alone can be pickled.*sys\.setrecursionlimit"
            ),
            4,
        ),
    ],
    ids=["in its chunk", "in its call", "not twice", "too deep", "too deep as sent", "too deep as sent alone"],
)
def test_a_call_that_pickles_only_alone_is_named_by_its_index_and_value(
    chunksize: int, argument: PicklesOnTurns, pattern: str, before: int
) -> None:
    # Each argument pickled alone, so the map found none at fault and raised the submission's
    # error, which named the task's argument ("argument 1 (tuple)" of "task 12 (mul [map])"),
    # not the call of the map (its index and its arguments) that could not be sent.
    calls = [1, 1, 1, 1, argument, 1]
    with mp.Executor(backend="process", max_workers=1) as executor:
        results = executor.map(mul, range(6), calls, chunksize=chunksize)
        taken = []
        with pytest.raises(mp.TaskSerializationError, match=pattern) as caught:
            for result in results:
                taken.append(result)  # noqa: PERF402  # one at a time: those before the error are kept
        assert taken == list(range(before))
        assert "argument 1 (tuple)" not in str(caught.value)
        assert isinstance(caught.value.__cause__, mp.TaskSerializationError)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunksize", [1, 3])
@pytest.mark.parametrize("buffersize", [None, 1, 4])
def test_a_maps_results_before_an_argument_that_cannot_be_pickled_come_out_first(
    chunksize: int, buffersize: int | None
) -> None:
    # As ProcessPoolExecutor.map: the results of calls 0 to 9, in order, then the error of call 10.
    # With buffersize=4 only 0 to 5 came out (the refill that met call 10 raised, and the calls in
    # flight were cancelled); with chunksize=3, none; without buffersize, map() itself raised.
    calls = [*range(10), threading.Lock(), *range(11, 30)]
    pattern = r"argument 0 \(<unlocked _thread\..*\) of call 10 of Executor.map cannot be sent to a worker process: TypeError"
    with mp.Executor(backend="process", max_workers=2) as executor:
        results = executor.map(mul, calls, itertools.repeat(1), chunksize=chunksize, buffersize=buffersize)
        taken = []
        with pytest.raises(mp.TaskSerializationError, match=pattern):
            for result in results:
                taken.append(result)  # noqa: PERF402  # one at a time: those before the error are kept
        assert taken == list(range(10))
        assert list(executor.map(mul, range(6), range(6), chunksize=chunksize, buffersize=buffersize)) == [x * x for x in range(6)]


def test_loop_run_in_executor_and_wrap_future(executor: mp.Executor) -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        direct = await loop.run_in_executor(executor, mul, 4, 5)
        wrapped = await asyncio.wrap_future(executor.submit(mul, 2, 2))
        return direct, wrapped

    assert asyncio.run(main()) == (20, 4)


def test_an_asyncio_cancel_reaches_a_queued_task(gate: threading.Event) -> None:
    with mp.Executor(max_workers=1) as executor:
        blocker = executor.submit(gate.wait, 30)

        async def main() -> cf.Future[int]:
            loop = asyncio.get_running_loop()
            queued = executor.submit(abs, -1)
            awaiting = asyncio.wrap_future(queued, loop=loop)
            awaiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await awaiting
            return queued

        queued = asyncio.run(main())
        assert queued.cancelled()
        gate.set()
        blocker.result(timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["result", "exception"])
@pytest.mark.parametrize("timeout", [20.0, None], ids=["with_timeout", "without_timeout"])
def test_a_task_waiting_for_futures_of_its_own_one_worker_executor_makes_progress(
    way: str, timeout: float | None
) -> None:
    # The parent holds the only worker; its children are queued behind it.
    with mp.Executor(backend="thread", max_workers=1) as executor:

        def parent() -> list[object]:
            children = [executor.submit(mul, i, 2) for i in range(3)]
            if way == "result":
                return [child.result(timeout) for child in children]
            return [child.exception(timeout) for child in children]

        expected = [0, 2, 4] if way == "result" else [None, None, None]
        assert executor.submit(parent).result(timeout=45) == expected


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["result", "exception"])
@pytest.mark.parametrize("timeout", [20.0, None], ids=["with_timeout", "without_timeout"])
def test_a_cancel_ends_the_wait_of_a_task_off_any_pool_for_a_future(
    way: str, timeout: float | None, gate: threading.Event
) -> None:
    # On the sync backend the task runs on the thread that calls it, no pool's
    # worker. Its wait for a future is a cancellation point there too: it raises
    # as the task is cancelled, while the future's task still runs. Before, it
    # was the standard wait, which went on until that task ended.
    from makeparallel._task_context import current_task

    started = threading.Event()
    raised = threading.Event()
    tasks: list[mp.AsyncHandle[object]] = []
    gate_open_as_it_raised: list[bool] = []

    def child() -> int:
        started.set()
        gate.wait(30)
        return 1

    def cancel_once_started() -> None:
        if started.wait(10):
            tasks[0].cancel()
            raised.wait(10)  # at once; before, only once the gate opened
        gate.set()

    with mp.Executor(backend="thread", max_workers=1) as executor:

        @mp.parallel(backend="sync")
        def parent() -> object:
            tasks.append(current_task())
            future = executor.submit(child)
            try:
                return future.result(timeout) if way == "result" else future.exception(timeout)
            except mp.TaskCancelledError:
                gate_open_as_it_raised.append(gate.is_set())
                raised.set()
                raise

        canceller = threading.Thread(target=cancel_once_started)
        canceller.start()
        try:
            handle = parent()
        finally:
            gate.set()
            canceller.join(30)
        assert handle.cancelled()
        assert gate_open_as_it_raised == [False], "the wait went on after its task was cancelled"


def test_wait_and_as_completed_of_the_standard_library(executor: mp.Executor) -> None:
    futures = [executor.submit(mul, i, i) for i in range(10)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == [i * i for i in range(10)]
    failing = executor.submit(fail, "first")
    done, _ = cf.wait([failing, *futures], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert failing in done


@pytest.mark.parametrize(
    ("options", "error", "pattern"),
    [
        ({"backend": "dask"}, ValueError, "backend must be one of 'thread', 'process', 'sync', 'auto', got 'dask'"),
        ({"max_workers": 0}, ValueError, "max_workers must be an int >= 1, got 0"),
        ({"max_workers": "2"}, TypeError, "max_workers must be an int >= 1, got '2'"),
    ],
)
def test_bad_arguments_are_refused(options: dict[str, object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        mp.Executor(**options)


def test_default_size_is_the_usable_cpus() -> None:
    from makeparallel._cpus import usable_cpu_count

    with mp.Executor() as executor:
        assert executor.max_workers == usable_cpu_count()
        assert executor.backend == "thread"
        assert "max_workers" in repr(executor)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_executor_dropped_without_shutdown_still_ends_its_futures(backend: str, flags: Flags) -> None:
    # As the standard executors do: shut down as by shutdown(wait=False). Its pool
    # was stopped at once: the running task failed with ShutdownError, and the
    # queued ones never ended, so result() without a timeout waited for good.
    executor = mp.Executor(backend=backend, max_workers=1)
    futures = [executor.submit(pid_once_released, flags) for _ in range(3)]
    assert flags.wait("started", 30)
    gone = weakref.ref(executor)
    del executor
    gc.collect()
    assert gone() is None
    flags.set("go")
    pids = {future.result(timeout=30) for future in futures}
    if backend == "process":
        (worker,) = pids
        assert wait_until(lambda: not psutil.pid_exists(worker)), "the dropped executor's worker still runs"


_EXIT_WITH_A_TASK_RUNNING = """import gc, os, time
import makeparallel as mp
mp.configure(exit_timeout=0.5)
executor = mp.Executor("process", max_workers=1)
print(executor.submit(os.getpid).result(timeout=30), flush=True)
executor.submit(time.sleep, 120)
if {dropped}:
    del executor
    gc.collect()
"""


@pytest.mark.parametrize("dropped", [False, True], ids=["kept", "dropped"])
def test_exit_stops_an_executors_worker_processes_after_the_exit_timeout(dropped: bool) -> None:
    # Kept or dropped without shutdown(), an executor with a task running holds
    # the program's exit for it no longer than exit_timeout: its workers are then
    # stopped, and reaped, before the program ends (not left to die after it, with the template).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    script = _EXIT_WITH_A_TASK_RUNNING.format(dropped=dropped)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    worker = int(completed.stdout.split()[0])
    assert not psutil.pid_exists(worker), "the executor's worker outlived the program"  # stopped and reaped before it ended
    assert "1 task(s) still unfinished at interpreter exit were abandoned after waiting 0.5 s" in completed.stderr


_EXIT_WITH_TASKS_SUBMITTED = """import os, sys
import makeparallel as mp
mp.configure(exit_timeout=60)  # a loaded machine's pool may take a while to start
folder = sys.argv[1]
executor = mp.Executor({backend!r}, max_workers=2)
for name in "abcd":
    executor.submit(open, os.path.join(folder, name), "w")
if {shut_down}:
    executor.shutdown(wait=False)
"""


_EXIT_WITH_A_TASK_SUBMITTING_TO_A_POOL_WAITED_FOR = """import os, sys, threading, time
import makeparallel as mp
from makeparallel import _runtime
folder = sys.argv[1]

@mp.parallel(backend="thread")
def child():
    time.sleep(0.5)  # slower than an exit that does not wait for it
    open(os.path.join(folder, "child"), "w").close()

child().get(timeout=30)  # the pool exists, and is idle when exit waits for it
pool = _runtime.get_backend("thread")
waited, wait_idle = threading.Event(), pool.wait_idle

def wait_idle_then_say(timeout):
    idle = wait_idle(timeout)
    waited.set()
    return idle

pool.wait_idle = wait_idle_then_say
os.remove(os.path.join(folder, "child"))

def parent():
    assert waited.wait(30)  # exit has waited for the @parallel pool
    child()  # fire and forget, into that pool

executor = mp.Executor("thread", max_workers=1)
executor.submit(parent)
"""


_EXIT_WITH_A_TASK_MAKING_A_POOL = """import os, sys, time
import makeparallel as mp
folder, how = sys.argv[1], sys.argv[2]
mp.configure(exit_timeout=30)

def grandchild():
    time.sleep(0.5)  # slower than an exit that does not wait for it
    open(os.path.join(folder, "grandchild"), "w").close()

@mp.parallel(backend="thread")
def child():
    time.sleep(0.5)  # exit waits for it by then
    if how == "process":
        mp.parallel(backend="process")(grandchild)()  # the process pool's first task: made now
    else:
        mp.Executor("thread", max_workers=1).submit(grandchild)  # an Executor made now

child()
"""


@pytest.mark.parametrize("how", ["process", "executor"])
def test_exit_waits_for_a_pool_a_task_made_as_exit_waited(how: str, tmp_path: Path) -> None:
    # The pools were listed as each pass began: one made during the pass (the process
    # pool's first task, an Executor) was never waited for, and its task was lost.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-c", _EXIT_WITH_A_TASK_MAKING_A_POOL, str(tmp_path), how],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert os.listdir(tmp_path) == ["grandchild"]
    assert completed.stderr == ""


def test_exit_waits_for_a_task_submitted_to_a_pool_it_already_waited_for(tmp_path: Path) -> None:
    # Exit waited for each pool once, in turn: a task an Executor's task submitted to
    # the @parallel pool after that pool had been waited for was lost without a word.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run(
        [sys.executable, "-c", _EXIT_WITH_A_TASK_SUBMITTING_TO_A_POOL_WAITED_FOR, str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert os.listdir(tmp_path) == ["child"]
    assert completed.stderr == ""


@pytest.mark.parametrize("shut_down", [False, True], ids=["left", "shutdown-no-wait"])
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_exit_runs_the_tasks_submitted_to_an_executor(backend: str, shut_down: bool, tmp_path: Path) -> None:
    # As the standard executors do: exit stopped an executor's pool at once, and
    # the tasks not yet run were lost without a word.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    script = _EXIT_WITH_TASKS_SUBMITTED.format(backend=backend, shut_down=shut_down)
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c", "d"]
    assert completed.stderr == ""


_EXECUTORS_IN_CYCLES = """import gc
import makeparallel as mp
for threshold in range(1, 200):
    gc.set_threshold(100_000)
    gc.collect()
    executor = mp.Executor("thread", max_workers=1)
    executor.itself = executor  # in a cycle: only the collector frees it, and runs its finalizer
    del executor
    gc.set_threshold(threshold)  # the next collection falls somewhere in the next executor's making
    mp.Executor("thread", max_workers=1)
print("made them all")
"""


@pytest.mark.timeout(90)
def test_executors_freed_by_the_garbage_collector_while_another_is_made_never_deadlock() -> None:
    # The collector may run an executor's finalizer inside another executor's
    # __init__: a lock taken in both, to list the pools exit stops, deadlocked
    # there, and interpreter exit then waited for it for good.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    completed = subprocess.run([sys.executable, "-c", _EXECUTORS_IN_CYCLES], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "made them all\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_process_executors_shut_down_leave_no_descriptor_open() -> None:
    # Each one's process backend kept its wake-up pipe open for good: two descriptors a time.
    def use_one() -> None:
        with mp.Executor("process", max_workers=1) as executor:
            assert executor.submit(abs, -1).result(timeout=30) == 1

    use_one()  # counted after a first one, which may open what the process keeps for good
    # An executor an earlier test dropped, or shut down without waiting, is freed by a
    # thread of its own: its pipes closed by a collection during the count, they were
    # counted before and not after. Counted once every such thread has ended.
    assert wait_until(lambda: not any(t.name == "makeparallel-executor-shutdown" for t in threading.enumerate()), 30)
    gc.collect()
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(5):
        use_one()
    gc.collect()
    assert sorted(os.listdir("/proc/self/fd")) == before


# A @parallel function given to an executor runs as parallel_map runs it: its plain function, in
# the executor's own pool, the future holding its value. Called there, it started a task of its
# own on the shared pool and the future held that task's handle (on worker processes, a handle
# that cannot be sent back: TaskSerializationError).
ALL_BACKENDS = ["thread", "process", "sync"]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_submit_runs_a_parallel_functions_plain_function_as_its_own_task(backend: str) -> None:
    with mp.Executor(backend=backend, max_workers=1) as executor:
        future = executor.submit(own_task_id)
        assert future.result(timeout=30) == future.handle.get_task_id()  # not a task it started
        product = executor.submit(parallel_mul, 6, y=7)
        assert product.result(timeout=30) == 42
        assert product.handle.name == "parallel-mul"  # the function's name, as its calls are measured
        assert executor.submit(Scaler(3).scale, 5).result(timeout=30) == 15  # a bound @parallel method


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_submit_and_map_run_a_static_method_objects_parallel_function_as_its_plain_function(backend: str) -> None:
    # A staticmethod around a @parallel function (callable since Python 3.10, as that function)
    # ran as the function itself: the future held the handle of a task it started elsewhere,
    # and on worker processes the task failed sending that handle back (TaskSerializationError).
    (triple,) = Steps.steps
    assert isinstance(triple, staticmethod)
    with mp.Executor(backend=backend, max_workers=1) as executor:
        future = executor.submit(triple, 2)
        assert future.result(timeout=30) == 6
        assert future.handle.name == "parallel-triple"
        assert list(executor.map(triple, [1, 2])) == [3, 6]
        assert list(executor.map(triple, [1, 2, 3], chunksize=2)) == [3, 6, 9]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_submit_and_map_run_a_partial_of_a_parallel_function_as_its_plain_function(backend: str) -> None:
    # partial(work, y=...) of a @parallel function (loop.run_in_executor takes no keywords, and asyncio's
    # documentation passes them so) ran the parallel function itself: the future held the handle of a
    # task it started elsewhere, and on worker processes that handle could not be sent back.
    times_seven = functools.partial(parallel_mul, y=7)
    (triple,) = Steps.steps
    with mp.Executor(backend=backend, max_workers=1) as executor:
        future = executor.submit(times_seven, 6)
        assert future.result(timeout=30) == 42
        assert future.handle.name == "parallel-mul"
        assert executor.submit(functools.partial(triple, 2)).result(timeout=30) == 6
        assert executor.submit(functools.partial(Scaler(3).scale), 5).result(timeout=30) == 15
        assert executor.submit(functools.partial(parallel_double_later, 4)).result(timeout=30) == 8
        assert list(executor.map(times_seven, [1, 2])) == [7, 14]
        assert list(executor.map(times_seven, [1, 2, 3], chunksize=2)) == [7, 14, 21]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("chunksize", "buffersize"), [(1, None), (3, None), (1, 2), (3, 1)])
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("executor_class", [mp.Executor, SubmitCounting], ids=["plain", "submit-overridden"])
def test_map_runs_a_parallel_functions_plain_function(
    executor_class: type[mp.Executor], backend: str, chunksize: int, buffersize: int | None
) -> None:
    with executor_class(backend=backend, max_workers=2) as executor:
        options = {"chunksize": chunksize, "buffersize": buffersize}
        assert list(executor.map(parallel_mul, range(7), itertools.repeat(3), **options)) == [3 * x for x in range(7)]
        assert list(executor.map(Scaler(2).scale, range(7), **options)) == [2 * x for x in range(7)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", BACKENDS)
def test_map_names_a_parallel_functions_chunks_after_its_name(backend: str) -> None:
    with mp.Executor(backend=backend, max_workers=2) as executor:
        with pytest.raises(TypeError) as caught:
            list(executor.map(parallel_mul, [1, "x"], [2, None], chunksize=2))
        notes = "\n".join(caught.value.__notes__)
        assert "parallel-mul [map]" in notes and "_run_chunk" not in notes
        assert wait_until(lambda: executor._backend.active_count() == 0, 30)
    metrics = mp.get_metrics("parallel-mul [map]")
    assert metrics is not None and metrics.failed_tasks >= 1


@pytest.mark.timeout(60)
def test_an_async_parallel_functions_coroutine_runs_to_its_end_in_the_executor() -> None:
    with mp.Executor(max_workers=2) as executor:
        assert executor.submit(parallel_double_later, 4).result(timeout=30) == 8
        assert list(executor.map(parallel_double_later, range(4), chunksize=2)) == [0, 2, 4, 6]


def held_at_a_max_concurrent_of_one(
    gate: threading.Event,
) -> tuple[mp.ParallelFunction[[int], int], threading.Event, Limiter]:
    """A ``@parallel(max_concurrent=1)`` function whose calls set the event returned, then wait for ``gate``; and its limiter."""
    started = threading.Event()

    @mp.parallel(max_concurrent=1)
    def held(x: int) -> int:
        started.set()
        assert gate.wait(30)
        return x

    limiter = held._spec.limiter
    assert limiter is not None
    return held, started, limiter


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor_class", [mp.Executor, SubmitCounting], ids=["plain", "submit-overridden"])
@pytest.mark.parametrize("via", ["submit", "map", "map-in-chunks", "map-buffered"])
def test_a_parallel_functions_max_concurrent_holds_in_the_executor(
    via: str, executor_class: type[mp.Executor], gate: threading.Event
) -> None:
    held, started, limiter = held_at_a_max_concurrent_of_one(gate)
    results: list[int] = []

    def more() -> None:
        if via == "submit":
            results.append(executor.submit(held, 1).result(timeout=30))
        else:
            options = {"map": {}, "map-in-chunks": {"chunksize": 2}, "map-buffered": {"buffersize": 1}}[via]
            results.extend(executor.map(held, [1, 2, 3], **options))  # type: ignore[arg-type]

    with executor_class(max_workers=2) as executor:
        first = executor.submit(held, 0)
        assert started.wait(30)
        assert limiter._in_flight == 1  # the executor's task holds the function's slot
        later = threading.Thread(target=more)
        later.start()
        assert wait_until(lambda: len(limiter._waiters) == 1, 30)  # the next waits for it, a worker free
        assert executor._backend.active_count() == 1
        gate.set()
        later.join(30)
        assert first.result(timeout=30) == 0
        assert results == ([1] if via == "submit" else [1, 2, 3])
    assert limiter._in_flight == 0  # every slot given back


@pytest.mark.timeout(60)
def test_a_parallel_functions_slot_is_waited_for_off_a_running_loop(gate: threading.Event) -> None:
    held, started, limiter = held_at_a_max_concurrent_of_one(gate)

    async def main(executor: mp.Executor) -> list[int]:
        first = asyncio.get_running_loop().run_in_executor(executor, held, 0)
        assert started.wait(30)
        second = asyncio.get_running_loop().run_in_executor(executor, held, 1)  # returns: the task waits, not the loop
        assert len(limiter._waiters) == 1
        gate.set()
        return list(await asyncio.gather(first, second))

    with mp.Executor(max_workers=2) as executor:
        assert asyncio.run(main(executor)) == [0, 1]
    assert limiter._in_flight == 0


@pytest.mark.timeout(60)
def test_a_parallel_functions_priority_orders_its_calls_in_the_executors_queue(gate: threading.Event) -> None:
    started = threading.Event()
    order: list[str] = []

    def block() -> None:
        started.set()
        assert gate.wait(30)

    @mp.parallel(priority=5)
    def urgent() -> None:
        order.append("urgent")

    with mp.Executor(max_workers=1) as executor:
        executor.submit(block)
        assert started.wait(30)
        queued = [executor.submit(order.append, "plain"), executor.submit(urgent)]
        gate.set()
        cf.wait(queued, timeout=30)
    assert order == ["urgent", "plain"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("executor_class", [mp.Executor, SubmitCounting], ids=["plain", "submit-overridden"])
def test_a_map_in_chunks_of_an_async_parallel_function_is_waited_for_on_a_running_loop(
    executor_class: type[mp.Executor], gate: threading.Event
) -> None:
    # A chunk's task runs the coroutines itself, on its own thread: as a plain async
    # function's chunks, it can be waited for (here, run in place) from a task's running loop.
    # Taken for an async task, it refused the wait with RuntimeError ("runs a coroutine").
    started = threading.Event()

    def block() -> None:
        started.set()
        assert gate.wait(30)

    with executor_class(max_workers=1) as executor:
        blocker = executor.submit(block)  # the chunks stay queued until the wait
        assert started.wait(30)

        @mp.parallel
        async def maps_on_its_loop() -> list[int]:
            return list(executor.map(parallel_double_later, range(4), chunksize=2))

        try:
            assert maps_on_its_loop().get(timeout=30) == [0, 2, 4, 6]
        finally:
            gate.set()
        blocker.result(timeout=30)


# A handler that makes an Executor on SIGUSR1 (a diagnostic batch), as the code it interrupted
# held the lock named in argv: the runtime's (a first task's pool being made, an Executor made),
# or the memory limit's (a new pool following it). Made, an Executor takes both.
EXECUTOR_IN_A_HANDLER = """
import faulthandler, signal, sys
import makeparallel as mp
from makeparallel import _memory_guard, _runtime

faulthandler.dump_traceback_later(20, exit=True)  # a hang names the call
mp.configure_memory_limit(99.99)
lock = {"runtime": _runtime._lock, "memory limit": _memory_guard._guard_lock, "none": None}[sys.argv[1]]


def outcome():
    try:
        with mp.Executor(backend="thread", max_workers=1) as executor:
            return str(executor.submit(abs, -3).result(timeout=10))
    except RuntimeError as error:
        assert "signal handler" in str(error) and "another thread" in str(error), error
        return "RuntimeError"


outcomes = []
signal.signal(signal.SIGUSR1, lambda *_: outcomes.append(outcome()))
if lock is None:
    signal.raise_signal(signal.SIGUSR1)
else:
    with lock:
        signal.raise_signal(signal.SIGUSR1)
print(*outcomes, outcome(), flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="no SIGUSR1 here")
@pytest.mark.parametrize(("held", "outcomes"), [("runtime", "RuntimeError 3"), ("memory limit", "RuntimeError 3"), ("none", "3 3")])
def test_an_executor_made_in_a_signal_handler_never_waits_for_a_lock_held_below(held: str, outcomes: str) -> None:
    # mp.Executor(...) from a signal handler that interrupted the main thread as it held the
    # runtime's lock (a first task's pool being made) or the memory limit's took the lock and
    # waited for good. Refused at once, nothing made; out of the handler, it works.
    result = subprocess.run(
        [sys.executable, "-c", EXECUTOR_IN_A_HANDLER, held], capture_output=True, text=True, timeout=50, check=False
    )
    assert (result.returncode, result.stdout) == (0, f"{outcomes}\n"), result.stderr


@pytest.mark.timeout(90)
def test_calls_lost_with_a_worker_killed_as_the_executor_shuts_down_are_not_told_it_was_replaced(tmp_path: Path) -> None:
    # Killed as the executor's shutdown waited for its chunk, the worker was not replaced
    # (the closed pool starts none), yet Executor.map's error said "A new worker takes its place".
    flags = Flags(str(tmp_path))
    executor = mp.Executor(backend="process", max_workers=1)
    results = executor.map(functools.partial(mark_then_wait, flags), ["held", "after"], chunksize=2)
    shutting_down = threading.Thread(target=executor.shutdown, kwargs={"wait": True})
    try:
        assert flags.wait("held", 30)
        [pid] = executor._backend.info()["worker_pids"]  # type: ignore[attr-defined]  # its one worker, busy
        shutting_down.start()
        assert wait_until(lambda: executor._backend.info()["closed"], 30)  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(mp.WorkerCrashedError, match=r"calls 0 to 1 of Executor\.map were lost") as caught:
            next(results)
    finally:
        flags.set("teardown")
        shutting_down.join(60) if shutting_down.ident is not None else executor.shutdown(wait=True)
    assert "The pool is shutting down, so no worker takes its place" in str(caught.value)
    assert "new worker" not in str(caught.value), str(caught.value)
