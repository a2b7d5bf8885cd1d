"""After ``os.fork()`` the child starts its runtime afresh and works.

The child has none of the parent's threads: no workers, no deadline thread, and
none of the parent's tasks. Each child reports through its exit code only (0: all
checks passed) and leaves with ``os._exit`` so that no pytest machinery runs in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
import concurrent.futures as cf
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _cpus as mp_cpus
from makeparallel import _runtime
from makeparallel._states import HELD
from pool_helpers import child_exit_code, fresh_process_pool, wait_until

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only"),
    # Python 3.12+ warns that forking a multi-threaded process may deadlock:
    # that is the very situation under test.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def run_in_child(body: Callable[[], None], timeout: float = 20) -> int:
    """Fork; run ``body`` in the child; return the child's exit code (0: passed)."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return child_exit_code(pid, timeout)


@mp.parallel
def square(x: int) -> int:
    return x * x


@pytest.mark.timeout(30)
def test_a_forked_child_can_submit_and_get_results() -> None:
    assert [h.get(timeout=5) for h in [square(i) for i in range(10)]] == [i * i for i in range(10)]
    assert mp.get_thread_pool_info()["live_threads"] >= 1  # the parent's pool is running

    def child() -> None:
        info = mp.get_thread_pool_info()
        assert info["live_threads"] == 0, info  # no inherited workers
        handles = [square(i) for i in range(20)]
        assert [h.get(timeout=5) for h in handles] == [i * i for i in range(20)]
        assert mp.get_active_task_count() == 0

    assert run_in_child(child) == 0
    # The parent's pool is unharmed.
    assert square(7).get(timeout=5) == 49


@pytest.mark.timeout(30)
def test_a_child_forked_while_tasks_run_starts_with_none(gate: threading.Event) -> None:
    mp.configure_thread_pool(num_threads=4)
    mp.set_max_concurrent_tasks(2)
    started = threading.Barrier(3)

    @mp.parallel
    def held() -> str:
        started.wait(5)
        assert gate.wait(30)
        return "held"

    handles = [held(), held()]  # both global slots taken
    started.wait(5)
    assert mp.get_active_task_count() == 2

    def child() -> None:
        # The parent's running tasks are not the child's: no count, no slot taken.
        assert mp.get_active_task_count() == 0
        results = [h.get(timeout=5) for h in [square(i) for i in range(2)]]
        assert results == [0, 1]

    assert run_in_child(child) == 0
    gate.set()
    assert [h.get(timeout=5) for h in handles] == ["held", "held"]


@pytest.mark.timeout(30)
def test_timeouts_work_in_a_forked_child() -> None:
    @mp.parallel(timeout=30)
    def quick() -> int:
        return 1

    assert quick().get(timeout=5) == 1  # the parent's deadline thread is started

    def child() -> None:
        @mp.parallel(timeout=0.1)
        def poll() -> None:
            never = threading.Event()
            for _ in range(1000):
                never.wait(0.01)
                mp.check_cancelled()

        handle = poll()
        try:
            handle.get(timeout=5)
        except mp.TaskTimeoutError as error:
            assert "timed out after 0.1 s" in str(error), error
        else:
            raise AssertionError("the child's task did not time out")

    assert run_in_child(child) == 0


def test_a_parents_process_executor_refuses_tasks_in_a_child_and_writes_nowhere(tmp_path: Path) -> None:
    # The child's copy of the pool had its wake-up pipe closed, and a task given to it
    # wrote a wake-up byte to that number, which the child had reused for a file.
    executor = mp.Executor("process", max_workers=1)
    try:
        assert executor.submit(os.getpid).result(timeout=30) != os.getpid()
        reused = tmp_path / "reused"
        parent = os.getpid()

        def body() -> None:
            files = []
            while not files or files[-1].fileno() < 64:  # the pool's closed numbers among them
                files.append(open(reused, "ab"))
            with pytest.raises(RuntimeError, match=f"made by process {parent}, which forked this one"):  # the parent's pool
                executor.submit(os.getpid, b"x" * 100_000)
            for file in files:
                file.close()
            assert reused.read_bytes() == b""

        assert run_in_child(body) == 0
        assert executor.submit(os.getpid).result(timeout=30) != os.getpid()  # the parent's still works
    finally:
        executor.shutdown()


@pytest.mark.timeout(60)
def test_a_child_forked_while_another_thread_starts_a_template_starts_its_own() -> None:
    # The lock a first process task holds while it starts the template (60-80 ms) was
    # copied held into a child forked meanwhile: the child's first process task hung.
    from makeparallel._backends import _template_start

    with _template_start._early_lock:  # as the other thread holds it
        assert run_in_child(assert_process_task_runs) == 0


def assert_process_task_runs() -> None:
    assert mp.parallel(backend="process")(abs)(-5).get(timeout=15) == 5


def wait_for_file(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.01)
    return "done"


@pytest.mark.timeout(60)
def test_a_child_shuts_down_its_copy_of_the_parents_executor_without_waiting_for_the_parents_tasks(
    tmp_path: Path,
) -> None:
    # The child's copy of the pool counted the parent's task in flight as its own:
    # leaving the Executor's with block (shutdown, waiting) hung in the child for good.
    release = tmp_path / "release"
    executor = mp.Executor("process", max_workers=1)
    try:
        running = executor.submit(wait_for_file, str(release))
        assert run_in_child(lambda: executor.shutdown(wait=True)) == 0
        release.touch()
        assert running.result(timeout=30) == "done"
    finally:
        release.touch()
        executor.shutdown()


def append_pid(path: str) -> int:
    """A task that appends its process's pid to ``path``: which processes ran it."""
    with open(path, "a") as file:
        file.write(f"{os.getpid()}\n")
    return os.getpid()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_child_forked_while_tasks_run_ends_them_at_once_and_never_runs_them(backend: str, tmp_path: Path) -> None:
    # The child's copies of the parent's unfinished handles never ended: get() on the
    # running one waited for good, and on a queued one ran the task again, in the child.
    release, ran = tmp_path / "release", str(tmp_path / "ran")
    executor = mp.Executor(backend, max_workers=1)
    try:
        running = executor.submit(wait_for_file, str(release)).handle
        queued = [executor.submit(append_pid, ran).handle for _ in range(3)]
        parent = os.getpid()

        every: list[mp.AsyncHandle[Any]] = [running, *queued]

        def child() -> None:
            for handle in every:  # no timeout: it waited, or ran the task here
                with pytest.raises(mp.TaskError, match=f"unfinished when process {parent} forked this one"):
                    handle.get()
            done, not_done = mp.wait(every, timeout=5)
            assert len(done) == 4 and not not_done

        assert not running.done()
        assert run_in_child(child) == 0
        release.touch()
        assert running.get(timeout=30) == "done"
        (worker,) = {handle.get(timeout=30) for handle in queued}
        assert worker == parent if backend == "thread" else worker != parent
        assert Path(ran).read_text().split() == [str(worker)] * 3  # run once each, never in the child
    finally:
        release.touch()
        executor.shutdown()


@pytest.mark.timeout(30)
def test_a_parents_thread_executor_refuses_tasks_in_a_child_rather_than_queue_them_for_good() -> None:
    # Its pool counted threads the child does not have: a task waited for one for good.
    with mp.Executor("thread", max_workers=2) as executor:
        assert executor.submit(abs, -3).result(timeout=5) == 3
        parent = os.getpid()

        def child() -> None:
            with pytest.raises(RuntimeError, match=f"made by process {parent}, which forked this one"):
                executor.submit(abs, -1)
            executor.shutdown(wait=True)  # nothing of its own to wait for

        assert run_in_child(child) == 0
        assert executor.submit(abs, -2).result(timeout=5) == 2


@pytest.mark.timeout(30)
def test_a_child_lists_none_of_the_parents_executor_pools(gate: threading.Event) -> None:
    """``health()`` there lists no pool of an executor of the parent's: its figures are the parent's, frozen at the fork.

    The executor refuses tasks there; its copied queue would read as saturated in every health check of the child.
    """
    running = threading.Event()

    def held() -> None:
        running.set()
        assert gate.wait(20)

    with mp.Executor("thread", max_workers=1) as executor:
        futures = [executor.submit(held)]
        assert running.wait(10)
        futures += [executor.submit(held) for _ in range(2)]
        name = f"Executor-{id(executor):x}"
        assert mp.health()["pools"][name]["queued_tasks"] == 2

        def child() -> None:
            report = mp.health(memory_limit_percent=100.0, queue_limit=1)
            assert name not in report["pools"], report["pools"]
            assert not [reason for reason in report["reasons"] if name in reason], report["reasons"]

        try:
            assert run_in_child(child) == 0
            assert name in mp.health()["pools"]  # still the parent's
        finally:
            gate.set()
        cf.wait(futures, timeout=20)


@pytest.mark.timeout(30)
def test_a_task_that_forks_goes_on_in_the_child_while_the_other_tasks_end_there(gate: threading.Event) -> None:
    # Its own code goes on in the child: its handle is not ended under it.
    mp.configure_thread_pool(num_threads=2)
    waiting = mp.parallel(gate.wait)(30)
    submitted = threading.Event()  # the fork comes once `mine` names this task's handle

    @mp.parallel
    def forks() -> int:
        here = mp.get_current_task_id()

        def child() -> None:
            assert mp.get_current_task_id() == here and not mine.done()
            assert waiting.done() and isinstance(waiting.exception(), mp.TaskError)

        assert submitted.wait(20)
        return run_in_child(child)

    mine = forks()
    submitted.set()
    try:
        assert mine.get(timeout=20) == 0
    finally:
        gate.set()
    assert waiting.get(timeout=5) is True


def _waiting_to_retry(gate: threading.Event, cleanups: list[Callable[[], object]]) -> list[mp.AsyncHandle[Any]]:
    @mp.parallel(retry=mp.Retry(on=ValueError, attempts=2, timeout=None, wait_initial=60.0, wait_max=60.0))
    def flaky() -> None:
        raise ValueError("first attempt")

    handle = flaky()
    assert wait_until(lambda: handle.status == "waiting to retry")
    return [handle]


def _on_an_executor_of_the_users(gate: threading.Event, cleanups: list[Callable[[], object]]) -> list[mp.AsyncHandle[Any]]:
    executor = ThreadPoolExecutor(1)
    cleanups.append(executor.shutdown)
    gate_wait = mp.parallel(backend=executor)(gate.wait)
    return [gate_wait(30), gate_wait(30)]  # running, then queued in the executor


def _held_for_a_slot(gate: threading.Event, cleanups: list[Callable[[], object]]) -> list[mp.AsyncHandle[Any]]:
    @mp.parallel(max_concurrent=1)
    def gated() -> bool:
        return gate.wait(30)

    async def submit() -> list[mp.AsyncHandle[Any]]:  # from a running loop a task waits for its slot held, not blocking
        return [gated(), gated()]

    handles = asyncio.run(submit())
    assert handles[1]._on_worker == HELD
    return handles


@pytest.mark.timeout(60)
@pytest.mark.parametrize("waiting", [_waiting_to_retry, _on_an_executor_of_the_users, _held_for_a_slot])
def test_a_child_ends_the_parents_tasks_wherever_they_wait(waiting: Callable[..., list[mp.AsyncHandle[Any]]], gate: threading.Event) -> None:
    cleanups: list[Callable[[], object]] = []
    handles = waiting(gate, cleanups)
    parent = os.getpid()

    def child() -> None:
        for handle in handles:
            with pytest.raises(mp.TaskError, match=f"unfinished when process {parent} forked this one"):
                handle.get()

    try:
        assert not any(handle.done() for handle in handles)
        assert run_in_child(child) == 0
    finally:
        gate.set()
        for handle in handles:
            handle.cancel()
        for cleanup in cleanups:
            cleanup()


@pytest.mark.timeout(60)
def test_a_child_ends_a_future_whose_lock_a_thread_of_the_parent_held_as_it_forked(tmp_path: Path) -> None:
    # The parent's loop thread takes a future's lock to mark it running: forked then,
    # the child found the lock held for good, and its fork hook hung ending the future.
    release = tmp_path / "release"
    executor = mp.Executor("process", max_workers=1)
    try:
        future = executor.submit(wait_for_file, str(release))

        def child() -> None:
            with pytest.raises(mp.TaskError, match="forked this one"):
                future.result(timeout=10)

        assert held_across_a_fork(future._condition, child) == 0  # type: ignore[attr-defined]
        release.touch()
        assert future.result(timeout=30) == "done"
    finally:
        release.touch()
        executor.shutdown()


@pytest.mark.timeout(60)
def test_the_parents_callbacks_never_run_in_a_child(gate: threading.Event, tmp_path: Path) -> None:
    # Ended in every forked child (a fork-based Pool's workers), the parent's task ran
    # its on_error callback there: an alert for a failure that never happened.
    calls = tmp_path / "calls"

    def record(kind: str) -> Callable[[object], None]:
        def callback(_: object) -> None:
            with open(calls, "a") as file:
                file.write(f"{kind} {os.getpid()}\n")

        return callback

    handle = mp.parallel(gate.wait)(30)
    handle.on_error(record("error"))
    handle.add_done_callback(record("done"))

    def child() -> None:
        with pytest.raises(mp.TaskError, match="forked this one"):
            handle.get()
        handle.add_done_callback(record("child"))  # the child's own: it runs, at once

    assert run_in_child(child) == 0
    gate.set()
    assert handle.get(timeout=10) is True
    lines = calls.read_text().split("\n")
    assert sorted(line.split()[0] for line in lines if line) == ["child", "done"]
    assert f"done {os.getpid()}" in lines


@mp.parallel
def inner() -> str:
    return "inner"


@pytest.mark.timeout(60)
def test_a_task_waiting_on_its_own_tasks_ends_in_a_child_too(gate: threading.Event) -> None:
    # The parent's task waiting on a task of its own, run inline by the waiting
    # worker, stayed running in the child: only the inner one was known to end.
    mp.configure_thread_pool(num_threads=1)
    started = threading.Event()

    @mp.parallel
    def outer() -> str:
        started.set()
        assert gate.wait(30)
        return inner().get()

    handles = [outer(), outer()]  # one running, one queued behind it
    assert started.wait(10)
    waiter = threading.Thread(target=handles[1].get)  # a plain thread runs the queued one inline
    waiter.start()
    assert wait_until(lambda: handles[1].status == "running")

    def child() -> None:
        for handle in handles:
            with pytest.raises(mp.TaskError, match="forked this one"):
                handle.get()

    try:
        assert run_in_child(child) == 0
    finally:
        gate.set()
        waiter.join(30)
    assert [handle.get(timeout=10) for handle in handles] == ["inner", "inner"]


@pytest.mark.timeout(60)
def test_tasks_submitted_while_the_process_forks_never_run_in_the_child(tmp_path: Path) -> None:
    # A task another thread submits as this one forks is the parent's too: the
    # child never runs it, even where get() would run a queued task inline.
    ran = str(tmp_path / "ran")
    submitted: list[mp.AsyncHandle[int]] = []
    stop = threading.Event()
    task = mp.parallel(append_pid)

    def submit() -> None:
        while not stop.is_set() and len(submitted) < 20_000:
            submitted.append(task(ran))

    submitter = threading.Thread(target=submit)
    submitter.start()
    try:
        assert wait_until(lambda: len(submitted) > 100)
        children = []
        for _ in range(5):

            def child() -> None:
                for handle in list(submitted):
                    try:
                        handle.get()
                    except mp.TaskError:
                        pass

            children.append(run_in_child(child))
        assert children == [0] * 5
    finally:
        stop.set()
        submitter.join()
    mp.gather(submitted)
    assert set(Path(ran).read_text().split()) == {str(os.getpid())}


@pytest.mark.timeout(60)
def test_a_childs_wait_on_the_parents_task_never_takes_a_lock_the_parent_held_as_it_forked(gate: threading.Event) -> None:
    # Only the thread and process pools' locks were made anew in a child: the
    # error of a task on an executor used as backend took its held lock there, for good.
    executor = ThreadPoolExecutor(1)
    try:
        handle = mp.parallel(backend=executor)(gate.wait)(30)

        def child() -> None:
            with pytest.raises(mp.TaskError, match="forked this one"):
                handle.get()
            handle.set_metadata("seen", True)

        assert held_across_a_fork(handle._backend._lock, child) == 0
        gate.set()
        assert handle.get(timeout=10) is True
    finally:
        gate.set()
        executor.shutdown()


def grandchild_sees(handle: mp.AsyncHandle[Any], parent: int) -> None:
    def grandchild() -> None:
        with pytest.raises(mp.TaskError, match=f"unfinished when process {parent} forked"):
            handle.get()

    assert run_in_child(grandchild) == 0


@pytest.mark.timeout(60)
def test_a_fork_of_a_fork_names_the_process_the_task_runs_in(gate: threading.Event) -> None:
    handle = mp.parallel(gate.wait)(30)
    try:
        assert run_in_child(functools.partial(grandchild_sees, handle, os.getpid())) == 0
    finally:
        gate.set()
    assert handle.get(timeout=10) is True


@pytest.mark.timeout(60)
def test_an_executors_futures_of_the_parent_are_done_in_a_child(gate: threading.Event) -> None:
    with mp.Executor("thread", max_workers=1) as executor:
        futures = [executor.submit(gate.wait, 30) for _ in range(3)]
        parents_callbacks: list[object] = []
        futures[2].add_done_callback(parents_callbacks.append)

        def child() -> None:
            assert futures[0].done() and isinstance(futures[0].exception(), mp.TaskError)
            called: list[object] = []
            futures[1].add_done_callback(called.append)
            assert called == [futures[1]]
            assert not futures[2].running() and futures[2].done()
            assert parents_callbacks == []  # the parent's callback does not run here

        try:
            assert run_in_child(child) == 0
        finally:
            gate.set()
        assert [future.result(timeout=10) for future in futures] == [True] * 3
        assert parents_callbacks == [futures[2]]


def forks_and_returns_in_both(raise_in_child: bool) -> tuple[int, int | None]:
    """A task that forks and whose child's copy does not end with os._exit(): it returns, or raises."""
    pid = os.fork()
    if pid == 0:
        if raise_in_child:
            raise OSError("the child's copy failed")
        return (0, None)
    _, status = os.waitpid(pid, 0)
    return (os.getpid(), os.waitstatus_to_exitcode(status))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("raise_in_child", [False, True], ids=["returns", "raises"])
def test_a_tasks_forked_copy_that_returns_into_the_worker_exits_there(backend: str, raise_in_child: bool, tmp_path: Path) -> None:
    # Back in the worker's loop, the child ran the parent's callbacks (thread pool), or
    # answered on the worker's pipe as if it were the worker (process pool): the parent
    # saw the child's error for its task, and lost others to the copy.
    calls = tmp_path / "calls"

    def record(_: object) -> None:
        with open(calls, "a") as file:
            file.write(f"{os.getpid()}\n")

    task = mp.parallel(backend=backend)(forks_and_returns_in_both)
    handle = task(raise_in_child)
    handle.add_done_callback(record)
    worker, child_status = handle.get(timeout=30)
    assert child_status == int(raise_in_child)
    assert worker == os.getpid() if backend == "thread" else worker != os.getpid()
    assert mp.gather([mp.parallel(backend=backend)(abs)(-n) for n in range(20)], timeout=30) == list(range(20))
    assert calls.read_text().split() == [str(os.getpid())]  # the callback ran once, here


def held_across_a_fork(lock: Any, child: Callable[[], None]) -> int:
    """Run ``child`` in a fork while a thread of this process holds ``lock``; the child's exit code."""
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        return run_in_child(child)
    finally:
        done.set()
        holder.join()


@pytest.mark.timeout(60)
def test_a_childs_metrics_never_wait_for_a_lock_the_parents_pool_held_as_it_forked() -> None:
    # A pool's metrics are counted under the pool's lock, which its workers take for
    # each task: get_metrics() in a child forked then waited for it for good.
    counted = mp.parallel(name="counted-across-a-fork")(abs)
    handle = counted(-1)
    assert handle.get(timeout=10) == 1

    def child() -> None:
        metrics = mp.get_metrics("counted-across-a-fork")
        assert metrics is not None and metrics.completed_tasks == 0  # it counts its own
        assert counted(-2).get(timeout=10) == 2
        assert mp.get_metrics("counted-across-a-fork").completed_tasks == 1  # type: ignore[union-attr]

    assert held_across_a_fork(handle._backend._lock, child) == 0


@pytest.mark.timeout(60)
def test_a_childs_circuit_breaker_is_neither_locked_nor_short_of_trials_by_the_parent() -> None:
    # Its lock held by a thread of the parent as it forked, a breaker's first call in
    # the child waited for good; half-open, its trials in flight were the parent's
    # and never reported there, and the child refused every call for good.
    now = [0.0]
    breaker = mp.CircuitBreaker("across-a-fork", failure_rate=0.5, window=2, min_calls=2, recovery_timeout=10.0, half_open_calls=1, clock=lambda: now[0])
    release = threading.Event()

    @mp.parallel(backend="sync", circuit_breaker=breaker)
    def call(fail: bool) -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    @mp.parallel(circuit_breaker=breaker)
    def trial() -> str:
        assert release.wait(30)
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            call(True).get()
    assert breaker.state == "open"
    now[0] = 11.0
    pending = trial()  # the one trial of the half-open breaker, in flight at the fork
    assert breaker.state == "half_open"

    def child() -> None:
        assert call(False).get(timeout=10) == "ok"  # a trial of its own
        assert breaker.state == "closed"

    try:
        assert held_across_a_fork(breaker._lock, child) == 0
    finally:
        release.set()
    assert pending.get(timeout=10) == "ok"


def forks_a_child_that_prints(size: int) -> int:
    """A process task whose own forked child prints a long line, then leaves."""
    pid = os.fork()
    if pid == 0:
        print("x" * size, flush=True)
        os._exit(0)
    print("y" * size, flush=True)
    os.waitpid(pid, 0)
    return size


@pytest.mark.timeout(120)
def test_what_a_process_tasks_own_child_prints_never_garbles_the_workers_pipe(capfd: pytest.CaptureFixture[str]) -> None:
    # The child sent its lines on the worker's pipe too, in pieces between the
    # worker's: the parent's loop thread died reading them, and every process task failed.
    # It now writes them to the worker's descriptor 1 itself, past the parent's sys.stdout.
    fresh_process_pool(2)  # workers whose descriptor 1 is the one captured now
    task = mp.parallel(backend="process")(forks_a_child_that_prints)
    deaths = mp.get_process_pool_info()["loop_deaths"]
    relayed = io.StringIO()
    with contextlib.redirect_stdout(relayed):
        assert mp.gather([task(200_000) for _ in range(4)], timeout=60) == [200_000] * 4
    assert mp.gather([mp.parallel(backend="process")(abs)(-n) for n in range(10)], timeout=60) == list(range(10))
    assert mp.get_process_pool_info()["loop_deaths"] == deaths
    assert relayed.getvalue().split() == ["y" * 200_000] * 4  # the worker's own lines, relayed
    assert capfd.readouterr().out.split() == ["x" * 200_000] * 4  # the child's, each whole


@pytest.mark.timeout(60)
def test_a_child_watches_the_memory_limit_again_from_its_first_pool() -> None:
    # The watching thread was the parent's: the child's figures stayed those of the
    # fork, and pools paused then stayed paused.
    mp.configure_memory_limit(99.0)
    try:
        def watching() -> bool:
            return any(thread.name == "makeparallel-memory" for thread in threading.enumerate())

        def child() -> None:
            assert not watching()
            assert square(3).get(timeout=10) == 9
            assert watching()

        assert run_in_child(child) == 0
    finally:
        mp.configure_memory_limit(None)


@pytest.mark.timeout(60)
def test_a_child_counts_its_own_tasks_only(gate: threading.Event) -> None:
    # With the parent's counts, every worker of a forking server exported them as
    # its own, and the parent's tasks in flight as running for good.
    counted = mp.parallel(name="counted-in-each-process")(abs)
    assert counted(-1).get(timeout=10) == 1
    held = mp.parallel(name="counted-in-each-process")(gate.wait)(30)

    def child() -> None:
        metrics = mp.get_metrics("counted-in-each-process")
        assert metrics is not None and (metrics.total_tasks, metrics.running_tasks) == (0, 0)
        assert counted(-2).get(timeout=10) == 2
        metrics = mp.get_metrics("counted-in-each-process")
        assert metrics is not None and (metrics.total_tasks, metrics.completed_tasks) == (1, 1)

    try:
        assert run_in_child(child) == 0
    finally:
        gate.set()
    assert held.get(timeout=10) is True
    assert mp.get_metrics("counted-in-each-process").completed_tasks == 2  # type: ignore[union-attr]


def forks_while_another_thread_prints() -> tuple[int, str]:
    """A process task that forks while a thread of its own holds stdout's lock; its child's exit status and SIGTERM handling."""
    import signal

    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with sys.stdout._lock:  # type: ignore[attr-defined]  # the relay's, as in the middle of a print
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    pid = os.fork()
    if pid == 0:
        print("the child's line", flush=True)
        os._exit(0 if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL else 7)
    done.set()
    holder.join()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ended, status = os.waitpid(pid, os.WNOHANG)
        if ended:
            return os.waitstatus_to_exitcode(status), "ended"
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return -9, "hung"


def forks_a_child_then_interrupts_it() -> str:
    """A process task that forks a child, which waits; then Ctrl-C reaches the child: how the child ended."""
    import signal

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.write(ready_w, b"!")  # its fork handlers have run
        time.sleep(30)
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"!"
    os.close(ready_r)
    os.kill(pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the whole process group
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ended, _ = os.waitpid(pid, os.WNOHANG)
        if ended:
            return "ended"
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "ran on"


@pytest.mark.timeout(60)
def test_ctrl_c_ends_a_child_a_process_task_forked() -> None:
    # It had the worker's Ctrl-C handler, which does nothing: a fork-based Pool in a task
    # ran on after a Ctrl-C had ended the program, its workers re-parented to init.
    assert mp.parallel(backend="process")(forks_a_child_then_interrupts_it)().get(timeout=50) == "ended"


@pytest.mark.timeout(60)
def test_a_process_tasks_forked_child_prints_and_takes_sigterm_as_by_default() -> None:
    # It had the worker's SIGTERM handler (Pool.terminate() then waited for good),
    # and a relay lock held by another thread of the task (its first print waited for good).
    assert mp.parallel(backend="process")(forks_while_another_thread_prints)().get(timeout=50) == (0, "ended")


@pytest.mark.timeout(60)
def test_a_child_forked_as_the_gil_watch_took_a_sample_runs_the_function() -> None:
    # A thread of the parent held the function's GIL watch lock as it forked (the
    # first sample starts a load meter under it, reading psutil): in the child
    # that lock stayed taken, and the function's first task there never ended.
    @mp.parallel(backend="thread", name="gil-watch-at-fork")
    def watched(x: int) -> int:
        return x + 1

    watch = watched._spec.cpu_watch
    assert watch is not None
    watch.active = True  # (off from the start on a machine of one CPU)
    holding = threading.Event()
    forked = threading.Event()

    def sample() -> None:
        with watch._lock:
            holding.set()
            forked.wait(30)

    holder = threading.Thread(target=sample)
    holder.start()
    assert holding.wait(10)
    try:

        def child() -> None:
            assert watched(1).get(timeout=5) == 2

        code = run_in_child(child)
    finally:
        forked.set()
        holder.join(10)
    assert code == 0


# A program that registers a fork handler of its own after `import makeparallel` and
# before its first task, and whose handler runs a task in the child (a web server's
# "after fork" set-up, say). Prints the parent's health once the child has ended.
_HANDLER_BEFORE_THE_FIRST_TASK = """
import os, sys
import makeparallel as mp

def in_the_child() -> None:
    try:
        outcome = repr(double(5).get(timeout=10))
    except BaseException as error:
        outcome = f"{type(error).__name__}: {error}"
    with open(sys.argv[2], "w") as out:
        out.write(outcome)

os.register_at_fork(after_in_child=in_the_child)

@mp.parallel(backend=sys.argv[1])
def double(x: int) -> int:
    return 2 * x

assert double(1).get(timeout=60) == 2
pid = os.fork()
if pid == 0:
    mp.shutdown()
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
assert double(3).get(timeout=60) == 6
health = mp.health()
print(health["status"], health["reasons"])
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_fork_handler_registered_after_the_import_runs_tasks_in_the_child(backend: str, tmp_path: Path) -> None:
    # The library's own handlers were registered as each of its modules loaded, at the
    # first task, after the program's: the program's ran first, in a child still holding
    # the parent's pools. On threads its task was queued for threads the child did not
    # have, and lost; on processes it went to the parent's worker, on the parent's pipe,
    # and the parent's pool loop died of the answer it had not asked for.
    outcome = tmp_path / "outcome"
    completed = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _HANDLER_BEFORE_THE_FIRST_TASK, backend, str(outcome)],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert outcome.read_text() == "10"
    assert completed.stdout.split("\n")[0] == "ok []", completed.stderr


def forks_with_a_statsd_exporter_started() -> str:
    """A process task that starts a StatsD exporter and forks: what the child's ``threading`` says of its thread."""
    import socket

    from makeparallel.statsd import StatsdExporter

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        exporter = StatsdExporter(port=server.getsockname()[1], interval=3600).start()
        try:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: no flush, no stop; it says what it sees, then leaves
                thread = exporter._thread
                seen = f"alive={thread is not None and thread.is_alive()} listed={thread in threading.enumerate()}"
                os.write(write, seen.encode())
                os._exit(0)
            os.close(write)
            with os.fdopen(read, "rb") as said:
                seen = said.read().decode()
            os.waitpid(pid, 0)
            return seen
        finally:
            exporter.stop()


@pytest.mark.timeout(60)
def test_a_thread_the_clean_up_starts_in_a_child_of_a_process_task_is_one_threading_knows() -> None:
    # A worker imports the package before threading (the template skips the errors, which
    # import it): the package's one fork handler was registered before threading's, so in a
    # child the task forked it started the exporter's thread before threading's own clean-up,
    # which then took it for one of the parent's: not alive (3.10), not listed (3.13).
    task = mp.parallel(backend="process")(forks_with_a_statsd_exporter_started)
    assert task().get(timeout=50) == "alive=True listed=True"


# A program that reloads the package (importlib.reload, as a notebook's autoreload may)
# after its first task, then forks; the child runs a task and prints what it got.
_RELOADED_THEN_FORKED = """
import importlib, os, sys
import makeparallel as mp

assert mp.parallel(backend=sys.argv[1])(abs)(-1).get(timeout=60) == 1
importlib.reload(mp)
pid = os.fork()
if pid == 0:
    try:
        print(mp.parallel(backend=sys.argv[1])(abs)(-2).get(timeout=20), flush=True)
    except BaseException as error:
        print(f"{type(error).__name__}: {error}", flush=True)
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
assert mp.parallel(backend=sys.argv[1])(abs)(-3).get(timeout=60) == 3
mp.shutdown()
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["thread", "process"])
def test_a_child_forked_after_the_package_is_reloaded_runs_tasks(backend: str) -> None:
    # A reload ran the package's __init__ again, which made a new, empty list of the
    # modules' clean-ups: the modules, loaded already, did not add theirs again, so the
    # child kept the parent's pools, and its task waited for threads it did not have.
    completed = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _RELOADED_THEN_FORKED, backend],
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "2\n", completed.stderr


def _process_pool_settings() -> tuple[Any, ...]:
    info = mp.get_process_pool_info()
    return info["num_workers"], info["max_tasks_per_child"], info["max_worker_memory"], info["initializer"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_threads", [5, "auto"])
def test_a_child_keeps_the_pools_configuration_of_its_parent(num_threads: int | str) -> None:
    # A forking server configures its pools as its app loads, then forks its workers:
    # each worker started its pools with the default sizes, "auto" and the stack size
    # lost, while get_thread_pool_info() said "configured".
    mp.configure_thread_pool(num_threads=num_threads, stack_size=256 * 1024)
    mp.configure_process_pool(num_workers=3, max_tasks_per_child=7, max_worker_memory="1GiB")
    parent = _process_pool_settings()
    try:
        size = mp.get_thread_pool_info()["num_threads"]
        assert square(2).get(timeout=10) == 4

        def child() -> None:
            def sampling() -> bool:
                return any(thread.name == "makeparallel-autosize" for thread in threading.enumerate())

            for first_use in (True, False):
                info = mp.get_thread_pool_info()
                assert info["auto"] is (num_threads == "auto"), info
                assert info["num_threads"] == size, info
                assert info["stack_size"] == 256 * 1024, info
                assert sampling() is (num_threads == "auto")
                assert _process_pool_settings() == parent
                if first_use:
                    assert square(3).get(timeout=10) == 9

        assert run_in_child(child) == 0
    finally:
        mp.configure_thread_pool(num_threads=None, stack_size=None)
        mp.configure_process_pool(max_tasks_per_child=None, max_worker_memory=None)


@pytest.mark.timeout(60)
def test_a_child_of_a_shut_down_parent_starts_its_auto_sizing_at_the_reset() -> None:
    mp.configure_thread_pool(num_threads="auto")
    assert mp.shutdown(timeout_secs=10) is True
    try:
        def child() -> None:
            def sampling() -> bool:
                return any(thread.name == "makeparallel-autosize" for thread in threading.enumerate())

            assert mp.get_thread_pool_info()["auto"] is True
            assert not sampling()  # the pool is shut down, as the parent's was
            mp.reset_shutdown()
            assert sampling()
            assert square(3).get(timeout=10) == 9

        assert run_in_child(child) == 0
    finally:
        mp.reset_shutdown()
        mp.configure_thread_pool(num_threads=None)


def _take_nothing() -> None:
    pass


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="narrows the child's CPUs (Linux)")
def test_a_child_on_fewer_cpus_sizes_the_pools_its_parent_left_at_the_default_by_its_own_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server that pins each worker it forks to a CPU (uWSGI's cpu-affinity): the parent set
    # only a stack size and an initializer, or num_threads=None ("the cores this process may
    # use"), and each worker took the parent's core count as a configured size.
    if len(os.sched_getaffinity(0)) < 2 or mp_cpus.usable_cpu_count() < 2:
        pytest.skip("needs two CPUs, to narrow the child's to one")
    one_cpu = {min(os.sched_getaffinity(0))}
    monkeypatch.setattr(_runtime, "_pool_settings", {})  # as in a program that set no size yet
    try:
        for call in (
            lambda: mp.configure_thread_pool(stack_size=256 * 1024),
            lambda: mp.configure_thread_pool(num_threads=None),
        ):
            call()
            mp.configure_process_pool(initializer=_take_nothing)

            def child() -> None:
                os.sched_setaffinity(0, one_cpu)
                assert mp.get_thread_pool_info()["num_threads"] == 1, mp.get_thread_pool_info()
                info = mp.get_process_pool_info()
                assert (info["num_workers"], info["initializer"]) == (1, "_take_nothing"), info

            assert run_in_child(child) == 0
    finally:
        mp.configure_thread_pool(num_threads=None, stack_size=None)
        mp.configure_process_pool(initializer=None)
