"""Task events: submitted, started, finished, on every backend, and listener hygiene.

Listeners are called on whatever thread the event happened on, and "finished" is
announced *after* waiters are woken, so a test never assumes an event arrived
because ``get()`` returned: it waits (bounded) for the event itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import pickle
import select
import threading
import uuid
from collections.abc import AsyncIterable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

import makeparallel as mp
from makeparallel import _events, _runtime
from makeparallel.testing import no_retry_waits, wait_until_idle
from pool_helpers import resize, wait_until
from test_retry import OutOfProcessThreads

BACKENDS = ["thread", "sync", "process"]
STATUSES = {"pending", "running", "succeeded", "failed", "cancelled", "timed out"}


def unique_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


class Recorder:
    """A listener that keeps the events of the tasks it is told about, thread-safely."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self.events: list[mp.TaskEvent] = []
        self.threads: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, event: mp.TaskEvent) -> None:
        if self.name is not None and event.name != self.name:
            return  # another test's straggler
        with self._changed:
            self.events.append(event)
            self.threads.append(threading.current_thread().name)
            self._changed.notify_all()

    def of(self, task_id: int) -> list[mp.TaskEvent]:
        with self._changed:
            return [e for e in self.events if e.task_id == task_id]

    def wait_finished(self, task_id: int, timeout: float = 20.0) -> list[mp.TaskEvent]:
        """The task's events once its "finished" event arrived (bounded wait)."""
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: any(e.task_id == task_id and e.kind == "finished" for e in self.events), timeout
            )
            assert arrived, f"no finished event for task {task_id}; got {self.events}"
            return [e for e in self.events if e.task_id == task_id]

    def wait_kind(self, task_id: int, kind: str, timeout: float = 20.0) -> mp.TaskEvent:
        with self._changed:
            arrived = self._changed.wait_for(
                lambda: any(e.task_id == task_id and e.kind == kind for e in self.events), timeout
            )
            assert arrived, f"no {kind} event for task {task_id}; got {self.events}"
            return next(e for e in self.events if e.task_id == task_id and e.kind == kind)


class SlowOnStarted:
    """A listener that, told a task named ``name`` started, holds up the telling until ``go_on`` is set (bounded)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.telling, self.go_on = threading.Event(), threading.Event()

    def __call__(self, event: mp.TaskEvent) -> None:
        if event.name == self.name and event.kind == "started":
            self.telling.set()
            self.go_on.wait(10)


@pytest.fixture
def listen() -> Iterator[Callable[[Callable[[mp.TaskEvent], object]], None]]:
    """Add listeners for one test; each is removed at teardown, whatever happens."""
    added: list[Callable[[mp.TaskEvent], object]] = []

    def add(listener: Callable[[mp.TaskEvent], object]) -> None:
        mp.add_task_listener(listener)
        added.append(listener)

    try:
        yield add
    finally:
        for listener in added:
            try:
                mp.remove_task_listener(listener)
            except ValueError:
                pass  # the test removed it itself


# -- module-level task bodies: they travel by reference to worker processes -----------------


def add_one(x: int) -> int:
    return x + 1


def fail(message: str) -> None:
    raise ValueError(message)


def wait_for_byte(fifo: str) -> str:
    """Block until the test writes a byte into the FIFO ``fifo`` (at most 20 s)."""
    fd = os.open(fifo, os.O_RDONLY)  # the test holds it open for writing: no block here
    try:
        readable, _, _ = select.select([fd], [], [], 20)
        return os.read(fd, 1).decode() if readable else ""
    finally:
        os.close(fd)


class Fifo:
    """A named pipe the test writes into to release a task, on any backend."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "release")
        os.mkfifo(self.path)
        # Held open read-write: a task opening it to read never blocks on open,
        # and blocks on read until the test writes.
        self._fd = os.open(self.path, os.O_RDWR)

    def release(self) -> None:
        os.write(self._fd, b"x" * 16)

    def close(self) -> None:
        os.close(self._fd)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Fifo]:
    pipe = Fifo(tmp_path)
    try:
        yield pipe
    finally:
        pipe.release()  # whatever still waits may go
        pipe.close()


# -- the sequence of events ------------------------------------------------------------------


_ENDS = {"succeeded": "completed_tasks", "failed": "failed_tasks", "cancelled": "cancelled_tasks", "timed out": "timed_out_tasks"}
_COUNTS = ("total_tasks", *_ENDS.values(), "running_tasks", "queued_tasks")


def assert_metrics_agree_with_events(events: list[mp.TaskEvent], name: str) -> None:
    """The metrics of ``name`` count its tasks as ``events``, all of its tasks' events, tell of them."""
    told = dict.fromkeys(_COUNTS, 0)
    by_task: dict[int, list[mp.TaskEvent]] = {}
    for event in events:
        if event.kind != "circuit":
            by_task.setdefault(event.task_id, []).append(event)
    for task in by_task.values():
        told["total_tasks"] += task[0].kind == "submitted"
        if task[-1].kind == "finished":
            told[_ENDS[task[-1].status]] += 1
        else:
            told["running_tasks" if any(e.kind == "started" for e in task) else "queued_tasks"] += 1
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert {key: metrics[key] for key in _COUNTS} == told


def assert_well_formed(events: list[mp.TaskEvent], task_id: int, name: str) -> None:
    for event in events:
        assert isinstance(event, mp.TaskEvent)
        assert event.task_id == task_id
        assert event.name == name
        assert event.status in STATUSES
        assert isinstance(event.time, float)
        assert isinstance(event.metadata, dict)
    times = [e.time for e in events]
    assert times == sorted(times)


@pytest.mark.parametrize("backend", BACKENDS)
def test_succeeded_task_emits_submitted_started_finished(backend: str, listen: Any) -> None:
    name = unique_name("events-ok")
    recorder = Recorder(name)
    listen(recorder)
    handle = mp.parallel(backend=backend, name=name)(add_one)(41)
    assert handle.get(20) == 42
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]
    assert_well_formed(events, handle.get_task_id(), name)
    submitted, started, finished = events
    assert submitted.status == "pending"
    assert submitted.queue_wait is None and submitted.duration is None
    assert started.status == "running"
    assert started.queue_wait is not None and started.queue_wait >= 0
    assert started.duration is None
    assert finished.status == "succeeded"
    assert finished.queue_wait is not None and finished.queue_wait >= 0
    assert finished.duration is not None and finished.duration >= 0


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_started_listener_runs_with_the_task_current(backend: str, listen: Any) -> None:
    # A listener's log line carries the task's id (enable_task_logging): it ran with none current.
    name = unique_name("events-current")
    seen: list[int | None] = []
    listen(lambda event: event.name == name and event.kind == "started" and seen.append(mp.get_current_task_id()))
    handle = mp.parallel(backend=backend, name=name)(add_one)(1)
    assert handle.get(20) == 2
    assert seen == [handle.get_task_id()]
    assert mp.get_current_task_id() is None  # and none after it, on the thread that ran it


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_task_finishes_as_failed(backend: str, listen: Any) -> None:
    name = unique_name("events-fail")
    recorder = Recorder(name)
    listen(recorder)
    handle = mp.parallel(backend=backend, name=name)(fail)("boom")
    with pytest.raises(ValueError, match="boom"):
        handle.get(20)
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]
    assert_well_formed(events, handle.get_task_id(), name)
    finished = events[-1]
    assert finished.status == "failed"
    assert finished.duration is not None and finished.duration >= 0
    assert finished.queue_wait is not None


def test_events_arrive_on_the_threads_where_they_happen(listen: Any) -> None:
    name = unique_name("events-threads")
    recorder = Recorder(name)
    listen(recorder)
    handle = mp.parallel(backend="thread", name=name)(add_one)(1)
    handle.get(10)
    recorder.wait_finished(handle.get_task_id())
    submitter, worker, finisher = recorder.threads
    assert submitter == threading.current_thread().name
    # Started on the worker (or on this thread, if get() claimed the queued task).
    assert worker == finisher


def test_process_task_is_started_at_dispatch_and_finishes_later(listen: Any, fifo: Fifo) -> None:
    name = unique_name("events-process")
    recorder = Recorder(name)
    listen(recorder)
    handle = mp.parallel(backend="process", name=name)(wait_for_byte)(fifo.path)
    task_id = handle.get_task_id()
    started = recorder.wait_kind(task_id, "started")  # sent to a worker: "started"
    assert started.status == "running"
    assert started.queue_wait is not None and started.queue_wait >= 0
    handle.set_metadata("stage", "released")
    assert [e.kind for e in recorder.of(task_id)] == ["submitted", "started"]
    fifo.release()
    assert handle.get(20) == "x"
    events = recorder.wait_finished(task_id)
    assert [e.kind for e in events] == ["submitted", "started", "finished"]
    finished = events[-1]
    assert finished.status == "succeeded"
    assert finished.duration is not None and finished.duration >= 0
    assert finished.metadata == {"stage": "released"}
    assert started.metadata == {}  # copied at the event


def test_process_task_is_started_before_it_finishes_however_late_its_sender_goes_on(
    listen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread that sends a task may lose the CPU right after the send, and the
    # result come back and finish the task before it goes on (seen on a loaded machine).
    from makeparallel._backends import _process

    name = unique_name("events-process-order")
    recorder = Recorder(name)
    listen(recorder)
    task = mp.parallel(backend="process", name=name)(add_one)
    assert task(0).get(20) == 1  # a warm worker: the next task is sent by the submitting thread
    send = _process._send

    def send_then_stall(worker: Any, message: tuple[Any, ...], buffers: Any = ()) -> None:
        send(worker, message, buffers)
        if message[0] == "tasks" and threading.current_thread() is threading.main_thread():
            task_id = message[1][0][0]
            assert wait_until(lambda: any(e.task_id == task_id and e.kind == "finished" for e in recorder.of(task_id)), 10)

    monkeypatch.setattr(_process, "_send", send_then_stall)
    handle = task(1)
    assert handle.get(20) == 2
    assert [e.kind for e in recorder.wait_finished(handle.get_task_id())] == ["submitted", "started", "finished"]


def test_metadata_is_copied_at_each_event(listen: Any, gate: threading.Event) -> None:
    name = unique_name("events-metadata")
    recorder = Recorder(name)
    listen(recorder)
    running = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def held() -> str:
        running.set()
        assert gate.wait(10)
        return "done"

    handle = held()
    assert running.wait(10)
    handle.set_metadata("user", "ada")
    gate.set()
    assert handle.get(10) == "done"
    submitted, started, finished = recorder.wait_finished(handle.get_task_id())
    assert submitted.metadata == {} and started.metadata == {}
    assert finished.metadata == {"user": "ada"}
    handle.set_metadata("user", "changed afterwards")
    finished.metadata["mutated"] = True
    assert finished.metadata == {"user": "ada", "mutated": True}
    assert handle.get_all_metadata() == {"user": "changed afterwards"}


def test_cancelled_queued_task_has_no_started_event(listen: Any, gate: threading.Event) -> None:
    mp.configure_thread_pool(1)
    holder_running = threading.Event()

    @mp.parallel(backend="thread", name=unique_name("events-holder"))
    def holder() -> None:
        holder_running.set()
        assert gate.wait(10)

    name = unique_name("events-cancel-queued")
    recorder = Recorder(name)
    listen(recorder)
    blocker = holder()
    assert holder_running.wait(10)
    handle = mp.parallel(backend="thread", name=name)(add_one)(1)
    handle.set_metadata("why", "cancelled")
    assert handle.cancel()
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "finished"]
    finished = events[-1]
    assert finished.status == "cancelled"
    assert finished.queue_wait is None and finished.duration is None
    assert finished.metadata == {"why": "cancelled"}
    gate.set()
    blocker.get(10)


def test_cancelled_running_task(listen: Any, gate: threading.Event) -> None:
    name = unique_name("events-cancel-running")
    recorder = Recorder(name)
    listen(recorder)
    running = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def poll() -> None:
        running.set()
        while not gate.wait(0.005):
            mp.check_cancelled()

    handle = poll()
    assert running.wait(10)
    assert handle.cancel()
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]
    finished = events[-1]
    assert finished.status == "cancelled"
    assert finished.queue_wait is not None
    assert finished.duration is not None and finished.duration >= 0


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_timed_out_task(backend: str, listen: Any, gate: threading.Event) -> None:
    name = unique_name("events-timeout")
    recorder = Recorder(name)
    listen(recorder)

    @mp.parallel(backend=backend, name=name, timeout=0.05)
    def poll() -> None:
        while not gate.wait(0.005):
            mp.check_cancelled()

    handle = poll()
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(10)
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]
    finished = events[-1]
    assert finished.status == "timed out"
    assert finished.duration is not None and finished.duration >= 0.05
    assert finished.queue_wait is not None


RELEASE = threading.Event()


def wait_for_release() -> None:
    """Until the test sets ``RELEASE``; stops at a cancel where the task can hear one."""
    while not RELEASE.wait(0.005):
        mp.check_cancelled()


@pytest.mark.parametrize("backend", ["thread", "sync", "executor elsewhere"])
def test_a_timed_task_is_started_before_its_timeout_can_finish_it(backend: str, listen: Any) -> None:
    # A listener slow on "started" (one that logs, or a busy machine) outlasts
    # the task's timeout: "finished" still comes after "started", never before.
    name = unique_name("events-slow-start")
    finished = threading.Event()

    def slow_on_started(event: mp.TaskEvent) -> None:
        if event.name != name:
            return
        if event.kind == "finished":
            finished.set()
        elif event.kind == "started":
            finished.wait(1.0)  # a "finished" told meanwhile is the bug

    listen(slow_on_started)
    recorder = Recorder(name)
    listen(recorder)
    with contextlib.ExitStack() as stack:
        RELEASE.clear()
        where: Any = backend
        if backend == "executor elsewhere":
            where = stack.enter_context(OutOfProcessThreads(1))
        stack.callback(RELEASE.set)  # before the executor's shutdown waits for the task
        handle = mp.parallel(backend=where, name=name, timeout=0.05)(wait_for_release)()
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(10)
        events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]


# -- listener hygiene -------------------------------------------------------------------------


def test_a_raising_listener_is_logged_and_the_others_still_run(
    listen: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="makeparallel")
    name = unique_name("events-raising")
    before = Recorder(name)
    after = Recorder(name)

    def broken(event: mp.TaskEvent) -> None:
        if event.name == name:
            raise RuntimeError("listener is broken")

    listen(before)
    listen(broken)
    listen(after)
    handle = mp.parallel(backend="sync", name=name)(add_one)(1)
    assert handle.get(5) == 2  # the task is unharmed
    task_id = handle.get_task_id()
    assert [e.kind for e in before.of(task_id)] == ["submitted", "started", "finished"]
    assert [e.kind for e in after.of(task_id)] == ["submitted", "started", "finished"]
    logged = [r for r in caplog.records if r.name == "makeparallel" and "listener" in r.getMessage()]
    assert len(logged) == 3, [r.getMessage() for r in caplog.records]
    for record in logged:
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
        assert "broken" in record.getMessage()  # names the listener


def test_remove_task_listener_stops_the_calls(listen: Any) -> None:
    name = unique_name("events-remove")
    recorder = Recorder(name)
    mp.add_task_listener(recorder)
    try:
        first = mp.parallel(backend="sync", name=name)(add_one)(1)
    finally:
        mp.remove_task_listener(recorder)
    second = mp.parallel(backend="sync", name=name)(add_one)(2)
    assert second.get(5) == 3
    assert len(recorder.of(first.get_task_id())) == 3
    assert recorder.of(second.get_task_id()) == []


def test_the_same_listener_added_twice_is_called_twice_and_removed_once_at_a_time() -> None:
    name = unique_name("events-twice")
    recorder = Recorder(name)
    mp.add_task_listener(recorder)
    try:
        mp.add_task_listener(recorder)
        try:
            handle = mp.parallel(backend="sync", name=name)(add_one)(1)
            assert len(recorder.of(handle.get_task_id())) == 6
        finally:
            mp.remove_task_listener(recorder)
        handle = mp.parallel(backend="sync", name=name)(add_one)(1)
        assert len(recorder.of(handle.get_task_id())) == 3
    finally:
        mp.remove_task_listener(recorder)


def test_removing_an_unknown_listener_raises_value_error() -> None:
    def never_added(event: mp.TaskEvent) -> None:
        pass

    with pytest.raises(ValueError, match="not a task listener"):
        mp.remove_task_listener(never_added)


@pytest.mark.parametrize("not_callable", [None, 42, "listener"])
def test_a_non_callable_listener_raises_type_error(not_callable: Any) -> None:
    with pytest.raises(TypeError, match="must be callable"):
        mp.add_task_listener(not_callable)


@pytest.mark.parametrize(
    ("listener", "why"),
    [
        pytest.param(lambda: None, "too many positional arguments", id="no-argument"),
        pytest.param(lambda event, sink: None, "missing a required argument: 'sink'", id="two-arguments"),
    ],
)
def test_a_listener_that_cannot_take_the_event_raises_type_error_and_is_not_added(listener: Any, why: str) -> None:
    # Added, it raised TypeError at every event of every task, which was only logged.
    with pytest.raises(
        TypeError, match=rf"a task listener must take 1 positional argument \(event\), .* cannot: {why}"
    ):
        mp.add_task_listener(listener)
    assert listener not in _events.listeners


def test_task_event_is_a_value() -> None:
    event = mp.TaskEvent(
        kind="retry", task_id=1, name="f", status="pending", time=0.0, queue_wait=None, duration=None,
        metadata={"k": 1}, attempt=1, error=ValueError("x"), wait=0.5,
    )
    for copied in (pickle.loads(pickle.dumps(event)), copy.copy(event), copy.deepcopy(event)):
        assert repr(copied) == repr(event)
        assert (copied.kind, copied.attempt, copied.wait, copied.metadata) == ("retry", 1, 0.5, {"k": 1})
    same = mp.TaskEvent("retry", 1, "f", "pending", 0.0, None, None, {"k": 1}, 1, event.error, 0.5)
    assert same == event
    assert same != mp.TaskEvent("retry", 2, "f", "pending", 0.0, None, None, {"k": 1}, 1, event.error, 0.5)


def test_task_event_is_frozen() -> None:
    event = mp.TaskEvent(
        kind="submitted", task_id=1, name="f", status="pending", time=0.0, queue_wait=None, duration=None, metadata={}
    )
    with pytest.raises(AttributeError):
        event.kind = "started"  # type: ignore[misc]


def test_a_task_that_timed_out_on_a_worker_finishes_once() -> None:
    # The deadline ends the handle; the worker, when the task finally returns,
    # must not report a second end.
    name = unique_name("events-timeout-once")
    release, second_end = threading.Event(), threading.Event()
    ends: list[mp.TaskEvent] = []

    def listen(event: mp.TaskEvent) -> None:
        if event.name == name and event.kind == "finished":
            ends.append(event)
            if len(ends) > 1:
                second_end.set()

    @mp.parallel(backend="thread", timeout=0.05, name=name)
    def overstays() -> None:
        assert release.wait(10)

    mp.add_task_listener(listen)
    try:
        handle = overstays()
        with pytest.raises(mp.TaskTimeoutError):
            handle.get(10)
        release.set()
        # The worker's bookkeeping for the returned task clears the stuck count.
        assert wait_until(lambda: mp.get_thread_pool_info()["stuck_threads"] == 0)
        assert not second_end.wait(0.3)  # bounded: can only fail if a second end comes
    finally:
        mp.remove_task_listener(listen)
    assert [event.status for event in ends] == ["timed out"]


def test_a_task_cancelled_while_its_start_is_told_finishes_after_it(listen: Any, gate: threading.Event) -> None:
    # The cancel told "finished" at once, on its own thread; the worker's "started"
    # came after it: a tracing exporter opened a span that nothing closed.
    name = unique_name("events-cancel-as-it-starts")
    slow = SlowOnStarted(name)
    listen(slow)
    recorder = Recorder(name)
    listen(recorder)

    @mp.parallel(backend="thread", name=name)
    def poll() -> None:
        while not gate.wait(0.005):
            mp.check_cancelled()

    handle = poll()
    assert slow.telling.wait(10)
    assert handle.cancel()
    slow.go_on.set()
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]
    assert events[-1].status == "cancelled"


def test_a_retry_is_told_before_the_attempt_after_it_starts(listen: Any) -> None:
    # "retry" was told by the thread that decided it (here the deadline thread, at
    # the timeout), after the next attempt had started on another (the caller's)
    # and told its "started".
    name = unique_name("events-retry-order")
    decided, second_began = threading.Event(), threading.Event()

    def slow_on_retry(event: mp.TaskEvent) -> None:
        if event.name == name and event.kind == "retry":
            decided.set()
            second_began.wait(10)  # the next attempt starts meanwhile, in the caller

    listen(slow_on_retry)
    recorder = Recorder(name)
    listen(recorder)
    attempts = []

    # The retry must return within the timeout too: room for it on a busy machine.
    @mp.parallel(backend="sync", name=name, timeout=1.0, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def deaf_then_quick() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            decided.wait(10)  # deaf to its timeout: it returns once the retry is decided
            return "stale"
        second_began.set()
        return "fresh"

    with no_retry_waits():
        handle = deaf_then_quick()
    assert handle.get(timeout=0) == "fresh"
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "retry", "started", "finished"]
    assert events[2].attempt == 1 and isinstance(events[2].error, mp.TaskTimeoutError)


def test_a_start_told_again_is_told_once(listen: Any, gate: threading.Event) -> None:
    # A process task sent again after its worker died was told "started" again,
    # with no "retry" between: the rule that drops it, shown on a running task.
    name = unique_name("events-started-again")
    recorder = Recorder(name)
    listen(recorder)
    handle = mp.parallel(backend="thread", name=name)(gate.wait)(30)
    recorder.wait_kind(handle.get_task_id(), "started")
    _events.emit("started", handle)
    gate.set()
    events = recorder.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]


def test_a_listener_removed_after_an_event_happened_still_hears_it(listen: Any, gate: threading.Event) -> None:
    # An event queued behind a slow listener went to those listening when it was
    # told: an exporter that unsubscribed, then flushed, never heard "finished".
    name = unique_name("events-removed-meanwhile")
    slow = SlowOnStarted(name)
    listen(slow)
    exporter = Recorder(name)
    mp.add_task_listener(exporter)
    try:
        handle = mp.parallel(backend="thread", name=name)(gate.wait)(30)
        assert slow.telling.wait(10)
        handle.cancel()  # its "finished" waits behind the "started" being told
    finally:
        mp.remove_task_listener(exporter)
        slow.go_on.set()
    events = exporter.wait_finished(handle.get_task_id())
    assert [e.kind for e in events] == ["submitted", "started", "finished"]


def test_a_slow_listener_never_holds_up_another_tasks_timeout(listen: Any, gate: threading.Event) -> None:
    # On sync with a timeout and a retry, the "retry" was told on the deadline
    # thread, and the task's next events queued behind it were told there too: a
    # slow listener then held back every other task's timeout.
    name = unique_name("events-deadline-thread")
    decided, second_began = threading.Event(), threading.Event()
    timed: list[mp.AsyncHandle[None]] = []
    heard_the_other_time_out = []

    @mp.parallel(backend="thread", timeout=0.2)
    def other() -> None:
        while not gate.wait(0.005):
            mp.check_cancelled()

    def slow(event: mp.TaskEvent) -> None:
        if event.name != name:
            return
        if event.kind == "retry":
            decided.set()
            second_began.wait(10)  # the next attempt's events queue behind this one
        elif event.kind == "finished":
            # Its timeout is due while this listener runs, whatever the machine's pace.
            other_timed_out = threading.Event()
            timed.append(other())
            timed[0].add_done_callback(lambda _: other_timed_out.set())
            heard_the_other_time_out.append(other_timed_out.wait(10))

    listen(slow)
    attempts = []

    # The retry must return within the timeout too: room for it on a busy machine.
    @mp.parallel(backend="sync", name=name, timeout=1.0, retry=mp.Retry(on=mp.TaskTimeoutError, attempts=2))
    def deaf_then_quick() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            decided.wait(10)
            return "stale"
        second_began.set()
        return "fresh"

    with no_retry_waits():
        assert deaf_then_quick().get(timeout=30) == "fresh"
    assert wait_until(lambda: bool(timed))
    assert isinstance(timed[0].exception(timeout=30), mp.TaskTimeoutError)
    assert wait_until(lambda: bool(heard_the_other_time_out))
    assert heard_the_other_time_out == [True]


def test_a_retry_refused_by_the_breaker_ends_off_the_deadline_thread(listen: Any, gate: threading.Event) -> None:
    # The deadline thread asked the breaker for the retry and, refused, told the
    # task's "finished" itself: a slow listener then held back every other timeout.
    name = unique_name("events-refused-retry")
    heard_the_other_time_out = []

    @mp.parallel(backend="thread", timeout=0.2)
    def other() -> None:
        while not gate.wait(0.005):
            mp.check_cancelled()

    def slow_on_finished(event: mp.TaskEvent) -> None:
        if event.name == name and event.kind == "finished":
            timed_out = threading.Event()
            other().add_done_callback(lambda _: timed_out.set())
            heard_the_other_time_out.append(timed_out.wait(10))

    listen(slow_on_finished)
    breaker = mp.CircuitBreaker(name, failure_rate=0.5, window=1, min_calls=1, recovery_timeout=60.0)
    retry = mp.Retry(on=ConnectionError, attempts=2, wait_initial=0.01, wait_jitter=0)

    @mp.parallel(backend="thread", name=name, circuit_breaker=breaker, retry=retry)
    def down() -> None:
        raise ConnectionError("down")  # opens the breaker: the retry is refused

    assert isinstance(down().exception(timeout=30), mp.CircuitOpenError)
    assert wait_until(lambda: bool(heard_the_other_time_out))
    assert heard_the_other_time_out == [True]


# -- every accepted task's events begin with "submitted" and end with "finished" ----------------


def kinds(events: list[mp.TaskEvent]) -> list[str]:
    return [event.kind for event in events]


@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
def test_a_task_of_mp_executor_is_submitted_first(backend: str, listen: Any) -> None:
    # mp.Executor.submit told "started" and "finished" but never "submitted":
    # an exporter counting the tasks in flight went below zero.
    recorder = Recorder()
    listen(recorder)
    with mp.Executor(backend=backend) as executor:
        assert executor.submit(add_one, 1).result(timeout=30) == 2
    task_id = next(e.task_id for e in recorder.events if e.name == "add_one")
    assert kinds(recorder.wait_finished(task_id)) == ["submitted", "started", "finished"]


def test_a_call_the_breaker_refused_and_retries_is_submitted_first(listen: Any) -> None:
    # Refused at the call and retried later, the task was accepted without its
    # "submitted": its events began with "retry".
    name = unique_name("events-refused-call")
    recorder = Recorder(name)
    listen(recorder)
    breaker = mp.CircuitBreaker(name, window=1, min_calls=1, recovery_timeout=60.0)
    breaker.force_open()
    retry = mp.Retry(on=mp.CircuitOpenError, attempts=3, wait_initial=0.01, wait_jitter=0)

    @mp.parallel(backend="thread", name=name, circuit_breaker=breaker, retry=retry)
    def guarded() -> int:
        return 1

    handle = guarded()
    assert isinstance(handle.exception(timeout=30), mp.CircuitOpenError)
    assert kinds(recorder.wait_finished(handle.get_task_id())) == ["submitted", "retry", "retry", "finished"]


@pytest.mark.parametrize("how", ["call", "executor", "call on a loop with max_concurrent", "refused call retried"])
def test_a_submission_refused_at_shutdown_is_told_finished(how: str, listen: Any) -> None:
    # Told "submitted", then refused (ShutdownError): no "finished" followed,
    # and an exporter counted the task in flight for good.
    name = unique_name("events-shut")
    recorder = Recorder(name)
    listen(recorder)
    breaker = mp.CircuitBreaker(name, recovery_timeout=60.0)
    if how == "refused call retried":
        breaker.force_open()
    retry = mp.Retry(on=mp.CircuitOpenError, attempts=2, wait_initial=0.01, wait_jitter=0)
    fn = mp.parallel(add_one, name=name, circuit_breaker=breaker, retry=retry, max_concurrent=4)
    executor = mp.Executor(backend="thread")
    mp.shutdown()
    try:
        with pytest.raises((mp.ShutdownError, RuntimeError)):
            if how == "executor":
                executor._backend.close(cancel_pending=False)  # as a shutdown from another thread, between its check and the submit
                executor._submit(fn._spec, add_one, (1,), {})
            elif how == "call on a loop with max_concurrent":
                import asyncio

                async def call() -> None:
                    fn(1)

                asyncio.run(call())
            else:
                fn(1)
    finally:
        mp.reset_shutdown()
        executor.shutdown()
    told = [event for event in recorder.events if event.kind != "circuit"]
    assert kinds(told) == ["submitted", "finished"]
    assert told[-1].status == "failed"
    # Counted as the listeners were told: submitted and failed. Before, the metrics
    # counted no task at all (a refusal by an executor given as backend= counted).
    assert_metrics_agree_with_events(recorder.events, name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
@pytest.mark.parametrize("when", ["waiting for a slot", "called after it"])
@pytest.mark.parametrize("how", ["call", "group's submit"])
def test_a_call_over_a_full_limit_refused_at_shutdown_is_told_finished(
    limit: str, when: str, how: str, listen: Any, gate: threading.Event
) -> None:
    # With the limit full, the shutdown refuses the call in the limit's wait,
    # before the pool sees it: it raised ShutdownError told of nothing and
    # counted nowhere, where a refusal by the pool is told "submitted" then
    # "finished" (failed) and counted so. A group's submit (its timeout bounds
    # the wait) takes a path of its own.
    name = unique_name("events-shut-full")
    recorder = Recorder(name)
    listen(recorder)
    started = threading.Event()
    fn, limiter = _held_under_a_full_limit(limit, name, started, gate)
    running = fn(0)
    assert started.wait(10)
    refusals: list[mp.ShutdownError] = []

    def call() -> None:
        try:
            if how == "call":
                fn(1)
            else:
                with mp.ParallelContext(timeout=20) as ctx:
                    ctx.submit(fn, 1)
        except mp.ShutdownError as error:
            refusals.append(error)

    _shut_down_as(when, limiter, call)
    assert len(refusals) == 1
    gate.set()
    assert running.get(timeout=10) == 0
    _assert_told_refused_once(recorder, running.get_task_id(), name)


def _held_under_a_full_limit(limit: str, name: str, started: threading.Event, gate: threading.Event) -> tuple[Any, Any]:
    """A function named ``name`` that holds its slot until ``gate``, under a limit of one (``limit`` says which), and that limit."""

    def hold(x: int) -> int:
        started.set()
        assert gate.wait(20)
        return x

    return _under_a_limit_of_one(hold, limit, name)


def _under_a_limit_of_one(fn: Callable[[int], int], limit: str, name: str) -> tuple[Any, Any]:
    """``fn`` as a thread task named ``name`` under a limit of one (``limit`` says which), and that limit."""
    if limit == "max_concurrent":
        task = mp.parallel(fn, backend="thread", name=name, max_concurrent=1)
        limiter = task._spec.limiter
    else:
        mp.set_max_concurrent_tasks(1)
        task = mp.parallel(fn, backend="thread", name=name)
        limiter = _runtime.global_limiter
    assert limiter is not None
    return task, limiter


def _shut_down_as(when: str, limiter: Any, call: Callable[[], None]) -> None:
    """Shut down as ``call`` waits for a slot of ``limiter`` (``when``: "waiting for a slot"), or before it."""
    if when == "waiting for a slot":
        caller = threading.Thread(target=call)
        caller.start()
        assert wait_until(lambda: bool(limiter._waiters))  # blocked for the slot the running task holds
        mp.shutdown(timeout_secs=0)
        caller.join(10)
    else:
        mp.shutdown(timeout_secs=0)
        call()


def _assert_told_refused_once(recorder: Recorder, running: int, name: str) -> None:
    """The task other than ``running`` was told submitted then failed, and counted so, once."""
    recorder.wait_finished(running)
    refused = [event for event in recorder.events if event.task_id != running]
    assert kinds(refused) == ["submitted", "finished"]
    assert refused[-1].status == "failed"
    assert_metrics_agree_with_events(recorder.events, name)
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.total_tasks, metrics.completed_tasks, metrics.failed_tasks) == (2, 1, 1)


class CtrlCOnSubmitted:
    """A listener that raises KeyboardInterrupt, as Ctrl-C landing in it would, at the first "submitted" of ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.armed = True

    def __call__(self, event: mp.TaskEvent) -> None:
        if event.name == self.name and event.kind == "submitted" and self.armed:
            self.armed = False
            raise KeyboardInterrupt


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
@pytest.mark.parametrize("how", ["call", "group's submit", "executor"])
def test_a_ctrl_c_in_a_submitted_listener_gives_the_calls_slot_back(limit: str, how: str, listen: Any) -> None:
    # On the main thread, a listener's Ctrl-C is raised again from the call, once every
    # listener was told. The call had taken its slot of the limit before, and kept it:
    # under a limit of one, every later call waited for a slot no task would ever free.
    assert threading.current_thread() is threading.main_thread()
    name = unique_name("events-ctrl-c-submitted")
    listen(CtrlCOnSubmitted(name))
    fn, limiter = _under_a_limit_of_one(add_one, limit, name)
    with mp.Executor("thread", max_workers=1) as executor:

        def call(x: int) -> Any:
            if how == "call":
                return fn(x)
            if how == "executor":
                return executor.submit(fn, x)
            with mp.ParallelContext(timeout=20) as ctx:  # a timeout: the slot's wait is bounded, a path of its own
                return ctx.submit(fn, x)

        with pytest.raises(KeyboardInterrupt):
            call(1)
        assert limiter._in_flight == 0, "the interrupted call kept its slot"
        later = call(2)
        assert later.result(timeout=10) == 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", [None, "max_concurrent"])
@pytest.mark.parametrize("how", ["call", "group's submit", "executor", "on a running loop"])
def test_a_ctrl_c_in_a_submitted_listener_ends_the_task_it_told_of(limit: str | None, how: str, listen: Any) -> None:
    # Listeners told "submitted" heard nothing more of the interrupted call's task, which no
    # backend ever had: an exporter counting the tasks in flight counted it for good, and the
    # metrics, which never counted it, disagreed with the events. It ends cancelled, and told so.
    assert threading.current_thread() is threading.main_thread()
    name = unique_name("events-ctrl-c-submitted-ends")
    recorder = Recorder(name)
    listen(recorder)
    listen(CtrlCOnSubmitted(name))
    options: dict[str, Any] = {} if limit is None else {"max_concurrent": 1}
    fn = mp.parallel(add_one, backend="thread", name=name, **options)
    with mp.Executor("thread", max_workers=1) as executor:

        def call(x: int) -> Any:
            if how == "call":
                return fn(x)
            if how == "executor":
                return executor.submit(fn, x)
            if how == "on a running loop":

                async def submit_there() -> Any:
                    return fn(x)

                return asyncio.run(submit_there())
            with mp.ParallelContext(timeout=20) as ctx:
                return ctx.submit(fn, x)

        with pytest.raises(KeyboardInterrupt):
            call(1)
        interrupted = _told_ended_cancelled(recorder)
        later = call(2)
        assert later.result(timeout=10) == 3
    _told_and_counted_alike_after(recorder, interrupted, name)


def _told_ended_cancelled(recorder: Recorder) -> int:
    """The one task ``recorder`` heard of, told submitted then finished, cancelled: its id."""
    (interrupted,) = {event.task_id for event in recorder.events}
    assert kinds(recorder.of(interrupted)) == ["submitted", "finished"]
    assert recorder.of(interrupted)[-1].status == "cancelled"
    return interrupted


def _told_and_counted_alike_after(recorder: Recorder, interrupted: int, name: str) -> None:
    """The one task after ``interrupted`` finished, and the metrics of ``name`` agree with every event told."""
    (second,) = {event.task_id for event in recorder.events} - {interrupted}
    recorder.wait_finished(second)
    assert_metrics_agree_with_events(recorder.events, name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("when", ["as the pool took it", "before the pool took it"])
def test_a_ctrl_c_as_a_call_over_a_limit_on_a_running_loop_is_held_ends_its_task(
    backend: str, when: str, listen: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C landing in the pool's hold() (a C call's return in it) went by unhandled: taken,
    # the task stayed held for good (no admission was started for it), counted active and
    # queued and never told "finished"; not taken, it was told "submitted" and nothing more.
    name = unique_name("events-ctrl-c-hold")
    recorder = Recorder(name)
    listen(recorder)
    fn = mp.parallel(add_one, backend=backend, name=name, max_concurrent=1)
    pool = _runtime.get_backend(backend)
    hold = pool.hold

    def interrupted_hold(handle: Any) -> None:
        if when == "as the pool took it":
            hold(handle)
        raise KeyboardInterrupt

    async def submit_there(x: int) -> Any:
        return fn(x)

    monkeypatch.setattr(pool, "hold", interrupted_hold)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(submit_there(1))
    monkeypatch.undo()
    interrupted = _told_ended_cancelled(recorder)
    assert wait_until_idle(10), f"{mp.get_active_task_count()} task(s) never end"

    async def result_there() -> Any:
        return await fn(2)

    assert asyncio.run(result_there()) == 3
    _told_and_counted_alike_after(recorder, interrupted, name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
@pytest.mark.parametrize("when", ["waiting for a slot", "called after it"])
def test_an_executor_submit_over_a_full_limit_at_shutdown_waits_and_is_told_once(
    limit: str, when: str, listen: Any, gate: threading.Event
) -> None:
    # An mp.Executor's submit takes the same slots as a call, through a path of its own.
    # mp.shutdown() leaves the executor taking tasks: its submission waits for its slot
    # through the shutdown and runs once the slot is freed, told and counted once. (It was
    # refused there with ShutdownError, and its refusal had to be told and counted.)
    name = unique_name("events-shut-full-executor")
    recorder = Recorder(name)
    listen(recorder)
    started = threading.Event()
    fn, limiter = _held_under_a_full_limit(limit, name, started, gate)
    waited: list[Any] = []
    with mp.Executor("thread", max_workers=2) as executor:
        running = executor.submit(fn, 0)
        assert started.wait(10)
        caller = threading.Thread(target=lambda: waited.append(executor.submit(fn, 1)))
        if when == "called after it":
            mp.shutdown(timeout_secs=0)
        caller.start()
        try:
            assert wait_until(lambda: bool(limiter._waiters))  # blocked for the slot the running task holds
            if when == "waiting for a slot":
                mp.shutdown(timeout_secs=0)
        finally:
            gate.set()
            caller.join(10)
        assert running.result(timeout=10) == 0
        assert len(waited) == 1, "the submission was refused"
        assert waited[0].result(timeout=10) == 1
    task = waited[0].handle.get_task_id()
    events = recorder.wait_finished(task)
    assert kinds(events) == ["submitted", "started", "finished"]
    assert events[-1].status == "succeeded"
    recorder.wait_finished(running.handle.get_task_id())
    assert_metrics_agree_with_events(recorder.events, name)
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.total_tasks, metrics.completed_tasks, metrics.failed_tasks) == (2, 2, 0)


@pytest.mark.timeout(30)
def test_after_a_shutdown_that_timed_out_metrics_and_events_tell_the_same(listen: Any, gate: threading.Event) -> None:
    # One task running on the pool's one thread, two queued that the shutdown
    # cancels, one call refused after it; then the running one ends.
    name = unique_name("events-shutdown-metrics")
    recorder = Recorder(name)
    listen(recorder)
    resize(1)
    started = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def held(x: int) -> int:
        started.set()
        assert gate.wait(20)
        return x

    running = held(0)
    assert started.wait(10)
    queued = [held(1), held(2)]
    assert mp.shutdown(timeout_secs=0, cancel_pending=True) is False
    with pytest.raises(mp.ShutdownError):
        held(3)
    assert all(handle.cancelled() for handle in queued)
    assert_metrics_agree_with_events(recorder.events, name)
    gate.set()
    assert running.get(timeout=10) == 0
    recorder.wait_finished(running.get_task_id())
    assert_metrics_agree_with_events(recorder.events, name)
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.total_tasks, metrics.completed_tasks, metrics.cancelled_tasks, metrics.failed_tasks) == (4, 1, 2, 1)


def test_a_process_task_whose_call_cannot_be_pickled_is_told_finished(listen: Any) -> None:
    # Refused at submission as shut-down ones are: told "submitted", then nothing.
    name = unique_name("events-unpicklable")
    recorder = Recorder(name)
    listen(recorder)
    with pytest.raises(mp.TaskSerializationError):
        mp.parallel(add_one, backend="process", name=name)(threading.Lock())
    assert kinds(recorder.events) == ["submitted", "finished"]
    assert recorder.events[-1].status == "failed"
    assert_metrics_agree_with_events(recorder.events, name)


def restarts(reason: str) -> int:
    """How many of the process pool's workers were replaced for ``reason`` so far."""
    return int(mp.get_process_pool_info()["worker_restart_reasons"].get(reason, 0))


async def _collect_async(results: AsyncIterable[int]) -> list[int]:
    return [result async for result in results]


def first_stuck_for_good(x: int) -> int:
    """Item 0 never ends (a hung read): only the end of the worker process that runs it stops it."""
    if x == 0:
        threading.Event().wait()
    return x


def every_submitted_finished(recorder: Recorder) -> bool:
    """Whether ``recorder`` was told of an end for every task it was told was submitted."""
    ids = {event.task_id for event in recorder.events if event.kind == "submitted"}
    return all(any(e.task_id == i and e.kind == "finished" for e in recorder.events) for i in ids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("how", ["parallel_map", "imap", "async imap"])
def test_the_chunks_a_maps_timeout_stops_end_timed_out(backend: str, how: str, listen: Any, gate: threading.Event) -> None:
    # One worker: the map's first chunk runs and never ends by itself, the three
    # behind it wait. At the map's timeout all four were counted and told
    # "cancelled", though nobody cancelled anything; a task whose own timeout
    # passes ends timed out, and so do they now, the queued ones too (the map's
    # clock starts at its call).
    name = unique_name("events-map-timeout")
    chunks = f"{name} [map]"
    recorder = Recorder(chunks)
    listen(recorder)
    fn: Callable[[int], int]
    if backend == "thread":
        resize(1)

        def first_held(x: int) -> int:
            if x == 0:
                assert gate.wait(20)
            return x

        fn = first_held
    else:
        mp.configure_process_pool(1)
        # A worker ready first: the first chunk runs well before the map's deadline.
        assert mp.parallel(backend="process")(add_one)(1).get(timeout=30) == 2
        reasons = mp.get_process_pool_info()["worker_restart_reasons"]
        fn = first_stuck_for_good
    mapped = mp.parallel(backend=backend, name=name)(fn)
    with pytest.raises(mp.TaskTimeoutError, match=r"^the map timed out after 0\.5 s with 0 item\(s\) done: ") as caught:
        if how == "parallel_map":
            mp.parallel_map(mapped, range(4), chunksize=1, timeout=0.5)
        elif how == "imap":
            list(mp.imap(mapped, range(4), chunksize=1, timeout=0.5))
        else:
            asyncio.run(_collect_async(mp.imap(mapped, range(4), chunksize=1, timeout=0.5)))
    assert "the 4 in flight timed out with it" in str(caught.value)  # as their events and metrics tell

    assert wait_until(lambda: every_submitted_finished(recorder), 20), recorder.events
    ends = [event.status for event in recorder.events if event.kind == "finished"]
    assert ends.count("timed out") == 4 and "cancelled" not in ends, ends
    assert_metrics_agree_with_events(recorder.events, chunks)
    metrics = mp.get_metrics(chunks)
    assert metrics is not None
    assert (metrics.timed_out_tasks, metrics.cancelled_tasks) == (4, 0)
    if backend == "process":  # its worker was still replaced as the map's own stop, not as a task's timeout
        assert wait_until(lambda: restarts("stopped") == reasons.get("stopped", 0) + 1, 30), restarts("stopped")
        assert restarts("timed out") == reasons.get("timed out", 0)
        assert mp.get_process_pool_info()["restarts_in_window"] == 0
    gate.set()


def second_stuck_for_good(marker: str, x: int) -> int:
    """Item 1 creates the file ``marker``, then never ends: only the end of the worker process that runs it stops it."""
    if x == 1:
        Path(marker).touch()
        threading.Event().wait()
    return x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_the_chunks_an_imap_left_early_stops_end_cancelled(
    backend: str, listen: Any, gate: threading.Event, tmp_path: Path
) -> None:
    # Leaving the loop is the user's own stop: its chunks in flight end cancelled,
    # not timed out as at the map's timeout, though the map has one; on processes
    # the item still running has its worker replaced after its grace, as before.
    name = unique_name("events-imap-left")
    chunks = f"{name} [map]"
    recorder = Recorder(chunks)
    listen(recorder)
    fn: Callable[[int], int]
    if backend == "thread":
        resize(1)
        started = threading.Event()

        def second_held(x: int) -> int:
            if x == 1:
                started.set()
                assert gate.wait(20)
            return x

        fn = second_held
        has_started = started.is_set
    else:
        mp.configure_process_pool(1)
        reasons = mp.get_process_pool_info()["worker_restart_reasons"]
        marker = tmp_path / "started"
        fn = functools.partial(second_stuck_for_good, str(marker))
        has_started = marker.exists
    iterator = mp.imap(mp.parallel(backend=backend, name=name)(fn), range(4), chunksize=1, timeout=30)
    assert next(iterator) == 0
    assert wait_until(has_started, 20)  # item 1 runs: its chunk is not merely sent
    iterator.close()

    assert wait_until(lambda: every_submitted_finished(recorder), 20), recorder.events
    ends = sorted(event.status for event in recorder.events if event.kind == "finished")
    assert ends == ["cancelled"] * 3 + ["succeeded"], ends
    assert_metrics_agree_with_events(recorder.events, chunks)
    if backend == "process":  # the item still running had its worker replaced after its grace: the map's stop
        assert wait_until(lambda: restarts("stopped") == reasons.get("stopped", 0) + 1, 30), restarts("stopped")
    gate.set()


class MadeFromEvent:
    """A class: called as a listener, it would only make an object that nothing uses."""

    def __init__(self, event: mp.TaskEvent) -> None:
        self.event = event


async def async_listener(event: mp.TaskEvent) -> None:
    """An ``async def`` listener: called, it would only make a coroutine that nobody awaits."""


class AsyncListener:
    """An object whose ``__call__`` is ``async def``."""

    async def __call__(self, event: mp.TaskEvent) -> None:
        """Nothing: never awaited."""


def generator_listener(event: mp.TaskEvent) -> Iterator[mp.TaskEvent]:
    """A listener that yields: called, it would only make a generator, none of its body run."""
    yield event


@pytest.mark.parametrize(
    ("listener", "pattern"),
    [
        pytest.param(MadeFromEvent, r"is a class: .*a MadeFromEvent object that nothing uses", id="class"),
        pytest.param(functools.partial(MadeFromEvent), r"is a class: .*MadeFromEvent object", id="partial-of-a-class"),
        pytest.param(async_listener, r"is an async function: .*a coroutine that nobody awaits", id="async-def"),
        pytest.param(AsyncListener(), r"is an async function: .*a coroutine that nobody awaits", id="async-call"),
        pytest.param(
            generator_listener, r"is a generator function: .*a generator that nobody iterates", id="generator-function"
        ),
    ],
)
def test_a_listener_whose_call_makes_what_nothing_uses_is_a_type_error_and_not_added(
    listener: Any, pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Called at each event, as the handle's callbacks are at each end or report: refused as they refuse it.
    monkeypatch.setattr(_events, "listeners", _events.listeners)  # (one taken is not left to the next test)
    before = _events.listeners
    with pytest.raises(TypeError, match=rf"add_task_listener\(.*\) {pattern}.*Pass a plain function\(event\)"):
        mp.add_task_listener(listener)
    assert _events.listeners == before


class CountsEvents(type):
    """A metaclass whose call handles the event: its classes make no object when called."""

    kinds: ClassVar[list[str]] = []

    def __call__(cls, event: mp.TaskEvent) -> None:
        CountsEvents.kinds.append(event.kind)


class EventCounter(metaclass=CountsEvents):
    """A class called as a listener: its metaclass's ``__call__`` runs, and no ``EventCounter`` is made."""


def test_a_class_whose_metaclass_handles_its_call_is_a_listener(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a class whose call makes an object is refused: a metaclass's own __call__ does its work.
    monkeypatch.setattr(_events, "listeners", _events.listeners)
    monkeypatch.setattr(CountsEvents, "kinds", [])
    mp.add_task_listener(EventCounter)
    assert mp.parallel(backend="sync")(abs)(-1).get(5) == 1
    assert CountsEvents.kinds == ["submitted", "started", "finished"]
