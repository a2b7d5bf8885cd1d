"""``AsyncHandle``: results, state, waiting, cancellation, awaiting and what it keeps alive."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import functools
import gc
import logging
import pickle
import threading
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import Flags, hold_the_pool

import makeparallel as mp
from makeparallel._states import RUNNING, SUCCEEDED

BACKENDS = ["thread", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


class Boom(Exception):
    """A user error with a custom signature."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


def gated_task(
    gate: threading.Event, name: str | None = None
) -> tuple[Callable[..., mp.AsyncHandle[Any]], threading.Event]:
    """A thread-backend function that signals it started, then waits for the gate."""
    started = threading.Event()

    def body(value: Any = "done") -> Any:
        started.set()
        assert gate.wait(5), "the test never opened the gate"
        return value

    options: dict[str, Any] = {"backend": "thread"}
    if name is not None:
        options["name"] = name
    return mp.parallel(body).options(**options), started


# -- results ---------------------------------------------------------------------------


def test_get_and_result_return_the_value(backend: str) -> None:
    @mp.parallel(backend=backend)
    def double(x: int) -> int:
        return 2 * x

    handle = double(4)
    assert handle.get() == 8
    assert handle.result() == 8
    assert handle.get(timeout=5) == 8
    assert handle.result(timeout=0) == 8
    assert handle.try_get() == 8


def test_get_returns_none_results(backend: str) -> None:
    @mp.parallel(backend=backend)
    def nothing() -> None:
        return None

    handle = nothing()
    assert handle.get(5) is None
    assert handle.is_ready()


def test_keyword_arguments_are_each_tasks_own(backend: str) -> None:
    # Tasks called without keyword arguments share one empty dict: a task that
    # changes the keyword arguments it received must not change another's.
    @mp.parallel(backend=backend)
    def keywords(**kwargs: Any) -> dict[str, Any]:
        kwargs["seen"] = True
        return kwargs

    assert keywords().get(5) == {"seen": True}
    assert keywords().get(5) == {"seen": True}
    assert keywords(x=1).get(5) == {"x": 1, "seen": True}
    assert keywords().get(5) == {"seen": True}


def test_get_raises_the_task_error(backend: str) -> None:
    @mp.parallel(backend=backend)
    def fail() -> None:
        raise Boom(7, "custom signature")

    handle = fail()
    with pytest.raises(Boom) as caught:
        handle.get(5)
    assert caught.value.code == 7
    with pytest.raises(Boom):
        handle.result()
    with pytest.raises(Boom):
        handle.try_get()


def test_finished_handle_state(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    handle = work()
    handle.get(5)
    assert handle.is_ready() and handle.done()
    assert not handle.running()
    assert not handle.cancelled() and not handle.is_cancelled()
    assert handle.status == "succeeded"


def test_failed_handle_state(backend: str) -> None:
    @mp.parallel(backend=backend)
    def fail() -> None:
        raise ValueError("no")

    handle = fail()
    assert handle.wait(5) is True  # wait never raises the task's error
    assert handle.is_ready() and handle.done()
    assert not handle.running() and not handle.cancelled()
    assert handle.status == "failed"


def test_running_handle_state(gate: threading.Event) -> None:
    work, started = gated_task(gate)
    handle = work(5)
    assert started.wait(5)
    assert handle.running()
    assert not handle.is_ready() and not handle.done()
    assert not handle.cancelled()
    assert handle.status == "running"
    assert handle.try_get() is None
    gate.set()
    assert handle.get(5) == 5
    assert not handle.running()
    assert handle.status == "succeeded"


def test_queued_handle_state(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)
    work, _ = gated_task(gate)
    queued = work(3)
    assert queued.status == "pending"
    assert not queued.running() and not queued.is_ready()
    assert queued.try_get() is None
    gate.set()
    assert queued.get(5) == 3
    for blocker in blockers:
        blocker.get(5)


# -- task ids, names, elapsed time -----------------------------------------------------


def test_task_ids_are_unique_and_increasing(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work(x: int) -> int:
        return x

    handles = [work(i) for i in range(50)]
    ids = [h.get_task_id() for h in handles]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for h in handles:
        h.get(5)


def test_task_ids_are_unique_across_threads() -> None:
    @mp.parallel(backend="sync")
    def work() -> None:
        pass

    barrier = threading.Barrier(4)
    ids: list[list[int]] = [[] for _ in range(4)]

    def submitter(slot: list[int]) -> None:
        barrier.wait(5)
        for _ in range(250):
            slot.append(work().get_task_id())

    threads = [threading.Thread(target=submitter, args=(slot,)) for slot in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    every = [i for slot in ids for i in slot]
    assert len(every) == 1000
    assert len(set(every)) == 1000
    assert all(slot == sorted(slot) for slot in ids)


def test_name_is_the_function_name(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        pass

    handle = work()
    assert handle.name == work.__qualname__
    named = work.options(name="handle-name")()
    assert named.name == "handle-name"
    handle.get(5)
    named.get(5)


def test_elapsed_time_grows_while_running_and_stops_at_the_end(gate: threading.Event) -> None:
    work, started = gated_task(gate)
    handle = work()
    assert started.wait(5)
    first = handle.elapsed_time()
    second = handle.elapsed_time()
    assert 0 <= first <= second
    gate.set()
    handle.get(5)
    final = handle.elapsed_time()
    assert final >= second
    assert handle.elapsed_time() == final  # frozen once the task ended


def test_elapsed_time_of_finished_task_is_frozen(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> None:
        pass

    handle = work()
    handle.get(5)
    final = handle.elapsed_time()
    assert final >= 0
    assert handle.elapsed_time() == final


# -- bounded waits ---------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_get_timeout_gives_up_and_the_task_goes_on(gate: threading.Event) -> None:
    work, started = gated_task(gate, name="get-timeout")
    handle = work("finished")
    assert started.wait(5)
    with pytest.raises(mp.TaskTimeoutError, match=r"gave up waiting .* still running") as caught:
        handle.get(timeout=0.05)
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, concurrent.futures.TimeoutError)
    assert isinstance(caught.value, mp.TaskError)
    assert "get-timeout" in str(caught.value)
    assert not handle.is_ready()  # giving up did not end the task
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.01)
    gate.set()
    assert handle.get(5) == "finished"
    assert handle.status == "succeeded"


@pytest.mark.timeout(10)
def test_get_timeout_zero_on_unfinished_task(gate: threading.Event) -> None:
    work, started = gated_task(gate)
    handle = work()
    assert started.wait(5)
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(timeout=0)
    gate.set()
    assert handle.get(5) == "done"


def _once_let_go(flags: Flags, fail: bool) -> int:
    """Wait for the test's ``"go"``; then fail, or return 3."""
    assert flags.wait_for_release("go"), "the test never let the task go"
    if fail:
        raise ValueError("boom")
    return 3


# Each wait a bounded get() can give up in: the plain one, and that of a task with a retry policy.
GIVE_UP_WAITS = {"plain": ("_block", None), "retrying": ("_wait_retrying", mp.Retry(on=KeyError, attempts=2))}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
@pytest.mark.parametrize("wait", list(GIVE_UP_WAITS))
@pytest.mark.parametrize("collect", ["get", "result", "exception"])
@pytest.mark.parametrize("on", ["thread", "process"])
def test_a_wait_that_gives_up_as_the_task_ends_says_it_ended(
    on: str, collect: str, wait: str, outcome: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its message read "it is still succeeded and goes on", or "still failed",
    # for a task that ended between the wait's timeout and the message.
    method, retry = GIVE_UP_WAITS[wait]
    flags = Flags(str(tmp_path))
    handle = mp.parallel(_once_let_go).options(backend=on, retry=retry)(flags, outcome == "failed")
    waited = getattr(mp.AsyncHandle, method)

    def times_out_as_it_ends(self: mp.AsyncHandle[Any], timeout: float | None) -> bool:
        if self is not handle:
            return waited(self, timeout)  # type: ignore[no-any-return]
        ended = threading.Event()
        self.add_done_callback(lambda _: ended.set())
        flags.set("go")
        assert ended.wait(30), "the task never ended"
        return False  # the wait's time ran out just as the task ended

    monkeypatch.setattr(mp.AsyncHandle, method, times_out_as_it_ends)
    try:
        with pytest.raises(mp.TaskTimeoutError, match="gave up waiting") as caught:
            getattr(handle, collect)(timeout=0.01)
    finally:
        flags.set("teardown")
    message = str(caught.value)
    assert f"it ended ({outcome}) just as the wait gave up" in message, message
    assert "still" not in message and "goes on" not in message, message
    monkeypatch.undo()
    if outcome == "succeeded":
        assert handle.get(0) == 3
    else:
        assert isinstance(handle.exception(0), ValueError)


@pytest.mark.timeout(10)
def test_wait_returns_false_then_true(gate: threading.Event) -> None:
    work, started = gated_task(gate)
    handle = work()
    assert started.wait(5)
    assert handle.wait(0.05) is False
    assert handle.wait(0) is False
    gate.set()
    assert handle.wait(5) is True
    assert handle.wait(0) is True
    assert handle.get(0) == "done"


def test_wait_without_timeout(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 3

    handle = work()
    assert handle.wait() is True
    assert handle.get(0) == 3


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)])
def test_bad_wait_timeouts_are_rejected(
    gate: threading.Event, timeout: object, error: type[Exception]
) -> None:
    work, started = gated_task(gate)
    handle = work()
    assert started.wait(5)
    with pytest.raises(error, match="timeout"):
        handle.wait(timeout)  # type: ignore[arg-type]
    with pytest.raises(error, match="timeout"):
        handle.get(timeout)  # type: ignore[arg-type]
    gate.set()
    handle.get(5)


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), ("1", TypeError)])
def test_bad_get_timeout_is_rejected_even_when_finished(
    backend: str, timeout: object, error: type[Exception]
) -> None:
    # A mistake must show whether or not the task happened to be done already.
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    handle = work()
    assert handle.wait(5)
    with pytest.raises(error, match="timeout"):
        handle.wait(timeout)  # type: ignore[arg-type]
    with pytest.raises(error, match="timeout"):
        handle.get(timeout)  # type: ignore[arg-type]
    with pytest.raises(error, match="timeout"):
        handle.exception(timeout)  # type: ignore[arg-type]


# -- exception() -----------------------------------------------------------------------


def test_exception_is_none_after_success(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    assert work().exception(5) is None


def test_exception_returns_the_task_error(backend: str) -> None:
    raised: list[BaseException] = []

    @mp.parallel(backend=backend)
    def fail() -> None:
        error = KeyError("missing")
        raised.append(error)
        raise error

    handle = fail()
    error = handle.exception(5)
    assert error is raised[0]
    assert handle.exception() is error


def test_exception_waits_for_the_end(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(backend="thread")
    def fail() -> None:
        started.set()
        assert gate.wait(5)
        raise OSError("late")

    handle = fail()
    assert started.wait(5)
    with pytest.raises(mp.TaskTimeoutError, match="gave up waiting"):
        handle.exception(0.05)
    gate.set()
    assert isinstance(handle.exception(5), OSError)


def test_exception_raises_for_a_cancelled_task(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)
    work, _ = gated_task(gate)
    handle = work()
    assert handle.cancel()
    with pytest.raises(mp.TaskCancelledError):
        handle.exception()
    with pytest.raises(concurrent.futures.CancelledError):
        handle.exception(0)
    gate.set()
    for blocker in blockers:
        blocker.get(5)


@pytest.mark.parametrize("collector", ["wait", "as_completed"])
def test_concurrent_futures_collectors_name_the_ones_that_take_handles(collector: str) -> None:
    """They failed with "'AsyncHandle' object has no attribute '_condition'", which says nothing of what to do."""
    handle = mp.parallel(abs)(-1)
    with pytest.raises(AttributeError, match=rf"not concurrent.futures.Future objects.*mp\.{collector}\("):
        if collector == "wait":
            concurrent.futures.wait([handle], timeout=5)
        else:
            next(concurrent.futures.as_completed([handle], timeout=5))
    assert not hasattr(handle, "_condition")  # what tools that look for attributes still see
    assert handle.get(5) == 1

# -- protocol: bool, repr --------------------------------------------------------------


def test_bool_is_refused(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 0

    handle = work()
    with pytest.raises(TypeError, match=r"is_ready\(\)"):
        bool(handle)
    with pytest.raises(TypeError, match="is_ready"):
        if handle:  # the likely misuse
            pass
    handle.get(5)


def test_repr_names_id_function_and_state(backend: str) -> None:
    @mp.parallel(backend=backend, name="repr-fn")
    def work() -> None:
        pass

    handle = work()
    handle.get(5)
    text = repr(handle)
    assert str(handle.get_task_id()) in text
    assert "repr-fn" in text
    assert "succeeded" in text


@pytest.mark.timeout(20)
def test_a_handle_is_neither_pickled_nor_copied(gate: threading.Event) -> None:
    # A copy of a queued handle ran the task a second time when waited for, and
    # the original, its queue entry dropped, never ended: shutdown waited for it.
    blockers = hold_the_pool(gate)
    ran: list[int] = []

    @mp.parallel(backend="thread", name="copied")
    def work() -> int:
        ran.append(1)
        return 7

    handle = work()
    for duplicate in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match=r"task \d+ \(copied\) cannot be pickled or copied.*handle\.get\(\)"):
            duplicate(handle)
    gate.set()
    for blocker in blockers:
        blocker.get(5)
    assert handle.get(5) == 7
    assert ran == [1]


def test_repr_of_running_task(gate: threading.Event) -> None:
    work, started = gated_task(gate, name="repr-running")
    handle = work()
    assert started.wait(5)
    assert "running" in repr(handle)
    assert "repr-running" in repr(handle)
    gate.set()
    handle.get(5)


# -- await -----------------------------------------------------------------------------


def test_await_a_finished_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> str:
        return "awaited"

    handle = work()
    handle.wait(5)

    async def main() -> str:
        return await handle

    assert asyncio.run(main()) == "awaited"


def test_await_a_failing_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def fail() -> None:
        raise LookupError("awaited failure")

    async def main() -> None:
        await fail()

    with pytest.raises(LookupError, match="awaited failure"):
        asyncio.run(main())


@pytest.mark.timeout(10)
def test_await_an_unfinished_task_without_blocking_the_loop(gate: threading.Event) -> None:
    work, started = gated_task(gate)
    loop_ran: list[str] = []
    openers: list[threading.Thread] = []

    def open_gate_from_another_thread() -> None:
        loop_ran.append("opener scheduled")  # the loop is free while we await
        opener = threading.Thread(target=gate.set)
        openers.append(opener)
        opener.start()

    async def main() -> Any:
        handle = work("from the pool")
        assert started.wait(5)
        assert not handle.is_ready()
        # Runs on the loop's next turn, that is once the await below has suspended.
        asyncio.get_running_loop().call_soon(open_gate_from_another_thread)
        return await handle

    assert asyncio.run(main()) == "from the pool"
    assert loop_ran == ["opener scheduled"]
    for opener in openers:
        opener.join(5)


@pytest.mark.timeout(10)
def test_await_an_unfinished_failing_task(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(backend="thread")
    def fail() -> None:
        started.set()
        assert gate.wait(5)
        raise ArithmeticError("late failure")

    async def main() -> None:
        handle = fail()
        assert started.wait(5)
        asyncio.get_running_loop().call_soon(gate.set)
        await handle

    with pytest.raises(ArithmeticError, match="late failure"):
        asyncio.run(main())


@pytest.mark.timeout(10)
def test_abandoned_await_leaves_no_error_behind(
    gate: threading.Event, caplog: pytest.LogCaptureFixture
) -> None:
    # An await left unfinished in an event loop that has since closed (without
    # cancelling it): the task's later end must not log an error. asyncio reports
    # the pending task it left once it is collected: here, not in a later test's time.
    caplog.set_level(logging.ERROR, logger="makeparallel")
    work, started = gated_task(gate)
    handle = work("late")
    assert started.wait(5)

    async def main() -> str:
        waiting = asyncio.ensure_future(handle)  # an await nobody finishes
        await asyncio.sleep(0)
        return waiting.get_name()

    loop = asyncio.new_event_loop()
    name = loop.run_until_complete(main())
    loop.close()
    delivered = threading.Event()
    handle.add_done_callback(lambda _: delivered.set())  # after the await's own
    gate.set()
    assert handle.get(5) == "late"
    assert delivered.wait(5)
    errors = [r for r in caplog.records if r.name == "makeparallel"]
    assert errors == [], [r.getMessage() for r in errors]
    gc.collect()
    reported = [r.getMessage() for r in caplog.records if r.name == "asyncio" and f"name='{name}'" in r.getMessage()]
    assert len(reported) == 1 and reported[0].startswith("Task was destroyed but it is pending!"), reported


# -- cancel() --------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_cancel_a_queued_task(gate: threading.Event) -> None:
    ran: list[str] = []
    blockers = hold_the_pool(gate)

    @mp.parallel(backend="thread", name="cancel-queued")
    def victim() -> None:
        ran.append("victim")

    @mp.parallel(backend="thread")
    def after() -> str:
        return "after"

    handle = victim()
    later = after()  # queued behind the victim
    assert handle.status == "pending"
    assert handle.cancel() is True
    assert handle.cancelled() and handle.is_cancelled()
    assert handle.is_ready() and handle.done()
    assert handle.status == "cancelled"
    assert handle.cancel() is False  # already ended
    with pytest.raises(mp.TaskCancelledError, match="cancel") as caught:
        handle.get(5)
    assert isinstance(caught.value, concurrent.futures.CancelledError)
    assert isinstance(caught.value, mp.TaskError)
    assert "cancel-queued" in str(caught.value)
    with pytest.raises(concurrent.futures.CancelledError):
        handle.result()
    with pytest.raises(mp.TaskCancelledError):
        handle.try_get()
    assert handle.wait(0) is True
    gate.set()
    for blocker in blockers:
        blocker.get(5)
    # A bounded wait never runs the task inline: a worker passed the victim's
    # queue entry to reach this one.
    assert later.wait(5)
    assert later.get() == "after"
    assert ran == []


def test_cancel_a_finished_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def work() -> int:
        return 1

    handle = work()
    assert handle.get(5) == 1
    assert handle.cancel() is False
    assert not handle.cancelled()
    assert handle.status == "succeeded"
    assert handle.get() == 1


def test_cancel_a_failed_task(backend: str) -> None:
    @mp.parallel(backend=backend)
    def fail() -> None:
        raise ValueError("failed first")

    handle = fail()
    handle.wait(5)
    assert handle.cancel() is False
    with pytest.raises(ValueError):
        handle.get()


@pytest.mark.parametrize("force", ["no", 0, None])
def test_a_force_that_is_not_a_bool_is_refused(gate: threading.Event, force: object) -> None:
    # A truthy "no" stopped the worker process running the task, as force=True does.
    work, started = gated_task(gate)
    handle = work()
    assert started.wait(5)
    with pytest.raises(TypeError, match=rf"force must be a bool \(True stops the worker process running the task\), got {force!r}"):
        handle.cancel(force=force)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="force must be a bool"):
        handle.cancel_with_timeout(1, force=force)  # type: ignore[arg-type]
    assert handle.running()
    gate.set()
    assert handle.get(5) == "done"


# -- context variables -----------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


def test_contextvars_reach_the_task_and_do_not_leak_back(backend: str) -> None:
    @mp.parallel(backend=backend)
    def read_and_change() -> str:
        seen = request_id.get()
        request_id.set("changed inside the task")
        return seen

    token = request_id.set("from the submitter")
    try:
        handle = read_and_change()
        assert handle.get(5) == "from the submitter"
        assert request_id.get() == "from the submitter"
    finally:
        request_id.reset(token)


def test_contextvars_are_copied_at_submission(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(backend="thread")
    def read_later() -> str:
        started.set()
        assert gate.wait(5)
        return request_id.get()

    token = request_id.set("at submission")
    try:
        handle = read_later()
        assert started.wait(5)
        request_id.set("after submission")
        gate.set()
        assert handle.get(5) == "at submission"
    finally:
        request_id.reset(token)


def test_tasks_do_not_see_each_others_context(backend: str) -> None:
    @mp.parallel(backend=backend)
    def set_then_read(value: str) -> str:
        before = request_id.get()
        request_id.set(value)
        return before

    handles = [set_then_read(str(i)) for i in range(20)]
    assert [h.get(5) for h in handles] == ["unset"] * 20


def test_tasks_submitted_from_an_empty_context_do_not_share_one(backend: str) -> None:
    # From an empty context, each task starts in a fresh empty one of its own:
    # what one task sets, no later task on the same thread sees.
    mp.configure_thread_pool(1)

    @mp.parallel(backend=backend)
    def set_then_read(value: str) -> str:
        before = request_id.get()
        request_id.set(value)
        return before

    def submit_all() -> list[mp.AsyncHandle[str]]:
        return [set_then_read(str(i)) for i in range(20)]

    empty = contextvars.Context()
    assert len(empty) == 0
    handles = empty.run(submit_all)
    assert [h.get(5) for h in handles] == ["unset"] * 20
    assert request_id.get() == "unset"


def test_a_retry_sees_what_its_failed_attempt_set_from_an_empty_context() -> None:
    attempts: list[str] = []

    @mp.parallel(backend="thread", retry=mp.Retry(on=ConnectionError, attempts=2, wait_initial=0.0))
    def flaky() -> str:
        attempts.append(request_id.get())
        request_id.set("set by the first attempt")
        if len(attempts) == 1:
            raise ConnectionError("first attempt")
        return request_id.get()

    handle = contextvars.Context().run(flaky)
    assert handle.get(5) == "set by the first attempt"
    assert attempts == ["unset", "set by the first attempt"]


# -- references ------------------------------------------------------------------------


class Payload:
    """An argument object that can be weakly referenced."""


def test_ended_handle_drops_its_arguments(backend: str) -> None:
    @mp.parallel(backend=backend)
    def use(positional: Payload, *, keyword: Payload) -> int:
        return 1

    positional, keyword = Payload(), Payload()
    refs = [weakref.ref(positional), weakref.ref(keyword)]
    handle = use(positional, keyword=keyword)
    assert handle.get(5) == 1
    del positional, keyword
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert handle.get() == 1  # the handle itself is alive and still answers


def test_cancelled_handle_drops_its_arguments(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)

    @mp.parallel(backend="thread")
    def use(payload: Payload) -> None:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    handle = use(payload)
    assert handle.cancel()
    del payload
    gc.collect()
    assert ref() is None
    gate.set()
    for blocker in blockers:
        blocker.get(5)


def test_ended_handle_drops_the_function(backend: str) -> None:
    class Callable_:
        def __call__(self) -> int:
            return 2

    fn = Callable_()
    ref = weakref.ref(fn)
    handle = mp.parallel(fn).options(backend=backend)()
    assert handle.get(5) == 2
    del fn
    gc.collect()
    # The decorated function is gone from this frame too: only the handle is left.
    assert ref() is None


# -- a task settled while get() reads it -------------------------------------------------


@pytest.mark.timeout(30)
def test_get_of_a_task_that_ends_as_it_is_read_returns_its_result() -> None:
    """The task ends between get()'s first look at its state and the next one.

    A worker settles a task without the reader's lock; get() looked at the
    state twice, saw it running and then ended, and raised the result as the
    task's error (``TypeError: exceptions must derive from BaseException``):
    one map in several thousand on a loaded machine. Here the first look is
    made to see it running.
    """
    handle = mp.parallel(lambda: 42, backend="sync")()
    assert handle.done()
    looks: list[int] = []
    slot = mp.AsyncHandle._state  # the slot the class reads and writes

    class SeenRunningFirst(type(handle)):  # type: ignore[misc]
        __slots__ = ()

        @property
        def _state(self) -> int:
            looks.append(slot.__get__(self, mp.AsyncHandle))
            return RUNNING if len(looks) == 1 else looks[-1]

    handle.__class__ = SeenRunningFirst
    assert handle.get(10) == 42
    assert len(looks) > 1


@pytest.mark.timeout(30)
def test_a_task_holds_its_result_before_its_state_says_it_ended(gate: threading.Event) -> None:
    """get() reads the state, then the value, without the lock: the value must be there first."""
    handle = mp.parallel(gate.wait, backend="thread")(10)
    slot, value = mp.AsyncHandle._state, mp.AsyncHandle._value
    value_as_it_ended: list[Any] = []

    class Watched(type(handle)):  # type: ignore[misc]
        __slots__ = ()

        @property
        def _state(self) -> int:
            return slot.__get__(self, mp.AsyncHandle)  # type: ignore[no-any-return]

        @_state.setter
        def _state(self, state: int) -> None:
            if state == SUCCEEDED:
                value_as_it_ended.append(value.__get__(self, mp.AsyncHandle))
            slot.__set__(self, state)

    handle.__class__ = Watched
    gate.set()
    assert handle.get(10) is True
    assert value_as_it_ended == [True]


# -- an error read again and again -----------------------------------------------------


def _ended_with(outcome: str, backend: str, gate: threading.Event) -> mp.AsyncHandle[Any]:
    """A handle that ended ``outcome``: "failed" (a ValueError), "cancelled" or "timed out" as it ran."""
    if outcome == "failed":
        handle = mp.parallel(int, backend=backend)("not a number")
        handle.wait(10)
        return handle
    started = threading.Event()

    def held() -> None:
        started.set()
        gate.wait(10)

    handle = mp.parallel(held, backend="thread", timeout=0.01 if outcome == "timed out" else None)()
    assert started.wait(10)
    if outcome == "cancelled":
        assert handle.cancel()
    assert handle.wait(10) and handle.status == outcome
    return handle


def _get(handle: mp.AsyncHandle[Any]) -> object:
    return handle.get()


def _result(handle: mp.AsyncHandle[Any]) -> object:
    return handle.result(10)


def _try_get(handle: mp.AsyncHandle[Any]) -> object:
    return handle.try_get()


def _await(handle: mp.AsyncHandle[Any]) -> object:
    async def main() -> object:
        return await handle

    return asyncio.run(main())


ERROR_READS = {"get": _get, "result": _result, "try_get": _try_get, "await": _await}


def _read_from_a_caller(read: Callable[[], object]) -> tuple[weakref.ref[Payload], int]:
    """Read an ended task's error from a frame holding an object, as a request handler's holds its request.

    Returns a weak reference to that object, and how many frames the error's traceback listed.
    """
    request = Payload()
    try:
        read()
    except Exception as error:  # noqa: BLE001  # (TaskCancelledError is one too)
        frames = 0
        tb = error.__traceback__
        while tb is not None:
            frames, tb = frames + 1, tb.tb_next
        return weakref.ref(request), frames
    raise AssertionError("the read gave no error")


def _read_again_and_again(read: Callable[[], object]) -> None:
    """Each read lists as many frames as the first, and the first reader's frame is let go."""
    first_request, frames = _read_from_a_caller(read)
    for _ in range(5):
        _, again = _read_from_a_caller(read)
        assert again == frames
    gc.collect()
    assert first_request() is None


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("outcome", "on"),
    [("failed", "thread"), ("failed", "sync"), ("failed", "process"), ("cancelled", "thread"), ("timed out", "thread")],
)
@pytest.mark.parametrize("read", list(ERROR_READS))
def test_an_error_read_again_keeps_no_earlier_callers_frames(
    read: str, outcome: str, on: str, gate: threading.Event
) -> None:
    """Each read raises the error with the traceback it had, not with every earlier read's frames on it.

    Raised as it was, the error's traceback grew by the reader's frames at each
    read, and kept every one alive with its locals: a service that polled a
    failed task's handle (``try_get()`` at each status request) kept each request
    for as long as it kept the handle, and the traceback printed listed them all.
    """
    handle = _ended_with(outcome, on, gate)
    _read_again_and_again(functools.partial(ERROR_READS[read], handle))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
def test_an_executor_future_read_again_keeps_no_earlier_callers_frames(outcome: str, gate: threading.Event) -> None:
    """``ExecutorFuture.result()``, read again and again, raises the error as it was first raised (as above)."""
    started = threading.Event()

    def task() -> None:
        started.set()
        if outcome == "failed":
            raise ValueError("failed")
        gate.wait(10)

    with mp.Executor(max_workers=1) as executor:
        future = executor.submit(task)
        assert started.wait(10)
        if outcome == "cancelled":
            assert future.handle.cancel()
        concurrent.futures.wait([future], timeout=10)
        _read_again_and_again(functools.partial(future.result, 10))
        gate.set()


@pytest.mark.timeout(60)
def test_a_groups_results_read_again_keep_no_earlier_callers_frames() -> None:
    """``ParallelContext.results()`` raises the group's first failure as it was first raised (as above)."""

    def fail() -> None:
        raise ValueError("failed")

    with pytest.raises(ValueError, match="failed"), mp.ParallelContext() as ctx:
        # Ended on a worker (a wait with a timeout runs nothing inline): one run inline by the first
        # results() would keep that caller as its own frames' caller, as any traceback does.
        assert ctx.submit(fail).wait(10)
        _read_again_and_again(ctx.results)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_task_that_let_another_tasks_error_through_is_raised_from_its_own_frames(backend: str) -> None:
    """A task that raised another task's error (its ``get()``) keeps the traceback it ended with, whoever read first.

    The two handles hold one exception object. Each took its traceback at its
    first read: read first through the other task's handle, it was that read's,
    so this task's error listed the other task's reader in place of this task's
    own frames, and kept that reader alive for as long as this handle lived.
    """
    failing = mp.parallel(int, backend=backend)("not a number")
    failing.wait(10)

    def let_through() -> int:
        return failing.get()

    through = mp.parallel(let_through, backend=backend)()
    assert through.wait(10)
    other_reader, _ = _read_from_a_caller(failing.get)
    with pytest.raises(ValueError) as caught:
        through.get()
    assert caught.value is failing.exception()
    shown = [entry.name for entry in traceback.extract_tb(caught.tb)]
    assert "let_through" in shown, f"the task's own frames are missing: {shown}"
    assert "_read_from_a_caller" not in shown, f"the other task's reader is listed: {shown}"
    del caught
    gc.collect()
    assert other_reader() is None, "the other task's reader is kept alive"


def _exception(handle: mp.AsyncHandle[Any]) -> BaseException | None:
    return handle.exception(10)


def _on_error(handle: mp.AsyncHandle[Any]) -> BaseException | None:
    given: list[BaseException] = []
    handle.on_error(given.append)  # added once the task ended: it runs here, at once
    return given[0]


ERROR_HAND_OUTS = {"exception": _exception, "on_error": _on_error}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("on", ["thread", "sync", "process"])
@pytest.mark.parametrize("hand_out", list(ERROR_HAND_OUTS))
def test_an_error_handed_out_after_a_read_lists_no_readers_frames(hand_out: str, on: str) -> None:
    """``exception()`` and an ``on_error`` callback give the error with the traceback it ended with, after any read.

    A read (``get()``) raised the error and left its own frames on it: handed
    out as it was then, the error listed that reader as where it was raised,
    printed or logged (``logging.error(exc_info=error)``), and kept the
    reader's frame alive with its locals for as long as the error was held.
    """
    handle = mp.parallel(int, backend=on)("not a number")
    assert handle.wait(10)
    reader, _ = _read_from_a_caller(handle.get)
    error = ERROR_HAND_OUTS[hand_out](handle)
    assert isinstance(error, ValueError)
    shown = [entry.name for entry in traceback.extract_tb(error.__traceback__)]
    assert "_read_from_a_caller" not in shown, f"the error lists an earlier reader: {shown}"
    del error
    gc.collect()
    assert reader() is None, "the earlier reader is kept alive"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("through", ["exception", "wrap_future"])
def test_an_executor_futures_error_handed_out_after_a_read_lists_no_readers_frames(through: str) -> None:
    """``ExecutorFuture.exception()``, and asyncio's ``wrap_future`` that reads it, give the error as it ended (as above).

    ``asyncio.wrap_future`` of a future that ended keeps the traceback its
    error has then, and raises from it at every ``await``: it listed the
    future's last ``result()`` reader there, and kept it alive with the future.
    """

    def fail() -> None:
        raise ValueError("failed")

    with mp.Executor(max_workers=1) as executor:
        future = executor.submit(fail)
        concurrent.futures.wait([future], timeout=10)
        reader, _ = _read_from_a_caller(functools.partial(future.result, 10))
        if through == "exception":
            error = future.exception(10)
            assert isinstance(error, ValueError)
            tb = error.__traceback__
            del error
        else:

            async def main() -> Any:
                wrapped = asyncio.wrap_future(future)
                try:
                    await wrapped
                except ValueError as caught:
                    return caught.__traceback__
                raise AssertionError("the await gave no error")

            tb = asyncio.run(main())
        shown = [entry.name for entry in traceback.extract_tb(tb)]
        assert "_read_from_a_caller" not in shown, f"the error lists an earlier reader: {shown}"
        del tb
        gc.collect()
        assert reader() is None, "the earlier reader is kept alive"
