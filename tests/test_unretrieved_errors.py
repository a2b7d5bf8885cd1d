"""A failed task whose error nobody read is logged as its handle is collected, once.

Fire and forget (``f()``, its handle dropped) lost a failure without a word;
asyncio logs "Task exception was never retrieved" for the same. Each way of
reading the outcome silences it, and so does each part of the library that reads
its own tasks' failures (a map's chunks, a group's tasks, an executor's futures,
the attempts of a retried task); a cancelled task never logs.

Each test keeps weak references to the handles that failed while it ran
(``failed``), and collects until all of them are gone: their finalizers have run,
and what they logged is there to be counted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from pool_helpers import exit_alone, wait_until

import makeparallel as mp
from makeparallel._handle import AsyncHandle

SRC = Path(__file__).resolve().parents[1] / "src"
BACKENDS = ["thread", "process", "sync"]
NEVER_RETRIEVED = "never retrieved"

pytestmark = pytest.mark.timeout(60)


class Failed:
    """The handles whose tasks failed or timed out while the test ran, held weakly."""

    def __init__(self) -> None:
        self.refs: list[tuple[int, weakref.ref[AsyncHandle[Any]]]] = []

    def ids(self) -> set[int]:
        return {task_id for task_id, _ in self.refs}

    def collect(self) -> None:
        """Collect until every one of them is gone (a worker may hold its last task a moment longer)."""

        def all_gone() -> bool:
            gc.collect()
            return all(ref() is None for _, ref in self.refs)

        assert wait_until(all_gone, 30), "a failed handle is still alive"


@pytest.fixture
def failed(monkeypatch: pytest.MonkeyPatch) -> Failed:
    """Follow every handle whose task fails from here on (it reaches ``_log_if_dropped_unread``)."""
    seen = Failed()
    mark = AsyncHandle._log_if_dropped_unread

    def followed(handle: AsyncHandle[Any]) -> None:
        seen.refs.append((handle.get_task_id(), weakref.ref(handle)))
        mark(handle)

    monkeypatch.setattr(AsyncHandle, "_log_if_dropped_unread", followed)
    return seen


def told_unread(record: logging.LogRecord) -> int | None:
    """The id of the task ``record`` says failed unread; ``None`` for any other record."""
    if record.name != "makeparallel" or NEVER_RETRIEVED not in record.getMessage():
        return None
    assert isinstance(record.args, tuple)
    return cast(int, record.args[0])


def lost(caplog: pytest.LogCaptureFixture, failed: Failed) -> list[logging.LogRecord]:
    """The records that said a task of the test failed unread, once all its failed handles were collected."""
    failed.collect()
    ids = failed.ids()
    return [record for record in caplog.records if told_unread(record) in ids]


def parse_on(backend: str) -> mp.ParallelFunction[[str], int]:
    """``int(text)`` as a task: ``"not a number"`` fails it with ``ValueError``."""
    return mp.parallel(backend=backend, name="parse_number")(int)


def ended(handle: AsyncHandle[Any]) -> AsyncHandle[Any]:
    assert handle.wait(30)
    return handle


# -- an error nobody read ------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_task_dropped_unread_logs_its_error_once(
    backend: str, failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    handle = ended(parse_on(backend)("not a number"))
    task_id = handle.get_task_id()
    gc.collect()
    assert task_id not in map(told_unread, caplog.records), "logged while its handle was still held"
    del handle
    [record] = lost(caplog, failed)
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert f"task {task_id} (parse_number) failed" in message, message
    assert "on_error" in message and "get()" in message, message  # how to silence it
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert "not a number" in str(record.exc_info[1])


@pytest.fixture
def no_collection() -> Iterator[None]:
    """No automatic garbage collection while the test runs: what it frees, reference counting frees."""
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()


def _fails(text: str) -> int:
    raise ValueError(f"not a number: {text}")


async def _fails_async(text: str) -> int:
    raise ValueError(f"not a number: {text}")


@pytest.mark.parametrize("watched", [True, False], ids=["gil watched", "unwatched"])
@pytest.mark.parametrize("fn", [_fails, int, _fails_async], ids=["function", "builtin", "async function"])
@pytest.mark.usefixtures("no_collection")
def test_a_failed_thread_task_dropped_unread_logs_as_its_handle_is_dropped(
    watched: bool, fn: Callable[[str], Any], failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    # The error's traceback held the frames that ran the task, and those the handle: a cycle,
    # freed, and its error logged, only at the collector's next pass, however long after.
    # A function's first tasks run measured by the GIL watch, through a frame of their own.
    task = mp.parallel(backend="thread")(fn)
    if not watched:
        task._spec.cpu_watch = None
    handle = ended(task("x"))
    assert failed.refs
    del handle
    assert wait_until(lambda: all(ref() is None for _, ref in failed.refs), 30), "only a collection frees it"
    assert len([record for record in caplog.records if told_unread(record) in failed.ids()]) == 1


@pytest.mark.parametrize(
    "failure",
    ["its own error", "a timeout", "a crash of its worker", "a result that cannot be pickled", "a circuit breaker open"],
)
def test_every_kind_of_failure_dropped_unread_is_logged(
    failure: str, failed: Failed, caplog: pytest.LogCaptureFixture, gate: threading.Event
) -> None:
    handle: AsyncHandle[Any]
    expected: type[BaseException]
    if failure == "its own error":
        handle, expected = parse_on("thread")("not a number"), ValueError
    elif failure == "a timeout":
        handle, expected = mp.parallel(backend="thread", timeout=0.01)(gate.wait)(30), mp.TaskTimeoutError
    elif failure == "a crash of its worker":
        handle, expected = exit_alone(3), mp.WorkerCrashedError
    elif failure == "a result that cannot be pickled":
        handle, expected = mp.parallel(backend="process")(threading.Lock)(), mp.TaskSerializationError
    else:
        breaker = mp.CircuitBreaker(name="unread failures")
        breaker.force_open()
        handle, expected = mp.parallel(backend="thread", circuit_breaker=breaker)(int)("1"), mp.CircuitOpenError
    ended(handle)
    gate.set()
    status = handle.status
    del handle
    [record] = lost(caplog, failed)
    assert record.exc_info is not None and isinstance(record.exc_info[1], expected), record.exc_info
    assert f") {status} and its error was never retrieved" in record.getMessage()


@pytest.mark.parametrize(
    "look",
    ["wait", "is_ready", "mp.wait", "on_complete", "as_completed, unread"],
)
def test_a_failure_waited_for_or_looked_at_but_never_read_is_logged(
    look: str, failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    handle = parse_on("thread")("not a number")
    if look == "wait":
        assert handle.wait(30)
    elif look == "is_ready":
        ended(handle)
        assert handle.is_ready()
    elif look == "mp.wait":
        assert mp.wait([handle], timeout=30).done == {handle}
    elif look == "on_complete":
        handle.on_complete(print)
        ended(handle)
    else:
        assert list(mp.as_completed([handle], timeout=30)) == [handle]
    del handle
    assert len(lost(caplog, failed)) == 1


def test_gather_logs_the_failures_it_did_not_raise(failed: Failed, caplog: pytest.LogCaptureFixture) -> None:
    parse = parse_on("sync")
    handles = [parse("first"), parse("second")]
    with pytest.raises(ValueError):
        mp.gather(handles)
    del handles
    assert len(lost(caplog, failed)) == 1  # the one raised was read; the other was not


# -- each way of reading it ------------------------------------------------------------


async def _awaited(handle: AsyncHandle[Any]) -> None:
    with pytest.raises(ValueError):
        await handle


def _read_by(way: str, handle: AsyncHandle[Any]) -> None:
    """Read the outcome of ``handle``, which fails with ``ValueError``, the ``way`` named."""
    if way == "get":
        with pytest.raises(ValueError):
            handle.get(30)
    elif way == "result":
        with pytest.raises(ValueError):
            handle.result(30)
    elif way == "exception":
        assert isinstance(handle.exception(30), ValueError)
    elif way == "try_get":
        with pytest.raises(ValueError):
            ended(handle).try_get()
    elif way == "await":
        asyncio.run(_awaited(handle))
    elif way == "gather":
        with pytest.raises(ValueError):
            mp.gather([handle])
    elif way == "gather, on_error=none":
        assert mp.gather([handle], on_error="none") == [None]
    elif way == "gather, on_error=skip":
        assert mp.gather([handle], on_error="skip") == []
    elif way == "gather_async":
        with pytest.raises(ValueError):
            asyncio.run(mp.gather_async([handle]))
    elif way == "gather_async, on_error=none":
        assert asyncio.run(mp.gather_async([handle], on_error="none")) == [None]
    elif way == "gather_async, on_error=skip":
        assert asyncio.run(mp.gather_async([handle], on_error="skip")) == []
    elif way == "as_completed":
        for done in mp.as_completed([handle], timeout=30):
            assert isinstance(done.exception(), ValueError)
    elif way == "on_error":
        errors: list[BaseException] = []
        ended(handle).on_error(errors.append)
        assert isinstance(errors[0], ValueError)
    else:
        assert way == "add_done_callback"
        told: list[AsyncHandle[Any]] = []
        ended(handle).add_done_callback(told.append)
        assert told == [handle]


WAYS = [
    "get",
    "result",
    "exception",
    "try_get",
    "await",
    "gather",
    "gather, on_error=none",
    "gather, on_error=skip",
    "gather_async",
    "gather_async, on_error=none",
    "gather_async, on_error=skip",
    "as_completed",
    "on_error",
    "add_done_callback",
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("way", WAYS)
def test_a_failure_read_any_way_is_not_logged(
    way: str, backend: str, failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    handle = parse_on(backend)("not a number")
    _read_by(way, handle)
    del handle
    assert failed.refs, "no task failed"
    assert not lost(caplog, failed)


@pytest.mark.parametrize("register", ["on_error", "add_done_callback"])
def test_a_callback_registered_before_the_failure_reads_it(
    register: str, failed: Failed, caplog: pytest.LogCaptureFixture, gate: threading.Event
) -> None:
    def fails() -> None:
        gate.wait(30)
        raise ValueError("after the gate")

    handle = mp.parallel(backend="thread")(fails)()
    told: list[Any] = []
    getattr(handle, register)(told.append)
    gate.set()
    ended(handle)
    assert len(told) == 1  # (callbacks run before waiters are woken)
    told.clear()  # (it holds the handle, or its error, whose traceback holds it)
    del handle
    assert not lost(caplog, failed)


def test_a_keyboard_interrupt_raised_to_the_program_is_not_logged(
    failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mp.parallel(backend="sync")(interrupted)()  # runs here, on the main thread: raised to the caller
    assert failed.refs
    assert not lost(caplog, failed)


# -- what the library reads itself ------------------------------------------------------


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_map_whose_failure_the_caller_read_logs_nothing(
    backend: str, failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    items = ["1", "x", "2", "y", "z"]  # several failing chunks: the map raises the first and stops
    with pytest.raises(ValueError):
        mp.parallel_map(int, items, chunksize=1, backend=backend)
    with pytest.raises(ValueError):
        list(mp.imap(int, items, chunksize=1, backend=backend))
    assert mp.parallel_map(int, items, chunksize=1, backend=backend, on_error="none") == [1, None, 2, None, None]
    assert failed.refs, "no chunk failed"
    assert not lost(caplog, failed)


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_a_group_reads_every_failure_of_its_tasks(
    backend: str, failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    # On threads both may fail before the first failure cancels the other: the group keeps
    # both errors, raises one, and reads each. (A "sync" task runs as it is submitted: the
    # first failure refuses the second.)
    with pytest.raises(ValueError), mp.ParallelContext(backend=backend) as group:
        group.submit(int, "first")
        group.submit(int, "second")
    assert len(group.errors) == len(failed.refs) >= 1
    del group
    assert not lost(caplog, failed)


@pytest.mark.parametrize("backend", ["thread", "sync"])
def test_an_executor_hands_each_failure_to_its_future(
    backend: str, failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    with mp.Executor(backend=backend, max_workers=1) as executor:
        future = executor.submit(int, "not a number")
        concurrent.futures.wait([future], timeout=30)
        assert future.done()
    del future  # dropped unread, as a concurrent.futures future may be: it says nothing either
    assert failed.refs
    assert not lost(caplog, failed)


def test_a_task_given_to_an_executor_as_its_backend_logs_as_any(
    failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    with mp.Executor(backend="thread", max_workers=1) as executor:
        handle = ended(mp.parallel(backend=executor, name="parse_number")(int)("not a number"))
        task_id = handle.get_task_id()
        del handle
        [record] = lost(caplog, failed)  # the task's own, not the carrier's on the executor
    assert told_unread(record) == task_id


def test_a_call_its_executor_refuses_raises_the_error_and_logs_nothing(
    failed: Failed, caplog: pytest.LogCaptureFixture
) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.shutdown()
    with pytest.raises(mp.ShutdownError, match="after shutdown"):
        mp.parallel(backend=pool)(int)("1")  # the task failed as its call raised
    assert failed.refs
    assert not lost(caplog, failed)


def _fails_twice_then(result: int) -> Callable[[], int]:
    calls = iter(range(3))

    def flaky() -> int:
        if next(calls) < 2:
            raise ConnectionError("reset")
        return result

    return flaky


def test_a_retried_task_that_succeeds_at_last_logs_nothing(failed: Failed, caplog: pytest.LogCaptureFixture) -> None:
    retry = mp.Retry(on=ConnectionError, attempts=3, wait_initial=0, wait_jitter=0)
    handle = mp.parallel(backend="thread", retry=retry)(_fails_twice_then(7))()
    assert ended(handle).attempts == 3
    del handle
    assert not failed.refs  # no attempt that was retried counted as a failure
    assert not lost(caplog, failed)


def test_a_retried_task_whose_last_attempt_fails_logs_once(failed: Failed, caplog: pytest.LogCaptureFixture) -> None:
    retry = mp.Retry(on=ValueError, attempts=3, wait_initial=0, wait_jitter=0)
    handle = ended(mp.parallel(backend="thread", retry=retry)(int)("not a number"))
    assert handle.attempts == 3
    del handle
    assert len(lost(caplog, failed)) == 1


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_cancelled_task_logs_nothing(
    backend: str, failed: Failed, caplog: pytest.LogCaptureFixture, gate: threading.Event
) -> None:
    # More tasks than workers: some run, the others wait in the queue as they are cancelled.
    handles: list[AsyncHandle[Any]]
    if backend == "thread":
        handles = [mp.parallel(backend="thread")(gate.wait)(30) for _ in range(4)]
    else:
        handles = [mp.parallel(backend="process")(time.sleep)(30) for _ in range(4)]
    for handle in handles:
        assert handle.cancel(force=True)  # (force: a process task's worker is stopped)
        assert handle.cancelled()
    gate.set()
    del handles, handle
    assert not failed.refs
    assert not lost(caplog, failed)


# -- at interpreter exit -----------------------------------------------------------------


def _run_script(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=50,
        env=env,
        check=False,
    )


DROPPED_AT_EXIT = """
import gc, logging, sys
gc.disable()  # no collection runs before exit but the library's own
logging.basicConfig(stream=sys.stderr, level=logging.ERROR, format="%(levelname)s %(message)s")
import makeparallel as mp

@mp.parallel(backend="sync")
def fails(n):
    raise ValueError(f"never read {n}")

kept = [fails(n) for n in range(3)]  # alive until the modules are torn down

class Ring:
    pass

ring = Ring()
ring.me = ring
ring.handles = [fails(n) for n in range(3, 5)]  # dropped, in a reference cycle: only a collection frees them
del ring
print("dropped")
"""


def test_handles_dropped_unread_in_a_cycle_are_logged_at_exit_and_those_alive_print_nothing() -> None:
    # A short script's failures dropped unread were lost where no collection ran before exit: the
    # exit hook collects once. Those still held are collected as the interpreter ends, silently.
    result = _run_script(DROPPED_AT_EXIT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "dropped\n"
    records = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(records) == 2, result.stderr
    assert all(NEVER_RETRIEVED in record for record in records), result.stderr
    assert "never read 3" in result.stderr and "never read 4" in result.stderr, result.stderr
    assert "never read 0" not in result.stderr, result.stderr  # a kept one, alive at the end
    assert "Exception ignored" not in result.stderr, result.stderr


DROPPED_ON_AN_EXECUTOR_AT_EXIT = """
import concurrent.futures, gc
gc.disable()  # no collection runs before exit but the library's own
import makeparallel as mp

def fails():
    raise ValueError("never read on an executor")

pool = concurrent.futures.ThreadPoolExecutor(1)
mp.parallel(backend=pool)(fails)()  # run inline by the executor's thread: its handle is in a cycle
print("dropped")
"""


def test_a_failure_dropped_unread_on_an_executor_given_as_backend_is_logged_at_exit() -> None:
    # Only an executor's adapter: the runtime's exit hook, which collects, was never registered.
    result = _run_script(DROPPED_ON_AN_EXECUTOR_AT_EXIT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "dropped\n"
    assert result.stderr.count(NEVER_RETRIEVED) == 1, result.stderr
    assert "never read on an executor" in result.stderr, result.stderr


NO_FAILURE_AT_EXIT = """
import gc, sys
gc.disable()
import makeparallel as mp

def told(phase, info):
    if phase == "start" and not sys.is_finalizing():
        print("collected", flush=True)

gc.callbacks.append(told)
assert mp.parallel(backend="sync")(int)("1").get() == 1
print("done", flush=True)
"""


def test_exit_collects_nothing_where_no_task_failed() -> None:
    result = _run_script(NO_FAILURE_AT_EXIT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n", result.stdout
