"""Code written for makeparallel 0.2 runs here: its documented examples, run against this library.

Each test follows an example of 0.2's README or docs (cited by section), with the
placeholders of the example (``process(data)``, 20 million items) made small and
real. Where 0.2 behaved differently, the test checks the behaviour that
``docs/migrating-from-0.2.md`` documents; ``test_docs.py`` runs the guide's own
examples and ``test_migration_guide.py`` checks that they cover it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import Flags, hold_the_pool, poll_until_stopped, wait_until

import makeparallel as mp

# -- README, "Quick Start" and "@parallel - Full-featured parallel execution" -----------


def test_quick_start() -> None:
    from makeparallel import parallel

    @parallel
    def cpu_intensive_task(n: int) -> int:
        return sum(i * i for i in range(n))

    handle = cpu_intensive_task(20_000)
    assert handle.get() == sum(i * i for i in range(20_000))
    assert handle.is_ready()


def test_full_featured_parallel_example() -> None:
    from makeparallel import parallel, report_progress

    @parallel
    def cpu_intensive_task(n: int) -> int:
        for i in range(0, n, n // 10):
            report_progress(i / n)
        return sum(i * i for i in range(n))

    seen: list[Any] = []
    handle = cpu_intensive_task(20_000, timeout=5.0)
    handle.on_progress(lambda p: seen.append(("progress", p)))
    handle.on_complete(lambda result: seen.append(("complete", result)))
    handle.on_error(lambda error: seen.append(("error", error)))
    result = handle.get()
    assert result == sum(i * i for i in range(20_000))
    assert ("complete", result) in seen
    assert handle.try_get() == result
    assert handle.get_timeout() == 5.0
    handle.cancel()  # too late: it ended
    assert not handle.is_cancelled()
    assert isinstance(handle.get_task_id(), int)
    assert handle.elapsed_time() >= 0
    assert handle.get_progress() == 1.0
    handle.set_metadata("user_id", "user-123")
    assert handle.get_all_metadata() == {"user_id": "user-123"}


def test_try_get_is_none_while_the_task_runs(gate: threading.Event) -> None:
    @mp.parallel
    def waits() -> str:
        assert gate.wait(10)
        return "done"

    handle = waits()
    assert handle.try_get() is None  # "Returns None if not ready"
    gate.set()
    assert handle.get() == "done"


# -- README, "@parallel_fast", "@parallel_pool", "@parallel_priority" ----------------------


def test_parallel_fast_and_pool() -> None:
    from makeparallel import AsyncHandleFast, parallel_fast, parallel_pool

    @parallel_fast
    def fast_task(x: int) -> int:
        return x**2

    @parallel_pool
    def small_task(x: int) -> int:
        return x * 2

    handle = fast_task(10)
    assert isinstance(handle, AsyncHandleFast)  # 0.2's fast handle is the one handle here
    assert handle.get() == 100
    handles = [small_task(i) for i in range(1000)]
    assert [h.get() for h in handles] == [2 * i for i in range(1000)]


def test_parallel_priority_with_the_priority_worker(gate: threading.Event) -> None:
    from makeparallel import parallel_priority, start_priority_worker, stop_priority_worker

    assert start_priority_worker() is None  # accepted; nothing to start here
    order: list[str] = []
    blockers = hold_the_pool(gate)

    @parallel_priority
    def task(data: str) -> str:
        order.append(data)
        return data.upper()

    low = task("data1", priority=1)
    high = task("data2", priority=10)  # "Executes first"
    gate.set()
    assert low.wait(30) and high.wait(30)  # with a timeout: the pool runs them, not this thread
    assert low.get() == "DATA1"
    assert high.get() == "DATA2"
    assert order == ["data2", "data1"]
    assert stop_priority_worker() is None
    mp.gather(blockers)


# -- README, "Batch Processing" -------------------------------------------------------------


def process_data(item: int) -> int:
    return item * 2


def test_parallel_map_positional_and_with_the_0_2_keywords() -> None:
    from makeparallel import parallel_map

    my_large_list = list(range(10000))
    expected = [2 * i for i in my_large_list]
    assert parallel_map(process_data, my_large_list) == expected
    assert parallel_map(func=process_data, items=my_large_list) == expected
    assert parallel_map(process_data, items=my_large_list) == expected
    assert parallel_map(fn=process_data, iterable=my_large_list) == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"items": [1]}, r"needs fn \(or func=, its 0.2 name\)"),
        ({"func": process_data}, r"needs iterable \(or items=, its 0.2 name\)"),
        ({"fn": process_data, "func": process_data, "items": [1]}, "both fn and func="),
        ({"func": process_data, "iterable": [1], "items": [1]}, "both iterable and items="),
    ],
)
def test_parallel_map_names_each_argument_once(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        mp.parallel_map(**arguments)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"func": 5, "items": [1]}, r"^func must be callable, got 5$"),
        ({"func": process_data, "items": 5}, r"^items must be an iterable .*, got 5 \(int\)$"),
        ({"fn": 5, "items": [1]}, r"^fn must be callable, got 5$"),
        ({"func": process_data, "iterable": 5}, r"^iterable must be an iterable .*, got 5 \(int\)$"),
        ({"fn": 5, "iterable": [1]}, r"^fn must be callable, got 5$"),
    ],
)
def test_parallel_map_names_a_bad_argument_as_given(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        mp.parallel_map(**arguments)


def test_gather_example() -> None:
    from makeparallel import gather, parallel

    @parallel
    def task(x: int) -> int:
        return x**2

    handles = [task(i) for i in range(10)]
    assert gather(handles, on_error="raise") == [i**2 for i in range(10)]


# -- README, "ParallelContext" ----------------------------------------------------------------


def test_parallel_context_example_with_every_0_2_form_of_submit() -> None:
    from makeparallel import ParallelContext, parallel

    @parallel
    def task(x: int) -> int:
        return x * 2

    with ParallelContext(timeout=10.0) as ctx:
        handle1 = ctx.submit(task, (5,))
        handle2 = ctx.submit(task, (10,))
        handle3 = ctx.submit(task, args=(15,))
        handle4 = ctx.submit(func=task, args=(20,))
        handle5 = ctx.submit(func=task, args=[25])
    assert [h.get() for h in (handle1, handle2, handle3, handle4, handle5)] == [10, 20, 30, 40, 50]


def test_submit_passes_args_to_a_function_that_has_a_parameter_of_that_name() -> None:
    def keeps(args: tuple[int, ...], func: str = "none") -> str:
        return f"{args} {func}"

    with mp.ParallelContext() as ctx:
        own_args = ctx.submit(keeps, args=(1, 2))
        both = ctx.submit(keeps, args=(3,), func="mine")
        by_keyword = ctx.submit(func=keeps, args=(4,))
    assert own_args.get() == "(1, 2) none"
    assert both.get() == "(3,) mine"
    assert by_keyword.get() == "(4,) none"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ctx: ctx.submit(), "needs the function to run"),
        (lambda ctx: ctx.submit(args=(1,)), "needs the function to run"),
        (lambda ctx: ctx.submit(process_data, 1, args=(2,)), "positional arguments and args= too"),
        (lambda ctx: ctx.submit(process_data, args=3), r"args= must be a tuple or list of arguments, got 3"),
        (lambda ctx: ctx.submit(None), "needs a callable .*, got None"),
        (lambda ctx: ctx.submit(func=None, args=(1,)), "needs a callable .*, got None"),
        (lambda ctx: ctx.map(None, [1]), "needs a callable .*, got None"),
        (lambda ctx: ctx.submit(5), "needs a callable .*, got 5"),
    ],
)
@pytest.mark.timeout(20)
def test_bad_submit_calls_say_what_to_do(call: Any, message: str) -> None:
    with mp.ParallelContext() as ctx:
        with pytest.raises(TypeError, match=message):
            call(ctx)
    assert ctx.handles == []


# -- README, "Retry Logic"; "Example 2: Web Scraping with Retry Logic"; "Backpressure" ---------


def test_retry_example() -> None:
    from makeparallel import retry

    calls: list[int] = []

    @retry(max_retries=3)
    def flaky_api_call() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("flaky")
        return "response"

    assert flaky_api_call() == "response"  # "Will retry up to 3 times on failure"
    assert len(calls) == 4


def test_retry_backoff_over_parallel_pool_example() -> None:
    from makeparallel import parallel_pool, retry_backoff

    calls: list[str] = []

    @retry_backoff(max_attempts=3, backoff="exponential", initial_delay=0.001, max_delay=0.01)
    @parallel_pool
    def fetch_url(url: str) -> str:
        calls.append(url)
        if len(calls) < 2:
            raise ConnectionError(url)
        return f"text of {url}"

    urls = ["https://example.com/page1"]
    handles = [fetch_url(url) for url in urls]
    assert [h.get() for h in handles] == ["text of https://example.com/page1"]
    assert len(calls) == 2


def test_configure_memory_limit_example() -> None:
    from makeparallel import configure_memory_limit

    configure_memory_limit(max_memory_percent=80.0)
    try:
        assert mp.parallel(abs)(-3).get() == 3
    finally:
        configure_memory_limit(None)


# -- README, "Performance Monitoring" ------------------------------------------------------------


def test_profiled_example() -> None:
    from makeparallel import PerformanceMetrics, get_all_metrics, get_metrics, profiled

    @profiled
    def tracked_function(x: int) -> int:
        return x**2

    for i in range(100):
        tracked_function(i)
    metrics = get_metrics("tracked_function")  # defined in a function: found by its short name
    assert isinstance(metrics, PerformanceMetrics)
    assert metrics.total_tasks == 100
    assert metrics.completed_tasks == 100
    assert metrics.failed_tasks == 0
    assert metrics.average_execution_time_ms >= 0
    all_metrics = get_all_metrics()
    assert all_metrics["tracked_function"]["total_tasks"] == 100


# A method name that no test's top-level function has: a function named so, recorded by an
# earlier test, is what the name finds, and the next test's lookups were not ambiguous.
class Worker:
    @mp.parallel
    def step(self) -> str:
        return "worker"


class Crawler:
    @mp.parallel
    def step(self) -> str:
        return "crawler"

    @mp.parallel
    def fetch(self) -> str:
        return "page"


def test_metrics_by_short_name_when_it_is_unambiguous() -> None:
    def outer() -> mp.AsyncHandle[int]:
        @mp.parallel
        def nested_only(x: int) -> int:
            return x

        return nested_only(1)

    outer().get()
    Crawler().fetch().get()
    full = "test_metrics_by_short_name_when_it_is_unambiguous.<locals>.outer.<locals>.nested_only"
    by_full = mp.get_metrics(full)
    by_short = mp.get_metrics("nested_only")
    assert by_full is not None and by_short is not None
    assert by_short.name == full
    assert by_short.total_tasks == by_full.total_tasks >= 1
    assert mp.get_metrics("Crawler.fetch") == mp.get_metrics("fetch")

    everything = mp.get_all_metrics()
    assert isinstance(everything, dict) and isinstance(everything, mp.MetricsByName)
    assert "nested_only" in everything
    assert everything["nested_only"] == everything[full]
    assert everything.get("nested_only") == everything[full]
    assert full in list(everything) and "nested_only" not in list(everything)  # iteration: full names


def test_an_ambiguous_short_name_is_found_by_no_lookup() -> None:
    Worker().step().get()
    Crawler().step().get()
    everything = mp.get_all_metrics()
    assert "step" not in everything
    assert everything.get("step") is None
    assert everything.get("step", "default") == "default"
    with pytest.raises(KeyError, match=r"'step' is the short name of 2 functions: 'Crawler.step', 'Worker.step'; use the full name"):
        everything["step"]
    with pytest.raises(KeyError, match="'Crawler.step', 'Worker.step'"):
        mp.get_metrics("step")
    assert mp.get_metrics("Worker.step") is not None
    assert everything["Crawler.step"].total_tasks >= 1


def test_unknown_names_are_not_found() -> None:
    everything = mp.get_all_metrics()
    assert mp.get_metrics("no_such_function") is None
    assert "no_such_function" not in everything
    assert everything.get("no_such_function") is None
    assert 3 not in everything  # type: ignore[comparison-overlap]
    with pytest.raises(KeyError, match="no_such_function"):
        everything["no_such_function"]


def test_a_given_name_keeps_the_short_name_only_if_it_ends_with_it() -> None:
    @mp.parallel(name="daily report")
    def daily() -> int:
        return 1

    @mp.parallel(name="nightly.weekly")
    def weekly() -> int:
        return 7

    daily().get()
    weekly().get()
    assert mp.get_metrics("daily report") is not None
    assert mp.get_metrics("daily") is None  # the given name does not end with ".daily"
    assert mp.get_metrics("weekly") == mp.get_metrics("nightly.weekly")
    assert mp.get_metrics("nightly") is None


# -- README, "Advanced Configuration" --------------------------------------------------------------


def test_thread_pool_configuration_example() -> None:
    from makeparallel import configure_thread_pool, get_thread_pool_info

    configure_thread_pool(num_threads=8, stack_size=2 * 1024 * 1024)
    info = get_thread_pool_info()
    assert info["current_num_threads"] == 8
    assert info["configured"] is True


def test_thread_pool_is_not_configured_until_configure_thread_pool_is_called() -> None:
    code = (
        "import makeparallel as mp\n"
        "print(mp.get_thread_pool_info()['configured'])\n"
        "mp.configure_thread_pool(2)\n"
        "print(mp.get_thread_pool_info()['configured'])\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKEPARALLEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_backpressure_example(gate: threading.Event) -> None:
    from makeparallel import set_max_concurrent_tasks

    set_max_concurrent_tasks(100)
    set_max_concurrent_tasks(max_tasks=1)  # 0.2's keyword

    @mp.parallel
    def held() -> str:
        assert gate.wait(10)
        return "held"

    first = held()
    submitted = threading.Event()
    second: list[mp.AsyncHandle[str]] = []
    submitter = threading.Thread(target=lambda: (second.append(held()), submitted.set()))
    submitter.start()
    assert not submitted.wait(0.2), "a second task was admitted over max_tasks=1"
    set_max_concurrent_tasks(0)  # 0: no limit, as in queue.Queue(maxsize=0)
    assert submitted.wait(10), "max_tasks=0 kept the submitter waiting"
    gate.set()
    submitter.join(10)
    assert first.get() == second[0].get() == "held"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: mp.set_max_concurrent_tasks(), TypeError, "needs the limit"),
        (lambda: mp.set_max_concurrent_tasks(2, max_tasks=3), TypeError, "both limit and max_tasks="),
        (lambda: mp.set_max_concurrent_tasks(max_tasks=-1), ValueError, "^max_tasks must .* no limit, got -1"),
        (lambda: mp.set_max_concurrent_tasks(max_tasks="2"), TypeError, "^max_tasks must .* no limit, got '2'"),
        (lambda: mp.set_max_concurrent_tasks(-1), ValueError, "^limit must .* no limit, got -1"),
    ],
)
def test_bad_max_concurrent_tasks_calls(call: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_graceful_shutdown_example() -> None:
    from makeparallel import get_active_task_count, reset_shutdown, shutdown

    assert get_active_task_count() == 0
    assert shutdown(timeout_secs=30.0, cancel_pending=True) is True
    reset_shutdown()
    assert mp.parallel(abs)(-1).get() == 1


# -- README, "Progress Reporting and Callbacks"; docs/QUICK_REFERENCE.md -------------------------


def test_progress_callbacks_example() -> None:
    from makeparallel import parallel, report_progress

    @parallel
    def long_task() -> str:
        for i in range(100):
            report_progress(i / 100.0)
        return "done"

    seen: list[float] = []
    finished: list[str] = []
    handle = long_task()
    handle.on_progress(seen.append)
    handle.on_complete(finished.append)
    assert handle.get() == "done"
    assert finished == ["done"]
    # 1.0 only where the task ended first: a callback added then gets get_progress()'s 1.0.
    assert seen == sorted(seen) and all(0.0 <= p < 1.0 for p in seen[:-1]) and 0.0 <= seen[-1] <= 1.0


def test_report_progress_with_0_2_keywords_and_a_task_id(gate: threading.Event) -> None:
    @mp.parallel
    def steps() -> str:
        assert gate.wait(10)
        mp.report_progress(progress=0.25)
        mp.report_progress(progress=0.5, task_id=None)
        mp.report_progress(0.75, mp.get_current_task_id())  # 0.2's second argument: a task id
        mp.report_progress(0.8, "a message")  # ours: a message
        return "ok"

    reports: list[tuple[float, str | None]] = []
    handle = steps()
    handle.on_progress(lambda p: reports.append((p, handle.get_progress_message())))
    gate.set()
    assert handle.get() == "ok"
    assert wait_until(lambda: len(reports) == 5), reports  # the success's 1.0 comes from the task's thread
    assert reports == [(0.25, None), (0.5, None), (0.75, None), (0.8, "a message"), (1.0, "a message")]


def test_report_progress_for_a_task_from_a_thread_it_started() -> None:
    progress_seen = threading.Event()

    @mp.parallel
    def with_helper() -> float:
        task_id = mp.get_current_task_id()
        helper = threading.Thread(target=mp.report_progress, args=(0.6,), kwargs={"task_id": task_id})
        helper.start()
        helper.join(10)
        assert progress_seen.wait(10)
        return 1.0

    handle = with_helper()
    handle.on_progress(lambda p: progress_seen.set() if p == 0.6 else None)
    assert handle.get() == 1.0


def test_report_progress_for_an_ended_or_unknown_task_does_nothing() -> None:
    @mp.parallel
    def own_id() -> int | None:
        return mp.get_current_task_id()

    handle = own_id()
    task_id = handle.get()
    assert task_id == handle.get_task_id()
    assert mp.report_progress(0.5, task_id) is None
    assert handle.get_progress() == 1.0
    assert mp.report_progress(0.5, task_id=10**9) is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mp.report_progress(0.5, 3, task_id=4), "a task id twice"),
        (lambda: mp.report_progress(0.5, progress=0.5), "both fraction and progress="),
        (lambda: mp.report_progress(0.5, task_id="task_1"), "task_id must be an int"),
        (lambda: mp.report_progress(), "progress must be a real number"),
    ],
)
def test_bad_report_progress_calls(call: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        call()


# -- the handle methods of 0.2 ------------------------------------------------------------------


def test_wait_takes_timeout_secs(gate: threading.Event) -> None:
    @mp.parallel
    def waits() -> str:
        assert gate.wait(10)
        return "done"

    handle = waits()
    assert handle.wait(timeout_secs=0.01) is False
    gate.set()
    assert handle.wait(timeout_secs=10) is True
    with pytest.raises(TypeError, match="either timeout or timeout_secs"):
        handle.wait(1, timeout_secs=1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("seconds", "error"), [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)])
def test_a_bad_timeout_secs_is_named_as_given(seconds: Any, error: type[Exception]) -> None:
    handle = mp.parallel(abs)(-2)
    with pytest.raises(error, match=r"^timeout_secs must be a number of seconds"):
        handle.wait(timeout_secs=seconds)
    with pytest.raises(error, match=r"^timeout must be a number of seconds"):
        handle.wait(seconds)


def test_get_name_is_the_function_name_and_get_timeout_the_task_timeout() -> None:
    class Service:
        @mp.parallel(timeout=30)
        def method(self) -> int:
            return 1

    @mp.parallel(name="custom")
    def renamed() -> int:
        return 2

    handle = Service().method()
    assert handle.get_name() == "method"  # 0.2: __name__
    assert handle.name.endswith("Service.method")  # metrics: __qualname__
    assert handle.get_timeout() == 30
    assert renamed().get_name() == "renamed"
    assert renamed().get_timeout() is None
    assert renamed(timeout=2.5).get_timeout() == 2.5


def test_cancel_with_timeout_of_a_queued_task_is_true_at_once(gate: threading.Event) -> None:
    blockers = hold_the_pool(gate)
    ran = threading.Event()

    @mp.parallel
    def queued() -> None:
        ran.set()

    handle = queued()
    assert handle.cancel_with_timeout(0) is True
    assert handle.is_cancelled()
    gate.set()
    mp.gather(blockers)
    assert not ran.is_set()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("timeout", [30, threading.TIMEOUT_MAX * 10], ids=["seconds", "longer_than_a_lock_accepts"])
def test_cancel_with_timeout_waits_for_a_cooperative_task_to_stop(gate: threading.Event, timeout: float) -> None:
    started = threading.Event()
    stopped = threading.Event()

    @mp.parallel
    def cooperative() -> None:
        started.set()
        try:
            poll_until_stopped(gate)
        finally:
            stopped.set()

    handle = cooperative()
    assert started.wait(10)
    assert handle.cancel_with_timeout(timeout) is True
    assert stopped.is_set()  # its code returned before the call did
    assert handle.is_cancelled()


def test_cancel_with_timeout_is_false_while_the_code_still_runs(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel
    def ignores_cancellation() -> None:
        started.set()
        assert gate.wait(30)

    handle = ignores_cancellation()
    assert started.wait(10)
    assert handle.cancel_with_timeout(0.05) is False
    assert handle.is_cancelled()  # the handle ended at once; the code goes on
    gate.set()
    assert handle.cancel_with_timeout(30) is True


def test_cancel_with_timeout_waits_for_a_timed_out_task_too(gate: threading.Event) -> None:
    started = threading.Event()

    @mp.parallel(timeout=0.05)
    def overruns() -> None:
        started.set()
        assert gate.wait(30)

    handle = overruns()
    assert started.wait(10)
    assert handle.wait(30)
    with pytest.raises(mp.TaskTimeoutError):
        handle.get()
    assert handle.cancel_with_timeout(0.01) is False
    gate.set()
    assert handle.cancel_with_timeout(30) is True


def test_cancel_with_timeout_of_a_finished_task_is_true() -> None:
    handle = mp.parallel(abs)(-2)
    assert handle.get() == 2
    assert handle.cancel_with_timeout(0) is True
    assert not handle.is_cancelled()


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("timeout", "error"), [(None, TypeError), (-1, ValueError), ("1", TypeError)])
def test_cancel_with_timeout_needs_a_timeout(timeout: Any, error: type[Exception]) -> None:
    handle = mp.parallel(abs)(-2)
    with pytest.raises(error, match="timeout_secs must be a number of seconds") as raised:
        handle.cancel_with_timeout(timeout)
    assert "None" not in str(raised.value).replace("got None", ""), "it offered None, which it refuses"


# -- the same on the process backend -------------------------------------------------------------

pytest_process = pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now")


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("teardown")


def loop_until_cancelled(flags: Flags) -> str:
    flags.set("started")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        mp.check_cancelled()
        time.sleep(0.01)  # workload, in the worker
    return "never cancelled"


def stuck_until_released(flags: Flags) -> str:
    flags.set("started")
    assert flags.wait_for_release("go")
    return "released"


@pytest_process
@pytest.mark.timeout(60)
def test_cancel_with_timeout_on_the_process_backend(flags: Flags) -> None:
    cooperative = mp.parallel(backend="process")(loop_until_cancelled)(flags)
    assert flags.wait("started")
    assert cooperative.cancel_with_timeout(30) is True

    flags_two = Flags(flags.path("two"))
    os.mkdir(flags_two.directory)
    stuck = mp.parallel(backend="process")(stuck_until_released)(flags_two)
    assert flags_two.wait("started")
    assert stuck.cancel_with_timeout(0.05) is False
    assert stuck.cancel_with_timeout(30, force=True) is True  # the worker was terminated


# -- names ----------------------------------------------------------------------------------------


def test_aliases_are_the_same_objects() -> None:
    assert mp.AsyncHandleFast is mp.AsyncHandle
    assert mp.PerformanceMetrics is mp.TaskMetrics
    assert mp.parallel_fast is mp.parallel_pool is mp.parallel_priority is mp.parallel


def test_there_is_no_makeParallel_module() -> None:
    # 0.2.0's wheel has none either; see docs/migrating-from-0.2.md.
    assert importlib.util.find_spec("makeParallel") is None


@pytest.mark.parametrize(
    ("name", "instead"),
    [
        ("memoize", "functools.cache"),
        ("memoize_fast", "functools.cache"),
        ("retry_cached", "functools.cache"),
        ("parallel_with_deps", "step2(h1.get())"),
        ("ParallelWithDeps", "step2(h1.get())"),
        ("timer", "makeparallel.profiled"),
        ("CallCounter", "makeparallel.profiled"),
    ],
)
def test_a_name_of_0_2_not_offered_says_what_to_use_instead(name: str, instead: str) -> None:
    # Python's own message named only the name: 0.2 code using mp.memoize failed
    # without a word of the migration guide, which says what to use instead.
    with pytest.raises(AttributeError) as raised:
        getattr(mp, name)
    message = str(raised.value)
    assert message.startswith(f"module 'makeparallel' has no attribute {name!r}: makeparallel 0.2's {name} is not offered")
    assert instead in message and "docs/migrating-from-0.2.md" in message
    assert not hasattr(mp, name)


def test_another_name_the_package_lacks_is_looked_up_as_the_interpreter_tears_down_imports() -> None:
    # The error of every name the package lacks was made by a module imported on the first miss:
    # as the interpreter tears down imports (sys.meta_path None, made here), hasattr(mp, name) in a
    # __del__ or an exit hook raised "ImportError: sys.meta_path is None" instead of returning False.
    code = (
        "import sys\n"
        "import makeparallel as mp\n"
        "sys.meta_path = None\n"
        "print(hasattr(mp, 'no_such_name'), getattr(mp, 'no_such_name', 'default'))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKEPARALLEL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "default"]


@pytest.mark.parametrize(
    ("decorator", "call"),
    [
        pytest.param(mp.retry, r"@retry\(max_retries=3\)", id="retry"),
        pytest.param(mp.retry_backoff, r"@retry_backoff\(max_attempts=3\)", id="retry_backoff"),
    ],
)
def test_a_count_given_positionally_to_a_retry_decorator_names_its_keyword(decorator: Any, call: str) -> None:
    """``retry(3)`` read 3 as the function to decorate: "needs a callable, got 3" hid the fix."""
    with pytest.raises(TypeError, match=rf"takes its options as keywords: {call}, got 3"):
        decorator(3)
