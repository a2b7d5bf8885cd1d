"""Helpers shared by the pool tests: bounded polling, exact pool sizes, a held worker, marker files, tasks.

It imports no pytest: a new worker imports the module of each task it runs, and a
task of a test module costs it pytest's import (about 0.3 s), so the tasks of tests
that start many workers live here or in another module without it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import importlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import makeparallel as mp


def in_thread(call: Callable[[], Any]) -> Any:
    """What ``call()`` returns in a thread of its own, or the exception it raised (the thread joined)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # noqa: BLE001  # the outcome looked at, whatever it is
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return outcome[0]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; return whether it held.

    Only for state the library reaches by itself with no event to wait on (a
    thread retiring, a process exiting): everything else synchronises on events.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.005)
    return True


def interrupted_once_it_says(
    args: list[str], line: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``args``, send it ``SIGINT`` once its first line of output is ``line``, and wait ``timeout`` seconds for its end.

    Raises:
        AssertionError: its first line was another (it is killed).
        subprocess.TimeoutExpired: it did not end in time (it is killed).
    """
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first == line + "\n", first
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return subprocess.CompletedProcess(args, child.returncode, stdout, stderr)


def child_exit_code(pid: int, timeout: float = 30) -> int:
    """The exit code of the forked child ``pid``; killed, and the test failed, if it has not ended in ``timeout`` s."""
    import pytest

    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"the forked child did not end within {timeout} s (a deadlock?)")
        threading.Event().wait(0.01)


def default_runs_inline() -> bool:
    """Whether a function that names no backend runs here, in the caller's thread, at its call."""
    caller = threading.get_ident()
    handle = mp.parallel(threading.get_ident)()
    assert handle.wait(10)  # with a timeout: a wait without one could run a queued task here too
    return handle.get() == caller


def resize(num_threads: int) -> None:
    """Size the thread pool and wait until threads left over from earlier tests are gone.

    Surplus and stuck workers of an earlier test retire on their own, shortly
    after that test's teardown; waiting for them keeps each test's pool exact.
    """
    mp.configure_thread_pool(num_threads=num_threads)

    def settled() -> bool:
        info = mp.get_thread_pool_info()
        return bool(info["live_threads"] <= num_threads and info["stuck_threads"] == 0)

    assert wait_until(settled), mp.get_thread_pool_info()


def hold_one_worker(gate: threading.Event) -> mp.AsyncHandle[str]:
    """Size the pool to one thread and occupy it with a task blocked on ``gate``."""
    resize(1)
    started = threading.Event()

    @mp.parallel
    def held() -> str:
        started.set()
        assert gate.wait(30)
        return "held"

    handle = held()
    assert started.wait(5)
    return handle


class Flags:
    """Marker files in one directory: how a test and a worker process signal each other.

    It holds only a path, so it pickles, and a task receives it as an argument.
    A flag is set by creating its file (atomically, with optional text).
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def set(self, name: str, text: str = "") -> None:
        temporary = self.path(f".{name}.{os.getpid()}.tmp")
        with open(temporary, "w") as file:
            file.write(text)
        os.replace(temporary, self.path(name))

    def is_set(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def read(self, name: str) -> str:
        return Path(self.path(name)).read_text()

    def wait(self, name: str, timeout: float = 10.0) -> bool:
        return wait_until(lambda: self.is_set(name), timeout)

    def wait_for_release(self, name: str, timeout: float = 30.0) -> bool:
        """In a task: wait for ``name``, or for the test's teardown to release everything."""
        return wait_until(lambda: self.is_set(name) or self.is_set("teardown"), timeout)


class CalledBack:
    """A callback (``on_complete``, ``add_done_callback``) that makes ``call()`` and keeps what it returned or raised.

    Kept for the test to read once :attr:`called` is set: a callback's error is
    logged, not raised where the test could see it.
    """

    def __init__(self, call: Callable[[], object]) -> None:
        self._call = call
        self.outcome: object = None
        self.called = threading.Event()

    def __call__(self, _: object) -> None:
        try:
            self.outcome = self._call()
        except BaseException as error:  # noqa: BLE001  # what the test looks for
            self.outcome = error
        self.called.set()


@contextlib.contextmanager
def two_queued_behind_a_busy_executor(name: str) -> Iterator[cf.ThreadPoolExecutor]:
    """A ``ThreadPoolExecutor`` of one worker, given as ``backend=``: one task of ``name`` holds it, two wait queued.

    All three end as the block ends.
    """
    running, gate = threading.Event(), threading.Event()

    def held() -> None:
        running.set()
        assert gate.wait(10)

    with cf.ThreadPoolExecutor(max_workers=1) as pool:
        work = mp.parallel(backend=pool, name=name)(held)
        handles = [work()]
        assert running.wait(10)
        handles += [work() for _ in range(2)]
        try:
            yield pool
        finally:
            gate.set()
            mp.gather(handles, timeout=10)


@contextlib.contextmanager
def two_queued_in_an_executors_pool(name: str) -> Iterator[mp.Executor]:
    """An ``mp.Executor`` of one thread: one task of ``name`` holds its pool, two wait queued there.

    All three end as the block ends, and the executor is shut down.
    """
    running, gate = threading.Event(), threading.Event()

    def held() -> None:
        running.set()
        assert gate.wait(10)

    held.__qualname__ = name  # the executor's metrics name its tasks so
    with mp.Executor(max_workers=1) as executor:
        futures = [executor.submit(held)]
        assert running.wait(10)
        futures += [executor.submit(held) for _ in range(2)]
        try:
            yield executor
        finally:
            gate.set()
            cf.wait(futures, timeout=10)


def wait_for_flag(flags: Flags, name: str) -> str:
    """A task that blocks, in any worker, until the test sets ``name``; bounded so nothing hangs."""
    assert flags.wait(name, 30)
    return name


def mark_then_wait(flags: Flags, name: str) -> str:
    """A task that adds a line to flag ``name`` as it starts (one a run), then waits for ``<name>-go``."""
    with open(flags.path(name), "a") as marks:
        marks.write("started\n")
    assert flags.wait_for_release(f"{name}-go")
    return name


def queued_behind_the_first(flags: Flags) -> None:
    """A task named for one metrics test alone: it sets flag "started", then waits for "release"."""
    flags.set("started")
    assert flags.wait_for_release("release")


def send_tasks_ahead() -> None:
    """Run short tasks until the pool's tasks are short on average: it then sends tasks ahead to a busy worker.

    The average decays by a tenth per task, so the tasks it takes depend on the
    ones before: 40 left the window shut after a test whose tasks ran long
    (two tests of ``test_process_output.py`` failed so with the bytecode cached
    under ``PYTHONPYCACHEPREFIX``, where a worker's imports took longer).
    """
    from makeparallel import _runtime

    task = mp.parallel(backend="process")(abs)
    for _ in range(40):
        task(-1).get(timeout=30)
    backend = _runtime.get_backend("process")
    for _ in range(1000):
        if backend._window > 1:
            return
        task(-1).get(timeout=30)
    raise AssertionError(f"the pool's tasks still take {backend._mean_seconds:.4f} s on average")


def poll_until_stopped(gate: threading.Event) -> None:
    """A task body that runs until the gate opens or the library stops it."""
    while not gate.wait(0.01):
        mp.check_cancelled()


def hold_the_pool(gate: threading.Event) -> list[mp.AsyncHandle[Any]]:
    """Keep every worker thread busy on ``gate``, so that the next task stays queued.

    The pool is shrunk to one thread. Threads above the new size retire only once
    they find no work, and stuck threads (still running a timed-out task) are
    replaced, so as many blockers are queued as threads could ever be live: no
    thread can be free for a task queued after them.
    """
    mp.configure_thread_pool(1)
    info = mp.get_thread_pool_info()
    capacity = info["num_threads"] + min(info["stuck_threads"], info["num_threads"])
    live = max(info["live_threads"], capacity)

    @mp.parallel(backend="thread", name="hold-the-pool")
    def blocker() -> None:
        assert gate.wait(10), "the test never opened the gate"

    return [blocker() for _ in range(max(1, live))]


def the_pool_goes_on_beside(held: mp.AsyncHandle[Any]) -> None:
    """While ``held`` waits for its output or records to be written: another worker's result is read, a deadline is kept."""
    assert mp.parallel(backend="process")(os.getpid)().get(timeout=30) != os.getpid()
    late = mp.parallel(backend="process", timeout=0.2)(time.sleep)(30)
    assert isinstance(late.exception(timeout=30), mp.TaskTimeoutError)
    assert not held.done()


def live_worker_pids(count: int = 2) -> list[int]:
    """The pids of ``count`` workers of the process pool, once each has answered a task.

    Asked until then, for up to a minute: a worker still starting takes none, and
    beside a CPU hog a cold pool's ready worker answered 50 rounds of 8 before the
    second was up.
    """
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    while len(pids) < count and time.monotonic() < deadline:
        pids.update(h.get(timeout=30) for h in [mp.parallel(backend="process")(os.getpid)() for _ in range(8)])
    return sorted(pids)


def fresh_process_pool(num_workers: int) -> None:
    """Stop every worker process, size the pool: the next task starts cold workers.

    What the pool keeps through a shutdown is put back as a new pool has it:
    ``prestart`` (kept for good once asked for: a pool of one, resized to two
    and back, started a second worker in an earlier test's process only) and
    the tasks' average time, which decides how many are sent ahead.
    """
    from makeparallel import _runtime
    from makeparallel._backends import _process

    assert mp.shutdown(10)
    mp.reset_shutdown()
    backend = _runtime.get_backend("process")
    assert isinstance(backend, _process.ProcessBackend)
    with backend._lock:
        backend._warm = False
        backend._mean_seconds, backend._window = _process._SHORT_TASK, 1
    mp.configure_process_pool(num_workers)
    assert mp.get_process_pool_info()["live_workers"] == 0


@mp.parallel(backend="process")
def exit_alone(code: int) -> None:
    """A process task that kills its own worker with exit code ``code``."""
    os._exit(code)


def wait_for_a_dying_task_on_four(x: int) -> int:
    """``x``; on 4, first wait for a task of its own whose worker dies (and raise its crash)."""
    if x == 4:
        exit_alone(9).get(timeout=60)
    return x


# -- tasks of the executor tests, here so that a new worker need not import pytest ------


def mul(x: int, y: int) -> int:
    return x * y


def negated(fn: Callable[..., int], *args: Any) -> int:
    """``-fn(*args)``: the call as an executor subclass that wraps its calls makes it."""
    return -fn(*args)


class SubmitCounting(mp.Executor):
    """An executor whose ``submit`` records each call before it submits it, as a subclass that logs calls does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((fn, args))
        return super().submit(fn, *args, **kwargs)


class SubmitNegating(mp.Executor):
    """An executor whose ``submit`` wraps each call (in :func:`negated`), as a subclass that wraps calls does."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return super().submit(negated, fn, *args, **kwargs)


def fail(message: str) -> None:
    raise ValueError(message)


def time_out(message: str) -> None:
    """A call that times out on its own (a socket's, a nested wait's): its error is a ``TimeoutError``."""
    raise TimeoutError(message)


def fail_on_b(message: str) -> str:
    if message == "b":
        raise ValueError(message)
    return message


class FalseyError(Exception):
    """An error that is false, as an exception with ``__len__`` returning 0 is."""

    def __bool__(self) -> bool:
        return False


def fail_falsely(message: str) -> None:
    raise FalseyError(message)


class Payload:
    """A result whose collection a test watches with a weak reference."""


def make_payload(_: int) -> Payload:
    return Payload()


async def double_later(x: int) -> int:
    """An ``async def`` task: its call gives a coroutine, which the task runs to its end; it refuses a negative ``x``."""
    if x < 0:
        raise ValueError(f"negative: {x}")
    return 2 * x


_item_tasks: list[Any] = []  # weak references to the asyncio tasks of the items below, in this process


async def earlier_items_alive(_: int) -> int:
    """An ``async def`` map item: how many asyncio tasks of the items run before it here are still alive."""
    import asyncio
    import gc
    import weakref

    _item_tasks.append(weakref.ref(asyncio.current_task()))  # type: ignore[arg-type]
    gc.collect()
    return sum(ref() is not None for ref in _item_tasks[:-1])


async def mark_later(flags: Flags, x: int) -> int:
    """An ``async def`` task that sets flag ``ran <x>`` when its coroutine runs."""
    flags.set(f"ran {x}")
    return x


def mark_later_checked(flags: Flags, x: int) -> Any:
    """A plain function giving :func:`mark_later`'s coroutine; it refuses a negative ``x`` as it is called, no coroutine made."""
    if x < 0:
        raise ValueError(f"negative: {x}")
    return mark_later(flags, x)


def exit_on_four(x: int) -> int:
    if x == 4:
        os._exit(7)
    return x


def exit_on(x: int, culprit: int) -> int:
    if x == culprit:
        os._exit(7)
    return x


def pid_once_released(flags: Flags) -> int:
    """A task that says it started, then waits for the test's "go"; its worker's pid."""
    flags.set("started")
    assert flags.wait_for_release("go")
    return os.getpid()


def which_of(module: str) -> str:
    """``which()`` of module ``module``, imported here by name (in a worker: along its own ``sys.path``)."""
    return importlib.import_module(module).which()  # type: ignore[no-any-return]


# @parallel functions given to an executor: its own pool runs their plain functions.
@mp.parallel(name="parallel-mul", priority=3)
def parallel_mul(x: int, y: int) -> int:
    return x * y


@mp.parallel
def own_task_id() -> int | None:
    """The id of the task this call runs in: an executor's own task, not one it started."""
    return mp.get_current_task_id()


@mp.parallel
async def parallel_double_later(x: int) -> int:
    return 2 * x


class Steps:
    """A ``@parallel`` static method as its class's body reads it (in :attr:`steps`): a staticmethod object."""

    @mp.parallel(name="parallel-triple")
    @staticmethod
    def triple(x: int) -> int:
        return 3 * x

    steps = (triple,)


class Scaler:
    """An object with a ``@parallel`` method, bound to it by ``scaler.scale``."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @mp.parallel
    def scale(self, x: int) -> int:
        return self.factor * x


def run_an_executor_of_its_own(backend: str, how: str) -> tuple[list[bool], list[int], bool]:
    """In a task: an executor made there, shut down with wait (``how``: ``"with"`` or ``"shutdown()"``).

    Returns whether each of its tasks had ended once the shutdown returned, their
    results, and whether it refused a task after.
    """
    executor = mp.Executor(backend=backend, max_workers=2)
    futures = [executor.submit(abs, -x) for x in range(3)]
    if how == "with":
        with executor:
            pass
    else:
        executor.shutdown()
    ended = [future.done() for future in futures]
    try:
        executor.submit(abs, -1)
    except RuntimeError:
        return ended, [future.result(timeout=0) for future in futures], True
    return ended, [future.result(timeout=0) for future in futures], False


def refusal_to_shut_down_from_its_own_task() -> str:
    """The error of ``shutdown(wait=True)`` in a task of an executor given as a backend (in a task too), which it leaves running."""
    executor = mp.Executor(max_workers=1)

    @mp.parallel(backend=executor)
    def shut_down_from_inside() -> str:
        try:
            executor.shutdown(wait=True)
        except RuntimeError as error:
            return str(error)
        return "waited"

    try:
        refusal = shut_down_from_inside().get(timeout=30)
        assert executor.submit(abs, -1).result(timeout=30) == 1  # nothing was shut down
        return refusal
    finally:
        executor.shutdown()



# For a child program (it imports sys and threading): whether its main thread is in exit's
# wait for the tasks (in ``_wait_idle``) now.
EXIT_WAITS = """
def exit_waits():
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code.co_name != "_wait_idle":
        frame = frame.f_back
    return frame is not None
"""


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs, stopped or not: neither gone nor a zombie.

    One read: ``psutil.pid_exists(pid)`` then ``psutil.Process(pid)`` raised
    ``NoSuchProcess`` where the process was reaped in between.
    """
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
