"""A map of a ``@parallel`` function under its options: ``max_concurrent`` and ``priority``.

A map runs its items in chunks, one task each, which run their items one after
another: at most ``max_concurrent`` chunks at once is at most that many items.
The chunks take their slots from the function's own limiter, which its direct
calls share. Items count one another through marker files
(``map_limit_tasks``), which worker processes see as threads do: the first
items wait until the limit's worth run at once (the map does run in parallel),
and each watches for one more for a moment (which can only pass wrongly).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel.testing import wait_until_idle
from map_limit_tasks import Waiter, Watcher, mark_then_wait_for, most_at_once, watched
from pool_helpers import Flags, hold_one_worker, wait_until

LIMIT = 2
WORKERS = 4  # threads, or worker processes: more than the limit, so that only it holds the map back
ITEMS = 8

BACKENDS = ["thread", "process"]


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("teardown")  # whatever the test did, no task waits past its end


def _pools_of(workers: int) -> None:
    # Put back by the suite's teardown (conftest), as any pool setting.
    mp.configure_thread_pool(num_threads=workers)
    mp.configure_process_pool(num_workers=workers)


def assert_slots_given_back(fn: Any) -> None:
    """Assert that every slot of ``fn``'s ``max_concurrent`` is free again, once its last task ended.

    A task ends (its handle reads as done, and ``get()`` returns without a lock)
    a moment before its worker gives its slots back: right after the map
    returns, the last chunk's slot may be held still. A slot never given back
    stays held, and fails the wait.
    """
    limiter = fn._spec.limiter
    assert wait_until(lambda: limiter.in_flight == 0, 30), limiter.in_flight


def _map(fn: Any, items: list[Any], backend: str, **options: Any) -> list[Any]:
    return mp.parallel_map(fn, items, backend=backend, **options)


def _imap(fn: Any, items: list[Any], backend: str, **options: Any) -> list[Any]:
    return list(mp.imap(fn, items, backend=backend, **options))


def _imap_async(fn: Any, items: list[Any], backend: str, **options: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [result async for result in mp.imap(fn, items, backend=backend, **options)]

    return asyncio.run(collect())


_ENTRIES: dict[str, tuple[Callable[..., list[Any]], dict[str, Any]]] = {
    "parallel_map": (_map, {}),
    "parallel_map-unordered": (_map, {"ordered": False}),
    "parallel_map-one-item-chunks": (_map, {"chunksize": 1}),
    "imap": (_imap, {}),
    "imap-unordered": (_imap, {"ordered": False}),
    "imap-one-item-chunks": (_imap, {"chunksize": 1}),
    "imap-async": (_imap_async, {}),
    "imap-async-unordered": (_imap_async, {"ordered": False}),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", list(_ENTRIES))
def test_a_map_runs_at_most_max_concurrent_items_at_once(entry: str, backend: str, flags: Flags) -> None:
    # The map ran as many chunks at once as the pool had workers, whatever the function's limit.
    run, options = _ENTRIES[entry]
    _pools_of(WORKERS)
    limited = mp.parallel(max_concurrent=LIMIT)(watched)
    jobs = [(flags, LIMIT, i) for i in range(ITEMS)]
    assert sorted(run(limited, jobs, backend, **options)) == list(range(ITEMS))
    assert most_at_once(flags) == LIMIT
    assert_slots_given_back(limited)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", ["parallel_map", "imap-unordered", "imap-async"])
def test_a_map_of_a_bound_method_runs_at_most_max_concurrent_items_at_once(entry: str, backend: str, flags: Flags) -> None:
    run, options = _ENTRIES[entry]
    _pools_of(WORKERS)
    assert sorted(run(Watcher(flags).watch, list(range(ITEMS)), backend, **options)) == list(range(ITEMS))
    assert most_at_once(flags) == LIMIT
    assert_slots_given_back(Watcher.watch)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", ["parallel_map", "imap", "imap-unordered", "imap-async"])
def test_a_maps_chunks_and_direct_calls_share_the_functions_slots(entry: str, backend: str, flags: Flags) -> None:
    # A direct call holds one of the two slots while the map runs: the map gets the other alone.
    run, options = _ENTRIES[entry]
    _pools_of(WORKERS)
    limited = mp.parallel(max_concurrent=LIMIT, backend=backend)(watched)
    holder = limited((flags, LIMIT, "holder"))
    assert flags.wait("started-holder", 30)
    try:
        jobs = [(flags, LIMIT, i) for i in range(ITEMS)]
        assert sorted(run(limited, jobs, backend, **options)) == list(range(ITEMS))
    finally:
        flags.set("holder-go")
    assert holder.get(timeout=30) == "holder"
    assert most_at_once(flags) == LIMIT
    assert_slots_given_back(limited)


# -- the map's timeout bounds its wait for one of the function's slots -----------------------------

WAIT_BOUNDED_BY = 0.3  # the map's timeout, in seconds
_TIMED_OUT_MAP = r"the map timed out after 0.3 s"


def _limited_function(flags: Flags) -> tuple[Any, list[Any], mp.AsyncHandle[str]]:
    """A function limited to one task at once, its items, and a direct call of it that holds the slot."""
    limited = mp.parallel(max_concurrent=1)(mark_then_wait_for)
    holder = limited.options(backend="thread")((flags, "holder"))  # the copy shares the slot
    return limited, [(flags, "call")] * 6, holder


def _limited_method(flags: Flags) -> tuple[Any, list[Any], mp.AsyncHandle[str]]:
    """:func:`_limited_function`'s, for a method bound to an object."""
    waiter = Waiter(flags)
    holder = waiter.wait.options(backend="thread")("holder")
    return waiter.wait, ["call"] * 6, holder


@pytest.mark.timeout(90)
@pytest.mark.parametrize("limited", [_limited_function, _limited_method], ids=["function", "method"])
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("entry", ["parallel_map", "parallel_map-unordered", "imap", "imap-unordered", "imap-async"])
def test_a_map_timeout_bounds_the_wait_for_a_slot_of_the_functions_max_concurrent(
    entry: str, backend: str, limited: Callable[[Flags], tuple[Any, list[Any], mp.AsyncHandle[str]]], flags: Flags
) -> None:
    # The one slot is held by a call that runs until released. The map's chunks waited
    # for it past the timeout, or (before) ran beside it; nothing it never submitted may run later.
    run, options = _ENTRIES[entry]
    fn, items, holder = limited(flags)
    assert flags.wait("holder", 30)
    rescue = threading.Timer(20, flags.set, ("holder-go",))  # ends a wait that ignores the timeout
    rescue.start()
    try:
        with pytest.raises(mp.TaskTimeoutError, match=_TIMED_OUT_MAP):
            run(fn, items, backend, timeout=WAIT_BOUNDED_BY, **options)
        assert not flags.is_set("holder-go"), "the wait for a slot lasted until the task holding it ended"
    finally:
        rescue.cancel()
        rescue.join()
        flags.set("holder-go")
        flags.set("call-go")  # a call that ran wrongly ends, to be seen below
    assert holder.get(timeout=30) == "holder"
    assert wait_until_idle(30)
    assert not flags.is_set("call"), "an item ran beside the call holding the function's one slot"
    # A chunk held back on a running loop, cancelled, is handed the slot and gives it back, on the admission thread.
    assert wait_until(lambda: fn._spec.limiter.in_flight == 0, 30), fn._spec.limiter.in_flight


# -- a map under a limit of one never waits for good ------------------------------------------------


def _add_one(x: int) -> int:
    return x + 1


_MANY = 3000


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize(
    ("entry", "options"),
    [
        ("parallel_map", {}),
        ("parallel_map", {"ordered": False}),
        ("parallel_map", {"max_in_flight": 1}),
        ("parallel_map", {"timeout": 60}),
        ("imap", {}),
        ("imap", {"ordered": False}),
        ("imap", {"max_in_flight": 1}),
        ("imap", {"max_in_flight": 2, "ordered": False}),
        ("imap", {"chunksize": 7, "timeout": 60}),
        ("imap-async", {}),
    ],
)
def test_a_map_of_many_items_under_a_limit_of_one_ends(entry: str, options: dict[str, Any], backend: str) -> None:
    _pools_of(WORKERS)
    one_at_a_time = mp.parallel(max_concurrent=1)(_add_one)
    run, _ = _ENTRIES[entry]
    results = run(one_at_a_time, list(range(_MANY)), backend, **options)
    if options.get("ordered", True):
        assert results == list(range(1, _MANY + 1))
    else:
        assert sorted(results) == list(range(1, _MANY + 1))
    assert_slots_given_back(one_at_a_time)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("entry", ["parallel_map", "imap", "imap-unordered"])
def test_a_map_inside_a_task_of_the_same_function_is_admitted_over_its_limit(entry: str, backend: str) -> None:
    # The task holds the one slot and waits for its map: as a call from inside a task,
    # the map's chunks are admitted over the limit, or the task would wait for good.
    run, options = _ENTRIES[entry]
    _pools_of(WORKERS)

    @mp.parallel(max_concurrent=1, backend=backend)
    def fan_out(n: int) -> int:
        if n == 0:
            return 1
        return sum(run(fan_out, [0] * n, backend, **options))

    assert fan_out(5).get(timeout=30) == 5
    assert_slots_given_back(fan_out)



# -- priority --------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("entry", ["parallel_map", "parallel_map-unordered", "imap", "imap-unordered"])
def test_a_maps_chunks_take_the_functions_priority(entry: str, gate: threading.Event) -> None:
    # One worker, held; a task of priority 0 queues, then the map's one chunk of a function
    # of priority 10: it starts first, as a call of the function would. (With a timeout, the
    # map waits for its chunk, where without one it may run the queued chunk itself.)
    run, options = _ENTRIES[entry]
    order: list[str] = []
    held = hold_one_worker(gate)
    low = mp.parallel(order.append)("low")
    urgent = mp.parallel(priority=10)(order.append)
    mapping = threading.Thread(target=run, args=(urgent, ["urgent"] * 2, "thread"), kwargs={"timeout": 30, "chunksize": 2, **options})
    mapping.start()
    try:
        assert wait_until(lambda: mp.get_thread_pool_info()["queued_tasks"] == 2, 10), mp.get_thread_pool_info()
    finally:
        gate.set()
        mapping.join(30)
    assert not mapping.is_alive()
    assert held.get(timeout=10) == "held"
    assert low.get(timeout=10) is None
    assert wait_until_idle(10)
    assert order == ["urgent", "urgent", "low"]
