"""Per-function metrics: counts, times, snapshots, reset, ``@profiled``, and exactness."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
import inspect
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pool_helpers import hold_the_pool, poll_until_stopped

import makeparallel as mp
from makeparallel.testing import wait_until_idle

BACKENDS = ["thread", "sync"]

FIELDS = {
    "name",
    "total_tasks",
    "completed_tasks",
    "failed_tasks",
    "cancelled_tasks",
    "timed_out_tasks",
    "running_tasks",
    "queued_tasks",
    "total_execution_time_ms",
    "average_execution_time_ms",
    "min_execution_time_ms",
    "max_execution_time_ms",
    "p50_execution_time_ms",
    "p95_execution_time_ms",
    "p99_execution_time_ms",
    "average_queue_wait_ms",
    "p50_queue_wait_ms",
    "p95_queue_wait_ms",
    "p99_queue_wait_ms",
    "max_queue_wait_ms",
    "retried_tasks",
    "retries",
}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def unique_name(label: str = "metrics") -> str:
    return f"{label}-{uuid.uuid4().hex}"


def counts(name: str) -> dict[str, int]:
    metrics = mp.get_metrics(name)
    assert metrics is not None, f"no metrics recorded under {name!r}"
    return {
        "total": metrics.total_tasks,
        "completed": metrics.completed_tasks,
        "failed": metrics.failed_tasks,
        "cancelled": metrics.cancelled_tasks,
        "timed_out": metrics.timed_out_tasks,
    }


def busy_for(seconds: float) -> float:
    """Work (not wait) for ``seconds``; return how long it really took."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pass
    return time.perf_counter() - started


# -- counts ----------------------------------------------------------------------------


def test_completed_and_failed_counts(backend: str) -> None:
    name = unique_name()

    @mp.parallel(backend=backend, name=name)
    def work(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(x)
        return x

    handles = [work(x) for x in range(10)]  # 0, 3, 6, 9 fail
    for x, handle in enumerate(handles):
        if x % 3 == 0:
            with pytest.raises(ValueError):
                handle.get(5)
        else:
            assert handle.get(5) == x
    assert counts(name) == {"total": 10, "completed": 6, "failed": 4, "cancelled": 0, "timed_out": 0}


def test_counts_are_up_to_date_when_get_returns(backend: str) -> None:
    name = unique_name()

    @mp.parallel(backend=backend, name=name)
    def work() -> None:
        pass

    for done in range(1, 6):
        work().get(5)
        assert counts(name)["completed"] == done


@pytest.mark.timeout(10)
def test_cancelled_count(gate: threading.Event) -> None:
    name = unique_name()
    blockers = hold_the_pool(gate)

    @mp.parallel(backend="thread", name=name)
    def never_runs() -> None:
        pass

    handles = [never_runs() for _ in range(3)]
    assert all(h.cancel() for h in handles)
    assert counts(name) == {"total": 3, "completed": 0, "failed": 0, "cancelled": 3, "timed_out": 0}
    gate.set()
    for blocker in blockers:
        blocker.get(5)
    assert counts(name)["cancelled"] == 3  # the skipped queue entries count nothing more


@pytest.mark.timeout(10)
def test_cancelled_running_task_is_counted_once(gate: threading.Event) -> None:
    name = unique_name()
    started = threading.Event()
    stopped = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def long_running() -> None:
        started.set()
        try:
            poll_until_stopped(gate)
        finally:
            stopped.set()

    handle = long_running()
    assert started.wait(5)
    assert handle.cancel()
    assert stopped.wait(5)
    assert wait_until_idle(5)
    assert counts(name) == {"total": 1, "completed": 0, "failed": 0, "cancelled": 1, "timed_out": 0}


@pytest.mark.timeout(10)
def test_timed_out_count(backend: str, gate: threading.Event) -> None:
    name = unique_name()
    stopped = threading.Event()

    @mp.parallel(backend=backend, name=name, timeout=0.05)
    def slow() -> None:
        try:
            poll_until_stopped(gate)
        finally:
            stopped.set()

    handle = slow()
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(5)
    assert stopped.wait(5)  # the task's late failure must not be counted too
    assert counts(name) == {"total": 1, "completed": 0, "failed": 0, "cancelled": 0, "timed_out": 1}
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert metrics.total_execution_time_ms == 0.0  # only tasks that ran to their end
    assert metrics.average_execution_time_ms == 0.0


def test_bounded_wait_that_gives_up_counts_nothing(gate: threading.Event) -> None:
    name = unique_name()
    started = threading.Event()

    @mp.parallel(backend="thread", name=name)
    def work() -> None:
        started.set()
        assert gate.wait(5)

    handle = work()
    assert started.wait(5)
    with pytest.raises(mp.TaskTimeoutError):
        handle.get(0.01)
    assert counts(name) == {"total": 1, "completed": 0, "failed": 0, "cancelled": 0, "timed_out": 0}
    gate.set()
    handle.get(5)
    assert counts(name)["completed"] == 1


# -- times -----------------------------------------------------------------------------


def test_execution_times_are_consistent(backend: str) -> None:
    name = unique_name()
    measured: list[float] = []

    @mp.parallel(backend=backend, name=name)
    def work(fail: bool) -> None:
        measured.append(busy_for(0.002))
        if fail:
            raise RuntimeError("failed after working")

    wall_started = time.perf_counter()
    for fail in (False, False, True, False, True):
        handle = work(fail)  # one at a time: the tasks never overlap
        handle.wait(5)
    wall = time.perf_counter() - wall_started
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert metrics.completed_tasks == 3 and metrics.failed_tasks == 2
    assert len(measured) == 5
    # Milliseconds, covering at least the time each function ran, and no more
    # than the wall time around them all.
    assert metrics.total_execution_time_ms >= sum(measured) * 1000
    assert metrics.total_execution_time_ms <= wall * 1000
    assert metrics.average_execution_time_ms == pytest.approx(
        metrics.total_execution_time_ms / (metrics.completed_tasks + metrics.failed_tasks)
    )
    assert metrics.average_execution_time_ms >= min(measured) * 1000


def test_no_tasks_means_zero_times(backend: str) -> None:
    name = unique_name()

    @mp.parallel(backend=backend, name=name)
    def work() -> None:
        pass

    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert metrics.total_tasks == 0
    assert metrics.total_execution_time_ms == 0.0
    assert metrics.average_execution_time_ms == 0.0


# -- snapshots -------------------------------------------------------------------------


def test_attribute_and_mapping_access_agree(backend: str) -> None:
    name = unique_name()

    @mp.parallel(backend=backend, name=name)
    def work() -> int:
        return 1

    work().get(5)
    metrics = mp.get_metrics(name)
    assert isinstance(metrics, mp.TaskMetrics)
    as_dict = dict(metrics)
    assert set(as_dict) == FIELDS
    assert len(metrics) == len(FIELDS)
    for key in FIELDS:
        assert metrics[key] == getattr(metrics, key)
        assert as_dict[key] == getattr(metrics, key)
    assert metrics["total_tasks"] == metrics.total_tasks == 1
    assert metrics["name"] == name
    assert metrics.as_dict() == as_dict
    assert "total_tasks" in metrics
    assert metrics.get("no_such_field") is None
    with pytest.raises(KeyError):
        metrics["no_such_field"]


def test_snapshot_is_frozen(backend: str) -> None:
    name = unique_name()

    @mp.parallel(backend=backend, name=name)
    def work() -> None:
        pass

    work().get(5)
    snapshot = mp.get_metrics(name)
    assert snapshot is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.total_tasks = 99  # type: ignore[misc]
    work().get(5)
    assert snapshot.total_tasks == 1  # a snapshot does not change afterwards
    assert counts(name)["total"] == 2


def test_unknown_name_has_no_metrics() -> None:
    assert mp.get_metrics(unique_name("never-used")) is None


@pytest.mark.timeout(20)
def test_a_name_not_a_str_is_rejected_not_taken_for_an_unknown_one() -> None:
    # The function itself, given for its name, found nothing: it read as one never run.
    @mp.parallel(name=unique_name())
    def work() -> int:
        return 1

    assert work().get(timeout=10) == 1
    for value in (work, None, 3):
        with pytest.raises(TypeError, match=f"name must be the name of a function, a str .*got {re.escape(repr(value))}"):
            mp.get_metrics(value)  # type: ignore[arg-type]


def test_get_all_metrics_contains_every_name(backend: str) -> None:
    first, second = unique_name(), unique_name()

    @mp.parallel(backend=backend, name=first)
    def one() -> None:
        pass

    one().get(5)
    one.options(name=second)().get(5)
    every = mp.get_all_metrics()
    assert isinstance(every, dict)
    assert every[first] == mp.get_metrics(first)
    assert every[second] == mp.get_metrics(second)
    assert every[first].total_tasks == 1 and every[second].total_tasks == 1
    assert all(key == value.name for key, value in every.items())


def test_default_name_is_the_qualname(backend: str) -> None:
    @mp.parallel(backend=backend)
    def metrics_default_named() -> None:
        pass

    name = metrics_default_named.__qualname__
    before = mp.get_metrics(name)
    already = 0 if before is None else before.total_tasks
    metrics_default_named().get(5)
    assert counts(name)["total"] == already + 1


def test_options_share_the_record_unless_renamed(backend: str) -> None:
    name, renamed = unique_name(), unique_name()

    @mp.parallel(name=name)
    def work() -> None:
        pass

    work.options(backend=backend)().get(5)
    work.options(backend=backend, priority=2)().get(5)
    work.options(backend=backend, name=renamed)().get(5)
    assert counts(name)["total"] == 2
    assert counts(renamed)["total"] == 1


def test_counts_sum_over_backends() -> None:
    name = unique_name()

    @mp.parallel(name=name)
    def work() -> None:
        pass

    for backend in BACKENDS:
        for _ in range(3):
            work.options(backend=backend)().get(5)
    assert counts(name) == {"total": 6, "completed": 6, "failed": 0, "cancelled": 0, "timed_out": 0}


# -- reset -----------------------------------------------------------------------------


def test_reset_metrics_zeroes_every_record(backend: str) -> None:
    name = unique_name()

    @mp.parallel(backend=backend, name=name)
    def work(fail: bool) -> None:
        if fail:
            raise ValueError("x")

    work(False).get(5)
    work(True).wait(5)
    assert counts(name)["total"] == 2
    mp.reset_metrics()
    metrics = mp.get_metrics(name)
    assert metrics is not None  # the name stays known
    assert name in mp.get_all_metrics()
    assert dict(metrics) == {"name": name, **{field: 0 for field in FIELDS - {"name"}}}
    work(False).get(5)
    assert counts(name) == {"total": 1, "completed": 1, "failed": 0, "cancelled": 0, "timed_out": 0}


@pytest.mark.timeout(30)
def test_a_reset_during_a_task_leaves_running_tasks_right_after_it_ends() -> None:
    """The task in flight at the reset ends later: later tasks still count as running."""
    name = unique_name()
    started = {step: threading.Event() for step in ("before", "after")}
    release = {step: threading.Event() for step in ("before", "after")}

    @mp.parallel(name=name)
    def work(step: str) -> None:
        started[step].set()
        release[step].wait(10)

    before = work("before")
    assert started["before"].wait(10)
    mp.reset_metrics()
    release["before"].set()
    before.get(10)
    after = work("after")
    assert started["after"].wait(10)
    try:
        metrics = mp.get_metrics(name)
        assert metrics is not None
        assert (metrics.running_tasks, metrics.total_tasks, metrics.completed_tasks) == (1, 1, 1)
    finally:
        release["after"].set()
    after.get(10)
    assert mp.get_metrics(name).running_tasks == 0  # type: ignore[union-attr]


@pytest.mark.timeout(30)
def test_tasks_waiting_on_a_loop_for_a_concurrency_slot_count_as_queued() -> None:
    """On a running loop, a call over max_concurrent returns at once; its task waits, not runs."""
    import asyncio

    name = unique_name()
    started = threading.Event()
    release = threading.Event()

    @mp.parallel(name=name, max_concurrent=1)
    def work(i: int) -> int:
        started.set()
        release.wait(10)
        return i

    async def main() -> tuple[int, int]:
        handles = [work(i) for i in range(3)]
        try:
            assert started.wait(10)
            metrics = mp.get_metrics(name)
            assert metrics is not None
            return metrics.running_tasks, metrics.queued_tasks
        finally:
            release.set()
            await mp.gather_async(handles)

    assert asyncio.run(main()) == (1, 2)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["thread", "executor"])
def test_a_task_waiting_to_retry_counts_as_queued_not_running(backend: str) -> None:
    """Its handle says "waiting to retry" (not running), and no worker holds it.

    Running was derived as in flight less queued, and a task in its retry's wait is
    in no pool's queue: a hundred retrying calls read as a hundred running on two
    threads, in the metrics and in ``makeparallel_tasks_running``.
    """
    import concurrent.futures

    name = unique_name()
    retried = threading.Event()

    def told(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.name == name:
            retried.set()

    executor = concurrent.futures.ThreadPoolExecutor(1) if backend == "executor" else None
    policy = mp.Retry(on=KeyError, attempts=2, timeout=None, wait_initial=3600, wait_max=3600, wait_jitter=0)

    @mp.parallel(name=name, retry=policy, backend=executor or "thread")
    def flaky() -> None:
        raise KeyError("once")

    mp.add_task_listener(told)
    try:
        handle = flaky()
        assert retried.wait(10)
        assert handle.status == "waiting to retry"
        metrics = mp.get_metrics(name)
        assert metrics is not None
        assert (metrics.running_tasks, metrics.queued_tasks) == (0, 1)
        assert mp.metrics_snapshot()["functions"][name]["running_tasks"] == 0
        handle.cancel()
        metrics = mp.get_metrics(name)
        assert metrics is not None
        assert (metrics.running_tasks, metrics.queued_tasks, metrics.cancelled_tasks) == (0, 0, 1)
    finally:
        mp.remove_task_listener(told)
        if executor is not None:
            executor.shutdown()


@pytest.mark.timeout(30)
def test_a_sync_call_waiting_to_retry_in_its_caller_counts_as_queued_not_running() -> None:
    """Its caller sleeps out the wait (no heap entry, no queue): none of its code runs.

    The "sync" backend counted nothing as queued, and such a call read as running.
    """
    from makeparallel._task_context import current_task

    name = unique_name()
    retried = threading.Event()
    handles: list[Any] = []

    def told(event: mp.TaskEvent) -> None:
        if event.kind == "retry" and event.name == name:
            retried.set()

    policy = mp.Retry(on=KeyError, attempts=2, timeout=None, wait_initial=3600, wait_max=3600, wait_jitter=0)

    @mp.parallel(name=name, retry=policy, backend="sync")
    def flaky() -> None:
        handles.append(current_task())
        raise KeyError("once")

    mp.add_task_listener(told)
    caller = threading.Thread(target=flaky, daemon=True)  # returns its handle, cancelled, once its wait ends
    try:
        caller.start()
        assert retried.wait(10)
        assert handles[0].status == "waiting to retry"
        metrics = mp.get_metrics(name)
        assert metrics is not None
        assert (metrics.running_tasks, metrics.queued_tasks) == (0, 1)
    finally:
        mp.remove_task_listener(told)
        for handle in handles:
            handle.cancel()
        caller.join(10)
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.running_tasks, metrics.queued_tasks, metrics.cancelled_tasks) == (0, 0, 1)


def test_sync_tasks_held_on_a_loop_for_a_concurrency_slot_count_as_queued() -> None:
    """As the thread pool's (above): a call over max_concurrent on a running loop returns at once, held, not run."""
    name = unique_name()
    released: list[asyncio.Event] = []

    @mp.parallel(name=name, max_concurrent=1, backend="sync")
    async def work(i: int) -> int:
        await released[0].wait()
        return i

    async def main() -> tuple[list[str], int, int]:
        release = asyncio.Event()  # (made on the loop: Python 3.10's binds the loop running as it is made)
        released.append(release)
        handles = [work(i) for i in range(3)]
        try:
            metrics = mp.get_metrics(name)
            assert metrics is not None
            return [handle.status for handle in handles], metrics.running_tasks, metrics.queued_tasks
        finally:
            release.set()
            await mp.gather_async(handles)

    assert asyncio.run(main()) == (["running", "pending", "pending"], 1, 2)


def test_reading_the_metrics_walks_no_task_timeout_on_the_deadline_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the retry waits are looked for there, not the tasks' timeouts.

    Each start of a task with a timeout leaves an entry on the heap until its
    deadline, long after the task ended: a read that walked them all to find
    the retry waits took 11 ms with 200,000 tasks of an hour's timeout run (0.03
    ms before), under the heap's lock, which each such start takes too.
    """
    import weakref

    from makeparallel import _deadlines

    class Walked(list[Any]):
        walks = 0

        def __iter__(self) -> Iterator[Any]:
            Walked.walks += 1
            return super().__iter__()

    class Timeout:
        def _expire(self) -> None:
            pass

    name = unique_name()
    mp.gather([mp.parallel(name=name)(abs)(-1)])
    timeouts = [Timeout() for _ in range(100)]
    # Far in the future, and none due: the deadline thread takes none of them meanwhile.
    heap = Walked((1e12 + i, -1 - i, weakref.ref(due)) for i, due in enumerate(timeouts))
    monkeypatch.setattr(_deadlines, "_heap", heap)
    metrics = mp.get_metrics(name)
    assert metrics is not None and metrics.completed_tasks == 1
    assert name in mp.metrics_snapshot()["functions"]
    assert name in mp.get_all_metrics()
    assert Walked.walks == 0


# -- @profiled -------------------------------------------------------------------------


def test_profiled_counts_plain_calls() -> None:
    name = unique_name("profiled")
    raised: list[BaseException] = []

    @mp.profiled(name=name)
    def divide(a: float, b: float) -> float:
        """Divide a by b."""
        try:
            return a / b
        except ZeroDivisionError as error:
            raised.append(error)
            raise

    assert divide(6, 3) == 2.0  # the value itself, called in this thread
    assert divide(1, 4) == 0.25
    with pytest.raises(ZeroDivisionError) as caught:
        divide(1, 0)
    assert caught.value is raised[0]
    assert counts(name) == {"total": 3, "completed": 2, "failed": 1, "cancelled": 0, "timed_out": 0}
    assert divide.__name__ == "divide"
    assert divide.__doc__ == "Divide a by b."
    assert divide.__wrapped__(1, 2) == 0.5  # the plain function: not counted
    assert counts(name)["total"] == 3


def test_profiled_bare_uses_the_qualname() -> None:
    @mp.profiled
    def profiled_default_named(x: int) -> int:
        return x + 1

    name = profiled_default_named.__qualname__
    before = mp.get_metrics(name)
    already = 0 if before is None else before.total_tasks
    assert profiled_default_named(1) == 2
    assert counts(name)["total"] == already + 1


def test_profiled_measures_time() -> None:
    name = unique_name("profiled")
    measured: list[float] = []

    @mp.profiled(name=name)
    def work() -> None:
        measured.append(busy_for(0.002))

    wall_started = time.perf_counter()
    work()
    work()
    wall = time.perf_counter() - wall_started
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert sum(measured) * 1000 <= metrics.total_execution_time_ms <= wall * 1000
    assert metrics.average_execution_time_ms == pytest.approx(metrics.total_execution_time_ms / 2)


@pytest.mark.timeout(20)
def test_profiled_measures_an_async_function_to_its_end() -> None:
    # The wrapper was a plain function: it counted the coroutine's creation
    # (completed, in microseconds) and never what the awaits did, and it was
    # no coroutine function to inspect.iscoroutinefunction.
    name = unique_name("profiled-async")
    measured: list[float] = []

    @mp.profiled(name=name)
    async def fetch(fail: bool) -> str:
        await asyncio.sleep(0)
        measured.append(busy_for(0.002))
        if fail:
            raise LookupError("failed on purpose")
        return "fetched"

    assert asyncio.iscoroutinefunction(fetch) and inspect.iscoroutinefunction(fetch)
    coroutine = fetch(False)
    assert counts(name)["total"] == 0  # a call not awaited (yet) ran nothing
    assert asyncio.run(coroutine) == "fetched"
    with pytest.raises(LookupError, match="on purpose"):
        asyncio.run(fetch(True))
    assert counts(name) == {"total": 2, "completed": 1, "failed": 1, "cancelled": 0, "timed_out": 0}
    metrics = mp.get_metrics(name)
    assert metrics is not None and metrics.total_execution_time_ms >= sum(measured) * 1000


@pytest.mark.timeout(20)
def test_profiled_counts_a_cancelled_await_as_cancelled() -> None:
    # A cancelled coroutine (task.cancel(), asyncio.wait_for's timeout) or one
    # closed before its end counted as failed, its time as a run to the end.
    name = unique_name("profiled-async-cancel")

    @mp.profiled(name=name)
    async def wait_for_ever(started: asyncio.Event) -> None:
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(wait_for_ever(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(wait_for_ever(asyncio.Event()), 0.01)
        coroutine = wait_for_ever(asyncio.Event())
        coroutine.send(None)  # it starts, and waits (gives the future it waits on)
        coroutine.close()  # as a coroutine dropped unfinished is

    asyncio.run(main())
    assert counts(name) == {"total": 3, "completed": 0, "failed": 0, "cancelled": 3, "timed_out": 0}
    metrics = mp.get_metrics(name)
    assert metrics is not None and metrics.total_execution_time_ms == 0


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


async def async_numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("function", "kind"),
    [
        (numbers, "a generator"),
        (async_numbers, "an async generator"),
        (functools.partial(numbers, 3), "a generator"),  # seen through, as @parallel sees it
    ],
)
def test_profiled_refuses_a_generator_function_as_parallel_does(function: Any, kind: str) -> None:
    # A call only creates the generator: @profiled counted that, in microseconds, as a
    # call completed, and none of the body, which runs as the caller iterates.
    before = set(mp.get_all_metrics())
    pattern = rf"@profiled cannot measure .*: it is {kind} function .* only create the .* iterates it"
    with pytest.raises(TypeError, match=pattern):
        mp.profiled(function)
    with pytest.raises(TypeError, match=pattern):
        mp.profiled(name=unique_name("profiled-generator"))(function)
    assert set(mp.get_all_metrics()) == before  # no record was made


def test_profiled_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="callable"):
        mp.profiled(42)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="callable"):
        mp.profiled(name="x")("not callable")  # type: ignore[arg-type]



@pytest.mark.timeout(10)
def test_profiled_over_staticmethod_and_classmethod_keeps_the_binding() -> None:
    # Over @staticmethod, the wrapper was a plain function: read on an instance it bound
    # the instance, and the call raised "Profiled.double() takes 1 positional argument but
    # 2 were given". Over @classmethod, it was refused as no callable, where @parallel takes both.
    class Profiled:
        @mp.profiled
        @staticmethod
        def double(x: int) -> int:
            return 2 * x

        @mp.profiled
        @classmethod
        def named(cls, x: int) -> str:
            return f"{cls.__name__}:{x}"

        @mp.profiled
        @staticmethod
        async def later(x: int) -> int:
            return x

    class Child(Profiled):
        pass

    assert Profiled.double(2) == 4
    assert Profiled().double(3) == 6
    assert Profiled.named(1) == "Profiled:1"
    assert Child().named(2) == "Child:2"  # the class it is read on, as a class method's
    assert asyncio.run(Profiled().later(5)) == 5
    prefix = "test_profiled_over_staticmethod_and_classmethod_keeps_the_binding.<locals>.Profiled"
    for method, calls in (("double", 2), ("named", 2), ("later", 1)):
        metrics = mp.get_metrics(f"{prefix}.{method}")
        assert metrics is not None, method
        assert (metrics.total_tasks, metrics.completed_tasks) == (calls, calls), metrics


@pytest.mark.timeout(10)
def test_profiled_refuses_a_name_that_is_no_str_as_parallel_does() -> None:
    # name=5 was taken: its record was keyed by the int, which no get_metrics()
    # found, and every Prometheus scrape then failed on it ("'int' object has no
    # attribute 'replace'"); name="" fell back to the __qualname__ silently.
    # An empty str is of the right type: a ValueError, as CircuitBreaker(name="") is.
    made = mp.parallel(abs)
    before = set(mp.get_all_metrics())
    for bad, error in ((5, TypeError), (b"work", TypeError), ("", ValueError)):
        words = rf"^name must be a non-empty str \(name='fetch_page'\), or left out for the function's __qualname__, got {re.escape(repr(bad))}$"
        with pytest.raises(error, match=words):
            mp.profiled(name=bad)  # type: ignore[call-overload]
        with pytest.raises(error, match=words):
            mp.parallel(name=bad)  # type: ignore[call-overload]  # the same check, the same words
        with pytest.raises(error, match=words):
            made.options(name=bad)
    # A name passed where the function goes says where it belongs.
    with pytest.raises(TypeError, match=r"needs a callable, got 'work'.*@profiled\(name='work'\)"):
        mp.profiled("work")  # type: ignore[call-overload]
    assert set(mp.get_all_metrics()) == before  # no record was made


class Doubler:
    """A callable object, named by its class as @parallel names it."""

    def __call__(self, x: int) -> int:
        return 2 * x


def add(a: int, b: int) -> int:
    return a + b


@pytest.mark.timeout(10)
def test_profiled_names_a_partial_and_a_callable_object_as_parallel_does() -> None:
    # Neither has a __qualname__: @profiled raised AttributeError on both, where
    # @parallel records them as "partial(add)" and "Doubler".
    for plain, name in ((functools.partial(add, 1), "partial(add)"), (Doubler(), "Doubler")):
        before = mp.get_metrics(name)
        already = 0 if before is None else before.total_tasks
        assert mp.profiled(plain)(2) == plain(2)
        assert counts(name)["total"] == already + 1
        assert mp.profiled(name=unique_name())(plain)(3) == plain(3)  # a name of its own needs none


class AsyncLookup:
    """A callable object whose ``__call__`` is an ``async def``."""

    async def __call__(self, key: str) -> str:
        await asyncio.sleep(0)
        raise LookupError(key)


async def lookup(key: str) -> str:
    await asyncio.sleep(0)
    raise LookupError(key)


@pytest.mark.timeout(20)
def test_profiled_measures_an_async_partial_and_an_async_callable_object_to_their_end() -> None:
    # Only an async def's own code was looked at: a partial of one, or an object
    # whose __call__ is one (named since @profiled names them as @parallel does),
    # got the plain wrapper, which counted each coroutine's creation as a call
    # completed in microseconds, the failure its await met never.
    for fn in (functools.partial(lookup, "key"), AsyncLookup()):
        name = unique_name("profiled-async-callable")
        measured = mp.profiled(name=name)(fn)
        assert inspect.iscoroutinefunction(measured)
        coroutine = measured() if isinstance(fn, functools.partial) else measured("key")
        assert counts(name)["total"] == 0  # a call not awaited (yet) ran nothing
        with pytest.raises(LookupError, match="key"):
            asyncio.run(coroutine)
        assert counts(name) == {"total": 1, "completed": 0, "failed": 1, "cancelled": 0, "timed_out": 0}


@pytest.mark.timeout(10)
def test_profiled_twice_counts_each_call_once() -> None:
    # profiled(profiled(f)), or a function profiled by two layers of a program, counted
    # every call twice, under the one name: each layer counted it.
    name = unique_name("profiled-twice")

    def work(x: int) -> int:
        return x + 1

    inner = mp.profiled(name=name)(work)
    for outer in (mp.profiled(inner), mp.profiled(name=name)(inner), mp.profiled(mp.profiled(name=name)(work))):
        assert outer(1) == 2
    assert counts(name) == {"total": 3, "completed": 3, "failed": 0, "cancelled": 0, "timed_out": 0}

    async def fetch() -> str:
        return "fetched"

    async_name = unique_name("profiled-twice-async")
    twice = mp.profiled(mp.profiled(name=async_name)(fetch))
    assert asyncio.run(twice()) == "fetched"
    assert counts(async_name)["total"] == 1

    class Twice:
        @mp.profiled
        @classmethod
        @mp.profiled
        def named(cls) -> str:
            return cls.__name__

    assert Twice.named() == "Twice"
    assert counts(f"{Twice.__qualname__}.named")["total"] == 1


@pytest.mark.timeout(10)
def test_profiled_again_under_another_name_counts_its_calls_under_that_name_alone() -> None:
    # Two layers that give two names: a call through the outer one counts once, under
    # its name; a call through the inner one (still held by the code that made it) under its own.
    inner_name, outer_name = unique_name("profiled-inner"), unique_name("profiled-outer")

    def work(x: int) -> int:
        return x + 1

    inner = mp.profiled(name=inner_name)(work)
    outer = mp.profiled(name=outer_name)(inner)
    assert outer(1) == 2
    assert outer.__wrapped__ is work
    assert counts(outer_name)["total"] == 1
    assert counts(inner_name)["total"] == 0
    assert inner(1) == 2
    assert counts(inner_name)["total"] == 1
    assert counts(outer_name)["total"] == 1


def test_profiled_is_reset_too() -> None:
    name = unique_name("profiled")

    @mp.profiled(name=name)
    def work() -> None:
        pass

    work()
    mp.reset_metrics()
    assert counts(name)["total"] == 0
    work()
    assert counts(name) == {"total": 1, "completed": 1, "failed": 0, "cancelled": 0, "timed_out": 0}


# -- exact under concurrency -----------------------------------------------------------


def run_in_threads(target: Any, threads: int = 4) -> None:
    """Run ``target(index)`` on ``threads`` threads released together; re-raise failures."""
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait(5)
            target(index)
        except BaseException as error:  # reported below, on the test's thread
            errors.append(error)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert not any(worker.is_alive() for worker in workers)
    assert not errors, errors


@pytest.mark.timeout(30)
def test_counts_are_exact_under_concurrent_submission(backend: str) -> None:
    name = unique_name()

    @mp.parallel(backend=backend, name=name)
    def work(x: int) -> int:
        if x % 5 == 0:
            raise ValueError(x)
        return x

    def submit_and_collect(index: int) -> None:
        handles = [work(index * 500 + i) for i in range(500)]
        for handle in handles:
            handle.wait(10)

    run_in_threads(submit_and_collect)
    assert counts(name) == {"total": 2000, "completed": 1600, "failed": 400, "cancelled": 0, "timed_out": 0}
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert metrics.average_execution_time_ms == pytest.approx(metrics.total_execution_time_ms / 2000)


@pytest.mark.timeout(30)
def test_profiled_counts_are_exact_under_concurrency() -> None:
    name = unique_name("profiled")

    @mp.profiled(name=name)
    def work(x: int) -> int:
        if x % 4 == 0:
            raise ValueError(x)
        return x

    def call(index: int) -> None:
        for i in range(500):
            try:
                work(i)
            except ValueError:
                pass

    run_in_threads(call)
    assert counts(name) == {"total": 2000, "completed": 1500, "failed": 500, "cancelled": 0, "timed_out": 0}


@pytest.mark.timeout(30)
def test_snapshots_while_counting_never_lose_tasks() -> None:
    name = unique_name()
    stop = threading.Event()
    seen: list[int] = []

    @mp.parallel(backend="thread", name=name)
    def work() -> None:
        pass

    def read() -> None:
        while not stop.is_set():
            metrics = mp.get_metrics(name)
            if metrics is not None:
                seen.append(metrics.total_tasks)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        run_in_threads(lambda _: [h.wait(10) for h in [work() for _ in range(250)]])
    finally:
        stop.set()
        reader.join(10)
    assert seen == sorted(seen)  # totals only ever grow
    assert counts(name)["total"] == 1000
    assert counts(name)["completed"] == 1000


def _plain_counts(name: str) -> dict[str, int]:
    """:func:`counts` of ``name``, all zero where nothing was recorded under it."""
    if mp.get_metrics(name) is None:
        return dict.fromkeys(("total", "completed", "failed", "cancelled", "timed_out"), 0)
    return counts(name)


ONE_DONE = {"total": 1, "completed": 1, "failed": 0, "cancelled": 0, "timed_out": 0}


@pytest.mark.timeout(20)
def test_parallel_over_profiled_counts_each_call_once(backend: str) -> None:
    # The task counted the call under the function's name, and the profiled layer, which
    # the task ran, counted it again under the same name: total_tasks 2 for one call.
    def work(x: int) -> int:
        return x + 1

    work.__qualname__ = unique_name("work")  # its own record, whatever the backend
    twice = mp.parallel(backend=backend)(mp.profiled(work))
    assert twice(1).get(timeout=5) == 2
    assert counts(work.__qualname__) == ONE_DONE
    assert twice.__wrapped__ is work  # what its task runs

    # Named by @profiled alone: the parallel function counts under that name too, its copies as well.
    name = unique_name("parallel-over-profiled")

    def named(x: int) -> int:
        return x + 1

    once = mp.parallel(backend=backend)(mp.profiled(name=name)(named))
    assert once(1).get(timeout=5) == 2
    assert once.options(priority=1)(1).get(timeout=5) == 2
    assert counts(name) == {**ONE_DONE, "total": 2, "completed": 2}
    assert _plain_counts(named.__qualname__)["total"] == 0

    async def fetch() -> str:
        return "fetched"

    async_name = unique_name("parallel-over-profiled-async")
    fetched = mp.parallel(backend=backend, name=async_name)(mp.profiled(name=async_name)(fetch))
    assert fetched().get(timeout=5) == "fetched"
    assert counts(async_name) == ONE_DONE

    class Methods:
        @mp.parallel(backend=backend)
        @mp.profiled
        def method(self, x: int) -> int:
            return x + 2

        @mp.parallel(backend=backend)
        @mp.profiled
        @classmethod
        def class_method(cls, x: int) -> tuple[str, int]:
            return cls.__name__, x

        @staticmethod
        @mp.parallel(backend=backend)
        @mp.profiled
        def static_method(x: int) -> int:
            return x + 3

    names = [f"{Methods.__qualname__}.{method}" for method in ("method", "class_method", "static_method")]
    before = [_plain_counts(name) for name in names]  # (each backend's run defines the class again)
    assert Methods().method(1).get(timeout=5) == 3
    assert Methods.class_method(1).get(timeout=5) == ("Methods", 1)
    assert Methods.static_method(1).get(timeout=5) == 4
    for name, earlier in zip(names, before):
        assert {key: value - earlier[key] for key, value in counts(name).items()} == ONE_DONE, name

    class Profiled:
        @mp.profiled
        def method(self, x: int) -> int:
            return x + 4

    earlier = _plain_counts(Profiled.method.__qualname__)
    assert mp.parallel(backend=backend)(Profiled().method)(1).get(timeout=5) == 5  # made of the bound method
    assert {key: value - earlier[key] for key, value in counts(Profiled.method.__qualname__).items()} == ONE_DONE


@pytest.mark.timeout(20)
def test_parallel_over_profiled_under_another_name_counts_under_that_name_alone(backend: str) -> None:
    # As a function profiled again under another name: a call through the parallel function counts
    # under its name; a call of the profiled function itself, under the profiled one's.
    inner_name, outer_name = unique_name("profiled-inner"), unique_name("parallel-outer")

    def work(x: int) -> int:
        return x + 1

    inner = mp.profiled(name=inner_name)(work)
    outer = mp.parallel(backend=backend, name=outer_name)(inner)
    assert outer(1).get(timeout=5) == 2
    assert counts(outer_name) == ONE_DONE
    assert _plain_counts(inner_name)["total"] == 0
    assert inner(1) == 2
    assert counts(inner_name) == ONE_DONE
    assert counts(outer_name)["total"] == 1


@pytest.mark.timeout(20)
def test_a_map_of_parallel_over_profiled_counts_as_one_of_the_parallel_function() -> None:
    # The map ran the profiled layer per item: each item counted under the function's name
    # beside the chunks under "<name> [map]", where a map of the @parallel function counts chunks only.
    name = unique_name("mapped")

    def work(x: int) -> int:
        return x + 1

    mapped = mp.parallel(name=name)(mp.profiled(name=name)(work))
    assert mp.parallel_map(mapped, [1, 2, 3], chunksize=3) == [2, 3, 4]
    assert _plain_counts(name)["total"] == 0
    assert counts(f"{name} [map]") == ONE_DONE


@pytest.mark.timeout(20)
def test_profiled_over_parallel_is_the_parallel_function_measured_to_its_task_end() -> None:
    # The profiled layer timed the submission, which returns the handle at once, and counted
    # it as a completed call beside the task, under the same name, as the task still ran.
    gate = threading.Event()
    name = unique_name("profiled-over-parallel")

    def wait(x: int) -> int:
        gate.wait(10)
        return x

    wait.__qualname__ = name  # the name both record under: its own, as no other test's
    task = mp.parallel(wait)
    outer = mp.profiled(task)
    handle = outer(1)
    try:
        assert counts(name) == {"total": 1, "completed": 0, "failed": 0, "cancelled": 0, "timed_out": 0}
    finally:
        gate.set()
    assert handle.get(timeout=5) == 1
    assert counts(name) == ONE_DONE
    assert outer is task and mp.profiled(name=name)(task) is task

    class Methods:
        @mp.profiled
        @mp.parallel
        def method(self, x: int) -> int:
            return x + 2

        @mp.profiled
        @mp.parallel
        @classmethod
        def class_method(cls, x: int) -> tuple[str, int]:
            return cls.__name__, x

        @mp.profiled
        @staticmethod
        @mp.parallel
        def static_method(x: int) -> int:
            return x + 3

    instance = Methods()
    assert mp.profiled(instance.method)(1).get(timeout=5) == 3
    assert instance.method(1).get(timeout=5) == 3
    assert Methods.class_method(1).get(timeout=5) == ("Methods", 1)
    assert Methods.class_method.options(priority=1)(1).get(timeout=5) == ("Methods", 1)
    assert Methods.static_method(1).get(timeout=5) == 4
    assert counts(f"{Methods.__qualname__}.method")["total"] == 2
    for method in ("class_method", "static_method"):
        assert counts(f"{Methods.__qualname__}.{method}")["total"] == (2 if method == "class_method" else 1), method


@pytest.mark.timeout(20)
def test_profiled_over_parallel_under_another_name_is_a_copy_named_so() -> None:
    # As a function profiled again under another name: the copy's calls count under its name
    # alone, and those of the parallel function (which code holding it still calls) under its own.
    name, other = unique_name("parallel-own"), unique_name("profiled-other")

    def work(x: int) -> int:
        return x + 1

    task = mp.parallel(name=name)(work)
    renamed = mp.profiled(name=other)(task)
    assert isinstance(renamed, type(task)) and renamed is not task
    assert renamed(1).get(timeout=5) == 2
    assert counts(other) == ONE_DONE
    assert _plain_counts(name)["total"] == 0
    assert task(1).get(timeout=5) == 2
    assert counts(name) == ONE_DONE

    class Methods:
        @mp.profiled(name=other)
        @mp.parallel(name=name)
        @classmethod
        def class_method(cls, x: int) -> tuple[str, int]:
            return cls.__name__, x

    assert Methods.class_method(1).get(timeout=5) == ("Methods", 1)
    assert counts(other)["total"] == 2 and counts(name)["total"] == 1


@pytest.mark.timeout(20)
def test_an_executor_task_of_a_profiled_function_counts_once() -> None:
    # The executor counted its task under the function's name, and the profiled wrapper,
    # which the task ran, counted the same call again under that name: total 2 for one call.
    def work(x: int) -> int:
        return x + 1

    work.__qualname__ = unique_name("executor-work")
    measured = mp.profiled(work)
    with mp.Executor(max_workers=2) as executor:
        assert executor.submit(measured, 1).result(timeout=5) == 2
        assert counts(work.__qualname__) == ONE_DONE
        assert list(executor.map(measured, [1, 2])) == [2, 3]  # one task per call
        assert counts(work.__qualname__) == {**ONE_DONE, "total": 3, "completed": 3}

    # Named by @profiled: counted under that name alone, as @parallel over it counts.
    name = unique_name("executor-profiled")

    def named(x: int) -> int:
        return x + 1

    with mp.Executor(max_workers=2) as executor:
        assert executor.submit(mp.profiled(name=name)(named), 1).result(timeout=5) == 2
    assert counts(name) == ONE_DONE
    assert _plain_counts(named.__qualname__)["total"] == 0

    class Profiled:
        @mp.profiled(name=unique_name("executor-method"))
        def method(self, x: int) -> int:
            return x + 4

    record = mp.profiled(Profiled.method).__profiled__.record  # type: ignore[attr-defined]
    with mp.Executor(max_workers=2) as executor:
        assert executor.submit(Profiled().method, 1).result(timeout=5) == 5
    assert counts(record) == ONE_DONE


@mp.profiled
def work_in_tasks(x: int) -> tuple[int, int]:
    """``x + 1``, and how many calls the profiled layer counted so far, in this process."""
    metrics = mp.get_metrics("work_in_tasks")
    return x + 1, 0 if metrics is None else metrics.total_tasks


@mp.profiled
async def fetch_in_tasks(x: int) -> int:
    return x + 1


def own_wrapper(fn: Any) -> Any:
    """A program's own decorator, made with functools.wraps (which copies the wrapper's attributes)."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awaiting(*args: Any, **kwargs: Any) -> Any:
            return await fn(*args, **kwargs)

        return awaiting

    @functools.wraps(fn)
    def calling(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return calling


# A @profiled function as a task may hold it: each call is the task's, to count once, under its name.
HOLDING_PROFILED: dict[str, Callable[[Any], Any]] = {
    "partial": lambda fn: functools.partial(fn),
    "partial of a partial": lambda fn: functools.partial(functools.partial(fn)),
    "own wrapper": own_wrapper,
    "own wrapper of own wrapper": lambda fn: own_wrapper(own_wrapper(fn)),
    "partial of own wrapper": lambda fn: functools.partial(own_wrapper(fn)),
}


def _count_of(name: str, before: dict[str, int]) -> dict[str, int]:
    return {key: value - before[key] for key, value in _plain_counts(name).items()}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync", "process"])
@pytest.mark.parametrize("hold", HOLDING_PROFILED.values(), ids=HOLDING_PROFILED.keys())
def test_a_task_of_a_partial_or_a_wrapper_of_a_profiled_function_counts_each_call_once(
    backend: str, hold: Callable[[Any], Any]
) -> None:
    # The task counted the call (under "partial(...)" for a partial), and the profiled layer
    # it ran counted it again: twice for one call (on processes, once here and once in the worker).
    name = "work_in_tasks"
    task = mp.parallel(backend=backend)(hold(work_in_tasks))
    before = _plain_counts(name)
    value, counted_where_it_ran = task(1).get(timeout=30)
    assert value == 2
    assert _count_of(name, before) == ONE_DONE
    if backend == "process":  # the worker counted no call of its own
        assert counted_where_it_ran == 0
    assert mp.get_metrics("partial(work_in_tasks)") is None

    # A map of it counts chunks ("<name> [map]"), as a map of the parallel function over the profiled one.
    before, chunks = _plain_counts(name), _plain_counts(f"{name} [map]")
    assert [value for value, _ in mp.parallel_map(task, [1, 2], chunksize=2)] == [2, 3]
    assert _count_of(name, before)["total"] == 0
    assert _count_of(f"{name} [map]", chunks) == ONE_DONE


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("hold", HOLDING_PROFILED.values(), ids=HOLDING_PROFILED.keys())
def test_a_task_of_a_partial_or_a_wrapper_of_a_profiled_async_function_counts_each_call_once(
    backend: str, hold: Callable[[Any], Any]
) -> None:
    name = "fetch_in_tasks"
    task = mp.parallel(backend=backend)(hold(fetch_in_tasks))
    before = _plain_counts(name)
    assert task(1).get(timeout=30) == 2
    assert _count_of(name, before) == ONE_DONE
    assert mp.get_metrics("partial(fetch_in_tasks)") is None
    before = _plain_counts(name)
    assert asyncio.run(fetch_in_tasks(1)) == 2  # called itself, it is measured as ever
    assert _count_of(name, before) == ONE_DONE


@pytest.mark.timeout(20)
def test_a_profiled_function_called_by_a_task_of_its_own_wrapper_again_counts_those_calls() -> None:
    # Only the call the task makes is the task's: the profiled function called again, inside
    # it or after it on the same thread, counts as a call.
    name = unique_name("called-again")

    @mp.profiled(name=name)
    def step(n: int) -> int:
        return 0 if n == 0 else 1 + step(n - 1)

    task = mp.parallel(backend="sync")(own_wrapper(step))
    assert task(3).get(timeout=5) == 3
    assert counts(name)["total"] == 1 + 3  # the task, and the three calls step made of itself
    assert step(0) == 0
    assert counts(name)["total"] == 5


def _gathering(fn: Any) -> Any:
    """An async wrapper that makes its three calls of ``fn`` at once (asyncio.gather: a Task, and a context copy, each)."""

    @functools.wraps(fn)
    async def gathering(x: int) -> list[int]:
        return list(await asyncio.gather(*(fn(x) for _ in range(3))))

    return gathering


def _on_threads(fn: Any) -> Any:
    """A wrapper that makes its three calls of ``fn`` on threads, each in a copy of its context (as asyncio.to_thread does)."""

    @functools.wraps(fn)
    def on_threads(x: int) -> list[int]:
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as threads:
            calls = [threads.submit(contextvars.copy_context().run, fn, x) for _ in range(3)]
            return [call.result(timeout=20) for call in calls]

    return on_threads


# A task's function whose calls of the profiled function run in copies of the task's context.
IN_CONTEXT_COPIES: dict[str, tuple[Callable[[Any], Any], bool]] = {
    "asyncio.gather": (_gathering, True),
    "threads, each in a context copy": (_on_threads, False),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["thread", "sync"])
@pytest.mark.parametrize("copies", IN_CONTEXT_COPIES.values(), ids=IN_CONTEXT_COPIES.keys())
def test_a_task_whose_calls_of_a_profiled_function_run_in_copies_of_its_context_counts_all_but_one(
    backend: str, copies: tuple[Callable[[Any], Any], bool]
) -> None:
    # The task's own call is the first of its context: a copy of that context (each Task of
    # asyncio.gather, each asyncio.to_thread) found it unclaimed again, so no call was counted.
    wrap, is_async = copies
    name = unique_name("copies")
    if is_async:

        async def plain(x: int) -> int:
            return x + 1

    else:

        def plain(x: int) -> int:  # type: ignore[misc]
            return x + 1

    task = mp.parallel(backend=backend)(wrap(mp.profiled(name=name)(plain)))
    assert task(1).get(timeout=20) == [2, 2, 2]
    assert counts(name)["total"] == 1 + 2  # the task (with one call), and the two other calls


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_copy_of_a_tasks_context_run_after_the_task_counts_its_call_of_the_profiled_function(backend: str) -> None:
    # The task made no call of its own; a copy of its context, run once it ended, still found
    # the call to be the task's and counted nothing.
    name = unique_name("late-copy")
    copied: list[contextvars.Context] = []

    @mp.profiled(name=name)
    def step(x: int) -> int:
        return x + 1

    @functools.wraps(step)
    def keeping_a_copy(x: int) -> int:
        copied.append(contextvars.copy_context())
        return x

    task = mp.parallel(backend=backend)(keeping_a_copy)
    assert task(1).get(timeout=20) == 1
    assert counts(name)["total"] == 1
    assert copied[0].run(step, 1) == 2
    assert counts(name)["total"] == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("how", ["submit", "map"])
@pytest.mark.parametrize("hold", HOLDING_PROFILED.values(), ids=HOLDING_PROFILED.keys())
def test_an_executor_task_of_a_partial_or_a_wrapper_of_a_profiled_function_counts_each_call_once(
    backend: str, how: str, hold: Callable[[Any], Any]
) -> None:
    # As @parallel over them: the task counted the call (under "partial(...)" for a partial),
    # and the profiled layer it ran counted it again (on processes, in the worker).
    name = "work_in_tasks"
    before = _plain_counts(name)
    with mp.Executor(backend=backend, max_workers=1) as executor:
        if how == "submit":
            results = [executor.submit(hold(work_in_tasks), 1).result(timeout=30)]
            assert [value for value, _ in results] == [2]
        else:  # one task per call
            results = list(executor.map(hold(work_in_tasks), [1, 2]))
            assert [value for value, _ in results] == [2, 3]
    calls = len(results)
    assert _count_of(name, before) == {**ONE_DONE, "total": calls, "completed": calls}
    if backend == "process":  # the worker counted no call of its own
        assert [counted_where_it_ran for _, counted_where_it_ran in results] == [0] * calls
    assert mp.get_metrics("partial(work_in_tasks)") is None
