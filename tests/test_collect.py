"""Collecting many handles: ``gather``, ``as_completed`` and ``wait``.

Orderings are forced with events: a "blocked" task signals that it started on a
worker and then waits for the test's gate, so it is certainly unfinished while
the collector runs. Behaviour that must not depend on the engine runs on both the
``"thread"`` and the ``"sync"`` backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pool_helpers import in_thread, wait_until

import makeparallel as mp

BACKENDS = ["thread", "sync"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


class Boom(Exception):
    """A user error with a custom signature."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code


def blocked_task(
    gate: threading.Event, gate_wait: float = 10.0
) -> tuple[Callable[..., mp.AsyncHandle[Any]], threading.Event]:
    """A thread-backend function that signals it started, then waits for ``gate``."""
    started = threading.Event()

    @mp.parallel(backend="thread", name="blocked")
    def blocked(value: Any = "blocked") -> Any:
        started.set()
        assert gate.wait(gate_wait), "the test never opened the gate"
        return value

    return blocked, started


def start_blocked(gate: threading.Event, value: Any = "blocked") -> mp.AsyncHandle[Any]:
    """Submit a blocked task and return once it runs on a worker (so nobody runs it inline)."""
    blocked, started = blocked_task(gate)
    handle = blocked(value)
    assert started.wait(5), "the blocked task never started"
    assert handle.running()
    return handle


def functions(backend: str) -> tuple[Callable[..., mp.AsyncHandle[Any]], Callable[..., mp.AsyncHandle[Any]]]:
    """A squaring function and one that raises ``Boom`` on the given backend."""

    @mp.parallel(backend=backend)
    def square(x: int) -> int:
        return x * x

    @mp.parallel(backend=backend)
    def fail(code: int) -> None:
        raise Boom(code, "failed on purpose")

    return square, fail


# -- gather: results ---------------------------------------------------------------------


def test_gather_returns_results_in_submission_order(backend: str) -> None:
    square, _ = functions(backend)
    handles = [square(i) for i in range(20)]
    assert mp.gather(handles) == [i * i for i in range(20)]


def test_gather_of_nothing_is_an_empty_list() -> None:
    assert mp.gather([]) == []
    assert mp.gather(iter([])) == []


def test_gather_accepts_any_iterable_of_handles(backend: str) -> None:
    square, _ = functions(backend)
    assert mp.gather(square(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_gather_keeps_submission_order_when_tasks_end_in_reverse(gate: threading.Event) -> None:
    first = start_blocked(gate, "first")

    @mp.parallel(backend="thread")
    def quick(value: str) -> str:
        return value

    second, third = quick("second"), quick("third")
    assert second.wait(5) and third.wait(5)
    assert not first.done()  # so the end order is second, third, first
    gate.set()
    assert mp.gather([first, second, third]) == ["first", "second", "third"]


def test_gather_mixes_functions_and_backends() -> None:
    @mp.parallel(backend="thread")
    def on_thread(x: int) -> str:
        return f"thread {x}"

    @mp.parallel(backend="sync")
    def on_sync(x: int) -> str:
        return f"sync {x}"

    @mp.parallel
    def on_default(x: int) -> str:
        return f"default {x}"

    handles = [on_sync(1), on_thread(2), on_default(3), on_thread(4), on_sync(5)]
    assert mp.gather(handles) == ["sync 1", "thread 2", "default 3", "thread 4", "sync 5"]


# -- gather: failures ----------------------------------------------------------------------


def test_gather_raise_raises_the_task_error_as_itself(backend: str) -> None:
    square, fail = functions(backend)
    with pytest.raises(Boom) as caught:
        mp.gather([square(1), fail(7), square(3)])
    assert caught.value.code == 7
    assert any("makeparallel: task" in note for note in caught.value.__notes__)


@pytest.mark.timeout(20)
def test_gather_raise_raises_while_another_task_is_still_blocked(gate: threading.Event) -> None:
    running = start_blocked(gate, "survivor")
    _, fail = functions("thread")

    with pytest.raises(Boom) as caught:
        mp.gather([running, fail(1)])
    assert caught.value.code == 1
    # Raised as soon as the failure happened, while the other task still ran,
    # and that task was left running.
    assert running.running()
    assert not running.cancelled()
    gate.set()
    assert running.get(5) == "survivor"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("error", [KeyboardInterrupt("the task's own"), SystemExit(3)])
def test_gather_raise_of_a_task_s_base_exception_leaves_the_other_tasks_running(
    gate: threading.Event, error: BaseException
) -> None:
    """A ``KeyboardInterrupt`` a task raised on a worker is its failure, not Ctrl-C at the gather.

    ``gather`` raised it from inside its own Ctrl-C handling, which cancelled
    the other tasks, where a failure leaves them running.
    """
    running = start_blocked(gate, "survivor")

    @mp.parallel(backend="thread")
    def raise_it() -> None:
        raise error

    with pytest.raises(type(error)) as caught:
        mp.gather([running, raise_it()])
    assert caught.value is error
    assert running.running()
    assert not running.cancelled()
    gate.set()
    assert running.get(5) == "survivor"


@pytest.mark.timeout(30)
def test_gather_raise_does_not_wait_for_a_just_submitted_blocked_task(gate: threading.Event) -> None:
    # The spec's scenario as a user writes it: submit, then gather at once. With
    # two workers, A runs on one and B fails on the other; gather must raise B's
    # error while A is still blocked, whether or not A has started yet.
    mp.configure_thread_pool(2)
    blocked, _ = blocked_task(gate, gate_wait=5)
    _, fail = functions("thread")
    a = blocked("a")
    b = fail(2)
    with pytest.raises(Boom):
        mp.gather([a, b])
    blocked_while_raised = not a.done()
    gate.set()
    a.wait(10)
    assert blocked_while_raised, (
        "gather raised B's error only after A ended: the collecting thread ran the "
        "blocked task A inline instead of watching for failures"
    )


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [("skip", [0, 4]), ("none", [0, None, 4, None])],
)
def test_gather_skip_and_none(backend: str, on_error: str, expected: list[Any]) -> None:
    square, fail = functions(backend)
    handles = [square(0), fail(1), square(2), fail(3)]
    assert mp.gather(handles, on_error=on_error) == expected  # type: ignore[arg-type]


def test_gather_none_when_everything_fails(backend: str) -> None:
    _, fail = functions(backend)
    assert mp.gather([fail(1), fail(2)], on_error="none") == [None, None]
    assert mp.gather([fail(1), fail(2)], on_error="skip") == []


def cancelled_and_timed_out(gate: threading.Event) -> tuple[mp.AsyncHandle[Any], mp.AsyncHandle[Any]]:
    """One handle cancelled while it ran, one that ran past its own timeout."""
    cancelled = start_blocked(gate)
    assert cancelled.cancel()

    @mp.parallel(backend="thread", timeout=0.05)
    def too_slow() -> None:
        assert gate.wait(10)

    timed_out = too_slow()
    assert timed_out.wait(5), "the task's own timeout never fired"
    assert cancelled.status == "cancelled" and timed_out.status == "timed out"
    return cancelled, timed_out


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [("skip", ["ok 1", "ok 3"]), ("none", ["ok 1", None, "ok 3", None])],
)
def test_gather_counts_cancelled_and_timed_out_as_failed(
    gate: threading.Event, on_error: str, expected: list[Any]
) -> None:
    cancelled, timed_out = cancelled_and_timed_out(gate)

    @mp.parallel(backend="thread")
    def ok(x: int) -> str:
        return f"ok {x}"

    handles = [ok(1), cancelled, ok(3), timed_out]
    assert mp.gather(handles, on_error=on_error) == expected  # type: ignore[arg-type]
    gate.set()


def test_gather_raise_raises_cancellation_and_timeout(gate: threading.Event) -> None:
    cancelled, timed_out = cancelled_and_timed_out(gate)
    with pytest.raises(mp.TaskCancelledError):
        mp.gather([cancelled])
    with pytest.raises(mp.TaskTimeoutError):
        mp.gather([timed_out])
    gate.set()


# -- gather: timeout -------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_gather_timeout_says_how_many_were_unfinished(gate: threading.Event, timeout: float) -> None:
    blocked = start_blocked(gate)

    @mp.parallel(backend="thread")
    def quick() -> str:
        return "quick"

    done = [quick(), quick()]
    assert all(h.wait(5) for h in done)
    with pytest.raises(mp.TaskTimeoutError, match=r"\b1 of 3\b") as caught:
        mp.gather([done[0], blocked, done[1]], timeout=timeout)
    assert isinstance(caught.value, TimeoutError)
    assert blocked.running()  # the timeout gave up waiting; the task goes on
    gate.set()
    assert blocked.get(5) == "blocked"


async def _gather_async(handles: list[mp.AsyncHandle[Any]], timeout: float) -> Any:
    return await mp.gather_async(handles, timeout=timeout)


async def _as_completed_async(handles: list[mp.AsyncHandle[Any]], timeout: float) -> Any:
    return [handle async for handle in mp.as_completed(handles, timeout=timeout)]


# Every collector with a timeout, as a call that waits for all of ``handles``.
COLLECTORS_WITH_A_TIMEOUT: dict[str, Callable[[list[mp.AsyncHandle[Any]], float], Any]] = {
    "gather": lambda handles, timeout: mp.gather(handles, timeout=timeout),
    "gather_async": lambda handles, timeout: asyncio.run(_gather_async(handles, timeout)),
    "as_completed": lambda handles, timeout: list(mp.as_completed(handles, timeout=timeout)),
    "async for as_completed": lambda handles, timeout: asyncio.run(_as_completed_async(handles, timeout)),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("timeout", [0, 0.05])
@pytest.mark.parametrize(("listed", "says"), [("bb", "1 of 1"), ("dbbdq", "1 of 3")])
@pytest.mark.parametrize("collector", list(COLLECTORS_WITH_A_TIMEOUT))
def test_a_collector_timeout_counts_a_task_listed_twice_once(
    gate: threading.Event, collector: str, listed: str, says: str, timeout: float
) -> None:
    # gather and gather_async said "2 of 2 tasks unfinished" for one task
    # listed twice, where as_completed counted the distinct tasks.
    blocked = start_blocked(gate)

    @mp.parallel(backend="thread")
    def quick() -> str:
        return "quick"

    done, other = quick(), quick()
    assert done.wait(5) and other.wait(5)
    handles = [{"b": blocked, "d": done, "q": other}[name] for name in listed]
    with pytest.raises(mp.TaskTimeoutError) as caught:
        COLLECTORS_WITH_A_TIMEOUT[collector](handles, timeout)
    assert f"with {says} tasks unfinished" in str(caught.value), str(caught.value)
    gate.set()
    assert blocked.get(5) == "blocked"


# Where each collector starts to follow a handle: the test ends the task just after.
FOLLOWS = {
    "gather": ("_collect", "Completions", "add"),
    "gather_async": ("_async_collect", "_Countdown", "follow"),
    "as_completed": ("_collect", "Completions", "add"),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("collector", list(FOLLOWS))
def test_a_collector_timeout_says_when_every_task_ended_as_it_gave_up(
    gate: threading.Event, collector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "0 of 1 tasks unfinished; they go on unless cancelled": the task
    # had ended, its end not yet told to the collector, whose timeout passed.
    module, owner, method = FOLLOWS[collector]
    blocked = start_blocked(gate)
    told, tell = threading.Event(), threading.Event()

    def holds_the_news(_: Any) -> None:  # the task's first callback: those after it wait
        told.set()
        assert tell.wait(20), "the test never let the callbacks go on"

    blocked.add_done_callback(holds_the_news)
    cls = getattr(importlib.import_module(f"makeparallel.{module}"), owner)
    follow = getattr(cls, method)

    def follows_then_ends(self: Any, handle: mp.AsyncHandle[Any]) -> None:
        follow(self, handle)
        gate.set()  # the task ends now; the collector hears of it once tell is set
        assert told.wait(20), "the task never ended"

    monkeypatch.setattr(cls, method, follows_then_ends)
    try:
        with pytest.raises(mp.TaskTimeoutError) as caught:
            COLLECTORS_WITH_A_TIMEOUT[collector]([blocked], 0.05)
    finally:
        tell.set()
    message = str(caught.value)
    assert "timed out after 0.05 s; its 1 task(s) ended just as the wait gave up" in message, message
    assert "go on" not in message, message
    assert blocked.get(5) == "blocked"


def test_gather_timeout_counts_every_unfinished_task(gate: threading.Event) -> None:
    first, second = start_blocked(gate), start_blocked(gate)
    with pytest.raises(mp.TaskTimeoutError, match=r"\b2 of 2\b"):
        mp.gather([first, second], timeout=0.05)
    gate.set()


def test_gather_with_a_timeout_returns_when_all_end_in_time(backend: str) -> None:
    square, _ = functions(backend)
    assert mp.gather([square(2), square(3)], timeout=30) == [4, 9]


# -- gather: bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("item", [1, None, "handle", concurrent.futures.Future()])
def test_gather_rejects_non_handles(item: Any) -> None:
    square, _ = functions("sync")
    with pytest.raises(TypeError, match="AsyncHandle"):
        mp.gather([square(1), item])


@pytest.mark.parametrize("collect", [mp.gather, mp.as_completed, mp.wait])
def test_collectors_point_an_executor_future_to_its_handle(collect: Callable[..., Any]) -> None:
    # mp.Executor's futures hold the task's handle: the error says to pass that, not only what was expected.
    with mp.Executor(backend="sync") as executor:
        future = executor.submit(abs, -1)
    with pytest.raises(TypeError, match=r"got an mp\.Executor future .*pass its future\.handle") as caught:
        collect([future])
    assert repr(future) in str(caught.value)


@pytest.mark.parametrize("collect", [mp.gather, mp.as_completed, mp.wait])
def test_collectors_point_a_standard_future_to_the_standard_waits(collect: Callable[..., Any]) -> None:
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    future.set_result(1)
    with pytest.raises(TypeError, match=r"concurrent\.futures\.wait\(\) or as_completed\(\)") as caught:
        collect([future])
    assert repr(future) in str(caught.value)


@pytest.mark.parametrize("on_error", ["ignore", "RAISE", None, 1])
def test_gather_rejects_bad_on_error(on_error: Any) -> None:
    square, _ = functions("sync")
    with pytest.raises(ValueError, match="on_error"):
        mp.gather([square(1)], on_error=on_error)


@pytest.mark.parametrize(("timeout", "error"), [(-1, ValueError), ("1", TypeError), (float("nan"), ValueError)])
def test_gather_rejects_bad_timeout(timeout: Any, error: type[Exception]) -> None:
    square, _ = functions("sync")
    with pytest.raises(error, match="timeout"):
        mp.gather([square(1)], timeout=timeout)


@pytest.mark.parametrize("collect", [mp.gather, mp.as_completed, mp.wait])
@pytest.mark.parametrize("handles", [None, 3, object()])
def test_collectors_name_the_argument_that_is_not_iterable(
    collect: Callable[..., Any], handles: Any
) -> None:
    # Not Python's bare "'NoneType' object is not iterable".
    expected = rf"{collect.__name__}\(\) takes an iterable of AsyncHandle objects as its handles argument"
    with pytest.raises(TypeError, match=expected) as caught:
        collect(handles)
    assert repr(handles) in str(caught.value)


def test_an_iterable_that_fails_keeps_its_own_error() -> None:
    def broken() -> Any:
        yield from ()
        raise TypeError("the iterable broke")

    with pytest.raises(TypeError, match="the iterable broke"):
        mp.gather(broken())


# -- as_completed ------------------------------------------------------------------------------


def test_as_completed_yields_every_handle_once(backend: str) -> None:
    square, fail = functions(backend)
    handles = [square(i) for i in range(10)] + [fail(1)]
    seen = list(mp.as_completed(handles))
    assert len(seen) == len(handles)
    assert set(seen) == set(handles)
    assert all(h.done() for h in seen)


def test_as_completed_yields_each_distinct_handle_once(backend: str) -> None:
    # As concurrent.futures.as_completed does; gather keeps positions instead.
    square, _ = functions(backend)
    h1, h2 = square(1), square(2)
    seen = list(mp.as_completed([h1, h1, h2, h1]))
    assert sorted(h.get_task_id() for h in seen) == sorted([h1.get_task_id(), h2.get_task_id()])
    assert mp.gather([h1, h1, h2, h1]) == [1, 1, 4, 1]


def test_wait_counts_each_distinct_handle_once(backend: str) -> None:
    square, _ = functions(backend)
    h1 = square(3)
    done, not_done = mp.wait([h1, h1], return_when=mp.ALL_COMPLETED)
    assert done == {h1} and not_done == set()


def test_as_completed_of_nothing_yields_nothing() -> None:
    assert list(mp.as_completed([])) == []


def test_as_completed_yields_the_unblocked_task_first(gate: threading.Event) -> None:
    blocked = start_blocked(gate)

    @mp.parallel(backend="thread")
    def quick() -> str:
        return "quick"

    free = quick()
    completed = mp.as_completed([blocked, free])
    assert next(completed) is free
    assert not blocked.done()
    gate.set()
    assert next(completed) is blocked
    assert list(completed) == []


@pytest.mark.timeout(30)
def test_as_completed_yields_before_a_just_submitted_blocked_task_ends(gate: threading.Event) -> None:
    # Submit then iterate at once, as users do; with two workers the free task
    # ends while the blocked one waits, so it must come out first, at once.
    mp.configure_thread_pool(2)
    blocked, _ = blocked_task(gate, gate_wait=5)

    @mp.parallel(backend="thread")
    def quick() -> str:
        return "quick"

    held, free = blocked(), quick()
    completed = mp.as_completed([held, free])
    first = next(completed)
    held_still_blocked = not held.done()
    gate.set()
    assert list(completed) == [held]
    assert first is free
    assert held_still_blocked, (
        "as_completed yielded the free task only after the blocked one ended: the "
        "consuming thread ran the blocked task inline"
    )


@pytest.mark.timeout(60)
def test_as_completed_read_by_two_threads_at_once_says_so_and_loses_nothing(gate: threading.Event) -> None:
    # A second thread's next() as the first waited in its own raised ValueError("generator
    # already executing"), of a generator the program never made.
    blocked = start_blocked(gate)
    completed = mp.as_completed([blocked])
    first: list[Any] = []
    reader = threading.Thread(target=lambda: first.append(next(completed)))
    reader.start()
    try:
        assert wait_until(lambda: completed._iterator is not None and completed._iterator.gi_running)
        with pytest.raises(RuntimeError, match=r"as_completed\(\) is being read by another next\(\).*one thread at a time"):
            next(completed)
    finally:
        gate.set()
        reader.join(30)
    assert not reader.is_alive()
    assert first == [blocked]
    assert list(completed) == []


@pytest.mark.timeout(60)
def test_as_completed_first_read_by_two_threads_at_once_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two threads' first next() at once each found no generator yet and made one, and both read
    # on at once, with no RuntimeError.
    from makeparallel import _collect

    handles = [mp.parallel(abs)(i) for i in range(3)]
    mp.wait(handles)
    completed = mp.as_completed(handles)
    yield_completed = _collect._yield_completed
    second: list[Any] = []

    def read_by_another_thread(*args: Any) -> Any:
        monkeypatch.setattr(_collect, "_yield_completed", yield_completed)
        second.append(in_thread(lambda: next(completed)))  # while this first next() makes its generator
        return yield_completed(*args)

    monkeypatch.setattr(_collect, "_yield_completed", read_by_another_thread)
    first = next(completed)
    assert isinstance(second[0], RuntimeError), second
    assert "one thread at a time" in str(second[0])
    assert {first, *completed} == set(handles)


def test_as_completed_timeout(gate: threading.Event) -> None:
    blocked = start_blocked(gate)

    @mp.parallel(backend="thread")
    def quick() -> str:
        return "quick"

    free = quick()
    assert free.wait(5)
    completed = mp.as_completed([blocked, free], timeout=0.1)
    assert next(completed) is free
    with pytest.raises(mp.TaskTimeoutError, match=r"\b1 of 2\b"):
        next(completed)
    assert blocked.running()
    gate.set()


def test_as_completed_rejects_bad_input_at_the_call() -> None:
    square, _ = functions("sync")
    with pytest.raises(TypeError, match="AsyncHandle"):
        mp.as_completed([square(1), 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timeout"):
        mp.as_completed([square(1)], timeout=-1)


# -- wait --------------------------------------------------------------------------------------


def test_return_when_constants_are_the_concurrent_futures_ones() -> None:
    assert mp.FIRST_COMPLETED is concurrent.futures.FIRST_COMPLETED
    assert mp.FIRST_EXCEPTION is concurrent.futures.FIRST_EXCEPTION
    assert mp.ALL_COMPLETED is concurrent.futures.ALL_COMPLETED


def test_wait_all_completed(backend: str) -> None:
    square, fail = functions(backend)
    handles = [square(i) for i in range(5)] + [fail(1)]
    result = mp.wait(handles)
    done, not_done = result
    assert done == set(handles) and not_done == set()
    assert result.done is done and result.not_done is not_done
    assert mp.wait(handles, return_when=mp.ALL_COMPLETED).done == set(handles)


def test_wait_of_nothing() -> None:
    assert mp.wait([]) == (set(), set())


def test_wait_first_completed(gate: threading.Event) -> None:
    blocked = start_blocked(gate)

    @mp.parallel(backend="thread")
    def quick() -> str:
        return "quick"

    free = quick()
    done, not_done = mp.wait([blocked, free], return_when=mp.FIRST_COMPLETED)
    assert done == {free}
    assert not_done == {blocked}
    gate.set()


@pytest.mark.timeout(30)
def test_wait_first_completed_returns_before_a_just_submitted_blocked_task_ends(
    gate: threading.Event,
) -> None:
    mp.configure_thread_pool(2)
    blocked, _ = blocked_task(gate, gate_wait=5)

    @mp.parallel(backend="thread")
    def quick() -> str:
        return "quick"

    held, free = blocked(), quick()
    done, not_done = mp.wait([held, free], return_when=mp.FIRST_COMPLETED)
    gate.set()
    held.wait(10)
    assert done == {free}, "FIRST_COMPLETED returned only after the blocked task ended"
    assert not_done == {held}


def test_wait_first_exception(gate: threading.Event) -> None:
    blocked = start_blocked(gate)
    square, fail = functions("thread")
    ok = square(3)
    assert ok.wait(5)
    failed = fail(1)
    done, not_done = mp.wait([ok, blocked, failed], return_when=mp.FIRST_EXCEPTION)
    assert failed in done and ok in done
    assert not_done == {blocked}
    gate.set()


def test_wait_first_exception_without_failures_waits_for_all(backend: str) -> None:
    square, _ = functions(backend)
    handles = [square(i) for i in range(5)]
    done, not_done = mp.wait(handles, return_when=mp.FIRST_EXCEPTION)
    assert done == set(handles) and not_done == set()


@pytest.mark.parametrize("return_when", [mp.ALL_COMPLETED, mp.FIRST_EXCEPTION])
def test_wait_timeout_returns_what_is_done(gate: threading.Event, return_when: str) -> None:
    blocked = start_blocked(gate)
    square, _ = functions("thread")
    ok = square(4)
    assert ok.wait(5)
    result = mp.wait([blocked, ok], timeout=0.1, return_when=return_when)  # no raise
    assert result.done == {ok}
    assert result.not_done == {blocked}
    gate.set()


def test_wait_timeout_zero_is_a_poll(gate: threading.Event) -> None:
    blocked = start_blocked(gate)
    assert mp.wait([blocked], timeout=0) == (set(), {blocked})
    gate.set()


@pytest.mark.parametrize("return_when", ["FIRST", "first_completed", None, 1])
def test_wait_rejects_bad_return_when(return_when: Any) -> None:
    square, _ = functions("sync")
    with pytest.raises(ValueError, match="return_when"):
        mp.wait([square(1)], return_when=return_when)


def test_wait_rejects_non_handles_and_bad_timeout() -> None:
    square, _ = functions("sync")
    with pytest.raises(TypeError, match="AsyncHandle"):
        mp.wait([object()])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="timeout"):
        mp.wait([square(1)], timeout=-0.5)
