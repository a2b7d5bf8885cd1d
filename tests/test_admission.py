"""Admission control: ``set_max_concurrent_tasks`` and ``max_concurrent=``.

A submission over a limit blocks its thread until a task ends; it is never
dropped; submissions from inside a task are admitted at once so that nested
parallelism cannot deadlock. "Blocked" is shown by an event that a submitting
thread sets once its call returns: not set while the limit holds, set as soon as
a slot frees. The negative half (``not event.wait(0.2)``) can only pass wrongly,
never fail wrongly; the positive half proves the submitter was waiting for us.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _runtime, _task_context
from makeparallel._admission import Limiter
from makeparallel.testing import wait_until_idle
from pool_helpers import Flags, mark_then_wait, wait_until

BLOCKED_FOR = 0.2  # how long a blocked submitter is watched for not returning


class Submitter:
    """Submits from another thread and says when the submission call returned."""

    def __init__(self, submit: Callable[[], Any]) -> None:
        self.submitted = threading.Event()
        self.handle: Any = None
        self.error: BaseException | None = None
        self._submit = submit
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.handle = self._submit()
        except BaseException as error:
            self.error = error
        finally:
            self.submitted.set()

    def join(self) -> None:
        self._thread.join(5)
        assert not self._thread.is_alive()


class HighWater:
    """A lock-protected count of tasks running at once, and its maximum."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.now -= 1


@pytest.fixture(autouse=True)
def big_enough_pool() -> None:
    # Limits, not threads, must be what holds tasks back here.
    mp.configure_thread_pool(num_threads=8)


@pytest.mark.timeout(20)
def test_global_limit_blocks_the_next_submission_until_a_task_ends() -> None:
    mp.set_max_concurrent_tasks(2)
    gates = [threading.Event() for _ in range(3)]
    running = threading.Barrier(3)
    try:

        @mp.parallel
        def task(i: int) -> int:
            if i < 2:
                running.wait(5)
            assert gates[i].wait(30)
            return i

        first = [task(0), task(1)]
        running.wait(5)
        third = Submitter(lambda: task(2))
        assert not third.submitted.wait(BLOCKED_FOR), "a third task was admitted over a limit of 2"
        gates[0].set()
        assert third.submitted.wait(5), "ending a task did not admit the waiting submission"
        third.join()
        assert third.error is None
    finally:
        for gate in gates:
            gate.set()
    assert [h.get(timeout=5) for h in [*first, third.handle]] == [0, 1, 2]


@pytest.mark.timeout(30)
def test_limited_submissions_are_never_dropped_and_never_exceed_the_limit() -> None:
    mp.set_max_concurrent_tasks(2)
    running = HighWater()

    @mp.parallel
    def square(x: int) -> int:
        with running:
            threading.Event().wait(0.001)  # some overlap, were the limit broken
            return x * x

    handles = [square(i) for i in range(40)]
    assert [h.get(timeout=5) for h in handles] == [i * i for i in range(40)]
    assert running.most <= 2


@pytest.mark.timeout(20)
def test_max_concurrent_limits_one_function_only(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(max_concurrent=1)
    def limited(i: int) -> int:
        started.set()
        assert gate.wait(30)
        return i

    @mp.parallel
    def free(i: int) -> int:
        return i

    first = limited(1)
    assert started.wait(5)
    second = Submitter(lambda: limited(2))
    assert not second.submitted.wait(BLOCKED_FOR), "max_concurrent=1 admitted a second task"
    # Other functions are not held back by that limit, on a worker or not.
    assert [h.get(timeout=5) for h in [free(i) for i in range(5)]] == list(range(5))
    assert not second.submitted.is_set()
    gate.set()
    assert second.submitted.wait(5)
    second.join()
    assert second.error is None
    assert (first.get(timeout=5), second.handle.get(timeout=5)) == (1, 2)


@pytest.mark.timeout(20)
def test_max_concurrent_high_water_mark() -> None:
    running = HighWater()

    @mp.parallel(max_concurrent=3)
    def work(i: int) -> int:
        with running:
            threading.Event().wait(0.001)
            return i

    assert [h.get(timeout=5) for h in [work(i) for i in range(30)]] == list(range(30))
    assert running.most <= 3


@pytest.mark.timeout(20)
def test_options_without_max_concurrent_share_the_limit(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(max_concurrent=1)
    def limited(i: int) -> int:
        started.set()
        assert gate.wait(30)
        return i

    first = limited(1)
    assert started.wait(5)
    renamed = limited.options(priority=3, name="limited-renamed")
    other = Submitter(lambda: renamed(2))
    assert not other.submitted.wait(BLOCKED_FOR), ".options() escaped the function's limit"
    gate.set()
    assert other.submitted.wait(5)
    other.join()
    assert other.error is None
    assert (first.get(timeout=5), other.handle.get(timeout=5)) == (1, 2)


@pytest.mark.timeout(20)
def test_options_with_its_own_max_concurrent_is_not_held_back(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(max_concurrent=1)
    def limited(i: int) -> int:
        started.set()
        assert gate.wait(30)
        return i

    first = limited(1)
    assert started.wait(5)
    own = limited.options(max_concurrent=1)
    copy = Submitter(lambda: own(2))
    # The copy has its own slot, so it is admitted although the original's is taken;
    # it then waits on the gate like the first.
    assert copy.submitted.wait(5), "a copy with its own max_concurrent shared the original's slot"
    copy.join()
    gate.set()
    assert (first.get(timeout=5), copy.handle.get(timeout=5)) == (1, 2)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["global", "function"])
def test_nested_submissions_are_admitted_over_the_limit(where: str) -> None:
    if where == "global":
        mp.set_max_concurrent_tasks(1)
        options: dict[str, Any] = {}
    else:
        options = {"max_concurrent": 1}

    @mp.parallel(**options)
    def tree(depth: int) -> int:
        if depth == 0:
            return 1
        children = [tree(depth - 1) for _ in range(3)]
        return sum(h.get() for h in children)

    assert tree(2).get(timeout=10) == 9
    # Every slot came back: a fresh submission from outside any task is admitted.
    later = Submitter(lambda: tree(0))
    assert later.submitted.wait(5), "slots taken by nested tasks were never given back"
    later.join()
    assert later.handle.get(timeout=5) == 1


@pytest.mark.timeout(20)
def test_lifting_the_limit_releases_a_blocked_submitter(gate: threading.Event) -> None:
    mp.set_max_concurrent_tasks(1)
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "held"

    @mp.parallel
    def quick() -> str:
        return "quick"

    first = held()
    assert started.wait(5)
    second = Submitter(quick)
    assert not second.submitted.wait(BLOCKED_FOR)
    mp.set_max_concurrent_tasks(None)
    assert second.submitted.wait(5), "lifting the limit left the submitter waiting"
    second.join()
    assert second.error is None
    assert second.handle.get(timeout=5) == "quick"
    assert not first.is_ready()
    gate.set()
    assert first.get(timeout=5) == "held"


@pytest.mark.timeout(20)
def test_raising_the_limit_releases_a_blocked_submitter(gate: threading.Event) -> None:
    mp.set_max_concurrent_tasks(1)
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "held"

    first = held()
    assert started.wait(5)
    second = Submitter(held)
    assert not second.submitted.wait(BLOCKED_FOR)
    mp.set_max_concurrent_tasks(2)
    assert second.submitted.wait(5)
    second.join()
    gate.set()
    assert (first.get(timeout=5), second.handle.get(timeout=5)) == ("held", "held")


@pytest.mark.parametrize(
    ("limit", "error", "message"),
    [
        (-1, ValueError, "limit must be an int >= 1, or None or 0 for no limit, got -1"),
        ("2", TypeError, "limit must be an int >= 1, or None or 0 for no limit, got '2'"),
        (2.0, TypeError, "limit must be an int >= 1, or None or 0 for no limit, got 2.0"),
        (False, TypeError, "limit must be an int >= 1, or None or 0 for no limit, got False"),
    ],
)
def test_bad_global_limits_are_rejected(limit: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=f"^{message}$"):
        mp.set_max_concurrent_tasks(limit)


@pytest.mark.parametrize(("limit", "error"), [(0, ValueError), (-1, ValueError), ("2", TypeError)])
def test_bad_max_concurrent_is_rejected(limit: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_concurrent must be an int >= 1"):
        mp.parallel(max_concurrent=limit)
    with pytest.raises(error, match="max_concurrent must be an int >= 1"):
        mp.parallel(lambda: None).options(max_concurrent=limit)


def _one_slot(where: str) -> dict[str, Any]:
    """The options of a function under a limit of one task: its own (``where="function"``), or the global one, set here."""
    if where == "global":
        mp.set_max_concurrent_tasks(1)
        return {}
    return {"max_concurrent": 1}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["global", "function"])
def test_a_call_after_shutdown_over_a_full_limit_is_not_said_to_have_waited(
    where: str, gate: threading.Event
) -> None:
    # The limit full, a call made after the shutdown was refused by the limit's
    # wait, whose message said the library "was shut down while this submission
    # waited for a free slot": it never waited. It says what a call refused by
    # the pool says.
    options = _one_slot(where)
    started = threading.Event()

    @mp.parallel(**options)
    def held() -> None:
        started.set()
        assert gate.wait(30)

    first = held()
    assert started.wait(5)
    assert mp.shutdown(timeout_secs=0) is False  # the first task still holds the slot
    with pytest.raises(mp.ShutdownError, match=r"^makeparallel is shut down and accepts no new tasks; call makeparallel\.reset_shutdown\(\)"):
        held()
    gate.set()
    first.get(timeout=5)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("where", ["global", "function"])
def test_shutdown_while_a_submitter_waits_raises_shutdown_error(
    where: str, gate: threading.Event
) -> None:
    options = _one_slot(where)
    started = threading.Event()
    ran: list[str] = []

    @mp.parallel(**options)
    def held(label: str) -> str:
        ran.append(label)
        started.set()
        assert gate.wait(30)
        return label

    first = held("first")
    assert started.wait(5)
    waiting = Submitter(lambda: held("second"))
    assert not waiting.submitted.wait(BLOCKED_FOR)
    assert mp.shutdown(timeout_secs=0.1) is False  # the first task is still held
    assert waiting.submitted.wait(5), "shutdown left a submitter waiting for a slot"
    waiting.join()
    assert isinstance(waiting.error, mp.ShutdownError)
    assert "reset_shutdown()" in str(waiting.error)
    assert waiting.handle is None
    gate.set()
    assert first.get(timeout=5) == "first"
    assert ran == ["first"]
    # The rejected submission gave its slot back: after a reset the limit admits again.
    mp.reset_shutdown()
    assert held("third").get(timeout=5) == "third"


class _StoppedAsTheSlotComes:
    """Stands for the task a submission waits in: stopped by the time its wait for a slot ends.

    Its check passes as the wait begins and before it blocks (then it says so),
    and raises after.
    """

    def __init__(self) -> None:
        self.blocking = threading.Event()
        self._checks = 0

    def _raise_if_stopped(self) -> None:
        self._checks += 1
        if self._checks == 2:
            self.blocking.set()
        elif self._checks > 2:
            raise mp.TaskCancelledError("stopped as the slot came")


@pytest.mark.timeout(20)
def test_a_slot_that_comes_as_the_waiting_task_is_stopped_goes_back() -> None:
    # The slot is the waiting submission's once its wait ends, but the task it
    # runs in was stopped meanwhile: the submission raises, so the slot must
    # not stay counted (no task would ever give it back).
    limiter = Limiter(1, exempt_tasks=False)
    assert limiter.acquire()
    task = _StoppedAsTheSlotComes()

    def submit_inside_the_task() -> bool:
        _task_context._local.task = task
        try:
            return limiter.acquire()
        finally:
            del _task_context._local.task

    waiting = Submitter(submit_inside_the_task)
    assert task.blocking.wait(5)
    limiter.release()  # taken only once the submission waits: the slot passes to it
    assert waiting.submitted.wait(5)
    waiting.join()
    assert isinstance(waiting.error, mp.TaskCancelledError)
    assert limiter.in_flight == 0


# -- a map's or group's timeout bounds its submissions' waits for a slot -------------------------

WAIT_BOUNDED_BY = 0.3  # the map's or group's timeout, in seconds


def _map_list(flags: Flags, backend: str, **options: Any) -> object:
    calls = functools.partial(mark_then_wait, flags)
    return mp.parallel_map(calls, ["call"] * 6, timeout=WAIT_BOUNDED_BY, backend=backend, **options)


def _imap_list(flags: Flags, backend: str, **options: Any) -> object:
    calls = functools.partial(mark_then_wait, flags)
    return list(mp.imap(calls, ["call"] * 6, timeout=WAIT_BOUNDED_BY, backend=backend, **options))


def _imap_async(flags: Flags, backend: str, **options: Any) -> object:
    # On a running loop a submission never blocks (its task waits for its slot held back):
    # the map's own wait for its results times out.
    async def collect() -> list[str]:
        calls = functools.partial(mark_then_wait, flags)
        return [r async for r in mp.imap(calls, ["call"] * 6, timeout=WAIT_BOUNDED_BY, backend=backend, **options)]

    return asyncio.run(collect())


def _group(flags: Flags, backend: str, **options: Any) -> object:
    with mp.ParallelContext(timeout=WAIT_BOUNDED_BY, backend=backend, **options) as ctx:
        try:
            ctx.submit(mark_then_wait, flags, "call")
        finally:
            if ctx._limiter is not None:  # the group's own slot, taken before the wait, went back
                assert ctx._limiter.in_flight == 0
    return ctx


def _group_map(flags: Flags, backend: str) -> object:
    with mp.ParallelContext(timeout=WAIT_BOUNDED_BY, backend=backend) as ctx:
        ctx.map(functools.partial(mark_then_wait, flags), ["call"] * 3)
    return ctx


_TIMED_OUT_MAP = r"the map timed out after 0.3 s"
_TIMED_OUT_GROUP = r"the group timed out after 0.3 s; no task of it was left unfinished, none was cancelled"

_WAITS_FOR_A_SLOT = {
    "parallel_map": (_map_list, {}, _TIMED_OUT_MAP),
    "parallel_map-unordered": (_map_list, {"ordered": False}, _TIMED_OUT_MAP),
    "parallel_map-chunks": (_map_list, {"chunksize": 2}, _TIMED_OUT_MAP),
    "imap": (_imap_list, {}, _TIMED_OUT_MAP),
    "imap-unordered": (_imap_list, {"ordered": False}, _TIMED_OUT_MAP),
    "imap-chunks": (_imap_list, {"chunksize": 2}, _TIMED_OUT_MAP),
    "imap-async": (_imap_async, {}, _TIMED_OUT_MAP),
    "imap-async-unordered": (_imap_async, {"ordered": False}, _TIMED_OUT_MAP),
    "group": (_group, {}, _TIMED_OUT_GROUP),
    "group-max_concurrent": (_group, {"max_concurrent": 2}, _TIMED_OUT_GROUP),
    "group-map": (_group_map, {}, _TIMED_OUT_GROUP),
}


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("teardown")  # whatever the test did, no task waits past its end


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
@pytest.mark.parametrize("entry", list(_WAITS_FOR_A_SLOT))
def test_a_timeout_bounds_the_wait_for_a_slot_under_the_global_limit(entry: str, backend: str, flags: Flags) -> None:
    # The one slot is held by a task that runs until released. A submission of the
    # map or group waited for it past the timeout, for as long as that task ran, and
    # only then raised; nothing it never submitted may run later either.
    run, options, message = _WAITS_FOR_A_SLOT[entry]
    mp.set_max_concurrent_tasks(1)
    holder = mp.parallel(backend="thread")(mark_then_wait)(flags, "holder")
    assert flags.wait("holder", 30)
    rescue = threading.Timer(20, flags.set, ("holder-go",))  # ends a wait that ignores the timeout
    rescue.start()
    try:
        with pytest.raises(mp.TaskTimeoutError, match=message):
            run(flags, backend, **options)
        assert not flags.is_set("holder-go"), "the wait for a slot lasted until the task holding it ended"
    finally:
        rescue.cancel()
        rescue.join()
        flags.set("holder-go")
        flags.set("call-go")  # a call that ran wrongly ends, to be seen below
    assert holder.get(timeout=30) == "holder"
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, timeout=30), _runtime.global_limiter.in_flight
    assert wait_until_idle(30)
    assert not flags.is_set("call"), "a call the timeout kept from being submitted ran later"


@pytest.mark.timeout(90)
def test_a_group_timeout_bounds_the_wait_for_a_slot_of_a_functions_max_concurrent(flags: Flags) -> None:
    limited = mp.parallel(max_concurrent=1)(mark_then_wait)
    holder = limited(flags, "holder")
    assert flags.wait("holder", 30)
    rescue = threading.Timer(20, flags.set, ("holder-go",))
    rescue.start()
    try:
        with pytest.raises(mp.TaskTimeoutError, match=_TIMED_OUT_GROUP), mp.ParallelContext(timeout=WAIT_BOUNDED_BY) as ctx:
            ctx.submit(limited, flags, "call")
        assert not flags.is_set("holder-go"), "the wait for a slot lasted until the task holding it ended"
    finally:
        rescue.cancel()
        rescue.join()
        flags.set("holder-go")
        flags.set("call-go")
    assert holder.get(timeout=30) == "holder"
    assert wait_until(lambda: limited._spec.limiter.in_flight == 0, timeout=30)  # type: ignore[union-attr]
    flags.set("after-go")
    assert limited(flags, "after").get(timeout=30) == "after"  # its slot is free again
    assert not flags.is_set("call")


@pytest.mark.timeout(90)
def test_an_imap_refill_waits_for_a_slot_within_its_timeout_then_closes_clean(flags: Flags) -> None:
    # The first result is handed out; the next chunk, read once the consumer took it,
    # finds the one slot taken. Its wait ends at the map's deadline, not the task's end.
    ran: list[int] = []

    def record(i: int) -> int:
        ran.append(i)
        return i

    mp.set_max_concurrent_tasks(1)
    results = mp.imap(record, range(6), chunksize=1, max_in_flight=1, timeout=5, backend="thread")
    assert next(results) == 0
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, timeout=30)  # the chunk's slot went back
    holder = mp.parallel(backend="thread")(mark_then_wait)(flags, "holder")
    assert flags.wait("holder", 30)
    rescue = threading.Timer(20, flags.set, ("holder-go",))
    rescue.start()
    try:
        with pytest.raises(mp.TaskTimeoutError, match=r"the map timed out after 5 s with 1 item\(s\) done"):
            next(results)
        assert not flags.is_set("holder-go"), "the refill waited for a slot until the task holding it ended"
        results.close()
    finally:
        rescue.cancel()
        rescue.join()
        flags.set("holder-go")
    assert holder.get(timeout=30) == "holder"
    assert wait_until(lambda: _runtime.global_limiter.in_flight == 0, timeout=30), _runtime.global_limiter.in_flight
    assert wait_until_idle(30)
    assert ran == [0]


# -- a lazy map hands out what is ready while its next submission waits for a slot ----------------


def _imap_of(ordered: bool) -> Callable[[Callable[[int], Any]], Iterator[Any]]:
    return lambda fn: iter(mp.imap(fn, range(4), chunksize=1, ordered=ordered, backend="thread"))


def _executor_map(fn: Callable[[int], Any]) -> Iterator[Any]:
    executor = mp.Executor(max_workers=4)
    try:
        yield from executor.map(fn, range(4), buffersize=2)
    finally:
        executor.shutdown(wait=False)


_LAZY_MAPS = {"imap": _imap_of(True), "imap-unordered": _imap_of(False), "Executor.map-buffersize": _executor_map}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", list(_LAZY_MAPS))
def test_a_lazy_map_hands_out_a_ready_result_while_its_refill_waits_for_a_slot(entry: str) -> None:
    # One slot. The map's first call holds it while another thread queues for it behind the
    # map's next submission; that thread's task then waits for the consumer's first result.
    # The map waited for a slot in its refill while its first result was ready: the other
    # task got the slot, and the two waited for each other until that task gave up.
    limiter = _runtime.global_limiter
    first_out = threading.Event()
    first_go = threading.Event()

    def call(i: int) -> int:
        if i == 0:
            assert first_go.wait(30)
        return i

    @mp.parallel(backend="thread")
    def holder() -> bool:
        return first_out.wait(15)  # the map's consumer got its first result meanwhile

    mp.set_max_concurrent_tasks(1)
    got: list[int] = []

    def consume() -> None:  # on a thread of its own: its wait is not sliced as the main thread's is
        for result in _LAZY_MAPS[entry](call):
            got.append(result)
            first_out.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert wait_until(lambda: len(limiter._waiters) == 1, timeout=30), "the map's refill never waited for the slot"
        other = Submitter(holder)
        assert wait_until(lambda: len(limiter._waiters) == 2, timeout=30), "the other call never queued for the slot"
        first_go.set()
        other.join()
        assert other.error is None
        assert other.handle.get(timeout=30), "the map held its ready first result back while it waited for a slot"
    finally:
        first_go.set()
        first_out.set()
        consumer.join(30)
    assert not consumer.is_alive()
    assert sorted(got) == [0, 1, 2, 3]
    assert wait_until(lambda: limiter.in_flight == 0, timeout=30), limiter.in_flight



def _lazy_map_of_many(entry: str) -> Callable[[Callable[[int], Any]], Iterator[Any]]:
    """A lazy map of ``entry``'s kind over more items than it keeps in flight."""
    if entry == "Executor.map-buffersize":

        def executor_map(fn: Callable[[int], Any]) -> Iterator[Any]:
            executor = mp.Executor(max_workers=4)
            try:
                yield from executor.map(fn, range(12), buffersize=4)
            finally:
                executor.shutdown(wait=False)

        return executor_map
    return lambda fn: iter(mp.imap(fn, range(64), chunksize=1, ordered=entry == "imap", backend="thread"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", list(_LAZY_MAPS))
def test_a_lazy_map_begun_before_the_limit_hands_out_a_ready_result_while_its_refill_waits(entry: str) -> None:
    # As above, with the limit set while the map runs (its calls in flight then were
    # submitted with no limit): their ends did not wake the refill's wait, which held the
    # second result back until the task holding the slot, waiting for it, gave up.
    limiter = _runtime.global_limiter
    limit_set = threading.Event()
    go = threading.Event()
    second_out = threading.Event()
    got: list[int] = []

    def call(i: int) -> int:
        if i:
            assert go.wait(30)
        return i

    @mp.parallel(backend="thread")
    def holder() -> bool:
        return second_out.wait(15)  # the map's consumer got its second result meanwhile

    def consume() -> None:
        for result in _lazy_map_of_many(entry)(call):
            got.append(result)
            if len(got) == 1:
                assert limit_set.wait(30)
            elif len(got) == 2:
                second_out.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        assert wait_until(lambda: len(got) == 1, timeout=30), "the map never gave its first result"
        mp.set_max_concurrent_tasks(1)
        other = holder()
        limit_set.set()
        assert wait_until(lambda: len(limiter._waiters) == 1, timeout=30), "the map's refill never waited for the slot"
        go.set()
        assert other.get(timeout=30), "the map held its ready second result back while it waited for a slot"
    finally:
        limit_set.set()
        go.set()
        second_out.set()
        consumer.join(30)
    assert not consumer.is_alive()
    assert sorted(got) == list(range(len(got))) and len(got) in (12, 64)
    assert wait_until(lambda: limiter.in_flight == 0, timeout=30), limiter.in_flight


class _Result:
    """A result a weak reference can follow."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("entry", ["imap", "parallel_map", "imap-left-early", "Executor.map-buffersize"])
def test_a_lazy_map_done_with_leaves_no_reference_cycle_to_free(entry: str) -> None:
    # The map held the recipient that ends its waits for a slot, and the recipient held the
    # map (a bound method of it): the two kept each other, and with them the map's input and
    # the results of the calls it left unread, until the garbage collector ran (never, with
    # it disabled), where a map was freed as it was dropped.
    made: list[Any] = []

    def call(i: int) -> _Result:
        result = _Result()
        made.append(weakref.ref(result))
        return result

    items = (i for i in range(6))
    gone = [weakref.ref(items)]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if entry == "imap":
            assert len(list(mp.imap(call, items, chunksize=1, backend="thread"))) == 6
        elif entry == "parallel_map":
            assert len(mp.parallel_map(call, items, chunksize=1, backend="thread")) == 6
        elif entry == "imap-left-early":
            results = mp.imap(call, items, chunksize=1, backend="thread")
            next(results)
            results.close()
            del results
        else:
            with mp.Executor(max_workers=2) as executor:
                results = executor.map(call, items, buffersize=3)
                next(results)
                results.close()
                del results
        del items
        assert wait_until_idle(30)
        gone += made
        assert [ref() for ref in gone] == [None] * len(gone)
    finally:
        if was_enabled:
            gc.enable()
