"""Inside a process-backend worker, every default size is the worker's share of the CPUs.

A process task that submitted process tasks, mapped, or used the thread pool
sized each of those pools for the whole machine: with N workers, N nested pools
of N workers each (N² processes), and N thread pools of N threads. A worker's
usable CPUs are ``max(1, the parent's usable CPUs // the pool's workers)``, the
share its BLAS and OpenMP libraries get already (joblib PR 940's
``max_inner_num_threads``). The share reaches the worker in its set-up message,
never in its environment: a program a task starts sees the whole machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pool_helpers import fresh_process_pool, live_worker_pids, wait_until

import makeparallel as mp
from makeparallel import _cpu_share, _cpus
from makeparallel._backends import _process
from makeparallel._cpus import usable_cpus

pytestmark = pytest.mark.timeout(60)

on_process = mp.parallel(backend="process")
PACKAGE = str(Path(mp.__file__).parents[1])
CPUS = usable_cpus().cpus
# With one usable CPU, the share of one worker and of two is the same: nothing to tell apart.
needs_two_cpus = pytest.mark.skipif(CPUS < 2, reason="a share smaller than the machine needs 2 usable CPUs")


def defaults_here() -> dict[str, Any]:
    """Every default size the library would give in this process, and its usable CPUs."""
    executor, processes = mp.Executor(), mp.Executor(backend="process")  # nothing submitted: nothing started
    executor_workers, process_executor_workers = executor.max_workers, processes.max_workers
    executor.shutdown(wait=False)
    processes.shutdown(wait=False)
    return {
        "usable_cpus": tuple(usable_cpus()),
        "process_workers": mp.get_process_pool_info()["num_workers"],
        "threads": mp.get_thread_pool_info()["num_threads"],
        "executor_workers": executor_workers,
        "process_executor_workers": process_executor_workers,
    }


def share_of(workers: int) -> dict[str, Any]:
    share = max(1, CPUS // workers)
    return {
        "usable_cpus": (share, "worker share"),
        "process_workers": share,
        "threads": share,
        "executor_workers": share,
        "process_executor_workers": share,
    }


@pytest.fixture(params=[True, False], ids=["forked from the template", "fresh interpreters"])
def two_workers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not request.param:
        monkeypatch.setattr(_process, "template_available", lambda: False)
    fresh_process_pool(2)
    yield
    fresh_process_pool(2)  # no worker started one way is left for a test that wants the other


@pytest.fixture
def own_share() -> Iterator[None]:
    """This process as a worker would be; put back after the test."""
    yield
    _cpu_share.set_worker_share(None)


# -- this process, as a worker -----------------------------------------------------------


def test_a_worker_share_is_its_usable_cpus(own_share: None) -> None:
    _cpu_share.set_worker_share(1)
    assert usable_cpus() == (1, "worker share")
    assert _cpus.usable_cpu_count() == 1


def test_a_share_above_what_the_worker_may_use_leaves_that(own_share: None) -> None:
    # A task that narrowed its affinity, say: the smaller figure holds.
    measured = usable_cpus()
    _cpu_share.set_worker_share(measured.cpus + 1)
    assert usable_cpus() == measured


def test_no_share_is_the_measured_count(own_share: None) -> None:
    _cpu_share.set_worker_share(1)
    _cpu_share.set_worker_share(None)
    assert usable_cpus().source in ("affinity", "cgroup quota", "cpu_count")


@pytest.mark.parametrize("share", [0, -1, 1.5, True, "2"])
def test_a_share_that_is_no_count_is_refused(own_share: None, share: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=rf"share must be an int >= 1 or None, got {share!r}"):
        _cpu_share.set_worker_share(share)
    assert usable_cpus().source != "worker share"


# -- in the workers ---------------------------------------------------------------------


@needs_two_cpus
def test_every_default_size_in_a_worker_is_its_share(two_workers: None) -> None:
    assert mp.gather([on_process(defaults_here)() for _ in range(4)]) == [share_of(2)] * 4


def explicit_sizes_here() -> tuple[int, int, int]:
    """The sizes of pools given 3 in this process; its pools put back to their defaults after."""
    try:
        mp.configure_thread_pool(num_threads=3)
        mp.configure_process_pool(num_workers=3)
        executor = mp.Executor(max_workers=3)
        executor.shutdown(wait=False)
        return mp.get_thread_pool_info()["num_threads"], mp.get_process_pool_info()["num_workers"], executor.max_workers
    finally:
        mp.configure_thread_pool(num_threads=usable_cpus().cpus)
        mp.configure_process_pool(num_workers=usable_cpus().cpus)


def test_sizes_given_in_a_worker_stay_as_given(two_workers: None) -> None:
    assert on_process(explicit_sizes_here)().get(timeout=30) == (3, 3, 3)


def environment_and_a_programs_cpus() -> tuple[dict[str, str], str]:
    """This process's environment, and the usable CPUs a program it starts finds."""
    program = "from makeparallel._cpus import usable_cpus; print(*usable_cpus())"
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=True
    )
    return dict(os.environ), completed.stdout.strip()


@needs_two_cpus
def test_a_program_a_task_starts_sees_the_whole_machine(two_workers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The share is no variable of the worker's environment, which is the program's
    # and the pool's BLAS and OpenMP limits: a program the task starts is no worker.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [PACKAGE, os.environ.get("PYTHONPATH")])))
    environ, programs_cpus = on_process(environment_and_a_programs_cpus)().get(timeout=30)
    assert environ == {**os.environ, **_process.thread_limits(2)}
    assert programs_cpus == " ".join(map(str, usable_cpus()))


def inner_pid() -> tuple[int, tuple[int, str]]:
    return os.getpid(), tuple(usable_cpus())  # type: ignore[return-value]


def run_nested() -> tuple[int, int, set[tuple[int, str]]]:
    """Process tasks of a process task: its pool's size, the workers that ran them, and their usable CPUs."""
    try:
        results = mp.gather([on_process(inner_pid)() for _ in range(8)])
        return mp.get_process_pool_info()["num_workers"], len({pid for pid, _ in results}), {c for _, c in results}
    finally:
        mp.shutdown(10)  # this worker's own pool, and its processes
        mp.reset_shutdown()


@needs_two_cpus
def test_nested_process_tasks_run_on_the_share_of_the_worker(two_workers: None) -> None:
    # Two workers on two CPUs: each runs its nested tasks on one worker, not two
    # (four processes in all, not six). A nested pool has the worker's share of
    # workers, each with one CPU: share // share.
    share = max(1, CPUS // 2)
    try:
        for size, workers_used, nested_cpus in mp.gather([on_process(run_nested)() for _ in range(2)]):
            assert (size, nested_cpus) == (share, {(1, "worker share")})
            assert 1 <= workers_used <= share
    finally:
        assert mp.shutdown(10)
        mp.reset_shutdown()


def share_and_pid() -> tuple[int, int]:
    return usable_cpus().cpus, os.getpid()


@needs_two_cpus
def test_a_grown_pool_replaces_workers_started_with_a_larger_share(monkeypatch: pytest.MonkeyPatch) -> None:
    # The user's BLAS and OpenMP counts: the pool sets none, and replaces no worker for
    # them. Yet a worker started alone took every CPU, and so did each pool of its tasks.
    for name in _process.THREAD_LIMIT_VARIABLES:
        monkeypatch.setenv(name, "1")
    fresh_process_pool(1)
    try:
        cpus, first = on_process(share_and_pid)().get(timeout=30)
        assert cpus == CPUS
        mp.configure_process_pool(num_workers=2, prestart=True)
        assert wait_until(lambda: first not in mp.get_process_pool_info()["worker_pids"], 30), mp.get_process_pool_info()
        pids = live_worker_pids(2)
        assert first not in pids
        assert {on_process(share_and_pid)().get(timeout=30)[0] for _ in range(4)} == {max(1, CPUS // 2)}
    finally:
        fresh_process_pool(2)


@needs_two_cpus
def test_a_shrunk_pool_keeps_its_workers_and_their_smaller_share() -> None:
    # A share smaller than the new size gives oversubscribes nothing: kept, as BLAS limits are.
    fresh_process_pool(2)
    try:
        before = live_worker_pids(2)
        mp.configure_process_pool(num_workers=1)
        cpus, pid = on_process(share_and_pid)().get(timeout=30)
        assert pid in before
        assert cpus == max(1, CPUS // 2)
    finally:
        fresh_process_pool(2)


def pool_info_in_a_worker() -> tuple[dict[str, Any], dict[str, Any]]:
    return mp.get_process_pool_info(), mp.health()


@needs_two_cpus
def test_pool_info_and_health_in_a_worker_tell_its_share(two_workers: None) -> None:
    info, health = on_process(pool_info_in_a_worker)().get(timeout=30)
    share = max(1, CPUS // 2)
    assert (info["num_workers"], info["live_workers"]) == (share, 0)  # asked, not started
    assert health["pools"]["process"]["num_workers"] == share, health
    assert health["live"], health




# The variables a library reads its thread count from (GOTO_NUM_THREADS: OpenBLAS's fallback).
THREAD_COUNTS = (*_process.THREAD_LIMIT_VARIABLES, "GOTO_NUM_THREADS")


def thread_counts_here() -> dict[str, str]:
    return {name: os.environ[name] for name in THREAD_COUNTS if name in os.environ}


def thread_counts_of_a_nested_worker(set_in_the_task: dict[str, str]) -> dict[str, str]:
    """In a worker, ``set_in_the_task`` set in its environment: the thread counts a nested pool's worker gets."""
    before = {name: os.environ.get(name) for name in set_in_the_task}
    os.environ.update(set_in_the_task)
    try:
        with mp.Executor(backend="process", max_workers=2) as executor:
            return executor.submit(thread_counts_here).result(timeout=30)
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


NESTED = str(max(1, CPUS // 2))  # a nested pool of 2 in the only worker, which has every CPU
ALL_NESTED = dict.fromkeys(_process.THREAD_LIMIT_VARIABLES, NESTED)


@needs_two_cpus
@pytest.mark.parametrize(
    ("set_by_the_user", "set_in_the_task", "expected"),
    [
        ({}, {}, ALL_NESTED),
        # The user's OMP_NUM_THREADS is OpenBLAS's, MKL's and numexpr's too: neither pool sets theirs.
        ({"OMP_NUM_THREADS": "3"}, {}, {"OMP_NUM_THREADS": "3", "VECLIB_MAXIMUM_THREADS": NESTED}),
        ({}, {"MKL_NUM_THREADS": "5"}, {**ALL_NESTED, "MKL_NUM_THREADS": "5"}),
        ({}, {"OMP_NUM_THREADS": "4"}, {"OMP_NUM_THREADS": "4", "VECLIB_MAXIMUM_THREADS": NESTED}),
    ],
    ids=["none set", "set in the program", "set in the task", "OMP_NUM_THREADS set in the task"],
)
def test_a_nested_pool_sets_thread_counts_from_the_share_and_keeps_the_users(
    monkeypatch: pytest.MonkeyPatch,
    set_by_the_user: dict[str, str],
    set_in_the_task: dict[str, str],
    expected: dict[str, str],
) -> None:
    # The outer pool's counts are in its worker's environment: a nested pool took them for
    # the user's and passed them on, so each nested worker ran the outer worker's share of
    # BLAS threads, not a share of it. What the user set, in the program or in the task, stays.
    for name in THREAD_COUNTS:
        monkeypatch.delenv(name, raising=False)
    for name, value in set_by_the_user.items():
        monkeypatch.setenv(name, value)
    fresh_process_pool(1)
    try:
        assert on_process(thread_counts_of_a_nested_worker)(set_in_the_task).get(timeout=60) == expected
    finally:
        fresh_process_pool(2)
