"""``max_worker_memory``: a worker that holds too much memory after a task is replaced.

Real worker processes hold real memory: a task keeps 96 MiB of bytes in a
module global, so its worker's resident memory stays high after the task. The
limit is set 48 MiB above what an idle worker of this very pool holds, so the
tests do not depend on how large an interpreter is on the machine.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

import makeparallel as mp
from makeparallel._worker_memory import ResidentMemory
from pool_helpers import fresh_process_pool, wait_until

pytestmark = [
    pytest.mark.skipif(os.name != "posix", reason="the process backend is POSIX-only for now"),
    pytest.mark.timeout(90),
]

on_process = mp.parallel(backend="process")
MiB = 1 << 20
BALLAST_MIB = 96
MARGIN = 48 * MiB


@pytest.fixture(autouse=True)
def no_limit() -> Iterator[None]:
    yield
    mp.configure_process_pool(initializer=None, max_worker_memory=None)


def info() -> dict[str, Any]:
    return mp.get_process_pool_info()


def memory_restarts() -> int:
    return int(info()["worker_restart_reasons"].get("max_worker_memory", 0))


# -- tasks and initializers: module level, so their globals live in the worker ----------------

_ballast: list[bytes] = []


def hold_memory(mib: int) -> int:
    """Keep ``mib`` MiB, every page written, for as long as this worker lives."""
    _ballast.append(b"\x01" * (mib * MiB))
    return os.getpid()


def use_memory_briefly(mib: int) -> int:
    """Use ``mib`` MiB, then give it back before the task ends."""
    data = b"\x01" * (mib * MiB)
    assert len(data) == mib * MiB
    del data
    return os.getpid()


def resident() -> tuple[int, int]:
    """This worker's pid and resident memory in bytes."""
    return os.getpid(), psutil.Process().memory_info().rss


def hold_memory_at_start(mib: int) -> None:
    hold_memory(mib)


def limit_above_an_idle_worker(num_workers: int = 1) -> tuple[int, int]:
    """Start a cold pool of ``num_workers``; return the pid of the worker that ran a task, and a limit ``MARGIN`` above its memory.

    Sized at once: a pool grown later replaces its first worker, started with
    more BLAS threads, once a new one is ready, which no memory limit counts.
    """
    fresh_process_pool(num_workers)
    pid, rss = on_process(resident)().get(timeout=30)
    return pid, rss + MARGIN


# -- recycling ----------------------------------------------------------------------------------


def test_a_worker_over_the_limit_after_its_task_is_replaced_before_the_next_task() -> None:
    pid, limit = limit_above_an_idle_worker()
    before = memory_restarts()
    mp.configure_process_pool(max_worker_memory=limit)
    assert info()["max_worker_memory"] == limit

    assert on_process(hold_memory)(BALLAST_MIB).get(timeout=30) == pid  # the task ran to its end there
    next_pid, rss = on_process(resident)().get(timeout=30)

    assert next_pid != pid, "the task after the one that kept 96 MiB ran on the same worker"
    assert rss < limit
    assert wait_until(lambda: memory_restarts() == before + 1, 30), info()
    assert wait_until(lambda: not psutil.pid_exists(pid), 30), f"worker {pid} still runs"
    pool = mp.metrics_snapshot()["pools"]["process"]
    assert pool["worker_restart_reasons"]["max_worker_memory"] == before + 1
    assert pool["max_worker_memory"] == limit


def test_a_worker_over_the_limit_is_retired_before_its_result_is_seen() -> None:
    # A submission that follows the result may go straight from the submitting
    # thread to an idle worker: the bloated one must not look idle by then.
    _, limit = limit_above_an_idle_worker()
    mp.configure_process_pool(max_worker_memory=limit)
    ready_when_finished: dict[int, int] = {}
    told = threading.Condition()

    def listener(event: mp.TaskEvent) -> None:  # called where the task finished: in the pool's loop
        if event.kind == "finished":
            ready = info()["ready_workers"]
            with told:
                ready_when_finished[event.task_id] = ready
                told.notify_all()

    mp.add_task_listener(listener)
    try:
        handle = on_process(hold_memory)(BALLAST_MIB)
        handle.get(timeout=30)
        with told:  # the event may follow the result
            assert told.wait_for(lambda: handle.get_task_id() in ready_when_finished, timeout=30)
    finally:
        mp.remove_task_listener(listener)
    assert ready_when_finished[handle.get_task_id()] == 0, "the worker still took tasks when its result arrived"


def test_a_worker_under_the_limit_is_kept() -> None:
    pid, limit = limit_above_an_idle_worker()
    before = info()["worker_restart_reasons"]
    mp.configure_process_pool(max_worker_memory=limit)

    pids = {on_process(hold_memory)(1).get(timeout=30) for _ in range(5)}
    pids |= {on_process(resident)().get(timeout=30)[0] for _ in range(5)}

    assert pids == {pid}
    assert info()["worker_restart_reasons"] == before


def test_memory_a_task_gave_back_before_it_ended_does_not_count() -> None:
    pid, limit = limit_above_an_idle_worker()
    before = memory_restarts()
    mp.configure_process_pool(max_worker_memory=limit)

    assert on_process(use_memory_briefly)(2 * BALLAST_MIB).get(timeout=30) == pid  # never stopped during it
    assert on_process(resident)().get(timeout=30)[0] == pid
    assert memory_restarts() == before


def test_no_task_is_lost_when_workers_are_replaced_with_a_queue_behind_them() -> None:
    _, limit = limit_above_an_idle_worker(2)
    mp.configure_process_pool(max_worker_memory=limit)
    before = memory_restarts()

    holding = range(0, 20, 5)
    handles = [on_process(hold_memory)(BALLAST_MIB if i in holding else 0) for i in range(20)]
    pids = [h.get(timeout=60) for h in handles]

    # Every result came back; each worker that kept 96 MiB was replaced once, and no other.
    replaced = {pids[i] for i in holding}
    assert wait_until(lambda: memory_restarts() == before + len(replaced), 30), (replaced, info())
    assert wait_until(lambda: not any(psutil.pid_exists(pid) for pid in replaced), 30)
    assert memory_restarts() == before + len(replaced)


def test_a_map_chunk_ends_before_its_worker_is_replaced() -> None:
    pid, limit = limit_above_an_idle_worker()
    before = memory_restarts()
    mp.configure_process_pool(max_worker_memory=limit)

    # One chunk of four items, each keeping 32 MiB: the worker crosses the limit mid-chunk.
    pids = mp.parallel_map(hold_memory, [32] * 4, chunksize=4, backend="process")

    assert pids == [pid] * 4
    assert on_process(resident)().get(timeout=30)[0] != pid
    assert wait_until(lambda: memory_restarts() == before + 1, 30), info()


def test_none_turns_it_off_and_other_options_keep_it() -> None:
    pid, limit = limit_above_an_idle_worker()
    mp.configure_process_pool(max_worker_memory="1GiB")
    mp.configure_process_pool(1, max_tasks_per_child=None)
    assert info()["max_worker_memory"] == 1 << 30

    mp.configure_process_pool(max_worker_memory=None)
    assert info()["max_worker_memory"] is None
    before = memory_restarts()
    assert on_process(hold_memory)(BALLAST_MIB).get(timeout=30) == pid
    assert on_process(resident)().get(timeout=30)[0] == pid
    assert memory_restarts() == before


def test_an_initializer_over_the_limit_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    _, limit = limit_above_an_idle_worker()
    caplog.set_level(logging.WARNING, logger="makeparallel")
    mp.configure_process_pool(initializer=hold_memory_at_start, initargs=(BALLAST_MIB,), max_worker_memory=limit)

    first = on_process(resident)().get(timeout=30)[0]
    second = on_process(resident)().get(timeout=30)[0]

    assert first != second  # every worker is replaced after every task, as the warning says
    warnings = [r for r in caplog.records if "max_worker_memory" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "before running any task" in warnings[0].getMessage()


# -- reading a worker's memory -------------------------------------------------------------------


def test_resident_memory_reads_what_psutil_reads_and_none_once_the_process_is_gone() -> None:
    import subprocess
    import sys

    script = "import sys; print('up', flush=True); sys.stdin.read()"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"up\n"  # started: its memory holds still
        probe = ResidentMemory(child.pid)
        rss = probe.read()
        assert rss is not None
        assert abs(rss - psutil.Process(child.pid).memory_info().rss) < 4 * MiB
    finally:
        child.communicate(b"")  # it exits and is reaped
    assert probe.read() is None


def _files_open_on(path: str) -> int:
    """How many of this process's descriptors are open on ``path``: others' threads may open their own meanwhile."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == path
        except OSError:  # closed since it was listed
            pass
    return count


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="the probe opens /proc/<pid>/statm on Linux only")
def test_resident_memory_lets_go_of_the_process_when_dropped() -> None:
    statm = f"/proc/{os.getpid()}/statm"
    before = _files_open_on(statm)
    probes = [ResidentMemory(os.getpid()) for _ in range(20)]
    assert all(p.read() for p in probes)
    assert _files_open_on(statm) == before + 20
    del probes
    assert _files_open_on(statm) == before


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("2G", ValueError, "ambiguous; write GiB for powers of 1024 or GB"),
        ("lots", ValueError, "max_worker_memory must be bytes, or a number with one of the units"),
        ("-1GB", ValueError, "got '-1GB'"),
        (0, ValueError, "max_worker_memory must be at least 1 byte, got 0"),
        (2.5e9, TypeError, "max_worker_memory must be a number of bytes"),
        (True, TypeError, "got True"),
    ],
)
def test_bad_limits_are_refused_and_the_current_one_kept(value: Any, error: type[Exception], message: str) -> None:
    mp.configure_process_pool(max_worker_memory="512MiB")
    with pytest.raises(error, match=message):
        mp.configure_process_pool(max_worker_memory=value)
    assert info()["max_worker_memory"] == 512 * MiB
