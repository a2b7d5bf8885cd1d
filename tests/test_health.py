"""``health()``: ok, degraded (saturated queue, concurrency limit, memory), unhealthy."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from fake_cgroup import fake_cgroup
from makeparallel import _health, _memory_budget
from makeparallel._backends import _process
from pool_helpers import fresh_process_pool, process_alive, wait_until

KEYS = {"status", "live", "ready", "reasons", "pools", "memory_percent"}


def unique_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def earlier_tests_settled() -> bool:
    """An earlier test's timed-out task may still run on a thread for a moment.

    Likewise, an earlier test's killed worker processes count as restarts for
    ten seconds: wait until they no longer make a restart storm.
    """
    if mp.get_thread_pool_info()["stuck_threads"]:
        return False
    return not any("restarts" in reason for reason in mp.health(memory_limit_percent=100.0)["reasons"])


def hold_one_thread(gate: threading.Event) -> mp.AsyncHandle[None]:
    """A 1-thread pool, its thread running a task until ``gate`` opens."""
    mp.configure_thread_pool(1)
    running = threading.Event()

    @mp.parallel(backend="thread", name=unique_name("health-holder"))
    def holder() -> None:
        running.set()
        assert gate.wait(10), "the test never opened the gate"

    handle = holder()
    assert running.wait(10), "the holder never started"
    return handle


def test_ok_when_idle() -> None:
    mp.get_thread_pool_info()  # the thread pool exists, idle
    assert wait_until(earlier_tests_settled, 15)
    report = mp.health(memory_limit_percent=100.0)
    assert set(report) == KEYS
    assert report["status"] == "ok", report["reasons"]
    assert report["live"] is True and report["ready"] is True
    assert report["reasons"] == []
    assert "thread" in report["pools"]
    assert report["pools"]["thread"]["queued_tasks"] == 0
    assert 0.0 < report["memory_percent"] <= 100.0


def test_default_arguments_report_the_same_shape() -> None:
    report = mp.health()
    assert set(report) == KEYS
    assert report["status"] in {"ok", "degraded"}
    assert report["live"] is True and report["ready"] is True


@pytest.mark.timeout(20)
def test_degraded_when_a_pool_queue_saturates(gate: threading.Event) -> None:
    holder = hold_one_thread(gate)

    @mp.parallel(backend="thread", name=unique_name("health-queued"))
    def queued() -> None:
        pass

    handles = [queued() for _ in range(4)]  # more than queue_limit=3, behind the holder
    report = mp.health(memory_limit_percent=100.0, queue_limit=3)
    assert report["status"] == "degraded"
    assert report["ready"] is True and report["live"] is True
    saturated = [r for r in report["reasons"] if "saturated" in r]
    assert len(saturated) == 1, report["reasons"]
    assert saturated[0].startswith("thread pool")  # names the pool
    assert "4 tasks queued" in saturated[0] and "limit 3" in saturated[0]
    assert report["pools"]["thread"]["queued_tasks"] == 4
    # At the limit is not over it.
    assert handles[0].cancel()
    at_limit = mp.health(memory_limit_percent=100.0, queue_limit=3)
    assert at_limit["pools"]["thread"]["queued_tasks"] == 3
    assert not any("saturated" in r for r in at_limit["reasons"]), at_limit["reasons"]
    gate.set()
    holder.get(10)
    for handle in handles[1:]:
        handle.get(10)
    assert not any("saturated" in r for r in mp.health(memory_limit_percent=100.0, queue_limit=3)["reasons"])


@pytest.mark.timeout(20)
def test_default_queue_limit_is_ten_per_worker(gate: threading.Event) -> None:
    holder = hold_one_thread(gate)

    @mp.parallel(backend="thread", name=unique_name("health-default-limit"))
    def queued() -> None:
        pass

    handles = [queued() for _ in range(10)]
    assert not any("saturated" in r for r in mp.health(memory_limit_percent=100.0)["reasons"])
    handles.append(queued())
    reasons = mp.health(memory_limit_percent=100.0)["reasons"]
    assert any("saturated" in r and "limit 10" in r for r in reasons), reasons
    gate.set()
    holder.get(10)
    for handle in handles:
        handle.get(10)


@pytest.mark.timeout(20)
def test_degraded_at_the_global_concurrency_limit(gate: threading.Event) -> None:
    mp.set_max_concurrent_tasks(1)  # conftest removes the limit afterwards
    running = threading.Event()

    @mp.parallel(backend="thread", name=unique_name("health-limited"))
    def held() -> None:
        running.set()
        assert gate.wait(10)

    handle = held()
    assert running.wait(10)
    report = mp.health(memory_limit_percent=100.0)
    assert report["status"] == "degraded"
    assert report["ready"] is True
    limit_reasons = [r for r in report["reasons"] if "concurrency limit" in r]
    assert limit_reasons == ["at the concurrency limit: 1 of 1 tasks in flight"], report["reasons"]
    gate.set()
    handle.get(10)
    assert not any("concurrency limit" in r for r in mp.health(memory_limit_percent=100.0)["reasons"])


@pytest.mark.parametrize("limit", ["just below", 0.001])
def test_degraded_on_memory(limit: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    used = mp.health()["memory_percent"]
    if limit == "just below":
        # The machine's use moves with every process on it: one that exited between
        # the two reads left less in use than the threshold under the first.
        monkeypatch.setattr(_health, "_memory_percent", lambda: used)
    threshold = max(0.001, used - 2.0) if limit == "just below" else limit
    report = mp.health(memory_limit_percent=threshold)
    assert report["status"] == "degraded"
    assert report["ready"] is True
    memory = [r for r in report["reasons"] if r.startswith("memory")]
    assert len(memory) == 1, report["reasons"]
    assert f"limit {threshold:g}%" in memory[0]


@pytest.mark.timeout(30)
def test_memory_is_judged_against_the_container_limit_not_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A container limited to 1 GiB on a large host, 95% of it in use: the host's
    # figure (psutil.virtual_memory()) said a few percent, and health() said ok
    # until the OOM killer ended the process.
    root, proc = fake_cgroup(
        tmp_path,
        "0::/pod/app\n",
        {"pod/app/memory.max": f"{2**30}\n", "pod/app/memory.current": f"{int(0.95 * 2**30)}\n"},
    )
    monkeypatch.setattr(_memory_budget, "memory_budget", functools.partial(_memory_budget.memory_budget, root, proc))
    report = mp.health(memory_limit_percent=90.0)
    assert report["memory_percent"] == pytest.approx(95.0)
    assert report["status"] == "degraded"
    assert [r for r in report["reasons"] if r.startswith("memory")] == ["memory is 95% used (limit 90%)"]


def test_unhealthy_and_not_ready_after_shutdown_then_ok_after_reset() -> None:
    mp.get_thread_pool_info()
    assert wait_until(earlier_tests_settled, 15)
    try:
        assert mp.shutdown(timeout_secs=10)
        report = mp.health(memory_limit_percent=100.0)
        assert report["status"] == "unhealthy"
        assert report["ready"] is False
        assert report["live"] is True  # keep the process: it is not broken
        assert report["reasons"][0].startswith("shut down")
        assert "reset_shutdown()" in report["reasons"][0]
    finally:
        mp.reset_shutdown()
    report = mp.health(memory_limit_percent=100.0)
    assert report["status"] == "ok", report["reasons"]
    assert report["ready"] is True
    assert report["reasons"] == []


def hang_in_initializer(started: str, fifo: str) -> None:
    """Write this worker's pid to ``started``, then wait for good: a FIFO no one opens for writing."""
    with open(f"{started}.part", "w") as file:
        file.write(str(os.getpid()))
    os.replace(f"{started}.part", started)
    with open(fifo) as never:  # blocks in open(): no writer ever comes
        never.read()


def pool_reasons(report: dict[str, Any]) -> list[str]:
    return [reason for reason in report["reasons"] if reason.startswith("process pool")]


def one_worker_stuck_in_its_initializer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], int]:
    """A pool of one worker, prestarted, stuck in its initializer: the pool's clock (to move) and the worker's pid."""
    fresh_process_pool(1)
    clock = [time.monotonic() + 2 * _process.RESTART_WINDOW]
    monkeypatch.setattr(_process, "_now", lambda: clock[0])
    started, fifo = tmp_path / "started", tmp_path / "fifo"
    os.mkfifo(fifo)
    mp.configure_process_pool(initializer=hang_in_initializer, initargs=(str(started), str(fifo)), prestart=True)
    try:
        assert wait_until(started.exists, 30)
    except BaseException:
        mp.configure_process_pool(initializer=None)
        raise
    return clock, int(started.read_text())


@pytest.mark.timeout(60)
def test_tasks_waiting_on_a_worker_stuck_in_its_initializer_make_it_unhealthy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With one or two tasks waiting (under the saturation limit) health() said
    # "ok" for good: a readiness probe never saw a pool whose tasks never start.
    clock, pid = one_worker_stuck_in_its_initializer(tmp_path, monkeypatch)
    try:
        clock[0] += _health.SLOW_START
        assert pool_reasons(mp.health(memory_limit_percent=100.0)) == []  # slow, not yet too slow
        clock[0] += 1.0
        idle = mp.health(memory_limit_percent=100.0)  # stuck, but no task waits on it
        assert pool_reasons(idle) == [
            "process pool: 1 worker(s) starting for over 60 s (initializer hang_in_initializer), none ready"
        ]
        assert idle["status"] == "degraded" and idle["ready"] is True
        handles = [mp.parallel(backend="process")(abs)(-x) for x in (1, 2)]
        assert wait_until(lambda: mp.get_process_pool_info()["held_tasks"] >= 1, 10)  # given to it, held here
        report = mp.health(memory_limit_percent=100.0)
        pool = report["pools"]["process"]
        assert pool["queued_tasks"] == 2  # those held for it among them
        waiting = "process pool: 2 task(s) wait for workers starting for over 60 s (initializer hang_in_initializer)"
        assert pool_reasons(report) == [f"{waiting}, and none is ready"]
        assert report["status"] == "unhealthy"
        assert report["ready"] is False and report["live"] is True
    finally:
        assert mp.shutdown(timeout_secs=10, cancel_pending=True)
        mp.reset_shutdown()
        mp.configure_process_pool(initializer=None)
    assert all(handle.status == "cancelled" for handle in handles)
    assert wait_until(lambda: not process_alive(pid), 30)


@pytest.mark.timeout(60)
def test_tasks_held_for_a_starting_worker_count_as_queued_in_the_gauges_as_in_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given to a worker still starting, a task is held in this process, not begun (its handle says
    # pending), and health() counted it as waiting; the pool's queued_tasks and the function's
    # metrics (which the Prometheus and StatsD gauges read) left it out, the metrics as running.
    clock, pid = one_worker_stuck_in_its_initializer(tmp_path, monkeypatch)
    name = unique_name("health-held")
    try:
        handles = [mp.parallel(backend="process", name=name)(abs)(-x) for x in (1, 2)]
        assert wait_until(lambda: mp.get_process_pool_info()["held_tasks"] >= 1, 10)  # given to it, held here
        assert not any(handle.running() for handle in handles)
        pool = mp.get_process_pool_info()
        assert pool["queued_tasks"] == 2, pool
        metrics = mp.get_metrics(name)
        assert metrics is not None
        assert (metrics.queued_tasks, metrics.running_tasks) == (2, 0)
        clock[0] += _health.SLOW_START + 1.0
        report = mp.health(memory_limit_percent=100.0)
        assert report["pools"]["process"]["queued_tasks"] == 2
        assert any("2 task(s) wait for workers starting" in reason for reason in pool_reasons(report))
    finally:
        assert mp.shutdown(timeout_secs=10, cancel_pending=True)
        mp.reset_shutdown()
        mp.configure_process_pool(initializer=None)
    assert all(handle.status == "cancelled" for handle in handles)
    assert wait_until(lambda: not process_alive(pid), 30)


def set_up_quickly() -> None:
    """An initializer that returns at once."""


@pytest.mark.timeout(60)
def test_a_slow_start_names_the_initializer_the_stuck_worker_runs_not_the_one_that_replaced_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker stuck in its initializer is left to it when a new initializer replaces
    # it; the reason named the pool's new initializer, which its replacement had run
    # in no time, and sent whoever read it to the wrong function.
    clock, pid = one_worker_stuck_in_its_initializer(tmp_path, monkeypatch)
    try:
        mp.configure_process_pool(initializer=set_up_quickly)  # its replacement gets ready; it stays stuck
        assert wait_until(lambda: mp.get_process_pool_info()["ready_workers"] == 1, 30)
        clock[0] += _health.SLOW_START + 1.0
        report = mp.health(memory_limit_percent=100.0)
        assert pool_reasons(report) == [
            "process pool: 1 worker(s) starting for over 60 s (initializer hang_in_initializer), 1 ready"
        ]
        pool = report["pools"]["process"]
        assert (pool["initializer"], pool["longest_start_initializer"]) == ("set_up_quickly", "hang_in_initializer")
    finally:
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not process_alive(pid), 30)
        mp.configure_process_pool(initializer=None)
    assert wait_until(lambda: mp.get_process_pool_info()["longest_start_initializer"] is None, 30)  # its end seen


def test_a_slow_start_is_as_long_as_the_fastapi_lifespan_waits_for_prestarted_workers() -> None:
    fastapi = pytest.importorskip("makeparallel.fastapi")
    assert _health.SLOW_START == fastapi._READY_WAIT


@pytest.mark.parametrize("value", [0, -1, 100.5, 1000, float("nan")])
def test_memory_limit_out_of_range_is_rejected(value: float) -> None:
    with pytest.raises(ValueError, match=r"memory_limit_percent must be in \(0, 100\]"):
        mp.health(memory_limit_percent=value)


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), ("3", TypeError), (True, TypeError)])
def test_bad_queue_limit_is_rejected(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="queue_limit must be an int >= 1"):
        mp.health(queue_limit=value)


def test_limits_at_the_edges_are_accepted() -> None:
    assert mp.health(memory_limit_percent=100.0, queue_limit=1)["live"] is True
    assert mp.health(memory_limit_percent=1e-9)["status"] == "degraded"


OUT_OF_DESCRIPTORS = textwrap.dedent(
    """
    import json, os, resource
    import makeparallel as mp

    mp.health()  # a service checks its health from its start
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    report = mp.health()
    for fd in held:
        os.close(fd)
    print(json.dumps([report["status"], report["memory_percent"], report["reasons"]]))
    """
)


@pytest.mark.timeout(60)
def test_a_program_out_of_file_descriptors_gets_a_report_not_an_error() -> None:
    # psutil could not open /proc/meminfo: health() raised OSError, and a health
    # endpoint answered 500 with a traceback where it should say what is wrong.
    import json

    out = subprocess.run([sys.executable, "-c", OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=50, check=False)
    assert out.returncode == 0, out.stderr
    status, memory_percent, reasons = json.loads(out.stdout)
    assert (status, memory_percent) == ("degraded", None)
    assert len(reasons) == 1 and "memory use cannot be read" in reasons[0] and "Too many open files" in reasons[0]
