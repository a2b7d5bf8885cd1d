"""The helpers of ``makeparallel.testing``: what they change while they run, and what they put back."""

from __future__ import annotations

import math
import re
import sys
import threading
from pathlib import Path

import pytest
from pool_helpers import Flags, default_runs_inline, wait_for_flag

import makeparallel as mp
from makeparallel import _runtime
from makeparallel.testing import inline, wait_until_idle


@pytest.mark.timeout(20)
def test_inline_blocks_that_overlap_in_two_threads_put_the_default_back() -> None:
    # As tests run in threads at once do: one block opens, a second opens in
    # another thread, the first ends while the second still runs, then it ends.
    assert _runtime.default_backend_name() == "thread"
    first_open, first_may_end, first_ended = threading.Event(), threading.Event(), threading.Event()

    def first_block() -> None:
        with inline():
            first_open.set()
            first_may_end.wait(10)
        first_ended.set()

    other = threading.Thread(target=first_block)
    other.start()
    try:
        assert first_open.wait(10)
        with inline():
            first_may_end.set()
            assert first_ended.wait(10)
            assert default_runs_inline()  # the first block's end did not end this one
    finally:
        first_may_end.set()
        other.join(10)
    assert _runtime.default_backend_name() == "thread"
    assert not default_runs_inline()


@pytest.mark.timeout(20)
def test_inline_puts_back_the_default_it_found() -> None:
    mp.configure(backend="sync")
    with inline():
        mp.configure(backend="thread")  # changed inside: the block still ends as it began
    assert _runtime.default_backend_name() == "sync"
    _runtime.use_default_backend(None)
    with inline(), inline():
        assert default_runs_inline()
    assert _runtime.default_backend_name() == "thread"
    with pytest.raises(KeyError), inline():
        raise KeyError("a failing test")
    assert not default_runs_inline()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_wait_until_idle_waits_for_the_tasks_of_an_executor(backend: str, tmp_path: Path) -> None:
    # Code under test that takes an executor (`loop.run_in_executor`, a library's
    # `executor=`) submits to an mp.Executor and does not wait: wait_until_idle()
    # returned True at once, its task still running, and the test's next
    # assertion failed, or passed, as the task happened to be quick.
    flags = Flags(str(tmp_path))
    with mp.Executor(backend=backend, max_workers=1) as executor:
        future = executor.submit(wait_for_flag, flags, "go")
        try:
            assert not wait_until_idle(timeout=0.2)  # its task waits for the flag
            assert not future.done()
            assert mp.get_active_task_count() == 1
        finally:
            flags.set("go")
        assert wait_until_idle(timeout=30)
        assert future.done()
        assert future.result() == "go"
    assert mp.get_active_task_count() == 0


@pytest.mark.timeout(60)
def test_wait_until_idle_in_a_process_executors_callback_is_refused_as_in_a_process_tasks(tmp_path: Path) -> None:
    # The callback runs on the executor's pool's loop thread, which reads the
    # results the wait is for: without a timeout it would wait for good.
    refusals: list[str] = []
    called = threading.Event()

    def wait_there(_: object) -> None:
        for timeout in (None, 5):
            try:
                wait_until_idle(timeout)
            except RuntimeError as error:
                refusals.append(str(error))
        called.set()

    flags = Flags(str(tmp_path))
    with mp.Executor(backend="process", max_workers=1) as executor:
        first = executor.submit(wait_for_flag, flags, "first")
        second = executor.submit(wait_for_flag, flags, "second")  # unfinished as the first one's callback runs
        first.add_done_callback(wait_there)  # before it can end: the callback runs on the loop thread
        try:
            flags.set("first")
            assert called.wait(30)
        finally:
            flags.set("second")
        assert second.result(timeout=30) == "second"
    assert len(refusals) == 2
    assert "wait_until_idle(timeout=None) called in a process task's callback" in refusals[0]
    assert "wait_until_idle(timeout=5) called in a process task's callback" in refusals[1]


def _main_thread_waits_in(function_name: str) -> bool:
    """Whether the main thread's stack is inside a call of ``function_name`` now."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    while frame is not None and frame.f_code.co_name != function_name:
        frame = frame.f_back
    return frame is not None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
def test_wait_until_idle_waits_for_a_call_handed_a_slot_as_a_task_ended(limit: str, gate: threading.Event) -> None:
    # A call blocked for a slot of a limit is handed one as the task holding it
    # ends, and makes its task only then: every pool is idle in between, and
    # wait_until_idle() returned True with that task not yet run.
    ran: list[str] = []
    first_started = threading.Event()
    idle_returned = threading.Event()

    @mp.parallel(max_concurrent=1 if limit == "max_concurrent" else None)
    def work(name: str) -> None:
        if name == "first":
            first_started.set()
            assert gate.wait(30)
        ran.append(name)

    def between_the_slot_and_the_submit(event: mp.TaskEvent) -> None:
        # The producer holds its slot and has no task yet: held there until the
        # main thread waits for the slot to be free, or wait_until_idle() returned.
        if event.kind == "submitted" and threading.current_thread().name == "producer":
            for _ in range(3000):
                if idle_returned.wait(0.01) or _main_thread_waits_in("wait_free"):
                    return

    if limit == "set_max_concurrent_tasks":
        mp.set_max_concurrent_tasks(1)
    limiter = work._spec.limiter or _runtime.global_limiter
    mp.add_task_listener(between_the_slot_and_the_submit)
    producer = threading.Thread(target=work, args=("second",), name="producer")
    try:
        first = work("first")
        assert first_started.wait(10)
        producer.start()
        for _ in range(1000):  # until the producer waits for the slot
            if limiter._waiters:
                break
            threading.Event().wait(0.01)
        assert limiter._waiters
        gate.set()  # the first task ends, handing its slot to the producer
        assert wait_until_idle(30)
        idle_returned.set()
        assert ran == ["first", "second"]
        first.get(timeout=10)
    finally:
        idle_returned.set()
        gate.set()
        producer.join(10)
        mp.remove_task_listener(between_the_slot_and_the_submit)
        mp.set_max_concurrent_tasks(None)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [None, math.inf])
@pytest.mark.parametrize("limit", [None, "max_concurrent", "set_max_concurrent_tasks"])
@pytest.mark.parametrize(
    ("kind", "backend", "refusal"),
    [
        ("submitted", "thread", r'called in a task listener told "submitted" of task \d+ \(\S*work\), which is submitted only'),
        ("submitted", "sync", r'called in a task listener told "submitted" of task \d+ \(\S*work\), which is submitted only'),
        ("started", "thread", r"called inside task \d+ \(\S*work\), whose own end it waits for"),
        ("started", "sync", r"called inside task \d+ \(\S*work\), whose own end it waits for"),
        ("finished", "thread", r"called on a thread pool's worker"),
        ("finished", "sync", None),  # told on the caller's thread once the task freed its slot: nothing to wait for
        ("retry", "thread", r"called on a thread pool's worker"),
        # Told on the caller's thread, which runs the next attempt once the listeners return.
        ("retry", "sync", r"called on the thread that runs the next attempt of task \d+ \(\S*work\), which waits to retry"),
    ],
)
def test_wait_until_idle_without_a_timeout_in_a_task_listener_never_waits_for_good(
    kind: str, backend: str, refusal: str | None, limit: str | None, timeout: float | None
) -> None:
    # Told "submitted", the task is submitted once the listeners return, and
    # holds its slot of a limit meanwhile: wait_until_idle() waited for that
    # slot to be free, for good. Told "retry" on the "sync" backend, it waited
    # for an attempt that its own thread runs once the listeners return.
    outcomes: list[object] = []
    told = threading.Event()

    def wait_for_every_task(event: mp.TaskEvent) -> None:
        if event.kind != kind or told.is_set():
            return
        try:
            outcomes.append(wait_until_idle(timeout))
        except RuntimeError as error:
            outcomes.append(error)
        told.set()

    attempts: list[int] = []

    def work(x: int) -> int:
        attempts.append(x)
        if kind == "retry" and len(attempts) == 1:
            raise ValueError("the first attempt fails")
        return abs(x)

    if limit == "set_max_concurrent_tasks":
        mp.set_max_concurrent_tasks(1)
    retry = mp.Retry(attempts=2, on=ValueError, wait_initial=0) if kind == "retry" else None
    function = mp.parallel(backend=backend, max_concurrent=1 if limit == "max_concurrent" else None, retry=retry)(work)
    results: list[int] = []
    submitter = threading.Thread(
        target=lambda: results.append(function(-1).get(timeout=30)), name="submitter", daemon=True
    )
    mp.add_task_listener(wait_for_every_task)
    try:
        submitter.start()
        submitter.join(30)
        assert not submitter.is_alive(), f"wait_until_idle() in a {kind!r} listener waited for good"
        assert told.wait(30)
    finally:
        mp.remove_task_listener(wait_for_every_task)
    assert results == [1]
    if refusal is None:
        assert outcomes == [True]
    else:
        assert len(outcomes) == 1 and isinstance(outcomes[0], RuntimeError), outcomes
        bound = "a timeout" if timeout is None else "a finite timeout"
        assert re.search(rf"wait_until_idle\(timeout={timeout}\) {refusal}.*Give it {bound}", str(outcomes[0]))


def test_the_refusal_in_a_submitted_listener_says_to_wait_once_the_submission_returned() -> None:
    # The listener runs on the thread that submits, here the program's own: the
    # advice to call it "from your program's own thread" sent the reader where it was.
    refusals: list[str] = []

    def wait_for_every_task(event: mp.TaskEvent) -> None:
        if event.kind == "submitted":
            with pytest.raises(RuntimeError) as refusal:
                wait_until_idle()
            refusals.append(str(refusal.value))

    mp.add_task_listener(wait_for_every_task)
    try:
        assert mp.parallel(backend="sync")(abs)(-1).get() == 1
    finally:
        mp.remove_task_listener(wait_for_every_task)
    assert len(refusals) == 1
    assert refusals[0].endswith("Give it a timeout, or wait once the call that submitted the task returned")
