"""The process backend behaves as the thread backend does, one pickle away.

Results, the user's own exceptions (with the worker's traceback below their chain),
every kind of callable, progress, task ids, cancellation, metadata, callbacks,
priorities, limits, metrics, collecting, groups, maps, logging, large buffers and
the ways of choosing the backend: each is checked through real worker processes.

The tasks are module-level functions of this module: they travel by reference,
and the workers import this module (the parent passes its ``sys.path`` down).
Closures and lambdas travel by value. A test and a worker signal each other with
marker files (:class:`Flags`); the test waits for them in bounded polls, never in
a bare sleep.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import functools
import gc
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from pool_helpers import (
    Flags,
    earlier_items_alive,
    fresh_process_pool,
    mark_then_wait,
    process_alive,
    send_tasks_ahead,
    the_pool_goes_on_beside,
    wait_until,
)
from makeparallel._backends._crash_journal import _Records, records_to_list
from makeparallel._remote_errors import RemoteTraceback
from makeparallel._serialization import _SentFunction

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(30),
]

SRC = Path(__file__).resolve().parents[1] / "src"

on_process = mp.parallel(backend="process")

# -- signalling between the test and a worker process ----------------------------------------


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Flags]:
    """Marker files for one test; teardown releases every task still waiting on one."""
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("teardown")


@pytest.fixture
def one_worker() -> Iterator[None]:
    """A fresh pool of exactly one worker process; the previous size is put back afterwards.

    Fresh: what earlier tests left (a warm pool, windows in use, workers retiring
    or starting) would change what an ordering test sees.
    """
    before = mp.get_process_pool_info()["num_workers"]
    fresh_process_pool(1)
    try:
        yield
    finally:
        mp.configure_process_pool(before)


# -- tasks: module-level, so they travel by reference ------------------------------------------


def square(x: int) -> int:
    return x * x


def add(x: int, y: int = 0) -> int:
    return x + y


def worker_pid() -> int:
    return os.getpid()


def worker_pid_of(_: object) -> int:
    return os.getpid()


def fail_with_value_error(n: int) -> None:
    raise ValueError(f"bad value {n}")  # the line the remote traceback must show


class MyError(Exception):
    """A user exception whose ``__init__`` does not take its message."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def fail_with_my_error(code: int) -> None:
    raise MyError(code, "custom signature")


def succeed_unless_negative(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


@mp.parallel(backend="process")
def decorated_square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


class Multiplier:
    def __init__(self, factor: int) -> None:
        self.factor = factor

    def times(self, x: int) -> int:
        return x * self.factor

    @mp.parallel(backend="process")
    def parallel_times(self, x: int) -> tuple[int, int]:
        return x * self.factor, os.getpid()


def current_task_id() -> int | None:
    return mp.get_current_task_id()


def report_then_wait(flags: Flags) -> str:
    mp.report_progress(0.25, "quarter")
    mp.report_progress(0.5, "half")
    flags.set("reported")
    assert flags.wait_for_release("go")
    return "done"


def report_from_a_thread_of_the_task(flags: Flags) -> str:
    task_id = mp.get_current_task_id()
    helper = threading.Thread(target=mp.report_progress, args=(0.6, "from a helper"), kwargs={"task_id": task_id})
    helper.start()
    helper.join(10)
    assert flags.wait_for_release("go")
    return "done"


def wait_for_children_on_this_worker(flags: Flags) -> str:
    """Wait for three thread tasks of this worker's own pool; the first blocks until flag "go"."""

    @mp.parallel(backend="thread", timeout=60)  # timed: never run inline, the wait blocks
    def child(i: int) -> int:
        flags.set(f"child-{i}")
        assert flags.wait_for_release("go")
        return i

    children = [child(i) for i in range(3)]
    try:
        return str(mp.gather(children))
    except BaseException as error:
        flags.set("stopped", type(error).__name__)
        raise
    finally:
        for handle in children:
            handle.cancel()


def loop_until_cancelled(flags: Flags) -> str:
    flags.set("started", str(os.getpid()))
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            mp.check_cancelled()
            time.sleep(0.01)  # workload, in the worker
    except BaseException as error:
        flags.set("stopped", type(error).__name__)
        raise
    return "never cancelled"


def hold(flags: Flags, tag: str = "") -> str:
    """Hold a worker until the test sets ``go<tag>``."""
    flags.set(f"holding{tag}", str(os.getpid()))
    assert flags.wait_for_release(f"go{tag}")
    return f"held{tag}"


def sleep_for(seconds: float) -> None:
    time.sleep(seconds)  # workload, in the worker


def record_order(flags: Flags, label: str) -> str:
    with open(flags.path("order"), "a") as file:
        file.write(label + "\n")
    return label


def log_from_worker(logger_name: str) -> int:
    log = logging.getLogger(logger_name)
    log.warning("hello %s from %d", "parent", os.getpid())
    log.error("an error record")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.exception("with a traceback")
    return os.getpid()


class QuotaError(Exception):
    """An error whose ``__init__`` takes other arguments than it gives ``Exception``: plain pickle cannot rebuild it."""

    def __init__(self, user: str, limit: int) -> None:
        super().__init__(f"user {user} over quota {limit}")
        self.user, self.limit = user, limit


_ONLY_HERE = """
class Token(str):
    def __str__(self):
        return "token " + str.__str__(self)
"""


def only_here(folder: str) -> Any:
    """A module this worker writes and imports from ``folder``, which the parent never sees."""
    module = Path(folder) / "only_in_the_worker.py"
    module.write_text(_ONLY_HERE)
    sys.path.insert(0, folder)
    import only_in_the_worker  # type: ignore[import-not-found]

    return only_in_the_worker


def log_extras_from_worker(logger_name: str, folder: str) -> int:
    token = only_here(folder).Token("x1")
    extra = {"error": QuotaError("bob", 10), "token": token, "lock": threading.Lock(), "count": 3}
    logging.getLogger(logger_name).warning("with extras", extra=extra)
    return os.getpid()


def log_at_levels(logger_name: str) -> list[str]:
    log = logging.getLogger(logger_name)
    log.warning("a warning")
    log.log(25, "a notice")
    logging.addLevelName(26, "WORKER_ONLY")
    log.log(26, "a level only the worker named")
    return [logging.getLevelName(level) for level in (logging.WARNING, 25, 26)]


class LogsAsItIsPickled:
    """A result whose pickling logs a record with an extra, as a library's ``__reduce__`` may."""

    def __init__(self, logger_name: str, items: list[int]) -> None:
        self.logger_name, self.items = logger_name, items

    def __reduce__(self) -> tuple[Any, ...]:
        logging.getLogger(self.logger_name).warning("pickled", extra={"detail": {"items": len(self.items)}})
        return (LogsAsItIsPickled, (self.logger_name, self.items))


def result_that_logs_as_it_is_pickled(logger_name: str) -> list[Any]:
    return [LogsAsItIsPickled(logger_name, [1, 2, 3]), {"after": "it"}]


_ONLY_HERE_LEVELS = """
import enum

class Level(enum.IntEnum):
    NOTICE = 25
"""


def log_with_classes_only_the_worker_has(folder: str) -> str:
    """A record whose level, logger name and an extra's key are of classes the parent never imports."""
    token_type = only_here(folder).Token
    (Path(folder) / "worker_levels.py").write_text(_ONLY_HERE_LEVELS)
    from worker_levels import Level  # type: ignore[import-not-found]

    logger = logging.getLogger(token_type("test_process_backend.only_here"))
    logger.log(Level.NOTICE, "at a level of its own", extra={token_type("keyed"): 1})
    return "logged"


def report_progress_of_a_worker_class(folder: str) -> str:
    mp.report_progress(0.5, only_here(folder).Token("half"))
    return "done"


def describe_buffer(data: Any) -> tuple[str, str, Any]:
    return type(data).__name__, hashlib.sha256(data).hexdigest(), data


def slice_of(data: bytearray) -> memoryview:
    return memoryview(data)[3:-5]


def view_layout(view: memoryview) -> tuple[str, tuple[int, ...], list[Any]]:
    return view.format, view.shape, view.tolist()


def doubles_as_rows(count: int) -> memoryview:
    return memoryview(array.array("d", [i / 4 for i in range(count)])).cast("B").cast("d", (count // 4, 4))


# -- results and errors ----------------------------------------------------------------------


def test_results_come_back_from_worker_processes() -> None:
    handles = [on_process(square)(i) for i in range(50)]
    assert [h.get(timeout=20) for h in handles] == [i * i for i in range(50)]
    assert on_process(add)(2, y=40).get(timeout=20) == 42
    pid = on_process(worker_pid)().get(timeout=20)
    assert pid != os.getpid()
    assert pid in mp.get_process_pool_info()["worker_pids"]


def test_user_exception_comes_back_as_itself_with_the_remote_traceback() -> None:
    handle = on_process(fail_with_value_error)(3)
    with pytest.raises(ValueError) as info:
        handle.get(timeout=20)
    error = info.value
    assert type(error) is ValueError
    assert str(error) == "bad value 3"
    cause = error.__cause__
    assert isinstance(cause, RemoteTraceback)
    text = str(cause)
    assert "fail_with_value_error" in text
    assert 'raise ValueError(f"bad value {n}")' in text
    notes = getattr(error, "__notes__", [])
    assert any(
        note.startswith(f"makeparallel: task {handle.get_task_id()} (fail_with_value_error) failed after")
        for note in notes
    ), notes


def test_exception_with_a_custom_init_signature_survives_the_trip() -> None:
    with pytest.raises(MyError) as info:
        on_process(fail_with_my_error)(7).get(timeout=20)
    assert type(info.value) is MyError
    assert str(info.value) == "7: custom signature"
    assert info.value.code == 7
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_with_my_error" in str(info.value.__cause__)


# -- every kind of callable ------------------------------------------------------------------


def closure() -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    factor = 3

    def times_factor(x: int) -> int:
        return x * factor

    return on_process(times_factor), (4,), 12


def lambda_() -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    return on_process(lambda x: x + 1), (41,), 42


def nested() -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    def inner(x: int) -> int:
        return x - 1

    def outer(x: int) -> int:
        return inner(x) * 2

    return on_process(outer), (5,), 8


def bound_method() -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    return on_process(Multiplier(5).times), (3,), 15


def partial() -> tuple[Callable[..., Any], tuple[Any, ...], Any]:
    return on_process(functools.partial(add, y=10)), (5,), 15


@pytest.mark.parametrize("make", [closure, lambda_, nested, bound_method, partial])
def test_callables_of_every_kind_run_in_a_worker(make: Callable[[], tuple[Callable[..., Any], tuple[Any, ...], Any]]) -> None:
    submit, args, expected = make()
    assert submit(*args).get(timeout=20) == expected


def apply_to_each(fn: Callable[[int], int], numbers: range) -> list[int]:
    return [fn(n) for n in numbers]


def test_functions_and_ranges_as_arguments_arrive_whole() -> None:
    # A call of plain values, functions and ranges is pickled by the C pickler,
    # each function as its bytes pickled once: a lambda, a closure, a module function.
    offset = 100
    numbers = range(30, 3, -4)
    for fn in (lambda n: n * 2, lambda n: n + offset, square):
        got = on_process(apply_to_each)(fn, numbers).get(timeout=20)
        assert got == [fn(n) for n in numbers]


def test_parallel_decorated_module_function_travels_by_reference() -> None:
    value, pid = decorated_square(6).get(timeout=20)
    assert value == 36
    assert pid != os.getpid()


def test_parallel_decorated_method_runs_in_a_worker() -> None:
    value, pid = Multiplier(4).parallel_times(5).get(timeout=20)
    assert value == 20
    assert pid != os.getpid()


# -- the task's view of itself -----------------------------------------------------------------


def test_report_progress_in_a_worker_reaches_the_handle(flags: Flags) -> None:
    seen: list[float] = []
    handle = on_process(report_then_wait)(flags)
    handle.on_progress(seen.append)
    assert flags.wait("reported")
    assert wait_until(lambda: handle.get_progress() == 0.5), handle.get_progress()
    assert handle.get_progress_message() == "half"
    flags.set("go")
    assert handle.get(timeout=20) == "done"
    # Progress and the result come down one pipe, in order: every report has been
    # handled (and its callbacks run) before the result settles the handle. A callback
    # registered after the first report is called at once with the last one; the
    # success ends the calls with 1.0, from the thread that settles the handle.
    assert wait_until(lambda: seen[-1:] == [1.0]), seen
    assert seen[-2:] == [0.5, 1.0], seen
    assert set(seen) <= {0.25, 0.5, 1.0} and seen == sorted(seen), seen
    assert handle.get_progress() == 1.0


def test_report_progress_from_a_thread_a_worker_task_started_reaches_the_handle(flags: Flags) -> None:
    handle = on_process(report_from_a_thread_of_the_task)(flags)
    assert wait_until(lambda: handle.get_progress() == 0.6), handle.get_progress()
    assert handle.get_progress_message() == "from a helper"
    flags.set("go")
    assert handle.get(timeout=20) == "done"


def test_current_task_id_in_a_worker_is_the_handle_id() -> None:
    handles = [on_process(current_task_id)() for _ in range(5)]
    assert [h.get(timeout=20) for h in handles] == [h.get_task_id() for h in handles]
    assert mp.get_current_task_id() is None


@pytest.mark.timeout(60)
def test_a_cancel_ends_a_wait_in_a_worker_for_the_children_it_started_there(flags: Flags) -> None:
    # The wait is a cancellation point there too: it raises as the cancel
    # arrives, while its first child still blocks. Before, it waited for "go".
    handle = on_process(wait_for_children_on_this_worker)(flags)
    try:
        assert flags.wait("child-0", 30)
        handle.cancel()
        assert flags.wait("stopped", 10), "the wait in the worker went on after its task was cancelled"
        assert flags.read("stopped") == "TaskCancelledError"
    finally:
        flags.set("go")


def test_the_coroutines_of_an_async_map_chunk_are_freed_as_they_end() -> None:
    # Each item's coroutine runs to its end on the worker's loop, cancelled with
    # the task: the chunk's stand-in keeps only the cancel of the coroutine that
    # runs. Before, it kept one for every item run so far, each holding its
    # asyncio task: every item then walked all of them (asyncio.all_tasks), and a
    # chunk of 20,000 items took 100 times as long.
    counts = mp.parallel_map(earlier_items_alive, range(20), chunksize=20, backend="process")
    assert counts == [0] * 20


def test_check_cancelled_in_a_worker_raises_after_cancel(flags: Flags, one_worker: None) -> None:
    restarts = mp.get_process_pool_info()["worker_restarts"]
    handle = on_process(loop_until_cancelled)(flags)
    assert flags.wait("started")
    pid = int(flags.read("started"))
    assert handle.cancel() is True
    assert handle.cancelled()  # at once, not when the worker notices
    with pytest.raises(mp.TaskCancelledError):
        handle.get(timeout=1)
    assert flags.wait("stopped")
    assert flags.read("stopped") == "TaskCancelledError"
    # The worker stopped the task itself and went back to the pool: the one
    # worker there runs the next task, and it was never replaced.
    assert on_process(worker_pid)().get(timeout=20) == pid
    assert mp.get_process_pool_info()["worker_restarts"] == restarts


@pytest.fixture
def worker_here() -> Iterator[tuple[Any, Any, Any]]:
    """A worker process's state (``_process_worker._Worker``) to drive in this process, deterministically.

    Yields it, the parent's end of its pipe, and the parent's reader of its crash journal.
    """
    import socket

    from makeparallel._backends._channel import Channel
    from makeparallel._backends._crash_journal import (
        JournalReader,
        JournalWriter,
        create_journal,
    )
    from makeparallel._backends._process_worker import _Worker

    ours, theirs = socket.socketpair()
    fd = create_journal()
    worker, journal = _Worker(Channel(theirs), JournalWriter(fd)), JournalReader(fd)
    os.close(fd)
    try:
        yield worker, ours, journal
    finally:
        journal.close()
        ours.close()
        theirs.close()


@pytest.fixture
def signals_sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The signals the worker's code sends (pid, signal number), recorded instead; its handlers left as they are."""
    from makeparallel._backends import _process_worker

    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(_process_worker.os, "kill", lambda pid, signum: sent.append((pid, signum)))
    monkeypatch.setattr(_process_worker.signal, "signal", lambda signum, handler: None)
    # Not the processes below this one: in a worker, its tasks' (_process_tree); here, other
    # tests' pools, whose SIGTERMs the handler's own would be recorded among.
    monkeypatch.setattr(_process_worker, "stop_descendants", lambda: None)
    return sent


def abs_call() -> tuple[bytes, bytes, list[Any], bool]:
    """A task's function, call, buffers and timed flag, as the worker gets them: ``abs(-1)``."""
    import pickle

    from makeparallel import _serialization

    return (_serialization.dumps_function(abs), pickle.dumps(((-1,), {})), [], False)


def test_a_worker_keeps_no_cancel_of_a_task_that_ended(worker_here: tuple[Any, Any, Any]) -> None:
    # A cancel can cross its task's result on the pipe, or come before the task
    # (the parent sends them from different threads): the first is dropped, the
    # second stops the task when it comes. Driven in this process, deterministically.
    worker, _, _ = worker_here
    call = abs_call()
    ran, _ = worker._run(1, "abs", *call)
    assert ran[:2] == (1, True)
    worker._cancel(1, mp.TaskCancelledError("late"))
    assert worker._cancelled == {}
    worker._cancel(2, mp.TaskCancelledError("early"))
    skipped, _ = worker._run(2, "abs", *call)
    assert skipped == (2, False, (b"", "", ""), [], 0.0)  # never ran: no error, traceback nor description
    worker._cancel(2, mp.TaskCancelledError("again"))
    assert worker._cancelled == {}


@pytest.mark.parametrize(
    ("ended", "current", "declined"),
    [
        ([5, 7], None, True),  # the task it was for has just ended: the worker is idle
        ([7], 8, True),  # and the next one runs
        ([7, 6], 8, True),  # a task cancelled before it started ended since
        ([7, *range(100, 1000)], 1000, True),  # and many more since: the signal came late
        ([5, 6], 7, False),  # it runs
        ([5, 6], 8, False),  # not one of this worker's, or not started yet: it is killed for it
    ],
)
def test_a_workers_sigterm_is_declined_only_for_a_task_that_has_ended(
    ended: list[int],
    current: int | None,
    declined: bool,
    worker_here: tuple[Any, Any, Any],
    signals_sent: list[tuple[int, int]],
) -> None:
    # The parent decided to stop task 7 as it returned: the signal ended the next task.
    # Trusted only from the last two tasks to end, a signal that came through a busy
    # template after two more had ended ended the one the worker ran by then.
    from makeparallel._backends._process_worker import _RemoteTask, _terminated

    worker, _, journal = worker_here
    worker._ended.extend(ended)
    worker._current = None if current is None else _RemoteTask(current, "task", worker)
    journal.stop_for(7)
    _terminated(worker, 15, None)
    assert journal.declined() is declined
    assert signals_sent == ([] if declined else [(os.getpid(), 15)])


@pytest.mark.parametrize("called_off", [False, True])
def test_a_kill_excuses_one_sigterm_and_someone_elses_is_obeyed(
    called_off: bool, worker_here: tuple[Any, Any, Any], signals_sent: list[tuple[int, int]]
) -> None:
    # Handled late (the signal on its way through a busy template), it ended the task
    # the worker ran by then; the next SIGTERM, someone else's, is obeyed. Called off by
    # the parent, the kill's task counts as ended however long ago it ended here.
    from makeparallel._backends._process_worker import _RemoteTask, _terminated

    worker, _, journal = worker_here
    _terminated(worker, 15, None)  # no kill signalled yet: someone else's
    assert signals_sent == [(os.getpid(), 15)]
    worker._ended.extend([3, 4, 5])
    worker._current = _RemoteTask(9, "task", worker)
    journal.stop_for(3)
    if called_off:
        journal.call_off()
        worker._ended.clear()  # the worker keeps only so many: 3 left them
    _terminated(worker, 15, None)
    assert journal.declined() and signals_sent == [(os.getpid(), 15)]
    _terminated(worker, 15, None)
    assert signals_sent == [(os.getpid(), 15)] * 2


def test_the_next_kill_of_a_worker_that_declined_one_is_obeyed(
    worker_here: tuple[Any, Any, Any], signals_sent: list[tuple[int, int]]
) -> None:
    # A kill's excuse is its own: the next kill, for the task the worker runs now, ends it.
    from makeparallel._backends._process_worker import _RemoteTask, _terminated

    worker, _, journal = worker_here
    worker._ended.extend([3])
    worker._current = _RemoteTask(4, "task", worker)
    journal.stop_for(3)
    _terminated(worker, 15, None)
    journal.call_off()
    assert journal.declined() and signals_sent == []
    journal.stop_for(4)
    assert not journal.declined()
    _terminated(worker, 15, None)
    assert signals_sent == [(os.getpid(), 15)]


def test_a_kill_is_not_signalled_while_the_last_sigterm_is_on_its_way(
    worker_here: tuple[Any, Any, Any], signals_sent: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two kills called off before the worker handled either signal: it declined the
    # first to come, for the second kill, and obeyed the second, in the task running
    # then. The signal on its way serves the next kill; one declined before that kill
    # was written has the kill's own sent then (signal_owed).
    from makeparallel._backends import _crash_journal
    from makeparallel._backends._process_worker import _RemoteTask, _terminated

    worker, _, journal = worker_here
    assert journal.stop_for(3) and not journal.signal_held()  # the first: sent
    journal.call_off()  # task 3 ended before the handler ran
    assert not journal.stop_for(4) and journal.signal_held()  # held: the first is on its way
    assert not journal.signal_owed()
    worker._ended.extend([3, 4])
    worker._current = _RemoteTask(5, "task", worker)
    _terminated(worker, 15, None)  # it comes: declined for the second kill, whose task ended too
    assert journal.declined() and signals_sent == [] and not journal.signal_owed()
    journal.call_off()
    assert journal.stop_for(5)  # that signal handled: the next kill's is sent
    journal.call_off()
    assert not journal.stop_for(6)
    # Declined by a handler that read the count before kill 4 was written: kill 4 is owed its signal.
    memoryview(journal._map).cast("q")[_crash_journal._DECLINED] = 3
    assert journal.signal_owed() and not journal.signal_owed() and not journal.signal_held()
    worker._current = _RemoteTask(6, "task", worker)
    _terminated(worker, 15, None)  # task 6 runs: it is killed
    assert signals_sent == [(os.getpid(), 15)]
    # Neither declined nor obeyed (here, where nothing dies) for a while, it went to a task's own
    # handler: the next kill's is sent.
    clock = [time.monotonic()]
    monkeypatch.setattr(_crash_journal, "time", type("Clock", (), {"monotonic": staticmethod(lambda: clock[0])}))
    assert not journal.stop_for(7)
    clock[0] += _crash_journal._ON_ITS_WAY
    assert journal.stop_for(8) and not journal.stop_for(9)


def test_a_task_sent_ahead_and_cancelled_while_the_one_before_ran_never_runs(worker_here: tuple[Any, Any, Any]) -> None:
    # Short tasks travel in windows: the worker holds the next ones in its inbox
    # while one runs, and reads the pipe only when it runs out of them. A cancel
    # that arrived meanwhile for a task in the inbox must be read before that task
    # starts. Driven in this process, deterministically: the main thread's loop
    # (_next, _run), with the parent's messages written to its pipe.
    from makeparallel._backends._channel import Channel

    worker, ours, journal = worker_here
    call = abs_call()
    worker._post([("task", (task_id, "abs", *call)) for task_id in (1, 2, 3)])  # a window of three
    kind, task = worker._next()
    assert (kind, task[0]) == ("task", 1)
    Channel(ours).send(("cancel", 2, mp.TaskCancelledError("cancelled while task 1 ran")))
    journal.cancel_sent()  # as the parent does once it sent one
    assert worker._run(*task)[0][:2] == (1, True)
    kind, task = worker._next()
    assert (kind, task[0]) == ("task", 2)
    assert worker._run(*task)[0] == (2, False, (b"", "", ""), [], 0.0)  # dropped: it never ran
    kind, task = worker._next()
    assert worker._run(*task)[0][:2] == (3, True)
    assert worker._cancelled == {}


@pytest.mark.timeout(180)
def test_short_tasks_wait_for_an_idle_worker_rather_than_behind_a_long_task(tmp_path: Path) -> None:
    # Sent ahead on the strength of the pool's average (short tasks), 20 of 50 waited the
    # whole 30 s of a long task sent before them, while the other worker had nothing to do.
    from makeparallel._backends import _process

    fresh_process_pool(2)
    send_tasks_ahead()
    flags = Flags(str(tmp_path))
    long = mp.parallel(backend="process")(mark_then_wait)(flags, "long")
    try:
        assert flags.wait("long", 30)
        [worker] = [w for w in long._backend._workers if long in w.outstanding]
        since = max(worker.returned_at, long._started_at)
        assert wait_until(lambda: time.perf_counter() - since > _process._OVERDUE, 30)  # it returned nothing since
        quick = [mp.parallel(backend="process")(abs)(-i) for i in range(50)]
        assert [handle.get(timeout=60) for handle in quick] == list(range(50))
        assert long.status == "running"
    finally:
        flags.set("long-go")
    assert long.get(timeout=30) == "long"


@pytest.mark.timeout(180)
def test_a_worker_that_reads_nothing_holds_up_only_the_task_sent_to_it(tmp_path: Path) -> None:
    # The loop thread sent a task larger than the pipe's buffers with sendall, to a worker
    # that looked idle and read nothing (stopped, or its GIL held by a thread its task left
    # in a long C call): every other worker's results, every timeout and shutdown() waited.
    import signal

    fresh_process_pool(2)
    on_process = mp.parallel(backend="process")
    for _ in range(2):
        on_process(os.getpid)().get(timeout=30)  # the pool starts its workers
    flags = Flags(str(tmp_path))
    busy = on_process(mark_then_wait)(flags, "busy")
    stopped_pid = None
    try:
        assert flags.wait("busy", 30)
        backend = busy._backend
        assert wait_until(lambda: len([w for w in backend._workers if w.ready]) == 2, 30)
        [stopped] = [w for w in backend._workers if busy not in w.outstanding]
        stopped_pid = stopped.process.pid
        os.kill(stopped_pid, signal.SIGSTOP)
        large = on_process(len)(b"x" * (4 * 2**20 + stopped.direct_bytes))  # past what its pipe's buffers hold
        assert wait_until(lambda: large in stopped.outstanding, 30)
        flags.set("busy-go")
        assert busy.get(timeout=30) == "busy"
        assert [on_process(abs)(-i).get(timeout=30) for i in range(5)] == list(range(5))
        started = time.monotonic()
        assert not mp.shutdown(1)  # the large task never ran: it fails
        assert time.monotonic() - started < 30
        assert isinstance(large.exception(timeout=30), mp.ShutdownError)
        assert wait_until(lambda: not process_alive(stopped_pid), 30)  # killed, stopped as it was
    finally:
        flags.set("busy-go")
        if stopped_pid is not None and process_alive(stopped_pid):
            os.kill(stopped_pid, signal.SIGKILL)
        mp.reset_shutdown()


@pytest.mark.timeout(180)
def test_no_task_is_sent_ahead_behind_a_message_still_waiting_to_go(tmp_path: Path) -> None:
    # The worker reads none of it yet: sent ahead there and then cancelled, a task started
    # before its cancel went (19 of 20, where the program ran a thread of its own), and
    # shutdown(cancel_pending=True) could not take it back. Queued here, it can be.
    import signal

    fresh_process_pool(1)
    send_tasks_ahead()
    on_process = mp.parallel(backend="process")
    first = on_process(abs)(-1)
    assert first.get(timeout=30) == 1  # the worker is idle
    backend = first._backend
    [worker] = backend._workers
    os.kill(worker.process.pid, signal.SIGSTOP)
    try:
        large = on_process(len)(b"x" * (4 * 2**20 + worker.direct_bytes))  # past what its pipe's buffers hold
        assert wait_until(lambda: large in worker.outstanding and worker.conn.unsent, 30)
        short = [on_process(abs)(-i) for i in range(5)]
        for _ in range(2):  # two passes of the loop: the first has dispatched what it would
            backend._wake()
            assert wait_until(lambda: not backend._woken, 30)
        assert list(worker.outstanding) == [large]
        assert all(handle.cancel() for handle in short)
    finally:
        os.kill(worker.process.pid, signal.SIGCONT)
    assert large.get(timeout=60) == 4 * 2**20 + worker.direct_bytes
    assert all(handle.cancelled() for handle in short) and on_process(abs)(-7).get(timeout=30) == 7


def test_a_task_that_fits_an_idle_workers_socket_goes_from_the_submitting_thread(
    one_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A map's first chunks (50,000 ints of a list pickle to 150-220 KiB) waited for the loop
    # thread to send them, while the submitting thread held the GIL to pickle the next one.
    # A task that could wait for the worker to read still goes through the loop thread.
    from makeparallel import _runtime
    from makeparallel._backends import _process

    measure = mp.parallel(backend="process")(len)
    assert measure("warm").get(20) == 4  # the worker is ready and idle: a task may go straight to it
    room = _runtime.get_backend("process")._workers[0].direct_bytes
    senders: list[bool] = []
    send = _process._send

    def send_and_note_the_thread(worker: Any, message: tuple[Any, ...], buffers: Any = ()) -> None:
        if message[0] == "tasks":
            senders.append(threading.current_thread() is threading.main_thread())
        send(worker, message, buffers)

    monkeypatch.setattr(_process, "_send", send_and_note_the_thread)
    assert measure("x" * 200_000).get(20) == 200_000
    assert measure("y" * room).get(20) == room
    assert senders == [room >= 200_100, False]


# -- metadata, callbacks, priorities, limits, metrics ---------------------------------------------


def test_metadata_appears_in_the_error_note() -> None:
    handle = on_process(fail_with_value_error)(1)
    handle.set_metadata("request", "r-17")
    assert handle.get_metadata("request") == "r-17"
    assert handle.get_all_metadata() == {"request": "r-17"}
    with pytest.raises(ValueError) as info:
        handle.get(timeout=20)
    assert any("metadata: {'request': 'r-17'}" in note for note in info.value.__notes__)


def test_callbacks_fire_with_the_result_and_the_error() -> None:
    results: list[int] = []
    errors: list[BaseException] = []
    ended: list[mp.AsyncHandle[Any]] = []
    ok = on_process(square)(9).on_complete(results.append).on_error(errors.append)
    ok.add_done_callback(ended.append)
    bad = on_process(fail_with_my_error)(5).on_complete(results.append).on_error(errors.append)
    assert ok.get(timeout=20) == 81
    assert bad.wait(20)
    # Callbacks run before waiters wake (or at once, if registered after the end).
    assert results == [81]
    assert ended == [ok]
    assert len(errors) == 1 and type(errors[0]) is MyError and errors[0].code == 5


PRIORITIES = [(0, "low"), (5, "high"), (1, "mid"), (5, "high-2"), (-3, "lowest")]
BY_PRIORITY = ["high", "high-2", "mid", "low", "lowest"]


def after_tasks(length: str) -> None:
    """Let the pool see tasks of one ``length``, "short" or "long", before the test proper.

    The pool sends a worker tasks ahead of time (a window) only once tasks prove
    short, so what a test of ordering sees depends on the tasks run before it.
    Running some first makes that history explicit instead of inherited from
    whatever test ran earlier.
    """
    if length == "short":  # well under a millisecond each, many of them
        handles = [on_process(square)(i) for i in range(200)]
    else:  # one task of tens of milliseconds
        handles = [on_process(sleep_for)(0.05)]
    assert mp.gather(handles, timeout=20) is not None


def submit_by_priority(flags: Flags) -> list[mp.AsyncHandle[str]]:
    """Submit PRIORITIES while the one worker is held; the first gets time to be taken up.

    The pause after the first submission stands for the gap between submissions in
    real code. It is a bounded wait for the pool to take the task up if it is going
    to, so the outcome does not depend on how fast the loop thread is: it ends early
    when the pool dispatched the task (to the busy worker), or after 0.5 s when it
    keeps it queued.
    """
    record = on_process(record_order)
    (priority, label), *rest = PRIORITIES
    handles = [record(flags, label, priority=priority)]
    wait_until(lambda: mp.get_process_pool_info()["queued_tasks"] == 0, timeout=0.5)
    handles += [record(flags, label, priority=priority) for priority, label in rest]
    return handles


@pytest.mark.parametrize("length", ["long", "short"], ids=["after-long-tasks", "after-short-tasks"])
def test_queued_tasks_start_by_priority(flags: Flags, one_worker: None, length: str) -> None:
    after_tasks(length)
    blocker = on_process(hold)(flags)
    assert flags.wait("holding")
    handles = submit_by_priority(flags)
    flags.set("go")
    assert blocker.get(timeout=20) == "held"
    assert mp.gather(handles, timeout=20) == [label for _, label in PRIORITIES]
    order = flags.read("order").split()
    if length == "long":
        # As on the thread backend, and as the README and @parallel promise: a
        # task that has not started yet yields to a higher-priority one submitted
        # after it.
        assert order == BY_PRIORITY, f"queued tasks ran in the order {order}, not by priority"
    else:
        # The README's one exception: once tasks prove very short, a busy worker
        # with two or more tasks queued behind it is sent some ahead, and those
        # start before a higher-priority task that arrives after them. So if the
        # pool looked at the queue between two submissions, "mid" went ahead
        # before "high-2" arrived. A lone queued task still waits: "low", queued
        # alone first, yields to every higher-priority task after it.
        assert order in (BY_PRIORITY, ["high", "mid", "high-2", "low", "lowest"]), (
            f"queued tasks ran in the order {order}, not by priority"
        )


def test_queued_tasks_behind_a_task_with_a_timeout_start_by_priority(flags: Flags, one_worker: None) -> None:
    # A task with a timeout runs alone on its worker: nothing is sent behind it,
    # even once tasks are short and windows are in use.
    after_tasks("short")
    blocker = on_process(hold)(flags, timeout=25)
    assert flags.wait("holding")
    handles = submit_by_priority(flags)
    flags.set("go")
    assert blocker.get(timeout=20) == "held"
    assert mp.gather(handles, timeout=20) == [label for _, label in PRIORITIES]
    assert flags.read("order").split() == BY_PRIORITY


def test_max_concurrent_holds_back_a_submission(flags: Flags) -> None:
    limited = mp.parallel(backend="process", max_concurrent=1)(hold)
    first = limited(flags, "-1")
    assert flags.wait("holding-1")
    submitted = threading.Event()
    second: list[mp.AsyncHandle[str]] = []

    def submit_second() -> None:
        second.append(limited(flags, "-2"))
        submitted.set()

    thread = threading.Thread(target=submit_second)
    thread.start()
    try:
        # A negative check: it cannot fail while the limit works.
        assert not submitted.wait(0.3), "max_concurrent=1 let a second task in"
        assert not flags.is_set("holding-2")
        flags.set("go-1")
        assert first.get(timeout=20) == "held-1"
        assert submitted.wait(10)
        flags.set("go-2")
        assert second[0].get(timeout=20) == "held-2"
    finally:
        flags.set("go-1")
        flags.set("go-2")
        thread.join(10)
    assert not thread.is_alive()


def test_metrics_count_process_tasks() -> None:
    name = f"process-metrics-{uuid.uuid4().hex}"
    fn = mp.parallel(backend="process", name=name)(succeed_unless_negative)
    handles = [fn(x) for x in (1, 2, 3, -1, -2)]
    assert all(h.wait(20) for h in handles)
    metrics = mp.get_metrics(name)
    assert metrics is not None
    assert metrics.total_tasks == 5
    assert metrics.completed_tasks == 3
    assert metrics.failed_tasks == 2
    assert metrics.cancelled_tasks == 0
    assert metrics.timed_out_tasks == 0
    assert metrics.total_execution_time_ms >= 0.0


# -- collecting, groups, maps ---------------------------------------------------------------------


def test_gather_collects_process_tasks() -> None:
    assert mp.gather([on_process(square)(i) for i in range(20)], timeout=20) == [i * i for i in range(20)]
    with pytest.raises(MyError) as info:
        mp.gather([on_process(square)(2), on_process(fail_with_my_error)(11)], timeout=20)
    assert info.value.code == 11


def test_parallel_context_on_processes() -> None:
    with mp.ParallelContext(backend="process", timeout=20) as ctx:
        for i in range(10):
            ctx.submit(square, i)
        ctx.submit(add, 1, 2)
    assert ctx.results() == [i * i for i in range(10)] + [3]

    with pytest.raises(MyError) as info:
        with mp.ParallelContext(backend="process", timeout=20) as ctx:
            ctx.submit(square, 2)
            ctx.submit(fail_with_my_error, 4)
    assert info.value.code == 4
    assert any(type(e) is MyError for e in ctx.errors)


def test_parallel_map_and_imap_on_processes_equal_map() -> None:
    items = range(1000)
    expected = list(map(square, items))
    before = mp.get_metrics("square [map]")
    chunks_before = 0 if before is None else before.total_tasks
    assert mp.parallel_map(square, items, backend="process") == expected
    after = mp.get_metrics("square [map]")
    assert after is not None
    assert 1 <= after.total_tasks - chunks_before < len(items), "the map was not chunked"
    assert list(mp.imap(square, items, backend="process")) == expected
    assert sorted(mp.imap(square, items, backend="process", ordered=False)) == sorted(expected)  # type: ignore[type-var]
    assert mp.parallel_map(square, items, backend="process", chunksize=37) == expected
    pids = set(mp.parallel_map(worker_pid_of, range(64), backend="process"))
    assert os.getpid() not in pids


def test_progress_callable_on_a_process_map() -> None:
    calls: list[tuple[int, int | None]] = []
    result = mp.parallel_map(square, range(500), backend="process", progress=lambda done, total: calls.append((done, total)))
    assert result == [i * i for i in range(500)]
    assert calls and calls[-1] == (500, 500), calls
    dones = [done for done, _ in calls]
    assert dones == sorted(set(dones)), calls  # strictly increasing
    assert {total for _, total in calls} == {500}


# -- logging ---------------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def collected(name: str | None = None, level: int | None = None) -> Iterator[tuple[str, Collect]]:
    """The logger ``name`` (else a new one), at ``level`` if given, with a collecting handler while in the block."""
    name = name or f"test_process_backend.{uuid.uuid4().hex}"
    logger = logging.getLogger(name)
    before = logger.level
    if level is not None:
        logger.setLevel(level)
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield name, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


def test_logging_in_a_worker_reaches_the_parent_handlers() -> None:
    with collected() as (name, handler):
        pid = on_process(log_from_worker)(name).get(timeout=20)
    # Records come down the worker's pipe ahead of its result, and the pool emits
    # them before it settles the handle.
    received = [(r.levelno, r.getMessage()) for r in handler.records]
    assert received == [
        (logging.WARNING, f"hello parent from {pid}"),
        (logging.ERROR, "an error record"),
        (logging.ERROR, "with a traceback"),
    ]
    assert all(r.name == name and r.process == pid for r in handler.records)
    assert pid != os.getpid()
    assert "ZeroDivisionError" in (handler.records[2].exc_text or "")


class HeldHandler(logging.Handler):
    """A handler that takes its time (one that sends each record over the network): it holds each until ``release``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.emitting, self.release = threading.Event(), threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.emitting.set()
        assert self.release.wait(30)
        self.messages.append(record.getMessage())


def test_a_slow_log_handler_holds_only_the_task_that_logged() -> None:
    # The pool's loop thread ran the handlers itself: held there, it read no other
    # worker's result and kept no task's deadline, and every process task waited.
    mp.configure_process_pool(2)
    name = f"test_process_backend.{uuid.uuid4().hex}"
    handler = HeldHandler()
    logging.getLogger(name).addHandler(handler)
    try:
        logged = on_process(log_from_worker)(name)
        assert handler.emitting.wait(30)
        the_pool_goes_on_beside(logged)
        handler.release.set()
        pid = logged.get(timeout=30)  # after its records
        assert handler.messages == [f"hello parent from {pid}", "an error record", "with a traceback"]
    finally:
        handler.release.set()
        logging.getLogger(name).removeHandler(handler)


def test_the_extras_of_a_worker_record_arrive_as_themselves_or_as_their_text(tmp_path: Path) -> None:
    # One the parent could not unpickle (an error whose __init__ takes other arguments, a
    # class only the worker imports) killed the pool's loop thread, and with it every
    # task running; one the worker could not pickle (a lock) dropped the record.
    with collected() as (name, handler):
        pid = on_process(log_extras_from_worker)(name, str(tmp_path)).get(timeout=20)
    (record,) = handler.records
    assert (record.getMessage(), record.process) == ("with extras", pid)
    error = record.error  # type: ignore[attr-defined]
    assert type(error) is QuotaError and (error.user, error.limit) == ("bob", 10)
    assert record.token == "token x1"  # type: ignore[attr-defined]  # str() of it, in the worker
    assert record.lock.startswith("<unlocked _thread.lock object")  # type: ignore[attr-defined]
    assert record.count == 3  # type: ignore[attr-defined]
    assert mp.get_process_pool_info()["loop_deaths"] == 0
    assert on_process(os.getpid)().get(timeout=20) != os.getpid()


def test_a_record_logged_while_a_result_is_pickled_leaves_the_result_whole() -> None:
    # The record's extras are pickled by a pickler of their own: the worker's kept
    # one was half-way through the result.
    with collected() as (name, handler):
        value, after = on_process(result_that_logs_as_it_is_pickled)(name).get(timeout=20)
    assert (type(value), value.items, after) == (LogsAsItIsPickled, [1, 2, 3], {"after": "it"})
    assert [(r.getMessage(), r.detail) for r in handler.records][:1] == [("pickled", {"items": 3})]  # type: ignore[attr-defined]


def test_a_record_of_classes_only_the_worker_has_arrives_and_this_processs_record_factory_makes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A level, a logger name or an extra's key of a class only the worker imports
    # travelled in the message's own pickle, and killed the pool's loop thread; and
    # logging.makeLogRecord gave this process's record factory no name, so one that
    # read record.name killed it too.
    made = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = made(*args, **kwargs)
        record.short_name = record.name.rsplit(".", 1)[-1]  # type: ignore[attr-defined]
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", factory)
    with collected("test_process_backend.only_here", logging.DEBUG) as (_, handler):
        assert on_process(log_with_classes_only_the_worker_has)(str(tmp_path)).get(timeout=20) == "logged"
    (record,) = handler.records
    assert (record.getMessage(), record.levelno, record.short_name) == ("at a level of its own", 25, "only_here")  # type: ignore[attr-defined]
    assert record.keyed == 1  # type: ignore[attr-defined]
    assert mp.get_process_pool_info()["loop_deaths"] == 0


def test_a_handler_that_raises_where_stderr_fails_costs_its_record_alone() -> None:
    # The handler's error, reported to a closed stderr, raised again: read as the
    # worker's pipe breaking, a healthy worker was killed, and its task failed.
    class Picky(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("a handler with a bug")

    name = f"test_process_backend.{uuid.uuid4().hex}"
    logger = logging.getLogger(name)
    logger.addHandler(Picky())
    closed = io.StringIO()
    closed.close()
    crashed = mp.get_process_pool_info()["worker_restart_reasons"].get("crashed", 0)
    try:
        with contextlib.redirect_stderr(closed):
            assert on_process(log_from_worker)(name).get(timeout=20) != os.getpid()
    finally:
        logger.handlers.clear()
    info = mp.get_process_pool_info()
    assert (info["loop_deaths"], info["worker_restart_reasons"].get("crashed", 0)) == (0, crashed)


def test_a_worker_records_level_is_named_as_this_process_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging, "_levelToName", dict(logging._levelToName))  # type: ignore[attr-defined]
    monkeypatch.setattr(logging, "_nameToLevel", dict(logging._nameToLevel))  # type: ignore[attr-defined]
    logging.addLevelName(logging.WARNING, "WARN")
    logging.addLevelName(25, "NOTICE")
    with collected(level=logging.DEBUG) as (name, handler):
        in_the_worker = on_process(log_at_levels)(name).get(timeout=20)
    assert in_the_worker == ["WARNING", "Level 25", "WORKER_ONLY"]
    assert [r.levelname for r in handler.records] == ["WARN", "NOTICE", "WORKER_ONLY"]


def test_a_progress_message_of_a_class_only_the_worker_has_arrives_as_text(tmp_path: Path) -> None:
    handle = on_process(report_progress_of_a_worker_class)(str(tmp_path))
    assert handle.get(timeout=20) == "done"
    assert handle.get_progress_message() == "half"  # the str itself: a str subclass's own __str__ is not asked
    assert mp.get_process_pool_info()["loop_deaths"] == 0


# -- large buffers ---------------------------------------------------------------------------------


def test_large_bytearray_round_trips_intact() -> None:
    data = bytearray(os.urandom(8 * 1024 * 1024))
    kind, digest, echoed = on_process(describe_buffer)(data).get(timeout=20)
    assert kind == "bytearray"
    assert digest == hashlib.sha256(data).hexdigest()
    assert type(echoed) is bytearray
    assert echoed == data


def test_large_memoryview_round_trips_intact() -> None:
    data = bytearray(os.urandom(8 * 1024 * 1024))
    view = memoryview(data)[7:-11]  # contiguous, not at the start of its buffer
    kind, digest, echoed = on_process(describe_buffer)(view).get(timeout=20)
    assert kind == "memoryview"
    assert digest == hashlib.sha256(view).hexdigest()
    assert bytes(echoed) == bytes(view)
    # A memoryview as the result, too.
    result = on_process(slice_of)(data).get(timeout=20)
    assert isinstance(result, memoryview)
    assert bytes(result) == bytes(data[3:-5])


def test_a_memoryview_keeps_its_format_and_shape_both_ways() -> None:
    # Its bytes alone made a view of bytes of it: sum() in the task added up bytes.
    doubles = memoryview(array.array("d", [i / 4 for i in range(1 << 20)]))  # 8 MiB: out of band
    assert on_process(sum)(doubles).get(timeout=20) == sum(doubles)
    rows = doubles.cast("B").cast("d", (1 << 18, 4))
    strided = memoryview(array.array("i", range(1000)))[::3]  # not contiguous: copied, as it is
    for view in (rows, strided):
        assert on_process(view_layout)(view).get(timeout=20) == (view.format, view.shape, view.tolist())
    result = on_process(doubles_as_rows)(1 << 20).get(timeout=20)
    assert (result.format, result.shape) == ("d", (1 << 18, 4))
    assert result.tolist() == doubles_as_rows(1 << 20).tolist()
    # One it cannot make again from bytes fails as it is submitted, not in the task.
    with pytest.raises(mp.TaskSerializationError, match="a memoryview of format '[<>]i'"):
        on_process(view_layout)(memoryview((ctypes.c_int32 * 4)()))


# -- choosing the backend -----------------------------------------------------------------------


@pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(), reason="on a free-threaded build auto means threads"
)
def test_auto_backend_is_process_on_a_gil_build() -> None:
    pid = mp.parallel(backend="auto")(worker_pid)().get(timeout=20)
    assert pid != os.getpid()
    assert pid in mp.get_process_pool_info()["worker_pids"]


def test_configure_backend_process_makes_it_the_default() -> None:
    mp.configure(backend="process")  # the conftest puts the default back
    pid = mp.parallel(worker_pid)().get(timeout=20)
    assert pid != os.getpid()
    assert pid in mp.get_process_pool_info()["worker_pids"]
    assert os.getpid() not in set(mp.parallel_map(worker_pid_of, range(16)))


def test_environment_variable_selects_the_process_backend() -> None:
    script = textwrap.dedent(
        """
        import json, os
        import makeparallel as mp

        def pid():
            return os.getpid()

        task_pid = mp.parallel(pid)().get(timeout=20)
        print(json.dumps({
            "me": os.getpid(),
            "task": task_pid,
            "workers": mp.get_process_pool_info()["worker_pids"],
        }))
        """
    )
    env = dict(os.environ, MAKEPARALLEL_BACKEND="process")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=25)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["task"] != seen["me"]
    assert seen["task"] in seen["workers"]


def test_state_of_a_closure_is_sent_afresh_with_every_call() -> None:
    # Plain functions are pickled once and reused; a closure's cells may change
    # between calls, so it must travel anew each time.
    counter = [0]

    def read() -> int:
        return counter[0]

    task = mp.parallel(read, backend="process")
    first = task().get(30)
    counter[0] = 41
    assert (first, task().get(30)) == (0, 41)


class Holder:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def test_large_bytes_and_bytearrays_travel_out_of_band_wherever_they_are_and_come_back_as_themselves() -> None:
    from makeparallel._serialization import dumps, loads

    big = bytes(range(256)) * 4096  # 1 MiB
    array = bytearray(big[::-1])
    field = big[1:]
    sent = (big, b"small", [(1, array)], {"key": Holder(field)}, "x" * 100_000, big)
    data, buffers = dumps(sent)
    assert len(buffers) == 3  # each object once: the second big is a reference to the first
    assert buffers[0] is big and buffers[1] is array and buffers[2] is field  # as they are, not copied
    assert len(data) < 100_000 + 1024  # only the str (which has no buffer) is in the stream
    received = [bytearray(buffer) for buffer in buffers]  # what a receiver reads
    back = loads(data, received)
    assert back[:3] == (big, b"small", [(1, array)]) and back[3]["key"].payload == field
    assert back[5] is back[0]
    assert type(back[0]) is bytes and type(back[2][0][1]) is bytearray
    assert back[4] == "x" * 100_000
    data, buffers = dumps(b"x" * 1000)
    assert buffers == [] and loads(data, []) == b"x" * 1000  # small ones stay in band


@pytest.mark.parametrize(
    "value",
    [[], [1], list(range(2500)), [[1, 2], [3, [4, 5]]], [Holder(b"x")] * 3, [b"y" * 200_000, bytearray(70_000)], [None, 1.5, ValueError("e")]],
    ids=["empty", "one", "appended-in-batches", "nested", "shared", "out-of-band", "mixed"],
)
def test_the_length_of_a_pickled_list_is_read_without_unpickling_it(value: list[Any]) -> None:
    from makeparallel._serialization import dumps, list_length

    data, _ = dumps(value)
    assert list_length(data) == len(value)


@pytest.mark.parametrize(
    "value", [(1, 2), {"a": [1, 2]}, 5, "text", Holder(b"[]"), ([1, 2, 3],), ([1, 2, 3], "x"), ([], 1, 2), {1: [1, 2]}]
)
def test_what_is_no_list_has_no_length_read(value: Any) -> None:
    from makeparallel._serialization import dumps, list_length

    data, _ = dumps(value)
    assert list_length(data) is None


BUILT_IN_DATA = {
    "numbers": [None, True, 1, -(2**70), 1.5, 2 + 3j],
    "text": ["é", b"ab", bytearray(b"cd")],
    "nested": {"a": [1, (2, 3)], "b": {4, 5}, "c": frozenset({6})},
    "shared": ([1, 2],) * 3,
    "ranges": [range(3), range(-5, 100, 7)],
    "functions": [abs, len, os.getpid, ((abs,), {})],
    "classes": [range, complex],
    "out of band": [b"y" * 200_000, bytearray(70_000), b"y" * 200_000],
    "this package's": [_SentFunction(b"1"), _Records(b"\0" * 8, "q"), records_to_list, _Records(b"\0" * 8, "d")],
}


@pytest.mark.parametrize("value", BUILT_IN_DATA.values(), ids=BUILT_IN_DATA.keys())
def test_the_plain_pickler_writes_built_in_data_as_the_full_pickler_does(value: Any) -> None:
    # The plain pickler saves a process the import of cloudpickle, and nothing else:
    # where it pickles at all, its stream must be the full pickler's, byte for byte.
    from makeparallel._serialization import _pickler_class, _PlainPickler

    def pickled(kind: type[Any]) -> tuple[bytes, list[Any]]:
        stream, buffers = io.BytesIO(), []
        kind(stream, protocol=5, buffer_callback=buffers.append).dump(value)
        return stream.getvalue(), buffers

    assert pickled(_PlainPickler) == pickled(_pickler_class())


def test_a_process_map_of_a_builtin_over_built_in_data_never_imports_cloudpickle(tmp_path: Path) -> None:
    # Its chunks and their results, a task's list argument, keywords and tuple result: all
    # built-in data, which the C pickler writes alike. Importing cloudpickle cost a cold
    # worker about 25 ms (and the parent about 15) for none of it.
    (tmp_path / "probe.py").write_text("import sys\n\ndef cloudpickle_loaded():\n    return 'cloudpickle' in sys.modules\n")
    script = textwrap.dedent(
        """
        import sys
        import makeparallel as mp

        mp.configure_process_pool(num_workers=1)
        assert mp.parallel_map(abs, [-1, -2, -3] * 50, backend="process") == [1, 2, 3] * 50
        assert mp.parallel(sorted, backend="process")([3, 1, 2], reverse=True).get(20) == [3, 2, 1]
        assert mp.parallel(max, backend="process")([(1, "a"), (2, {"b": None})]).get(20) == (2, {"b": None})
        parent = "cloudpickle" in sys.modules
        import probe  # a function of a module: the worker finds it by name

        print(parent, mp.parallel(probe.cloudpickle_loaded, backend="process")().get(20))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), str(tmp_path), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=25, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_what_the_plain_pickler_cannot_write_is_pickled_whole_by_the_full_one() -> None:
    # In a fresh interpreter, whose threads' picklers start plain: each stream must read
    # back whole, a large buffer the plain one set aside before it gave up not sent twice,
    # and the built-in data after it pickled as before.
    script = textwrap.dedent(
        """
        import pickle
        from makeparallel._serialization import dumps, dumps_in_band

        class Point:
            def __init__(self, x):
                self.x = x

            def __eq__(self, other):
                return type(other) is Point and other.x == self.x

        big = b"z" * 100_000
        values = [([1, big], 1), ([2, big, Point(3)], 1), ({"p": [Point(4)], "n": 5}, 0), (([6, big],), 1)]
        for value, set_aside in values:
            data, buffers = dumps(value)
            assert pickle.loads(data, buffers=buffers) == value, value
            assert len(buffers) == set_aside, (value, len(buffers))
            assert pickle.loads(dumps_in_band(value)) == value, value
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=25, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


_REGISTRY: dict[str, Any] = {}


class _Registered(type):
    """A metaclass that looks names up in a registry: a ``KeyError`` for one not there."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _REGISTRY[name]


class Plugin(metaclass=_Registered):
    def __init__(self, name: str) -> None:
        self.name = name


def test_the_plain_pickler_gives_up_on_a_class_whose_metaclass_raises_for_unknown_names() -> None:
    # The full pickler never asks such a class for a name it lacks, and pickles its objects;
    # the plain one asked it for its own marker, and the KeyError failed the whole pickle
    # where it should have given up and left it to the full pickler.
    from makeparallel._serialization import _NotPlain, _PlainPickler

    with pytest.raises(_NotPlain):
        _PlainPickler(io.BytesIO(), protocol=5).dump([Plugin("a")])


def test_what_neither_pickler_can_write_fails_as_the_full_pickler_failed() -> None:
    # The plain pickler gave up first, and the full pickler's error was raised while its
    # _NotPlain was being handled: every traceback of an unpicklable argument or result
    # showed makeparallel's own signal to fall back, "during handling" of which the
    # user's error seemed to happen. Its cause and context must be the full pickler's.
    script = textwrap.dedent(
        """
        import threading
        from makeparallel._serialization import dumps

        for value in ([1, threading.Lock()], {"lock": threading.Lock()}):
            try:
                dumps(value)
            except TypeError as error:
                print(repr(error.__context__), repr(error.__cause__))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=25, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "None"] * 2


def test_data_nested_too_deep_for_either_pickler_fails_as_the_full_pickler_fails() -> None:
    # Lists in lists 100,000 deep: the plain pickler ran out of stack as the full one does,
    # but raised RecursionError where the full one (cloudpickle's) raises its PicklingError,
    # "excessively deep recursion required": an error that hung on which pickler a thread had.
    script = textwrap.dedent(
        """
        import io
        from makeparallel._serialization import _pickler_class, dumps, dumps_in_band

        deep = []
        for _ in range(100_000):
            deep = [deep]
        for pickle_it in (lambda: dumps(deep), lambda: dumps_in_band(deep), lambda: _pickler_class()(io.BytesIO()).dump(deep)):
            try:
                pickle_it()
            except Exception as error:
                print(type(error).__name__)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=25, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PicklingError"] * 3


def fingerprint(item: tuple[int, bytes | bytearray]) -> tuple[int, str, str]:
    index, data = item
    return index, type(data).__name__, hashlib.sha256(data).hexdigest()


def test_a_large_item_of_a_map_travels_out_of_band(monkeypatch: pytest.MonkeyPatch) -> None:
    from makeparallel import _serialization

    streams: list[tuple[int, list[Any]]] = []
    dumps = _serialization.dumps

    def recording(obj: Any) -> tuple[bytes, list[Any]]:
        data, buffers = dumps(obj)
        streams.append((len(data), buffers))
        return data, buffers

    monkeypatch.setattr(_serialization, "dumps", recording)
    big = os.urandom(4 * 1024 * 1024)
    array = bytearray(os.urandom(1024 * 1024))
    items = [(0, big), (1, array), (2, b"small")]
    assert mp.parallel_map(fingerprint, items, backend="process") == [
        (0, "bytes", hashlib.sha256(big).hexdigest()),
        (1, "bytearray", hashlib.sha256(array).hexdigest()),
        (2, "bytes", hashlib.sha256(b"small").hexdigest()),
    ]
    for data in (big, array):
        carrying = [size for size, buffers in streams if any(buffer is data for buffer in buffers)]
        assert carrying, "the item was not sent as an out-of-band buffer"
        assert max(carrying) < 64 * 1024, "the item was copied into its chunk's pickle stream"


class Argument:
    """A call's argument, to see it let go (a plain int is never collected)."""

    def __init__(self, payload: bytes = b"") -> None:
        self.payload = payload


def identity_length(value: Argument) -> int:
    return len(value.payload)


class Failure(Exception):
    """An exception in a call's arguments (a subclass: ``ValueError`` itself takes no weak reference)."""


@pytest.mark.parametrize("what", ["an object", "a large bytes sent out of band", "an exception"])
def test_what_was_pickled_is_let_go_once_its_stream_is_made(what: str) -> None:
    # The thread's kept pickler cleared its memo (and the exceptions it met, and the list of
    # buffers sent out of band) before its next pickle only: all that named the last call's
    # arguments, kept alive by the submitting thread until it sent another.
    from makeparallel._serialization import dumps

    sent: Any = {"an object": Argument, "a large bytes sent out of band": bytes, "an exception": Failure}[what](200_000)
    if isinstance(sent, bytes):  # bytes take no weak reference: their references are counted
        before = sys.getrefcount(sent)
        data, buffers = dumps((sent, [sent]))
        assert len(buffers) == 1 and buffers[0] is sent  # sent as it is
        del buffers
        assert sys.getrefcount(sent) == before, "the pickler still refers to the bytes sent"
    else:
        kept = weakref.ref(sent)
        data, _ = dumps((sent, [sent]))
        del sent
        gc.collect()
        assert kept() is None, "the pickler still keeps what it pickled"
    assert data


@pytest.mark.parametrize("how", ["run", "cancelled while held for its slot"])
def test_a_process_calls_argument_is_let_go_once_the_call_ended(how: str, gate: threading.Event) -> None:
    # Its pickle's memo on the submitting thread kept the argument until that thread sent
    # another call: any call run to its end, or one held (asyncio, over its limit) and cancelled.
    argument = Argument(b"abc")
    kept = weakref.ref(argument)
    if how == "run":
        assert on_process(identity_length)(argument).get(30) == 3
    else:
        started = threading.Event()

        def hold_the_slot() -> int:
            started.set()
            assert gate.wait(30)
            return 0

        mp.set_max_concurrent_tasks(1)
        holder = mp.parallel(backend="thread")(hold_the_slot)()
        assert started.wait(30)

        async def main(x: Argument) -> None:
            held = on_process(identity_length)(x)  # pickled as it is held
            assert not held.done()
            assert held.cancel()

        asyncio.run(main(argument))
        gate.set()
        assert holder.get(30) == 0
    del argument
    gc.collect()
    assert kept() is None, "the call's argument is still kept"


@pytest.mark.parametrize("how", ["pickles on the same thread", "submits a process call"])
def test_an_argument_pickled_by_a_reduce_that_pickles_again_on_its_thread(how: str) -> None:
    # The thread's kept pickler was used again by the nested pickle as it was in the middle
    # of a stream: the nested one truncated the stream and cleared the memo under it, and
    # the interpreter crashed (a segmentation fault in the C pickler). Run in a process of
    # its own, so that a crash fails this test instead of ending the run.
    script = textwrap.dedent(
        f"""
        import pickle
        import makeparallel as mp
        from makeparallel._serialization import dumps

        ident = mp.parallel(backend="process")(lambda x: x)

        class Inner:
            def __init__(self, v):
                self.v = v

        class PicklesAgain:
            def __init__(self, v):
                self.v = v

            def __reduce__(self):
                if {how!r} == "pickles on the same thread":
                    dumps(("inner", [Inner(self.v)] * 2))
                else:
                    assert ident(Inner(self.v)).get(timeout=20).v == self.v
                return (PicklesAgain, (self.v,))

        shared = Inner(5)
        sent = [shared, PicklesAgain(1), shared, bytearray(200_000), shared]
        data, buffers = dumps(sent)
        got = pickle.loads(data, buffers=buffers)
        assert got[0] is got[2] is got[4] and got[0].v == 5 and got[1].v == 1 and len(got[3]) == 200_000
        got = ident(sent).get(timeout=20)
        assert got[0] is got[2] is got[4] and got[0].v == 5 and got[1].v == 1 and len(got[3]) == 200_000
        print("ok")
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=25)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.split() == ["ok"]
