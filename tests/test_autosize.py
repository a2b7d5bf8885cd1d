"""num_threads="auto": the sizing policy on a fake clock, and a real pool that grows while its tasks wait."""

from __future__ import annotations

import threading

import pytest

import makeparallel as mp
from makeparallel._autosize import AutoSizePolicy, AutoSizer
from makeparallel._backends._thread import ThreadBackend, default_thread_count
from makeparallel import _runtime
from pool_helpers import wait_until


def test_it_grows_to_run_the_queue_while_its_workers_are_blocked() -> None:
    policy = AutoSizePolicy(base=2, bound=16, keep_alive=30)
    assert policy.decide(0.0, queued=3, busy=2, cpu_fraction=0.1) == 5  # everything queued can start
    assert policy.decide(0.1, queued=1, busy=5, cpu_fraction=0.1) == 6
    assert policy.decide(0.2, queued=100, busy=6, cpu_fraction=0.1) == 16  # bounded
    assert policy.decide(0.3, queued=10, busy=16, cpu_fraction=0.1) == 16


@pytest.mark.parametrize(
    ("queued", "busy", "cpu_fraction"),
    [(10, 2, 0.9), (0, 2, 0.0), (10, 1, 0.0)],
    ids=["computing", "nothing queued", "a worker is free"],
)
def test_it_does_not_grow_when_threads_would_not_help(queued: int, busy: int, cpu_fraction: float) -> None:
    policy = AutoSizePolicy(base=2, bound=8)
    assert policy.decide(0.0, queued, busy, cpu_fraction) == 2


def test_it_shrinks_after_the_keep_alive_and_never_below_the_base() -> None:
    policy = AutoSizePolicy(base=2, bound=64, keep_alive=30)
    for t in range(1):  # 2 -> 6
        policy.decide(t * 0.1, queued=4, busy=policy.size, cpu_fraction=0.0)
    assert policy.size == 6
    assert policy.decide(10.0, queued=0, busy=3, cpu_fraction=0.0) == 6  # idle from now
    assert policy.decide(39.9, queued=0, busy=3, cpu_fraction=0.0) == 6
    assert policy.decide(40.0, queued=0, busy=3, cpu_fraction=0.0) == 3  # what is busy
    assert policy.decide(50.0, queued=0, busy=0, cpu_fraction=0.0) == 3
    assert policy.decide(80.0, queued=0, busy=0, cpu_fraction=0.0) == 2  # the base
    assert policy.decide(81.0, queued=3, busy=2, cpu_fraction=0.0) == 5
    assert policy.decide(200.0, queued=0, busy=3, cpu_fraction=0.0) == 5  # idle from now: no shrink yet
    assert policy.decide(230.0, queued=0, busy=3, cpu_fraction=0.0) == 3


def test_the_sizer_measures_cpu_against_wall_time() -> None:
    now = [0.0]
    cpu = [0.0]
    load = [(10, 2)]
    sizes: list[int] = []
    sizer = AutoSizer(AutoSizePolicy(2, 16), lambda: load[0], sizes.append, cores=2, cpu_clock=lambda: cpu[0], clock=lambda: now[0])
    sizer.step()  # the first sample only sets the baseline
    now[0], cpu[0] = 0.1, 0.19  # 2 busy workers used 95% of 2 cores: computing
    assert sizer.step() == 2 and sizes == []
    now[0], cpu[0] = 0.2, 0.2  # then 5%: waiting
    assert sizer.step() == 12 and sizes == [12]  # 2 busy + 10 queued


def test_a_real_pool_grows_while_its_tasks_wait(gate: threading.Event) -> None:
    backend = _runtime.get_backend("thread")
    assert isinstance(backend, ThreadBackend)
    mp.configure_thread_pool(num_threads="auto")
    assert mp.get_thread_pool_info()["auto"] is True
    cores = default_thread_count()
    target = cores + 2
    started = threading.Semaphore(0)

    @mp.parallel
    def wait_for_gate() -> None:
        started.release()
        assert gate.wait(60)

    handles = [wait_for_gate() for _ in range(4 * target)]
    assert wait_until(lambda: mp.get_thread_pool_info()["busy_threads"] >= target, timeout=30)
    gate.set()
    mp.gather(handles, timeout=30)
    sizer = backend._autosizer
    assert sizer is not None
    sizer.policy.keep_alive = 0.0  # shrink at the next samples
    assert wait_until(lambda: mp.get_thread_pool_info()["num_threads"] == cores, timeout=30)
    mp.configure_thread_pool(num_threads=cores)
    assert mp.get_thread_pool_info()["auto"] is False


def test_bad_num_threads_names_the_argument() -> None:
    with pytest.raises(TypeError, match='num_threads must be an int >= 1, "auto" or None'):
        mp.configure_thread_pool(num_threads="max")
