"""The life of a worker process: set-up, initializer, recycling, warm start, timeouts, thread limits.

Every test runs real worker processes. Tests that need cold workers stop the
pool first (``fresh_process_pool``); a fixture puts the pool's set-up back.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import functools
import itertools
import logging
import os
import re
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _runtime
from makeparallel._backends import _process
from makeparallel._cpus import UsableCpus, usable_cpus
from pool_helpers import (
    Flags,
    exit_alone,
    fresh_process_pool,
    live_worker_pids,
    mark_then_wait,
    mul,
    pid_once_released,
    send_tasks_ahead,
    wait_until,
)
from test_process_faults import gone

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(60),
]

on_process = mp.parallel(backend="process")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@pytest.fixture(autouse=True)
def plain_setup() -> Iterator[None]:
    yield
    mp.configure_process_pool(initializer=None, max_tasks_per_child=None)


def info() -> dict[str, Any]:
    return mp.get_process_pool_info()


def restarts(reason: str | None = None) -> int:
    """Workers replaced so far (for ``reason``, or for any)."""
    if reason is None:
        return int(info()["worker_restarts"])
    return int(info()["worker_restart_reasons"].get(reason, 0))


# -- tasks and initializers: module level, so they share this module's globals in the worker --

_model: dict[str, Any] = {}
_calls: list[int] = []


def load_model(name: str, sleep: float = 0.0) -> None:
    time.sleep(sleep)  # a slow start-up, as loading a real model is
    _model["name"] = name
    _model["pid"] = os.getpid()


@mp.parallel(backend="process")
def load_model_decorated(name: str) -> None:
    """An initializer decorated by mistake, as every function of a module of tasks may be."""
    load_model(name)


class ModelLoader:
    @on_process
    @classmethod
    def load(cls, name: str) -> None:
        """A class method decorated by mistake, given as the initializer."""
        load_model(name)

    @classmethod
    @on_process
    def load_below(cls, name: str) -> None:
        """The same, the decorators in the other order."""
        load_model(name)


async def load_model_async(name: str) -> None:
    """An ``async def`` initializer (a client library with an async connect, say)."""
    load_model(name)


region: contextvars.ContextVar[str] = contextvars.ContextVar("region", default="unset")
request: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")  # carried


def set_region(name: str) -> None:
    region.set(name)


async def set_region_async(name: str) -> None:
    region.set(name)


def read_region(x: int) -> str:
    return region.get()


async def read_region_async(x: int) -> str:
    return region.get()


def predict(x: int) -> tuple[str | None, int, int]:
    return _model.get("name"), os.getpid(), x


class Predictor:
    """Class methods as tasks, in both orders of the decorators."""

    @classmethod
    @on_process
    def below(cls, x: int) -> str | None:
        return _model.get("name")

    @on_process
    @classmethod
    def above(cls, x: int) -> str | None:
        return _model.get("name")


def broken_initializer() -> None:
    raise ConnectionRefusedError(111, "Connection refused")


def fail_while_flagged(flag: str, how: str) -> None:
    """An initializer whose resource is out while ``flag`` exists: it raises, or its worker dies."""
    if os.path.exists(flag):
        if how == "raises":
            raise ConnectionRefusedError(111, "Connection refused")
        os._exit(1)


def first_starts_when_told_the_others_fail(folder: str) -> None:
    """An initializer: the first worker takes the resource and waits for the test's "go"; the others find it busy."""
    try:
        os.close(os.open(os.path.join(folder, "taken"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        raise ConnectionRefusedError(111, "Connection refused") from None
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.01)


def raise_when_told(folder: str) -> None:
    """An initializer that says it runs, then raises once the test says "go" (or tears down)."""
    flags = Flags(folder)
    flags.set("initializing")
    flags.wait_for_release("go", 60)
    raise ConnectionRefusedError(111, "Connection refused")


def raise_an_error_only_the_worker_imports(folder: str) -> None:
    (Path(folder) / "worker_plugin.py").write_text("class PluginError(Exception):\n    pass\n")
    sys.path.insert(0, folder)
    from worker_plugin import PluginError  # type: ignore[import-not-found]

    raise PluginError("no licence")


def noop() -> None:
    return None


def thread_limits() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


# -- initializer --------------------------------------------------------------------------------


def test_the_initializer_runs_once_in_each_worker_before_its_first_task() -> None:
    fresh_process_pool(2)
    mp.configure_process_pool(initializer=load_model, initargs=("small",))
    results = [on_process(predict)(i).get(timeout=30) for i in range(6)]
    assert all(name == "small" for name, _, _ in results), results
    mapped = mp.parallel_map(predict, range(40), backend="process")
    assert [x for _, _, x in mapped] == list(range(40))
    assert {name for name, _, _ in mapped} == {"small"}
    assert info()["initializer"] == "load_model"


def test_a_parallel_function_given_as_the_initializer_runs_its_plain_function_in_each_worker() -> None:
    # Called as it was, it submitted the initializer as a task of a pool of the
    # worker's own (a template and workers more, in every worker), whose handle it
    # dropped: the worker's own globals were never set, and no error said so.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=load_model_decorated, initargs=("decorated",))
    name, _, _ = on_process(predict)(0).get(timeout=30)
    assert name == "decorated"
    assert info()["initializer"] == "load_model_decorated"


def test_a_parallel_class_method_shares_its_module_s_globals_with_the_initializer() -> None:
    # Its function went by value, with a copy of the module's globals taken in the
    # program: it read None where the initializer had loaded the model, and a class
    # method given as the initializer loaded it into a copy that no task saw.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=load_model, initargs=("shared",))
    assert [Predictor.below(0).get(timeout=30), Predictor.above(0).get(timeout=30)] == ["shared", "shared"]
    mp.configure_process_pool(initializer=ModelLoader.load, initargs=("by class",))
    assert on_process(predict)(0).get(timeout=30)[0] == "by class"


@pytest.mark.parametrize("method", ["load", "load_below"])
def test_a_parallel_class_method_given_as_the_initializer_runs_its_plain_function_in_both_orders(
    method: str,
) -> None:
    # From Python 3.13, @classmethod over @parallel gives a plain bound method of the
    # ParallelFunction, which was not unwrapped: each worker submitted the initializer
    # to a pool of its own, and its tasks ran with the model unset, silently.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=getattr(ModelLoader, method), initargs=(method,))
    assert on_process(predict)(0).get(timeout=30)[0] == method
    mp.configure_process_pool(initializer=functools.partial(getattr(ModelLoader, method), f"{method} partial"))
    assert on_process(predict)(0).get(timeout=30)[0] == f"{method} partial"


def test_a_partial_of_a_parallel_function_given_as_the_initializer_runs_its_plain_function() -> None:
    # The partial called the wrapper: each worker submitted the initializer to a pool of
    # its own, dropped the handle, and ran its tasks with its globals unset, silently.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=functools.partial(load_model_decorated, "partial"))
    name, _, _ = on_process(predict)(0).get(timeout=30)
    assert name == "partial"


class Connector:
    """A callable object given as the initializer."""

    def __call__(self, name: str) -> None:
        load_model(name)


def test_an_initializer_is_named_without_its_arguments_or_address() -> None:
    # Named by its repr, a partial carried every argument bound to it into the pool info
    # and into each error that names the initializer (a table of 10,000 entries: some
    # 170 KB), and a callable object its address.
    table = dict.fromkeys(range(10_000), "weights")
    mp.configure_process_pool(initializer=functools.partial(load_model, table))
    assert info()["initializer"] == "partial(load_model)"
    mp.configure_process_pool(initializer=Connector(), initargs=("connected",))
    assert info()["initializer"] == "Connector"


def test_an_async_initializer_runs_its_coroutine_in_each_worker() -> None:
    # The coroutine it returned was dropped: a RuntimeWarning on the worker's standard
    # error ("never awaited"), and the tasks ran with the worker's globals unset.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=load_model_async, initargs=("async",))
    name, _, _ = on_process(predict)(0).get(timeout=30)
    assert name == "async"


@pytest.mark.parametrize("carried", [False, True])
def test_an_async_initializer_sets_context_variables_for_the_tasks_as_a_sync_one_does(carried: bool) -> None:
    # Its coroutine ran in a copy of the worker's context, as a task's does: what it set
    # there was gone with it, and the tasks read the default where a sync one's read its value.
    fresh_process_pool(1)
    # With variables of the program's context carried, a task runs in a copy of the worker's.
    mp.configure(process_contextvars=[request] if carried else [])
    try:
        for initializer in (set_region, set_region_async):
            mp.configure_process_pool(initializer=initializer, initargs=(initializer.__name__,))
            assert [on_process(read_region)(0).get(timeout=30), on_process(read_region_async)(0).get(timeout=30)] == [
                initializer.__name__
            ] * 2
    finally:
        mp.configure(process_contextvars=[])


def test_a_new_initializer_replaces_the_running_workers() -> None:
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=load_model, initargs=("first",))
    first = on_process(predict)(0).get(timeout=30)
    before = restarts()
    mp.configure_process_pool(initializer=load_model, initargs=("second",))
    second = on_process(predict)(0).get(timeout=30)
    assert first[0] == "first" and second[0] == "second"
    assert first[1] != second[1]
    assert restarts() == before  # a new set-up is not a restart


def test_a_failing_initializer_fails_the_tasks_then_stops_the_pool_until_reconfigured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh_process_pool(1)
    now = time.monotonic() + 2 * _process.RESTART_WINDOW  # one instant: every restart is in the window
    monkeypatch.setattr(_process, "_now", lambda: now)
    before = restarts("initializer failed")
    mp.configure_process_pool(initializer=broken_initializer)
    for _ in range(3):  # three failed starts in a row
        with pytest.raises(mp.WorkerCrashedError, match=r"worker initializer broken_initializer raised ConnectionRefusedError") as raised:
            on_process(noop)().get(timeout=30)
        cause = raised.value.__cause__
        assert type(cause) is ConnectionRefusedError and cause.errno == 111
    assert "starts no more workers" in str(raised.value)
    assert restarts("initializer failed") == before + 3
    # health() names the cause of the storm: no task crashed or timed out.
    storm = [r for r in mp.health(memory_limit_percent=100.0)["reasons"] if "restarts in the last" in r]
    assert storm == ["process pool: 3 worker restarts in the last 10 s for 1 workers (initializer failed: 3)"]
    # No restart loop: new tasks fail at once, and no worker is started for them.
    with pytest.raises(mp.WorkerCrashedError, match="until configure_process_pool"):
        on_process(noop)().get(timeout=30)
    assert info()["live_workers"] == 0
    assert restarts("initializer failed") == before + 3
    mp.configure_process_pool(initializer=load_model, initargs=("fixed",))
    assert on_process(predict)(1).get(timeout=30)[0] == "fixed"


@pytest.mark.parametrize("how", ["raises", "dies"])
def test_a_pool_whose_replacements_fail_to_start_serves_on_with_the_workers_there(how: str, tmp_path: Path) -> None:
    # Three failed starts of a crashed worker's replacement (the initializer's resource
    # out for a moment) made the pool fail every task, its ready worker idle, until it
    # was configured again.
    flag = tmp_path / "out"
    fresh_process_pool(2)
    mp.configure_process_pool(initializer=fail_while_flagged, initargs=(str(flag), how), prestart=True)
    try:
        assert wait_until(lambda: info()["ready_workers"] == 2, 30), info()
        survivor, crashed = live_worker_pids(2)
        flag.touch()
        os.kill(crashed, signal.SIGKILL)
        assert wait_until(lambda: info()["refused_starts"] is not None, 30)  # three failed starts in a row
        assert info()["refusing_tasks"] is None
        assert {on_process(os.getpid)().get(timeout=30) for _ in range(4)} == {survivor}
        short = [r for r in mp.health(memory_limit_percent=100.0)["reasons"] if "cannot start more workers" in r]
        assert short and "1 of 2 run the tasks" in short[0], short
        flag.unlink()  # back: the pool tries again a second after its last failure
        assert wait_until(lambda: info()["ready_workers"] == 2 and info()["refused_starts"] is None, 30)
    finally:
        mp.configure_process_pool(initializer=None, prestart=False)


def test_a_worker_ready_after_the_pool_gave_up_starting_workers_takes_the_tasks(tmp_path: Path) -> None:
    # The others failed three times while it ran its slow initializer: once it was
    # ready, the pool still failed every task, and left it idle, until reconfigured.
    fresh_process_pool(2)
    mp.configure_process_pool(initializer=first_starts_when_told_the_others_fail, initargs=(str(tmp_path),), prestart=True)
    try:
        assert wait_until(lambda: info()["refusing_tasks"] is not None, 30)  # it gave up, the first still starting
        (tmp_path / "go").touch()
        assert wait_until(lambda: info()["ready_workers"] == 1, 30)
        assert info()["refusing_tasks"] is None
        assert on_process(os.getpid)().get(timeout=30) in info()["worker_pids"]
    finally:
        (tmp_path / "go").touch()
        mp.configure_process_pool(initializer=None, prestart=False)


def test_an_initializer_error_of_a_class_only_the_worker_imports_fails_the_task_and_not_the_pool(tmp_path: Path) -> None:
    # Unpickled in the pool's loop thread, it killed the loop, and every task running with it.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=raise_an_error_only_the_worker_imports, initargs=(str(tmp_path),))
    try:
        with pytest.raises(mp.WorkerCrashedError, match="worker initializer raise_an_error_only_the_worker_imports") as raised:
            on_process(noop)().get(timeout=30)
        cause = raised.value.__cause__
        assert isinstance(cause, mp.TaskSerializationError)
        assert "could not be unpickled here: ModuleNotFoundError: No module named 'worker_plugin'" in str(cause)
        assert info()["loop_deaths"] == 0
    finally:
        mp.configure_process_pool(initializer=None)
    assert on_process(os.getpid)().get(timeout=30) != os.getpid()


def test_a_dying_worker_counts_as_live_until_its_restart_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loop takes a dead worker out of the pool, reaps it, then counts its
    # restart. In between, info() said no worker and no restart: a test that
    # waited for live_workers == 0 read the restarts one short under load.
    from makeparallel._backends import _process

    fresh_process_pool(1)
    assert on_process(noop)().get(timeout=30) is None
    before = restarts("crashed")
    reaping, release = threading.Event(), threading.Event()
    stop = _process._stop

    def slow_stop(process: Any) -> int | None:
        reaping.set()
        assert release.wait(30)
        return stop(process)

    monkeypatch.setattr(_process, "_stop", slow_stop)
    handle = exit_alone(3)
    pool = _runtime.get_backend("process")
    try:
        assert reaping.wait(30)
        seen = info()  # the loop is held: no worker starts or ends meanwhile
        assert seen["live_workers"] == len(pool._workers) + 1  # the dying one, no longer in the pool, counts
        assert seen["worker_restart_reasons"].get("crashed", 0) == before
    finally:
        release.set()
    with pytest.raises(mp.WorkerCrashedError, match="exit code 3"):
        handle.get(timeout=30)
    assert wait_until(lambda: restarts("crashed") == before + 1)
    # Counted: the dying one is gone (a replacement may be live already, once forked).
    assert wait_until(lambda: (seen := info())["live_workers"] == len(seen["worker_pids"]))


@pytest.mark.parametrize("max_tasks_per_child", [None, 1])
def test_workers_that_die_while_starting_stop_the_pool_instead_of_a_restart_loop(max_tasks_per_child: int | None) -> None:
    # A worker that dies before it is ready (here its initializer ends the
    # process; a broken environment does the same) never started the task sent
    # to it: the task goes to the next worker, and after three failed starts in
    # a row the pool fails the queue and new tasks at once, until reconfigured.
    # With max_tasks_per_child=1 the worker counted as leaving once its task was
    # sent, and its death was no failed start: 200 new workers a second, for good.
    fresh_process_pool(1)
    before = restarts()
    mp.configure_process_pool(initializer=os._exit, initargs=(3,), max_tasks_per_child=max_tasks_per_child)
    with pytest.raises(mp.WorkerCrashedError, match=r"died while they started up .* exit code 3") as raised:
        on_process(noop)().get(timeout=30)
    assert "starts no more workers" in str(raised.value)
    # With max_tasks_per_child=1 the replacement of the worker given the task (its
    # last) starts beside it: the two die in one round of starts, counted once.
    assert wait_until(lambda: info()["live_workers"] == 0)
    started = restarts() - before
    assert started == 3 or (max_tasks_per_child == 1 and 3 <= started <= 6)
    with pytest.raises(mp.WorkerCrashedError, match="until configure_process_pool"):
        on_process(noop)().get(timeout=30)
    assert info()["live_workers"] == 0 and restarts() == before + started
    report = mp.health(memory_limit_percent=100.0)  # it said "ok" while every task failed
    assert (report["ready"], report["live"]) == (False, True)
    assert report["reasons"][0].startswith("process pool fails every task: worker")
    assert report["reasons"][0].endswith("until configure_process_pool() is called again")
    mp.configure_process_pool(initializer=load_model, initargs=("fixed",))
    assert on_process(predict)(1).get(timeout=30)[0] == "fixed"
    assert info()["refusing_tasks"] is None


@pytest.mark.parametrize("initializer", [broken_initializer, os._exit], ids=["raises", "exits"])
def test_tasks_failed_by_workers_that_cannot_start_count_as_failed_not_cancelled(initializer: Callable[..., object]) -> None:
    # A task whose worker died in its initializer, and one the pool fails at
    # once after it gave up, never started: counted as cancelled ("cancelled
    # before it started"), the metrics and Prometheus' status="cancelled" said
    # nobody asked for them, where every one failed with WorkerCrashedError.
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=initializer, initargs=() if initializer is broken_initializer else (3,))
    name = f"cannot-start-{initializer.__name__}"
    task = mp.parallel(backend="process", name=name)(noop)
    handles = [task() for _ in range(3)]
    for handle in handles:
        with pytest.raises(mp.WorkerCrashedError):
            handle.get(timeout=30)
    assert wait_until(lambda: info()["refusing_tasks"] is not None)
    with pytest.raises(mp.WorkerCrashedError, match="until configure_process_pool"):
        task().get(timeout=30)
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.total_tasks, metrics.failed_tasks, metrics.cancelled_tasks) == (4, 4, 0)
    assert (metrics.running_tasks, metrics.queued_tasks) == (0, 0)


def wait_in_initializer(flags: Flags) -> None:
    """An initializer that says it runs (a flag named by its pid), then waits for the test's "go"."""
    flags.set(f"initializing-{os.getpid()}")
    assert flags.wait_for_release("go")


def test_workers_ended_together_as_they_start_are_one_failed_start(tmp_path: Path) -> None:
    # A signal to the process group (SIGTERM from systemd, which the program
    # handles) ends every worker still in its initializer at once. The three
    # counted as three failed starts in a row: the pool gave up, and failed
    # the queued tasks and every later one, where the program meant to go on.
    flags = Flags(str(tmp_path))
    fresh_process_pool(3)
    before = restarts()
    mp.configure_process_pool(initializer=wait_in_initializer, initargs=(flags,))
    handles = [on_process(predict)(i) for i in range(6)]

    def initializing() -> list[int]:
        return [int(name.split("-")[1]) for name in os.listdir(tmp_path) if name.startswith("initializing-")]

    assert wait_until(lambda: len(initializing()) == 3, 30)
    for pid in initializing():
        os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: restarts() == before + 3, 30)  # all three deaths seen before any worker is ready
    flags.set("go")
    assert sorted(handle.get(timeout=30)[2] for handle in handles) == list(range(6))
    assert info()["refusing_tasks"] is None


def open_and_close(name: str) -> Iterator[None]:
    """An initializer written as a fixture: set up, yield, tear down."""
    load_model(name)
    yield
    _model.clear()


def test_a_generator_function_given_as_the_initializer_is_refused_at_once() -> None:
    # Each worker called it and dropped the generator: none of its body ran, no error
    # said so, and the tasks ran with the worker's globals unset.
    with pytest.raises(TypeError, match=r"initializer open_and_close is a generator function.*none of its body"):
        mp.configure_process_pool(initializer=open_and_close, initargs=("fixture",))
    assert info()["initializer"] is None  # the pool kept its set-up


def test_an_initializer_that_cannot_be_pickled_is_refused_at_once() -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(mp.TaskSerializationError, match="cannot be sent to the worker processes"):
        mp.configure_process_pool(initializer=load_model, initargs=(lock,))
    with pytest.raises(TypeError, match="initializer must be callable or None, got 3"):
        mp.configure_process_pool(initializer=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_tasks_per_child must be an int >= 1, got 0"):
        mp.configure_process_pool(max_tasks_per_child=0)


def test_an_initializer_that_cannot_be_pickled_is_named_without_its_arguments() -> None:
    # The refusal quoted the initializer's repr: a partial's held every argument bound to
    # it (a table of 10,000 entries made a message of some 170 KB), a callable object's its address.
    import threading

    table: dict[Any, Any] = dict.fromkeys(range(10_000), "weights")
    table["lock"] = threading.Lock()
    with pytest.raises(mp.TaskSerializationError) as caught:
        mp.configure_process_pool(initializer=functools.partial(load_model, table))
    message = str(caught.value)
    assert message.startswith("the initializer partial(load_model) or its initargs cannot be sent")
    assert "weights" not in message and "cannot pickle" in message
    with pytest.raises(mp.TaskSerializationError, match=r"^the initializer Connector or its initargs"):
        mp.configure_process_pool(initializer=Connector(), initargs=(threading.Lock(),))
    assert info()["initializer"] is None  # the pool kept its set-up


def test_the_function_of_a_map_is_sent_once_so_its_globals_persist() -> None:
    fresh_process_pool(1)
    counter: dict[str, int] = {}
    # A closure's function travels by value: before, every chunk brought a fresh copy.
    count_calls = eval("lambda x: counter.__setitem__('n', counter.get('n', 0) + 1) or counter['n']", {"counter": counter})
    results = mp.parallel_map(count_calls, range(30), backend="process", chunksize=1)
    assert results == list(range(1, 31))


def _rows_counter(model: bytes, request: int) -> Any:
    return lambda row: len(model) + row + request  # a closure per request, over one shared model


@pytest.mark.timeout(120)
def test_maps_of_closures_over_a_large_object_do_not_pile_up_copies_in_the_worker() -> None:
    # A worker that kept every function it unpickled (up to 256), keyed by its
    # pickled bytes, held two more copies of the 20 MB object for each map of a
    # new closure (the key and the function): 8 such maps held about 320 MB, 256
    # would have held about 10 GB (a service that maps a lambda over each
    # request's rows). The functions kept are bounded by their bytes as well.
    import psutil

    fresh_process_pool(1)
    model = os.urandom(20_000_000)
    assert mp.parallel_map(_rows_counter(model, 0), range(2), backend="process") == [20_000_000, 20_000_001]
    worker = psutil.Process(info()["worker_pids"][0])
    before = worker.memory_info().rss
    for request in range(1, 9):
        results = mp.parallel_map(_rows_counter(model, request), range(2), backend="process")
        assert results == [20_000_000 + request, 20_000_001 + request]
    grown = worker.memory_info().rss - before
    assert grown < 160_000_000, f"the worker grew by {grown / 1e6:.0f} MB over 8 maps"


# -- timeouts count from the start of the task --------------------------------------------------


def test_a_timeout_does_not_count_the_worker_start_up() -> None:
    fresh_process_pool(2)
    # Each new worker takes 2 s to set up, longer than the tasks' timeout.
    mp.configure_process_pool(initializer=load_model, initargs=("slow", 2.0))
    before = restarts()
    handles = [on_process(noop)(timeout=1.0) for _ in range(8)]
    assert [h.get(timeout=30) for h in handles] == [None] * 8
    assert restarts() == before


# -- recycling --------------------------------------------------------------------------------
# The tasks that tell the workers apart run os.getpid, which travels by name: a new
# worker runs it without importing this module, and pytest with it, which would cost
# each new worker about 0.3 s (the test with 30 new workers: 9 s that way, 0.6 s this way).


def test_max_tasks_per_child_replaces_a_worker_after_that_many_tasks() -> None:
    fresh_process_pool(1)
    before = restarts("max_tasks_per_child")
    mp.configure_process_pool(max_tasks_per_child=2)
    pids = [on_process(os.getpid)().get(timeout=30) for _ in range(6)]
    assert [pids.count(pid) for pid in dict.fromkeys(pids)] == [2, 2, 2], pids
    assert wait_until(lambda: restarts("max_tasks_per_child") == before + 3), info()
    assert info()["max_tasks_per_child"] == 2


def leave_a_thread_running(x: int) -> int:
    threading.Thread(target=threading.Event().wait).start()  # no daemon: the worker's exit waits for it
    return x


@pytest.fixture
def short_exit_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker told to stop has 0.2 s to exit after its last task, not 5 s."""
    from makeparallel._backends import _process

    monkeypatch.setattr(_process, "_EXIT_GRACE", 0.2)


def run_tasks_that_leave_a_thread_running(workers: int, tasks: int) -> None:
    """On a fresh pool of ``workers`` recycled after each task, run ``tasks`` tasks that leave a thread running."""
    fresh_process_pool(workers)
    mp.configure_process_pool(max_tasks_per_child=1)
    handles = [on_process(leave_a_thread_running)(i) for i in range(tasks)]
    assert [handle.get(timeout=30) for handle in handles] == list(range(tasks))


@pytest.mark.usefixtures("short_exit_grace")
def test_a_recycled_worker_that_cannot_exit_is_killed_and_replaced(caplog: pytest.LogCaptureFixture) -> None:
    # It waited for its task's thread as it exited, for good: with max_tasks_per_child=1
    # the pool started no more workers, and its third task waited for ever.
    with caplog.at_level(logging.WARNING, logger="makeparallel"):
        run_tasks_that_leave_a_thread_running(2, 5)
    assert "told to stop (max_tasks_per_child), has not exited" in caplog.text


@pytest.mark.usefixtures("short_exit_grace")
def test_a_recycled_worker_that_cannot_exit_is_killed_while_the_pool_is_idle(caplog: pytest.LogCaptureFixture) -> None:
    # Its grace began at the loop's next look for another reason: after a program's last
    # results, the stuck workers stayed, over num_workers, until it submitted again.
    with caplog.at_level(logging.WARNING, logger="makeparallel"):
        run_tasks_that_leave_a_thread_running(1, 2)
        # Both killed, with nothing submitted since; a spare worker may stand ready beside them.
        assert wait_until(lambda: caplog.text.count("has not exited") == 2 and info()["live_workers"] <= 1, 30), info()


def wait_for_file(started: str, path: str, marker: str) -> None:
    open(started, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    open(marker, "w").close()


@pytest.mark.usefixtures("short_exit_grace")
def test_a_replaced_worker_still_running_its_initializer_is_not_killed(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    # It reads that it is to stop once set up: killed 5 s after it was told, it
    # died in its initializer, with a warning blaming a task it never ran.
    fresh_process_pool(1)
    started, go, done = tmp_path / "started", tmp_path / "go", tmp_path / "done"
    with caplog.at_level(logging.WARNING, logger="makeparallel"):
        mp.configure_process_pool(initializer=wait_for_file, initargs=(str(started), str(go), str(done)), prestart=True)
        assert wait_until(started.exists, 30)
        mp.configure_process_pool(initializer=None)  # replaces it: told to stop, it is still setting up
        time.sleep(0.6)  # three exit graces, for a kill to show
        go.touch()
        assert wait_until(done.exists, 30)
    assert "has not exited" not in caplog.text


def first_to_lock(lock: str) -> bool:
    """Whether this worker is the first to take the file lock ``lock``, which it then keeps for its life."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    return True


def start_slowly_once(lock: str, started: str, go: str) -> None:
    """The first worker to take ``lock`` stays in this initializer until ``go`` exists; the others start at once."""
    if first_to_lock(lock):
        wait_for_file(started, go, os.devnull)


@contextlib.contextmanager
def one_of_two_workers_starting(tmp_path: Path) -> Iterator[None]:
    """A pool of two workers: the first in its initializer until the block ends, the second ready."""
    fresh_process_pool(1)
    started, go = tmp_path / "started", tmp_path / "go"
    mp.configure_process_pool(
        initializer=start_slowly_once, initargs=(str(tmp_path / "lock"), str(started), str(go)), prestart=True
    )
    try:
        assert wait_until(started.exists, 30)
        mp.configure_process_pool(2, prestart=True)
        assert wait_until(lambda: info()["ready_workers"] == 1, 30), info()
        yield
    finally:
        go.touch()
    assert wait_until(lambda: info()["ready_workers"] == 2, 30), info()


def log_when_released(flags: Flags, name: str, release: str | None = None) -> None:
    """Say this task started, wait for ``release`` if given, then log ``name`` in the flags' ``log`` file."""
    flags.set(f"{name} started")
    if release is not None:
        flags.wait_for_release(release)
    with open(flags.path("log"), "a") as log:
        log.write(f"{name}\n")


def hold_a_task_for_the_starting_worker(
    flags: Flags, name: str = "held", priority: int = 0
) -> tuple[mp.AsyncHandle[None], mp.AsyncHandle[None]]:
    """Keep the ready worker busy until "go on", then give the starting one a task, held in the parent; both handles."""
    task = on_process(log_when_released)
    blocking = task(flags, "block", "go on")
    assert flags.wait("block started", 30)
    held = task(flags, name, priority=priority)
    assert wait_until(lambda: info()["held_tasks"] == 1, 30), info()
    return blocking, held


def test_an_idle_worker_takes_the_tasks_given_to_one_still_starting(tmp_path: Path) -> None:
    # Tasks given to a worker as it started waited for its initializer, here for
    # good, while the other worker idled (a Pool's idle worker takes them).
    with one_of_two_workers_starting(tmp_path):
        handles = [on_process(os.getpid)() for _ in range(4)]
        assert len({handle.get(timeout=20) for handle in handles}) == 1  # all on the worker that is ready
        assert info()["ready_workers"] == 1  # the other one still starts


def exit_when_released(flags: Flags) -> None:
    """Say this task started, then end its worker with exit code 3 once the test says "die"."""
    flags.set("block started")
    assert flags.wait_for_release("die")
    os._exit(3)


def test_a_task_held_for_a_starting_worker_has_a_new_worker_start_when_the_ready_one_dies(tmp_path: Path) -> None:
    # Only queued tasks made the pool start workers: after the ready worker died
    # (or timed out, or was recycled, or the pool grew), a task held for the one
    # still starting waited out its initializer, here for good, the pool one short.
    flags = Flags(str(tmp_path))
    started, go = tmp_path / "started", tmp_path / "go"
    fresh_process_pool(2)  # no prestart: a prestarted pool refills itself anyway
    mp.configure_process_pool(initializer=start_slowly_once, initargs=(str(tmp_path / "lock"), str(started), str(go)))
    try:
        blocking = on_process(exit_when_released)(flags)
        assert flags.wait("block started", 30) and started.exists()
        held = on_process(os.getpid)()
        assert wait_until(lambda: info()["held_tasks"] == 1, 30), info()
        flags.set("die")
        with pytest.raises(mp.WorkerCrashedError, match="exit code 3"):
            blocking.get(timeout=30)
        assert held.get(timeout=20) in info()["worker_pids"]
        assert not go.exists() and info()["ready_workers"] == 1  # run by the new worker: the first still starts
    finally:
        go.touch()


def test_a_task_held_for_a_starting_worker_reads_as_pending_and_an_executor_future_cancels_it(tmp_path: Path) -> None:
    # Held in the parent until its worker is ready, it read as running, and
    # concurrent.futures' cancel() refused it ("a running one is not"): it ran later.
    from makeparallel._executor import ExecutorFuture

    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        assert (held.running(), held.status) == (False, "pending")
        future = ExecutorFuture(held)
        held.add_done_callback(future._follow)  # as mp.Executor's submit links them
        assert not future.running()
        assert future.cancel() and future.cancelled() and held.cancelled()
        assert held.cancel_with_timeout(10)  # its code never ran: nothing to wait for
        assert blocking.running() and blocking.status == "running"
        flags.set("go on")
        assert blocking.get(timeout=30) is None
    assert flags.read("log").split() == ["block"]  # the held task never ran


def test_a_wait_that_gives_up_on_a_task_held_for_a_starting_worker_says_it_is_pending(tmp_path: Path) -> None:
    # The message read the raw state: "it is still running and goes on", for a
    # task whose status said pending and whose code had not started.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        try:
            with pytest.raises(mp.TaskTimeoutError, match="it is still pending and goes on"):
                held.get(timeout=0.01)
            assert held.status == "pending"
        finally:
            flags.set("go on")
        blocking.get(timeout=30)
    held.get(timeout=30)


def test_a_worker_still_starting_with_a_task_held_for_it_counts_as_starting_not_busy(tmp_path: Path) -> None:
    # It counted as busy (its held task is in its outstanding list), though the
    # task had not started: a pool at start-up read as working at full load.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        try:
            now = info()
            assert (now["live_workers"], now["busy_workers"]) == (2, 1), now
            assert now["starting_workers"] == 1, now
            assert held.status == "pending"
        finally:
            flags.set("go on")
        blocking.get(timeout=30)
    held.get(timeout=30)
    assert wait_until(lambda: (info()["busy_workers"], info()["starting_workers"]) == (0, 0), 30), info()


def test_a_task_given_back_by_a_starting_worker_keeps_its_priority(tmp_path: Path) -> None:
    # Given back only once the queue was empty, it ran after every task of lower
    # priority submitted after it.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, high = hold_a_task_for_the_starting_worker(flags, "high", priority=10)
        low = [on_process(log_when_released)(flags, f"low {i}") for i in range(3)]
        flags.set("go on")
        for handle in [blocking, high, *low]:
            handle.get(timeout=20)
        assert flags.read("log").split("\n") == ["block", "high", "low 0", "low 1", "low 2", ""]


def test_a_task_submitted_as_a_worker_goes_idle_runs_after_one_held_for_a_starting_worker(tmp_path: Path) -> None:
    # Submitted from the callback of the task that ended, it went straight to the
    # idle worker, before the loop gave the held task back.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        later: list[mp.AsyncHandle[None]] = []
        blocking.on_complete(lambda _: later.append(on_process(log_when_released)(flags, "later")))
        flags.set("go on")
        held.get(timeout=20)
        assert wait_until(lambda: bool(later), 20)
        later[0].get(timeout=20)
        assert flags.read("log").split("\n") == ["block", "held", "later", ""]


def test_a_recycled_workers_replacement_takes_the_tasks_held_for_one_still_starting(tmp_path: Path) -> None:
    # The starting worker counted as busy: the replacement, ready, took no task
    # while the worker it replaces ran its last, and the held one waited for that.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        mp.configure_process_pool(max_tasks_per_child=2)
        task = on_process(log_when_released)
        task(flags, "first").get(timeout=20)
        last = task(flags, "last", "go on")  # the ready worker's last: a replacement starts
        assert flags.wait("last started", 30)
        held = task(flags, "held")
        held.get(timeout=20)
        flags.set("go on")
        last.get(timeout=20)
        mp.configure_process_pool(max_tasks_per_child=None)


def hang_once(lock: str, started: str, fifo: str) -> None:
    """The first worker to take ``lock`` writes its pid to ``started`` and stays here for good; the others return."""
    if not first_to_lock(lock):
        return
    with open(f"{started}.part", "w") as file:
        file.write(str(os.getpid()))
    os.replace(f"{started}.part", started)
    with open(fifo) as never:  # blocks in open(): no writer ever comes
        never.read()


@pytest.mark.parametrize("recycled", ["as its last task is given", "as max_tasks_per_child is lowered"])
def test_a_recycled_worker_stuck_in_its_initializer_gives_its_tasks_to_its_idle_replacement(
    tmp_path: Path, recycled: str
) -> None:
    # Recycled (max_tasks_per_child) before it was ready, the worker kept the tasks held
    # for it as its last ones, and counted as busy with them: its replacement, ready,
    # idled beside it, and they waited for an initializer that never returned.
    started, fifo = tmp_path / "started", tmp_path / "fifo"
    os.mkfifo(fifo)
    fresh_process_pool(1)
    limit = 1 if recycled == "as its last task is given" else None
    mp.configure_process_pool(initializer=hang_once, initargs=(str(tmp_path / "lock"), str(started), str(fifo)))
    mp.configure_process_pool(max_tasks_per_child=limit)
    pid = None
    try:
        held = on_process(os.getpid)()  # given to the first worker, which hangs: held here for it
        assert wait_until(started.exists, 30)
        pid = int(started.read_text())
        if limit is None:  # (else it is its last task already: its replacement starts at once)
            assert wait_until(lambda: info()["held_tasks"] == 1, 30), info()
            mp.configure_process_pool(max_tasks_per_child=1)  # its one held task is its last now
        assert held.get(timeout=30) != pid  # run by its replacement
        assert not gone(pid)  # still in its initializer: left to it, as a replaced worker is
        assert info()["held_tasks"] == 0
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: gone(pid), 30)


def hang_on_turns(turns: tuple[int, ...], counter: str, hung: str, fifo: str) -> None:
    """The workers whose turn (their order of start, from 0) is in ``turns`` write their pid to ``hung`` and stay here for good."""
    fd = os.open(counter, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        turn = int(os.read(fd, 20) or b"0")
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, str(turn + 1).encode())
    finally:
        os.close(fd)
    if turn not in turns:
        return
    with open(hung, "a") as file:
        file.write(f"{os.getpid()}\n")
    with open(fifo) as never:  # blocks in open(): no writer ever comes
        never.read()


def hung_pids(hung: Path) -> list[int]:
    """The pids :func:`hang_on_turns` wrote."""
    return [int(line) for line in hung.read_text().split()] if hung.exists() else []


@contextlib.contextmanager
def most_child_processes() -> Iterator[Callable[[], int]]:
    """Count this process's live children (recursively) until the block ends; yield a function giving the most seen at once.

    Those already there as it begins (other tests' processes, still ending) are left out.
    """
    import psutil

    me = psutil.Process()
    others = {p.pid for p in me.children(recursive=True)}
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                children = me.children(recursive=True)
                alive = [p for p in children if p.pid not in others and p.status() != psutil.STATUS_ZOMBIE]
            except psutil.Error:
                continue
            peak = max(peak, len(alive))
            done.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield lambda: peak
    finally:
        done.set()
        sampler.join()


@contextlib.contextmanager
def recycled_and_stuck_on_turns(
    turns: tuple[int, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A pool of one worker, replaced after each task, whose initializer hangs on ``turns`` (:func:`hang_on_turns`).

    A worker starting for nothing is killed after 0.2 s. Yields the file of the
    hung workers' pids and what prestarts the pool with that initializer;
    kills those still there, and makes the pool afresh, at the end.
    """
    monkeypatch.setattr(_process, "_LEAVING_START_GRACE", 0.2)
    hung, fifo = tmp_path / "hung", tmp_path / "fifo"
    os.mkfifo(fifo)
    fresh_process_pool(1)
    mp.configure_process_pool(max_tasks_per_child=1)

    def start() -> None:
        mp.configure_process_pool(
            initializer=hang_on_turns, initargs=(turns, str(tmp_path / "turn"), str(hung), str(fifo)), prestart=True
        )

    try:
        yield hung, start
    finally:
        for pid in hung_pids(hung):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: all(gone(pid) for pid in hung_pids(hung)), 30)
        fresh_process_pool(1)  # not prestarted any more


@pytest.mark.timeout(90)
def test_two_recycled_workers_stuck_in_their_initializers_do_not_stall_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker recycled (max_tasks_per_child) while it started gives its tasks to an idle
    # worker, but still counted as the one recycled worker that may overlap its
    # replacement: stuck in its initializer, it never exited, and the next worker
    # recycled as it started (stuck too) was given no replacement: its tasks waited for
    # good. Left out of that count at once instead, the pool ran more processes than it
    # may. Starting for longer than a bound (60 s, 0.2 s here), it is killed.
    with recycled_and_stuck_on_turns((0, 2), tmp_path, monkeypatch) as (hung, start):
        with caplog.at_level(logging.WARNING, logger="makeparallel"), most_child_processes() as most:
            start()
            assert wait_until(lambda: len(hung_pids(hung)) == 1, 30)  # the first worker hangs before any task
            first = on_process(os.getpid)()  # held for it, its last: run by its replacement (the second)
            assert first.get(timeout=30) not in hung_pids(hung)
            # The third replaced the second as it was given that task, and hangs too.
            assert wait_until(lambda: len(hung_pids(hung)) == 2, 30)
            second = on_process(os.getpid)()  # held for the third, its last: run by a fourth
            assert second.get(timeout=30) not in hung_pids(hung)
            assert wait_until(lambda: all(gone(pid) for pid in hung_pids(hung)), 30)
        # One worker, one recycled one beside its replacement, and the template that forks them.
        assert most() <= 1 + 1 + 1, f"{most()} processes at once for num_workers=1"
        assert caplog.text.count("is still starting (initializer hang_on_turns)") == 2, caplog.text


def test_a_worker_replaced_by_a_new_initializer_while_stuck_in_the_old_one_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # It holds no place while its replacement starts, but it never read its stop:
    # a process beside the pool's for good. Starting for longer than the bound
    # (0.2 s here), it is killed as a recycled one is.
    monkeypatch.setattr(_process, "_LEAVING_START_GRACE", 0.2)
    started, fifo = tmp_path / "started", tmp_path / "fifo"
    os.mkfifo(fifo)
    fresh_process_pool(1)
    pid = None
    try:
        with caplog.at_level(logging.WARNING, logger="makeparallel"):
            mp.configure_process_pool(
                initializer=hang_once, initargs=(str(tmp_path / "lock"), str(started), str(fifo)), prestart=True
            )
            assert wait_until(started.exists, 30)
            pid = int(started.read_text())
            mp.configure_process_pool(initializer=None)
            assert on_process(os.getpid)().get(timeout=30) != pid
            assert wait_until(lambda: gone(pid), 30)
        assert "told to stop (the pool changed) with no task left, is still starting (initializer hang_once)" in caplog.text
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda: gone(pid), 30)
        fresh_process_pool(1)  # not prestarted any more


@pytest.mark.timeout(90)
def test_a_recycled_worker_stuck_in_its_initializer_whose_last_task_is_cancelled_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Recycled (max_tasks_per_child=1) as its one task was given to it, the first worker
    # held that task; cancelled, the task left it with nothing to run but its
    # initializer, stuck. Its replacement stuck too, nothing woke the loop: the bound
    # (0.2 s here) passed, and the worker stayed beside the idle pool for good.
    with recycled_and_stuck_on_turns((0, 1), tmp_path, monkeypatch) as (hung, start):
        with caplog.at_level(logging.WARNING, logger="makeparallel"):
            start()
            assert wait_until(lambda: len(hung_pids(hung)) == 1, 30)  # the first worker hangs before any task
            first = hung_pids(hung)[0]
            task = on_process(os.getpid)()  # held for it, its last: its replacement starts, and hangs too
            assert wait_until(lambda: len(hung_pids(hung)) == 2, 30)
            assert task.status == "pending"
            assert task.cancel()
            assert wait_until(lambda: gone(first), 30)
            assert not gone(hung_pids(hung)[1])  # its replacement, which takes the next task, stays
        assert "told to stop (max_tasks_per_child) with no task left, is still starting (initializer hang_on_turns)" in caplog.text


def test_shutdown_cancels_the_tasks_held_for_a_starting_worker_with_the_queued_ones(tmp_path: Path) -> None:
    # cancel_pending cancels the tasks not started: one held in the parent for a
    # worker in its initializer was given to the idle worker and ran.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        queued = on_process(log_when_released)(flags, "queued")
        flags.set("go on")
        try:
            assert mp.shutdown(timeout_secs=20, cancel_pending=True)
        finally:
            mp.reset_shutdown()
            mp.configure_process_pool(prestart=True)  # as the block leaves it: two workers
        blocking.get(timeout=20)
        for handle in (held, queued):
            with pytest.raises(mp.TaskCancelledError):
                handle.get(timeout=20)
        assert flags.read("log") == "block\n"


def test_a_worker_given_back_its_tasks_gets_the_programs_new_sys_path(tmp_path: Path) -> None:
    # The path went with the tasks held for it, and was dropped with them: every task
    # of a module in the new folder then failed on that worker.
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "late_plugin.py").write_text(
        "import os\n"
        "def pid_when_both_run(flags):\n"
        "    flags.set(str(os.getpid()))\n"
        "    flags.wait_for_release('both')\n"
        "    return os.getpid()\n"
    )
    flags = Flags(str(tmp_path))
    try:
        with one_of_two_workers_starting(tmp_path):
            sys.path.insert(0, str(folder))  # after the workers started
            import late_plugin

            task = on_process(late_plugin.pid_when_both_run)
            first = task(flags)  # on the worker that is ready
            held = task(flags)  # held for the other one, then given back
            flags.set("both")
            assert first.get(timeout=20) == held.get(timeout=20)
        flags = Flags(str(tmp_path / "then"))
        os.mkdir(flags.directory)
        pair = [task(flags), task(flags)]  # one on each worker, both ready and idle
        assert wait_until(lambda: len(os.listdir(flags.directory)) == 2, 30)
        flags.set("both")
        assert len({handle.get(timeout=20) for handle in pair}) == 2
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))
        sys.modules.pop("late_plugin", None)


def test_cancelling_a_task_held_for_a_starting_worker_leaves_the_worker_alone(tmp_path: Path) -> None:
    # With force=True it was taken for the worker's running task: the worker, never
    # sent it, was killed in its initializer and counted as a restart. And
    # cancel_with_timeout waited its whole timeout for code that never ran.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        pids, before = set(info()["worker_pids"]), restarts()
        assert held.cancel_with_timeout(10, force=True)  # at once: its code never ran
        flags.set("go on")
        blocking.get(timeout=20)
        assert set(info()["worker_pids"]) == pids
        assert restarts() == before


@pytest.mark.parametrize("taken_by", ["an idle worker", "its worker, now ready"])
def test_a_held_task_taken_from_its_worker_as_it_is_cancelled_never_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken_by: str
) -> None:
    # The loop took it, cancelled, from the held ones (given back, or sent to its
    # worker as it became ready) between cancel() and the backend hearing of it:
    # cancel_with_timeout waited its whole timeout for code that never ran.
    flags = Flags(str(tmp_path))
    with one_of_two_workers_starting(tmp_path):
        blocking, held = hold_a_task_for_the_starting_worker(flags)
        backend = held._backend
        abandoned = type(backend)._abandoned

        def taken_first(self: Any, handle: Any, force: bool = False) -> None:
            if taken_by == "an idle worker":
                flags.set("go on")
            else:
                (tmp_path / "go").touch()  # the starting worker's initializer returns
            assert wait_until(lambda: all(handle not in w.outstanding for w in self._workers), 30)
            abandoned(self, handle, force)

        monkeypatch.setattr(type(backend), "_abandoned", taken_first)
        assert held.cancel_with_timeout(10)
        monkeypatch.undo()
        flags.set("go on")
        blocking.get(timeout=20)


def ready_to_read(worker: Any) -> bool:
    """Whether the parent's end of ``worker``'s pipe has a message waiting (within 30 s)."""
    return bool(select.select([worker.conn.fileno()], [], [], 30)[0])


def held_before_the_kill(worker: Any, then: Callable[[], bool]) -> Callable[[Any], Any]:
    """Wrap the loop's step that signals ``worker`` (a kill, not sent yet): it waits until ``then()`` first."""

    def wrap(step: Any) -> Any:
        def held(*args: Any, **kwargs: Any) -> Any:
            if worker.killing and worker.kill_at is None:
                assert then()
            return step(*args, **kwargs)

        return held

    return wrap


def one_running_one_sent_ahead(flags: Flags, running: str, ahead: str) -> tuple[Any, Any, list[Any], Any]:
    """On a fresh pool of one: ``mark_then_wait`` as ``running``, then as ``ahead``, sent behind it with three short tasks.

    Returns the two tasks, the three behind them, and the worker, once the
    first runs and the second is sent to it.
    """
    fresh_process_pool(1)
    send_tasks_ahead()
    first = on_process(mark_then_wait)(flags, running)
    second = on_process(mark_then_wait)(flags, ahead)
    behind = [on_process(abs)(-i) for i in range(3)]  # a queue: the pool sends tasks ahead
    [worker] = second._backend._workers
    assert wait_until(lambda: second in worker.outstanding, 30) and flags.wait(running, 30)  # sent ahead, behind it
    return first, second, behind, worker


@pytest.mark.parametrize("ended", ["before the signal is sent", "as the signal comes"])
def test_a_task_that_ends_as_it_is_force_cancelled_leaves_the_task_after_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ended: str
) -> None:
    # The pool decided to kill the worker as its task returned: the kill came once the
    # worker ran the task sent behind it, which then failed as crashed.
    flags = Flags(str(tmp_path))
    stopped, after, behind, worker = one_running_one_sent_ahead(flags, "stopped", "after")
    backend = after._backend
    wrap = held_before_the_kill(worker, lambda: (flags.set("stopped-go"), flags.wait("after", 30))[1])
    if ended == "before the signal is sent":
        monkeypatch.setattr(type(backend), "_kill_marked", wrap(type(backend)._kill_marked))
    else:
        monkeypatch.setattr(_process, "_signalled", wrap(_process._signalled))
    pid, before = worker.process.pid, restarts()
    try:
        assert stopped.cancel(force=True)
        assert flags.wait("after", 30)
        flags.set("after-go")
        assert after.get(timeout=30) == "after"
        assert flags.read("after") == "started\n"  # run once
        assert [handle.get(timeout=30) for handle in behind] == [0, 1, 2]
        assert wait_until(lambda: not worker.killing, 30)  # (as the signal comes: once its grace is over)
        assert info()["worker_pids"] == [pid] and restarts() == before
        assert on_process(os.getpid)().get(timeout=30) == pid
    finally:
        flags.set("teardown")


@pytest.mark.parametrize("stop", ["cancel(force=True)", "its batch stopped"])
def test_a_sigterm_that_comes_tasks_after_the_one_it_was_for_ended_is_declined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    # Sent through the template, which a loaded machine may not run for a while, the
    # signal for a task that ended as it was stopped came once the task sent behind it
    # and three more had ended, before the loop called the kill off. Trusted only from
    # the last two tasks to end, it was obeyed as a stranger's: the task running then
    # failed as crashed, and the worker was replaced. (Nothing is sent behind a task
    # with a timeout: its kill is called off before the worker runs another.)
    flags = Flags(str(tmp_path))
    fresh_process_pool(1)
    send_tasks_ahead()
    stopped = on_process(mark_then_wait)(flags, "stopped")
    assert flags.wait("stopped", 30)
    backend = stopped._backend
    [worker] = backend._workers
    # The loop held until the tasks behind are queued: it fills a busy worker's window
    # up to as many tasks as it finds queued (one left behind: "last" goes too).
    maintain, looking, queued = type(backend)._maintain, threading.Event(), threading.Event()

    def once_queued(self: Any) -> bool:
        looking.set()
        assert queued.wait(30)
        return maintain(self)

    monkeypatch.setattr(type(backend), "_maintain", once_queued)
    backend._wake()
    assert looking.wait(30)
    after = on_process(mark_then_wait)(flags, "after")
    behind = [on_process(abs)(-i) for i in range(3)]
    last = on_process(mark_then_wait)(flags, "last")
    tail = on_process(abs)(-3)
    queued.set()
    assert wait_until(lambda: last in worker.outstanding, 30)  # all sent ahead, behind "stopped"
    pid, before = worker.process.pid, restarts()
    signalled, held = _process._signalled, []

    def late(process: Any, kill: bool) -> bool:
        if kill or held:
            return signalled(process, kill)
        held.append(process)
        flags.set("stopped-go")  # it ends as the loop decides to kill its worker
        assert flags.wait("after", 30)
        flags.set("after-go")
        assert flags.wait("last", 30)  # "after" and the three behind it ended: "last" runs
        sent = signalled(process, kill)
        # Handled before the loop looks again (it waits here), as a late signal is.
        assert wait_until(lambda: gone(pid) or worker.journal.declined(), 30)
        return sent

    monkeypatch.setattr(_process, "_signalled", late)
    try:
        if stop == "cancel(force=True)":
            assert stopped.cancel(force=True)
        else:  # as a map or a batch stops its tasks still running when one fails
            backend._stop_abandoned(stopped)
        assert wait_until(lambda: bool(held), 30)
        assert wait_until(lambda: not worker.killing or gone(pid), 30)
        flags.set("last-go")
        assert last.get(timeout=30) == "last"
        assert after.get(timeout=30) == "after"
        assert [handle.get(timeout=30) for handle in [*behind, tail]] == [0, 1, 2, 3]
        assert stopped.cancelled() if stop == "cancel(force=True)" else stopped.get(timeout=30) == "stopped"
        assert [flags.read(name) for name in ("after", "last")] == ["started\n"] * 2  # each run once
        assert info()["worker_pids"] == [pid] and restarts() == before
        assert on_process(os.getpid)().get(timeout=30) == pid
    finally:
        flags.set("teardown")


@pytest.mark.parametrize("stop", ["cancel(force=True)", "timeout"])
def test_a_worker_whose_kills_were_called_off_before_their_signals_came_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str
) -> None:
    # Two tasks in a row stopped as they ended, both kills called off before the worker
    # handled either signal (held up in a busy template): a kill excuses one SIGTERM,
    # so the second signal to come was obeyed, and the task running then failed as
    # crashed. A SIGTERM of the parent's still on its way serves the next kill instead.
    fresh_process_pool(1)
    flags = Flags(str(tmp_path))
    assert on_process(mul)(2, 3).get(timeout=30) == 6  # (the helpers imported: see the timeout test above)
    [worker] = on_process(mul)(1, 1)._backend._workers
    signalled, held = _process._signalled, []
    monkeypatch.setattr(_process, "_signalled", lambda process, kill: held.append(process) or True if not kill else signalled(process, kill))
    run = mp.parallel(backend="process", timeout=0.5 if stop == "timeout" else None)(mark_then_wait)
    pid, before = worker.process.pid, restarts()
    try:
        for name in ("first", "second"):
            stopped = run(flags, name)
            assert flags.wait(name, 30)
            if stop == "timeout":
                assert wait_until(lambda: worker.killing, 30)  # (the handle times out a moment before)
            else:
                assert stopped.cancel(force=True)
            assert wait_until(lambda: worker.kill_at is not None, 30)  # its kill decided, its signal held
            flags.set(f"{name}-go")  # it ends before the signal comes
            assert wait_until(lambda: not worker.killing, 30)  # the kill called off
        running = on_process(mark_then_wait)(flags, "running")
        assert flags.wait("running", 30)
        assert len(held) == 1  # not a second SIGTERM while the first is on its way
        for process in held:
            signalled(process, False)
        assert wait_until(lambda: worker.journal.declined() or gone(pid), 30)
        flags.set("running-go")
        assert running.get(timeout=30) == "running"
        assert on_process(os.getpid)().get(timeout=30) == pid
        assert info()["worker_pids"] == [pid] and restarts() == before
    finally:
        flags.set("teardown")


def test_a_forced_cancel_of_the_task_after_one_that_ended_as_it_was_stopped_kills_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its kill was folded into the one for the task before, which was then called off:
    # the task ran on to its end.
    flags = Flags(str(tmp_path))
    stopped, after, behind, worker = one_running_one_sent_ahead(flags, "stopped", "after")
    backend = after._backend

    def both_cancelled() -> bool:
        flags.set("stopped-go")
        assert flags.wait("after", 30)
        return after.cancel(force=True)

    monkeypatch.setattr(type(backend), "_kill_marked", held_before_the_kill(worker, both_cancelled)(type(backend)._kill_marked))
    pid, before = worker.process.pid, restarts("cancelled")
    try:
        assert stopped.cancel(force=True)
        assert wait_until(lambda: gone(pid), 30)
        assert wait_until(lambda: restarts("cancelled") == before + 1, 30)  # counted once it is reaped
        assert after.cancelled() and flags.read("after") == "started\n"
        assert [handle.get(timeout=30) for handle in behind] == [0, 1, 2]  # on its replacement
    finally:
        flags.set("teardown")


def test_a_task_sent_ahead_that_starts_as_it_is_force_cancelled_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Behind a running task, it was cancelled as a task that never started (asked to
    # stop at its next check_cancelled()), and started before the worker heard of it:
    # it ran on to its end, where cancel(force=True) ends the worker of a task that runs.
    flags = Flags(str(tmp_path))
    first, cancelled, behind, worker = one_running_one_sent_ahead(flags, "first", "cancelled")
    send = _process._send

    def started_first(to: Any, message: tuple[Any, ...], *args: Any) -> None:
        if message[0] == "cancel":
            flags.set("first-go")
            assert flags.wait("cancelled", 30)
        send(to, message, *args)

    monkeypatch.setattr(_process, "_send", started_first)
    pid, before = worker.process.pid, restarts("cancelled")
    try:
        assert cancelled.cancel(force=True)
        assert first.get(timeout=30) == "first"
        assert wait_until(lambda: gone(pid), 30)
        assert wait_until(lambda: restarts("cancelled") == before + 1, 30)  # counted once it is reaped
        assert [handle.get(timeout=30) for handle in behind] == [0, 1, 2]  # on its replacement
        assert flags.read("cancelled") == "started\n"
    finally:
        flags.set("teardown")


def test_a_task_cancelled_as_it_is_sent_leaves_the_pool_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given to a worker, then cancelled before the message left, it had dropped its
    # payload, which the send read: the pool's loop thread died, and every task of the
    # pool failed with it.
    fresh_process_pool(1)
    flags = Flags(str(tmp_path))
    first = on_process(mark_then_wait)(flags, "first")
    assert flags.wait("first", 30)
    send_tasks = _process._send_tasks
    cancelled_in_send: list[Any] = []

    def cancelled_first(worker: Any, batch: list[Any], *args: Any) -> None:
        if not cancelled_in_send:  # the first task sent from now on, in order: the next one submitted
            assert batch[0].cancel()
            cancelled_in_send.append(batch[0])
        send_tasks(worker, batch, *args)

    # In place before the task exists: the loop may send it ahead to the busy worker at once.
    monkeypatch.setattr(_process, "_send_tasks", cancelled_first)
    cancelled = on_process(abs)(-7)
    others = [on_process(abs)(-i) for i in range(3)]
    flags.set("first-go")
    assert first.get(timeout=30) == "first"
    assert [handle.get(timeout=30) for handle in others] == [0, 1, 2]
    assert cancelled_in_send == [cancelled]
    assert cancelled.cancelled()
    assert info()["loop_deaths"] == 0


@pytest.mark.parametrize("signal_", ["handled at once", "handled late"])
def test_a_task_that_ends_as_it_times_out_leaves_its_worker_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signal_: str
) -> None:
    # Killed once the task had ended, the worker was replaced for nothing, counted as
    # a restart for a timeout. Handled late (on its way through a busy template), the
    # signal must not end what the worker runs by then.
    fresh_process_pool(1)
    flags = Flags(str(tmp_path))
    # The worker imports the helpers first: its clock starts before the task's module is imported,
    # and on a loaded machine that import alone took the half second, the task ending before its mark.
    assert on_process(mul)(2, 3).get(timeout=30) == 6
    timed = mp.parallel(backend="process", timeout=0.5)(mark_then_wait)(flags, "timed")
    assert flags.wait("timed", 30)
    backend = timed._backend
    [worker] = backend._workers
    wrap = held_before_the_kill(worker, lambda: (flags.set("timed-go"), ready_to_read(worker))[1])
    monkeypatch.setattr(type(backend), "_kill_marked", wrap(type(backend)._kill_marked))
    late: list[int] = []
    if signal_ == "handled late":
        signalled = _process._signalled
        monkeypatch.setattr(
            _process, "_signalled", lambda process, kill: late.append(process.pid) or True if not kill else signalled(process, kill)
        )
    pid, before = worker.process.pid, restarts()
    try:
        with pytest.raises(mp.TaskTimeoutError):
            timed.get(timeout=30)
        assert wait_until(lambda: not worker.killing, 30)  # its signal declined, or its kill called off
        for process_id in late:
            os.kill(process_id, signal.SIGTERM)
        assert on_process(os.getpid)().get(timeout=30) == pid
        assert info()["worker_pids"] == [pid] and restarts() == before
    finally:
        flags.set("teardown")


def test_lowering_num_workers_keeps_a_ready_worker_over_one_still_starting(tmp_path: Path) -> None:
    # Both idle, either could be kept: keeping the starting one, the next task
    # waited for its initializer.
    with one_of_two_workers_starting(tmp_path):
        ready = on_process(os.getpid)().get(timeout=20)
        mp.configure_process_pool(1)
        assert on_process(os.getpid)().get(timeout=20) == ready
        assert wait_until(lambda: info()["live_workers"] == 1, 30), info()
        mp.configure_process_pool(2)


def test_lowering_max_tasks_per_child_replaces_the_workers_already_past_it() -> None:
    # They took no more tasks and nothing replaced them: a task too large to be sent
    # from submit() (the loop sends those) waited for ever, with both workers idle.
    fresh_process_pool(2)
    pids = live_worker_pids()  # both workers ran a task
    assert len(pids) == 2, pids
    before = restarts("max_tasks_per_child")
    mp.configure_process_pool(max_tasks_per_child=1)
    data = bytes(100_000)
    assert on_process(len)(data).get(timeout=20) == len(data)
    assert on_process(os.getpid)().get(timeout=20) not in pids
    # Counted once each old worker is reaped, which the new one's answer can precede.
    assert wait_until(lambda: restarts("max_tasks_per_child") >= before + 2), info()


def test_max_tasks_per_child_holds_for_a_queue_of_short_tasks() -> None:
    fresh_process_pool(2)
    mp.configure_process_pool(max_tasks_per_child=5)
    pids = [h.get(timeout=30) for h in [on_process(os.getpid)() for _ in range(60)]]
    assert max(pids.count(pid) for pid in set(pids)) <= 5
    assert len(set(pids)) >= 12


def started_then_waited(flags: Flags, name: str) -> bool:
    """Say ``name`` started; wait for "go-``name``" if the test gives one; whether "second" had started by then."""
    flags.set(f"started-{name}")
    if name == "first":
        assert flags.wait_for_release("go-first")
    return flags.is_set("started-second")


@pytest.fixture
def one_cold_worker(tmp_path: Any) -> Iterator[Flags]:
    """A pool of one worker, not started yet, and marker files for its tasks; the pool's size is put back after."""
    size = info()["num_workers"]
    fresh_process_pool(1)
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("go-first")
    mp.configure_process_pool(size)


def assert_runs_alone_then_the_next(flags: Flags) -> None:
    """Submit "first", its worker's last task, then "second": the second must not start while the first runs.

    The first is released once the replacement is ready, and could take the second.
    """
    first = on_process(started_then_waited)(flags, "first")
    second = on_process(started_then_waited)(flags, "second")
    assert flags.wait("started-first")
    # The replacement (the first's worker is leaving).
    assert wait_until(lambda: info()["ready_workers"] == 1, 30), info()
    assert info()["queued_tasks"] == 1, "the replacement was given the second task while the first ran"
    flags.set("go-first")
    assert first.get(timeout=30) is False, "the second task started while the first ran"
    assert second.get(timeout=30) is True


def test_max_tasks_per_child_runs_no_more_tasks_at_once_than_num_workers(one_cold_worker: Flags) -> None:
    # A recycled worker's replacement started as its last task was sent, to
    # hide its start-up, and took the next task at once: with one worker and
    # max_tasks_per_child=1, two tasks ran at once.
    mp.configure_process_pool(max_tasks_per_child=1)
    assert_runs_alone_then_the_next(one_cold_worker)


def test_a_worker_the_loop_sends_its_last_task_is_replaced_while_that_task_runs(one_cold_worker: Flags) -> None:
    # The loop decides which workers to start before it sends tasks: a worker
    # it sent its last task (max_tasks_per_child) with more queued left the
    # pool one short, and nothing made it look again. The replacement started
    # at the next result, here the end of the task that waits for it: a hang.
    flags = one_cold_worker
    mp.configure_process_pool(max_tasks_per_child=2)
    held = mp.parallel(backend="process", timeout=60)(pid_once_released)(flags)  # timed: nothing is sent behind it
    assert flags.wait("started")
    first = on_process(started_then_waited)(flags, "first")  # queued, for the loop to send: the worker's last
    second = on_process(started_then_waited)(flags, "second")
    flags.set("go")
    held.get(timeout=30)
    assert flags.wait("started-first")
    assert wait_until(lambda: info()["ready_workers"] == 1, 30), info()  # the replacement
    assert info()["queued_tasks"] == 1
    flags.set("go-first")
    assert first.get(timeout=30) is False, "the second task started while the first ran"
    assert second.get(timeout=30) is True


def test_a_prestarted_pool_replaces_a_worker_sent_its_last_task_by_submit_at_once(one_cold_worker: Flags) -> None:
    # A task that went from submit() straight to an idle worker as its last
    # (max_tasks_per_child) woke no look of the loop: a prestarted pool stayed
    # one short until that task ended, and the next task waited for a start-up.
    flags = one_cold_worker
    mp.configure_process_pool(max_tasks_per_child=1, prestart=True)
    assert wait_until(lambda: info()["ready_workers"] == 1, 30), info()
    first = on_process(started_then_waited)(flags, "first")  # nothing queued, an idle worker: sent at once
    assert flags.wait("started-first")
    assert wait_until(lambda: info()["ready_workers"] == 1, 30), info()  # the replacement
    flags.set("go-first")
    assert first.get(timeout=30) is False


@pytest.mark.timeout(120)
def test_max_tasks_per_child_keeps_no_more_worker_processes_than_num_workers() -> None:
    # A worker that reached its count was replaced as soon as its last task was
    # sent, so with num_workers=2 and max_tasks_per_child=1 a queue of 30 tasks
    # had up to 31 worker processes at once on a 2-core machine; with
    # timeout=0.5, about half of 30 no-op lambdas then timed out.
    fresh_process_pool(2)
    mp.configure_process_pool(max_tasks_per_child=1)
    with most_child_processes() as peak:
        handles = [on_process(os.getpid)() for _ in range(30)]
        assert len({h.get(timeout=60) for h in handles}) == 30
    assert peak() <= 2 + 1 + 1, f"{peak()} processes at once: the template, and workers for num_workers=2"


# -- shrinking ----------------------------------------------------------------------------------


@pytest.fixture
def two_warm_workers() -> Iterator[None]:
    """A pool of two workers, both started; the pool's size is put back after the test."""
    size = info()["num_workers"]
    fresh_process_pool(2)
    live_worker_pids(2)
    yield
    mp.configure_process_pool(size)


def held_tasks(tmp_path: Any, names: str) -> tuple[list[Flags], list[mp.AsyncHandle[int]]]:
    """One task per name, each started (on a worker of its own) and waiting for its gate's "go"."""
    gates = [Flags(str(tmp_path / name)) for name in names]
    handles = []
    for gate in gates:
        os.mkdir(gate.directory)
        handles.append(on_process(pid_once_released)(gate))
        assert gate.wait("started")
    return gates, handles


def test_shrinking_the_pool_while_its_workers_are_busy_retires_the_surplus(two_warm_workers: None, tmp_path: Any) -> None:
    # configure_process_pool(1) marked only the workers idle at that moment as
    # surplus: a pool shrunk while both its workers ran tasks kept both for good.
    restarted = restarts()
    gates, handles = held_tasks(tmp_path, "ab")
    mp.configure_process_pool(1)
    assert info()["ready_workers"] == 1  # the other takes no task now
    for gate in gates:
        gate.set("go")
    assert len({handle.get(timeout=30) for handle in handles}) == 2  # both finished their tasks
    assert wait_until(lambda: info()["live_workers"] == 1), info()
    assert len({h.get(timeout=30) for h in [on_process(os.getpid)() for _ in range(20)]}) == 1
    assert restarts() == restarted  # a shrink is no restart


def test_after_a_shrink_the_first_worker_to_finish_takes_the_queued_tasks(two_warm_workers: None, tmp_path: Any) -> None:
    # The oldest busy worker was kept, the others retired: the queued tasks
    # waited for its task, however long, while a worker that had finished left.
    gates, handles = held_tasks(tmp_path, "ab")
    queued = [on_process(os.getpid)() for _ in range(3)]
    mp.configure_process_pool(1)
    gates[1].set("go")  # the second task's worker finishes first; the first still runs
    second = handles[1].get(timeout=30)
    assert {handle.get(timeout=30) for handle in queued} == {second}
    assert not handles[0].is_ready()
    gates[0].set("go")
    assert handles[0].get(timeout=30) != second
    assert wait_until(lambda: info()["live_workers"] == 1), info()


def test_after_a_shrink_a_worker_busy_with_a_new_task_is_kept_over_one_that_finished_an_old_one(
    two_warm_workers: None, tmp_path: Any
) -> None:
    # Idle workers were kept first at every look: the worker that finished a task
    # from before the shrink took the queue back from the one running a new
    # task, and under a steady queue the pool never shrank.
    gates, handles = held_tasks(tmp_path, "ab")
    later = Flags(str(tmp_path / "c"))
    os.mkdir(later.directory)
    new = on_process(pid_once_released)(later)
    mp.configure_process_pool(1)
    gates[1].set("go")
    kept = handles[1].get(timeout=30)
    assert later.wait("started")  # the new task runs on the worker that finished first
    gates[0].set("go")
    assert handles[0].get(timeout=30) != kept
    queued = [on_process(os.getpid)() for _ in range(5)]
    later.set("go")
    assert new.get(timeout=30) == kept
    assert {handle.get(timeout=30) for handle in queued} == {kept}
    assert wait_until(lambda: info()["live_workers"] == 1), info()


def test_after_a_shrink_the_queue_goes_on_beside_the_last_tasks_of_recycled_workers(
    two_warm_workers: None, tmp_path: Any
) -> None:
    # Recycled workers (max_tasks_per_child) running their last tasks as the pool
    # shrank held the new size's places: the queue waited, with a replacement
    # ready, until all but one of those tasks had ended, however long.
    mp.configure_process_pool(max_tasks_per_child=1)
    gates, handles = held_tasks(tmp_path, "ab")  # each worker's one task: both are recycled
    queued = [on_process(os.getpid)() for _ in range(3)]
    mp.configure_process_pool(1)
    gates[1].set("go")
    handles[1].get(timeout=30)
    assert all(handle.get(timeout=10) for handle in queued)
    assert not handles[0].is_ready()
    gates[0].set("go")
    handles[0].get(timeout=30)


def test_a_worker_busy_as_a_pool_at_its_size_shrinks_counts_again_once_idle(one_cold_worker: Flags) -> None:
    # A size lowered back at once (2, then 1, nothing queued) marked the busy worker
    # as running tasks from before the shrink, and it stayed so once idle: later,
    # recycled (max_tasks_per_child), its last task ran beside its replacement's.
    flags = one_cold_worker
    mp.configure_process_pool(max_tasks_per_child=2)
    held = on_process(pid_once_released)(flags)  # the worker's first task of two
    assert flags.wait("started")
    mp.configure_process_pool(2)
    mp.configure_process_pool(1)
    flags.set("go")
    held.get(timeout=30)
    assert_runs_alone_then_the_next(flags)


def test_growing_back_before_the_busy_workers_finished_keeps_them(two_warm_workers: None, tmp_path: Any) -> None:
    # Each shrink retired a busy worker for good, and each growth started a new
    # one for the queued tasks: six processes at work for a size of two.
    pids = set(info()["worker_pids"])
    gates, handles = held_tasks(tmp_path, "ab")
    queued = [on_process(os.getpid)() for _ in range(4)]
    for _ in range(3):
        mp.configure_process_pool(1)
        mp.configure_process_pool(2)
    for gate in gates:
        gate.set("go")
    assert {handle.get(timeout=30) for handle in handles + queued} == pids
    assert set(info()["worker_pids"]) == pids


def test_a_worker_starting_as_the_pool_shrinks_is_ended_too() -> None:
    # The workers a look had decided to start were started after the shrink, and
    # none of them was counted: the pool stayed above its size for good.
    size = info()["num_workers"]
    fresh_process_pool(2)
    try:
        handles = [on_process(os.getpid)() for _ in range(4)]
        mp.configure_process_pool(1)
        assert all(handle.get(timeout=30) for handle in handles)
        assert wait_until(lambda: info()["live_workers"] == 1), info()
        assert len({h.get(timeout=30) for h in [on_process(os.getpid)() for _ in range(20)]}) == 1
    finally:
        mp.configure_process_pool(size)


# -- warm start ---------------------------------------------------------------------------------


def test_prestart_starts_the_workers_before_any_task() -> None:
    fresh_process_pool(2)
    assert info()["ready_workers"] == 0
    mp.configure_process_pool(initializer=load_model, initargs=("warm",), prestart=True)
    assert wait_until(lambda: info()["ready_workers"] == 2, 30), info()
    pids = set(info()["worker_pids"])
    names = {on_process(predict)(i).get(timeout=30)[0] for i in range(4)}
    assert names == {"warm"}
    assert set(info()["worker_pids"]) == pids


def cloudpickle_imported() -> bool:
    import sys

    return "cloudpickle" in sys.modules


@pytest.mark.timeout(60)
def test_prestarted_workers_can_already_load_a_function_sent_by_value() -> None:
    # Once only workers forked after the template's idle preload had cloudpickle,
    # so each prestarted worker imported it (about 17 ms, far more with more
    # workers than cores) inside its first task of a lambda or of a function of
    # the main script, and that counted against the task's timeout: with 8 on 2
    # cores, all 8 first tasks of timeout=0.05 timed out, and their workers were replaced.
    fresh_process_pool(1)
    mp.configure_process_pool(prestart=True)
    assert wait_until(lambda: info()["ready_workers"] == 1, 30), info()
    assert on_process(cloudpickle_imported)().get(timeout=30) is True


def test_importing_the_library_starts_no_worker_process() -> None:
    import subprocess
    import sys

    script = (
        "import makeparallel as mp, psutil, sys\n"
        "mp.configure_process_pool(2)\n"
        "print(len(psutil.Process().children()), mp.get_process_pool_info()['live_workers'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["0", "0"], out.stderr


# -- tasks sent ahead ---------------------------------------------------------------------------


def read_holding_the_gil(flags: Flags, fifo: str) -> int:
    """Say so, then block in a C call that holds the GIL (ctypes.PyDLL) until a byte arrives on ``fifo``.

    The worker's reader thread cannot read its pipe meanwhile, as in a NumPy call
    that holds it. Returns the byte read.
    """
    import ctypes

    fd = os.open(fifo, os.O_RDWR)  # opening a FIFO for reading and writing does not wait for a writer
    buffer = ctypes.create_string_buffer(1)
    flags.set("reading")
    assert ctypes.PyDLL(None).read(fd, buffer, 1) == 1
    os.close(fd)
    return buffer.raw[0]


def identity(x: int) -> int:
    return x


def test_tasks_under_changing_warning_filters_are_not_sent_ahead_to_a_worker_that_cannot_read(tmp_path: Path) -> None:
    # Each task went after its own filters: sent ahead to a worker in a C call holding the
    # GIL, the filters' messages filled its pipe, the loop's send blocked, and the other
    # worker got no task until that call ended.
    fresh_process_pool(2)
    flags, fifo = Flags(str(tmp_path)), str(tmp_path / "fifo")
    os.mkfifo(fifo)
    blocked = mp.parallel(backend="process")(read_holding_the_gil)(flags, fifo)
    try:
        assert flags.wait("reading", 30)
        with warnings.catch_warnings():
            for n in range(200):  # a program with many filters: each message of them is some 30 KB
                warnings.filterwarnings("ignore", message=f"{n:05d} " + "x" * 120, category=UserWarning)
            handles = []
            for n in range(200):
                with warnings.catch_warnings():
                    if n % 2:
                        warnings.filterwarnings("error", message=f"odd {n}")
                    handles.append(mp.parallel(backend="process")(identity)(n))
            assert [handle.get(timeout=30) for handle in handles] == list(range(200))  # on the other worker
        assert not blocked.done()
    finally:
        with open(fifo, "wb") as writer:
            writer.write(b"!")
    assert blocked.get(timeout=30) == ord("!")


# -- BLAS thread limits -------------------------------------------------------------------------


def test_workers_get_thread_limits_for_their_share_of_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    fresh_process_pool(2)
    expected = str(max(1, usable_cpus().cpus // 2))
    assert on_process(thread_limits)().get(timeout=30) == dict.fromkeys(THREAD_VARIABLES, expected)
    assert info()["thread_limits"] == dict.fromkeys(THREAD_VARIABLES, expected)


# A task with a timeout goes only to an idle worker, never behind another task: two run on two workers.
alone_on_a_worker = mp.parallel(backend="process", timeout=60)


def limits_once_two_ran(folder: str) -> tuple[int, str | None]:
    """This worker's pid and ``OPENBLAS_NUM_THREADS``, once two tasks of this kind started (on two workers)."""
    os.makedirs(folder, exist_ok=True)
    Path(folder, str(os.getpid())).touch()
    while len(os.listdir(folder)) < 2:
        threading.Event().wait(0.005)
    return os.getpid(), os.environ.get("OPENBLAS_NUM_THREADS")


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thread limits the pool sets itself, as on eight usable CPUs: 8 for one worker, 4 for two."""
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(_process, "usable_cpus", lambda: UsableCpus(8, "affinity"))


def limits_of_two_workers(folder: Path) -> list[str]:
    """The ``OPENBLAS_NUM_THREADS`` of two workers, each running a task at once."""
    ran = [alone_on_a_worker(limits_once_two_ran)(str(folder)) for _ in range(2)]
    return [limit for _, limit in (handle.get(timeout=30) for handle in ran)]


@pytest.mark.usefixtures("eight_cpus")
def test_a_grown_pool_replaces_its_workers_started_with_more_blas_threads(tmp_path: Path) -> None:
    # Grown from one worker to two, the pool ran the first worker's BLAS threads, all
    # the cores', beside the new one's half, for good: a library takes its count as it
    # loads. Once a worker of the new size is ready, the old one is replaced.
    fresh_process_pool(1)
    first = on_process(os.getpid)().get(timeout=30)
    assert on_process(thread_limits)().get(timeout=30)["OPENBLAS_NUM_THREADS"] == "8"
    restarts = info()["worker_restart_reasons"]

    mp.configure_process_pool(2, prestart=True)

    assert wait_until(lambda: gone(first), 30)
    assert limits_of_two_workers(tmp_path) == ["4", "4"]
    assert info()["worker_restart_reasons"] == restarts  # replaced as for a new initializer: no restart


@pytest.mark.usefixtures("eight_cpus")
def test_a_worker_still_starting_as_the_pool_grew_is_replaced_once_ready(tmp_path: Path) -> None:
    # Only the workers ready as another got ready were looked at: one still in its
    # initializer as the pool grew kept its threads, all the cores', for good.
    with one_of_two_workers_starting(tmp_path):
        ready = on_process(os.getpid)().get(timeout=20)
        [starting] = [pid for pid in info()["worker_pids"] if pid != ready]
    assert wait_until(lambda: gone(starting), 30)
    assert limits_of_two_workers(tmp_path / "ran") == ["4", "4"]


@pytest.mark.usefixtures("eight_cpus")
def test_a_worker_whose_start_the_pool_grew_during_is_replaced_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The pool's loop read the limits of a pool of one, then the pool grew before the
    # worker was in its list: it was never marked, and kept all the cores' threads.
    fresh_process_pool(1)
    computing, go_on = threading.Event(), threading.Event()
    limits_of = _process.thread_limits

    def limits_held_in_the_loop(num_workers: int) -> dict[str, str]:
        limits = limits_of(num_workers)
        if threading.current_thread().name == "makeparallel-process-loop" and not go_on.is_set():
            computing.set()
            assert go_on.wait(30)
        return limits

    monkeypatch.setattr(_process, "thread_limits", limits_held_in_the_loop)
    first = on_process(os.getpid)()  # its worker starts
    assert computing.wait(30)
    mp.configure_process_pool(2)  # as the first worker starts, its limits read
    go_on.set()
    first.get(timeout=30)
    rounds = itertools.count()

    # Else one of them kept 8 for good.
    assert wait_until(lambda: limits_of_two_workers(tmp_path / str(next(rounds))) == ["4", "4"], 30)


@pytest.mark.parametrize("value", ["", "0"])
def test_an_omp_num_threads_no_library_reads_as_a_count_leaves_the_others_limited(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenBLAS takes an empty or zero OMP_NUM_THREADS for none, and runs a thread per core.
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(_process, "usable_cpus", lambda: UsableCpus(8, "affinity"))
    fresh_process_pool(2)
    limits = on_process(thread_limits)().get(timeout=30)
    assert limits["OMP_NUM_THREADS"] == value
    assert limits["OPENBLAS_NUM_THREADS"] == limits["MKL_NUM_THREADS"] == limits["NUMEXPR_NUM_THREADS"] == "4"


def test_thread_limits_set_by_the_user_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    fresh_process_pool(1)
    limits = on_process(thread_limits)().get(timeout=30)
    assert limits["OMP_NUM_THREADS"] == "3"
    assert limits["VECLIB_MAXIMUM_THREADS"] == str(usable_cpus().cpus)
    # OpenBLAS, MKL and numexpr read OMP_NUM_THREADS where their own is not set: the
    # pool's own would override the user's count.
    assert limits["OPENBLAS_NUM_THREADS"] is None
    assert limits["MKL_NUM_THREADS"] is None
    assert limits["NUMEXPR_NUM_THREADS"] is None
    assert info()["thread_limits"] == {"VECLIB_MAXIMUM_THREADS": str(usable_cpus().cpus)}


def test_a_loop_the_system_refuses_a_descriptor_fails_the_queued_tasks_and_the_next_one_starts_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At the descriptor limit as the pool's loop started, making its selector raised
    # EMFILE: counted as the loop's death, health() said the process was not live for
    # good, once the descriptors were back and tasks ran again.
    fresh_process_pool(1)
    assert mp.shutdown(10)  # no loop runs: the next task starts one
    mp.reset_shutdown()
    made = _process.selectors.DefaultSelector
    submitted = threading.Event()

    def refused() -> Any:
        monkeypatch.setattr(_process.selectors, "DefaultSelector", made)  # once
        assert submitted.wait(30)  # the task is queued: it is the loop's
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(_process.selectors, "DefaultSelector", refused)
    handle = mp.parallel(backend="process")(noop)()
    submitted.set()
    with pytest.raises(mp.WorkerCrashedError, match=r"refused the process pool what it needs \(OSError: \[Errno 24\]"):
        handle.get(timeout=30)
    assert info()["loop_deaths"] == 0 and mp.health()["live"]
    assert mp.parallel(backend="process")(os.getpid)().get(timeout=30) != os.getpid()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("as_map", [False, True], ids=["task", "map-item"])
def test_a_worker_killed_as_the_pool_shuts_down_is_not_reported_replaced(tmp_path: Path, as_map: bool) -> None:
    # Killed as a shutdown waited for its task, with nothing queued, it was counted as a
    # restart and its task told "a new worker takes its place": the pool started none.
    flags = Flags(str(tmp_path))
    fresh_process_pool(1)
    held = functools.partial(mark_then_wait, flags)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            mp.parallel_map(held, ["held"], backend="process") if as_map else on_process(held)("held").get(timeout=60)
        except mp.WorkerCrashedError as error:  # (read below)
            outcome.append(error)

    running = threading.Thread(target=run)
    running.start()
    assert flags.wait("held", 30)
    [pid] = info()["worker_pids"]  # (the pool's one worker, busy)
    before = restarts()
    shutting_down = threading.Thread(target=mp.shutdown, args=(60,))
    shutting_down.start()
    try:
        assert wait_until(lambda: info()["closed"], 30)
        os.kill(pid, signal.SIGKILL)
    finally:
        running.join(60)
        flags.set("teardown")
        shutting_down.join(60)
    [error] = outcome
    assert isinstance(error, mp.WorkerCrashedError), repr(error)
    assert re.search(r"SIGKILL.*the pool is shutting down, so no worker takes its place", str(error)), str(error)
    assert "new worker" not in str(error)
    assert restarts() == before
    assert not _runtime._backends["process"]._recent_restarts  # type: ignore[attr-defined]  # no restart storm
    mp.reset_shutdown()


@pytest.mark.timeout(90)
def test_an_initializer_failing_as_the_pool_shuts_down_is_not_told_a_new_worker_starts(tmp_path: Path) -> None:
    # Its task failed with "...; the task was not run, and the pool will start a new
    # worker", though the closed pool, with no task waiting for a worker, starts none.
    flags = Flags(str(tmp_path))
    fresh_process_pool(1)
    mp.configure_process_pool(initializer=raise_when_told, initargs=(str(tmp_path),))
    handle = on_process(noop)()
    shutting_down = threading.Thread(target=mp.shutdown, args=(60,))
    try:
        assert flags.wait("initializing", 30)
        before = restarts()
        shutting_down.start()
        assert wait_until(lambda: info()["closed"], 30)
        flags.set("go")
        with pytest.raises(mp.WorkerCrashedError) as caught:
            handle.get(timeout=30)
    finally:
        flags.set("teardown")
        shutting_down.join(60)
        mp.reset_shutdown()
    message = str(caught.value)
    assert re.search(r"raise_when_told raised ConnectionRefusedError.*the task was not run, and the pool is "
                     r"shutting down, so no worker takes its place", message), message
    assert "new worker" not in message
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert restarts() == before


@pytest.mark.timeout(90)
def test_a_task_timing_out_as_the_pool_shuts_down_is_not_told_a_new_worker_took_its_place(tmp_path: Path) -> None:
    # Its worker, stopped at the timeout while a shutdown waited, was not replaced (the closed
    # pool starts none for an empty queue), yet the error said "a new one took its place".
    flags = Flags(str(tmp_path))
    fresh_process_pool(1)
    first = on_process(functools.partial(mark_then_wait, flags))("first")
    # Queued behind the first on the pool's one worker: its timeout runs from its start, once the pool closed.
    timed = mp.parallel(backend="process", timeout=0.5)(functools.partial(mark_then_wait, flags))("timed")
    shutting_down = threading.Thread(target=mp.shutdown, args=(60,))
    try:
        assert flags.wait("first", 30)
        before = restarts()
        shutting_down.start()
        assert wait_until(lambda: info()["closed"], 30)
        flags.set("first-go")
        assert first.get(timeout=30) == "first"
        with pytest.raises(mp.TaskTimeoutError) as caught:
            timed.get(timeout=30)
    finally:
        flags.set("teardown")
        shutting_down.join(60)
        mp.reset_shutdown()
    assert "the pool is shutting down, so no worker takes its place" in str(caught.value), str(caught.value)
    assert "new one" not in str(caught.value)
    assert restarts() == before
