"""Faults in worker processes: each fails its own task, and nothing else, and nothing hangs.

One table (in the manner of loky's crash cases) injects every failure a process
task can meet: the worker exits, segfaults or is killed, the task times out or
calls ``sys.exit``, something cannot be pickled or unpickled on either side. Each
row runs among 100 good tasks on a pool of two, and names the exception the bad
task must raise, a pattern on its message, and whether its worker is replaced.

Then: ``cancel(force=True)`` kills the worker; ``shutdown`` leaves no child
process, even with a stuck task; interpreter exit and Ctrl-C (in subprocesses)
end promptly and leave no worker behind. pytest-timeout's ``faulthandler_timeout``
dumps every thread's traceback should anything hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import psutil
import pytest

import makeparallel as mp
from makeparallel._backends import _process
from makeparallel._handle import cancel_and_stop
from pool_helpers import Flags, fresh_process_pool, send_tasks_ahead, wait_until

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(30),
]

SRC = Path(__file__).resolve().parents[1] / "src"
POOL_SIZE = 2

on_process = mp.parallel(backend="process")

# -- helpers ---------------------------------------------------------------------------------


def info() -> dict[str, Any]:
    return mp.get_process_pool_info()


def gone(pid: int) -> bool:
    """Whether process ``pid`` no longer runs.

    Our own children must be reaped (no zombie). A process that was another
    process's child may linger as a zombie until this machine's init reaps it:
    it no longer runs, which is what counts.
    """
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            return False
        return process.ppid() != os.getpid()
    except psutil.NoSuchProcess:
        return True


def worker_children() -> list[psutil.Process]:
    """This process's children (and theirs) that are makeparallel workers, or zombies."""
    leftovers = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "_process_worker" in " ".join(child.cmdline()):
                leftovers.append(child)
        except psutil.ZombieProcess:
            leftovers.append(child)  # an unreaped child is a leak too
        except psutil.NoSuchProcess:
            pass
    return leftovers


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[Flags]:
    flags = Flags(str(tmp_path))
    yield flags
    flags.set("teardown")  # releases any task still waiting


@pytest.fixture
def pool() -> Iterator[None]:
    """A pool of POOL_SIZE workers; the previous size is put back afterwards."""
    before = info()["num_workers"]
    mp.configure_process_pool(POOL_SIZE)
    try:
        assert wait_until(lambda: info()["live_workers"] <= POOL_SIZE), info()
        yield
    finally:
        mp.configure_process_pool(before)


def run_script(script: str, *args: str, variables: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``script`` with ``python -c``, this package importable and ``variables`` added to its environment."""
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(variables or {})
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# -- tasks (module level: they travel by reference) -----------------------------------------------


def square(x: int) -> int:
    return x * x


def worker_pid() -> int:
    return os.getpid()


def identity(x: Any) -> Any:
    return x


def raise_value_error() -> None:
    raise ValueError("bad value 3")


def exit_with_3() -> None:
    os._exit(3)


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sleep_long() -> None:
    time.sleep(30)


def call_sys_exit() -> None:
    sys.exit(2)


def return_lock() -> threading.Lock:
    return threading.Lock()


def raise_unpicklable_error() -> None:
    # A class of the function's own, sent by value, with a lock in its namespace: nothing of it
    # can be pickled (an exception's argument that cannot arrives as None, with a note).
    class Unsendable(ValueError):
        lock = threading.Lock()

    raise Unsendable("bad")


def _raise_lookup_error(message: str) -> None:
    raise LookupError(message)


def _fail_in(pid: int) -> object:
    if os.getpid() == pid:
        raise RuntimeError("this object cannot be rebuilt in the parent")
    return object()


class CrashesWhenUnpickled:
    """An argument whose unpickling (in the worker) ends the worker."""

    def __reduce__(self) -> Any:
        return (os._exit, (5,))


class RaisesWhenUnpickled:
    """An argument whose unpickling (in the worker) raises."""

    def __reduce__(self) -> Any:
        return (_raise_lookup_error, ("raised while unpickling",))


class FailsToLoadIn:
    """A result that pickles in the worker and fails to unpickle in process ``pid``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __reduce__(self) -> Any:
        return (_fail_in, (self.pid,))


def return_unloadable(parent: int) -> FailsToLoadIn:
    return FailsToLoadIn(parent)


def closure_over_a_lock() -> Callable[[], int]:
    lock = threading.Lock()

    def locked() -> int:
        with lock:
            return 1

    return locked


def record_pid_and_wait(flags: Flags) -> str:
    flags.set("pid", str(os.getpid()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not flags.is_set("teardown"):
        time.sleep(0.01)  # workload, in the worker
    return "not killed"


def record_pid_and_sleep(flags: Flags) -> None:
    flags.set("pid", str(os.getpid()))
    time.sleep(60)


# -- the failure table ------------------------------------------------------------------------------


class Fault(NamedTuple):
    submit: Callable[[], mp.AsyncHandle[Any]]  # submits the bad task
    expected: type[BaseException]  # its exact type
    match: str  # a pattern on its message
    at_submit: bool = False  # raised by the submission itself, not by get()
    replaces_worker: bool = False  # its worker dies and the pool starts a new one


FAULTS = {
    "raises": Fault(lambda: on_process(raise_value_error)(), ValueError, r"^bad value 3$"),
    "os._exit(3)": Fault(lambda: on_process(exit_with_3)(), mp.WorkerCrashedError, r"exit code 3", replaces_worker=True),
    "segfault": Fault(lambda: on_process(segfault)(), mp.WorkerCrashedError, r"signal SIGSEGV\(-11\)", replaces_worker=True),
    "SIGKILL": Fault(lambda: on_process(kill_self)(), mp.WorkerCrashedError, r"signal SIGKILL\(-9\)", replaces_worker=True),
    "timeout": Fault(
        lambda: on_process(sleep_long)(timeout=0.3), mp.TaskTimeoutError, r"timed out after 0.3 s", replaces_worker=True
    ),
    # SystemExit ends the task, not the worker: it comes back as the task's error.
    "sys.exit(2)": Fault(lambda: on_process(call_sys_exit)(), SystemExit, r"^2$"),
    "unpicklable result": Fault(
        lambda: on_process(return_lock)(), mp.TaskSerializationError, r"result of task \d+ \(return_lock\) could not be pickled"
    ),
    "unpicklable exception": Fault(
        lambda: on_process(raise_unpicklable_error)(), mp.TaskError, r"raised .*Unsendable: bad .*cannot pickle"
    ),
    "result fails to unpickle in the parent": Fault(
        lambda: on_process(return_unloadable)(os.getpid()),
        mp.TaskSerializationError,
        r"could not be unpickled here: RuntimeError: this object cannot be rebuilt",
    ),
    "argument crashes the worker when unpickled": Fault(
        lambda: on_process(identity)(CrashesWhenUnpickled()), mp.WorkerCrashedError, r"exit code 5", replaces_worker=True
    ),
    "argument raises when unpickled": Fault(
        lambda: on_process(identity)(RaisesWhenUnpickled()), LookupError, r"^raised while unpickling$"
    ),
    "unpicklable argument": Fault(
        lambda: on_process(identity)(threading.Lock()),
        mp.TaskSerializationError,
        r"cannot be sent to a worker process: argument 0 \(lock\) could not be pickled",
        at_submit=True,
    ),
    "unpicklable function": Fault(
        lambda: on_process(closure_over_a_lock())(),
        mp.TaskSerializationError,
        r"cannot be sent to a worker process: the function .*locked.* could not be pickled",
        at_submit=True,
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_a_fault_fails_only_its_own_task(fault: Fault, pool: None) -> None:
    restarts = info()["worker_restarts"]
    good = on_process(square)
    handles = [good(i) for i in range(50)]
    bad: mp.AsyncHandle[Any] | None = None
    if fault.at_submit:
        with pytest.raises(fault.expected) as raised:
            fault.submit()
    else:
        bad = fault.submit()
    handles += [good(i) for i in range(50, 100)]

    outcomes: list[Any] = []
    for handle in handles:
        try:
            outcomes.append(handle.get(timeout=20))
        except Exception as error:
            outcomes.append(error)
    wrong = {i: repr(o) for i, o in enumerate(outcomes) if o != i * i}
    assert not wrong, f"good tasks that did not return their result: {wrong}"

    if bad is not None:
        with pytest.raises(fault.expected) as raised:
            bad.get(timeout=20)
    error = raised.value
    assert type(error) is fault.expected, repr(error)
    assert _search(fault.match, str(error)), f"{fault.match!r} not in {str(error)!r}"

    if fault.replaces_worker:
        # A timed-out task's handle ends at its deadline, before its worker is gone.
        assert wait_until(lambda: info()["worker_restarts"] > restarts), info()
        assert info()["worker_restarts"] == restarts + 1, f"more workers replaced than the bad task's: {info()}"
    else:
        assert info()["worker_restarts"] == restarts, info()
    # The pool is whole again once it has work. (A worker started under another pool
    # size may still be giving way to one with the thread limits of this size.)
    assert on_process(square)(12).get(timeout=20) == 144
    assert wait_until(lambda: info()["live_workers"] == POOL_SIZE), info()


def start_a_helper_then_exit(pid_file: str) -> None:
    """Fork a helper process that lives on (its pid in ``pid_file``), then end this worker with exit code 3."""
    helper = os.fork()
    if helper == 0:
        while True:
            signal.pause()  # until the test kills it
    Path(pid_file).write_text(str(helper))
    os._exit(3)


def start_a_program_then_exit(pid_file: str) -> None:
    """Start a program that lives on through the shell (its pid in ``pid_file``), then end this worker with exit code 3."""
    os.system(f"sleep 60 & echo $! > {pid_file}")  # system() execs: no fork handler of Python's runs
    os._exit(3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start", [start_a_helper_then_exit, start_a_program_then_exit])
def test_a_worker_that_dies_leaving_a_process_it_started_alive_fails_its_task_at_once(
    tmp_path: Path, start: Callable[[str], None]
) -> None:
    # The process inherited the worker's end of its pipe, and the parent learns of the
    # worker's death from that pipe's end of file: the task failed only once the process
    # had ended, or never. A forked helper (whose fork handler closes the pipe) and a
    # program started with os.system, subprocess with close_fds=False or C code (which
    # hand on every descriptor not close-on-exec) alike.
    pid_file = tmp_path / "helper"
    try:
        with pytest.raises(mp.WorkerCrashedError, match="exit code 3"):
            on_process(start)(str(pid_file)).get(timeout=30)
        assert on_process(square)(12).get(timeout=30) == 144
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


# -- forced cancellation -----------------------------------------------------------------------------


def test_cancel_force_kills_the_worker(flags: Flags, pool: None) -> None:
    restarts = info()["worker_restarts"]
    handle = on_process(record_pid_and_wait)(flags)
    assert flags.wait("pid")
    pid = int(flags.read("pid"))
    assert handle.cancel(force=True) is True
    assert handle.cancelled()
    with pytest.raises(mp.TaskCancelledError):
        handle.get(timeout=1)
    assert wait_until(lambda: gone(pid)), f"worker {pid} still runs after cancel(force=True)"
    # Reaped, no zombie left behind (by the template that forked it, as soon as it hears).
    assert wait_until(lambda: not psutil.pid_exists(pid)), f"worker {pid} was not reaped"
    assert wait_until(lambda: info()["worker_restarts"] == restarts + 1), info()
    assert on_process(worker_pid)().get(timeout=20) != pid


@pytest.mark.parametrize("asked", ["cancel()", "cancel_with_timeout(0)"])
def test_cancel_force_after_a_plain_cancel_kills_the_worker(flags: Flags, pool: None, asked: str) -> None:
    # A plain cancel asks the task to stop at its next check_cancelled(); this one never
    # calls it, and runs on. A cancel(force=True) then, the escalation its docstring offers,
    # found the handle ended, returned False and killed nothing: the worker stayed busy
    # with the task for good, and a cancel_with_timeout waiting for its code waited its
    # whole timeout.
    cancelled = info()["worker_restart_reasons"].get("cancelled", 0)
    handle = on_process(record_pid_and_wait)(flags)
    assert flags.wait("pid")
    pid = int(flags.read("pid"))
    if asked == "cancel()":
        assert handle.cancel() is True
    else:
        assert handle.cancel_with_timeout(0) is False  # its code runs on
    assert handle.cancel(force=True) is False  # the task had ended already
    assert wait_until(lambda: gone(pid)), f"worker {pid} still runs after cancel(force=True)"
    assert handle.cancel_with_timeout(20)
    assert wait_until(lambda: info()["worker_restart_reasons"].get("cancelled", 0) == cancelled + 1), info()
    assert on_process(worker_pid)().get(timeout=20) != pid


def run_a_program_and_a_helper(flags: Flags) -> None:
    """Start a program (``sleep``, through a shell) and fork a helper, record their pids, wait for the program."""
    helper = os.fork()
    if helper == 0:
        while True:
            signal.pause()  # a fork-based Pool's worker: it waits for work that never comes
    program = subprocess.Popen(["sh", "-c", "sleep 60; echo done"])  # the shell's own child, sleep, too
    flags.set("pids", f"{helper} {program.pid}")
    program.wait()


def _process_tree(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", ["timeout", "cancel(force=True)", "shutdown"])
def test_a_stopped_task_leaves_no_process_it_started(flags: Flags, pool: None, stop: str) -> None:
    # Stopped with SIGTERM's default action, the worker left what its task had started
    # running, re-parented to init: the program it waited for ran on after the task's
    # timeout, and the workers of a fork-based Pool waited for work for good, outliving
    # the program. On the thread backend a timeout stops no code, and the task ends with
    # its children; a task stopped here takes its children with it. At a shutdown, a worker
    # whose task ran long enough for its reader thread to watch the pipe ended at the pipe's
    # end of file, before any SIGTERM, and left them so too.
    task = on_process(run_a_program_and_a_helper)
    handle = task(flags, timeout=1.0) if stop == "timeout" else task(flags)
    assert flags.wait("pids", 20)
    helper, program = map(int, flags.read("pids").split())
    worker = psutil.Process(helper).ppid()
    # The shell starts its sleep on its own time, after the task said it started the shell.
    assert wait_until(lambda: len(_process_tree(program)) == 1), _process_tree(program)
    started = [helper, program, *_process_tree(program)]
    try:
        if stop == "cancel(force=True)":
            assert handle.cancel(force=True) is True
        elif stop == "shutdown":
            assert mp.shutdown(0) is False
        expected = {"timeout": mp.TaskTimeoutError, "cancel(force=True)": mp.TaskCancelledError}
        with pytest.raises(expected.get(stop, mp.ShutdownError)):
            handle.get(timeout=20)
        assert wait_until(lambda: gone(worker)), f"worker {worker} still runs"
        assert wait_until(lambda: all(gone(pid) for pid in started), 10), [
            pid for pid in started if not gone(pid)
        ]
    finally:
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if stop == "shutdown":
            mp.reset_shutdown()


# -- shutdown -------------------------------------------------------------------------------------------


def test_shutdown_leaves_no_worker_process() -> None:
    assert mp.parallel_map(square, range(200), backend="process") == [i * i for i in range(200)]
    pids = info()["worker_pids"]
    assert pids and worker_children()
    assert mp.shutdown(5) is True
    assert worker_children() == []
    assert all(not psutil.pid_exists(pid) for pid in pids)
    assert info()["live_workers"] == 0


def test_shutdown_with_a_stuck_task_stops_its_worker(flags: Flags) -> None:
    stuck = on_process(record_pid_and_sleep)(flags)
    assert flags.wait("pid")
    pid = int(flags.read("pid"))
    started = time.monotonic()
    assert mp.shutdown(0.5) is False
    assert time.monotonic() - started < 3.0
    with pytest.raises(mp.ShutdownError, match="still running when makeparallel shut down"):
        stuck.get(timeout=1)
    assert not psutil.pid_exists(pid)
    assert worker_children() == []
    with pytest.raises(mp.ShutdownError):
        on_process(square)(2)
    mp.reset_shutdown()
    assert on_process(square)(3).get(timeout=20) == 9


# -- interpreter exit and Ctrl-C, in subprocesses -------------------------------------------------------

EXIT_SCRIPT = """
import json, sys, time
import makeparallel as mp

if len(sys.argv) > 1:
    mp.configure(exit_timeout=float(sys.argv[1]))

def sleepy():
    mp.report_progress(0.5)
    time.sleep(60)

handle = mp.parallel(backend="process")(sleepy)()
deadline = time.monotonic() + 20
while handle.get_progress() < 0.5 and time.monotonic() < deadline:
    time.sleep(0.01)
print(json.dumps({"running": handle.get_progress() == 0.5, "pids": mp.get_process_pool_info()["worker_pids"]}), flush=True)
"""


@pytest.mark.timeout(40)
@pytest.mark.parametrize("exit_timeout", [None, 0.5], ids=["default-exit-timeout", "exit-timeout-0.5"])
def test_interpreter_exit_with_a_running_task_leaves_no_worker(exit_timeout: float | None) -> None:
    proc = run_script(EXIT_SCRIPT, *([] if exit_timeout is None else [str(exit_timeout)]))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        started = time.monotonic()
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert line, err
    state = json.loads(line)
    assert state["running"] and state["pids"], (line, err)
    assert proc.returncode == 0, err
    waited = 5.0 if exit_timeout is None else exit_timeout
    assert elapsed < waited + 4.0, f"exit took {elapsed:.1f} s with exit_timeout {waited:g}"
    assert "abandoned" in err, err
    assert all(wait_until(lambda: gone(pid), 5) for pid in state["pids"]), state


CTRL_C_SCRIPT = """
import asyncio
import functools
import json
import makeparallel as mp

def cpu_heavy(i):
    return sum(j * j for j in range(300_000))

announced = []

def announce(done, total):
    # Called in the parent as chunks end: the map is certainly under way.
    if not announced:
        announced.append(True)
        print(json.dumps(mp.get_process_pool_info()["worker_pids"]), flush=True)
        print("ready", flush=True)

mp.parallel_map(cpu_heavy, range(1000), backend="process", progress=announce)
print("the map finished: it should have been interrupted", flush=True)
"""


@pytest.mark.timeout(40)
def test_ctrl_c_stops_a_process_map_and_leaves_no_worker() -> None:
    proc = run_script(CTRL_C_SCRIPT)
    try:
        assert proc.stdout is not None
        pids_line = proc.stdout.readline()
        ready = proc.stdout.readline()
        if ready.strip() != "ready":
            out, err = proc.communicate(timeout=20)
            pytest.fail(f"the child never got ready: {pids_line!r} {ready!r} {out!r}\n{err}")
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the child was still running 15 s after Ctrl-C\n{err}")
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, (out, err)
    assert "KeyboardInterrupt" in err, err
    assert "should have been interrupted" not in out
    assert elapsed < 15
    pids = json.loads(pids_line)
    assert pids
    assert all(wait_until(lambda: gone(pid), 5) for pid in pids), pids


def sigint_of_a_program_run_here() -> str:
    """What a program this task runs has for SIGINT as it starts: ``"ignored"`` or ``"default"``."""
    code = "import signal; print('ignored' if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else 'default')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def sigint_of_a_program_run_after_a_ctrl_c() -> tuple[int, str]:
    """This worker's pid, and what a program it runs has for SIGINT as it starts, after the worker got one."""
    os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C at the terminal reaches the workers too
    return os.getpid(), sigint_of_a_program_run_here()


@pytest.mark.timeout(60)
def test_a_program_a_task_runs_is_stopped_by_ctrl_c_and_its_worker_is_not() -> None:
    # The worker ignored SIGINT, and a program its task ran inherited that: a Ctrl-C at
    # the terminal left it running after the program had ended (on the thread backend
    # it stops with the program).
    fresh_process_pool(1)
    run = mp.parallel(backend="process")(sigint_of_a_program_run_after_a_ctrl_c)
    first = run().get(timeout=30)
    second = run().get(timeout=30)
    assert first[1] == second[1] == "default"
    assert first[0] == second[0]  # the same worker: its own SIGINT did not end it


@pytest.mark.timeout(60)
def test_where_the_program_ignores_ctrl_c_so_do_the_programs_its_tasks_run() -> None:
    # As its own children do, and the thread backend's tasks' (started in the background,
    # under `trap '' INT`): a Ctrl-C at the terminal does not stop them.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        fresh_process_pool(1)  # workers started from now on
        assert mp.parallel(backend="process")(sigint_of_a_program_run_here)().get(timeout=30) == "ignored"
    finally:
        signal.signal(signal.SIGINT, previous)
        fresh_process_pool(1)
    assert mp.parallel(backend="process")(sigint_of_a_program_run_here)().get(timeout=30) == "default"


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="stops a worker with SIGSTOP (POSIX)")
def test_a_task_sent_to_a_worker_that_dies_before_starting_it_runs_elsewhere() -> None:
    # A worker killed while idle (the OOM killer, an operator, its template's
    # death) may be sent a task before the pool notices. That task never ran:
    # it is not to blame, and must run on the replacement worker, not fail.
    before = info()["num_workers"]
    mp.configure_process_pool(1)
    try:
        victim = on_process(worker_pid)().get(timeout=30)
        os.kill(victim, signal.SIGSTOP)  # it can no longer read: what is sent next stays unread
        try:
            handle = on_process(worker_pid)()
            assert wait_until(handle.running, 30)  # sent to the stopped worker
        finally:
            os.kill(victim, signal.SIGKILL)
        assert handle.get(timeout=30) != victim
        assert info()["worker_restarts"] >= 1
    finally:
        mp.configure_process_pool(before)


# -- what the user stopped as a whole does not go on -------------------------------------------


def spin_as_item_one(folder: str, item: int) -> int:
    """``item``; item 1 writes its worker's pid in ``folder``, then spins until its worker is killed."""
    if item == 1:
        Path(folder, str(os.getpid())).touch()
        while True:
            pass
    return item


def raise_once_item_one_spins(folder: str, item: int) -> int:
    """``spin_as_item_one``, but item 0 raises once item 1 spins."""
    if item == 0:
        assert wait_until(lambda: bool(os.listdir(folder)), 30)
        raise ValueError("item 0 fails")
    return spin_as_item_one(folder, item)


def spinning_worker(folder: Path) -> int:
    """The pid of the worker whose item spins, once it does."""
    assert wait_until(lambda: bool(os.listdir(folder)), 30)
    return int(os.listdir(folder)[0])


def interrupt_main_thread_inside(module: str) -> threading.Thread:
    """A thread that sends this process's main thread SIGINT (a Ctrl-C) once it runs code of ``module``."""
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        def inside() -> bool:
            frame = sys._current_frames().get(main)
            while frame is not None and frame.f_globals.get("__name__") != module:
                frame = frame.f_back
            return frame is not None

        assert wait_until(inside, 30)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=interrupt)
    thread.start()
    return thread


@pytest.mark.timeout(60)
def test_leaving_an_imap_early_stops_its_item_still_running_on_a_worker(tmp_path: Path) -> None:
    # A plain cancel let the item run to its end (here never), its worker busy and the
    # next map waiting for it; now the worker of an item still running is replaced.
    fresh_process_pool(2)
    items = mp.imap(functools.partial(spin_as_item_one, str(tmp_path)), range(2), backend="process", chunksize=1)
    assert next(items) == 0
    pid = spinning_worker(tmp_path)

    items.close()

    assert wait_until(lambda: gone(pid), 15)
    assert mp.parallel_map(abs, [-1, -2, -3], backend="process") == [1, 2, 3]


@pytest.mark.timeout(60)
def test_a_map_that_raises_stops_its_other_item_still_running_on_a_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_process_pool(2)
    clock = time.monotonic() + 2 * _process.RESTART_WINDOW  # forgets earlier restarts
    monkeypatch.setattr(_process, "_now", lambda: clock)
    stopped = mp.get_process_pool_info()["worker_restart_reasons"].get("stopped", 0)
    with pytest.raises(ValueError, match="item 0 fails"):
        mp.parallel_map(
            functools.partial(raise_once_item_one_spins, str(tmp_path)), range(2), backend="process", chunksize=1
        )
    assert wait_until(lambda: gone(spinning_worker(tmp_path)), 15)
    # Counted, but no incident: a program that rejects a batch now and then is in no restart storm.
    assert wait_until(lambda: mp.get_process_pool_info()["worker_restart_reasons"].get("stopped", 0) == stopped + 1, 15)
    assert mp.get_process_pool_info()["restarts_in_window"] == 0


@pytest.mark.timeout(60)
def test_ctrl_c_while_gather_waits_stops_the_task_running_on_a_worker(tmp_path: Path) -> None:
    fresh_process_pool(1)
    handle = mp.parallel(backend="process")(spin_as_item_one)(str(tmp_path), 1)
    pid = spinning_worker(tmp_path)
    interrupting = interrupt_main_thread_inside("makeparallel._collect")

    with pytest.raises(KeyboardInterrupt):
        mp.gather([handle], timeout=30)

    interrupting.join(30)
    assert handle.status == "cancelled"
    assert wait_until(lambda: gone(pid), 15)
    assert mp.parallel(backend="process")(abs)(-4).get(timeout=30) == 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize("items", [[1], [0, 1]], ids=["one item", "two items"])
def test_ctrl_c_while_a_map_waits_stops_its_item_running_on_a_worker(tmp_path: Path, items: list[int]) -> None:
    # A map of one item, which runs without the chunks' bookkeeping, only cancelled its task
    # at Ctrl-C: the item ran on, its worker busy for good, and as many such maps as the
    # pool has workers (in a notebook, say) left no worker for the next map.
    fresh_process_pool(2)
    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_it_spins() -> None:
        spinning_worker(tmp_path)
        signal.pthread_kill(main, signal.SIGINT)

    interrupting = threading.Thread(target=interrupt_once_it_spins)
    interrupting.start()
    with pytest.raises(KeyboardInterrupt):
        mp.parallel_map(functools.partial(spin_as_item_one, str(tmp_path)), items, backend="process")

    interrupting.join(30)
    assert wait_until(lambda: gone(spinning_worker(tmp_path)), 15)
    assert mp.parallel_map(abs, [-1, -2], backend="process") == [1, 2]


@pytest.mark.timeout(60)
def test_an_async_imap_that_raises_stops_its_other_item_still_running_on_a_worker(tmp_path: Path) -> None:
    # async for ended its chunks as a cancelled await does (async_cancel): a plain cancel.
    fresh_process_pool(2)

    async def consume() -> None:
        async for _ in mp.imap(
            functools.partial(raise_once_item_one_spins, str(tmp_path)), range(2), backend="process", chunksize=1
        ):
            pass

    with pytest.raises(ValueError, match="item 0 fails"):
        asyncio.run(consume())
    assert wait_until(lambda: gone(spinning_worker(tmp_path)), 15)


def finish_when_released(flags: Flags, name: str) -> str:
    """Say that task ``name`` started, wait for its release, then end (a task of a stopped batch that ends by itself)."""
    flags.set(f"{name} started")
    assert flags.wait_for_release(f"release {name}")
    return name


@pytest.mark.timeout(60)
def test_a_stopped_task_that_ends_by_itself_as_its_worker_starts_the_next_leaves_that_task_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stop came as the task ended by itself, with the pool's loop busy (reading a large
    # result): the worker had started a task sent behind it, which the kill ended instead,
    # "no other task was affected". The loop now looks which task the worker runs first.
    fresh_process_pool(1)
    send_tasks_ahead()  # the window open as the tasks below are queued: sent ahead
    flags = Flags(str(tmp_path))
    reached, go_on, looked = threading.Event(), threading.Event(), threading.Event()
    kill_marked = _process.ProcessBackend._kill_marked

    def kill_marked_once_released(backend: Any) -> None:  # the loop, held while the worker moves on
        if any(worker.stop_task is not None for worker in backend._workers) and not go_on.is_set():
            reached.set()
            assert go_on.wait(30)
            kill_marked(backend)
            looked.set()
            return
        kill_marked(backend)

    monkeypatch.setattr(_process.ProcessBackend, "_kill_marked", kill_marked_once_released)
    task = mp.parallel(backend="process")(finish_when_released)
    stopped = task(flags, "stopped")
    behind = task(flags, "behind")
    after = [mp.parallel(backend="process")(abs)(-i) for i in range(3)]  # a queue: the pool sends tasks ahead
    assert flags.wait("stopped started", 30)

    cancel_and_stop([stopped])  # what a map that raised, or Ctrl-C in gather, does

    assert reached.wait(30)  # the grace passed with the task still running: the loop is to look
    flags.set("release stopped")
    assert flags.wait("behind started", 30)  # sent behind it, now running
    go_on.set()
    assert looked.wait(30)  # the loop's look at the workers to kill, with the next task running
    flags.set("release behind")
    assert behind.get(timeout=30) == "behind"
    assert [handle.get(timeout=30) for handle in after] == [0, 1, 2]
