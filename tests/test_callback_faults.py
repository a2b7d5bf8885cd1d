"""Callbacks and listeners that raise BaseException never break a pool; health() sees what does.

One table: every exception family (``SystemExit``, ``GeneratorExit``, a custom
``BaseException``, ``KeyboardInterrupt`` off the main thread) x every kind of
callback (``on_complete``, ``on_error``, ``add_done_callback``, ``on_progress``,
task listeners) x the thread pool and the process pool, each of one worker, so
that a worker or loop thread killed by the callback would hang the next task.
The pool threads' own faults are injected in a child interpreter, which the
test then reads: a dead pool thread makes ``health()`` not live for good.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import Flags, wait_until

import makeparallel as mp
from makeparallel._backends import _process

pytestmark = pytest.mark.timeout(60)

SRC = Path(__file__).resolve().parents[1] / "src"


class Fatal(BaseException):
    """A user's own BaseException, outside every standard family."""


FAMILIES = [
    pytest.param(lambda: SystemExit(3), id="SystemExit"),
    pytest.param(GeneratorExit, id="GeneratorExit"),
    pytest.param(lambda: Fatal("fatal"), id="custom BaseException"),
    pytest.param(lambda: KeyboardInterrupt("not the main thread"), id="KeyboardInterrupt off main"),
]
KINDS = ["on_complete", "on_error", "add_done_callback", "on_progress", "listener"]


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("teardown")


@pytest.fixture(params=["thread", "process"])
def pool_of_one(request: pytest.FixtureRequest) -> Iterator[str]:
    """The named pool with exactly one worker: a dead worker or loop hangs the next task."""
    backend: str = request.param
    if backend == "thread":
        mp.configure_thread_pool(1)
    else:
        mp.configure_process_pool(1)
        assert wait_until(lambda: mp.get_process_pool_info()["live_workers"] <= 1), mp.get_process_pool_info()
    yield backend


def gated_work(flags: Flags, fail: bool) -> str:
    """Once the test registered its callbacks, report progress, then wait for ``go`` (in any pool)."""
    assert flags.wait_for_release("registered")
    mp.report_progress(0.5)  # after registration: the callbacks run where reports arrive
    flags.set("started")
    assert flags.wait_for_release("go")
    if fail:
        raise ValueError("the task failed, as the test asked")
    return "done"


def double(x: int) -> int:
    return 2 * x


def broken_records(caplog: pytest.LogCaptureFixture, error_type: type[BaseException]) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "makeparallel" and r.exc_info is not None and isinstance(r.exc_info[1], error_type)
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make_error", FAMILIES)
def test_a_raising_callback_harms_neither_the_waiters_nor_the_pool(
    pool_of_one: str,
    kind: str,
    make_error: Callable[[], BaseException],
    flags: Flags,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="makeparallel")
    error_type = type(make_error())
    ran_after: list[object] = []

    def broken(*_: object) -> None:
        error = make_error()
        if isinstance(error, KeyboardInterrupt) and threading.current_thread() is threading.main_thread():
            return  # Ctrl-C on the main thread goes on, as it should (tested below)
        raise error

    fails = kind == "on_error"
    work = mp.parallel(backend=pool_of_one)(gated_work)
    if kind == "listener":
        mp.add_task_listener(broken)
    try:
        handle = work(flags, fails)
        if kind != "listener":
            getattr(handle, kind)(broken)
            getattr(handle, kind)(ran_after.append)  # a later callback of the same kind still runs
        flags.set("registered")
        assert flags.wait("started")
        waiter_done = threading.Event()
        waiter = threading.Thread(target=lambda: (handle.wait(30), waiter_done.set()))
        waiter.start()
        flags.set("go")
        assert waiter_done.wait(30), "a waiter was never woken"
        waiter.join(30)
    finally:
        if kind == "listener":
            mp.remove_task_listener(broken)
    if fails:
        with pytest.raises(ValueError, match="as the test asked"):
            handle.get(30)
    else:
        assert handle.get(30) == "done"
    if kind != "listener":
        calls = 2 if kind == "on_progress" else 1  # the report, then the success's 1.0
        assert wait_until(lambda: len(ran_after) == calls), ran_after
    # The one worker (or the loop thread) survived: the next task runs.
    assert mp.parallel(backend=pool_of_one)(double)(21).get(30) == 42
    assert broken_records(caplog, error_type), "the raising callback was not logged with its traceback"
    report = mp.health(memory_limit_percent=100.0)
    assert report["live"] is True, report["reasons"]
    info = report["pools"][pool_of_one]
    assert info.get("dead_threads", 0) == 0 and info.get("loop_deaths", 0) == 0


def _exit_while_unpickled() -> None:
    raise SystemExit("raised while the result was unpickled in the parent")


class ExitsWhenUnpickled:
    """A result whose unpickling, in the parent's loop thread, raises ``SystemExit``."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_while_unpickled, ())


def exits_when_unpickled() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


def test_a_result_raising_systemexit_while_unpickled_fails_its_task_only() -> None:
    mp.configure_process_pool(1)
    with pytest.raises(mp.TaskSerializationError, match="SystemExit: raised while the result was unpickled"):
        mp.parallel(backend="process")(exits_when_unpickled)().get(30)
    assert mp.parallel(backend="process")(double)(21).get(30) == 42  # the loop thread lives on
    assert mp.get_process_pool_info()["loop_deaths"] == 0


def test_a_callback_raising_systemexit_on_a_done_handle_is_logged_here(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="makeparallel")
    handle = mp.parallel(backend="thread")(double)(1)
    assert handle.get(30) == 2

    def leave(_: object) -> None:
        raise SystemExit("from a callback")

    handle.on_complete(leave)  # runs at once on this (main) thread; does not exit
    assert broken_records(caplog, SystemExit)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_ctrl_c_in_a_callback_on_the_main_thread_still_raises_after_waking_everyone(
    gate: threading.Event,
) -> None:
    """A callback's Ctrl-C on the main thread goes on, as today, once everything else ran."""
    mp.configure_thread_pool(1)
    holding = threading.Event()

    @mp.parallel(backend="thread")
    def holder() -> None:
        holding.set()
        assert gate.wait(30)

    held = holder()
    assert holding.wait(30)
    queued = mp.parallel(backend="thread")(double)(5)  # stays queued behind the holder
    later: list[int] = []

    def interrupt(_: object) -> None:
        raise KeyboardInterrupt

    queued.on_complete(interrupt)
    queued.on_complete(later.append)
    woken = threading.Event()
    waiter = threading.Thread(target=lambda: (queued.wait(30), woken.set()))
    waiter.start()
    assert wait_until(lambda: queued._waiters is not None)  # the waiter is blocked on it
    with pytest.raises(KeyboardInterrupt):
        queued.get()  # runs the queued task inline, here, on the main thread
    assert later == [10]
    assert woken.wait(30)
    waiter.join(30)
    assert queued.get() == 10
    gate.set()
    held.get(30)


def test_a_restart_storm_is_degraded_and_passes(flags: Flags, monkeypatch: pytest.MonkeyPatch) -> None:
    """More worker restarts than workers within the window: degraded, until the window passes."""
    mp.configure_process_pool(1)
    assert wait_until(lambda: mp.get_process_pool_info()["live_workers"] <= 1)
    clock = [__import__("time").monotonic() + 2 * _process.RESTART_WINDOW]  # forgets earlier restarts
    monkeypatch.setattr(_process, "_now", lambda: clock[0])
    work = mp.parallel(backend="process")(gated_work)
    flags.set("registered")
    for attempt in range(2):  # two restarts for one worker
        handle = work(flags, False)
        assert flags.wait("started", 30)
        (Path(flags.path("started"))).unlink()
        assert handle.cancel(force=True)  # kills the worker; a new one takes its place
        assert wait_until(lambda: mp.get_process_pool_info()["restarts_in_window"] == attempt + 1, 30)
    report = mp.health(memory_limit_percent=100.0)
    assert report["status"] == "degraded" and report["live"] is True and report["ready"] is True
    storm = [r for r in report["reasons"] if "restarts" in r]
    assert storm == ["process pool: 2 worker restarts in the last 10 s for 1 workers (cancelled: 2)"]
    clock[0] += _process.RESTART_WINDOW + 1
    report = mp.health(memory_limit_percent=100.0)
    assert not [r for r in report["reasons"] if "restarts" in r], report["reasons"]
    assert mp.get_process_pool_info()["restarts_in_window"] == 0  # forgotten: none left to expire later


def test_one_restart_per_worker_is_not_a_storm(flags: Flags, monkeypatch: pytest.MonkeyPatch) -> None:
    mp.configure_process_pool(1)
    assert wait_until(lambda: mp.get_process_pool_info()["live_workers"] <= 1)
    clock = [__import__("time").monotonic() + 2 * _process.RESTART_WINDOW]
    monkeypatch.setattr(_process, "_now", lambda: clock[0])
    flags.set("registered")
    handle = mp.parallel(backend="process")(gated_work)(flags, False)
    assert flags.wait("started", 30)
    assert handle.cancel(force=True)
    assert wait_until(lambda: mp.get_process_pool_info()["restarts_in_window"] == 1, 30)
    assert not [r for r in mp.health(memory_limit_percent=100.0)["reasons"] if "restarts" in r]
    clock[0] += _process.RESTART_WINDOW + 1
    assert mp.get_process_pool_info()["restarts_in_window"] == 0


def test_workers_replaced_after_max_tasks_per_child_are_no_storm(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pool with max_tasks_per_child=1 replaces a worker after every task, as asked:
    # health() said "degraded: 28 worker restarts" for 30 tasks on 4 workers.
    mp.configure_process_pool(1, max_tasks_per_child=1)
    try:
        clock = [__import__("time").monotonic() + 2 * _process.RESTART_WINDOW]
        monkeypatch.setattr(_process, "_now", lambda: clock[0])
        pids = {mp.parallel(backend="process")(os.getpid)().get(timeout=30) for _ in range(4)}
        assert len(pids) == 4  # a new worker for each task
        assert wait_until(lambda: mp.get_process_pool_info()["worker_restart_reasons"].get("max_tasks_per_child", 0) >= 3, 30)
        assert mp.get_process_pool_info()["restarts_in_window"] == 0
        assert not [r for r in mp.health(memory_limit_percent=100.0)["reasons"] if "restarts" in r]
        # A worker that dies in its last task crashed, whatever it was to do next.
        crashed = mp.get_process_pool_info()["worker_restart_reasons"].get("crashed", 0)
        with pytest.raises(mp.WorkerCrashedError):
            mp.parallel(backend="process")(os._exit)(3).get(timeout=30)
        assert wait_until(lambda: mp.get_process_pool_info()["restarts_in_window"] == 1, 30)
        assert mp.get_process_pool_info()["worker_restart_reasons"]["crashed"] == crashed + 1
    finally:
        mp.configure_process_pool(max_tasks_per_child=None)


# -- faults of the pools themselves, in a child interpreter -------------------------------------

DEAD_WORKER_THREAD = """
import json, logging
import makeparallel as mp
from makeparallel._backends._thread import ThreadBackend

logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(message)s")
original = ThreadBackend._next_locked
faults = []

def next_or_fail(self):
    if not faults:  # once: the worker that hits it dies, its replacement works
        faults.append(1)
        raise SystemExit("injected fault in the pool itself")
    return original(self)

ThreadBackend._next_locked = next_or_fail
mp.configure_thread_pool(1)
handle = mp.parallel(backend="thread")(abs)(-3)
result = handle.get(30)
print(json.dumps({"result": result, "health": mp.health(memory_limit_percent=100.0)}))
"""

DEAD_LOOP = """
import json, logging
import makeparallel as mp
from makeparallel._backends._process import ProcessBackend

logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(message)s")
original = ProcessBackend._receive_all
faults = []

def receive_or_fail(self, worker):
    if not faults:  # once: the loop thread dies on its first message
        faults.append(1)
        raise SystemExit("injected fault in the pool itself")
    return original(self, worker)

ProcessBackend._receive_all = receive_or_fail
mp.configure_process_pool(1)
first = mp.parallel(backend="process")(abs)(-3)
try:
    first.get(60)
    outcome = "succeeded"
except mp.WorkerCrashedError as error:
    outcome = str(error)
second = mp.parallel(backend="process")(abs)(-4).get(60)  # a new loop serves new tasks
print(json.dumps({"first": outcome, "second": second, "health": mp.health(memory_limit_percent=100.0)}))
"""


# What killed the loop fails its recovery too (an import a program that dropped its
# privileges may no longer read): its tasks waited for good.
DEAD_LOOP_AND_RECOVERY = DEAD_LOOP.replace(
    "ProcessBackend._receive_all = receive_or_fail",
    "ProcessBackend._receive_all = receive_or_fail\n"
    "from makeparallel._backends import _process\n"
    "stop_together = _process._stop_together\n"
    "def stop_or_fail(processes, every_worker=False):\n"
    "    if len(faults) == 1:\n"
    "        faults.append(2)\n"
    "        raise PermissionError('injected fault in the recovery')\n"
    "    return stop_together(processes, every_worker)\n"
    "_process._stop_together = stop_or_fail",
)


# The loop dies where its report of it cannot be written: no logging configured, so
# logging's last resort writes to a stderr that is closed, and raised out of the
# loop's last words, before the recovery: every waiter waited for good.
DEAD_LOOP_UNHEARD = DEAD_LOOP.replace(
    'logging.basicConfig(level=logging.CRITICAL, format="%(levelname)s %(message)s")',
    "import io, sys\nsys.stderr = io.StringIO()\nsys.stderr.close()",
)


# A callback that raises where no logging was set up and sys.stderr was closed: the
# report of it raised too (logging's last resort writes there), and the worker thread
# died uncounted, or the process pool's loop with its tasks.
CALLBACK_FAULT_UNHEARD = """
import io, json, sys
import makeparallel as mp

sys.stderr.close()
mp.configure_thread_pool(1)
mp.configure_process_pool(1)
results = {}
for backend in ("thread", "process"):
    task = mp.parallel(backend=backend)(abs)
    first = task(-1)
    first.add_done_callback(lambda handle: 1 / 0)
    results[backend] = [first.get(30), task(-2).get(timeout=30), task(-3).get(timeout=30)]
# The pool's own warning: a new worker already over max_worker_memory.
mp.configure_process_pool(max_worker_memory=1_000_000)
task = mp.parallel(backend="process")(abs)
results["warned"] = [task(-4).get(timeout=30), task(-5).get(timeout=30)]
print(json.dumps({"results": results, "health": mp.health(memory_limit_percent=100.0)}))
"""


def run_child(script: str) -> tuple[dict[str, Any], str]:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=50,
        env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_a_dead_process_loop_whose_report_cannot_be_written_still_fails_its_tasks() -> None:
    report, _ = run_child(DEAD_LOOP_UNHEARD)
    assert "loop thread died" in report["first"]
    assert report["second"] == 4
    assert report["health"]["pools"]["process"]["loop_deaths"] == 1


def test_a_callback_that_raises_where_its_report_cannot_be_written_costs_nothing_else() -> None:
    report, _ = run_child(CALLBACK_FAULT_UNHEARD)
    assert report["results"] == {"thread": [1, 2, 3], "process": [1, 2, 3], "warned": [4, 5]}
    health = report["health"]
    assert health["live"] is True, health["reasons"]
    assert health["pools"]["process"]["loop_deaths"] == 0


def test_a_dead_worker_thread_is_replaced_logged_and_not_live() -> None:
    report, stderr = run_child(DEAD_WORKER_THREAD)
    assert report["result"] == 3  # the replacement ran the task: nothing hangs
    assert "CRITICAL makeparallel worker thread" in stderr and "injected fault" in stderr
    health = report["health"]
    assert health["live"] is False and health["status"] == "unhealthy"
    assert health["pools"]["thread"]["dead_threads"] == 1
    assert any("worker thread(s) died" in r for r in health["reasons"]), health["reasons"]


@pytest.mark.parametrize("script", [DEAD_LOOP, DEAD_LOOP_AND_RECOVERY], ids=["loop", "loop and recovery"])
def test_a_dead_process_loop_fails_its_tasks_and_is_not_live(script: str) -> None:
    report, stderr = run_child(script)
    assert "loop thread died" in report["first"]  # its waiter was woken with the reason
    assert report["second"] == 4
    assert "CRITICAL the makeparallel process pool's loop thread died" in stderr
    assert "injected fault" in stderr
    health = report["health"]
    assert health["live"] is False and health["status"] == "unhealthy"
    assert health["pools"]["process"]["loop_deaths"] == 1
    assert any("loop thread died" in r for r in health["reasons"]), health["reasons"]
