"""Waiting from inside a task always makes progress, and a timeout still holds.

Each test runs on a pool of one thread: the parent task holds it, so the
children it submits can only run if the parent's wait lends its place (the
pool then runs a compensating worker) or runs them inline. Every way of waiting
is tried, with and without a timeout, and with children that have a timeout of
their own (never run inline). A wait that made no progress would sit out its
timeout and raise ``TaskTimeoutError``: the tests assert results, not times.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel._backends import _thread
from pool_helpers import Flags, poll_until_stopped, resize, wait_until

WAIT = 20.0  # the inner waits' timeout: never reached when the fix works


def double(x: int) -> int:
    return 2 * x


def _get(children: list[mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    return [h.get(timeout=timeout) for h in children]


def _result(children: list[mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    return [h.result(timeout) for h in children]


def _wait_then_get(children: list[mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    assert all(h.wait(timeout) for h in children)
    return [h.get() for h in children]


def _exception(children: list[mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    assert [h.exception(timeout) for h in children] == [None] * len(children)
    return [h.get() for h in children]


def _gather(children: list[mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    return mp.gather(children, timeout=timeout)


def _as_completed(children: list[mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    ended = list(mp.as_completed(children, timeout=timeout))
    assert len(ended) == len(children)
    return [h.get() for h in children]


def _mp_wait(children: list[mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    done, not_done = mp.wait(children, timeout=timeout)
    assert not not_done
    return [h.get() for h in children]


HANDLE_WAYS: dict[str, Callable[[list[mp.AsyncHandle[int]], float | None], list[int]]] = {
    "get": _get,
    "result": _result,
    "wait_then_get": _wait_then_get,
    "exception": _exception,
    "gather": _gather,
    "as_completed": _as_completed,
    "mp.wait": _mp_wait,
}


def double_after_one_failure(x: int, failed: set[int], lock: threading.Lock) -> int:
    with lock:
        first = x not in failed
        failed.add(x)
    if first:
        raise ValueError(f"first attempt for {x}")
    return 2 * x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("children", ["plain", "with_a_timeout", "retrying"])
@pytest.mark.parametrize("timeout", [WAIT, None], ids=["with_timeout", "without_timeout"])
@pytest.mark.parametrize("way", HANDLE_WAYS)
def test_a_task_waiting_for_its_children_on_a_one_thread_pool_makes_progress(
    way: str, timeout: float | None, children: str
) -> None:
    resize(1)
    child = mp.parallel(backend="thread")(double)
    if children == "with_a_timeout":
        child = child.options(timeout=30)
    elif children == "retrying":
        retry = mp.Retry(on=ValueError, attempts=2, wait_initial=0.01, wait_max=0.01)
        flaky = functools.partial(double_after_one_failure, failed=set(), lock=threading.Lock())
        child = mp.parallel(backend="thread", retry=retry)(flaky)
    collect = HANDLE_WAYS[way]

    @mp.parallel(backend="thread")
    def parent() -> list[int]:
        return collect([child(i) for i in range(3)], timeout)

    assert parent().get(timeout=45) == [0, 2, 4]


FAR = threading.TIMEOUT_MAX * 10  # centuries, yet finite: more than a lock's own wait accepts


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", [*HANDLE_WAYS, "parallel_map", "ParallelContext"])
def test_a_wait_inside_a_task_takes_a_timeout_longer_than_a_lock_accepts(way: str) -> None:
    """The same wait on the main thread accepted it; on the worker it raised OverflowError."""
    resize(1)

    @mp.parallel(backend="thread")
    def parent() -> list[int]:
        if way == "parallel_map":
            return mp.parallel_map(double, range(3), chunksize=1, timeout=FAR, backend="thread")
        if way == "ParallelContext":
            with mp.ParallelContext(timeout=FAR, backend="thread") as ctx:
                for i in range(3):
                    ctx.submit(double, i)
            return ctx.results()
        return HANDLE_WAYS[way]([mp.parallel(backend="thread")(double)(i) for i in range(3)], FAR)

    assert parent().get(timeout=45) == [0, 2, 4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [WAIT, None], ids=["with_timeout", "without_timeout"])
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_a_map_inside_a_task_on_a_one_thread_pool_makes_progress(timeout: float | None, ordered: bool) -> None:
    resize(1)

    @mp.parallel(backend="thread")
    def parent() -> list[int]:
        results = mp.parallel_map(double, range(50), chunksize=5, timeout=timeout, ordered=ordered, backend="thread")
        return sorted(results)  # type: ignore[type-var]

    assert parent().get(timeout=45) == [2 * i for i in range(50)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [WAIT, None], ids=["with_timeout", "without_timeout"])
def test_a_group_inside_a_task_on_a_one_thread_pool_makes_progress(timeout: float | None) -> None:
    resize(1)

    @mp.parallel(backend="thread")
    def parent() -> list[int]:
        with mp.ParallelContext(timeout=timeout, backend="thread") as ctx:
            for i in range(3):
                ctx.submit(double, i)
        return ctx.results()

    assert parent().get(timeout=45) == [0, 2, 4]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [WAIT, None], ids=["with_timeout", "without_timeout"])
def test_a_group_with_max_concurrent_inside_a_task_on_a_one_thread_pool_makes_progress(
    timeout: float | None,
) -> None:
    # The third submit waits for a slot held by children queued behind the
    # parent: the wait for the slot must lend the worker's place too.
    resize(1)

    @mp.parallel(backend="thread")
    def parent() -> list[int]:
        with mp.ParallelContext(timeout=timeout, max_concurrent=2, backend="thread") as ctx:
            for i in range(5):
                ctx.submit(double, i)
        return ctx.results()

    assert parent().get(timeout=45) == [0, 2, 4, 6, 8]


# -- a wait with a timeout still ends at its deadline ------------------------------------------


def _expect_timeout(wait: Callable[[], object]) -> str:
    try:
        wait()
    except mp.TaskTimeoutError:
        return "timed out"
    return "returned"


SHORT = 0.2


def _deadline_ways(blocked: mp.AsyncHandle[int]) -> dict[str, Callable[[], str]]:
    return {
        "get": lambda: _expect_timeout(lambda: blocked.get(timeout=SHORT)),
        "result": lambda: _expect_timeout(lambda: blocked.result(SHORT)),
        "wait": lambda: "timed out" if not blocked.wait(SHORT) else "returned",
        "exception": lambda: _expect_timeout(lambda: blocked.exception(SHORT)),
        "gather": lambda: _expect_timeout(lambda: mp.gather([blocked], timeout=SHORT)),
        "as_completed": lambda: _expect_timeout(lambda: list(mp.as_completed([blocked], timeout=SHORT))),
        "mp.wait": lambda: "timed out" if mp.wait([blocked], timeout=SHORT).not_done else "returned",
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["get", "result", "wait", "exception", "gather", "as_completed", "mp.wait"])
def test_a_wait_with_a_timeout_inside_a_task_ends_at_its_deadline(way: str, gate: threading.Event) -> None:
    # The child blocks until the test sets the gate, which it does only after
    # the parent's wait gave up. Run inline, the child would hold the parent
    # (and this test) until the gate: the wait must end at its own deadline.
    resize(1)
    child = mp.parallel(backend="thread")(lambda: gate.wait(30))

    @mp.parallel(backend="thread")
    def parent() -> str:
        return _deadline_ways(child())[way]()

    outcome = parent().get(timeout=30)
    gate.set()
    assert outcome == "timed out"


@pytest.mark.timeout(60)
def test_a_map_with_a_timeout_inside_a_task_ends_at_its_deadline(gate: threading.Event) -> None:
    resize(1)

    @mp.parallel(backend="thread")
    def parent() -> str:
        return _expect_timeout(
            lambda: mp.parallel_map(lambda i: gate.wait(30), range(4), chunksize=1, timeout=SHORT, backend="thread")
        )

    outcome = parent().get(timeout=30)
    gate.set()
    assert outcome == "timed out"


@pytest.mark.timeout(60)
def test_a_group_with_a_timeout_inside_a_task_ends_at_its_deadline(gate: threading.Event) -> None:
    resize(1)

    @mp.parallel(backend="thread")
    def parent() -> str:
        def body() -> None:
            with mp.ParallelContext(timeout=SHORT, backend="thread") as ctx:
                ctx.submit(lambda: gate.wait(30))

        return _expect_timeout(body)

    outcome = parent().get(timeout=30)
    gate.set()
    assert outcome == "timed out"


# -- an async task awaiting its children -------------------------------------------------------


async def _await_each(children: list[mp.AsyncHandle[int]]) -> list[int]:
    return [await h for h in children]


async def _asyncio_gather(children: list[mp.AsyncHandle[int]]) -> list[int]:
    return list(await asyncio.gather(*children))


async def _gather_async(children: list[mp.AsyncHandle[int]]) -> list[int]:
    return await mp.gather_async(children, timeout=WAIT)


async def _async_as_completed(children: list[mp.AsyncHandle[int]]) -> list[int]:
    ended = [h async for h in mp.as_completed(children, timeout=WAIT)]
    assert len(ended) == len(children)
    return [h.result() for h in children]


AWAIT_WAYS: dict[str, Callable[[list[mp.AsyncHandle[int]]], Coroutine[Any, Any, list[int]]]] = {
    "await": _await_each,
    "asyncio.gather": _asyncio_gather,
    "gather_async": _gather_async,
    "async as_completed": _async_as_completed,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", AWAIT_WAYS)
def test_an_async_task_awaiting_its_children_on_a_one_thread_pool_makes_progress(way: str) -> None:
    # The parent's coroutine holds the only worker, on the worker's own loop:
    # a child runs only if the parent's await lends the worker's place.
    resize(1)
    child = mp.parallel(backend="thread")(double)
    collect = AWAIT_WAYS[way]

    @mp.parallel(backend="thread")
    async def parent() -> list[int]:
        return await collect([child(i) for i in range(3)])

    assert parent().get(timeout=45) == [0, 2, 4]

    def back_to_one() -> bool:
        info = mp.get_thread_pool_info()
        return bool(info["live_threads"] == 1 and info["blocked_threads"] == 0)

    assert wait_until(back_to_one), mp.get_thread_pool_info()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_an_async_imap_inside_an_async_task_on_a_one_thread_pool_makes_progress(ordered: bool) -> None:
    resize(1)

    @mp.parallel(backend="thread")
    async def parent() -> list[int]:
        results = mp.imap(double, range(50), chunksize=5, timeout=WAIT, ordered=ordered, backend="thread")
        return sorted([x async for x in results])

    assert parent().get(timeout=45) == [2 * i for i in range(50)]


@pytest.mark.timeout(60)
def test_awaits_an_async_task_leaves_behind_are_cancelled_and_give_the_place_back(gate: threading.Event) -> None:
    # asyncio.gather raises the first failure and leaves the other await going;
    # the parent's coroutine then ends. As asyncio.run does, what it left behind
    # is cancelled (and the task it awaited with it): nothing lingers on the
    # worker's loop to run during its next task, or keeps the place lent.
    resize(2)
    children: list[mp.AsyncHandle[str]] = []

    @mp.parallel(backend="thread")
    def fails() -> str:
        raise ValueError("first")

    @mp.parallel(backend="thread")
    def waits() -> str:
        poll_until_stopped(gate)
        return "ended"

    @mp.parallel(backend="thread")
    async def parent() -> str:
        children.append(waits())
        try:
            await asyncio.gather(fails(), children[0])
        except ValueError:
            return "failed fast"
        return "not reached"

    assert parent().get(timeout=45) == "failed fast"
    assert children[0].wait(30) and children[0].cancelled()

    def given_back() -> bool:
        return bool(mp.get_thread_pool_info()["blocked_threads"] == 0)

    assert wait_until(given_back, 30), mp.get_thread_pool_info()


# -- the places lent are bounded and given back ------------------------------------------------


@pytest.mark.timeout(60)
def test_places_lent_to_blocked_tasks_are_bounded(monkeypatch: pytest.MonkeyPatch, gate: threading.Event) -> None:
    # With one place to lend: the parent's wait lends it to the child, whose own
    # wait finds none left, so the grandchild cannot start and the child's wait
    # ends at its deadline; the pool never runs a third thread.
    resize(1)
    monkeypatch.setattr(_thread, "MAX_SPARES", 1)
    grandchild = mp.parallel(backend="thread")(lambda: "never")

    @mp.parallel(backend="thread")
    def child() -> str:
        return _expect_timeout(lambda: grandchild().get(timeout=SHORT))

    @mp.parallel(backend="thread")
    def parent() -> str:
        return child().get(timeout=WAIT)

    assert parent().get(timeout=45) == "timed out"
    assert mp.get_thread_pool_info()["live_threads"] <= 2


@pytest.mark.timeout(60)
def test_a_warning_says_when_every_place_to_lend_is_lent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As the bounded test above: the child's wait finds no place left, and its
    # timeout ends it though the grandchild never started. A recursion of
    # waits with a timeout (fib(16), each call waiting for its two) gets
    # there with the real bound of 256 and failed with "gave up waiting",
    # as if the work were slow, which nothing told apart. Once per process.
    resize(1)
    monkeypatch.setattr(_thread, "MAX_SPARES", 1)
    monkeypatch.setattr(_thread, "_all_lent_told", False, raising=False)
    grandchild = mp.parallel(backend="thread")(lambda: "never")

    @mp.parallel(backend="thread")
    def child() -> str:
        return _expect_timeout(lambda: grandchild().get(timeout=SHORT))

    @mp.parallel(backend="thread")
    def parent() -> str:
        return child().get(timeout=WAIT)

    with caplog.at_level(logging.WARNING, logger="makeparallel"):
        assert parent().get(timeout=45) == "timed out"
        assert parent().get(timeout=45) == "timed out"
    told = [r for r in caplog.records if "places" in r.getMessage()]
    assert len(told) == 1
    assert told[0].levelno == logging.WARNING
    message = told[0].getMessage()
    assert "all 1 places" in message and "wait without a timeout" in message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", HANDLE_WAYS)
def test_a_wait_without_a_timeout_runs_a_timed_child_once_every_place_is_lent(
    monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    # With one place to lend: the parent's wait lends it to the child, whose own
    # wait finds none left. The grandchildren have a timeout of their own, so no
    # wait would run them inline, and no spare is left to start them: the
    # child's wait, which has no deadline, must run them itself.
    resize(1)
    monkeypatch.setattr(_thread, "MAX_SPARES", 1)
    grandchild = mp.parallel(backend="thread", timeout=WAIT)(double)
    collect = HANDLE_WAYS[way]

    @mp.parallel(backend="thread")
    def child() -> list[int]:
        return collect([grandchild(i) for i in range(3)], None)

    @mp.parallel(backend="thread")
    def parent() -> list[int]:
        return child().get(timeout=WAIT)  # never inline: the child runs on the place lent

    assert parent().get(timeout=45) == [0, 2, 4]


@pytest.mark.timeout(60)
def test_a_lent_place_is_given_back_when_the_wait_ends() -> None:
    resize(1)
    child = mp.parallel(backend="thread")(double)

    @mp.parallel(backend="thread")
    def parent() -> int:
        return child(21).get(timeout=WAIT)

    assert parent().get(timeout=45) == 42

    def back_to_one() -> bool:
        info = mp.get_thread_pool_info()
        return bool(info["live_threads"] == 1 and info["blocked_threads"] == 0)

    assert wait_until(back_to_one), mp.get_thread_pool_info()


class Fatal(BaseException):
    """A user's own BaseException, outside every standard family."""


def raise_base(make_error: Callable[[], BaseException]) -> None:
    raise make_error()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "make_error",
    [lambda: SystemExit(3), GeneratorExit, lambda: Fatal("fatal"), lambda: KeyboardInterrupt("off main")],
    ids=["SystemExit", "GeneratorExit", "custom BaseException", "KeyboardInterrupt"],
)
@pytest.mark.parametrize("way", ["gather_skip", "mp.wait", "exception"])
def test_a_child_run_inline_that_raises_a_base_exception_fails_only_itself(
    way: str, make_error: Callable[[], BaseException]
) -> None:
    # On a pool of one, the parent runs its queued children inline; the child's
    # BaseException is the child's error, as if a worker had run it.
    resize(1)
    failing = mp.parallel(backend="thread")(raise_base)
    fine = mp.parallel(backend="thread")(double)
    error_type = type(make_error())

    @mp.parallel(backend="thread")
    def parent() -> object:
        children = [failing(make_error), fine(1)]
        if way == "gather_skip":
            return mp.gather(children, on_error="skip")
        if way == "mp.wait":
            done, not_done = mp.wait(children)
            return len(done), len(not_done)
        return type(children[0].exception())

    expected = {"gather_skip": [2], "mp.wait": (2, 0), "exception": error_type}[way]
    assert parent().get(timeout=45) == expected



# -- a task's cancel or timeout ends its wait for its children ---------------------------------


def _run_children(way: str, child: mp.ParallelFunction[[int], int], on_a_worker: bool) -> object:
    """Wait for three children of ``child`` (eight items for a map) in ``way``; inside a task.

    ``on_a_worker``: the wait has a timeout of its own, or its children have one,
    so nothing runs inline: the task blocks. Else the wait runs the first child
    inline. Handles the task made itself are its own: it cancels them as it
    leaves, as user code does (a map or a group cancels its own).
    ``ParallelContext_at_its_limit``: a group of one slot, whose second submit
    blocks (always) for the slot the first child holds; ``on_a_worker`` gives
    that wait the group's deadline.
    """
    limit = WAIT if on_a_worker else None
    if way == "parallel_map_of_one_item":  # one item, no timeout: the map's one chunk, waited for alone
        return mp.parallel_map(child.__wrapped__, [0], timeout=limit, backend="thread")
    if way in ("parallel_map", "unordered_map", "imap"):
        items = child.__wrapped__  # a map runs plain functions, in chunks of its own
        if way == "imap":
            return list(mp.imap(items, range(8), chunksize=1, timeout=limit, backend="thread"))
        return mp.parallel_map(items, range(8), chunksize=1, ordered=way == "parallel_map", timeout=limit, backend="thread")
    if way in ("ParallelContext", "ParallelContext_at_its_limit"):
        max_concurrent = 1 if way == "ParallelContext_at_its_limit" else None
        with mp.ParallelContext(timeout=limit, max_concurrent=max_concurrent, backend="thread") as ctx:
            for i in range(3):
                ctx.submit(child.__wrapped__, i)
        return ctx.results()
    children = [(child.options(timeout=WAIT) if on_a_worker else child)(i) for i in range(3)]
    try:
        return HANDLE_WAYS[way](children, None)
    finally:
        for handle in children:
            handle.cancel()


def _take_the_one_replacement_place(gate: threading.Event) -> mp.AsyncHandle[None]:
    """On a pool of one, leave a cancelled task stuck on ``gate``: it takes the pool's one place for a stuck worker.

    A task cancelled or timed out while its worker runs it leaves that worker
    stuck, and the pool starts another in its place, which would start the
    task's queued children before the task itself could cancel them. With
    that place taken already, no thread starts for it: only its own reaction
    decides which children run.
    """
    resize(1)
    started = threading.Event()

    @mp.parallel(backend="thread")
    def stuck() -> None:
        started.set()
        gate.wait(30)

    handle = stuck()
    assert started.wait(10)
    handle.cancel()
    return handle


STOPPABLE_WAYS = [*HANDLE_WAYS, "parallel_map", "unordered_map", "imap", "ParallelContext", "ParallelContext_at_its_limit"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", ["cancel", "timeout"])
@pytest.mark.parametrize("children", ["run_inline", "on_a_worker"])
@pytest.mark.parametrize("way", STOPPABLE_WAYS)
def test_a_cancel_or_timeout_of_a_task_ends_its_wait_for_its_children(
    way: str, children: str, stop: str, gate: threading.Event
) -> None:
    # The first child blocks on the gate. Stopped, the task's wait raises what
    # check_cancelled() raises there: the task returns, and the children it did
    # not start never run. A wait that blocks ends at once, before the gate
    # opens; one running its first child inline ends as that child returns.
    # Before, the task waited on and ran every child to its end.
    stuck = threading.Event()
    _take_the_one_replacement_place(stuck)
    started: list[int] = []
    first_started = threading.Event()
    outcome: list[type[BaseException]] = []
    returned = threading.Event()
    on_a_worker = children == "on_a_worker"

    @mp.parallel(backend="thread")
    def child(i: int) -> int:
        started.append(i)
        first_started.set()
        gate.wait(30)
        return i

    @mp.parallel(backend="thread", timeout=0.2 if stop == "timeout" else None)
    def parent() -> object:
        try:
            return _run_children(way, child, on_a_worker)
        except (mp.TaskCancelledError, mp.TaskTimeoutError) as error:
            outcome.append(type(error))
            raise
        finally:
            returned.set()

    try:
        handle = parent()
        if stop == "cancel":
            assert first_started.wait(10)
            handle.cancel()
        else:
            assert handle.wait(10)
        if on_a_worker:
            assert returned.wait(10), "the task's wait went on after it was stopped"
        gate.set()
        assert returned.wait(10)
        assert outcome == [mp.TaskCancelledError if stop == "cancel" else mp.TaskTimeoutError]
        assert mp.testing.wait_until_idle(10)
        assert len(started) <= 1, f"children started after their parent was stopped: {started}"
    finally:
        gate.set()
        stuck.set()


OWNED_WAYS = ["parallel_map", "parallel_map_of_one_item", "unordered_map", "imap", "ParallelContext"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", ["cancel", "timeout"])
@pytest.mark.parametrize("way", OWNED_WAYS)
def test_a_stop_of_a_task_cancels_the_child_of_its_map_or_group_it_runs_inline(
    way: str, stop: str, gate: threading.Event
) -> None:
    # On a pool of one, the task's map or group runs its first child inline
    # (a map's chunk may be all of its items). The task's cancel or timeout
    # cancels that child as it runs, which its check_cancelled() then tells
    # it: the map or group would cancel it anyway once the wait is left. Before,
    # the wait went on until the child ended by itself: here, never.
    stuck = threading.Event()
    _take_the_one_replacement_place(stuck)
    started: list[int] = []
    first_started = threading.Event()
    child_saw: list[type[BaseException]] = []
    outcome: list[type[BaseException]] = []
    returned = threading.Event()

    @mp.parallel(backend="thread")
    def child(i: int) -> int:
        started.append(i)
        first_started.set()
        try:
            while not gate.wait(0.01):
                mp.check_cancelled()
        except mp.TaskCancelledError as error:
            child_saw.append(type(error))
            raise
        return i

    @mp.parallel(backend="thread", timeout=0.2 if stop == "timeout" else None)
    def parent() -> object:
        try:
            return _run_children(way, child, False)
        except (mp.TaskCancelledError, mp.TaskTimeoutError) as error:
            outcome.append(type(error))
            raise
        finally:
            returned.set()

    try:
        handle = parent()
        assert first_started.wait(10)
        if stop == "cancel":
            handle.cancel()
        assert returned.wait(10), "the task's wait went on running its child inline after it was stopped"
        assert outcome == [mp.TaskCancelledError if stop == "cancel" else mp.TaskTimeoutError]
        assert mp.testing.wait_until_idle(10)
        assert child_saw == [mp.TaskCancelledError]
        assert started == [0], f"children started after their parent was stopped: {started}"
    finally:
        gate.set()
        stuck.set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("children", ["run_inline", "on_a_worker"])
@pytest.mark.parametrize(
    "way", ["get", "gather", "mp.wait", "parallel_map", "ParallelContext", "ParallelContext_at_its_limit"]
)
def test_an_attempt_that_times_out_and_is_retried_ends_its_wait_for_its_children(
    way: str, children: str, gate: threading.Event
) -> None:
    # The task's handle does not end at its timeout: it waits to retry. Its
    # attempt is over all the same, and its wait raises as check_cancelled()
    # does there (TaskTimeoutError), without running more children inline.
    # Before, it waited on until the whole task ended (here, its retry, far
    # off), and then ran the children it had not started, one by one.
    stuck = threading.Event()
    _take_the_one_replacement_place(stuck)
    started: list[int] = []
    outcome: list[type[BaseException]] = []
    returned = threading.Event()
    retrying = threading.Event()
    on_a_worker = children == "on_a_worker"

    def listen(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.name.endswith("parent"):
            retrying.set()

    @mp.parallel(backend="thread")
    def child(i: int) -> int:
        started.append(i)
        gate.wait(30)
        return i

    # The retry is far off: the test ends before it comes (the task is cancelled then).
    retry = mp.Retry(on=mp.TaskTimeoutError, attempts=2, wait_initial=40, wait_max=40, timeout=None)

    @mp.parallel(backend="thread", timeout=0.2, retry=retry)
    def parent() -> object:
        try:
            return _run_children(way, child, on_a_worker)
        except mp.TaskTimeoutError as error:
            outcome.append(type(error))
            raise
        finally:
            returned.set()

    mp.add_task_listener(listen)
    handle = None
    try:
        handle = parent()
        assert retrying.wait(10)
        if on_a_worker:
            assert returned.wait(10), "the attempt's wait went on after it timed out"
        gate.set()
        assert returned.wait(10)
        assert outcome == [mp.TaskTimeoutError]
        assert len(started) <= 1, f"children started after their parent's attempt timed out: {started}"
    finally:
        mp.remove_task_listener(listen)
        if handle is not None:
            handle.cancel()
        gate.set()
        stuck.set()


def _a_group_at_its_limit(flags: Flags) -> None:
    """In a worker process: a group of one slot whose first task holds it until released; submit a second."""
    try:
        with mp.ParallelContext(max_concurrent=1, backend="thread") as ctx:
            ctx.submit(flags.wait_for_release, "release")
            flags.set("first_submitted")
            ctx.submit(flags.set, "second_ran")  # waits for the slot
    except mp.TaskCancelledError:
        flags.set("cancelled")
        raise


@pytest.mark.timeout(90)
def test_a_cancel_ends_a_process_task_s_wait_for_a_slot_of_its_group(tmp_path: Path) -> None:
    # Cancelled, the task gets its stop in its worker while it waits for the
    # slot; that wait raises, and the group cancels the task it started. Before,
    # it waited on until the first task ended (here 30 s on), then ran the second.
    flags = Flags(str(tmp_path))
    try:
        handle = mp.parallel(backend="process")(_a_group_at_its_limit)(flags)
        assert flags.wait("first_submitted", 30)
        handle.cancel()
        assert flags.wait("cancelled", 20), "the task's submit went on waiting for a slot after it was cancelled"
        assert not flags.is_set("second_ran")
    finally:
        flags.set("release")


# -- a task waiting for itself ------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [None, WAIT], ids=["without_timeout", "with_timeout"])
@pytest.mark.parametrize("way", HANDLE_WAYS)
def test_a_task_waiting_for_its_own_end_raises_at_once(way: str, timeout: float | None) -> None:
    # Its end could only come once its wait returned: it waited for good, or
    # for its whole timeout (20 s here, more than the test's own allows twice).
    own: list[mp.AsyncHandle[Any]] = []
    handle_known = threading.Event()

    @mp.parallel(backend="thread")
    def waits_for_itself() -> str:
        assert handle_known.wait(20)
        try:
            HANDLE_WAYS[way](own, timeout)
        except RuntimeError as error:
            return str(error)
        return "returned"

    handle = waits_for_itself()
    own.append(handle)
    handle_known.set()
    message = handle.get(timeout=30)
    assert f"task {handle.get_task_id()} (" in message and "waits for its own end" in message, message


def _first_completed(me: mp.AsyncHandle[Any], other: mp.AsyncHandle[int], timeout: float | None) -> int:
    done, _ = mp.wait([me, other], timeout=timeout, return_when=mp.FIRST_COMPLETED)
    assert done == {other}
    return other.get()


def _first_exception(me: mp.AsyncHandle[Any], other: mp.AsyncHandle[int], timeout: float | None) -> int:
    done, _ = mp.wait([me, other], timeout=timeout, return_when=mp.FIRST_EXCEPTION)
    assert done == {other}
    return other.get()


def _first_of_as_completed(me: mp.AsyncHandle[Any], other: mp.AsyncHandle[int], timeout: float | None) -> int:
    for handle in mp.as_completed([me, other], timeout=timeout):
        return handle.get()
    raise AssertionError("as_completed yielded nothing")


def _as_completed_to_the_end(me: mp.AsyncHandle[Any], other: mp.AsyncHandle[int], timeout: float | None) -> int:
    # The other task's end comes first; the wait for the collector's own comes after.
    ended = mp.as_completed([me, other], timeout=timeout)
    result = next(ended).get()
    try:
        next(ended)
    except RuntimeError as error:
        assert "waits for its own end" in str(error), error
        return result
    raise AssertionError("as_completed waited for the collector's own end and returned")


FIRST_OF_WAYS: dict[str, Callable[[mp.AsyncHandle[Any], mp.AsyncHandle[int], float | None], int]] = {
    "mp.wait_first_completed": _first_completed,
    "mp.wait_first_exception": _first_exception,
    "as_completed_first": _first_of_as_completed,
    "as_completed_to_the_end": _as_completed_to_the_end,
}


def double_or_fail(x: int, fail: bool) -> int:
    if fail:
        raise ValueError(x)
    return 2 * x


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [None, WAIT], ids=["without_timeout", "with_timeout"])
@pytest.mark.parametrize("way", FIRST_OF_WAYS)
def test_a_task_waiting_for_the_first_of_others_and_itself_gets_the_other(way: str, timeout: float | None) -> None:
    # Another task's end can end these waits: they are no wait for the task's own end.
    own: list[mp.AsyncHandle[Any]] = []
    handle_known = threading.Event()
    fails = way == "mp.wait_first_exception"

    @mp.parallel(backend="thread")
    def waits_for_another_or_itself() -> int:
        assert handle_known.wait(20)
        other = mp.parallel(double_or_fail, backend="thread")(21, fails)
        try:
            return FIRST_OF_WAYS[way](own[0], other, timeout)
        except ValueError:
            assert fails
            return 42

    handle = waits_for_another_or_itself()
    own.append(handle)
    handle_known.set()
    assert handle.get(timeout=30) == 42


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["gather", "mp.wait"])
def test_a_task_waiting_for_all_of_others_and_itself_raises_before_the_others_end(
    way: str, gate: threading.Event
) -> None:
    # These waits need the task's own end whatever the others do: refused at once,
    # not once the others ended (the gate opens only after the task's answer).
    own: list[mp.AsyncHandle[Any]] = []
    handle_known = threading.Event()

    @mp.parallel(backend="thread")
    def waits_for_all_and_itself() -> str:
        assert handle_known.wait(20)
        other = mp.parallel(gate.wait, backend="thread")(30)
        try:
            if way == "gather":
                mp.gather([other, own[0]])
            else:
                mp.wait([other, own[0]])
        except RuntimeError as error:
            return str(error)
        return "returned"

    handle = waits_for_all_and_itself()
    own.append(handle)
    handle_known.set()
    try:
        message = handle.get(timeout=30)
    finally:
        gate.set()
    assert "waits for its own end" in message, message


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ["await", "asyncio.gather"])
def test_an_async_task_awaiting_its_own_handle_raises_at_once(way: str) -> None:
    # Its coroutine runs on its worker's own loop: the await could only end with it.
    own: list[mp.AsyncHandle[Any]] = []
    handle_known = threading.Event()

    async def awaits_itself() -> str:
        assert handle_known.wait(20)
        try:
            if way == "await":
                await own[0]
            else:
                await asyncio.gather(own[0])
        except RuntimeError as error:
            return str(error)
        return "returned"

    handle = mp.parallel(awaits_itself, backend="thread")()
    own.append(handle)
    handle_known.set()
    message = handle.get(timeout=30)
    assert f"task {handle.get_task_id()} (" in message and "waits for its own end" in message, message


@pytest.mark.timeout(60)
def test_a_task_of_a_group_collecting_the_group_s_results_raises_at_once(gate: threading.Event) -> None:
    # ctx.results() waits for every task of the group, the caller among them:
    # it waited for good, and before that for the tasks submitted before it.
    listed = threading.Event()  # the group lists a task's handle once the submission returns
    with mp.ParallelContext(backend="thread") as ctx:
        ctx.submit(gate.wait, 30)  # still running when the next task collects

        def collects() -> str:
            assert listed.wait(20)
            try:
                ctx.results()
            except RuntimeError as error:
                return str(error)
            return "returned"

        collector = ctx.submit(collects)
        listed.set()
        message = collector.get(timeout=30)
        gate.set()
    assert "waits for its own end" in message and "ctx.results()" in message, message
