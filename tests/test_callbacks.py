"""Callbacks: on_complete, on_error, on_progress and add_done_callback.

Each fires once, with the right argument, on the thread that completes the task
when registered before the end, and at once on the registering thread when
registered after it.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import gc
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pool_helpers import (
    CalledBack,
    Flags,
    hold_the_pool,
    poll_until_stopped,
    wait_until,
)

import makeparallel as mp
from makeparallel import _handle, _validation

BACKENDS = ["thread", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


class Recorder:
    """A callback that records its arguments and the thread it ran on."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[Any, ...], int, str]] = []
        self._condition = threading.Condition()

    def __call__(self, *args: Any) -> None:
        with self._condition:
            thread = threading.current_thread()
            self.calls.append((args, thread.ident or 0, thread.name))
            self._condition.notify_all()

    def wait_for(self, count: int, timeout: float = 5) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: len(self.calls) >= count, timeout)

    @property
    def args(self) -> list[tuple[Any, ...]]:
        return [args for args, _, _ in self.calls]

    @property
    def threads(self) -> list[int]:
        return [ident for _, ident, _ in self.calls]

    @property
    def thread_names(self) -> list[str]:
        return [name for _, _, name in self.calls]


class GatedTask:
    """A thread-backend task that records its thread, signals it started, waits for the gate."""

    def __init__(self, gate: threading.Event, *, fail: BaseException | None = None) -> None:
        self.gate = gate
        self.started = threading.Event()
        self.thread: int | None = None
        self.fail = fail

        @mp.parallel(backend="thread", name="callbacks-gated")
        def body(value: Any = "done") -> Any:
            self.thread = threading.get_ident()
            self.started.set()
            assert gate.wait(5), "the test never opened the gate"
            if self.fail is not None:
                raise self.fail
            return value

        self.function = body

    def start(self, value: Any = "done") -> mp.AsyncHandle[Any]:
        handle = self.function(value)
        assert self.started.wait(5)
        return handle


def register_all(handle: mp.AsyncHandle[Any]) -> dict[str, Recorder]:
    recorders = {kind: Recorder() for kind in ("complete", "error", "progress", "done")}
    handle.on_complete(recorders["complete"])
    handle.on_error(recorders["error"])
    handle.on_progress(recorders["progress"])
    handle.add_done_callback(recorders["done"])
    return recorders


# -- registered before the end ---------------------------------------------------------


@pytest.mark.timeout(10)
def test_success_callbacks_run_once_on_the_completing_thread(gate: threading.Event) -> None:
    task = GatedTask(gate)
    handle = task.start(41)
    recorders = register_all(handle)
    gate.set()
    assert handle.get(5) == 41
    assert recorders["complete"].wait_for(1) and recorders["done"].wait_for(1)
    assert recorders["complete"].args == [(41,)]
    assert recorders["done"].args == [(handle,)]
    assert recorders["complete"].threads == [task.thread]
    assert recorders["done"].threads == [task.thread]
    assert task.thread != threading.get_ident()
    assert recorders["error"].calls == []
    assert recorders["progress"].args == [(1.0,)]  # no report came: the success alone
    assert recorders["progress"].threads == [task.thread]
    # Asking again fires nothing again.
    assert handle.get() == 41
    handle.exception()
    assert len(recorders["complete"].calls) == 1
    assert len(recorders["done"].calls) == 1


@pytest.mark.timeout(10)
def test_error_callbacks_run_once_on_the_completing_thread(gate: threading.Event) -> None:
    error = RuntimeError("task failed")
    task = GatedTask(gate, fail=error)
    handle = task.start()
    recorders = register_all(handle)
    gate.set()
    with pytest.raises(RuntimeError):
        handle.get(5)
    assert recorders["error"].wait_for(1) and recorders["done"].wait_for(1)
    assert recorders["error"].args == [(error,)]  # the very object the task raised
    assert recorders["error"].threads == [task.thread]
    assert recorders["done"].args == [(handle,)]
    assert recorders["done"].threads == [task.thread]
    assert recorders["complete"].calls == []
    assert any("failed after" in note for note in getattr(error, "__notes__", []))
    with pytest.raises(RuntimeError):
        handle.get()
    assert len(recorders["error"].calls) == 1


@pytest.mark.timeout(10)
def test_blocked_get_returns_after_every_callback_ran(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Know for sure that the getter blocks before the task ends: the handle
    # allocates a waiter lock only for a caller that is about to block.
    blocking = threading.Event()
    allocate = _handle._allocate_lock

    def allocate_and_signal() -> Any:
        blocking.set()
        return allocate()

    monkeypatch.setattr(_handle, "_allocate_lock", allocate_and_signal)
    ran: list[str] = []
    slow_callback_done = threading.Event()

    def slow_callback(_: object) -> None:
        # Widen the window in which a getter woken too early would return.
        assert not slow_callback_done.wait(0.05)
        ran.append("slow")

    task = GatedTask(gate)
    handle = task.start("value")
    handle.on_complete(lambda value: ran.append(f"complete {value}"))
    handle.add_done_callback(slow_callback)
    handle.add_done_callback(lambda h: ran.append(f"done {h.result()}"))

    def open_gate_once_blocked() -> None:
        if blocking.wait(5):
            gate.set()

    opener = threading.Thread(target=open_gate_once_blocked)
    opener.start()
    try:
        assert handle.get() == "value"
        seen_when_get_returned = list(ran)
    finally:
        gate.set()
        opener.join(5)
    assert blocking.is_set()
    assert seen_when_get_returned == ["complete value", "slow", "done value"]


@pytest.mark.timeout(10)
def test_done_callback_may_read_the_result(gate: threading.Event) -> None:
    task = GatedTask(gate)
    handle = task.start(7)
    results: list[Any] = []
    finished = threading.Event()

    def read(h: mp.AsyncHandle[Any]) -> None:
        results.append((h.result(), h.exception(), h.done()))
        finished.set()

    handle.add_done_callback(read)
    gate.set()
    assert finished.wait(5)
    assert results == [(7, None, True)]


@pytest.mark.timeout(10)
def test_timeout_fires_on_error_once(gate: threading.Event) -> None:
    @mp.parallel(backend="thread", timeout=0.05, name="callbacks-timeout")
    def slow() -> None:
        poll_until_stopped(gate)

    # Queued until its callbacks are in: its 0.05 s run from its start, and a
    # test thread kept off the CPU that long registered them after the end.
    pool_gate = threading.Event()
    blockers = hold_the_pool(pool_gate)
    handle = slow()
    recorders = register_all(handle)
    pool_gate.set()
    for blocker in blockers:
        blocker.get(5)
    assert recorders["error"].wait_for(1)
    assert recorders["done"].wait_for(1)
    (error,) = recorders["error"].args[0]
    assert isinstance(error, mp.TaskTimeoutError)
    # The deadline ended the task: its callbacks ran on a thread of the deadline
    # machinery (so a slow one holds back no other timeout), not the task's thread.
    assert recorders["error"].thread_names == ["makeparallel-timeout-callbacks"]
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(5)
    assert recorders["complete"].calls == []
    assert len(recorders["error"].calls) == 1


@pytest.mark.timeout(40)
def test_slow_timeout_callback_does_not_delay_other_timeouts(gate: threading.Event) -> None:
    # The callbacks of a timed-out task run on the thread that ended it; that must
    # not hold back the deadlines of every other task in the process.
    in_callback = threading.Event()
    release = threading.Event()
    task_gate = threading.Event()
    callback_threads: list[str] = []

    @mp.parallel(backend="thread", timeout=0.05, name="callbacks-slow-timeout")
    def slow() -> None:
        poll_until_stopped(task_gate)

    def slow_callback(_: BaseException) -> None:
        callback_threads.append(threading.current_thread().name)
        in_callback.set()
        release.wait(30)  # past the wait below: a deadline held back by it is never kept

    blockers = hold_the_pool(gate)
    first = slow()  # queued: its callback is surely registered before it starts
    first.on_error(slow_callback)
    gate.set()
    for blocker in blockers:
        blocker.get(5)
    try:
        assert in_callback.wait(5)
        second = slow()
        with pytest.raises(mp.TaskTimeoutError, match="timed out after 0.05 s"):
            second.get(10)  # its own 0.05 s timeout, not this wait, must end it
    finally:
        release.set()
        task_gate.set()
    assert len(callback_threads) == 1
    with pytest.raises(mp.TaskTimeoutError):
        first.get(5)


@pytest.mark.timeout(10)
def test_cancelling_a_running_task_fires_on_error_on_the_cancelling_thread(
    gate: threading.Event,
) -> None:
    started = threading.Event()
    stopped = threading.Event()

    @mp.parallel(backend="thread")
    def long_running() -> str:
        started.set()
        try:
            poll_until_stopped(gate)
        finally:
            stopped.set()
        return "late result"

    handle = long_running()
    assert started.wait(5)
    recorders = register_all(handle)
    assert handle.cancel() is True
    # Callbacks of an event run before the call that caused it returns.
    assert len(recorders["error"].calls) == 1
    (error,) = recorders["error"].args[0]
    assert isinstance(error, mp.TaskCancelledError)
    assert recorders["error"].threads == [threading.get_ident()]
    assert recorders["done"].args == [(handle,)]
    assert stopped.wait(5)  # the task saw the cancellation at check_cancelled()
    assert recorders["complete"].calls == []
    assert len(recorders["error"].calls) == 1


@pytest.mark.timeout(10)
def test_cancelling_a_queued_task_fires_on_error(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)

    @mp.parallel(backend="thread")
    def never_runs() -> None:
        pass

    handle = never_runs()
    recorders = register_all(handle)
    assert handle.cancel()
    assert len(recorders["error"].calls) == 1
    (error,) = recorders["error"].args[0]
    assert isinstance(error, concurrent.futures.CancelledError)
    assert recorders["done"].args == [(handle,)]
    assert recorders["complete"].calls == []
    gate.set()
    for blocker in blockers:
        blocker.get(5)
    assert len(recorders["error"].calls) == 1


# -- registered after the end ----------------------------------------------------------


def test_callbacks_registered_after_success_run_at_once_here(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> str:
        return "result"

    handle = work()
    assert handle.get(5) == "result"
    recorders = register_all(handle)
    me = threading.get_ident()
    assert recorders["complete"].calls == [(("result",), me, threading.current_thread().name)]
    assert recorders["done"].args == [(handle,)]
    assert recorders["done"].threads == [me]
    assert recorders["error"].calls == []
    assert recorders["progress"].calls == [((1.0,), me, threading.current_thread().name)]  # get_progress()'s


def test_callbacks_registered_after_failure_run_at_once_here(backend: str) -> None:
    raised: list[BaseException] = []

    @mp.parallel(backend=backend)
    def fail() -> None:
        error = ValueError("bad input")
        raised.append(error)
        raise error

    handle = fail()
    handle.wait(5)
    recorders = register_all(handle)
    assert recorders["error"].args == [(raised[0],)]
    assert recorders["error"].threads == [threading.get_ident()]
    assert recorders["done"].args == [(handle,)]
    assert recorders["complete"].calls == []


def test_callbacks_registered_after_timeout_run_at_once_here(
    backend: str, gate: threading.Event
) -> None:
    @mp.parallel(backend=backend, timeout=0.05)
    def slow() -> None:
        poll_until_stopped(gate)

    handle = slow()
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(5)
    recorders = register_all(handle)
    assert len(recorders["error"].calls) == 1
    assert isinstance(recorders["error"].args[0][0], mp.TaskTimeoutError)
    assert recorders["error"].threads == [threading.get_ident()]
    assert recorders["complete"].calls == []


@pytest.mark.parametrize("reports", [(), (0.25, 0.5)])
def test_progress_callback_registered_after_success_gets_what_get_progress_says(
    backend: str, reports: tuple[float, ...]
) -> None:
    # It was called with the last report (0.5), or not at all where none came,
    # while get_progress() said 1.0: an ended task's callback gets its final state,
    # as add_done_callback's does.
    @mp.parallel(backend=backend)
    def work() -> None:
        for fraction in reports:
            mp.report_progress(fraction)

    handle = work()
    handle.get(5)
    recorder = Recorder()
    handle.on_progress(recorder)
    assert handle.get_progress() == 1.0
    assert recorder.args == [(1.0,)]
    assert recorder.threads == [threading.get_ident()]


def test_progress_callback_registered_after_failure_gets_the_last_report(
    backend: str,
) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        mp.report_progress(0.25)
        mp.report_progress(0.75, "almost")
        raise RuntimeError("stopped")

    handle = work()
    handle.wait(5)
    recorder = Recorder()
    handle.on_progress(recorder)
    assert recorder.args == [(handle.get_progress(),)] == [(0.75,)]
    assert recorder.threads == [threading.get_ident()]


def test_progress_callback_registered_after_a_failure_without_reports_is_not_called(backend: str) -> None:
    # No report came and the task did not succeed: nothing to say (get_progress() gives 0.0 by default).
    @mp.parallel(backend=backend)
    def work() -> None:
        raise RuntimeError("stopped")

    handle = work()
    handle.wait(5)
    recorder = Recorder()
    handle.on_progress(recorder)
    assert recorder.args == []


# -- progress callbacks while running --------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("reports", [(), (0.5,), (0.25, 1.0)], ids=["no report", "half", "to the end"])
@pytest.mark.parametrize("added", ["before it starts", "while it runs", "once it ended"])
def test_every_progress_callback_sees_a_success_end_at_1_once(
    gate: threading.Event, added: str, reports: tuple[float, ...]
) -> None:
    # One added while the task ran was left at its last report (0.5), or never called
    # where none came, while get_progress() said 1.0 and one added after the end got
    # 1.0: whenever it is added, a callback now sees a success end at 1.0, and only
    # once where the task's own last report said 1.0 already.
    held = hold_the_pool(gate) if added == "before it starts" else []
    reported = threading.Event()
    finish = threading.Event()

    @mp.parallel(backend="thread")
    def work() -> None:
        for fraction in reports:
            mp.report_progress(fraction)
        reported.set()
        assert finish.wait(10), "the test never let the task finish"

    handle = work()
    recorder = Recorder()
    announced = threading.Event()
    if added == "before it starts":
        handle.on_progress(recorder)
        gate.set()
        expected = [*reports]
    elif added == "while it runs":
        assert reported.wait(10)
        handle.on_progress(recorder)
        expected = [*reports[-1:]]  # called at once with the last report, if one came
    if added != "once it ended":
        handle.add_done_callback(lambda _: announced.set())  # run after the recorder, on the same thread
    finish.set()
    handle.get(10)
    if added == "once it ended":
        handle.on_progress(recorder)
        expected = []
    else:
        assert announced.wait(10)
    expected += [] if expected[-1:] == [1.0] else [1.0]
    assert recorder.args == [(fraction,) for fraction in expected]
    for blocker in held:
        blocker.get(10)


@pytest.mark.timeout(30)
def test_a_success_while_a_progress_callback_is_called_reaches_it_next_from_that_thread(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread that calls it as the task succeeds (here, the one adding it, with the last
    # report) calls it with 1.0 next: never on two threads at once, nor 1.0 before 0.5.
    reported = threading.Event()
    completed = threading.Event()
    complete_progress = _handle.AsyncHandle._complete_progress

    def complete_then_say_so(handle: mp.AsyncHandle[Any], listener: Any) -> None:
        complete_progress(handle, listener)
        completed.set()

    monkeypatch.setattr(_handle.AsyncHandle, "_complete_progress", complete_then_say_so)

    @mp.parallel(backend="thread")
    def work() -> None:
        mp.report_progress(0.5)
        reported.set()
        assert gate.wait(10), "the test never opened the gate"

    handle = work()
    assert reported.wait(10)
    recorder = Recorder()

    def slow(fraction: float) -> None:
        recorder(fraction)
        if len(recorder.calls) == 1:
            gate.set()  # the task succeeds while this call runs
            assert completed.wait(10)

    handle.on_progress(slow)
    assert recorder.args == [(0.5,), (1.0,)]
    assert recorder.threads == [threading.get_ident()] * 2
    handle.get(10)


@pytest.mark.timeout(10)
def test_progress_callbacks_run_on_the_reporting_thread(gate: threading.Event) -> None:
    go = threading.Event()
    reported = threading.Event()
    task_thread: list[int] = []

    @mp.parallel(backend="thread")
    def work() -> None:
        task_thread.append(threading.get_ident())
        assert go.wait(5)
        mp.report_progress(0.5, "half")
        reported.set()
        assert gate.wait(5)
        mp.report_progress(1.0)

    handle = work()
    early = Recorder()
    handle.on_progress(early)
    go.set()
    assert reported.wait(5)
    assert early.args == [(0.5,)]
    assert early.threads == task_thread
    late = Recorder()
    handle.on_progress(late)  # a report came already: called at once, here
    assert late.args == [(0.5,)]
    assert late.threads == [threading.get_ident()]
    gate.set()
    handle.get(5)
    assert early.args == [(0.5,), (1.0,)]
    assert late.args == [(0.5,), (1.0,)]
    assert late.threads[1] == task_thread[0]


# -- a callback that raises ------------------------------------------------------------


@pytest.mark.timeout(10)
def test_raising_callback_is_logged_and_harms_nothing(
    gate: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="makeparallel")

    def broken(_: object) -> None:
        raise ZeroDivisionError("callback bug")

    task = GatedTask(gate)
    handle = task.start("kept")
    handle.on_complete(broken)
    handle.add_done_callback(broken)
    after = Recorder()
    handle.on_complete(after)
    done_after = Recorder()
    handle.add_done_callback(done_after)
    gate.set()
    assert handle.get(5) == "kept"
    assert after.wait_for(1) and done_after.wait_for(1)
    assert after.args == [("kept",)]
    assert handle.status == "succeeded"
    records = [r for r in caplog.records if r.name == "makeparallel"]
    assert len(records) == 2
    for record in records:
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ZeroDivisionError)
        assert str(handle.get_task_id()) in record.getMessage()


def test_raising_callback_registered_after_the_end_is_logged(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="makeparallel")

    @mp.parallel(backend=backend)
    def fail() -> None:
        raise KeyError("task error")

    def broken(_: object) -> None:
        raise RuntimeError("callback bug")

    handle = fail()
    handle.wait(5)
    handle.on_error(broken)  # does not raise here
    still = Recorder()
    handle.on_error(still)
    assert len(still.calls) == 1
    with pytest.raises(KeyError, match="task error"):
        handle.get()
    records = [r for r in caplog.records if r.name == "makeparallel"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)


def test_raising_progress_callback_does_not_fail_the_task(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="makeparallel")

    def broken(_: float) -> None:
        raise RuntimeError("progress callback bug")

    @mp.parallel(backend=backend)
    def work() -> str:
        mp.report_progress(0.5)
        return "finished"

    handle = work()
    handle.wait(5)
    handle.on_progress(broken)
    assert handle.get() == "finished"
    assert len([r for r in caplog.records if r.name == "makeparallel"]) == 1


# -- registration ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["on_complete", "on_error", "on_progress", "add_done_callback"])
def test_non_callable_callback_is_rejected(backend: str, method: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    handle = work()
    handle.get(5)
    with pytest.raises(TypeError, match="callable"):
        getattr(handle, method)("not a function")
    with pytest.raises(TypeError, match="callable"):
        getattr(handle, method)(None)


@pytest.mark.timeout(10)
def test_non_callable_is_rejected_before_the_end(gate: threading.Event) -> None:
    task = GatedTask(gate)
    handle = task.start()
    with pytest.raises(TypeError, match="callable"):
        handle.on_complete(42)  # type: ignore[arg-type]
    gate.set()
    assert handle.get(5) == "done"


class TakesTwo:
    """A callback object and method that need two arguments, where the handle passes one."""

    def __call__(self, value: Any, extra: Any) -> None:
        """Never called: refused as it is added."""

    def record(self, value: Any, extra: Any) -> None:
        """Never called: refused as it is added."""


# Each registration, with what it passes the callback; and each way of giving a callback that cannot take it.
REGISTRATIONS = [("on_complete", "result"), ("on_error", "error"), ("on_progress", "fraction")]
UNFITTING_CALLBACKS = [
    pytest.param(lambda: None, "too many positional arguments", id="no-argument"),
    pytest.param(lambda value, extra: None, "missing a required argument: 'extra'", id="two-arguments"),
    pytest.param(TakesTwo(), "missing a required argument: 'extra'", id="object-call"),
    pytest.param(TakesTwo().record, "missing a required argument: 'extra'", id="method"),
    pytest.param(functools.partial(lambda a, b, c: None, 1), "missing a required argument: 'c'", id="partial"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("method", "argument"), REGISTRATIONS, ids=[method for method, _ in REGISTRATIONS])
@pytest.mark.parametrize(("callback", "why"), UNFITTING_CALLBACKS)
def test_a_callback_that_cannot_take_its_argument_is_refused_as_it_is_added(
    backend: str, method: str, argument: str, callback: Any, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Taken, it raised TypeError as it was called, which was only logged, at each call.
    @mp.parallel(backend=backend)
    def work() -> int:
        mp.report_progress(0.5)
        return 1

    handle = work()
    pattern = (
        rf"{method}'s callback must take 1 positional argument \({argument}\), as it is called .*; .* cannot: "
        rf"{why}\. Pass a function of \({argument}\)"
    )
    with pytest.raises(TypeError, match=pattern):
        getattr(handle, method)(callback)
    assert handle.get(5) == 1
    with pytest.raises(TypeError, match=pattern):  # after the end too, where it would be called at once
        getattr(handle, method)(callback)
    assert not [record for record in caplog.records if record.name == "makeparallel"]


def test_a_done_callback_function_that_cannot_take_the_handle_is_refused(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    handle = work()
    pattern = r"add_done_callback's fn must take 1 positional argument \(handle\).* cannot: too many positional arguments"
    with pytest.raises(TypeError, match=pattern):
        handle.add_done_callback(lambda: None)
    seen: list[Any] = []
    handle.add_done_callback(lambda done, *_: seen.append(done))
    assert handle.get(5) == 1
    assert seen == [handle]  # get() returns once every callback ran


def taking(count: int, record: Callable[..., None]) -> Callable[..., None]:
    """A function of exactly ``count`` positional arguments (0 to 4), which hands them to ``record``."""

    def none() -> None:
        record()

    def one(a: Any) -> None:
        record(a)

    def two(a: Any, b: Any) -> None:
        record(a, b)

    def three(a: Any, b: Any, c: Any) -> None:
        record(a, b, c)

    def four(a: Any, b: Any, c: Any, d: Any) -> None:
        record(a, b, c, d)

    return (none, one, two, three, four)[count]


def called_through(kind: str, count: int, record: Callable[..., None]) -> Any:
    """An object whose class's ``__call__`` is of ``kind`` and takes ``count`` arguments as a call passes them."""
    if kind == "staticmethod":
        call: Any = staticmethod(taking(count, record))
    elif kind == "classmethod":  # the class comes first
        call = classmethod(taking(count + 1, lambda cls, *args: record(*args)))
    else:  # an object of its own, no descriptor: called as it is, with no self
        call = type("Inner", (), {"__call__": taking(count + 1, lambda inner, *args: record(*args))})()
    return type("Outer", (), {"__call__": call})()


def listening(listener: Any) -> None:
    mp.add_task_listener(listener)
    try:
        mp.parallel(backend="sync")(abs)(-1).wait(5)
    finally:
        mp.remove_task_listener(listener)


def _ended(fail: bool) -> mp.AsyncHandle[int]:
    def work() -> int:
        if fail:
            raise ValueError("failed")
        return 1

    handle = mp.parallel(backend="sync")(work)()
    handle.wait(5)
    return handle


# Each way the library takes a callable it calls later: how many arguments it passes, and a
# registration that has it called (at once, for a handle that has ended).
CALLED_LATER: dict[str, tuple[int, Callable[[Any], object]]] = {
    "on_complete": (1, lambda fn: _ended(False).on_complete(fn)),
    "on_error": (1, lambda fn: _ended(True).on_error(fn)),
    "on_progress": (1, lambda fn: _ended(False).on_progress(fn)),
    "add_done_callback": (1, lambda fn: _ended(False).add_done_callback(fn)),
    "progress=": (2, lambda fn: mp.parallel_map(abs, [-1, -2], progress=fn)),
    "add_task_listener": (1, listening),
}
CALL_KINDS = ["staticmethod", "classmethod", "callable object"]


@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize("taken_by", list(CALLED_LATER))
def test_an_object_whose_call_is_no_plain_method_is_taken_where_it_fits(kind: str, taken_by: str) -> None:
    # inspect reads an object's __call__ less its first parameter, as if it took self: an object
    # whose __call__ is a staticmethod, a classmethod or an object of its own was refused, though
    # calling it works.
    count, register = CALLED_LATER[taken_by]
    seen: list[tuple[Any, ...]] = []
    register(called_through(kind, count, lambda *args: seen.append(args)))
    assert seen and {len(args) for args in seen} == {count}


@pytest.mark.parametrize(("more", "why"), [(1, "missing a required argument"), (-1, "too many positional arguments")])
@pytest.mark.parametrize("kind", CALL_KINDS)
@pytest.mark.parametrize("taken_by", [name for name in CALLED_LATER if name != "add_done_callback"])
def test_an_object_whose_call_is_no_plain_method_is_refused_where_it_does_not_fit(
    kind: str, taken_by: str, more: int, why: str
) -> None:
    # Read from its code as a method, a staticmethod's function taking one argument more was taken.
    # (add_done_callback reads a function only.)
    count, register = CALLED_LATER[taken_by]
    seen: list[tuple[Any, ...]] = []
    with pytest.raises(TypeError, match=rf"must take {count} positional arguments? \(.*; .* cannot: {why}"):
        register(called_through(kind, count + more, lambda *args: seen.append(args)))
    assert seen == []


def passing_context(fn: Any) -> Any:
    """A decorator that passes ``fn`` an argument of its own first, as click's ``pass_obj`` does."""

    @functools.wraps(fn)  # (copies fn's signature, the one the wrapper's caller does not see)
    def wrapper(*args: Any) -> Any:
        return fn("context", *args)

    return wrapper


def test_a_decorated_callback_is_read_by_its_wrapper(backend: str) -> None:
    # Read through __wrapped__, record(context, value) seemed to need two arguments: it was refused.
    seen: list[tuple[str, Any]] = []

    @passing_context
    def record(context: str, value: Any) -> None:
        seen.append((context, value))

    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    handle = work()
    handle.on_complete(record)
    handle.add_done_callback(record)
    assert handle.get(5) == 1
    assert seen == [("context", 1), ("context", handle)]  # get() returns once every callback ran


def test_a_callable_written_in_c_is_taken_unread() -> None:
    # Fitting or not (date.fromtimestamp takes one argument, datetime's two): reading a C
    # method's text signature took 180 us, for a callback added to each task, and a cache of
    # what it said, kept by its owner's type and name, read datetime's as date's.
    for fn in (datetime.date.fromtimestamp, datetime.datetime.fromtimestamp, [].append, {}.get):
        _validation.refuse_unfitting_call("progress", fn, "done, total", "after each chunk")


def test_a_c_method_given_as_a_callback_does_not_keep_its_class(backend: str) -> None:
    # What inspect said of it was kept under its class, for good: a class made per call stayed too.
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    def collect_one() -> weakref.ref[type]:
        class Results(list[int]):
            """Made at each call, as a local class is."""

        results = Results()
        handle = work().on_complete(results.append)
        assert handle.get(5) == 1
        assert results == [1]  # get() returns once every callback ran
        return weakref.ref(Results)

    made = collect_one()
    gc.collect()  # (a class is in reference cycles of its own)
    assert made() is None


def test_registration_methods_chain(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 5

    handle = work()
    seen: list[Any] = []
    progress: list[float] = []
    chained = (
        handle.on_complete(seen.append)
        .on_error(seen.append)
        .on_progress(progress.append)
    )
    assert chained is handle
    assert handle.add_done_callback(lambda h: None) is None  # as in concurrent.futures
    handle.get(5)
    assert seen == [5]
    assert progress in ([], [1.0])  # 1.0 where it ended first ("sync": always), as get_progress() says


@pytest.mark.timeout(10)
def test_many_callbacks_each_fire_once(gate: threading.Event) -> None:
    task = GatedTask(gate)
    handle = task.start(3)
    recorders = [Recorder() for _ in range(20)]
    for recorder in recorders:
        handle.on_complete(recorder)
    gate.set()
    handle.get(5)
    for recorder in recorders:
        assert recorder.wait_for(1)
        assert recorder.args == [(3,)]


def _wait_in_a_callback(wait: str, handle: mp.AsyncHandle[Any]) -> object:
    if wait == "get":
        return handle.get(timeout=10)
    if wait == "wait":
        return handle.wait(10)
    if wait == "exception":
        return handle.exception(10)
    return mp.gather([handle], timeout=10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wait", ["get", "wait", "exception", "gather"])
def test_a_wait_for_a_process_task_in_a_process_tasks_callback_raises_at_once(wait: str, tmp_path: Path) -> None:
    # The callback runs on the pool's loop thread, which reads the results the
    # wait is for: it waited out its whole timeout (without one, for good), then
    # said the task was "still running" though it may have ended long before.
    flags = Flags(str(tmp_path))
    on_process = mp.parallel(backend="process")
    unfinished = on_process(flags.wait_for_release)("go on")
    wait_for_it = CalledBack(lambda: _wait_in_a_callback(wait, unfinished))
    try:
        on_process(flags.wait_for_release)("call back").on_complete(wait_for_it)  # registered before its end
        flags.set("call back")
        assert wait_for_it.called.wait(30)
    finally:
        flags.set("go on")
    error = wait_for_it.outcome
    assert isinstance(error, RuntimeError), error
    assert "loop thread" in str(error) and str(unfinished.get_task_id()) in str(error)
    assert unfinished.get(timeout=30)
    ended = on_process(abs)(-2)
    ended.get(timeout=30)
    seen = Recorder()
    on_process(flags.wait_for_release)("again").on_complete(lambda _: seen(ended.get(timeout=10)))
    flags.set("again")
    assert seen.wait_for(1, 30) and seen.args == [(2,)]  # nothing to wait for: it ended
    assert seen.calls[0][2] != threading.current_thread().name


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wait", ["get", "gather", "a slot"])
def test_a_callback_on_a_worker_may_wait_for_the_task_queued_behind_its_own(wait: str, gate: threading.Event) -> None:
    # The worker that ends a task used to claim the next queued task in the same
    # lock round, then run the ended one's callbacks: a callback that waited for
    # that next task (or for a slot it held) waited for what only its own thread,
    # busy in the callback, would start. Whatever the pool's size.
    limited = mp.parallel(backend="thread", max_concurrent=1, name="callbacks-limited")(abs)
    blockers = hold_the_pool(gate)
    first = mp.parallel(backend="thread", name="callbacks-first")(abs)(-1)
    behind = limited(-2)  # queued next, holding the only slot of `limited`

    def wait_for_the_next() -> object:
        if wait == "get":
            return behind.get(timeout=10)
        if wait == "gather":
            return mp.gather([behind], timeout=10)
        with mp.ParallelContext(timeout=10) as group:  # its timeout bounds the wait for a slot
            group.submit(limited, -3)  # admitted once `behind` ends and frees its slot
        return group.results()

    called = CalledBack(wait_for_the_next)
    first.add_done_callback(called)
    gate.set()
    for blocker in blockers:
        blocker.get(5)
    assert called.called.wait(20)
    assert called.outcome == {"get": 2, "gather": [2], "a slot": [3]}[wait]
    assert behind.get(5) == 2


async def async_callback(*args: Any) -> None:
    """An ``async def`` callback: called, it would only make a coroutine that nobody awaits."""


async def async_generator_callback(*args: Any) -> Any:
    """An ``async def`` callback that yields: called, it would only make an async generator."""
    yield args


class AsyncCallable:
    """An object whose ``__call__`` is ``async def``."""

    async def __call__(self, *args: Any) -> None:
        """Nothing: never awaited."""


ASYNC_FUNCTIONS = [
    pytest.param(async_callback, "an async function", id="async-def"),
    pytest.param(async_generator_callback, "an async generator function", id="async-generator"),
]
# add_done_callback looks at functions alone: the library's collectors add a bound method to each task.
ASYNC_CALLABLES = [
    *ASYNC_FUNCTIONS,
    pytest.param(AsyncCallable(), "an async function", id="async-call"),
    pytest.param(functools.partial(AsyncCallable()), "an async function", id="partial-of-async-call"),
]


@pytest.mark.parametrize(
    ("register", "callback", "kind"),
    [
        *[pytest.param("on_complete", *p.values, id=f"on_complete-{p.id}") for p in ASYNC_CALLABLES],
        *[pytest.param("on_error", *p.values, id=f"on_error-{p.id}") for p in ASYNC_CALLABLES],
        *[pytest.param("add_done_callback", *p.values, id=f"add_done_callback-{p.id}") for p in ASYNC_FUNCTIONS],
    ],
)
# A sync task runs at its call: before its end, a callback is registered on threads alone.
@pytest.mark.parametrize(
    ("backend", "ended"),
    [("thread", False), ("thread", True), ("sync", True)],
    ids=["thread-before-its-end", "thread-after-its-end", "sync-after-its-end"],
)
def test_an_async_callback_is_a_type_error_and_not_kept(
    backend: str, gate: threading.Event, register: str, callback: Any, kind: str, ended: bool
) -> None:
    # Called as the task ends (or at once, where it ended already), an async callback only made a
    # coroutine that nobody awaits: nothing done, and a RuntimeWarning far from the call (none at all
    # for an async generator), as on_progress and progress= refuse it.
    recorder = Recorder()
    handle = mp.parallel(gate.wait, backend=backend)(5) if not ended else mp.parallel(abs, backend=backend)(-1)
    if ended:
        handle.get(5)
    with pytest.raises(TypeError, match=rf"{register}\(.*\) is {kind}.*plain"):
        getattr(handle, register)(callback)
    getattr(handle, register)(recorder)  # a plain one still is, and runs once
    gate.set()
    handle.wait(5)
    wanted = 0 if register == "on_error" else 1
    assert recorder.wait_for(wanted) and len(recorder.calls) == wanted


def generator_callback(*args: Any) -> Iterator[Any]:
    """A callback that yields: called, it would only make a generator, none of its body run."""
    yield args


class GeneratorCallback:
    """An object whose ``__call__`` yields."""

    def __call__(self, *args: Any) -> Iterator[Any]:
        yield args


@pytest.mark.parametrize(
    ("register", "callback"),
    [
        *[
            pytest.param(register, callback, id=f"{register}-{kind}")
            for register in ("on_complete", "on_error", "on_progress")
            for kind, callback in [
                ("generator-function", generator_callback),
                ("partial-of-generator-function", functools.partial(generator_callback)),
                ("generator-call", GeneratorCallback()),
            ]
        ],
        pytest.param("add_done_callback", generator_callback, id="add_done_callback-generator-function"),
    ],
)
@pytest.mark.parametrize("ended", [False, True], ids=["before-its-end", "after-its-end"])
def test_a_generator_callback_is_a_type_error_and_not_kept(
    gate: threading.Event, register: str, callback: Any, ended: bool
) -> None:
    # Called as the task ends or reports, it only made a generator that nobody iterates: none of
    # its body ran, and nothing said so. Refused as an async callback is.
    handle = _reporting_task(gate)(register == "on_error")
    if ended:
        gate.set()
        handle.wait(5)
    pattern = rf"{register}\(.*\) is a generator function: called .*, it would only make a generator that nobody iterates"
    with pytest.raises(TypeError, match=pattern):
        getattr(handle, register)(callback)
    recorder = Recorder()
    getattr(handle, register)(recorder)  # a plain one still is, and runs
    gate.set()
    handle.wait(5)
    assert recorder.wait_for(1)


class Made:
    """A class: called as a callback, it would only make an instance that nothing uses."""

    instances: ClassVar[list[Made]] = []

    def __init__(self, *args: Any) -> None:
        Made.instances.append(self)


# Every way of giving a class as a callback, and the class its error names.
CLASSES = [
    pytest.param(Made, "Made", id="class"),
    pytest.param(functools.partial(Made, "bound"), "Made", id="partial-of-a-class"),
    pytest.param(dict, "dict", id="builtin-class"),
]


def _reporting_task(gate: threading.Event) -> Any:
    """A task that reports progress, then waits for ``gate`` and fails if asked: one for each kind of callback."""

    @mp.parallel(backend="thread")
    def reports(fails: bool) -> int:
        mp.report_progress(0.5)
        assert gate.wait(5)
        if fails:
            raise ValueError("failed, as asked")
        return 1

    return reports


@pytest.mark.parametrize(("callback", "named"), CLASSES)
@pytest.mark.parametrize("register", ["on_complete", "on_error", "on_progress"])
@pytest.mark.parametrize("ended", [False, True], ids=["before-its-end", "after-its-end"])
def test_a_class_as_a_callback_is_a_type_error_and_not_kept(
    gate: threading.Event, register: str, callback: Any, named: str, ended: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Called as the task ends or reports, a class only makes an object that nothing uses, as
    # progress= refuses one (progress=tqdm, the class, is the likely one: on_progress(tqdm) too).
    monkeypatch.setattr(Made, "instances", [])

    handle = _reporting_task(gate)(register == "on_error")
    if ended:
        gate.set()
        handle.wait(5)
    pattern = rf"{register}\(.*\) is a class: called .*, it would only make a {named} object that nothing uses.*plain"
    with pytest.raises(TypeError, match=pattern):
        getattr(handle, register)(callback)
    recorder = Recorder()
    getattr(handle, register)(recorder)  # a plain one still is, and runs
    gate.set()
    handle.wait(5)
    assert recorder.wait_for(1)
    assert Made.instances == []


class Handles(type):
    """A metaclass whose call handles what it is given: its classes make no object when called."""

    calls: ClassVar[Recorder] = Recorder()

    def __call__(cls, *args: Any) -> None:
        Handles.calls(*args)


class Handler(metaclass=Handles):
    """A class called as a callback: its metaclass's ``__call__`` runs, and no ``Handler`` is made."""


class AsyncHandles(type):
    """A metaclass whose call is ``async def``: its classes make a coroutine when called."""

    async def __call__(cls, *args: Any) -> None:
        """Nothing: never awaited."""


class AsyncHandler(metaclass=AsyncHandles):
    """A class whose call makes a coroutine that nobody awaits."""


@pytest.mark.parametrize("register", ["on_complete", "on_error", "on_progress"])
def test_a_class_whose_metaclass_handles_its_call_is_a_callback(
    gate: threading.Event, register: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a class whose call makes an object is refused: a metaclass's own __call__ (an Enum's
    # lookup, a registry) does what it was written to do, and was taken before classes were refused.
    monkeypatch.setattr(Handles, "calls", Recorder())

    handle = _reporting_task(gate)(register == "on_error")
    getattr(handle, register)(Handler)
    getattr(handle, register)(functools.partial(Handler, "bound"))
    with pytest.raises(TypeError, match=rf"{register}\(.*\) is an async function: .*a coroutine that nobody awaits"):
        getattr(handle, register)(AsyncHandler)
    gate.set()
    handle.wait(5)
    assert Handles.calls.wait_for(2)
    assert [args[0] for args in Handles.calls.args][1] == "bound"


# -- progress callbacks racing with reports ----------------------------------------------


class _ReportOnRelease:
    """The backend's lock, which has ``report()`` run on another thread as ``thread`` first releases it.

    The moment a report can come between the end of what a thread did under the
    lock (the report it recorded, the listener it added) and the calls it makes
    after: the point two deliveries of one report, or an older one after a newer
    one, came from.
    """

    def __init__(self, lock: Any, thread: threading.Thread, report: Any) -> None:
        self._lock = lock
        self._thread: threading.Thread | None = thread
        self._report = report

    def __enter__(self) -> bool:
        return self._lock.__enter__()  # type: ignore[no-any-return]

    def __exit__(self, *exc_info: object) -> None:
        self._lock.__exit__(*exc_info)
        if threading.current_thread() is self._thread:
            self._thread = None
            other = threading.Thread(target=self._report)
            other.start()
            other.join(20)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lock, name)


def report_quarter_then_wait(flags: Flags) -> str:
    mp.report_progress(0.25)
    flags.set("reported")
    assert flags.wait_for_release("go")
    return "done"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("racing", ["on_progress", "report_progress"])
def test_a_report_racing_a_delivery_reaches_each_callback_once_and_in_order(
    backend: str, racing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A report that came as a callback was added, or as another report was delivered, was
    # delivered twice: each delivery read the handle's last progress after leaving the lock,
    # so both gave the newer value (and where the read came before the newer report and the
    # call after, the older value came last: a bar went backwards). Each callback now gets
    # each report at most once, in the order they were recorded. `_report_progress` is where
    # a report arrives on either backend: the task's thread, or the process's reader thread.
    flags = Flags(str(tmp_path))
    handle = mp.parallel(backend=backend)(report_quarter_then_wait)(flags)
    try:
        assert flags.wait("reported", 20)
        assert wait_until(lambda: handle.get_progress() == 0.25, 20)
        recorder = Recorder()
        backend_object = handle._backend
        if racing == "on_progress":
            racer = threading.current_thread()
            lock = _ReportOnRelease(backend_object._lock, racer, lambda: handle._report_progress(0.5, None))
            monkeypatch.setattr(backend_object, "_lock", lock)
            handle.on_progress(recorder)
            expected = [(0.25,), (0.5,)]
        else:
            handle.on_progress(recorder)
            racer = threading.Thread(target=handle._report_progress, args=(0.5, None))
            lock = _ReportOnRelease(backend_object._lock, racer, lambda: handle._report_progress(0.75, None))
            monkeypatch.setattr(backend_object, "_lock", lock)
            racer.start()
            racer.join(20)
            expected = [(0.25,), (0.5,), (0.75,)]
        monkeypatch.undo()
        assert recorder.args == expected
    finally:
        monkeypatch.undo()
        flags.set("go")
    assert handle.get(20) == "done"
