"""Nothing the library holds keeps a result alive once the user dropped it.

Each result is a fresh ``set`` (which supports weak references and pickles);
the test keeps only a weak reference, drops its handles, collects garbage and
checks that the result is gone. Pools are first brought to rest (workers
parked) so that what is checked is what the library keeps, not a worker still
on its way back.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from typing import Any

import pytest

import makeparallel as mp
from pool_helpers import resize, wait_until


def make_result(n: int) -> set[int]:
    return set(range(n, n + 100))


def gone(ref: weakref.ref[Any]) -> bool:
    return all_gone([ref])


def all_gone(refs: list[weakref.ref[Any]]) -> bool:
    """Whether every referent is gone, after one collection: late in a long run a full one can take a quarter second."""
    gc.collect()
    return all(ref() is None for ref in refs)


def thread_pool_at_rest() -> bool:
    info = mp.get_thread_pool_info()
    return bool(info["busy_threads"] == 0 and info["idle_threads"] == info["live_threads"])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("task_timeout", [None, 3600.0], ids=["plain", "with_a_timeout"])
def test_an_idle_worker_keeps_no_result(task_timeout: float | None) -> None:
    resize(1)
    task = mp.parallel(backend="thread", timeout=task_timeout)(make_result)
    handle = task(1)
    assert handle.wait(10)
    ref = weakref.ref(handle.get())
    assert wait_until(thread_pool_at_rest), mp.get_thread_pool_info()
    del handle
    # Counted idle as it parks, the worker still drops the task it settled after
    # waking this thread: what must not happen is that it keeps it while idle.
    assert wait_until(lambda: gone(ref)), gc.get_referrers(ref())


@pytest.mark.timeout(30)
def test_a_worker_running_the_next_task_keeps_no_earlier_result(gate: Any) -> None:
    resize(1)
    first = mp.parallel(backend="thread")(make_result)(1)
    assert first.wait(10)
    ref = weakref.ref(first.get())
    del first
    running = threading.Event()

    def hold() -> bool:
        running.set()
        return gate.wait(30)

    held = mp.parallel(backend="thread")(hold)()
    # Busy with it now: past dropping the first task, which it settled after waking this thread.
    assert running.wait(10)
    assert gone(ref)
    gate.set()
    assert held.get(timeout=10)


@pytest.mark.timeout(30)
def test_a_worker_that_settles_and_claims_in_one_round_keeps_no_earlier_result(gate: Any) -> None:
    # Both tasks are queued, so the worker settles the first and claims the
    # second in one lock round, then runs the second while the first is dropped.
    resize(1)
    release_first, second_started = threading.Event(), threading.Event()
    refs: list[weakref.ref[Any]] = []

    def first_task() -> set[int]:
        release_first.wait(30)
        result = make_result(1)
        refs.append(weakref.ref(result))
        return result

    def second_task() -> bool:
        second_started.set()
        return gate.wait(30)

    first = mp.parallel(backend="thread")(first_task)()
    second = mp.parallel(backend="thread")(second_task)()
    release_first.set()
    assert second_started.wait(10)
    assert first.wait(10) and first.done()
    del first
    assert gone(refs[0]), gc.get_referrers(refs[0]())
    gate.set()
    assert second.get(timeout=10)


@pytest.mark.timeout(60)
def test_the_process_backend_keeps_no_result() -> None:
    task = mp.parallel(backend="process")(make_result)
    handles = [task(i) for i in range(4)]
    refs = [weakref.ref(h.get(timeout=30)) for h in handles]
    del handles
    assert wait_until(lambda: all_gone(refs), timeout=10)


@pytest.mark.timeout(30)
def test_a_task_run_inline_leaves_nothing_in_the_queue(gate: Any) -> None:
    # The one worker is busy, so get() runs the queued task on this thread.
    resize(1)
    started = threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(30)

    held = mp.parallel(backend="thread")(hold)()
    assert started.wait(10)
    handle = mp.parallel(backend="thread")(make_result)(1)
    ref = weakref.ref(handle.get())
    del handle
    assert gone(ref)
    gate.set()
    assert held.get(timeout=10)


@pytest.mark.timeout(30)
def test_the_deadline_thread_keeps_no_retried_task_once_it_started_its_attempt() -> None:
    # The thread kept the heap entry it had taken last, and the task with it, until the
    # next deadline came: a retried task's result lived on with nothing else due.
    attempts = iter(range(2))

    def flaky() -> set[int]:
        if next(attempts) == 0:
            raise ConnectionError("reset")
        return make_result(1)

    retry = mp.Retry(on=ConnectionError, attempts=2, wait_initial=0, wait_jitter=0)
    handle = mp.parallel(backend="thread", retry=retry)(flaky)()
    ref = weakref.ref(handle.get(timeout=10))
    assert handle.attempts == 2
    del handle
    assert wait_until(lambda: gone(ref)), gc.get_referrers(ref())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_imap_keeps_no_item_it_handed_out(ordered: bool) -> None:
    items = mp.imap(make_result, range(40), chunksize=10, ordered=ordered, backend="thread")
    first = next(items)
    ref = weakref.ref(first)
    del first
    assert gone(ref)  # the rest of its chunk is still to come
    assert len(list(items)) == 39


@pytest.mark.timeout(30)
def test_an_unordered_map_keeps_no_finished_chunk() -> None:
    items = mp.imap(make_result, range(200), chunksize=1, ordered=False, backend="thread")
    refs = [weakref.ref(next(items)) for _ in range(50)]
    assert wait_until(lambda: all_gone(refs), timeout=10)
    assert len(list(items)) == 150


@pytest.mark.timeout(30)
@pytest.mark.parametrize("collect", ["gather", "as_completed", "wait"])
def test_collectors_keep_no_result(collect: str) -> None:
    task = mp.parallel(backend="thread")(make_result)
    handles = [task(i) for i in range(20)]
    if collect == "gather":
        refs = [weakref.ref(r) for r in mp.gather(handles)]
    elif collect == "as_completed":
        refs = [weakref.ref(h.get()) for h in mp.as_completed(handles)]
    else:
        mp.wait(handles)
        refs = [weakref.ref(h.get()) for h in handles]
    del handles
    assert wait_until(thread_pool_at_rest)
    assert all_gone(refs)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("iteration", ["for", "async for"])
def test_as_completed_lets_go_of_each_handle_it_yielded(iteration: str) -> None:
    # The consumer keeps only the iterator, as in `for h in as_completed(f(x) for x in xs)`.
    task = mp.parallel(backend="thread")(make_result)
    if iteration == "for":
        completed = mp.as_completed(task(i) for i in range(6))
        handle = next(completed)
        ref = weakref.ref(handle.get())
        del handle
        assert gone(ref), gc.get_referrers(ref())
        assert len(list(completed)) == 5
        return

    async def consume() -> None:
        completed = mp.as_completed(task(i) for i in range(6)).__aiter__()
        handle = await completed.__anext__()
        ref = weakref.ref(handle.get())
        del handle
        assert gone(ref), gc.get_referrers(ref())
        assert len([h async for h in completed]) == 5

    asyncio.run(consume())


@pytest.mark.timeout(30)
def test_as_completed_inside_a_task_keeps_no_handle_it_yielded(gate: Any) -> None:
    # A collector that is itself a task keeps the handles it may run inline;
    # one that ended on another worker and was yielded must not be kept.
    resize(2)
    quick = mp.parallel(backend="thread")(make_result)
    held = mp.parallel(backend="thread")(lambda: gate.wait(30))
    all_ended = threading.Event()
    ended = []

    def count_end(_: object) -> None:
        ended.append(1)
        if len(ended) == 5:
            all_ended.set()

    @mp.parallel(backend="thread")
    def parent() -> tuple[bool, int]:
        handles = [quick(i) for i in range(5)]
        for handle in handles:
            handle.add_done_callback(count_end)
        assert all_ended.wait(20)  # the other worker ran them all
        completed = mp.as_completed([*handles, held()])
        del handles
        first = next(completed)
        ref = weakref.ref(first.get())
        del first
        kept = not gone(ref)
        gate.set()
        return kept, len(list(completed))

    assert parent().get(timeout=25) == (False, 5)


def _wait_first(handles: list[mp.AsyncHandle[Any]]) -> None:
    done, _ = mp.wait(handles, return_when=mp.FIRST_COMPLETED)
    assert done


def _wait_timeout(handles: list[mp.AsyncHandle[Any]]) -> None:
    mp.wait(handles, timeout=0.01)


def _gather_timeout(handles: list[mp.AsyncHandle[Any]]) -> None:
    with pytest.raises(mp.TaskTimeoutError):
        mp.gather(handles, timeout=0.01)


def _as_completed_left_early(handles: list[mp.AsyncHandle[Any]]) -> None:
    for _ in mp.as_completed(handles):
        break


def _gather_async_timeout(handles: list[mp.AsyncHandle[Any]]) -> None:
    with pytest.raises(mp.TaskTimeoutError):
        asyncio.run(mp.gather_async(handles, timeout=0.01))


def _async_as_completed_left_early(handles: list[mp.AsyncHandle[Any]]) -> None:
    async def consume() -> None:
        completed = mp.as_completed(handles).__aiter__()
        await completed.__anext__()
        await completed.aclose()  # type: ignore[attr-defined]

    asyncio.run(consume())


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "collect",
    [
        pytest.param(_wait_first, id="wait FIRST_COMPLETED"),
        pytest.param(_wait_timeout, id="wait timeout"),
        pytest.param(_gather_timeout, id="gather timeout"),
        pytest.param(_as_completed_left_early, id="as_completed left early"),
        pytest.param(_gather_async_timeout, id="gather_async timeout"),
        pytest.param(_async_as_completed_left_early, id="async as_completed left early"),
    ],
)
def test_a_collector_that_returns_early_leaves_nothing_on_unfinished_tasks(collect: Any, gate: Any) -> None:
    # Each call once left a done-callback (and the queue of ended handles it
    # feeds) on every unfinished task, so a polling loop piled them up.
    pending = mp.parallel(backend="thread")(lambda: gate.wait(30))()
    finished = mp.parallel(backend="thread")(make_result)(1)
    assert finished.wait(10)
    for _ in range(3):
        collect([finished, pending])
    assert not pending._callbacks
    gate.set()
    assert pending.get(timeout=10)

