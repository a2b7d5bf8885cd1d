"""asyncio: nothing blocks the loop, cancellation crosses, async functions run on worker loops.

Every wait here is on an event (a threading.Event, an asyncio.Event, a marker
file for worker processes), never a sleep that hopes; "must finish" waits are
generous.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import contextvars
import functools
import gc
import inspect
import itertools
import os
import pickle
import subprocess
import sys
import threading
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import makeparallel as mp
from async_helpers import raise_it, request_id, tenant
from makeparallel import _map
from makeparallel.testing import wait_until_idle
from pool_helpers import Flags, hold_the_pool, poll_until_stopped, resize, wait_until

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def on_a_thread(fn: Callable[[], T]) -> T:
    """Run a blocking wait off the loop (for the test's own bookkeeping)."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# -- admission limits never block the loop --------------------------------------------


@pytest.fixture(params=["thread", "a ThreadPoolExecutor"])
def pool(request: pytest.FixtureRequest) -> Any:
    """The library's thread pool, or an executor of the user's given as the backend."""
    if request.param == "thread":
        yield "thread"
        return
    with cf.ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


@pytest.mark.timeout(30)
def test_a_limited_function_returns_at_once_on_a_running_loop(gate: threading.Event, pool: Any) -> None:
    # On an executor given as the backend, the call waited for its slot on the loop's thread.
    started: list[int] = []

    @mp.parallel(max_concurrent=2, backend=pool)
    def limited(n: int) -> int:
        started.append(n)
        assert gate.wait(10)
        return n

    async def main() -> list[Any]:
        first = [limited(n) for n in range(2)]
        await on_a_thread(lambda: wait_until(lambda: len(started) == 2))
        waiting = [limited(n) for n in range(2, 10)]  # over the limit: returned at once
        ticks = 0
        for _ in range(5):  # the loop is free: other coroutines run
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 5
        assert sorted(started) == [0, 1], "a task over the limit started"
        assert [h.status for h in waiting] == ["pending"] * 8
        gate.set()
        return await mp.gather_async(first + waiting, timeout=30)

    assert run(main()) == list(range(10))
    assert sorted(started) == list(range(10))


@pytest.mark.timeout(30)
def test_tasks_held_for_their_slot_count_as_queued(gate: threading.Event, pool: Any) -> None:
    # On an executor given as the backend, the held tasks read as running: 3 running, 0 queued at max_concurrent=1.
    started = threading.Event()
    name = f"held_count_{id(pool):x}"

    @mp.parallel(name=name, max_concurrent=1, backend=pool)
    def limited(n: int) -> int:
        started.set()
        assert gate.wait(10)
        return n

    async def main() -> tuple[int, int]:
        handles = [limited(n) for n in range(3)]
        try:
            await on_a_thread(lambda: started.wait(10))
            metrics = mp.get_metrics(name)
            assert metrics is not None
            return metrics.running_tasks, metrics.queued_tasks
        finally:
            gate.set()
            await mp.gather_async(handles, timeout=20)

    assert run(main()) == (1, 2)


@pytest.mark.timeout(30)
def test_the_global_limit_defers_too_and_keeps_submission_order(gate: threading.Event) -> None:
    order: list[int] = []

    @mp.parallel
    def record(n: int) -> int:
        if n == 0:
            assert gate.wait(10)
        order.append(n)
        return n

    mp.set_max_concurrent_tasks(1)
    resize(1)

    async def main() -> list[Any]:
        handles = [record(n) for n in range(6)]
        assert all(not h.done() for h in handles)
        gate.set()
        return await mp.gather_async(handles, timeout=30)

    assert run(main()) == list(range(6))
    assert order == list(range(6))


@pytest.mark.timeout(30)
def test_a_task_cancelled_while_waiting_for_its_slot_never_runs(gate: threading.Event, pool: Any) -> None:
    ran: list[int] = []

    @mp.parallel(max_concurrent=1, backend=pool)
    def limited(n: int) -> int:
        ran.append(n)
        if n == 0:
            assert gate.wait(10)
        return n

    async def main() -> None:
        holder = limited(0)
        waiting = limited(1)
        later = limited(2)
        assert waiting.cancel()
        gate.set()
        assert await holder == 0
        assert await later == 2  # the cancelled one's slot went on to the next
        with pytest.raises(mp.TaskCancelledError):
            await waiting

    run(main())
    assert ran == [0, 2]


@pytest.mark.timeout(30)
def test_shutdown_refuses_a_task_waiting_for_its_slot(gate: threading.Event) -> None:
    @mp.parallel(max_concurrent=1)
    def limited(n: int) -> int:
        assert gate.wait(10)
        return n

    async def main() -> None:
        holder = limited(0)
        waiting = limited(1)
        gate.set()
        mp.shutdown(timeout_secs=10)
        assert await holder == 0
        with pytest.raises(mp.ShutdownError, match="waited for a free slot"):
            await waiting

    run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
def test_an_async_function_over_its_limit_on_the_sync_backend_leaves_the_loop_free(limit: str) -> None:
    # The "sync" backend starts an async task's coroutine on the caller's loop:
    # the next call over the limit waited there for the slot that coroutine
    # held, and the loop, which alone could end it, waited for good.
    if limit == "set_max_concurrent_tasks":
        mp.set_max_concurrent_tasks(1)
    options = {"max_concurrent": 1} if limit == "max_concurrent" else {}

    @mp.parallel(backend="sync", **options)
    async def work(n: int) -> int:
        await asyncio.sleep(0)
        return n

    @mp.parallel(backend="sync", **options)
    def plain(n: int) -> int:
        return n

    async def main() -> list[Any]:
        first = work(1)
        second = work(2)  # over the limit: held, the loop goes on
        assert (first.status, second.status) == ("running", "pending")
        third = plain(3) if limit == "set_max_concurrent_tasks" else None
        handles = [first, second] + ([third] if third is not None else [])
        return list(await mp.gather_async(handles, timeout=10))

    expected = [1, 2, 3] if limit == "set_max_concurrent_tasks" else [1, 2]
    assert run(main()) == expected


@pytest.mark.timeout(30)
def test_a_plain_call_within_its_limit_on_the_sync_backend_still_runs_as_it_is_made() -> None:
    @mp.parallel(backend="sync", max_concurrent=1)
    def plain(n: int) -> int:
        return n

    async def main() -> list[int]:
        return [plain(n).get(timeout=1) for n in range(3)]  # each ran inline: a blocking get() is at once

    assert run(main()) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_blocking_on_the_loops_thread_for_held_tasks_ends(gate: threading.Event) -> None:
    # The rest of a held task's admission ran on its submitter's loop, which
    # the wait blocked: leaving the executor's block waited for good.
    mp.set_max_concurrent_tasks(1)

    @mp.parallel
    def limited(n: int) -> int:
        if n == 0:
            assert gate.wait(10)
        return n

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        with mp.Executor(max_workers=2) as executor:
            futures = [loop.run_in_executor(executor, limited._fn, n) for n in range(3)]
            gate.set()
        held = [limited(n) for n in range(3, 5)]
        assert [h.get(timeout=10) for h in held] == [3, 4]  # a blocking wait on the loop's thread
        return list(await asyncio.gather(*futures))

    assert run(main()) == [0, 1, 2]


# A "sync" task held for its slot on a running loop is run, once admitted, on that
# loop's thread. A blocking wait there for it kept the loop, and so the task, from
# running: the wait lasted for good. Each way of waiting, given [f(2), f(3)] (or
# the items 2 and 3) over a slot another thread's f(1) holds, returns [2, 3].
HELD_WAITS: dict[str, Callable[[Callable[[int], mp.AsyncHandle[int]]], list[int]]] = {
    "get": lambda f: [h.get() for h in [f(2), f(3)]],
    "get with a timeout": lambda f: [h.get(timeout=30) for h in [f(2), f(3)]],
    "get, the later first": lambda f: _later_first(f),
    "result": lambda f: [h.result() for h in [f(2), f(3)]],
    "exception": lambda f: _by_exception(f),
    "wait": lambda f: _by_wait(f, None),
    "wait with a timeout": lambda f: _by_wait(f, 30),
    "gather": lambda f: mp.gather([f(2), f(3)]),
    "gather with a timeout": lambda f: mp.gather([f(2), f(3)], timeout=30),
    "mp.wait": lambda f: sorted(h.get() for h in mp.wait([f(2), f(3)]).done),
    "mp.wait with a timeout": lambda f: sorted(h.get() for h in mp.wait([f(2), f(3)], timeout=30).done),
    "as_completed": lambda f: sorted(h.get() for h in mp.as_completed([f(2), f(3)])),
    "parallel_map": lambda f: mp.parallel_map(f, [2, 3]),
    "parallel_map with a timeout": lambda f: mp.parallel_map(f, [2, 3], timeout=30),
    "imap": lambda f: list(mp.imap(f, [2, 3])),
    "a group": lambda f: _in_a_group(f, None),
    "a group with max_concurrent": lambda f: _in_a_group(f, 1),
}


def _later_first(f: Callable[[int], mp.AsyncHandle[int]]) -> list[int]:
    first, second = f(2), f(3)
    later = second.get()  # f(2), admitted first, holds the slot it waits for
    return [first.get(), later]


def _by_exception(f: Callable[[int], mp.AsyncHandle[int]]) -> list[int]:
    handles = [f(2), f(3)]
    assert [h.exception() for h in handles] == [None, None]
    return [h.get(timeout=0) for h in handles]


def _by_wait(f: Callable[[int], mp.AsyncHandle[int]], timeout: float | None) -> list[int]:
    handles = [f(2), f(3)]
    assert all(h.wait(timeout) for h in handles)
    return [h.get(timeout=0) for h in handles]


def _in_a_group(f: Callable[[int], mp.AsyncHandle[int]], max_concurrent: int | None) -> list[int]:
    with mp.ParallelContext(backend="sync", max_concurrent=max_concurrent) as ctx:
        ctx.submit(f, 2)
        ctx.submit(f, 3)  # with max_concurrent=1: waits for the group's slot that f(2) holds
    return ctx.results()


@pytest.fixture
def loop_blocks(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a blocking wait on a loop's thread listens for the held tasks it must run."""
    from makeparallel import _held_on_loop

    blocks = threading.Event()
    listening = _held_on_loop.listening

    @contextlib.contextmanager
    def announced(loop: Any, wake: Callable[[], object]) -> Any:
        with listening(loop, wake):
            blocks.set()
            yield

    monkeypatch.setattr(_held_on_loop, "listening", announced)
    return blocks


def _sync_limited(limit: str, gate: threading.Event, ran: list[tuple[int, int]]) -> mp.ParallelFunction[[int], int]:
    """A "sync" function under ``limit``, whose call f(1) holds its slot until ``gate`` opens."""
    if limit == "set_max_concurrent_tasks":
        mp.set_max_concurrent_tasks(1)
    options = {"max_concurrent": 1} if limit == "max_concurrent" else {}

    @mp.parallel(backend="sync", **options)
    def f(n: int) -> int:
        ran.append((n, threading.get_ident()))
        if n == 1:
            assert gate.wait(30)
        return n

    return f


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
@pytest.mark.parametrize("how", HELD_WAITS)
def test_a_blocking_wait_on_the_loops_thread_runs_the_sync_tasks_held_for_their_slot(
    how: str, limit: str, gate: threading.Event, loop_blocks: threading.Event
) -> None:
    ran: list[tuple[int, int]] = []
    f = _sync_limited(limit, gate, ran)
    holder = threading.Thread(target=lambda: f(1).get())
    holder.start()
    assert wait_until(lambda: [n for n, _ in ran] == [1])
    opener = threading.Thread(target=lambda: loop_blocks.wait(30) and gate.set())
    opener.start()

    async def main() -> tuple[list[int], int, bool]:
        results = HELD_WAITS[how](f)
        ready = f(4)  # the slots are back: admitted, and run, at once
        return results, threading.get_ident(), ready.done()

    results, loop_thread, at_once = run(main())
    holder.join(30)
    opener.join(30)
    assert results == [2, 3]
    assert at_once
    assert sorted(n for n, _ in ran) == [1, 2, 3, 4], "a task ran twice, or not at all"
    assert all(thread == loop_thread for n, thread in ran if n != 1), "a task ran off its caller's thread"
    limiter = f._spec.limiter if limit == "max_concurrent" else mp._runtime.global_limiter
    assert limiter is not None and limiter.in_flight == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
def test_a_blocking_wait_for_a_held_sync_task_gives_up_at_its_timeout(limit: str, gate: threading.Event) -> None:
    ran: list[tuple[int, int]] = []
    f = _sync_limited(limit, gate, ran)
    holder = threading.Thread(target=lambda: f(1).get())
    holder.start()
    assert wait_until(lambda: [n for n, _ in ran] == [1])

    async def main() -> int:
        handle = f(2)
        with pytest.raises(mp.TaskTimeoutError, match="gave up waiting"):
            handle.get(timeout=0.05)
        assert not handle.wait(0.05)
        with pytest.raises(mp.TaskTimeoutError):
            mp.gather([handle], timeout=0.05)
        gate.set()  # the slot frees: the task runs once, by the wait or by the loop
        return await handle

    assert run(main()) == 2
    holder.join(30)
    assert sorted(n for n, _ in ran) == [1, 2]
    limiter = f._spec.limiter if limit == "max_concurrent" else mp._runtime.global_limiter
    assert limiter is not None and limiter.in_flight == 0


# The same for an Executor("sync")'s futures, whose calls from a coroutine over
# set_max_concurrent_tasks are held as well: their result() and exception() are
# concurrent.futures' own waits, which never ran the task, nor did Executor.map's.
EXECUTOR_HELD_WAITS: dict[str, Callable[[mp.Executor, Callable[[int], int]], list[int]]] = {
    "result": lambda executor, f: [future.result() for future in [executor.submit(f, 2), executor.submit(f, 3)]],
    "result with a timeout": lambda executor, f: [
        future.result(timeout=30) for future in [executor.submit(f, 2), executor.submit(f, 3)]
    ],
    "exception": lambda executor, f: _by_future_exception([executor.submit(f, 2), executor.submit(f, 3)]),
    "Executor.map": lambda executor, f: list(executor.map(f, [2, 3])),
    "Executor.map with a timeout": lambda executor, f: list(executor.map(f, [2, 3], timeout=30)),
}


def _by_future_exception(futures: list[cf.Future[int]]) -> list[int]:
    assert [future.exception() for future in futures] == [None, None]
    return [future.result(timeout=0) for future in futures]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", EXECUTOR_HELD_WAITS)
def test_a_blocking_wait_for_a_held_sync_executor_future_on_the_loops_thread_runs_it(
    how: str, gate: threading.Event, loop_blocks: threading.Event
) -> None:
    ran: list[tuple[int, int]] = []

    def f(n: int) -> int:
        ran.append((n, threading.get_ident()))
        if n == 1:
            assert gate.wait(30)
        return n

    mp.set_max_concurrent_tasks(1)
    with mp.Executor(backend="sync") as executor:
        holder = threading.Thread(target=lambda: executor.submit(f, 1).result())
        holder.start()
        assert wait_until(lambda: [n for n, _ in ran] == [1])
        opener = threading.Thread(target=lambda: loop_blocks.wait(30) and gate.set())
        opener.start()

        async def main() -> tuple[list[int], int]:
            return EXECUTOR_HELD_WAITS[how](executor, f), threading.get_ident()

        results, loop_thread = run(main())
        holder.join(30)
        opener.join(30)
    assert results == [2, 3]
    assert sorted(n for n, _ in ran) == [1, 2, 3], "a task ran twice, or not at all"
    assert all(thread == loop_thread for n, thread in ran if n != 1), "a task ran off its caller's thread"
    assert mp._runtime.global_limiter.in_flight == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["process", "a ProcessPoolExecutor"])
def test_a_limited_process_function_defers_on_the_loop(tmp_path: Any, backend: str) -> None:
    flags = Flags(str(tmp_path))

    async def main(limited: mp.ParallelFunction[[Flags, int], int]) -> list[Any]:
        handles = [limited(flags, n) for n in range(4)]
        assert sum(1 for h in handles if h.status == "pending") >= 3
        flags.set("go")
        return await mp.gather_async(handles, timeout=50)

    if backend == "process":
        assert run(main(mp.parallel(backend="process", max_concurrent=1)(flagged_square))) == [0, 1, 4, 9]
        return
    with cf.ProcessPoolExecutor(max_workers=2) as executor:
        assert run(main(mp.parallel(backend=executor, max_concurrent=1)(flagged_square))) == [0, 1, 4, 9]


def flagged_square(flags: Flags, n: int) -> int:
    assert flags.wait_for_release("go")
    return n * n


# -- cancellation crosses ----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_cancelling_the_await_of_a_queued_task_means_it_never_runs(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)
    ran = threading.Event()

    @mp.parallel
    def queued() -> None:
        ran.set()

    async def main() -> mp.AsyncHandle[None]:
        handle = queued()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(handle, 0.01)  # type: ignore[arg-type]
        return handle

    handle = run(main())
    assert handle.cancelled()
    gate.set()
    mp.gather(blockers, timeout=10)
    assert not ran.is_set()


@pytest.mark.timeout(30)
def test_cancelling_the_await_of_a_running_task_asks_it_to_stop(gate: threading.Event) -> None:
    started = threading.Event()
    stopped = threading.Event()

    @mp.parallel
    def running() -> None:
        started.set()
        try:
            poll_until_stopped(gate)
        except mp.TaskCancelledError:
            stopped.set()
            raise

    async def main() -> mp.AsyncHandle[None]:
        handle = running()
        await on_a_thread(lambda: started.wait(10))
        task = asyncio.ensure_future(handle)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return handle

    handle = run(main())
    assert handle.cancelled()
    assert stopped.wait(10), "check_cancelled() never raised in the task"


@pytest.mark.timeout(30)
def test_a_failing_sibling_cancels_the_task_awaited_beside_it(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel
    def running() -> None:
        started.set()
        poll_until_stopped(gate)

    async def fail_once_started() -> None:
        await on_a_thread(lambda: started.wait(10))
        raise LookupError("sibling failed")

    async def with_group() -> mp.AsyncHandle[None]:
        handle = running()
        waiter = asyncio.ensure_future(handle)
        try:
            await fail_once_started()
        except LookupError:
            waiter.cancel()  # what TaskGroup and anyio do to the siblings
            with pytest.raises(asyncio.CancelledError):
                await waiter
        return handle

    handle = run(with_group())
    assert handle.cancelled()


@pytest.mark.timeout(30)
def test_shield_keeps_the_task_running(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(10)
        return "kept"

    async def main() -> str:
        handle = held()
        await on_a_thread(lambda: started.wait(10))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(handle), 0.01)  # type: ignore[arg-type]
        assert not handle.done()
        gate.set()
        return await handle

    assert run(main()) == "kept"


def pid_then_wait(flags: Flags) -> int:
    flags.set("started", str(os.getpid()))
    assert flags.wait_for_release("never")
    return os.getpid()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["configure", "per function"])
def test_force_cancel_on_the_process_backend_stops_the_worker(tmp_path: Any, how: str) -> None:
    flags = Flags(str(tmp_path))
    mp.configure_process_pool(num_workers=1)
    if how == "configure":
        mp.configure(async_cancel="force")
        fn = mp.parallel(backend="process")(pid_then_wait)
    else:
        fn = mp.parallel(backend="process", async_cancel="force")(pid_then_wait)

    async def main() -> int:
        handle = fn(flags)
        await on_a_thread(lambda: flags.wait("started", 30))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(handle, 0.05)  # type: ignore[arg-type]
        assert handle.cancelled()
        return int(flags.read("started"))

    try:
        pid = run(main())
        assert wait_until(lambda: pid not in mp.get_process_pool_info()["worker_pids"], 30)
        assert mp.parallel(backend="process")(os.getpid)().get(30) != pid
    finally:
        mp.configure(async_cancel="cooperative")
        flags.set("teardown")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("collector", ["gather_async", "async as_completed", "async imap"])
def test_force_cancel_crosses_from_the_async_collectors_too(tmp_path: Any, collector: str) -> None:
    flags = Flags(str(tmp_path))
    mp.configure_process_pool(num_workers=1)
    mp.configure(async_cancel="force")
    fn = mp.parallel(backend="process")(pid_then_wait)

    async def collect() -> None:
        if collector == "gather_async":
            await mp.gather_async([fn(flags)])
        elif collector == "async as_completed":
            async for _ in mp.as_completed([fn(flags)]):
                pass
        else:
            async for _ in mp.imap(pid_then_wait, [flags], backend="process"):
                pass

    async def main() -> int:
        consumer = asyncio.ensure_future(collect())
        await on_a_thread(lambda: flags.wait("started", 30))
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        return int(flags.read("started"))

    try:
        pid = run(main())
        # The task never checks for cancellation: only its worker stopping ends it.
        assert wait_until(lambda: pid not in mp.get_process_pool_info()["worker_pids"], 30)
        assert mp.get_process_pool_info()["busy_workers"] == 0
    finally:
        flags.set("teardown")


def test_async_cancel_is_checked() -> None:
    with pytest.raises(ValueError, match="async_cancel must be 'cooperative' or 'force', got 'kill'"):
        mp.configure(async_cancel="kill")
    with pytest.raises(ValueError, match="async_cancel"):
        mp.parallel(async_cancel="now")


# -- awaits abandoned on a closed loop ------------------------------------------------------


async def _first_completed(handle: mp.AsyncHandle[Any]) -> object:
    async for ended in mp.as_completed([handle]):
        return ended
    return None


async def _done_of_asyncio_wait(handle: mp.AsyncHandle[Any]) -> object:
    """``asyncio.wait([handle])``, then the handle (Python 3.11+ takes it for a future), or, on 3.10, the await of
    the asyncio task it wrapped the handle in."""
    (ended,), _ = await asyncio.wait([handle])
    return ended if isinstance(ended, mp.AsyncHandle) else await ended


#: Each way of waiting for a handle from a coroutine, given the handle, inside the loop.
ABANDONED_WAITS: dict[str, Callable[[mp.AsyncHandle[Any]], Awaitable[object]]] = {
    "await": lambda handle: handle,
    "asyncio.gather": lambda handle: asyncio.gather(handle),
    "asyncio.shield": lambda handle: asyncio.shield(handle),
    "asyncio.wait_for": lambda handle: asyncio.wait_for(handle, 60),  # type: ignore[arg-type]
    "gather_async": lambda handle: mp.gather_async([handle]),
    "async for over as_completed": _first_completed,
    "asyncio.wait": _done_of_asyncio_wait,
}


def abandoned_on_a_closed_loop(
    loop: asyncio.AbstractEventLoop, handle: mp.AsyncHandle[Any], way: str
) -> weakref.ref[asyncio.Task[Any]]:
    """Start waiting for ``handle`` in an asyncio task on ``loop``, stop the loop there; return the task, weakly.

    Nothing cancels the task: the loop's owner closes it as it is, as a program that
    runs ``run_until_complete`` and then ``close`` without ``asyncio.run``'s cleanup does.
    """

    async def waits() -> None:
        await ABANDONED_WAITS[way](handle)

    async def main() -> weakref.ref[asyncio.Task[Any]]:
        waiting = asyncio.ensure_future(waits())
        while not handle._callbacks:  # the wait is in place (a task that gather or shield made took its step)
            await asyncio.sleep(0)
        return weakref.ref(waiting)

    return loop.run_until_complete(main())


def let_go(waiting: weakref.ref[asyncio.Task[Any]]) -> bool:
    """Whether the abandoned await's task was collected, after a collection.

    Its wake-up is held until the worker that ended the handle returns from running
    the callbacks (the list of them stays in its frame after it woke the waiters
    and set ``ended_with_callbacks_run``'s event): a worker descheduled there, on a
    loaded machine, still held it as the test collected. Polled, it is let go once
    that worker moves on; kept for good (the waker held it), it never is.
    """
    gc.collect()
    return waiting() is None


def ended_with_callbacks_run(handle: mp.AsyncHandle[Any]) -> threading.Event:
    """An event set once ``handle`` ended and the done-callbacks added before this one ran."""
    called = threading.Event()
    handle.add_done_callback(lambda _: called.set())
    return called


@pytest.mark.timeout(30)
@pytest.mark.parametrize("way", ABANDONED_WAITS)
def test_an_await_abandoned_on_a_closed_loop_is_let_go_once_its_task_ends(way: str, gate: threading.Event) -> None:
    # Its wake-up found the loop closed: the waker (the thread's, until it runs another loop)
    # kept it, and with it the await's asyncio task, its coroutine and the handle. asyncio's
    # "Task was destroyed but it is pending!" came once that other loop let them go, in the
    # time of whatever code ran then, or at exit.
    handle = mp.parallel(backend="thread")(gate.wait)(30)
    loop = asyncio.new_event_loop()
    try:
        waiting = abandoned_on_a_closed_loop(loop, handle, way)
    finally:
        loop.close()
    delivered = ended_with_callbacks_run(handle)
    gate.set()
    assert handle.get(timeout=30) is True
    assert delivered.wait(30)
    assert wait_until(lambda: let_go(waiting), 10), f"the abandoned await of {way} is still held"


@pytest.mark.timeout(30)
def test_awaits_whose_wake_up_was_scheduled_as_their_loop_closed_are_let_go_at_the_next() -> None:
    # The first task ended while the loop was stopped, not yet closed: its wake-up was
    # scheduled there, and closing the loop dropped it unrun. The waker, told that one was
    # scheduled, kept every later one too without trying the loop again.
    gates = [threading.Event(), threading.Event()]
    try:
        handles = [mp.parallel(backend="thread")(each.wait)(30) for each in gates]
        loop = asyncio.new_event_loop()
        try:
            waiting = [abandoned_on_a_closed_loop(loop, handle, "await") for handle in handles]
            first = ended_with_callbacks_run(handles[0])
            gates[0].set()
            assert first.wait(30)  # its wake-up waits on the stopped loop
        finally:
            loop.close()
        second = ended_with_callbacks_run(handles[1])
        gates[1].set()
        assert second.wait(30)
    finally:
        for each in gates:
            each.set()
    assert wait_until(lambda: all(let_go(each) for each in waiting), 10), [each() for each in waiting]


# -- async functions as tasks ------------------------------------------------------------


@mp.parallel
async def loop_of_this_worker(n: int) -> tuple[int, int, int]:
    await asyncio.sleep(0)
    return id(asyncio.get_running_loop()), threading.get_ident(), n


@mp.parallel(backend="process")
async def loop_of_this_process(n: int) -> tuple[int, int, int]:
    await asyncio.sleep(0)
    return id(asyncio.get_running_loop()), os.getpid(), n


def test_an_async_function_runs_on_its_worker_threads_own_loop_reused() -> None:
    resize(1)
    results = [loop_of_this_worker(n).result(timeout=10) for n in range(3)]
    loops = {loop for loop, _, _ in results}
    threads = {thread for _, thread, _ in results}
    assert [n for _, _, n in results] == [0, 1, 2]
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert len(loops) == 1, "a new loop per task"


@pytest.mark.timeout(60)
def test_an_async_function_runs_on_its_worker_processes_own_loop_reused() -> None:
    mp.configure_process_pool(num_workers=1)
    results = [loop_of_this_process(n).get(30) for n in range(3)]
    assert {pid for _, pid, _ in results} != {os.getpid()}
    assert len({(loop, pid) for loop, pid, _ in results}) == 1


def test_async_functions_run_in_parallel_on_threads() -> None:
    resize(2)
    both_in = threading.Barrier(2, timeout=10)

    @mp.parallel
    async def meet(n: int) -> int:
        await asyncio.sleep(0)
        both_in.wait()  # two workers, each with its own loop, at once
        return n

    assert mp.gather([meet(1), meet(2)], timeout=20) == [1, 2]


async def _double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def _wrapped_async(fn: Callable[[int], Awaitable[int]]) -> Callable[[int], Awaitable[int]]:
    @functools.wraps(fn)
    def wrapper(x: int) -> Awaitable[int]:
        return fn(x)

    return wrapper


class _AsyncCallable:
    async def __call__(self, x: int) -> int:
        return await _double(x)


@pytest.mark.parametrize(
    "fn",
    [_double, _wrapped_async(_double), _AsyncCallable(), lambda x: _double(x), functools.partial(_double)],
    ids=["async def", "wraps", "async __call__", "lambda", "partial"],
)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_whatever_returns_a_coroutine_is_run(fn: Any, backend: str) -> None:
    assert mp.parallel(backend=backend)(fn)(21).get(30) == 42

    async def main() -> int:
        return await mp.parallel(backend=backend)(fn)(4)  # type: ignore[no-any-return]

    assert run(main()) == 8


def test_get_inside_a_coroutine_on_an_async_task_says_to_await(gate: threading.Event) -> None:
    @mp.parallel
    async def gated(n: int) -> int:
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return n

    async def main() -> int:
        handle = gated(7)
        with pytest.raises(RuntimeError, match=r"await handle"):
            handle.get()
        with pytest.raises(RuntimeError, match=r"await handle"):
            handle.wait(5)
        gate.set()
        n = await handle
        assert handle.get() == n  # ended: get() is fine now
        return n  # type: ignore[no-any-return]

    assert run(main()) == 7


def test_an_async_task_is_never_run_inline_on_a_running_loop(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)

    async def main() -> int:
        handle = loop_of_this_worker(3)
        with pytest.raises(RuntimeError, match=r"await handle"):
            handle.get()  # queued: a plain task would run inline here
        assert handle.status == "pending"
        gate.set()
        _, thread, n = await handle
        assert thread != threading.get_ident()
        return n

    assert run(main()) == 3
    mp.gather(blockers, timeout=10)


def test_on_the_sync_backend_under_a_loop_it_runs_on_that_loop() -> None:
    @mp.parallel(backend="sync")
    async def here() -> tuple[int, int]:
        await asyncio.sleep(0)
        return id(asyncio.get_running_loop()), threading.get_ident()

    async def main() -> None:
        handle = here()
        with pytest.raises(RuntimeError, match=r"await handle"):
            handle.get()
        assert await handle == (id(asyncio.get_running_loop()), threading.get_ident())

    run(main())
    assert here().get(10)[1] == threading.get_ident()  # no loop running: its own loop, inline


def test_on_the_sync_backend_under_a_loop_its_coroutine_runs_as_its_own_task() -> None:
    """Its steps run on the caller's loop after the call returned: still as its task, not the caller's."""

    @mp.parallel(backend="sync")
    async def inner(proceed: asyncio.Event) -> int | None:
        mp.report_progress(0.5, "half way")
        await proceed.wait()
        return mp.get_current_task_id()

    @mp.parallel
    async def outer() -> tuple[int | None, int, str | None, int | None]:
        proceed = asyncio.Event()
        handle = inner(proceed)
        await asyncio.sleep(0)  # its first step, up to the wait
        message = handle.get_progress_message()
        proceed.set()
        return await handle, handle.get_task_id(), message, mp.get_current_task_id()

    handle = outer()
    inner_seen, inner_id, message, outer_seen = handle.get(10)
    assert (inner_seen, message) == (inner_id, "half way")
    assert outer_seen == handle.get_task_id()
    assert handle.get_progress_message() is None  # the outer task reported nothing


def test_a_threads_own_loop_is_closed_when_it_ends_though_a_failed_tasks_error_is_kept() -> None:
    """The error's traceback outlives the thread; the loop is closed at the thread's end, not by the collector.

    Collected in a reference cycle, the loop's sockets would be finalized before
    it is closed, with warnings (errors here) for each of them.
    """
    loops: list[asyncio.AbstractEventLoop] = []

    @mp.parallel(backend="sync")
    async def fails() -> None:
        loops.append(asyncio.get_running_loop())
        raise ValueError("kept")

    kept: list[mp.AsyncHandle[None]] = []

    def in_a_thread() -> None:
        handle = fails()
        with pytest.raises(ValueError, match="kept"):
            handle.get(10)  # inline: on this thread's own loop
        kept.append(handle)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert loops[0].is_closed(), "the loop outlived its thread"
    assert kept[0].status == "failed"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_a_base_exception_of_an_async_task_is_not_logged_as_never_retrieved(
    error: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    # asyncio's run_until_complete lets KeyboardInterrupt and SystemExit out of the
    # loop without reading the task's exception: the task's error is the handle's,
    # and asyncio must not log it again, when the task is collected, as lost.
    tasks: list[asyncio.Task[Any]] = []

    @mp.parallel
    async def exits() -> None:
        tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        raise error("the task's own")

    with pytest.raises(error, match="the task's own"):
        exits().get(10)
    assert tasks[0].done()
    # What the collector does with the task once nothing holds it (when is up to the collector).
    tasks[0].__del__()
    lost = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not lost, lost


# A task of "sync" called from a coroutine runs its coroutine on that caller's loop, which alone
# can end it. Closed first (run_until_complete, then close, without asyncio.run's cancelling), the
# task stayed running for good: every wait for it ran out its timeout, or lasted for good, and
# exit waited out its exit_timeout. Each way of waiting now ends it with ShutdownError at once.


async def sleeps_then_doubles(n: int) -> int:
    await asyncio.sleep(0.001)
    return 2 * n


def called_from_a_coroutine_on(loop: asyncio.AbstractEventLoop, fn: Callable[[int], mp.AsyncHandle[int]]) -> mp.AsyncHandle[int]:
    """``fn(21)`` called in a coroutine that ``loop`` runs to its end, leaving the task's coroutine there unfinished."""

    async def main() -> mp.AsyncHandle[int]:
        return fn(21)

    return loop.run_until_complete(main())


def a_loop_on_its_thread(fn: Callable[[int], Any], made: list[Any], close: threading.Event | None) -> threading.Thread:
    """A started thread that calls ``fn`` on a new loop (:func:`called_from_a_coroutine_on`), keeps what it gave in ``made``,
    then closes that loop: once ``close`` is set, or at once where it is None."""

    def runs_a_loop() -> None:
        loop = asyncio.new_event_loop()
        try:
            made.append(called_from_a_coroutine_on(loop, fn))
            if close is not None:
                assert close.wait(30), "the test never let the loop close"
        finally:
            loop.close()

    thread = threading.Thread(target=runs_a_loop, name="test-loop")
    thread.start()
    return thread


@contextlib.contextmanager
def a_task_on_a_loop_of_its_thread(fn: Callable[[int], Any]) -> Iterator[tuple[Any, threading.Event]]:
    """What ``fn`` gave on a loop of a thread of its own (:func:`a_loop_on_its_thread`), and the event
    that lets that loop close: set, and the thread joined, as the block ends."""
    close = threading.Event()
    made: list[Any] = []
    thread = a_loop_on_its_thread(fn, made, close)
    try:
        assert wait_until(lambda: bool(made), 30)
        yield made[0], close
    finally:
        close.set()
        thread.join(30)


#: Each blocking way of waiting for a task, as the outcome it gave: the result, or the error's type.
BLOCKING_WAITS: dict[str, Callable[[mp.AsyncHandle[int]], object]] = {
    "get": lambda handle: handle.get(timeout=20),
    "exception": lambda handle: handle.exception(timeout=20),
    "wait": lambda handle: handle.wait(timeout=20) and handle.exception(),
    "mp.gather": lambda handle: mp.gather([handle], timeout=20)[0],
    "mp.wait": lambda handle: next(iter(mp.wait([handle], timeout=20).done)).exception(),  # StopIteration: not done
    "mp.as_completed": lambda handle: next(iter(mp.as_completed([handle], timeout=20))).exception(),
}


def outcome_of(wait: Callable[[], object]) -> object:
    try:
        value = wait()
    except Exception as error:  # noqa: BLE001  # the outcome under test
        return type(error)
    return type(value) if isinstance(value, BaseException) else value


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["sync", "thread"])
@pytest.mark.parametrize("wait", BLOCKING_WAITS)
def test_a_task_whose_coroutines_loop_closed_first_ends_as_it_is_waited_for(wait: str, backend: str) -> None:
    # On "thread" the coroutine runs on its worker's own loop: the caller's loop is nothing to it.
    fn = mp.parallel(backend=backend)(sleeps_then_doubles)
    loop = asyncio.new_event_loop()
    try:
        handle = called_from_a_coroutine_on(loop, fn)
    finally:
        loop.close()
    expected = mp.ShutdownError if backend == "sync" else (None if wait in ("exception", "wait", "mp.wait", "mp.as_completed") else 42)
    assert outcome_of(lambda: BLOCKING_WAITS[wait](handle)) == expected
    assert handle.done()
    if backend == "sync":
        error = handle.exception()
        assert isinstance(error, mp.ShutdownError)
        assert "closed before it ended" in str(error) and "asyncio.run" in str(error), error
        gc.collect()  # asyncio's report of the task the loop was closed with, in this test's time


@pytest.mark.timeout(30)
def test_a_coroutine_that_ended_in_its_loops_last_turn_gives_its_result_after_the_close() -> None:
    # It returned in the loop's last turn, beside the end of run_until_complete's coroutine:
    # the callback that was to end the task, scheduled for the next turn, was dropped by the close.
    @mp.parallel(backend="sync")
    async def at_once() -> int:
        return 42

    loop = asyncio.new_event_loop()
    try:
        handle = called_from_a_coroutine_on(loop, lambda _: at_once())
        assert not handle.done()
    finally:
        loop.close()
    assert handle.get(timeout=20) == 42


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wait", BLOCKING_WAITS)
def test_a_wait_begun_before_the_coroutines_loop_closed_ends_at_its_close(wait: str) -> None:
    # The loop runs on a thread of its own, and closes while another thread waits for the task.
    # mp.gather, mp.wait and mp.as_completed, which wait on their own queue, ran out their
    # timeout (or waited for good without one).
    fn = mp.parallel(backend="sync")(sleeps_then_doubles)
    with a_task_on_a_loop_of_its_thread(fn) as (handle, _):
        outcome: list[object] = []
        callbacks = len(handle._callbacks or ())
        waiting = threading.Thread(target=lambda: outcome.append(outcome_of(lambda: BLOCKING_WAITS[wait](handle))))
        waiting.start()

        def began() -> bool:  # a waiter (the handle's own waits) or one more done-callback (the collectors')
            return bool(handle._waiters) or len(handle._callbacks or ()) > callbacks

        assert wait_until(began, 30), "the wait never began"
    waiting.join(30)
    assert outcome == [mp.ShutdownError]
    gc.collect()  # asyncio's report of the task the loop was closed with, in this test's time


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("when", "wait"), [("before", "result"), ("before", "exception"), ("before", "shutdown"), ("during", "result"), ("during", "exception")]
)
def test_an_executor_future_whose_coroutines_loop_closed_ends_with_shutdown_error(when: str, wait: str) -> None:
    # The future's wait is concurrent.futures' own, which never looked at the loop: it ran out
    # its timeout, or lasted for good without one, whether the loop closed before it or during it;
    # Executor.shutdown(wait=True) waited for good.
    close = threading.Event()
    futures: list[cf.Future[int]] = []

    with mp.Executor(backend="sync") as executor:
        submit = lambda n: executor.submit(sleeps_then_doubles, n)
        thread = a_loop_on_its_thread(submit, futures, close if when == "during" else None)
        if when == "before":
            thread.join(30)
        assert wait_until(lambda: bool(futures), 30)
        (future,) = futures
        outcome: list[object] = []
        if wait == "shutdown":
            executor.shutdown(wait=True)
            wait = "exception"
        waiting = threading.Thread(target=lambda: outcome.append(outcome_of(lambda: getattr(future, wait)(timeout=20))))
        waiting.start()
        if when == "during":
            assert wait_until(lambda: bool(future._waiters) or bool(future.handle._waiters), 30), "the wait never began"  # type: ignore[attr-defined]
            close.set()
        thread.join(30)
        waiting.join(30)
        assert outcome == [mp.ShutdownError]
    gc.collect()  # asyncio's report of the task the loop was closed with, in this test's time


@pytest.mark.timeout(30)
def test_waiting_on_the_thread_of_the_stopped_loop_that_runs_the_coroutine_is_refused() -> None:
    # Nothing runs that loop while its thread waits: the wait lasted for good. Running the
    # loop until the task ends, as the error says, ends it.
    fn = mp.parallel(backend="sync")(sleeps_then_doubles)
    loop = asyncio.new_event_loop()
    try:
        handle = called_from_a_coroutine_on(loop, fn)
        for wait in (handle.get, handle.wait, lambda: mp.gather([handle])):
            with pytest.raises(RuntimeError, match=r"which is not running now.*loop\.run_until_complete\(handle\)"):
                wait()
        assert not handle.done()
        assert loop.run_until_complete(handle) == 42  # type: ignore[arg-type]
    finally:
        loop.close()


# An await on another loop (another thread's, or a new one on the closed loop's own thread),
# and the async collectors there, never looked at the task's loop: closed before the await or
# while it waited, the task stayed running, and the await lasted for good (or to its timeout).


async def awaited_outcome(handle: mp.AsyncHandle[int], way: str) -> object:
    """What awaiting ``handle`` in one of the ``ABANDONED_WAITS`` gave: the result (the ended handle's error, for
    ``as_completed``), or the error's type; an await that lasts 20 s is a ``TimeoutError``."""
    try:
        value = await asyncio.wait_for(ABANDONED_WAITS[way](handle), 20)
    except Exception as error:  # noqa: BLE001  # the outcome under test
        return type(error)
    if isinstance(value, mp.AsyncHandle):
        return outcome_of(value.exception)
    return value[0] if isinstance(value, list) else value


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["this thread", "another thread"])
@pytest.mark.parametrize("way", ABANDONED_WAITS)
def test_an_await_on_another_loop_ends_a_task_whose_coroutines_loop_closed_first(way: str, where: str) -> None:
    # On this thread, the await runs on a new loop made after the close (asyncio.run's).
    fn = mp.parallel(backend="sync")(sleeps_then_doubles)
    if where == "this thread":
        loop = asyncio.new_event_loop()
        try:
            handle = called_from_a_coroutine_on(loop, fn)
        finally:
            loop.close()
    else:
        made: list[mp.AsyncHandle[int]] = []
        a_loop_on_its_thread(fn, made, None).join(30)
        (handle,) = made
    assert run(awaited_outcome(handle, way)) is mp.ShutdownError
    error = handle.exception()
    assert isinstance(error, mp.ShutdownError) and "closed before it ended" in str(error), error
    gc.collect()  # asyncio's report of the task the loop was closed with, in this test's time


@pytest.mark.timeout(60)
@pytest.mark.parametrize("way", ABANDONED_WAITS)
def test_an_await_on_another_loop_begun_before_the_coroutines_loop_closed_ends_at_its_close(way: str) -> None:
    fn = mp.parallel(backend="sync")(sleeps_then_doubles)
    with a_task_on_a_loop_of_its_thread(fn) as (handle, close):
        callbacks = len(handle._callbacks or ())

        async def main() -> object:
            waiting = asyncio.ensure_future(awaited_outcome(handle, way))
            began = await on_a_thread(lambda: wait_until(lambda: len(handle._callbacks or ()) > callbacks, 30))
            close.set()
            assert began, "the await never began"
            return await waiting

        assert run(main()) is mp.ShutdownError
    gc.collect()  # asyncio's report of the task the loop was closed with, in this test's time


@pytest.mark.timeout(30)
@pytest.mark.parametrize("way", ["await", "gather_async", "async for over as_completed", "asyncio.wait"])
def test_an_await_on_another_loop_of_the_thread_whose_stopped_loop_runs_the_coroutine_is_refused(way: str) -> None:
    # Only this thread runs that loop, and it runs the await's loop instead: as a blocking wait
    # here, the await lasted for good.
    fn = mp.parallel(backend="sync")(sleeps_then_doubles)
    loop = asyncio.new_event_loop()
    try:
        handle = called_from_a_coroutine_on(loop, fn)
        with pytest.raises(RuntimeError, match=r"which is not running now.*loop\.run_until_complete\(handle\)"):
            run(asyncio.wait_for(ABANDONED_WAITS[way](handle), 20))  # type: ignore[arg-type]
        assert not handle.done()
        assert loop.run_until_complete(handle) == 42  # type: ignore[arg-type]
    finally:
        loop.close()


def pending_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """The timers ``loop`` still has to run (``call_later``), not cancelled."""
    return [timer for timer in loop._scheduled if not timer.cancelled()]  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cancelled", [False, True], ids=["ended", "cancelled"])
@pytest.mark.parametrize("way", ["await", "gather_async", "async for over as_completed"])
def test_an_await_on_another_loop_of_a_task_whose_coroutines_loop_runs_leaves_no_timer(way: str, cancelled: bool) -> None:
    # The await looks at the task's loop on a timer of its own loop as it waits: gone once it ends.
    released: list[asyncio.Event] = []  # of the task's loop

    @mp.parallel(backend="sync")
    async def waits_for_release() -> int:
        await released[0].wait()
        return 42

    task_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=task_loop.run_forever, name="test-loop")
    thread.start()
    try:

        async def call() -> mp.AsyncHandle[int]:
            released.append(asyncio.Event())
            return waits_for_release()

        handle = asyncio.run_coroutine_threadsafe(call(), task_loop).result(30)

        async def main() -> tuple[object, list[asyncio.TimerHandle], list[asyncio.TimerHandle]]:
            loop = asyncio.get_running_loop()
            callbacks = len(handle._callbacks or ())
            waiting = asyncio.ensure_future(ABANDONED_WAITS[way](handle))
            assert await on_a_thread(lambda: wait_until(lambda: len(handle._callbacks or ()) > callbacks, 30)), "the await never began"
            during = pending_timers(loop)
            if cancelled:
                waiting.cancel()
            else:
                task_loop.call_soon_threadsafe(released[0].set)
            outcome = await asyncio.gather(waiting, return_exceptions=True)
            return outcome[0], during, pending_timers(loop)

        outcome, during, after = run(main())
        assert during, "the await looked at no loop as it waited"
        assert after == []
        if cancelled:
            assert isinstance(outcome, asyncio.CancelledError), outcome
        else:
            assert (outcome.get() if isinstance(outcome, mp.AsyncHandle) else outcome) in (42, [42]), outcome
    finally:
        if released:
            task_loop.call_soon_threadsafe(released[0].set)
        task_loop.call_soon_threadsafe(task_loop.stop)
        thread.join(30)
        task_loop.close()


class TasksOnALoopOfTheirOwn:
    """``count`` tasks of the ``"sync"`` backend called from a coroutine on a loop that runs on its own thread.

    Task ``i`` returns ``i`` once :meth:`release` ``(i)`` is called.
    """

    def __init__(self, count: int) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop")
        self._thread.start()
        self._events: list[asyncio.Event] = []

        @mp.parallel(backend="sync")
        async def waits_for_release(i: int) -> int:
            await self._events[i].wait()
            return i

        async def call() -> list[mp.AsyncHandle[int]]:
            self._events.extend(asyncio.Event() for _ in range(count))
            return [waits_for_release(i) for i in range(count)]

        self.handles = asyncio.run_coroutine_threadsafe(call(), self.loop).result(30)

    def release(self, i: int) -> None:
        self.loop.call_soon_threadsafe(self._events[i].set)

    def close(self) -> None:
        for i in range(len(self._events)):
            self.release(i)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.mark.timeout(60)
def test_many_awaits_on_another_loop_share_one_timer_of_the_awaiting_loop() -> None:
    # Each await looked on a timer of its own: 10,000 handles awaited through asyncio.gather
    # kept 10,000 timers, 100,000 calls a second on the awaiting loop as long as they waited.
    tasks = TasksOnALoopOfTheirOwn(100)
    try:

        async def main() -> tuple[list[int], int, list[asyncio.TimerHandle]]:
            loop = asyncio.get_running_loop()
            callbacks = [len(handle._callbacks or ()) for handle in tasks.handles]
            waiting = asyncio.ensure_future(asyncio.gather(*tasks.handles))

            def every_await_began() -> bool:
                return all(len(handle._callbacks or ()) > before for handle, before in zip(tasks.handles, callbacks))

            assert await on_a_thread(lambda: wait_until(every_await_began, 30)), "the awaits never began"
            during = len(pending_timers(loop))
            for i in range(len(tasks.handles)):
                tasks.release(i)
            return await waiting, during, pending_timers(loop)

        results, during, after = run(main())
        assert results == list(range(100))
        assert during == 1
        assert after == []
    finally:
        tasks.close()


@pytest.mark.timeout(60)
def test_async_for_over_as_completed_of_tasks_on_another_loop_looks_at_each_as_it_begins_not_at_every_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each wait for the next handle looked at every task not yet ended: quadratic in the
    # tasks, 1.2 s of the awaiting loop's time for 10,000 ending one at a time. The timer
    # looks every SLICE; here it never comes, and each task is looked at as the loop begins.
    from makeparallel import _await, _coroutines

    looks = [0]
    closed = _coroutines._OnCallersLoop.closed

    def counted(self: Any) -> bool:
        looks[0] += 1
        return closed(self)

    monkeypatch.setattr(_await, "SLICE", 3600.0)
    monkeypatch.setattr(_coroutines._OnCallersLoop, "closed", counted)
    count = 100
    tasks = TasksOnALoopOfTheirOwn(count)
    try:

        async def main() -> list[int]:
            loop = asyncio.get_running_loop()
            taken = []
            tasks.release(0)
            async for handle in mp.as_completed(tasks.handles):
                taken.append(handle.get())
                if len(taken) < count:  # released once the next wait began: each is a wait
                    loop.call_soon(tasks.release, len(taken))
            return taken

        assert run(main()) == list(range(count))
        assert looks[0] <= 2 * count, looks[0]
    finally:
        tasks.close()


@pytest.mark.timeout(60)
def test_an_await_on_another_loop_ends_at_its_tasks_loop_close_while_another_await_there_goes_on() -> None:
    # The awaits of a loop share one timer: the one whose task's loop closed ends, and the
    # timer goes on looking for the other, until it ends too.
    tasks = TasksOnALoopOfTheirOwn(1)
    fn = mp.parallel(backend="sync")(sleeps_then_doubles)
    try:
        with a_task_on_a_loop_of_its_thread(fn) as (closing, close):
            (going_on,) = tasks.handles

            async def outcome(handle: mp.AsyncHandle[int]) -> object:
                try:
                    return await handle
                except mp.ShutdownError as error:
                    return type(error)

            async def main() -> None:
                loop = asyncio.get_running_loop()
                before = len(closing._callbacks or ()), len(going_on._callbacks or ())
                first = asyncio.ensure_future(outcome(closing))
                second = asyncio.ensure_future(outcome(going_on))

                def both_began() -> bool:
                    return len(closing._callbacks or ()) > before[0] and len(going_on._callbacks or ()) > before[1]

                assert await on_a_thread(lambda: wait_until(both_began, 30)), "the awaits never began"
                close.set()
                assert await first is mp.ShutdownError
                assert not second.done()
                assert len(pending_timers(loop)) == 1, "nothing looks for the await that goes on"
                tasks.release(0)
                assert await second == 0
                assert pending_timers(loop) == []

            run(main())
    finally:
        tasks.close()
    gc.collect()  # asyncio's report of the task the loop was closed with, in this test's time


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kept", [True, False], ids=["kept", "dropped"])
@pytest.mark.parametrize("wait", ["wait_until_idle", "shutdown"])
def test_a_wait_for_every_task_ends_one_whose_coroutines_loop_closed(wait: str, kept: bool) -> None:
    # wait_until_idle() and shutdown() ran out their timeout: only exit looked at the loops. And
    # noted weakly, a task whose handle nobody kept was forgotten once collected, yet counted as
    # unfinished for good: exit, too, waited out its exit_timeout for it.
    fn = mp.parallel(backend="sync")(sleeps_then_doubles)
    outcomes: list[object] = []

    def called(n: int) -> mp.AsyncHandle[int]:
        handle = fn(n)
        handle.add_done_callback(lambda ended: outcomes.append(type(ended.exception())))
        return handle

    loop = asyncio.new_event_loop()
    try:
        handles = [called_from_a_coroutine_on(loop, called)][:kept]
    finally:
        loop.close()
    gc.collect()  # (and asyncio's report of the task the loop was closed with, in this test's time)
    if wait == "shutdown":
        assert mp.shutdown(timeout_secs=20) is True
    else:
        assert wait_until_idle(timeout=20) is True
    assert outcomes == [mp.ShutdownError]
    assert mp.get_active_task_count() == 0
    assert all(isinstance(handle.exception(), mp.ShutdownError) for handle in handles)


#: Each wait for every task (the executor's, given it), as whether it saw them all end.
WAITS_FOR_EVERY_TASK: dict[str, Callable[[Any], bool]] = {
    "wait_until_idle": lambda _: wait_until_idle(timeout=20),
    "shutdown": lambda _: mp.shutdown(timeout_secs=20),
    "Executor.shutdown": lambda executor: executor.shutdown(wait=True) is None,  # (it returns None once it waited)
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("on", ["main thread", "another thread"])
@pytest.mark.parametrize("wait", WAITS_FOR_EVERY_TASK)
def test_a_wait_for_every_task_begun_before_the_coroutines_loop_closed_ends_at_its_close(wait: str, on: str) -> None:
    # They ended the tasks whose loop had closed only before they began: a loop closed (on its
    # thread) as they waited held them up to their timeout, shutdown's default 30 s, or for good:
    # Executor.shutdown(wait=True) has none.
    executor = mp.Executor(backend="sync") if wait == "Executor.shutdown" else None
    if executor is None:
        fn: Callable[[int], Any] = mp.parallel(backend="sync")(sleeps_then_doubles)
    else:
        fn = functools.partial(executor.submit, sleeps_then_doubles)
    try:
        with a_task_on_a_loop_of_its_thread(fn) as (made, close):
            handle: mp.AsyncHandle[int] = made if executor is None else made.handle
            began: list[bool] = []

            def close_once_the_wait_began() -> None:
                try:
                    began.append(wait_until(lambda: bool(handle._backend._idle_waiters), 30))
                finally:
                    close.set()

            def waits() -> None:
                outcome.append(WAITS_FOR_EVERY_TASK[wait](executor))

            outcome: list[bool] = []
            closing = threading.Thread(target=close_once_the_wait_began)
            closing.start()
            if on == "main thread":
                waits()
            else:
                waiting = threading.Thread(target=waits)
                waiting.start()
                waiting.join(30)
            closing.join(30)
    finally:
        if executor is not None:
            executor.shutdown(wait=False)
    assert began == [True], "the wait never began"
    assert outcome == [True]
    assert isinstance(handle.exception(), mp.ShutdownError)
    gc.collect()  # asyncio's report of the task the loop was closed with, in this test's time


#: Each wait for every task that has no end (the executor's, given it).
WAITS_FOR_EVERY_TASK_FOR_GOOD: dict[str, Callable[[Any], object]] = {
    "wait_until_idle": lambda _: wait_until_idle(timeout=None),
    "shutdown": lambda _: mp.shutdown(timeout_secs=None),
    "Executor.shutdown": lambda executor: executor.shutdown(wait=True),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop_is", ["running", "stopped"])
@pytest.mark.parametrize("wait", WAITS_FOR_EVERY_TASK_FOR_GOOD)
def test_a_wait_for_every_task_for_good_on_the_thread_whose_loop_runs_a_coroutine_is_refused(wait: str, loop_is: str) -> None:
    # Nothing runs that loop while its thread waits (in a coroutine it runs, or once it
    # stopped): the wait lasted for good, where the handle's own wait refuses. Nothing is
    # shut down then, and running the loop until the task ends, as the error says, ends it.
    executor = mp.Executor(backend="sync") if wait == "Executor.shutdown" else None
    if executor is None:
        fn: Callable[[int], Any] = mp.parallel(backend="sync")(sleeps_then_doubles)
    else:
        fn = functools.partial(executor.submit, sleeps_then_doubles)
    errors: list[BaseException | None] = []
    results: list[int] = []
    loop = asyncio.new_event_loop()

    def refused() -> None:
        try:
            WAITS_FOR_EVERY_TASK_FOR_GOOD[wait](executor)
        except RuntimeError as error:
            errors.append(error)
        else:
            errors.append(None)

    def runs_the_loop() -> None:
        async def main() -> Any:
            made = fn(21)
            if loop_is == "running":
                refused()
            return made

        made = loop.run_until_complete(main())
        if loop_is == "stopped":
            refused()
        results.append(loop.run_until_complete(made if executor is None else made.handle))

    thread = threading.Thread(target=runs_the_loop, daemon=True)  # (a wait for good holds it)
    thread.start()
    thread.join(30)
    try:
        assert not thread.is_alive(), "the wait waited for good"
        assert len(errors) == 1 and errors[0] is not None, errors
        assert "Run the loop until the task ends first: `loop.run_until_complete(" in str(errors[0])
        assert results == [42]
        assert WAITS_FOR_EVERY_TASK[wait](executor) is True  # not shut down before: it waits now
    finally:
        if executor is not None:
            executor.shutdown(wait=False)
        if not thread.is_alive():
            loop.close()


# Thread idents are reused: Linux gives a new thread the stack, and with it the ident, of one
# that ended. The thread that ran a stopped loop was known by its ident, and a thread that
# never ran that loop but got the ident after it ended had its waits refused, as if it alone
# could run the loop. It waits as any other thread does, until the loop is run elsewhere.


def a_thread_with_the_ident_of(ident: int, target: Callable[[], object]) -> threading.Thread:
    """A started thread, given ``ident`` (an ended thread's), that runs ``target``.

    Threads are started 16 at a time, to take every stack the C library keeps
    for reuse, until one gets that ident; the others end at once.
    """
    for _ in range(100):
        go = threading.Event()

        def runs(go: threading.Event = go) -> None:
            assert go.wait(30)
            if threading.get_ident() == ident:
                target()

        batch = [threading.Thread(target=runs) for _ in range(16)]
        for thread in batch:
            thread.start()
        go.set()
        found = [thread for thread in batch if thread.ident == ident]
        for thread in batch:
            if thread not in found:
                thread.join(30)
        if found:
            return found[0]
    raise AssertionError("no new thread was given the ident of the thread that ended")


def a_task_on_the_stopped_loop_of_an_ended_thread(fn: Callable[[int], Any]) -> tuple[Any, asyncio.AbstractEventLoop, int]:
    """What ``fn`` gave on a loop of a thread that then ended (:func:`called_from_a_coroutine_on`), that loop, stopped,
    and that thread's ident."""
    made: list[tuple[Any, asyncio.AbstractEventLoop, int]] = []

    def runs_a_loop() -> None:
        loop = asyncio.new_event_loop()
        made.append((called_from_a_coroutine_on(loop, fn), loop, threading.get_ident()))

    thread = threading.Thread(target=runs_a_loop)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    (task_loop_ident,) = made
    return task_loop_ident


#: Each wait for a task without an end, as what it gave once the task ended: every way of waiting
#: that asks whether the waiting thread ran the task's stopped loop (given the executor the task is
#: of, for its own shutdown).
WAITS_WITHOUT_AN_END: dict[str, Callable[[mp.AsyncHandle[int], Any], object]] = {
    "get": lambda handle, _: handle.get(),
    "wait": lambda handle, _: handle.wait(),
    "mp.gather": lambda handle, _: mp.gather([handle]),
    "mp.as_completed": lambda handle, _: [done.get() for done in mp.as_completed([handle])],
    "await": lambda handle, _: run(awaited(handle)),
    "wait_until_idle": lambda _, __: wait_until_idle(timeout=None),
    "shutdown": lambda _, __: mp.shutdown(timeout_secs=None),
    "Executor.shutdown": lambda _, executor: executor.shutdown(wait=True),
}

#: What each of them gives where it is not refused.
WAITED_OUTCOMES = {"get": 42, "wait": True, "mp.gather": [42], "mp.as_completed": [42], "await": 42, "wait_until_idle": True, "shutdown": True, "Executor.shutdown": None}


async def awaited(handle: mp.AsyncHandle[int]) -> int:
    return await handle


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="an ended thread's ident goes to the next one on Linux")
@pytest.mark.parametrize("wait", WAITS_WITHOUT_AN_END)
def test_a_thread_given_the_ident_of_the_one_that_ran_a_stopped_loop_waits_as_any_other(wait: str) -> None:
    executor = mp.Executor(backend="sync") if wait == "Executor.shutdown" else None
    if executor is None:
        fn: Callable[[int], Any] = mp.parallel(backend="sync")(sleeps_then_doubles)
    else:
        fn = functools.partial(executor.submit, sleeps_then_doubles)
    made, loop, ident = a_task_on_the_stopped_loop_of_an_ended_thread(fn)
    handle: mp.AsyncHandle[int] = made if executor is None else made.handle
    try:
        callbacks = len(handle._callbacks or ())
        outcome: list[object] = []
        waiting = a_thread_with_the_ident_of(ident, lambda: outcome.append(outcome_of(lambda: WAITS_WITHOUT_AN_END[wait](handle, executor))))
        began = wait_until(
            lambda: bool(outcome) or bool(handle._waiters) or len(handle._callbacks or ()) > callbacks or bool(handle._backend._idle_waiters), 30
        )
        assert began, "the wait never began"
        assert loop.run_until_complete(handle) == 42  # type: ignore[arg-type]  # the loop runs here: the task ends
        waiting.join(30)
        assert not waiting.is_alive()
        assert outcome == [WAITED_OUTCOMES[wait]]
    finally:
        if executor is not None:
            executor.shutdown(wait=False)
        loop.close()


_EXIT_WITH_A_TASK_ON_A_CLOSED_LOOP = """import asyncio
import makeparallel as mp

@mp.parallel(backend="sync")
async def sleeps():
    await asyncio.sleep(30)

async def main():
    return sleeps()

loop = asyncio.new_event_loop()
handle = loop.run_until_complete(main())
loop.close()
mp.configure(exit_timeout=20)
print("closed")
"""

#: The same, with the handle dropped and collected: the task itself was forgotten, still counted.
_EXIT_WITH_A_DROPPED_TASK_ON_A_CLOSED_LOOP = _EXIT_WITH_A_TASK_ON_A_CLOSED_LOOP.replace(
    'print("closed")', 'del handle\nimport gc\ngc.collect()\nprint("closed")'
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", [_EXIT_WITH_A_TASK_ON_A_CLOSED_LOOP, _EXIT_WITH_A_DROPPED_TASK_ON_A_CLOSED_LOOP], ids=["kept", "dropped"])
def test_exit_does_not_wait_for_a_task_whose_coroutines_loop_closed(script: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", script]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=50, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["closed"]
    assert "still unfinished at interpreter exit" not in completed.stderr, completed.stderr


# An `async for` over an imap, left reading on a loop then closed, in a task held in a global:
# the task's coroutine is closed as the interpreter clears the modules, after the exit hook.
# From Python 3.13 that close reaches the map's generators, whose stop of the chunks in flight
# imported as it went: "Exception ignored ... ImportError: sys.meta_path is None".
_EXIT_WITH_AN_ASYNC_FOR_LEFT_ON_A_CLOSED_LOOP = """import asyncio, sys, threading
import makeparallel as mp

def held_back(i):
    if i:
        threading.Event().wait(0.2)
    return i

async def read_on(results, first):
    async for _ in results:
        if not first.done():
            first.set_result(None)

async def start():
    first = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(read_on(mp.imap(held_back, range(20), backend=sys.argv[1]), first))
    await first
    return task

loop = asyncio.new_event_loop()
reading = loop.run_until_complete(start())
loop.close()
print("closed")
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_an_async_for_left_on_a_closed_loop_exits_without_an_error(backend: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", _EXIT_WITH_AN_ASYNC_FOR_LEFT_ON_A_CLOSED_LOOP, backend]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=50, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["closed"]
    assert "Exception ignored" not in completed.stderr and "ImportError" not in completed.stderr, completed.stderr


# What that close finds on every Python, made here: no module left to import (sys.modules
# cleared, sys.meta_path None), as the map's async generator is closed. Stopping the chunks in
# flight imported a module of the library's, and failed.
_CLOSE_AN_ASYNC_IMAP_WITH_NOTHING_TO_IMPORT = """import asyncio, sys, threading
import makeparallel as mp

gate = threading.Event()

def held_back(i):
    if i:
        gate.wait(30)
    return i

async def read_one(results):
    async for _ in results:
        return

results = aiter(mp.imap(held_back, range(20), chunksize=1))
loop = asyncio.new_event_loop()
loop.run_until_complete(read_one(results))
loop.close()
modules, finders = dict(sys.modules), sys.meta_path
sys.modules.clear()
sys.meta_path = None
try:
    closing = results.aclose()
    try:
        closing.send(None)
    except StopIteration:
        pass
finally:
    sys.meta_path = finders
    sys.modules.update(modules)
    gate.set()
print("closed")
"""


@pytest.mark.timeout(60)
def test_an_async_imaps_close_imports_nothing() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", _CLOSE_AN_ASYNC_IMAP_WITH_NOTHING_TO_IMPORT]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=50, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["closed"]
    assert completed.stderr == "", completed.stderr


_EXIT_AS_A_TASKS_LOOP_CLOSES = """import asyncio, threading
import makeparallel as mp

@mp.parallel(backend="sync")
async def sleeps():
    await asyncio.sleep(30)

async def main():
    return sleeps()

def runs_a_loop():
    loop = asyncio.new_event_loop()
    handle = loop.run_until_complete(main())
    made.set()
    while not handle._backend._idle_waiters:  # until exit waits for the task
        threading.Event().wait(0.005)
    loop.close()

made = threading.Event()
threading.Thread(target=runs_a_loop, daemon=True).start()
assert made.wait(30)
mp.configure(exit_timeout=20)
print("made")
"""


@pytest.mark.timeout(60)
def test_exit_ends_a_task_whose_coroutines_loop_closes_as_it_waits() -> None:
    # Exit ended those whose loop had closed before it waited: one that closed as it waited
    # (on a daemon thread) held it up for its exit_timeout, then it warned of the task.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", _EXIT_AS_A_TASKS_LOOP_CLOSES]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=50, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["made"]
    assert "still unfinished at interpreter exit" not in completed.stderr, completed.stderr


_EXIT_WITH_WORKER_LOOPS = """import asyncio, sys
import makeparallel as mp

@mp.parallel
async def on_a_worker(n):
    await asyncio.sleep(0)
    return n

@mp.parallel(backend="sync")
async def on_this_thread(n):
    await asyncio.sleep(0)
    return n

async def main():
    return await on_a_worker(1)

print(on_a_worker(2).get(30), on_this_thread(3).get(30), asyncio.run(main()))
with mp.Executor(max_workers=1) as executor:
    print(executor.submit(on_a_worker.__wrapped__, 4).result(30))
if sys.argv[1] == "shutdown":
    mp.shutdown()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["shutdown", "exit"])
def test_the_worker_loops_are_closed_by_the_programs_end(ending: str) -> None:
    # A worker thread is a daemon: at exit it may still hold its loop, which the
    # interpreter then finalized unclosed, with a ResourceWarning for the loop and
    # each of its sockets (python -X dev).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-X", "dev", "-c", _EXIT_WITH_WORKER_LOOPS, ending]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=50, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["2", "3", "1", "4"]
    assert "ResourceWarning" not in completed.stderr, completed.stderr


#: Submissions under a limit while another thread imports asyncio for the first time: the
#: import is held at its first submodule, the module in sys.modules without its functions yet.
_SUBMIT_AS_ASYNCIO_IS_IMPORTED = """import importlib.abc, sys, threading
import makeparallel as mp
parallel, Executor, set_max_concurrent_tasks = mp.parallel, mp.Executor, mp.set_max_concurrent_tasks
assert "asyncio" not in sys.modules
importing, go = threading.Event(), threading.Event()

class HoldAsyncio(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "asyncio.base_events" and threading.current_thread() is importer:
            importing.set()
            go.wait(40)
        return None

importer = threading.Thread(target=__import__, args=("asyncio",))
sys.meta_path.insert(0, HoldAsyncio())
importer.start()
assert importing.wait(40)
set_max_concurrent_tasks(4)
try:
    print(parallel(abs)(-1).get(timeout=40))
    with Executor(max_workers=1) as executor:
        print(executor.submit(abs, -2).result(timeout=40))
finally:
    go.set()
    importer.join(40)
"""


@pytest.mark.timeout(60)
def test_a_submission_as_another_thread_first_imports_asyncio_is_taken() -> None:
    # Whether a loop runs on this thread was read from sys.modules' asyncio, which another
    # thread importing it holds there half made: AttributeError (_get_running_loop) failed the
    # submission, or the task where an async function's coroutine started (an Executor.map of
    # one, chunked, in a new program). No loop runs on any thread before that import ends.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(mp.__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", _SUBMIT_AS_ASYNCIO_IS_IMPORTED]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=50, env=env, check=False)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["1", "2"]

@pytest.mark.timeout(30)
def test_a_worker_loop_finalized_as_the_exit_hook_closes_it_is_closed_once() -> None:
    """A thread's end finalizes its loop's keeper while the exit hook closes that loop.

    CPython runs ``__del__`` before it clears an object's weak references, so the
    exit hook (``close_idle_loops``) could find the keeper of a loop through its
    weak reference while the loop's thread, ending, finalized it: both closed
    the loop at once, and the second raised out of the exit hook ("'NoneType'
    object has no attribute 'fileno'"; 7 exits in 60 on Python 3.10 under load).
    Here the hook's close is held while the keeper is finalized.
    """
    from makeparallel import _coroutines

    keeper = _coroutines._OwnLoop(asyncio.new_event_loop())
    reference = weakref.ref(keeper, _coroutines._every_own_loop.discard)
    _coroutines._every_own_loop.add(reference)
    loop = keeper.loop
    closing, go_on = threading.Event(), threading.Event()
    closes: list[str] = []
    close = loop.close

    def held_close() -> None:
        closes.append(threading.current_thread().name)
        if len(closes) == 1:
            closing.set()
            assert go_on.wait(10), "the test never let the first close go on"
        close()

    loop.close = held_close  # type: ignore[method-assign]
    hook = threading.Thread(target=_coroutines.close_idle_loops, name="test-exit-hook")
    hook.start()
    try:
        assert closing.wait(10), "the exit hook never closed the idle loop"
        keeper.__del__()  # as its thread's end would, meanwhile
    finally:
        go_on.set()
        hook.join(10)
        _coroutines._every_own_loop.discard(reference)
    assert closes == ["test-exit-hook"], closes
    assert loop.is_closed()


BLOCKING_COLLECTORS: dict[str, Callable[[list[mp.AsyncHandle[Any]]], object]] = {
    "gather": lambda handles: mp.gather(handles, timeout=30),
    "wait": lambda handles: mp.wait(handles, timeout=30),
    "as_completed": lambda handles: list(mp.as_completed(handles, timeout=30)),
}


@pytest.mark.parametrize("backend", ["sync", "thread"])
@pytest.mark.parametrize("collect", BLOCKING_COLLECTORS)
def test_blocking_collectors_inside_a_coroutine_on_async_tasks_say_to_await(
    collect: str, backend: str, gate: threading.Event
) -> None:
    # On the "sync" backend the task runs on this very loop: the blocking wait
    # could only end at its timeout. Like get(), the collectors refuse at once.
    @mp.parallel(backend=backend)
    async def gated() -> int:
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return 1

    async def main() -> list[int]:
        handles = [gated(), gated()]
        with pytest.raises(RuntimeError, match=r"await handle"):
            BLOCKING_COLLECTORS[collect](handles)
        gate.set()
        return await mp.gather_async(handles, timeout=30)

    assert run(main()) == [1, 1]


def test_a_plain_function_returning_a_coroutine_is_learned_as_async() -> None:
    fn = mp.parallel(backend="sync")(lambda: _double(5))

    async def main() -> int:
        handle = fn()  # discovered now, started on this loop
        with pytest.raises(RuntimeError, match=r"await handle"):
            handle.get()
        return await handle  # type: ignore[no-any-return]

    assert run(main()) == 10


@pytest.mark.timeout(30)
def test_cancelling_an_async_task_cancels_its_coroutine() -> None:
    started = threading.Event()
    cancelled = threading.Event()

    @mp.parallel
    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    handle = forever()
    assert started.wait(10)
    assert handle.cancel()
    assert cancelled.wait(10), "the coroutine was not cancelled"


@pytest.mark.timeout(30)
def test_a_timeout_cancels_the_coroutine() -> None:
    cancelled = threading.Event()

    @mp.parallel(timeout=0.05)
    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(mp.TaskTimeoutError):
        forever().get(20)
    assert cancelled.wait(10)


@pytest.mark.timeout(60)
def test_cancelling_an_async_process_task_cancels_its_coroutine(tmp_path: Any) -> None:
    flags = Flags(str(tmp_path))
    mp.configure_process_pool(num_workers=1)
    handle = mp.parallel(backend="process")(wait_for_cancel_in_a_coroutine)(flags)
    assert flags.wait("started", 30)
    handle.cancel()
    assert flags.wait("cancelled", 30), "the worker's coroutine was not cancelled"
    flags.set("teardown")


async def wait_for_cancel_in_a_coroutine(flags: Flags) -> None:
    flags.set("started")
    try:
        while not flags.is_set("teardown"):
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        flags.set("cancelled")
        raise


class CancelledWhileUnpickled:
    """An argument whose unpickling in the worker waits until the task it belongs to is cancelled.

    As a slow import of the task's module does (numpy, a model): the cancel
    reaches the worker after the task started, before its coroutine exists.
    """

    def __init__(self, flags: Flags) -> None:
        self.flags = flags

    def __reduce__(self) -> tuple[Any, ...]:
        return _wait_until_cancelled_here, (self.flags,)


def _wait_until_cancelled_here(flags: Flags) -> Flags:
    flags.set("unpickling")

    def stopped() -> bool:
        try:
            mp.check_cancelled()
        except mp.TaskCancelledError:
            return True
        return False

    if wait_until(stopped, 30):
        flags.set("cancel arrived")
    return flags


async def wait_for_cancel_after_unpickling(flags: Flags, _: Flags) -> None:
    await wait_for_cancel_in_a_coroutine(flags)


def returns_a_coroutine_once_released(
    flags: Flags, gate: threading.Event, entered: threading.Event, made: list[Any]
) -> Any:
    """A plain function that works before it returns its coroutine (a decorator without ``functools.wraps``)."""
    entered.set()
    assert gate.wait(10)
    made.append(wait_for_cancel_in_a_coroutine(flags))
    return made[-1]


@pytest.mark.timeout(90)
def test_an_async_process_task_cancelled_before_its_coroutine_starts_cancels_it(tmp_path: Any) -> None:
    # The cancel reached the worker while it unpickled the call, before the coroutine ran and
    # said how to cancel it: the coroutine then ran to its end, for nobody, its worker held.
    flags = Flags(str(tmp_path))
    mp.configure_process_pool(num_workers=1)
    handle = mp.parallel(backend="process")(wait_for_cancel_after_unpickling)(flags, CancelledWhileUnpickled(flags))
    try:
        assert flags.wait("unpickling", 30)
        assert handle.cancel()
        assert flags.wait("cancel arrived", 30)
        # The worker, the pool's only one, is free for the next task: the coroutine never started.
        assert mp.parallel(backend="process")(abs)(-1).get(timeout=30) == 1
        assert not flags.is_set("started"), "the coroutine of a cancelled task started"
    finally:
        flags.set("teardown")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", ["cancel", "timeout"])
def test_an_async_thread_task_stopped_before_its_coroutine_starts_closes_it(tmp_path: Any, stop: str) -> None:
    # The handle, ended, had dropped the context the coroutine was to run in: the coroutine was
    # never run nor closed, and warned "never awaited" as it was collected (an error under
    # -W error), its attempt failing on an assert (under -O, on None's missing run()).
    flags = Flags(str(tmp_path))
    gate, entered = threading.Event(), threading.Event()
    made: list[Any] = []
    fn = mp.parallel(returns_a_coroutine_once_released, timeout=0.05 if stop == "timeout" else None)
    handle = fn(flags, gate, entered, made)
    try:
        assert entered.wait(10)
        if stop == "timeout":
            with pytest.raises(mp.TaskTimeoutError):
                handle.get(timeout=30)
        else:
            assert handle.cancel()
    finally:
        gate.set()
    assert handle.cancel_with_timeout(30)  # its code returned
    assert len(made) == 1
    assert inspect.getcoroutinestate(made[0]) == inspect.CORO_CLOSED
    assert not flags.is_set("started"), "the coroutine of a stopped task started"


def test_progress_and_check_cancelled_work_inside_an_async_task() -> None:
    @mp.parallel
    async def steps() -> int:
        for n in range(1, 5):
            await asyncio.sleep(0)
            mp.check_cancelled()
            mp.report_progress(n / 4)
        return mp.get_current_task_id()  # type: ignore[return-value]

    handle = steps()
    assert handle.get(10) == handle.get_task_id()
    assert handle.get_progress() == 1.0


def test_parallel_async_is_parallel() -> None:
    assert mp.parallel_async is mp.parallel


# -- "sync" tasks held for their slots on a loop ----------------------------------------------
#
# A "sync" task called over a limit from a coroutine is held for its slot, and runs on its
# submitter's loop once admitted. Admitted as that loop was stopped (run_until_complete
# returned), it was posted to the loop; closed then without running again, the loop dropped it,
# and the task stayed pending for good, its slot taken: every wait for it ran out its timeout, or
# lasted for good, and exit waited out its exit_timeout. Once the loop is closed, it now ends as
# one admitted after the close does, its slot freed.


def _held_behind_another_threads(
    loop: asyncio.AbstractEventLoop, f: Callable[[int], mp.AsyncHandle[int]], ran: list[tuple[int, int]]
) -> tuple[mp.AsyncHandle[int], threading.Thread]:
    """``f(2)``, called in a coroutine ``loop`` runs to its end, held behind ``f(1)`` (:func:`_sync_limited`), which a thread runs."""
    holder = threading.Thread(target=lambda: f(1).get())
    holder.start()
    assert wait_until(lambda: [n for n, _ in ran] == [1])
    handle = called_from_a_coroutine_on(loop, lambda _: f(2))
    assert handle.status == "pending"
    return handle, holder


def _admitted_to(
    loop: asyncio.AbstractEventLoop, f: Callable[[int], mp.AsyncHandle[int]], ran: list[tuple[int, int]], gate: threading.Event
) -> mp.AsyncHandle[int]:
    """:func:`_held_behind_another_threads`, then admitted as ``f(1)`` ends (``gate`` opens): posted to ``loop``, stopped."""
    from makeparallel import _held_on_loop

    handle, holder = _held_behind_another_threads(loop, f, ran)
    gate.set()
    holder.join(30)
    assert wait_until(lambda: _held_on_loop.has_ready(loop), 30), "never admitted"
    return handle


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
@pytest.mark.parametrize("wait", [*BLOCKING_WAITS, "wait_until_idle", "shutdown", "await on another loop"])
def test_a_held_sync_task_admitted_as_its_loop_was_stopped_ends_at_the_loops_close(
    wait: str, limit: str, gate: threading.Event
) -> None:
    ran: list[tuple[int, int]] = []
    f = _sync_limited(limit, gate, ran)
    loop = asyncio.new_event_loop()
    try:
        handle = _admitted_to(loop, f, ran, gate)
    finally:
        loop.close()
    if wait == "wait_until_idle":
        assert wait_until_idle(timeout=20) is True
    elif wait == "shutdown":
        assert mp.shutdown(timeout_secs=20) is True
    elif wait == "await on another loop":
        assert outcome_of(lambda: run(awaited(handle))) is mp.ShutdownError
    else:
        assert outcome_of(lambda: BLOCKING_WAITS[wait](handle)) is mp.ShutdownError
    with pytest.raises(mp.ShutdownError, match="that loop closed first"):
        handle.get(timeout=0)
    assert [n for n, _ in ran] == [1], "the task ran after its loop closed"
    limiter = f._spec.limiter if limit == "max_concurrent" else mp._runtime.global_limiter
    assert limiter is not None and limiter.in_flight == 0, "its slot is still taken"


@pytest.mark.timeout(60)
def test_a_held_sync_task_ended_by_shutdown_before_its_admission_is_let_go(gate: threading.Event) -> None:
    # The backend keeps held tasks by weak reference until admitted; what it kept beside each one
    # named the task itself, so one that ended unadmitted (its limit closed) was kept for good.
    ran: list[tuple[int, int]] = []
    f = _sync_limited("max_concurrent", gate, ran)
    loop = asyncio.new_event_loop()
    try:
        handle, holder = _held_behind_another_threads(loop, f, ran)
        mp.shutdown(timeout_secs=0)
    finally:
        loop.close()
    with pytest.raises(mp.ShutdownError):
        handle.get(timeout=20)
    reference = weakref.ref(handle)
    del handle
    gate.set()
    holder.join(30)
    gc.collect()
    assert reference() is None, "the backend still keeps the task"
    assert f._spec.limiter is not None and f._spec.limiter.in_flight == 0


class _Argument:
    """A call's argument, to see it let go (a plain int is never collected)."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", ["cancelled", "left to its loop's close"])
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks", "Executor"])
@pytest.mark.parametrize("backend", ["sync", "thread"])
def test_a_held_task_is_let_go_once_its_admission_ends(backend: str, limit: str, end: str, gate: threading.Event) -> None:
    # The last step of each deferred admission stayed referenced on the admission thread until the
    # next one came: a task held, then cancelled (or ended by its loop's close, or run) was kept
    # with its arguments after the slot it waited for reached it, and its handle was dropped.
    started = threading.Event()

    def f(x: object) -> object:
        if x == 1:
            started.set()
            assert gate.wait(30)
        return x

    if limit == "max_concurrent":
        call: Callable[..., Any] = mp.parallel(backend=backend, max_concurrent=1)(f)
        limiter = call._spec.limiter  # type: ignore[attr-defined]
        executor = None
    else:
        mp.set_max_concurrent_tasks(1)
        limiter = mp._runtime.global_limiter
        if limit == "Executor":
            executor = mp.Executor(backend=backend)
            call = functools.partial(executor.submit, f)
        else:
            call, executor = mp.parallel(backend=backend)(f), None
    try:
        holder = threading.Thread(target=lambda: call(1).result() if executor else call(1).get())
        holder.start()
        assert started.wait(30)
        argument = _Argument()

        async def main(x: object) -> Any:
            held = call(x)
            assert not held.done()
            if end == "cancelled":
                held.cancel()
            return held

        held = asyncio.run(main(argument))
        references = [weakref.ref(held), weakref.ref(argument)]
        del held, argument
        gate.set()
        holder.join(30)
        assert not holder.is_alive()
        assert wait_until(lambda: limiter.in_flight == 0, 30), "the held task's slot is still taken"
        assert wait_until(lambda: gc.collect() >= 0 and all(ref() is None for ref in references), 30), (
            "the held task, or its argument, is still kept"
        )
    finally:
        gate.set()
        if executor is not None:
            executor.shutdown()


#: Each way a held task ends before its slot comes, on the backends where it ends that way: a held
#: "thread" task runs on its pool, whatever becomes of the loop it was called on.
HELD_TASK_ENDS = [
    ("sync", "cancel"),
    ("sync", "cancel_with_timeout"),
    ("sync", "its loop's close"),
    ("thread", "cancel"),
    ("thread", "cancel_with_timeout"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks", "both", "Executor"])
@pytest.mark.parametrize(("backend", "end"), HELD_TASK_ENDS)
def test_a_held_task_ended_before_its_admission_leaves_the_queue_at_once(
    backend: str, end: str, limit: str, gate: threading.Event
) -> None:
    # A held task that ended unadmitted stayed in its limiter's queue until a slot reached it, to be
    # handed straight back: kept meanwhile (its handle, its loop), and every call behind it waited
    # for the detour. Now it leaves the queue as it ends, while the slot's holder still runs.
    # "both": admitted under its function's limit, it waits for the global one's slot.
    started = threading.Event()

    def f(x: object) -> object:
        if x == 1:
            started.set()
            assert gate.wait(30)
        return x

    own_limiter = None
    if limit == "max_concurrent":
        call: Callable[..., Any] = mp.parallel(backend=backend, max_concurrent=1)(f)
        limiter = call._spec.limiter  # type: ignore[attr-defined]
        executor = None
    elif limit == "both":
        mp.set_max_concurrent_tasks(1)
        call, executor = mp.parallel(backend=backend, max_concurrent=2)(f), None
        limiter, own_limiter = mp._runtime.global_limiter, call._spec.limiter  # type: ignore[attr-defined]
    else:
        mp.set_max_concurrent_tasks(1)
        limiter = mp._runtime.global_limiter
        if limit == "Executor":
            executor = mp.Executor(backend=backend)
            call = functools.partial(executor.submit, f)
        else:
            call, executor = mp.parallel(backend=backend)(f), None
    try:
        holder = threading.Thread(target=lambda: call(1).result() if executor else call(1).get())
        holder.start()
        assert started.wait(30)
        argument = _Argument()

        async def main(x: object) -> Any:
            held = call(x)
            assert not held.done()
            assert len(limiter._waiters) == 1
            task = held.handle if executor else held
            if end == "cancel":
                assert held.cancel()
            elif end == "cancel_with_timeout":
                assert task.cancel_with_timeout(30)
            return held

        held = asyncio.run(main(argument))
        if end == "its loop's close":
            with pytest.raises(mp.ShutdownError, match="that loop closed first"):
                held.result(30) if executor else held.get(30)
        assert held.done()
        assert not limiter._waiters, "the ended task still waits for a slot"
        references = [weakref.ref(held), weakref.ref(argument)]
        del held, argument
        gc.collect()
        assert all(ref() is None for ref in references), "the ended task, or its argument, is still kept"
        assert holder.is_alive() and limiter.in_flight == 1  # the slot's holder still runs
        assert own_limiter is None or own_limiter.in_flight == 1  # the ended task's own slot was freed
        gate.set()
        holder.join(30)
        assert not holder.is_alive()
        assert wait_until(lambda: limiter.in_flight == 0, 30), "a slot is still taken"
    finally:
        gate.set()
        if executor is not None:
            executor.shutdown()


#: Each wait, begun on another thread before the loop's close, as what it gives once the close ended its task.
WAITS_ACROSS_THE_CLOSE: dict[str, Callable[[mp.AsyncHandle[int]], object]] = {
    "get": lambda handle: outcome_of(lambda: handle.get(timeout=20)),
    "mp.gather": lambda handle: outcome_of(lambda: mp.gather([handle], timeout=20)),
    "wait_until_idle": lambda _: wait_until_idle(timeout=20),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("wait", "admitted"),
    [("get", True), ("mp.gather", True), ("wait_until_idle", True), ("get", False), ("mp.gather", False)],
    ids=["get", "mp.gather", "wait_until_idle", "get, waiting for its slot", "mp.gather, waiting for its slot"],
)
def test_a_wait_on_another_thread_for_a_held_sync_task_ends_at_its_loops_close(
    wait: str, admitted: bool, gate: threading.Event
) -> None:
    # It looks at the loop as it waits, as it does for a task whose coroutine that loop runs.
    ran: list[tuple[int, int]] = []
    f = _sync_limited("max_concurrent", gate, ran)
    loop = asyncio.new_event_loop()
    outcome: list[object] = []
    holder = None
    try:
        if admitted:
            handle = _admitted_to(loop, f, ran, gate)
        else:
            handle, holder = _held_behind_another_threads(loop, f, ran)
        callbacks = len(handle._callbacks or ())
        waiting = threading.Thread(target=lambda: outcome.append(WAITS_ACROSS_THE_CLOSE[wait](handle)))
        waiting.start()
        began = wait_until(
            lambda: bool(outcome or handle._waiters or handle._backend._idle_waiters) or len(handle._callbacks or ()) > callbacks, 30
        )
        assert began, "the wait never began"
    finally:
        loop.close()
    waiting.join(30)
    assert not waiting.is_alive(), "the wait went on past the loop's close"
    gate.set()
    if holder is not None:
        holder.join(30)
    assert outcome == [True if wait == "wait_until_idle" else mp.ShutdownError]
    assert "that loop closed first" in str(handle.exception(timeout=0))
    assert [n for n, _ in ran] == [1]
    assert wait_until(lambda: f._spec.limiter is not None and f._spec.limiter.in_flight == 0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("admitted", [True, False], ids=["admitted", "waiting for its slot"])
@pytest.mark.parametrize("wait", ["get", "wait", "mp.gather"])
def test_a_wait_for_a_held_sync_task_on_the_thread_of_its_stopped_loop_is_refused(
    wait: str, admitted: bool, gate: threading.Event
) -> None:
    # Nothing runs the loop while its thread waits: the task never ran, and the wait lasted for good.
    ran: list[tuple[int, int]] = []
    f = _sync_limited("max_concurrent", gate, ran)
    loop = asyncio.new_event_loop()
    try:
        if admitted:
            handle = _admitted_to(loop, f, ran, gate)
        else:
            handle, holder = _held_behind_another_threads(loop, f, ran)
        with pytest.raises(RuntimeError, match=r"which this thread ran and which is not running now.*run_until_complete"):
            {"get": lambda: handle.get(timeout=20), "wait": lambda: handle.wait(20), "mp.gather": lambda: mp.gather([handle], timeout=20)}[wait]()
        gate.set()
        assert loop.run_until_complete(handle) == 2  # type: ignore[arg-type]  # the loop runs it, as the error says
    finally:
        gate.set()
        if not admitted:
            holder.join(30)
        loop.close()
    assert [n for n, _ in ran] == [1, 2]


def a_sync_call_a_thread_holds_the_slot_of(
    gate: threading.Event, on_executor: bool, record: Callable[[int], object]
) -> tuple[Callable[[int], Any], mp.Executor | None, threading.Thread]:
    """A ``"sync"`` call of one slot, and a started thread whose ``call(1)`` holds it until ``gate`` is set.

    The slot is the function's ``max_concurrent``, or, for ``on_executor``, the
    global limit that an ``mp.Executor("sync")``'s ``submit`` (the call) takes.
    ``record(n)`` runs as call ``n`` starts. Returns once call 1 runs: the
    call, the executor (``None`` without one), and the holding thread.
    """
    holding = threading.Event()

    def f(n: int) -> int:
        record(n)
        if n == 1:
            holding.set()
            assert gate.wait(30)
        return n

    executor = mp.Executor(backend="sync") if on_executor else None
    if executor is None:
        call: Callable[[int], Any] = mp.parallel(backend="sync", max_concurrent=1)(f)
    else:
        mp.set_max_concurrent_tasks(1)
        call = functools.partial(executor.submit, f)
    holder = threading.Thread(target=lambda: call(1).result())
    holder.start()
    assert holding.wait(30)
    return call, executor, holder


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "admitted"),
    [("shutdown", True), ("Executor.shutdown", True), ("Executor.shutdown", False)],
    ids=["shutdown", "Executor.shutdown", "Executor.shutdown, waiting for its slot"],
)
def test_shutdown_cancelling_pending_tasks_cancels_a_held_sync_task_not_yet_run(
    how: str, admitted: bool, gate: threading.Event
) -> None:
    # It never started, yet ran later, after the shutdown that was to cancel it.
    from makeparallel import _held_on_loop

    ran: list[int] = []
    call, executor, holder = a_sync_call_a_thread_holds_the_slot_of(gate, how == "Executor.shutdown", ran.append)

    async def main() -> mp.AsyncHandle[int]:
        loop = asyncio.get_running_loop()
        made = call(2)
        handle: mp.AsyncHandle[int] = made if executor is None else made.handle
        if admitted:
            gate.set()
            holder.join(30)
            assert wait_until(lambda: _held_on_loop.has_ready(loop), 30), "never admitted"
        if executor is None:
            mp.shutdown(timeout_secs=0, cancel_pending=True)
        else:
            executor.shutdown(wait=False, cancel_futures=True)
        assert handle.cancelled(), handle.status
        for _ in range(5):  # the loop's turn to run what was admitted: nothing
            await asyncio.sleep(0)
        return handle

    try:
        handle = run(main())
    finally:
        gate.set()
        holder.join(30)
    assert handle.cancelled()
    assert ran == [1], "the cancelled task ran"
    assert wait_until(lambda: mp._runtime.global_limiter.in_flight == 0 if executor else call._spec.limiter.in_flight == 0)  # type: ignore[attr-defined]

#: Each wait for every task on the loop's thread, as whether it saw them all end (the executor's, given it).
WAITS_FOR_EVERY_TASK_BESIDE_HELD: dict[str, Callable[[Any], bool]] = {
    "wait_until_idle": lambda _: wait_until_idle(timeout=None),
    "wait_until_idle with a timeout": lambda _: wait_until_idle(timeout=30),
    "shutdown": lambda _: mp.shutdown(timeout_secs=None),
    "shutdown with a timeout": lambda _: mp.shutdown(timeout_secs=30),
    "Executor.shutdown": lambda executor: executor.shutdown(wait=True) is None,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("wait", "admitted"),
    [
        *((wait, True) for wait in WAITS_FOR_EVERY_TASK_BESIDE_HELD),
        # (shutdown refuses a task still waiting for its slot, with ShutdownError)
        *((wait, False) for wait in WAITS_FOR_EVERY_TASK_BESIDE_HELD if not wait.startswith("shutdown")),
    ],
)
def test_a_wait_for_every_task_on_the_loops_thread_runs_the_sync_tasks_held_there(
    wait: str, admitted: bool, gate: threading.Event, loop_blocks: threading.Event
) -> None:
    # It blocked the loop that was to run them (admitted before it, or as it waits): it
    # lasted for good, or ran out its timeout.
    from makeparallel import _held_on_loop

    ran: list[tuple[int, int]] = []
    call, executor, holder = a_sync_call_a_thread_holds_the_slot_of(
        gate, wait == "Executor.shutdown", lambda n: ran.append((n, threading.get_ident()))
    )
    opener = threading.Thread(target=lambda: loop_blocks.wait(30) and gate.set())

    async def main() -> tuple[bool, mp.AsyncHandle[int], int]:
        loop = asyncio.get_running_loop()
        made = call(2)
        if admitted:
            gate.set()
            holder.join(30)
            assert wait_until(lambda: _held_on_loop.has_ready(loop), 30), "never admitted"
        else:
            opener.start()
        return WAITS_FOR_EVERY_TASK_BESIDE_HELD[wait](executor), made if executor is None else made.handle, threading.get_ident()

    try:
        idle, handle, loop_thread = run(main())
    finally:
        gate.set()
        holder.join(30)
        if opener.is_alive() or opener.ident is not None:
            opener.join(30)
        if executor is not None:
            executor.shutdown(wait=False)
    assert idle is True
    assert handle.result(timeout=0) == 2
    assert sorted(n for n, _ in ran) == [1, 2]
    assert [thread for n, thread in ran if n == 2] == [loop_thread], "it ran off its caller's thread"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wait", WAITS_FOR_EVERY_TASK_FOR_GOOD)
def test_a_wait_for_every_task_for_good_on_the_thread_of_a_held_sync_tasks_stopped_loop_is_refused(
    wait: str, gate: threading.Event
) -> None:
    # Nothing runs that loop while its thread waits, and only that loop's thread runs the task.
    ran: list[int] = []
    call, executor, holder = a_sync_call_a_thread_holds_the_slot_of(gate, wait == "Executor.shutdown", ran.append)
    loop = asyncio.new_event_loop()
    try:
        made = called_from_a_coroutine_on(loop, lambda _: call(2))
        handle: mp.AsyncHandle[int] = made if executor is None else made.handle
        with pytest.raises(RuntimeError, match="Run the loop until the task ends first"):
            WAITS_FOR_EVERY_TASK_FOR_GOOD[wait](executor)
        gate.set()
        holder.join(30)
        assert loop.run_until_complete(handle) == 2  # type: ignore[arg-type]
    finally:
        gate.set()
        holder.join(30)
        if executor is not None:
            executor.shutdown(wait=False)
        loop.close()
    assert ran == [1, 2]

def returns_a_coroutine(n: int) -> Coroutine[Any, Any, int]:
    """A plain function (not ``async def``) whose calls return a coroutine: its task learns it is async only as it runs."""
    return sleeps_then_doubles(n)


#: Each blocking wait on the loop's thread for a task held there, its timeout long.
WAITS_FOR_A_HELD_CORO: dict[str, Callable[[mp.AsyncHandle[int]], object]] = {
    "get": lambda handle: handle.get(),
    "get with a timeout": lambda handle: handle.get(timeout=30),
    "wait": lambda handle: handle.wait(30),
    "mp.gather": lambda handle: mp.gather([handle]),
    "mp.gather with a timeout": lambda handle: mp.gather([handle], timeout=30),
    "wait_until_idle": lambda _: wait_until_idle(timeout=None),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("wait", WAITS_FOR_A_HELD_CORO)
def test_a_blocking_wait_that_runs_a_held_task_which_returns_a_coroutine_is_refused_at_once(
    wait: str, gate: threading.Event, loop_blocks: threading.Event
) -> None:
    # Run in place, its coroutine started on the loop, which the wait blocks: it waited for good, or its timeout.
    started = threading.Event()

    @mp.parallel(backend="sync")
    def holds(n: int) -> int:
        started.set()
        assert gate.wait(30)
        return n

    mp.set_max_concurrent_tasks(1)
    f = mp.parallel(backend="sync")(returns_a_coroutine)
    holder = threading.Thread(target=lambda: holds(1).get())
    holder.start()
    assert started.wait(30)
    opener = threading.Thread(target=lambda: loop_blocks.wait(30) and gate.set())
    opener.start()

    async def main() -> int:
        handle = f(21)  # held: the slot is the holder's
        with pytest.raises(RuntimeError, match="runs a coroutine|returned a coroutine"):
            WAITS_FOR_A_HELD_CORO[wait](handle)
        return await handle  # the loop runs it, as the error says

    try:
        assert run(main()) == 42
    finally:
        gate.set()
        holder.join(30)
        opener.join(30)

@pytest.mark.timeout(60)
@pytest.mark.parametrize("group_timeout", [30, None])
@pytest.mark.parametrize("limit", ["max_concurrent", "set_max_concurrent_tasks"])
def test_a_groups_submit_waiting_for_a_slot_that_a_task_run_in_place_holds_with_a_coroutine_is_refused_at_once(
    limit: str, group_timeout: float | None, loop_blocks: threading.Event
) -> None:
    # The group's task, held for its function's slot, ran in place in the next submit's wait for the
    # group's own slot, and started its coroutine on the loop that wait blocks: the slot it holds
    # could never free, and the submit waited out the group's timeout, or for good without one.
    if limit == "max_concurrent":
        f: Callable[..., Any] = mp.parallel(backend="sync", max_concurrent=1)(returns_a_coroutine)
        limiter = f._spec.limiter  # type: ignore[attr-defined]
    else:
        mp.set_max_concurrent_tasks(1)
        f, limiter = returns_a_coroutine, mp._runtime.global_limiter
    assert limiter.acquire()  # the slot the group's first task waits for, freed once the next submit blocks
    opener = threading.Thread(target=lambda: loop_blocks.wait(30) and limiter.release())
    opener.start()

    async def main() -> int:
        with mp.ParallelContext(max_concurrent=1, backend="sync", timeout=group_timeout) as group:
            first = group.submit(f, 21)  # held for the slot above, its group slot taken
            assert not first.done()
            with pytest.raises(RuntimeError, match="runs a coroutine on this thread's event loop"):
                group.submit(f, 1)
            return await first  # the loop runs its coroutine, as the error says

    try:
        assert run(main()) == 42
        assert limiter.in_flight == 0
    finally:
        loop_blocks.set()  # (failed before the wait: the slot goes back all the same)
        opener.join(30)


#: What a group's first task, run in place on the loop, makes besides its own coroutine: each a task
#: whose coroutine runs on that loop too, carrying the group's mark in its context. (The other group's
#: block is not entered: its end would wait there for a task whose coroutine only the loop can run.)
MADE_INSIDE_A_GROUPS_TASK: dict[str, Callable[[Any, int], Any]] = {
    "a plain call that returns a coroutine": lambda _, n: mp.parallel(backend="sync")(returns_a_coroutine)(n),
    "a call of an async def function": lambda _, n: mp.parallel(backend="sync")(sleeps_then_doubles)(n),
    "a task of another group": lambda _, n: mp.ParallelContext(max_concurrent=1, backend="sync").submit(returns_a_coroutine, n),
}


def _a_group_task_on_the_loop_with_another_one_inside(
    makes: Callable[[Any, int], Any], group_timeout: float | None, loop_blocks: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[BaseException], Any]:
    """A group (``max_concurrent=2``) whose first task, run in place by the third submit's wait, calls ``makes`` and returns a coroutine.

    Its second task, on a thread, holds the other slot until the wait's check
    of the slots' holders lets the wait go on. Gives the refusals of the third
    submit, and the three tasks' results (``None`` for one refused), each
    task made inside awaited too.
    """
    from makeparallel._admission import Limiter

    frees = threading.Event()
    check = Limiter._refuse_to_block_their_loop

    def checks_then_frees(self: Limiter, *args: Any) -> None:
        check(self, *args)
        if made:  # the thread task's slot frees only now: the check after the run in place saw it held
            frees.set()

    monkeypatch.setattr(Limiter, "_refuse_to_block_their_loop", checks_then_frees)
    groups: list[mp.ParallelContext] = []
    made: list[mp.AsyncHandle[int]] = []

    def makes_one_then_returns_a_coroutine(n: int) -> Coroutine[Any, Any, int]:
        made.append(makes(groups[0], n))
        return sleeps_then_doubles(n)

    f = mp.parallel(backend="sync", max_concurrent=1)(makes_one_then_returns_a_coroutine)
    limiter = f._spec.limiter  # type: ignore[attr-defined]
    assert limiter.acquire()  # the slot the group's first task waits for, freed once the third submit blocks
    opener = threading.Thread(target=lambda: loop_blocks.wait(30) and limiter.release())
    opener.start()
    on_a_thread = mp.parallel(backend="thread")(lambda: frees.wait(30) and 7)
    refusals: list[BaseException] = []

    async def main() -> tuple[int, int, int | None]:
        with mp.ParallelContext(max_concurrent=2, backend="sync", timeout=group_timeout) as group:
            groups.append(group)
            first = group.submit(f, 21)  # held for the slot above, its group slot taken
            other = group.submit(on_a_thread)  # the group's other slot, freed from another thread
            assert not first.done()
            try:
                third: int | None = await group.submit(abs, -3)
            except RuntimeError as error:
                refusals.append(error)
                third = None
            frees.set()
            assert [await handle for handle in made] == [42]
            return await first, await other, third

    try:
        results = run(main())
    finally:
        frees.set()
        loop_blocks.set()
        opener.join(30)
    assert limiter.in_flight == 0
    return refusals, results


@pytest.mark.timeout(60)
@pytest.mark.parametrize("group_timeout", [30, None])
@pytest.mark.parametrize("makes", MADE_INSIDE_A_GROUPS_TASK)
def test_a_groups_submit_waits_for_a_slot_held_elsewhere_where_tasks_that_only_carry_its_mark_run_on_the_loop(
    makes: str, group_timeout: float | None, loop_blocks: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task made inside a group's task inherits the group's mark through its context, and holds
    # no slot of the group: counted as a holder, it and the group's own task on the loop made 2
    # holders of 2 slots, and the submit was refused where the thread task's slot was about to free.
    refusals, results = _a_group_task_on_the_loop_with_another_one_inside(
        MADE_INSIDE_A_GROUPS_TASK[makes], group_timeout, loop_blocks, monkeypatch
    )
    assert refusals == []
    assert results == (42, 7, 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("group_timeout", [30, None])
def test_a_groups_submit_is_refused_where_a_task_its_task_submitted_to_it_holds_the_last_slot_on_the_loop(
    group_timeout: float | None, loop_blocks: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A task that the group's task submits to the group is admitted over the limit and counted: it
    # holds a slot, and its coroutine runs on the loop too. With the group's task, the two hold
    # every slot once the thread task ends: no slot can come, and the submit raises at once.
    refusals, results = _a_group_task_on_the_loop_with_another_one_inside(
        lambda group, n: group.submit(returns_a_coroutine, n), group_timeout, loop_blocks, monkeypatch
    )
    assert len(refusals) == 1
    assert "2 such task(s) hold all 2 slot(s)" in str(refusals[0])
    assert results == (42, 7, None)


#: A group's task whose coroutine runs on the loop from its submit: not run in place by a wait.
STARTED_ON_THE_LOOP_AT_SUBMIT: dict[str, Callable[[int], Any]] = {
    "an async def function": sleeps_then_doubles,
    "a plain function that returns a coroutine": returns_a_coroutine,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("group_timeout", [30, None])
@pytest.mark.parametrize("fn", STARTED_ON_THE_LOOP_AT_SUBMIT)
def test_a_groups_submit_waiting_for_a_slot_that_a_coroutine_started_at_its_submit_holds_is_refused_at_once(
    fn: str, group_timeout: float | None
) -> None:
    # The group's task ran as it was submitted and left its coroutine on the loop, holding the
    # group's only slot: the next submit's wait blocked that loop, ran no task in place, and so
    # never looked at the slots' holders: it waited out the group's timeout, or for good.
    async def main() -> int:
        with mp.ParallelContext(max_concurrent=1, backend="sync", timeout=group_timeout) as group:
            first = group.submit(STARTED_ON_THE_LOOP_AT_SUBMIT[fn], 21)
            assert not first.done()
            with pytest.raises(RuntimeError, match="1 such task\\(s\\) hold all 1 slot\\(s\\)"):
                group.submit(abs, -3)
            return await first  # the loop runs its coroutine, as the error says

    assert run(main()) == 42


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fn", STARTED_ON_THE_LOOP_AT_SUBMIT)
def test_a_groups_submit_waits_for_a_slot_held_on_a_thread_beside_a_coroutine_started_at_its_submit(
    fn: str, loop_blocks: threading.Event
) -> None:
    # One slot is held on the loop, the other by a thread task that frees it once the submit
    # blocks: the wait ends with it, and must not be refused.
    on_a_thread = mp.parallel(backend="thread")(lambda: loop_blocks.wait(30) and 7)

    async def main() -> tuple[int, int, int]:
        with mp.ParallelContext(max_concurrent=2, backend="sync", timeout=30) as group:
            first = group.submit(STARTED_ON_THE_LOOP_AT_SUBMIT[fn], 21)
            other = group.submit(on_a_thread)
            third = group.submit(abs, -3)
            return await first, await other, await third

    try:
        assert run(main()) == (42, 7, 3)
    finally:
        loop_blocks.set()


# -- async collectors ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_async_as_completed_yields_in_the_order_tasks_end(gate: threading.Event) -> None:
    @mp.parallel
    def held(n: int) -> int:
        if n == 0:
            assert gate.wait(10)
        return n

    async def main() -> list[int]:
        seen = []
        async for handle in mp.as_completed([held(0), held(1)], timeout=20):
            seen.append(handle.result())
            gate.set()
        return seen

    resize(2)
    assert run(main()) == [1, 0]


@pytest.mark.timeout(30)
def test_async_as_completed_times_out(gate: threading.Event) -> None:
    work = mp.parallel(poll_until_stopped)

    async def main() -> mp.AsyncHandle[None]:
        handle = work(gate)
        with pytest.raises(mp.TaskTimeoutError, match="1 of 1 tasks unfinished"):
            async for _ in mp.as_completed([handle], timeout=0.01):
                pass
        return handle

    handle = run(main())
    assert not handle.done()  # a timeout leaves the tasks running
    gate.set()
    handle.get(10)


@pytest.mark.timeout(30)
def test_async_as_completed_takes_a_task_that_ended_as_its_timeout_fired(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task ended in time; only the loop's wake-up for it came after the timer fired.

    The loop runs a thread's wake-up a turn after the thread sent it, and a
    timer due in between fired first, and ``TaskTimeoutError`` counted the
    task as unfinished. Here the wait ends the task, then fires its timer.
    """
    handle = mp.parallel(gate.wait)(10)

    async def end_then_time_out(waiting: Any, timeout: float) -> None:
        gate.set()
        assert handle.wait(10)  # ended: its wake-up is on its way to the loop
        raise asyncio.TimeoutError

    async def main() -> list[mp.AsyncHandle[bool]]:
        monkeypatch.setattr(asyncio, "wait_for", end_then_time_out)
        return [ended async for ended in mp.as_completed([handle], timeout=20)]

    assert run(main()) == [handle]


@pytest.mark.timeout(30)
def test_cancelling_the_consumer_of_as_completed_cancels_what_is_in_flight(gate: threading.Event) -> None:
    work = mp.parallel(poll_until_stopped)

    async def main() -> list[mp.AsyncHandle[None]]:
        handles = [work(gate) for _ in range(3)]

        async def consume() -> None:
            async for _ in mp.as_completed(handles):
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), 0.01)
        return handles

    assert all(h.cancelled() for h in run(main()))


@pytest.mark.timeout(30)
def test_asyncio_wait_takes_handles(gate: threading.Event) -> None:
    """On Python 3.11+ ``asyncio.wait`` takes each handle for a future: it adds its done-callback, then removes it.

    A handle had no ``remove_done_callback``: every such wait raised
    ``AttributeError`` as it ended. And asyncio's callback ran on the thread that
    ended the task, where it marked the wait's future done without waking the
    loop: the wait slept on, for good without a timeout.
    """
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(20)
        return "held"

    def fail() -> None:
        raise LookupError("failed")

    async def main() -> None:
        ended, failed, running = mp.parallel(abs)(-1), mp.parallel(fail)(), held()
        await on_a_thread(lambda: ended.wait(10) and failed.wait(10) and started.wait(10))
        # (Python 3.10 wraps each handle in an asyncio task, and returns those.)
        done, pending = await asyncio.wait([ended, running], return_when=asyncio.FIRST_COMPLETED)
        assert [f.result() for f in done] == [1] and len(pending) == 1
        done, pending = await asyncio.wait([failed, running], return_when=asyncio.FIRST_EXCEPTION)
        assert [type(f.exception()) for f in done] == [LookupError] and len(pending) == 1
        waiting = asyncio.ensure_future(asyncio.wait([running]))
        await asyncio.sleep(0)  # the wait adds its callback to the running task, and sleeps
        gate.set()  # the task ends on its worker thread, which must wake the loop
        done, pending = await waiting
        assert [f.result() for f in done] == ["held"] and not pending

    run(main())


@pytest.mark.timeout(30)
def test_asyncio_wait_in_an_async_task_lends_its_workers_place(gate: threading.Event) -> None:
    """Its children, queued behind it on a full pool, run while it waits; the place comes back however the wait ends."""
    resize(1)
    child = mp.parallel(abs)
    held = mp.parallel(poll_until_stopped)

    @mp.parallel
    async def parent() -> list[int]:
        done, _ = await asyncio.wait([child(-1), child(-2)])
        results = sorted(f.result() for f in done)
        first, other = child(-3), held(gate)  # queued in this order behind this task
        done, pending = await asyncio.wait([first, other], return_when=asyncio.FIRST_COMPLETED)
        assert [f.result() for f in done] == [3] and len(pending) == 1  # its callback on `other` removed
        other.cancel()
        return results

    assert parent().get(20) == [1, 2]
    assert mp.get_thread_pool_info()["blocked_threads"] == 0


def first_of(items: list[int]) -> int:
    return next(iter(items))  # StopIteration on an empty list


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_a_task_that_raised_stop_iteration_is_awaited_as_a_runtime_error_naming_it(backend: str) -> None:
    """No await can pass a StopIteration on (PEP 479): it said "generator raised StopIteration", from the library's code."""
    first = mp.parallel(backend=backend)(first_of)

    async def main() -> list[BaseException]:
        errors = []
        for wait in (lambda h: h, lambda h: mp.gather_async([h])):
            with pytest.raises(RuntimeError, match=r"task \d+ \(first_of\) raised StopIteration") as raised:
                await wait(first([]))
            errors.append(raised.value)
        return errors

    for error in run(main()):
        assert isinstance(error.__cause__, StopIteration)
    with pytest.raises(StopIteration):  # get() raises it as itself
        first([]).get(30)


def cancel_itself(_: object = None) -> int:
    raise asyncio.CancelledError("from asyncio code the task called")  # as a helper's own asyncio.run() may


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_a_task_that_raised_cancelled_error_is_awaited_as_a_runtime_error_naming_it(backend: str) -> None:
    """A task's own CancelledError, passed on by an await, looked like the awaiting coroutine's cancellation.

    It is no Exception: `except Exception` let it through, a TaskGroup or asyncio.gather took the awaiting
    task as cancelled, and a coroutine that was never cancelled ended as if it were (as loop.run_in_executor
    and asyncio.to_thread pass it on). As for a StopIteration, the await raises a RuntimeError naming the
    task, caused by the CancelledError with its traceback; get() raises it as itself.
    """
    task = mp.parallel(backend=backend)(cancel_itself)
    waits: dict[str, Callable[[], Awaitable[Any]]] = {
        r"task \d+ \(cancel_itself\) raised asyncio.CancelledError": lambda: task(),
        r"task \d+ \(cancel_itself\) raised asyncio\.CancelledError": lambda: mp.gather_async([task()]),
        r"the map's function raised asyncio\.CancelledError": lambda: _first_async(mp.imap(cancel_itself, [1], backend=backend)),
    }

    async def main() -> list[BaseException]:
        errors = []
        for pattern, wait in waits.items():
            with pytest.raises(RuntimeError, match=pattern) as raised:
                await wait()
            errors.append(raised.value)
        current = asyncio.current_task()
        assert current is not None and not getattr(current, "cancelling", lambda: 0)()
        return errors

    for error in run(main()):
        assert isinstance(error.__cause__, asyncio.CancelledError)
        assert error.__cause__.__traceback__ is not None
    with pytest.raises(asyncio.CancelledError, match="from asyncio code"):  # get() raises it as itself
        task().get(30)


async def _first_async(results: Any) -> Any:
    async for result in results:
        return result
    return None


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.wait adds its callback to the handles from 3.11")
def test_asyncio_wait_refused_for_one_handle_gives_back_the_place_lent_for_the_others(gate: threading.Event) -> None:
    """``asyncio.wait`` adds its callback to one handle after another, and the refusal of one (its coroutine runs on a
    stopped loop of this thread) leaves the others' on: each lent the worker's place, and nothing gave it back once
    the wait's loop closed."""
    on_callers_loop = mp.parallel(backend="sync")(sleeps_then_doubles)
    held = mp.parallel(poll_until_stopped)

    @mp.parallel
    def waits_on_a_loop_of_its_own() -> list[mp.AsyncHandle[None]]:
        loop = asyncio.new_event_loop()
        try:
            refused = called_from_a_coroutine_on(loop, on_callers_loop)
            others = [held(gate)]
            while next(iter(set(waited := [*others, refused]))) is refused:  # asyncio.wait adds in this order
                others.append(held(gate))
            with pytest.raises(RuntimeError, match=r"which is not running now"):
                run(asyncio.wait(waited))
            assert loop.run_until_complete(refused) == 42  # type: ignore[arg-type]
        finally:
            loop.close()
        return others

    others = waits_on_a_loop_of_its_own().get(20)
    assert mp.get_thread_pool_info()["blocked_threads"] == 0
    gate.set()
    assert [handle.get(20) for handle in others] == [None] * len(others)
    assert mp.get_thread_pool_info()["blocked_threads"] == 0


@pytest.mark.timeout(30)
def test_remove_done_callback_removes_it_as_asyncios_does(gate: threading.Event) -> None:
    called: list[object] = []
    handle = mp.parallel(gate.wait)(10)
    handle.add_done_callback(called.append)
    handle.add_done_callback(called.append)
    assert handle.remove_done_callback(called.append) == 2
    assert handle.remove_done_callback(called.append) == 0
    gate.set()
    assert handle.get(10)
    assert handle.remove_done_callback(called.append) == 0
    assert called == []


def test_gather_async_keeps_order_and_the_on_error_modes() -> None:
    @mp.parallel
    def parse(text: str) -> int:
        return int(text)

    async def main() -> None:
        assert await mp.gather_async([parse(t) for t in "123"]) == [1, 2, 3]
        handles = [parse(t) for t in ["1", "x", "3"]]
        assert await mp.gather_async(handles, on_error="none") == [1, None, 3]
        assert await mp.gather_async(handles, on_error="skip") == [1, 3]
        with pytest.raises(ValueError, match="invalid literal"):
            await mp.gather_async(handles)
        with pytest.raises(ValueError, match="on_error"):
            await mp.gather_async(handles, on_error="ignore")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="AsyncHandle"):
            await mp.gather_async([1])  # type: ignore[list-item]

    run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("on_error", ["raise", "none"])
def test_gather_async_wakes_the_loop_once_for_many_tasks(gate: threading.Event, on_error: str) -> None:
    """The tasks are counted down on the threads that end them; the loop hears only of the last.

    Half of them end first, and the loop turns before the rest end: a collector
    woken per task, or per burst, would be woken twice at least.
    """
    first_half = threading.Event()

    @mp.parallel
    def held(n: int) -> int:
        assert (first_half if n < 150 else gate).wait(30)
        return n

    async def main() -> tuple[list[Any], int]:
        loop = asyncio.get_running_loop()
        wakeups = 0
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal wakeups
            wakeups += 1
            return call_soon_threadsafe(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        handles = [held(n) for n in range(300)]  # more than one slice of followed handles
        gathering = asyncio.ensure_future(mp.gather_async(handles, on_error=on_error, timeout=50))  # type: ignore[arg-type]
        for _ in range(3):
            await asyncio.sleep(0)  # it follows every handle, a slice per turn
        first_half.set()
        assert wait_until(lambda: all(h.done() for h in handles[:150]), 30)  # blocks the loop: nothing is drained
        for _ in range(3):
            await asyncio.sleep(0)  # anything scheduled for the first half runs now
        gate.set()
        return await gathering, wakeups

    try:
        results, wakeups = run(main())
    finally:
        first_half.set()
    assert results == list(range(300))
    assert wakeups == 1


@pytest.mark.timeout(30)
def test_cancelling_gather_async_cancels_the_unfinished_tasks(gate: threading.Event) -> None:
    work = mp.parallel(poll_until_stopped)

    async def main() -> list[mp.AsyncHandle[None]]:
        handles = [work(gate) for _ in range(3)]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(mp.gather_async(handles), 0.01)
        return handles

    assert all(h.cancelled() for h in run(main()))


@pytest.mark.timeout(30)
def test_gather_async_cancelled_while_it_follows_gives_its_workers_place_back(gate: threading.Event) -> None:
    """An async task's gather_async, cancelled between two slices of handles it follows, lends nothing after."""
    work = mp.parallel(poll_until_stopped)

    @mp.parallel
    async def collect() -> list[mp.AsyncHandle[None]]:
        handles = [work(gate) for _ in range(300)]  # more than one slice of followed handles
        gathering = asyncio.ensure_future(mp.gather_async(handles, on_error="skip"))
        await asyncio.sleep(0)  # it follows the first slice, and gives the loop a turn
        gathering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gathering
        return handles

    assert all(h.cancelled() for h in collect().get(20))
    assert mp.get_thread_pool_info()["blocked_threads"] == 0


@pytest.mark.timeout(30)
def test_gather_async_timeout_leaves_the_tasks_running(gate: threading.Event) -> None:
    work = mp.parallel(poll_until_stopped)

    async def main() -> mp.AsyncHandle[None]:
        handle = work(gate)
        with pytest.raises(mp.TaskTimeoutError, match="1 of 1"):
            await mp.gather_async([handle], timeout=0.01)
        return handle

    handle = run(main())
    assert not handle.done()
    gate.set()
    handle.get(10)


# Every way an await of the library times out, each waiting on tasks that poll ``gate``.
ASYNC_TIMEOUTS: dict[str, Callable[[threading.Event], Awaitable[object]]] = {
    "gather_async(timeout=)": lambda gate: mp.gather_async([mp.parallel(poll_until_stopped)(gate)], timeout=0.01),
    "gather_async of a task past its own timeout": lambda gate: mp.gather_async(
        [mp.parallel(poll_until_stopped).options(timeout=0.01)(gate)]
    ),
    "await of a task past its own timeout": lambda gate: mp.parallel(poll_until_stopped).options(timeout=0.01)(gate),
    "async for over as_completed(timeout=)": lambda gate: _read_async(
        mp.as_completed([mp.parallel(poll_until_stopped)(gate)], timeout=0.01)
    ),
    "async for over imap(timeout=), in order": lambda gate: _read_async(
        mp.imap(poll_until_stopped, [gate], timeout=0.01)
    ),
    "async for over imap(timeout=), as they end": lambda gate: _read_async(
        mp.imap(poll_until_stopped, [gate], timeout=0.01, ordered=False)
    ),
}


async def _read_async(iterable: Any) -> None:
    async for _ in iterable:
        pass


async def _async_timeout_of(wait: Callable[[threading.Event], Awaitable[object]], gate: threading.Event) -> Exception:
    try:
        await wait(gate)
    except asyncio.TimeoutError as error:
        return error
    raise AssertionError("the await did not time out")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wait", ASYNC_TIMEOUTS.values(), ids=ASYNC_TIMEOUTS)
def test_except_asyncio_timeout_error_catches_the_timeouts_of_the_librarys_awaits(
    wait: Callable[[threading.Event], Awaitable[object]], gate: threading.Event
) -> None:
    """On Python 3.10 ``asyncio.TimeoutError`` is no ``TimeoutError``: the library's awaits raised one it missed.

    From 3.11 they are one class. Each error stays a ``TaskTimeoutError``, a
    ``TimeoutError`` and a ``concurrent.futures.TimeoutError``, and pickles as itself.
    """
    error = run(_async_timeout_of(wait, gate))
    gate.set()
    assert isinstance(error, mp.TaskTimeoutError)
    assert isinstance(error, TimeoutError) and isinstance(error, cf.TimeoutError)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.args == error.args


class _OwnTimeout(mp.TaskTimeoutError):
    """A user's subclass: awaited, it keeps its class."""


def test_an_await_leaves_a_users_subclass_of_task_timeout_error_as_it_is() -> None:
    async def main() -> None:
        with pytest.raises(_OwnTimeout):
            await mp.parallel(raise_it)(_OwnTimeout("the user's own"))

    run(main())


@pytest.mark.timeout(60)
def test_an_async_timeout_crosses_to_a_worker_process_and_back_as_itself(gate: threading.Event) -> None:
    async def main() -> None:
        error = await _async_timeout_of(ASYNC_TIMEOUTS["gather_async(timeout=)"], gate)
        gate.set()
        with pytest.raises(asyncio.TimeoutError) as raised:
            await mp.parallel(raise_it).options(backend="process")(error)
        assert type(raised.value) is type(error) and raised.value.args == error.args

    run(main())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ordered", [True, False], ids=["in order", "as they end"])
@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
def test_an_items_own_task_timeout_error_through_an_async_imap_is_an_asyncio_timeout_error(
    backend: str, ordered: bool
) -> None:
    """As an await of the item's task would raise it: on 3.10 ``except asyncio.TimeoutError`` missed it."""
    own = mp.TaskTimeoutError("the item's own wait timed out")

    async def read() -> BaseException:
        try:
            async for _ in mp.imap(raise_it, [own], backend=backend, ordered=ordered):
                pass
        except asyncio.TimeoutError as error:
            return error
        raise AssertionError("the map raised nothing")

    error = run(read())
    assert isinstance(error, mp.TaskTimeoutError) and error.args == own.args


@pytest.mark.timeout(30)
def test_check_cancelled_in_an_async_task_past_its_timeout_raises_an_asyncio_timeout_error(
    gate: threading.Event,
) -> None:
    """On Python 3.10 ``except asyncio.TimeoutError`` in the task missed its own timeout, which it catches from 3.11."""
    seen: list[BaseException | None] = []
    looked = threading.Event()

    @mp.parallel(timeout=0.05)
    async def crawl() -> None:
        gate.wait(20)  # opened once the task timed out
        try:
            mp.check_cancelled()
        except asyncio.TimeoutError as error:
            seen.append(error)
        except BaseException as missed:
            seen.append(missed)
            raise
        finally:
            looked.set()

    handle = crawl()
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(20)
    gate.set()
    assert looked.wait(20)
    assert isinstance(seen[0], asyncio.TimeoutError) and isinstance(seen[0], mp.TaskTimeoutError)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("backend", "past_it"),
    [("sync", "in its chunk"), ("sync", "in the loop's body"), ("thread", "in the loop's body")],
    ids=["its last chunk, run inline", "the loop's body, on sync", "the loop's body, on threads"],
)
def test_an_async_imap_past_its_deadline_outside_its_waits_raises_an_asyncio_timeout_error(
    backend: str, past_it: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map looks at its deadline as it submits a chunk too: there, on 3.10, its error was a plain ``TaskTimeoutError``.

    So it was where a chunk of the ``"sync"`` backend ran past the deadline, or
    the ``async for`` loop's body did, before the next chunk was submitted.
    """
    now = [0.0]  # the map's clock: it moves only as told
    monkeypatch.setattr(_map, "time", types.SimpleNamespace(perf_counter=_map.time.perf_counter, monotonic=lambda: now[0]))

    def works_past_the_deadline(x: int) -> int:
        now[0] += 60
        return x

    async def read() -> Exception:
        try:
            if past_it == "in its chunk":
                async for _ in mp.imap(works_past_the_deadline, [1], backend=backend, timeout=20):
                    pass
            else:
                async for _ in mp.imap(abs, itertools.count(), chunksize=1, backend=backend, timeout=20):
                    now[0] += 60  # then the map submits its next chunk
        except asyncio.TimeoutError as error:
            return error
        raise AssertionError("the map did not time out")

    error = run(read())
    assert isinstance(error, mp.TaskTimeoutError) and str(error).startswith("the map timed out after 20 s")


@pytest.mark.timeout(30)
def test_gather_async_with_no_time_left_returns_what_ended_already() -> None:
    """As ``gather`` does: a timeout of 0 on tasks that all ended is no timeout."""

    @mp.parallel
    def parse(text: str) -> int:
        return int(text)

    ended = [parse(t) for t in "12x"]
    assert mp.gather(ended, on_error="none", timeout=10) == [1, 2, None]

    async def main() -> None:
        assert await mp.gather_async(ended, on_error="none", timeout=0) == [1, 2, None]
        assert await mp.gather_async(ended, on_error="skip", timeout=0) == [1, 2]
        with pytest.raises(ValueError, match="invalid literal"):
            await mp.gather_async(ended, timeout=0)

    run(main())


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_async_imap_equals_map(ordered: bool, backend: str) -> None:
    async def main() -> list[Any]:
        return [r async for r in mp.imap(abs, range(-300, 300), ordered=ordered, backend=backend)]

    got = run(main())
    expected = [abs(x) for x in range(-300, 300)]
    assert (got if ordered else sorted(got)) == (expected if ordered else sorted(expected))


def _fail_on_seven(x: int) -> int:
    if x == 7:
        raise ArithmeticError(f"item {x}")
    return x


def test_async_imap_raises_the_failing_items_error_and_skips_on_request() -> None:
    async def main() -> list[Any]:
        with pytest.raises(ArithmeticError, match="item 7"):
            async for _ in mp.imap(_fail_on_seven, range(20)):
                pass
        return [r async for r in mp.imap(_fail_on_seven, range(10), on_error="skip")]

    assert run(main()) == [0, 1, 2, 3, 4, 5, 6, 8, 9]


@pytest.mark.timeout(30)
def test_cancelling_the_consumer_of_async_imap_cancels_the_chunks(gate: threading.Event) -> None:
    events: list[mp.TaskEvent] = []

    def slow(x: int) -> int:
        poll_until_stopped(gate)
        return x

    async def main() -> None:
        async def consume() -> None:
            async for _ in mp.imap(slow, range(4), chunksize=1):
                pass

        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(consume(), 0.05)

    mp.add_task_listener(events.append)
    try:
        run(main())
    finally:
        mp.remove_task_listener(events.append)
    submitted = {e.task_id for e in events if e.kind == "submitted"}
    cancelled = {e.task_id for e in events if e.kind == "finished" and e.status == "cancelled"}
    assert submitted and submitted == cancelled


def test_an_imap_iterates_one_way_only() -> None:
    iterator = mp.imap(abs, [1, 2])
    assert next(iterator) == 1

    async def main() -> None:
        with pytest.raises(RuntimeError, match="iterated already"):
            async for _ in iterator:
                pass

    run(main())
    iterator.close()


# -- imap and as_completed are async iterators themselves ---------------------------------------


def _async_iterable_results(kind: str, backend: str) -> tuple[Any, list[int]]:
    """What ``kind`` returns over -1..-4 on ``backend``, and its values in an order that compares (sorted)."""
    if kind == "as_completed":
        task = mp.parallel(backend=backend)(abs)
        return mp.as_completed([task(-n) for n in range(1, 5)]), [1, 2, 3, 4]
    return mp.imap(abs, [-1, -2, -3, -4], ordered=kind == "imap", chunksize=1, backend=backend), [1, 2, 3, 4]


def _value(kind: str, got: Any) -> int:
    return got.get() if kind == "as_completed" else got  # type: ignore[no-any-return]


ASYNC_ITERABLE_RESULTS = ["imap", "imap unordered", "as_completed"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("kind", ASYNC_ITERABLE_RESULTS)
def test_what_async_for_reads_is_an_async_iterator_itself(kind: str, backend: str) -> None:
    # `async for` worked, through __aiter__, which made a new async generator; but
    # the object itself had no __anext__, so `await anext(mp.imap(...))` raised
    # TypeError ("not an async iterator"), and so did `anext` over as_completed.
    # Each is an async iterator now, as aiter() of it is: anext() reads the next
    # value, and `async for` goes on from there (aiter() gives one iteration, always).
    async def main() -> None:
        results, expected = _async_iterable_results(kind, backend)
        assert isinstance(results, AsyncIterator)
        assert aiter(results) is aiter(results)
        first = _value(kind, await anext(results))
        rest = [_value(kind, got) async for got in results]
        assert sorted([first, *rest]) == expected
        assert (first, rest) == (1, [2, 3, 4]) or kind != "imap"
        with pytest.raises(StopAsyncIteration):
            await anext(results)
        assert await anext(results, "ended") == "ended"

    run(main())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ASYNC_ITERABLE_RESULTS)
def test_an_async_iterated_result_still_iterates_with_for(kind: str) -> None:
    # Being an async iterator takes nothing from the synchronous one.
    results, expected = _async_iterable_results(kind, "thread")
    assert isinstance(results, Iterator) and iter(results) is results
    assert sorted(_value(kind, got) for got in results) == expected


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["imap", "as_completed"])
def test_aclose_after_anext_stops_what_is_left(kind: str, gate: threading.Event) -> None:
    # An async generator has aclose(), and aiter() of these gave one: they keep it.
    # Closed after its first value, an imap cancels its chunks in flight; as_completed
    # stops following its handles (they go on, as after leaving its loop).
    resize(2)
    started = threading.Event()

    def held(x: int) -> int:
        if x:
            started.set()
            poll_until_stopped(gate)
        return x

    async def main() -> None:
        if kind == "imap":
            results: Any = mp.imap(held, [0, 1], chunksize=1, backend="thread")
        else:
            task = mp.parallel(backend="thread")(held)
            handles = [task(0), task(1)]
            results = mp.as_completed(handles)
        first = await anext(results)
        assert _value(kind, first) == 0
        await on_a_thread(lambda: started.wait(20))
        await results.aclose()
        assert await anext(results, "ended") == "ended"

    run(main())
    if kind == "as_completed":
        gate.set()
    assert wait_until_idle(20)


@pytest.mark.timeout(30)
def test_as_completed_aclose_while_another_coroutine_awaits_anext_ends_that_anext(gate: threading.Event) -> None:
    # `await ac.aclose()` while another coroutine awaited `anext(ac)` raised "aclose():
    # asynchronous generator is already running", and the anext went on waiting. As an
    # imap's aclose() does then, it stops the iteration: the waiting anext raises
    # StopAsyncIteration, and so does every anext after; the tasks go on (as after
    # leaving the loop).
    task = mp.parallel(backend="thread")(poll_until_stopped)

    async def main() -> None:
        handle = task(gate)
        results = mp.as_completed([handle])
        waiting = asyncio.ensure_future(anext(results))
        while not aiter(results).ag_running:  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        await results.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 20)
        assert await anext(results, "ended") == "ended"
        assert not handle.done()
        gate.set()
        assert await handle is None

    run(main())
    assert wait_until_idle(20)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["imap", "as_completed"])
def test_anext_right_after_aclose_that_ended_another_coroutines_anext_stops(kind: str, gate: threading.Event) -> None:
    # aclose() as another coroutine awaits anext() returns before that coroutine
    # resumes: its generator still ran then, and an anext() or `async for` right
    # after the aclose raised "anext(): asynchronous generator is already running"
    # where each must stop at once, as after any aclose().
    if kind == "imap":
        results: Any = mp.imap(poll_until_stopped, [gate], backend="thread")
    else:
        results = mp.as_completed([mp.parallel(backend="thread")(poll_until_stopped)(gate)])

    async def main() -> None:
        waiting = asyncio.ensure_future(anext(results))
        while not aiter(results).ag_running:  # type: ignore[attr-defined]
            await asyncio.sleep(0)
        await results.aclose()
        assert await anext(results, "ended") == "ended"
        assert [got async for got in results] == []
        await results.aclose()  # again: nothing left to close
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 20)
        assert await anext(results, "ended") == "ended"

    run(main())
    gate.set()
    assert wait_until_idle(20)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("order", ["anext, next, anext, next", "next, anext, anext, next", "anext, next, next, anext"])
def test_as_completed_read_by_next_and_anext_in_turn_yields_each_handle_once(order: str) -> None:
    # as_completed keeps one reader for `for`/next() and one for `async for`/anext(), each
    # following the handles pending when it began; anext() on the object itself made the
    # two easy to mix. A reader that resumed after the other had yielded one of its
    # handles raised KeyError (naming the handle) instead of going on: each handle is
    # yielded once, by whichever reader asks first.
    task = mp.parallel(backend="thread")(abs)
    handles = [task(-n) for n in range(1, 5)]
    assert mp.wait(handles, timeout=20).not_done == set()
    results = mp.as_completed(handles)

    async def main() -> list[mp.AsyncHandle[int]]:
        got = []
        for step in order.split(", "):
            got.append(await anext(results) if step == "anext" else next(results))
        assert await anext(results, "ended") == "ended"
        assert next(results, None) is None
        return got

    got = run(main())
    assert sorted(handle.get() for handle in got) == [1, 2, 3, 4]


# -- context variables ---------------------------------------------------------------------


def read_request_id() -> str:
    return request_id.get("unset")


async def read_request_id_async() -> tuple[str, str]:
    await asyncio.sleep(0)
    return request_id.get("unset"), tenant.get()


def test_an_async_task_on_a_thread_sees_the_submitters_context() -> None:
    async def main() -> tuple[str, str]:
        request_id.set("r-17")
        return await mp.parallel(read_request_id_async)()  # type: ignore[no-any-return]

    assert run(main()) == ("r-17", "none")


@pytest.mark.timeout(60)
def test_process_contextvars_are_an_opt_in() -> None:
    fn = mp.parallel(backend="process")(read_request_id)
    afn = mp.parallel(backend="process")(read_request_id_async)
    context = contextvars.copy_context()
    context.run(request_id.set, "r-42")
    assert context.run(fn).get(30) == "unset"  # not sent unless asked
    mp.configure(process_contextvars=[request_id, tenant])
    try:
        assert context.run(fn).get(30) == "r-42"
        context.run(tenant.set, "acme")
        assert context.run(afn).get(30) == ("r-42", "acme")
        assert fn().get(30) == "unset"  # this context never set it
    finally:
        mp.configure(process_contextvars=[])
    assert context.run(fn).get(30) == "unset"


@pytest.mark.timeout(60)
def test_a_function_sent_by_value_may_use_a_process_contextvar() -> None:
    # A lambda (or any function of a __main__ script) travels by value, with the
    # globals it uses: the variable itself goes by module and name.
    fn = mp.parallel(backend="process")(lambda: (request_id.get("unset"), tenant.get()))
    context = contextvars.copy_context()
    context.run(request_id.set, "r-7")
    assert context.run(fn).get(30) == ("unset", "none")  # the variable, but not its value, unless asked
    mp.configure(process_contextvars=[request_id])
    try:
        assert context.run(fn).get(30) == ("r-7", "none")
    finally:
        mp.configure(process_contextvars=[])


def test_process_contextvars_must_be_module_globals() -> None:
    local: contextvars.ContextVar[int] = contextvars.ContextVar("local_only")
    with pytest.raises(ValueError, match="'local_only' is not a global of any imported module"):
        mp.configure(process_contextvars=[local])
    with pytest.raises(TypeError, match="ContextVar"):
        mp.configure(process_contextvars=["request_id"])  # type: ignore[list-item]


# -- anyio and trio --------------------------------------------------------------------------


def test_anyio_on_asyncio_awaits_and_cancels(gate: threading.Event) -> None:
    anyio = pytest.importorskip("anyio")
    work = mp.parallel(poll_until_stopped)

    async def main() -> mp.AsyncHandle[None]:
        assert await loop_of_this_worker(2) is not None
        handle = work(gate)
        with anyio.move_on_after(0.01):
            await handle
        return handle

    assert anyio.run(main, backend="asyncio").cancelled()


def test_trio_gets_a_clear_error() -> None:
    trio = pytest.importorskip("trio")

    async def main() -> None:
        handle = mp.parallel(poll_until_stopped)(threading.Event())
        try:
            with pytest.raises(RuntimeError, match="trio is not supported"):
                await handle
        finally:
            handle.cancel()

    trio.run(main)


# How a coroutine on a worker thread's own event loop waits for a task: each lends the worker's place.
AWAITS_ON_A_WORKERS_LOOP: dict[str, Callable[[mp.AsyncHandle[Any]], Awaitable[Any]]] = {
    "await handle": lambda handle: handle,
    "asyncio.wait": lambda handle: asyncio.wait([handle]),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wait", list(AWAITS_ON_A_WORKERS_LOOP))
def test_a_loop_closed_while_its_await_waits_gives_back_the_workers_place(wait: str, gate: threading.Event) -> None:
    """The await's end, which gives the place back, never runs on a closed loop: the pool counted the worker as lent for good."""
    resize(2)
    child = mp.parallel(poll_until_stopped)

    @mp.parallel
    def closes_its_loop_while_it_awaits() -> tuple[mp.AsyncHandle[None], int]:
        loop = asyncio.new_event_loop()
        waited = child(gate)
        awaiting = loop.create_future()

        async def awaits() -> None:
            awaiting.set_result(None)  # and waits at once, in this same step
            await AWAITS_ON_A_WORKERS_LOOP[wait](waited)

        loop.create_task(awaits())
        loop.run_until_complete(awaiting)
        lent = mp.get_thread_pool_info()["blocked_threads"]
        loop.close()  # the await still waits
        return waited, lent

    waited, lent = closes_its_loop_while_it_awaits().get(20)
    assert lent == 1
    after_the_awaits_callback = threading.Event()
    gate.set()
    waited.add_done_callback(lambda _: after_the_awaits_callback.set())  # callbacks run in the order added
    assert after_the_awaits_callback.wait(20)
    assert mp.get_thread_pool_info()["blocked_threads"] == 0


@pytest.mark.timeout(30)
def test_a_loop_closed_while_its_await_waits_gives_back_the_place_once_its_thread_awaits_on_another(
    gate: threading.Event,
) -> None:
    """The task awaited may never end (nothing then tells of the close): the next loop that thread awaits on finds it.

    Both loops in one task, so that the same thread awaits on the second: as two
    tasks, the second went to whichever worker the pool woke, not always the first's.
    """
    resize(2)
    child = mp.parallel(poll_until_stopped)

    @mp.parallel
    def closes_its_loop_while_it_awaits_then_awaits_on_a_new_one() -> tuple[mp.AsyncHandle[None], int, int]:
        loop = asyncio.new_event_loop()
        waited = child(gate)
        awaiting = loop.create_future()

        async def awaits() -> None:
            awaiting.set_result(None)
            await waited

        loop.create_task(awaits())
        loop.run_until_complete(awaiting)
        loop.close()
        lent_after_the_close = mp.get_thread_pool_info()["blocked_threads"]  # the child still runs

        async def main() -> None:
            released = threading.Event()
            awaited = child(released)
            asyncio.get_running_loop().call_soon(released.set)  # once the await below waits
            return await awaited

        asyncio.run(main())
        return waited, lent_after_the_close, mp.get_thread_pool_info()["blocked_threads"]

    waited, lent_after_the_close, lent_at_the_end = closes_its_loop_while_it_awaits_then_awaits_on_a_new_one().get(20)
    assert (lent_after_the_close, lent_at_the_end) == (1, 0)
    assert mp.get_thread_pool_info()["blocked_threads"] == 0, mp.get_thread_pool_info()
    assert not waited.done()
    gate.set()
    assert waited.get(20) is None


def test_async_with_on_a_group_says_to_use_with_or_await_the_handles() -> None:
    # mp.TaskGroup has asyncio.TaskGroup's name, and `async with` is what a coroutine
    # writes for that one; Python's own refusal named a protocol, not what to do.
    body_ran = False

    async def main() -> None:
        nonlocal body_ran
        async with mp.TaskGroup():  # (mp.ParallelContext: the same class)
            body_ran = True

    with pytest.raises(TypeError, match=r"entered with `with`, not `async with`.*mp\.gather_async"):
        run(main())
    assert not body_ran
