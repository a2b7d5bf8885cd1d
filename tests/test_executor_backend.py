"""Any ``concurrent.futures.Executor`` as a backend: the library's API on someone else's pool.

One behaviour table over the executors users bring (``ThreadPoolExecutor`` in
this process; ``ProcessPoolExecutor`` and loky's reusable executor elsewhere),
then what differs between running here and running elsewhere: cancellation,
timeouts, progress, a worker that dies.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures as cf
import functools
import gc
import os
import re
import signal
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from typing import Any

import loky
import pytest
from chained_errors import explicit_cause, implicit_context, suppressed_context
from loky import get_reusable_executor
from pool_helpers import Flags, mark_then_wait, wait_for_flag, wait_until
from unrunnable_backends import UNRUNNABLE_BACKENDS

import makeparallel as mp
from makeparallel import _runtime
from makeparallel._backends import _adapter
from makeparallel._remote_errors import RemoteTraceback


def square(x: int) -> int:
    return x * x


@mp.parallel
def decorated_square(x: int) -> int:
    return x * x


def fail(message: str) -> None:
    raise KeyError(message)


def fail_on_13(x: int) -> int:
    if x == 13:
        raise KeyError(x)
    return x


class InlineExecutor(cf.Executor):
    """Runs each call at once, on the submitting thread, as an executor for debugging may."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


def inner_map_inline(x: int) -> tuple[int, list[str]]:
    return x, list(mp.imap(str, range(3), backend=InlineExecutor()))


def set_flag(flags: Flags, name: str) -> None:
    flags.set(name)


def own_pid() -> int:
    return os.getpid()


def warmed(executor: cf.Executor) -> cf.Executor:
    """Start the executor's threads and processes now, before any test looks at threads."""
    list(executor.map(square, range(8)))
    return executor


def reusable_loky(max_workers: int) -> cf.Executor:
    """loky's reusable executor, its workers never leaving for being idle.

    A worker leaving after loky's default 10 s idle as a task arrives makes loky
    warn from its manager thread; under the suite's warnings-as-errors the
    warning broke the executor, and the task failed (on a loaded machine).
    """
    return get_reusable_executor(max_workers=max_workers, timeout=None)


@pytest.fixture(scope="module", autouse=True)
def remote_pools() -> Iterator[dict[str, cf.Executor]]:
    """The process pools, shared by the module and started before any test's thread check."""
    with cf.ProcessPoolExecutor(max_workers=2) as process_pool:
        loky_pool = reusable_loky(max_workers=2)
        try:
            yield {"process_pool": warmed(process_pool), "loky": warmed(loky_pool)}
        finally:
            loky_pool.shutdown(wait=True)


@pytest.fixture
def process_pool(remote_pools: dict[str, cf.Executor]) -> cf.Executor:
    return remote_pools["process_pool"]


@pytest.fixture(params=["thread_pool", "process_pool", "loky"])
def executor(request: pytest.FixtureRequest) -> Iterator[cf.Executor]:
    if request.param == "thread_pool":
        with cf.ThreadPoolExecutor(max_workers=2) as pool:
            yield pool
    else:
        yield request.getfixturevalue("remote_pools")[request.param]


@pytest.fixture
def flags(tmp_path: Any) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("release")  # whatever the test did, no task waits past its end


# -- the same API on every executor ----------------------------------------------------------------


def test_results_and_handles(executor: cf.Executor) -> None:
    remote_square = mp.parallel(backend=executor)(square)
    handle = remote_square(7)
    assert handle.get(timeout=30) == 49
    assert handle.is_ready() and handle.status == "succeeded" and handle.get_progress() == 1.0
    assert mp.gather([remote_square(i) for i in range(6)], timeout=30) == [i * i for i in range(6)]


def test_errors_keep_their_type_with_a_note(executor: cf.Executor) -> None:
    handle = mp.parallel(backend=executor)(fail)("missing")
    with pytest.raises(KeyError, match="missing") as caught:
        handle.get(timeout=30)
    assert any("makeparallel: task" in note for note in getattr(caught.value, "__notes__", []))


class HoldsALock(Exception):
    """An error whose attribute pickle cannot send: urllib's ``HTTPError`` holds an open response so."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()
        self.code = 7


class RefusesPickling(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("not today")


def raise_unpicklable(kind: type[Exception]) -> None:
    raise kind("raised on a worker")


@pytest.mark.parametrize("kind", [HoldsALock, RefusesPickling], ids=lambda kind: kind.__name__)
def test_an_error_pickle_cannot_send_keeps_its_class_and_traceback(executor: cf.Executor, kind: type[Exception]) -> None:
    # ProcessPoolExecutor and loky failed the task with the pickling error instead.
    handle = mp.parallel(backend=executor)(raise_unpicklable)(kind)
    with pytest.raises(kind, match="raised on a worker") as caught:
        handle.get(timeout=30)
    assert getattr(caught.value, "code", 7) == 7
    if not isinstance(executor, cf.ThreadPoolExecutor):
        assert "in raise_unpicklable" in str(caught.value.__cause__)  # the worker's traceback, as text


class BuiltFromTwoArguments(Exception):
    """An error pickle sends but cannot rebuild: its ``__init__`` takes two arguments, its ``args`` hold one."""

    def __init__(self, code: int, where: str) -> None:
        super().__init__(f"{code} at {where}")
        self.code = code


def raise_built_from_two_arguments() -> None:
    raise BuiltFromTwoArguments(5, "the worker")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("make_pool", [cf.ProcessPoolExecutor, loky.ProcessPoolExecutor], ids=["process_pool", "loky"])
def test_an_error_pickle_cannot_rebuild_keeps_its_class_and_the_pool(make_pool: Any) -> None:
    # The parent failed to unpickle it: the pool broke, the task failed with WorkerCrashedError, and so did every later one.
    with make_pool(max_workers=1) as pool:
        with pytest.raises(BuiltFromTwoArguments, match="5 at the worker") as caught:
            mp.parallel(backend=pool)(raise_built_from_two_arguments)().get(timeout=30)
        assert caught.value.code == 5
        assert "in raise_built_from_two_arguments" in str(caught.value.__cause__)  # the worker's traceback, as text
        assert mp.parallel(backend=pool)(square)(3).get(timeout=30) == 9  # the pool serves on


EXCEPTION_GROUP: Any = getattr(builtins, "ExceptionGroup", None)  # Python 3.11 on


def member_with_a_cause() -> None:
    try:
        {}["id"]
    except KeyError as inner:
        member = ValueError("member")
        member.__cause__ = inner
    raise EXCEPTION_GROUP("several", [member, TypeError("other")])


def chained_on_item_13(x: int) -> int:
    if x == 13:
        explicit_cause()
    return x


def below(error: BaseException) -> BaseException | None:
    """The exception printed below ``error``: its cause, else its context unless suppressed."""
    if error.__cause__ is not None or error.__suppress_context__:
        return error.__cause__
    return error.__context__


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("raise_it", "suppressed"),
    [(explicit_cause, True), (implicit_context, False), (suppressed_context, True)],
    ids=["explicit_cause", "implicit_context", "suppressed_context"],
)
def test_an_error_keeps_its_chain_as_objects(executor: cf.Executor, raise_it: Any, suppressed: bool) -> None:
    # Elsewhere, the executor pickled the error without its chain: only the text of the traceback was left.
    with pytest.raises(ValueError) as caught:
        mp.parallel(backend=executor)(raise_it)().get(timeout=60)
    error = caught.value
    assert type(error.__context__) is KeyError and error.__context__.args == ("id",)
    assert error.__suppress_context__ is suppressed
    if raise_it is explicit_cause:
        assert error.__cause__ is error.__context__  # one object, as where it was raised
    if not isinstance(executor, cf.ThreadPoolExecutor):
        remote = below(error) if raise_it is suppressed_context else below(error.__context__)
        assert isinstance(remote, RemoteTraceback) and raise_it.__name__ in str(remote)  # the worker's, below the chain


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup exists from Python 3.11")
def test_the_members_of_a_group_keep_their_chains(executor: cf.Executor) -> None:
    with pytest.raises(EXCEPTION_GROUP) as caught:
        mp.parallel(backend=executor)(member_with_a_cause)().get(timeout=60)
    member, other = caught.value.exceptions
    assert type(member) is ValueError and type(other) is TypeError
    assert type(member.__cause__) is KeyError and member.__cause__.args == ("id",)


@pytest.mark.timeout(120)
def test_a_map_item_error_keeps_its_chain(executor: cf.Executor) -> None:
    with pytest.raises(ValueError, match="bad row") as caught:
        mp.parallel_map(chained_on_item_13, range(30), backend=executor, chunksize=10)
    assert type(caught.value.__cause__) is KeyError and caught.value.__cause__.args == ("id",)


class CutsErrorsShort(cf.Executor):
    """Runs each call on the submitting thread, and cuts a long error short as a Dask worker does.

    ``distributed.utils.truncate_exception``: an error whose ``str()`` passes
    ``limit`` characters is rebuilt as ``type(error)("Long error message", str(error)[:limit])``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        future: cf.Future[Any] = cf.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:
            text = str(error)
            future.set_exception(type(error)("Long error message", text[: self.limit]) if len(text) > self.limit else error)
        return future


def raise_a_long_message() -> None:
    raise ValueError("x" * 20_000)


@pytest.mark.timeout(60)
def test_an_error_with_a_long_message_arrives_whole_past_an_executor_that_cuts_errors_short() -> None:
    # The wrapper's str() held the pickled error and its traceback: Dask cut it short, and
    # unwrapping the shortened wrapper raised in the future's callback: the handle stayed pending for good.
    with pytest.raises(ValueError) as caught:
        mp.parallel(backend=CutsErrorsShort(limit=10_000))(raise_a_long_message)().get(timeout=30)
    assert caught.value.args == ("x" * 20_000,)


@pytest.mark.timeout(60)
def test_an_error_cut_short_by_its_executor_fails_the_task_with_its_text() -> None:
    handle = mp.parallel(backend=CutsErrorsShort(limit=50))(raise_a_long_message)()
    with pytest.raises(mp.TaskError, match="cut short, so it could not be rebuilt here: .*ValueError: xxx"):
        handle.get(timeout=30)
    assert handle.status == "failed"


class ExitsAsItIsPickled:
    """A result whose pickling raises ``SystemExit``: a ``__reduce__`` that calls ``sys.exit()``."""

    def __reduce__(self) -> Any:
        raise SystemExit(3)


class InterruptsAsItIsPickled:
    def __reduce__(self) -> Any:
        raise KeyboardInterrupt


class RefusesToBePickled:
    def __reduce__(self) -> Any:
        raise ValueError("no pickling today")


def give_back(make: Any) -> Any:
    return make()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool_name", ["process_pool", "loky"])
@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (ExitsAsItIsPickled, "SystemExit: 3"),
        (InterruptsAsItIsPickled, "KeyboardInterrupt"),
        (threading.Lock, "TypeError: cannot pickle '_thread.lock' object"),
        (RefusesToBePickled, "ValueError: no pickling today"),
    ],
    ids=["system_exit", "keyboard_interrupt", "lock", "reduce_raises"],
)
def test_a_result_that_cannot_be_pickled_fails_its_task_with_task_serialization_error(
    remote_pools: dict[str, cf.Executor], pool_name: str, make: Any, detail: str
) -> None:
    # The executor's worker sends the error of pickling the result as the future's: a
    # SystemExit there ended the caller's program at get(), and a TypeError read as the task's own.
    pool = remote_pools[pool_name]
    handle = mp.parallel(backend=pool)(give_back)(make)
    with pytest.raises(mp.TaskSerializationError) as caught:
        handle.get(timeout=60)
    message = str(caught.value)
    assert f"the result of task {handle.get_task_id()} (give_back) could not be pickled" in message
    assert detail in message and "backend='thread'" in message
    assert caught.value.__cause__ is not None and detail.startswith(type(caught.value.__cause__).__name__)
    assert handle.status == "failed"
    assert mp.parallel(backend=pool)(square)(4).get(timeout=60) == 16  # the pool serves on


@pytest.mark.timeout(120)
def test_a_result_that_cannot_be_pickled_is_told_apart_while_asyncio_is_half_imported(
    remote_pools: dict[str, cf.Executor], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another thread importing asyncio for the first time has it in sys.modules before
    # its classes: telling a SystemExit from a Dask fetch's CancelledError raised there.
    monkeypatch.setitem(sys.modules, "asyncio", types.ModuleType("asyncio"))
    handle = mp.parallel(backend=remote_pools["process_pool"])(give_back)(ExitsAsItIsPickled)
    with pytest.raises(mp.TaskSerializationError, match="SystemExit: 3"):
        handle.get(timeout=60)


def raise_a_type_error() -> None:
    raise TypeError("the task's own")


def test_an_error_the_task_raised_stays_its_own_beside_one_of_pickling_its_result(executor: cf.Executor) -> None:
    with pytest.raises(TypeError, match="the task's own") as caught:
        mp.parallel(backend=executor)(raise_a_type_error)().get(timeout=30)
    assert not isinstance(caught.value, mp.TaskSerializationError)


def rebuilt_in(message: str, parent: int, stop: str) -> Exception:
    if os.getpid() == parent:
        raise getattr(builtins, stop)(9)
    return StopsAsItIsUnpickledInTheParent(message, parent, stop)


class StopsAsItIsUnpickledInTheParent(Exception):
    """An error that pickles and unpickles in the worker; unpickled in the parent, it raises the ``args[2]`` named there."""

    def __reduce__(self) -> Any:
        return (rebuilt_in, self.args)


def raise_stopping_in(parent: int, stop: str) -> None:
    raise StopsAsItIsUnpickledInTheParent("raised in the worker", parent, stop)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool_name", ["process_pool", "loky"])
@pytest.mark.parametrize("stop", ["SystemExit", "KeyboardInterrupt"])
def test_an_error_whose_unpickling_raises_system_exit_here_fails_its_task_and_the_pool_serves_on(
    remote_pools: dict[str, cf.Executor], pool_name: str, stop: str
) -> None:
    # Unpickled in the executor's done-callback, which caught Exception only: a SystemExit left the
    # handle pending for good, and ended the thread of ProcessPoolExecutor that ends its futures.
    pool = remote_pools[pool_name]
    handle = mp.parallel(backend=pool)(raise_stopping_in)(os.getpid(), stop)
    with pytest.raises(mp.TaskError, match=rf"raised StopsAsItIsUnpickledInTheParent: .*could not be unpickled here: {stop}"):
        handle.get(timeout=60)
    assert handle.status == "failed"
    assert mp.parallel(backend=pool)(square)(4).get(timeout=60) == 16  # the pool serves on


def fail_with_a_lock_on_13(x: int) -> int:
    if x == 13:
        raise HoldsALock(f"item {x}")
    return x


@pytest.mark.parametrize("on_error", ["skip", "none"])
def test_a_map_that_goes_on_past_an_error_pickle_cannot_send(executor: cf.Executor, on_error: str) -> None:
    # Elsewhere, the chunk's results held the error, which could not be pickled back: the whole map failed (TypeError).
    results = mp.parallel_map(fail_with_a_lock_on_13, range(30), backend=executor, chunksize=10, on_error=on_error)
    expected = [x for x in range(30) if x != 13] if on_error == "skip" else [None if x == 13 else x for x in range(30)]
    assert results == expected


@pytest.mark.parametrize("fn", [square, decorated_square, lambda x: x * x], ids=["plain", "decorated", "lambda"])
def test_maps_in_chunks(executor: cf.Executor, fn: Any) -> None:
    items = range(200)
    assert mp.parallel_map(fn, items, backend=executor) == [x * x for x in items]
    assert sorted(mp.imap(fn, items, backend=executor, ordered=False, chunksize=7)) == [x * x for x in items]


async def square_later(x: int) -> int:
    import asyncio

    await asyncio.sleep(0)
    return x * x


async def fail_later(message: str) -> None:
    raise KeyError(message)


def test_an_async_def_function_runs_to_its_end_on_every_executor(executor: cf.Executor) -> None:
    # Elsewhere, the call returned its coroutine, which could not be pickled back
    # ("cannot pickle 'coroutine' object"), and a map's chunk failed looking for
    # the task to cancel it with (AttributeError on None): its body never ran.
    remote = mp.parallel(backend=executor)(square_later)
    assert remote(7).get(timeout=30) == 49
    assert mp.parallel_map(square_later, range(20), backend=executor) == [x * x for x in range(20)]
    with pytest.raises(KeyError, match="late") as caught:
        mp.parallel(backend=executor)(fail_later)("late").get(timeout=30)
    assert any("makeparallel: task" in note for note in getattr(caught.value, "__notes__", []))


def test_a_failing_map_item_is_named(executor: cf.Executor) -> None:
    with pytest.raises(KeyError) as caught:
        mp.parallel_map(fail, ["a", "b"], backend=executor, chunksize=1)
    assert any("raised by item 0" in note for note in getattr(caught.value, "__notes__", []))


def test_imap_hands_out_the_results_before_a_failing_item_of_a_chunk_run_in_this_process(executor: cf.Executor) -> None:
    got = []
    with pytest.raises(KeyError) as caught:
        for result in mp.imap(fail_on_13, range(30), chunksize=10, backend=executor):
            got.append(result)
    assert caught.value.args == (13,)
    assert not [name for name in vars(caught.value) if name.startswith("_makeparallel")]
    # Elsewhere, the results of the chunk's items before it stay where the chunk ran.
    assert got == list(range(13 if isinstance(executor, cf.ThreadPoolExecutor) else 10))


@pytest.mark.parametrize("outer", ["thread", "process"])
def test_a_map_inside_a_map_item_on_an_executor_running_calls_inline_keeps_its_results_apart(outer: str) -> None:
    # The inner map's chunk, run on the outer chunk's thread, took the outer
    # chunk's task for its own: on a worker process it sent its results as the
    # outer chunk's, and the outer chunk's own were lost.
    results = mp.parallel_map(inner_map_inline, range(6), chunksize=6, backend=outer)
    assert results == [(x, ["0", "1", "2"]) for x in range(6)]


def test_groups_callbacks_metrics_and_events(executor: cf.Executor) -> None:
    events: list[tuple[str, str]] = []
    completed: list[int] = []
    failed: list[BaseException] = []
    ended = threading.Semaphore(0)
    name = f"adapter_metrics_{id(executor)}"  # metrics of one parametrization only

    def listen(event: mp.TaskEvent) -> None:
        if event.name == name:
            events.append((event.kind, event.status))

    counted = mp.parallel(backend=executor, name=name)(square)
    mp.add_task_listener(listen)
    try:
        with mp.ParallelContext(backend=executor) as group:
            group.submit(counted, 3).on_complete(completed.append).add_done_callback(lambda _: ended.release())
            group.submit(square, 4)
        errors = mp.parallel(backend=executor, name=name)(fail)("x")
        errors.on_error(failed.append)
        errors.wait(30)
        assert ended.acquire(timeout=30)
    finally:
        mp.remove_task_listener(listen)
    assert group.results() == [9, 16]
    assert completed == [9] and isinstance(failed[0], KeyError)
    metrics = mp.get_metrics(name)
    assert metrics is not None and metrics.completed_tasks == 1 and metrics.failed_tasks == 1
    # "finished" is told after the callbacks and waiters: wait for it, boundedly.
    assert wait_until(lambda: len(events) == 6), events
    assert sorted(kind for kind, _ in events) == ["finished"] * 2 + ["started"] * 2 + ["submitted"] * 2
    assert sorted(status for kind, status in events if kind == "finished") == ["failed", "succeeded"]


def test_configure_makes_an_executor_the_default(executor: cf.Executor) -> None:
    mp.configure(backend=executor)

    @mp.parallel
    def where() -> int:
        return os.getpid()

    in_process = isinstance(executor, cf.ThreadPoolExecutor)
    assert (where().get(timeout=30) == os.getpid()) == in_process
    assert "executor" in _runtime.default_backend_name()


def test_one_adapter_per_executor_shows_in_health(executor: cf.Executor) -> None:
    first = mp.parallel(backend=executor)(square)
    second = mp.parallel(backend=executor)(square)
    assert first._spec.backend is second._spec.backend
    assert first(2).get(timeout=30) == 4
    pools = mp.health()["pools"]
    assert any(info.get("executor") == repr(executor) for info in pools.values())


def one_worker_executor(kind: str) -> cf.Executor:
    if kind == "thread_pool":
        return cf.ThreadPoolExecutor(max_workers=1)
    if kind == "process_pool":
        return cf.ProcessPoolExecutor(max_workers=1)
    return mp.Executor(backend="process", max_workers=1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["thread_pool", "process_pool", "mp_executor"])
def test_tasks_queued_behind_busy_workers_show_in_the_info_and_health(kind: str, flags: Flags) -> None:
    # The info had no queued_tasks: health() said ok, and the pool gauges 0, however many piled up.
    with one_worker_executor(kind) as pool:
        held = mp.parallel(backend=pool)(mark_then_wait)(flags, "held")
        assert flags.wait("held", 30)  # its one worker runs it
        queued = [mp.parallel(backend=pool)(square)(x) for x in range(3)]
        try:
            report = mp.health(memory_limit_percent=100.0, queue_limit=2)
            pool_name = f"executor-{id(pool):x}"
            assert report["pools"][pool_name]["queued_tasks"] == 3
            assert report["pools"][pool_name]["busy_workers"] == 1  # the info had no busy count: the gauges read 0
            assert f"{pool_name} pool saturated: 3 tasks queued for 1 workers (limit 2)" in report["reasons"]
        finally:
            flags.set("held-go")
        assert mp.gather([held, *queued], timeout=30) == ["held", 0, 1, 4]
        assert (_runtime.pool_infos()[pool_name]["queued_tasks"], _runtime.pool_infos()[pool_name]["busy_workers"]) == (0, 0)


@pytest.mark.timeout(60)
def test_busy_workers_in_this_process_are_those_running_the_librarys_tasks(gate: threading.Event) -> None:
    """Not a worker running someone else's call (the executor is shared), nor a task a waiter runs inline on its own thread.

    Of two workers, one runs another user's call and one a task; a second task,
    queued, is run inline by a thread that waits for it: one worker is busy with
    the library's tasks.
    """
    with cf.ThreadPoolExecutor(max_workers=2) as pool:
        theirs_running, ours_running, inline_running = threading.Event(), threading.Event(), threading.Event()

        def theirs() -> None:
            theirs_running.set()
            assert gate.wait(30)

        def ours(started: threading.Event) -> None:
            started.set()
            assert gate.wait(30)

        other_user = pool.submit(theirs)
        assert theirs_running.wait(10)
        task = mp.parallel(backend=pool)(ours)
        running = task(ours_running)
        assert ours_running.wait(10)
        queued = task(inline_running)
        waiter = threading.Thread(target=queued.get, name="test-inline-waiter")  # no timeout: it runs the task inline
        waiter.start()
        try:
            assert inline_running.wait(10), "the waiter did not run the queued task inline"
            pool_name = f"executor-{id(pool):x}"
            info = _runtime.pool_infos()[pool_name]
            assert (info["busy_workers"], info["queued_tasks"]) == (1, 0), info
        finally:
            gate.set()
            waiter.join(30)
        assert not waiter.is_alive()
        running.get(30)
        other_user.result(30)
        assert _runtime.pool_infos()[pool_name]["busy_workers"] == 0


# -- shutdown -----------------------------------------------------------------------------------------


def test_mp_shutdown_refuses_new_tasks_but_leaves_the_executor_running() -> None:
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        remote = mp.parallel(backend=pool)(square)
        assert remote(2).get(timeout=30) == 4
        assert mp.shutdown(timeout_secs=10)
        with pytest.raises(mp.ShutdownError):
            remote(3)
        assert pool.submit(square, 5).result(timeout=30) == 25  # still the user's, still running
        mp.reset_shutdown()
        assert remote(3).get(timeout=30) == 9


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["ThreadPoolExecutor", "ProcessPoolExecutor", "mp.Executor"])
def test_a_task_mp_shutdown_cancels_says_it_was_cancelled_not_by_its_executor(kind: str, flags: Flags) -> None:
    # mp.shutdown(cancel_pending=True) cancels the executor's futures of the tasks not started:
    # their handles said "cancelled by its executor <...>", blaming the user's executor, which
    # was never shut down, for the program's own cancel. They read as on the library's pools.
    pool: Any = {
        "ThreadPoolExecutor": lambda: cf.ThreadPoolExecutor(max_workers=1),
        "ProcessPoolExecutor": lambda: cf.ProcessPoolExecutor(max_workers=1),
        "mp.Executor": lambda: mp.Executor(max_workers=1),
    }[kind]()
    try:
        blocker = mp.parallel(backend=pool)(mark_then_wait)(flags, "busy")
        assert flags.wait("busy", 30)
        # ProcessPoolExecutor moves max_workers + 1 calls to its workers' queue, beside the running
        # one, where they cannot be cancelled: the fourth stays in its own.
        queued = [mp.parallel(backend=pool)(square)(x) for x in range(4)]
        assert not mp.shutdown(timeout_secs=0, cancel_pending=True)
        flags.set("busy-go")
        assert blocker.get(timeout=30) == "busy"
        with pytest.raises(mp.TaskCancelledError) as caught:
            queued[-1].get(timeout=30)
        assert str(caught.value) == f"task {queued[-1].get_task_id()} (square) was cancelled"
    finally:
        flags.set("busy-go")
        pool.shutdown()


def test_an_executor_shut_down_by_its_owner_refuses_with_shutdown_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = cf.ThreadPoolExecutor(max_workers=1)
    remote = mp.parallel(backend=pool)(square)
    pool.shutdown()
    with pytest.raises(mp.ShutdownError, match=r"is shut down or closed .*; pass a running one as backend=") as caught:
        remote(2)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert mp.get_active_task_count() == 0  # nothing left counted
    # Health said ok while every task failed: a load balancer kept sending requests.
    report = mp.health()
    assert report["status"] == "unhealthy" and not report["ready"] and report["live"]
    assert any(reason.startswith(f"executor-{id(pool):x} pool fails every task: ") for reason in report["reasons"])
    monkeypatch.setattr(_adapter, "REFUSALS_SHOWN_FOR", 0.0)  # long after the last refusal
    assert mp.health()["status"] != "unhealthy"
    del remote, caught  # (the error's traceback holds the pool too)
    gc.collect()
    assert f"executor-{id(pool):x}" not in _runtime.pool_infos()  # nothing holds it: not reported at all


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", [cf.ThreadPoolExecutor, cf.ProcessPoolExecutor])
def test_a_task_the_executor_refuses_counts_as_failed_not_cancelled(kind: type[cf.Executor]) -> None:
    # Accepted, then refused by the executor's submit, the task was cancelled by
    # the caller's withdrawal: the metrics counted a cancellation and listeners
    # heard "cancelled", for a call that raised ShutdownError, where a task its
    # pool fails before it starts counts as failed (and a held task refused so,
    # release_held, already did).
    name = f"adapter_refused_{uuid.uuid4().hex}"
    pool = kind(max_workers=1)
    pool.shutdown()  # (a process pool shut down before its first task started no process)
    remote = mp.parallel(backend=pool, name=name)(square)
    events: list[mp.TaskEvent] = []
    mp.add_task_listener(events.append)
    try:
        with pytest.raises(mp.ShutdownError, match="is shut down or closed"):
            remote(2)
    finally:
        mp.remove_task_listener(events.append)
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert (metrics.total_tasks, metrics.failed_tasks, metrics.cancelled_tasks) == (1, 1, 0)
    assert (metrics.running_tasks, metrics.queued_tasks) == (0, 0)
    assert metrics.total_execution_time_ms == 0 and metrics.max_queue_wait_ms == 0  # it never started
    told = [(event.kind, event.status, event.duration) for event in events if event.name == name]
    assert told == [("submitted", "pending", None), ("finished", "failed", None)]
    assert mp.get_active_task_count() == 0
    del remote
    gc.collect()  # the pool, refusing, is no longer reported by health()


# -- in this process: the executor runs the handle ----------------------------------------------------


def test_a_queued_task_cancelled_never_runs(gate: threading.Event) -> None:
    ran = threading.Event()
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        blocker = mp.parallel(backend=pool)(gate.wait)(30)
        queued = mp.parallel(backend=pool)(ran.set)()
        assert queued.status == "pending"
        assert queued.cancel() is True
        gate.set()
        assert blocker.get(timeout=30) is True
    assert queued.cancelled() and not ran.is_set()


def _cancel_the_queued(queued: Any, handles: list[Any]) -> None:
    assert all(handle.cancel() for handle in handles)


def _stop_a_map_with_an_items_error(queued: Any, handles: list[Any]) -> None:
    # Its consumer runs the first item inline (the worker is held), which fails: the rest are cancelled together.
    with pytest.raises(ValueError, match="the first item fails"):
        mp.parallel_map(queued, ["fail", 1, 2, 3], chunksize=1)


def _time_out_a_map(queued: Any, handles: list[Any]) -> None:
    # A wait with a timeout runs nothing inline: every item stays queued until the map times out.
    with pytest.raises(mp.TaskTimeoutError):
        mp.parallel_map(queued, [1, 2, 3], chunksize=1, timeout=0.2)


def fails_on_fail(item: Any) -> Any:
    if item == "fail":
        raise ValueError("the first item fails")
    return item


@pytest.mark.timeout(60)
@pytest.mark.parametrize("end", [_cancel_the_queued, _stop_a_map_with_an_items_error, _time_out_a_map])
def test_a_task_ended_while_queued_in_an_mp_executor_leaves_its_pool(gate: threading.Event, end: Any) -> None:
    """The executor's task that carried it stayed queued until a worker reached it.

    So the call counted as active (``get_active_task_count()``, ``wait_until_idle()``),
    queued in its function's metrics and in the executor's pool info, after it ended:
    cancelled, ended with its map, or run inline by the map's consumer.
    """
    name = f"adapter_dropped_{uuid.uuid4().hex}"
    started = threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(30)

    with mp.Executor(max_workers=1) as pool:
        blocker = mp.parallel(backend=pool)(hold)()
        queued = mp.parallel(backend=pool, name=name)(fails_on_fail)
        handles = [queued(x) for x in range(2)]
        try:
            assert started.wait(30)
            end(queued, handles)
            left = sum(not handle.done() for handle in handles)  # queued still (a map ends its own items)
            assert mp.get_active_task_count() == 1 + left
            info = _runtime.pool_infos()[f"Executor-{id(pool):x}"]
            assert (info["queued_tasks"], info["active_tasks"]) == (left, 1 + left)
            metrics = mp.get_metrics(name)
            assert metrics is not None and (metrics.running_tasks, metrics.queued_tasks) == (0, left)
        finally:
            gate.set()
        assert blocker.get(timeout=30) is True
        assert mp.gather(handles, on_error="none", timeout=30) == ([0, 1] if left else [None, None])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("backend", "expected"), [("thread", (1, 1)), ("process", (2, 0))])
def test_an_mp_executors_calls_count_in_the_metrics_as_their_handles_say(
    backend: str, expected: tuple[int, int], flags: Flags
) -> None:
    """Queued on threads, where the executor's worker starts the handle; running from its submission on processes.

    The executor's pool counted the task carrying the second call as queued in the
    function's metrics, whose handle said running on processes (as on any executor
    elsewhere): a running call read as queued. Its pool's own info still shows it queued.
    """
    name = f"adapter_carried_{uuid.uuid4().hex}"
    with mp.Executor(backend=backend, max_workers=1) as pool:
        work = mp.parallel(backend=pool, name=name)(mark_then_wait)
        first = work(flags, "first")
        assert flags.wait("first", 30)
        second = work(flags, "second")
        try:
            assert second.status == ("pending" if backend == "thread" else "running")
            metrics = mp.get_metrics(name)
            assert metrics is not None and (metrics.running_tasks, metrics.queued_tasks) == expected
            assert _runtime.pool_infos()[f"Executor-{id(pool):x}"]["queued_tasks"] == 1
        finally:
            flags.set("first-go")
            flags.set("second-go")
        assert mp.gather([first, second], timeout=30) == ["first", "second"]


@pytest.mark.timeout(60)
def test_a_call_held_for_an_mp_executors_starting_worker_counts_as_its_handle_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its handle says running from its submission, as on any executor elsewhere.

    The task that carries it, given to the pool's worker as it starts, is held in
    this process until the worker is ready; the pool counted it among the function's
    queued tasks, as it counts a task of its own held so: the running call read as
    queued. The pool's own info still shows it queued there.
    """
    from makeparallel import _serialization

    reached, ready = threading.Event(), threading.Event()
    take_worker_finders = _serialization.take_worker_finders

    def ready_once_let(finders: Any) -> None:  # the pool's loop thread, on the worker's "ready"
        reached.set()
        assert ready.wait(30)
        take_worker_finders(finders)

    monkeypatch.setattr(_serialization, "take_worker_finders", ready_once_let)
    name = f"adapter_held_{uuid.uuid4().hex}"
    with mp.Executor(backend="process", max_workers=1) as pool:
        handle = mp.parallel(backend=pool, name=name)(square)(3)
        try:
            assert reached.wait(30)
            info = _runtime.pool_infos()[f"Executor-{id(pool):x}"]
            assert (info["held_tasks"], info["queued_tasks"]) == (1, 1)
            assert handle.status == "running"
            metrics = mp.get_metrics(name)
            assert metrics is not None and (metrics.running_tasks, metrics.queued_tasks) == (1, 0)
        finally:
            ready.set()
        assert handle.get(timeout=30) == 9


def test_tasks_the_executor_has_not_started_count_as_queued(gate: threading.Event) -> None:
    """Their handles say pending; their metrics said running, with nothing queued."""
    name = f"adapter_queued_{uuid.uuid4().hex}"
    started = threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(30)

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        work = mp.parallel(backend=pool, name=name)(hold)
        handles = [work() for _ in range(3)]
        try:
            assert started.wait(30)
            assert [handle.status for handle in handles[1:]] == ["pending", "pending"]
            metrics = mp.get_metrics(name)
            assert metrics is not None
            assert (metrics.running_tasks, metrics.queued_tasks) == (1, 2)
        finally:
            gate.set()
            assert mp.gather(handles, timeout=30) == [True] * 3


def test_in_process_progress_check_cancelled_and_timeout() -> None:
    progress: list[float] = []
    stopped = threading.Event()

    def long_task() -> None:
        mp.report_progress(0.25)
        try:
            while True:
                mp.check_cancelled()
                threading.Event().wait(0.005)
        except mp.TaskTimeoutError:
            stopped.set()
            raise

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        handle = mp.parallel(backend=pool, timeout=0.2)(long_task)()
        handle.on_progress(progress.append)
        with pytest.raises(mp.TaskTimeoutError, match="timed out after 0.2 s"):
            handle.get(timeout=30)
        assert stopped.wait(30)
    assert progress == [0.25]


def _polls_until_stopped(stopped: threading.Event) -> None:
    try:
        while not stopped.wait(0.005):  # the test's timeout comes first
            mp.check_cancelled()
    except mp.TaskTimeoutError:
        stopped.set()
        raise


async def _awaits_until_stopped(stopped: threading.Event) -> None:
    try:
        await asyncio.sleep(30)  # the test's timeout comes first
    except asyncio.CancelledError:
        stopped.set()
        raise


# How a timed-out task on an executor in this process stops: as on the thread pool.
IN_PROCESS_STOPS = {
    "plain": (_polls_until_stopped, "it was asked to stop at its next check_cancelled()"),
    "async def": (_awaits_until_stopped, "its coroutine was cancelled: it stops at its next await"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("function", list(IN_PROCESS_STOPS))
@pytest.mark.parametrize("executor", ["ThreadPoolExecutor", "mp.Executor"])
def test_a_timed_out_task_on_an_executor_in_this_process_is_told_how_it_stops(executor: str, function: str) -> None:
    # Its error said "a call already running there cannot be stopped and was
    # abandoned", though the executor's thread runs the handle itself: its
    # check_cancelled() raised, or its coroutine was cancelled.
    task, says = IN_PROCESS_STOPS[function]
    stopped = threading.Event()
    with cf.ThreadPoolExecutor(max_workers=1) if executor == "ThreadPoolExecutor" else mp.Executor(max_workers=1) as pool:
        handle = mp.parallel(task).options(backend=pool, timeout=0.1)(stopped)
        with pytest.raises(mp.TaskTimeoutError) as caught:
            handle.get(timeout=30)
        assert stopped.wait(30), "the task was never stopped"
    message = str(caught.value)
    assert "timed out after 0.1 s" in message and says in message, message
    assert "cannot be stopped" not in message, message


def test_a_waiting_task_runs_its_queued_child_inline() -> None:
    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        child = mp.parallel(backend=pool)(square)

        @mp.parallel(backend=pool)
        def parent() -> int:
            return child(6).get()  # the only worker waits: the child runs here

        assert parent().get(timeout=30) == 36


def test_a_task_run_inline_by_its_waiter_ends_with_its_own_result(gate: threading.Event) -> None:
    # The waiter claims the queued task and runs it; the executor's thread then
    # reaches the task, finds it claimed and returns, ending its future while
    # the task still runs inline: that future's end is not the task's.
    running, release = threading.Event(), threading.Event()

    def answer() -> int:
        running.set()
        assert release.wait(30)
        return 42

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        blocker = mp.parallel(backend=pool)(gate.wait)(30)
        queued = mp.parallel(backend=pool)(answer)()
        waiter = threading.Thread(target=queued.get)  # no timeout: it runs the task if queued
        waiter.start()
        try:
            assert running.wait(30)  # claimed and running in the waiter's thread
            gate.set()
            assert blocker.get(timeout=30) is True
            pool.submit(int).result(timeout=30)  # the executor's thread has passed the claimed task
            assert queued.status == "running"
        finally:
            release.set()
            waiter.join(30)
        assert queued.get(timeout=30) == 42


def cancelled_by_its_owner(gate: threading.Event) -> mp.AsyncHandle[int]:
    """A task queued behind one that waits for ``gate``, on a thread pool its owner shuts down with cancel_futures."""
    pool = cf.ThreadPoolExecutor(max_workers=1)
    blocker = mp.parallel(backend=pool)(gate.wait)(30)
    queued = mp.parallel(backend=pool)(square)(2)
    stopper = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    assert wait_until(queued.is_ready)
    gate.set()
    stopper.join(30)
    assert blocker.get(timeout=30) is True
    return queued


def test_the_owner_cancelling_queued_futures_cancels_their_handles(gate: threading.Event) -> None:
    queued = cancelled_by_its_owner(gate)
    with pytest.raises(mp.TaskCancelledError, match="cancelled by its executor"):
        queued.get()


@pytest.mark.timeout(60)
def test_a_queued_task_its_executor_cancelled_leaves_cancel_with_timeout_nothing_to_wait_for(
    gate: threading.Event,
) -> None:
    # It never ran, yet its code read as running: cancel_with_timeout() sat out
    # its whole timeout and returned False.
    queued = cancelled_by_its_owner(gate)
    assert queued.cancelled() and queued.cancel_with_timeout(0) is True


# -- elsewhere: the task is out of sight once submitted -----------------------------------------------


def test_a_running_remote_task_is_abandoned_at_its_timeout(process_pool: cf.Executor, flags: Flags) -> None:
    handle = mp.parallel(backend=process_pool, timeout=0.2)(wait_for_flag)(flags, "release")
    with pytest.raises(mp.TaskTimeoutError, match="abandoned"):
        handle.get(timeout=30)
    flags.set("release")  # the abandoned call ends; the pool stays usable
    assert mp.parallel(backend=process_pool)(square)(3).get(timeout=30) == 9


def test_cancel_with_timeout_waits_for_a_remote_task_only_while_its_call_runs(
    process_pool: cf.Executor, flags: Flags
) -> None:
    # It waited out every timeout and said False: the call's end was never noted.
    remote = mp.parallel(backend=process_pool)
    done = remote(square)(3)
    assert done.get(timeout=30) == 9
    assert done.cancel_with_timeout(5) is True
    running = remote(mark_then_wait)(flags, "call")
    assert wait_until(lambda: flags.is_set("call"), 30)  # it runs in a worker: the executor cannot cancel it
    assert running.cancel_with_timeout(0) is False  # cancelled; its call runs on out of sight
    flags.set("call-go")
    assert running.cancel_with_timeout(30) is True


def test_cancelling_a_remote_task_ends_its_handle_at_once(process_pool: cf.Executor, flags: Flags) -> None:
    remote = mp.parallel(backend=process_pool)
    # Two running and three in the pool's call queue, which cf counts as running too.
    held = [remote(wait_for_flag)(flags, "release") for _ in range(6)]
    never = remote(set_flag)(flags, "ran")
    assert never.cancel() is True
    assert never.cancelled()
    flags.set("release")
    assert mp.gather(held, timeout=30) == ["release"] * 6
    assert not flags.is_set("ran")  # it was cancelled on the executor before it started


class CancelledWhileItTakesTheCall(cf.Executor):
    """An executor elsewhere whose submit() sees the task cancelled before it returns the future.

    As when another thread cancels the handle while a slow submit (a Dask client's
    round trip) runs: the task counts as running from its submission.
    """

    def __init__(self) -> None:
        self.taken: list[cf.Future[Any]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        for handle in list(_runtime.get_backend(self)._futures):  # type: ignore[attr-defined]
            assert handle.cancel()
        future: cf.Future[Any] = cf.Future()
        self.taken.append(future)
        return future


@pytest.mark.timeout(30)
def test_a_task_cancelled_while_its_executor_takes_it_has_its_future_cancelled() -> None:
    # Its cancel found no future to cancel yet, and the one the executor then gave
    # was kept running: the call ran (on a cluster) for a handle already cancelled.
    executor = CancelledWhileItTakesTheCall()
    handle = mp.parallel(backend=executor)(square)(3)
    assert handle.cancelled()
    assert len(executor.taken) == 1 and executor.taken[0].cancelled()
    assert mp.get_active_task_count() == 0


class GivesNoFuture(cf.Executor):
    """An executor whose submit() returns something other than a future."""

    def __init__(self, gives: Any) -> None:
        self.gives = gives

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        return self.gives


@pytest.mark.timeout(30)
@pytest.mark.parametrize("gives", [None, 42], ids=["none", "int"])
def test_an_executor_that_gives_no_future_is_named(gives: Any) -> None:
    # AttributeError: 'NoneType' object has no attribute 'add_done_callback' (or 'int'
    # ... 'cancel'), naming neither the executor nor what it should have returned.
    executor = GivesNoFuture(gives)
    with pytest.raises(TypeError, match=rf"GivesNoFuture .*\.submit\(\) returned {gives!r}, not a concurrent.futures.Future"):
        mp.parallel(backend=executor)(square)(3)
    with pytest.raises(TypeError, match="not a concurrent.futures.Future"):
        mp.parallel_map(square, range(3), backend=executor)
    assert mp.get_active_task_count() == 0


def test_progress_and_check_cancelled_are_no_ops_elsewhere(process_pool: cf.Executor) -> None:
    def reports() -> int | None:
        mp.report_progress(0.5)
        mp.check_cancelled()
        return mp.get_current_task_id()

    handle = mp.parallel(backend=process_pool)(reports)()
    assert handle.get(timeout=30) is None
    assert handle.get_progress() == 1.0


def test_a_dead_worker_fails_the_task_with_worker_crashed_error() -> None:
    with cf.ProcessPoolExecutor(max_workers=1) as pool:
        pid = mp.parallel(backend=pool)(own_pid)().get(timeout=30)
        handle = mp.parallel(backend=pool)(os.kill)(pid, signal.SIGKILL)
        with pytest.raises(mp.WorkerCrashedError, match="a worker process of ProcessPoolExecutor died") as caught:
            handle.get(timeout=30)
        assert isinstance(caught.value.__cause__, cf.process.BrokenProcessPool)


def test_a_broken_process_pool_refuses_later_tasks_with_worker_crashed_error() -> None:
    # BrokenProcessPool came raw out of the call, and health said ok while every task failed.
    with cf.ProcessPoolExecutor(max_workers=1) as pool:
        remote = mp.parallel(backend=pool)(own_pid)
        pid = remote().get(timeout=30)
        with pytest.raises(mp.WorkerCrashedError):
            mp.parallel(backend=pool)(os.kill)(pid, signal.SIGKILL).get(timeout=30)
        with pytest.raises(mp.WorkerCrashedError, match="was refused: .* is broken") as caught:
            remote()
        assert isinstance(caught.value.__cause__, cf.process.BrokenProcessPool)
        assert mp.get_active_task_count() == 0  # nothing left counted
        report = mp.health()
        assert report["status"] == "unhealthy" and not report["ready"]
        assert any(reason.startswith(f"executor-{id(pool):x} pool fails every task: ") for reason in report["reasons"])


def kill_own_worker_at_3(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.parametrize("on_error", ["skip", "none", "raise"])
def test_a_map_chunk_whose_worker_died_fails_its_items_as_on_error_says(on_error: str) -> None:
    # The chunk's WorkerCrashedError failed the whole map, whatever on_error said, and named no item.
    for items, chunksize, lost in ((range(5), 5, "items 0 to 4 of the map were lost"), ([3], None, "item 0 (3) of the map was lost")):
        with cf.ProcessPoolExecutor(max_workers=1) as pool:
            if on_error == "raise":
                with pytest.raises(mp.WorkerCrashedError, match=f"^{re.escape(lost)} with the worker") as caught:
                    mp.parallel_map(kill_own_worker_at_3, items, backend=pool, chunksize=chunksize)
                assert isinstance(caught.value.__cause__, mp.WorkerCrashedError)
                assert isinstance(caught.value.__cause__.__cause__, cf.process.BrokenProcessPool)
            else:
                results = mp.parallel_map(kill_own_worker_at_3, items, backend=pool, chunksize=chunksize, on_error=on_error)
                assert results == ([] if on_error == "skip" else [None] * len(items))


def waits_for_a_dead_worker(pool: cf.Executor, x: int) -> int:
    pid = mp.parallel(backend=pool)(own_pid)().get(timeout=30)
    return mp.parallel(backend=pool)(os.kill)(pid, signal.SIGKILL).get(timeout=30)  # type: ignore[no-any-return]


def test_a_map_items_own_worker_crashed_error_stays_its_own() -> None:
    # The item's error, from a task of its own, is not the death of its chunk's worker.
    with cf.ProcessPoolExecutor(max_workers=1) as inner, cf.ThreadPoolExecutor(max_workers=2) as outer:
        call = functools.partial(waits_for_a_dead_worker, inner)
        with pytest.raises(mp.WorkerCrashedError, match="a worker process of ProcessPoolExecutor died") as caught:
            mp.parallel_map(call, [7], backend=outer)
    assert "makeparallel: raised by item 0 (7)" in caught.value.__notes__


def test_a_dead_loky_worker_fails_the_task_with_worker_crashed_error() -> None:
    pool = reusable_loky(max_workers=1)
    try:
        pid = mp.parallel(backend=pool)(own_pid)().get(timeout=30)
        handle = mp.parallel(backend=pool)(os.kill)(pid, signal.SIGKILL)
        with pytest.raises(mp.WorkerCrashedError) as caught:
            handle.get(timeout=30)
        assert isinstance(caught.value.__cause__, cf.process.BrokenProcessPool)
    finally:
        pool.shutdown(wait=True)


def test_an_unpicklable_argument_fails_at_submission(process_pool: cf.Executor) -> None:
    with pytest.raises(mp.TaskSerializationError, match="could not be pickled"):
        mp.parallel(backend=process_pool)(square)(threading.Lock())
    assert mp.get_active_task_count() == 0


# -- names and errors ----------------------------------------------------------------------------------


def test_a_backend_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match="backend must be a backend name .* or a concurrent.futures.Executor, got 42"):
        mp.parallel(backend=42)(square)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="concurrent.futures.Executor"):
        mp.configure(backend=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backend must be one of"):
        mp.parallel_map(square, [1], backend="warp-drive")


@pytest.mark.parametrize("executor", [cf.ThreadPoolExecutor, mp.Executor])
def test_an_executors_class_given_as_backend_is_told_to_make_one(executor: type) -> None:
    """It said "got <class ...> of type type", and not what to pass instead."""
    advice = rf"that is the class: pass an executor made from it, {executor.__name__}\(max_workers=\.\.\.\)"
    with pytest.raises(TypeError, match=advice):
        mp.parallel(backend=executor)(square)  # type: ignore[call-overload]


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="the interpreter pool exists from 3.14")
def test_interpreter_backend_names_the_version_it_needs() -> None:
    message = r"backend='interpreter' needs Python 3.14 or newer .* this is Python 3\.\d+"
    with pytest.raises(RuntimeError, match=message):
        mp.parallel(backend="interpreter")(square)
    with pytest.raises(RuntimeError, match=message):
        mp.configure(backend="interpreter")


def test_dask_backend_names_the_extra_it_needs_where_distributed_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Accepted by configure() before, it failed only at the first task, with the ImportError.
    monkeypatch.setitem(sys.modules, "distributed", None)  # an import of it fails, as where it is not installed
    before = _runtime._default_backend
    message = r'backend="dask" needs the distributed package: pip install "makeparallel\[dask\]"'
    with pytest.raises(ImportError, match=message):
        mp.configure(backend="dask")
    assert _runtime._default_backend is before
    with pytest.raises(ImportError, match=message):
        mp.parallel(backend="dask")(square)


@pytest.mark.parametrize(("backend", "setup", "reason"), UNRUNNABLE_BACKENDS)
def test_a_default_backend_from_the_environment_that_this_python_cannot_run_names_the_variable(
    backend: str, setup: Any, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checked by name only, every call of a function that names no backend failed with
    # "backend='interpreter' needs ...", a backend= its code never passed.
    setup(monkeypatch)
    monkeypatch.setenv("MAKEPARALLEL_BACKEND", backend)
    _runtime.use_default_backend(None)  # looked up afresh, from the environment
    message = rf"^the environment variable MAKEPARALLEL_BACKEND names a backend this Python cannot run: .*{re.escape(reason)}.*; set it to one of 'thread', 'process', 'sync', 'auto'"
    with pytest.raises(ValueError, match=message):
        mp.parallel(square)(3)
    with pytest.raises(ValueError, match=message):
        mp.parallel_map(square, [1, 2])
    with pytest.raises(ValueError, match=message):
        _runtime.default_backend_name()
    assert _runtime._default_instance is None  # nothing kept: the next call checks again
    monkeypatch.setenv("MAKEPARALLEL_BACKEND", "sync")  # set right, the next call runs
    assert mp.parallel(square)(3).get(timeout=60) == 9


@pytest.mark.skipif(sys.version_info < (3, 14), reason="the interpreter pool exists from 3.14")
def test_interpreter_backend_runs_tasks_in_sub_interpreters() -> None:  # pragma: no cover - 3.14+
    assert mp.parallel(backend="interpreter")(square)(9).get(timeout=60) == 81
    assert mp.parallel_map(square, range(10), backend="interpreter") == [x * x for x in range(10)]
    with pytest.raises(KeyError):
        mp.parallel(backend="interpreter")(fail)("x").get(timeout=60)


class _ExecutorOfAClient(cf.ThreadPoolExecutor):
    """An executor class whose constructor takes no max_workers, as a cluster client's does."""

    def __init__(self, client: object) -> None:
        super().__init__(max_workers=1)
        self.client = client


@pytest.mark.parametrize(
    ("executor", "advice"),
    [
        # The base class makes no executor that runs anything: Executor() refuses max_workers,
        # and one made without it raises NotImplementedError at its first task.
        (
            cf.Executor,
            (
                r"the base class of executors: pass an executor made from one of its subclasses, "
                r"ThreadPoolExecutor\(max_workers=\.\.\.\) say"
            ),
        ),
        (_ExecutorOfAClient, r"that is the class: pass an executor made from it, _ExecutorOfAClient\(\.\.\.\)$"),
    ],
)
def test_the_advice_for_an_executors_class_makes_an_executor_that_class_can_make(executor: type, advice: str) -> None:
    """It advised Executor(max_workers=...) for every class: a TypeError for these."""
    with pytest.raises(TypeError, match=advice):
        mp.parallel(backend=executor)(square)  # type: ignore[call-overload]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_a_task_on_an_mp_executor_counts_once_and_is_measured_once_under_its_name(
    backend: str, flags: Flags, own_metrics: None
) -> None:
    # The Executor ran each call as a task of its own (the adapter's ExecutorBackend._run, or
    # call_remotely elsewhere): get_active_task_count() said 2 for the one call running, and the
    # metrics had a second record, of a task nobody submitted.
    with mp.Executor(backend=backend, max_workers=2) as pool:
        held = mp.parallel(backend=pool)(mark_then_wait)
        handle = None if backend == "sync" else held(flags, "held")
        try:
            if handle is not None:
                assert flags.wait("held", 30)
                assert mp.get_active_task_count() == 1
        finally:
            flags.set("held-go")
        assert handle is None or handle.get(timeout=30) == "held"
        heard: list[tuple[str, str]] = []
        listener = lambda event: heard.append((event.kind, event.name))
        mp.add_task_listener(listener)
        try:
            assert mp.parallel(backend=pool)(square)(3).get(timeout=30) == 9
        finally:
            mp.remove_task_listener(listener)
        # (Its "finished" may come just after get() returns: the names, and what came before it.)
        assert heard[:2] == [("submitted", "square"), ("started", "square")]
        assert {name for _, name in heard} == {"square"}
        records = {name: record.total_tasks for name, record in mp.get_all_metrics().items()}
        assert records == {"mark_then_wait": 0 if handle is None else 1, "square": 1}
        assert mp.get_active_task_count() == 0


@pytest.mark.timeout(60)
def _called_under_a_limit_of_one(pool: mp.Executor) -> list[int]:
    """``square(4)`` called through ``@parallel(backend=pool)`` from a thread, under a concurrency limit of 1: its result."""
    outcome: list[int] = []
    mp.set_max_concurrent_tasks(1)
    caller = threading.Thread(target=lambda: outcome.append(mp.parallel(backend=pool)(square)(4).get(timeout=30)))
    try:
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "the call waited for a second slot of the limit"
    finally:
        mp.set_max_concurrent_tasks(None)  # (lets a call that waited go)
        caller.join(30)
    return outcome


@pytest.mark.parametrize("backend", ["thread", "process", "sync"])
def test_a_task_on_an_mp_executor_takes_one_slot_of_the_concurrency_limit(backend: str) -> None:
    # Its call took a second slot as the Executor's own task: under a limit of 1, the call's
    # submission waited for good for the slot its own task held.
    with mp.Executor(backend=backend, max_workers=2) as pool:
        assert _called_under_a_limit_of_one(pool) == [16]


class SeesEachCall(mp.Executor):
    """An ``mp.Executor`` whose own ``submit`` records each call, then hands it to ``Executor.submit``."""

    def __init__(self, backend: str) -> None:
        super().__init__(backend=backend, max_workers=2)
        self.seen = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:  # type: ignore[override]
        self.seen += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_subclass_whose_submit_calls_the_executors_sees_each_call_and_takes_one_slot(
    backend: str, own_metrics: None
) -> None:
    # Its submit, given the adapter's call, handed it to Executor.submit as a task of its own:
    # a second slot of the limit, which under a limit of 1 its own call held (the call waited
    # for good), and a second metrics record ("ExecutorBackend._run", or "call_remotely").
    with SeesEachCall(backend) as pool:
        assert _called_under_a_limit_of_one(pool) == [16]
        assert pool.seen == 1
        assert {name: record.total_tasks for name, record in mp.get_all_metrics().items()} == {"square": 1}
