"""num_threads="auto": the sizing policy on a fake clock, and a real pool that grows while its tasks wait."""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

import makeparallel as mp
from makeparallel import _autosize
from makeparallel._autosize import AutoSizePolicy, AutoSizer
from makeparallel._backends import _thread
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
    sizer = AutoSizer(
        AutoSizePolicy(2, 16), lambda: load[0], sizes.append, cores=2,
        activity=None, cpu_clock=lambda: cpu[0], clock=lambda: now[0], gil_held=lambda: False,
    )
    sizer.step()  # the first sample only sets the baseline
    now[0], cpu[0] = 0.1, 0.19  # 2 busy workers used 95% of 2 cores: computing
    assert sizer.step() == 2 and sizes == []
    now[0], cpu[0] = 0.2, 0.2  # then 5%: waiting
    assert sizer.step() == 12 and sizes == [12]  # 2 busy + 10 queued


class FakeThreads:
    """Per-thread activity and run states for an :class:`AutoSizer`, on a fake clock."""

    def __init__(self, busy: int = 2, queued: int = 10) -> None:
        self.now = 0.0
        self.active: dict[int, float] = {}  # seconds each thread ran or was ready to run
        self.runnable: set[int] = set()
        self.load = (queued, busy)
        self.sizes: list[int] = []
        self.gil_held: list[bool] = []  # what the sizer's next asks for the GIL find; then free

    def sizer(self, base: int = 2, bound: int = 16) -> AutoSizer:
        return AutoSizer(
            AutoSizePolicy(base, bound), lambda: self.load, self.sizes.append, cores=2,
            activity=lambda: dict(self.active), runnable=lambda tid: tid in self.runnable, clock=lambda: self.now,
            gil_held=lambda: self.gil_held.pop(0) if self.gil_held else False,
        )

    def advance(self, seconds: float, **shares: float) -> None:
        """Let ``seconds`` pass, thread ``t<id>`` active for ``shares[t<id>]`` of them."""
        self.now += seconds
        for name, share in shares.items():
            tid = int(name[1:])
            self.active[tid] = self.active.get(tid, 0.0) + share * seconds


def test_computing_threads_on_a_busy_machine_do_not_grow_the_pool() -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.advance(0.0, t1=1.0, t2=1.0)
    sizer.step()  # the baseline
    for _ in range(10):  # on CPU or waiting for one: active all the time
        threads.advance(0.03, t1=1.0, t2=0.9)
        assert sizer.step() == 2
    assert threads.sizes == []


def test_a_clearly_blocked_worker_grows_the_pool_after_one_window() -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.advance(0.0, t1=0.0, t2=0.0)
    sizer.step()
    threads.advance(0.02, t1=1.0, t2=0.1)
    assert sizer.step() == 2  # under a window: not judged yet
    threads.advance(0.01, t1=1.0, t2=0.1)
    assert sizer.step() == 12 and threads.sizes == [12]  # 2 busy + 10 queued


def test_a_passing_dip_averages_out_over_two_windows() -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.advance(0.0, t1=0.0, t2=0.0)
    sizer.step()
    threads.advance(0.03, t1=1.0, t2=0.5)
    assert sizer.step() == 2  # partly blocked over one window only: not yet
    threads.advance(0.03, t1=1.0, t2=1.0)
    assert sizer.step() == 2  # 0.75 of two windows: computing
    assert threads.sizes == []


def test_a_partly_blocked_worker_grows_the_pool_over_two_windows() -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.advance(0.0, t1=0.0, t2=0.0)
    sizer.step()
    threads.advance(0.03, t1=1.0, t2=0.6)
    assert sizer.step() == 2
    threads.advance(0.03, t1=1.0, t2=0.6)
    assert sizer.step() == 12


def test_the_window_starts_again_after_a_while_to_notice_a_change_of_work() -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.advance(0.0, t1=0.0, t2=0.0)
    sizer.step()
    for _ in range(8):  # 0.32 s computing: the window starts again at the last of these samples
        threads.advance(0.04, t1=1.0, t2=1.0)
        assert sizer.step() == 2
    threads.advance(0.04, t1=1.0, t2=0.5)  # now one waits half the time: judged from here, not diluted by the past
    assert sizer.step() == 2
    threads.advance(0.04, t1=1.0, t2=0.5)
    assert sizer.step() == 12


def test_a_worker_kept_waiting_for_a_cpu_is_not_blocked() -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.advance(0.0, t1=0.0, t2=0.0)
    sizer.step()
    threads.runnable = {2}  # its wait is counted only once it gets a CPU
    threads.advance(0.03, t1=1.0, t2=0.0)
    assert sizer.step() == 2
    threads.runnable = set()
    threads.advance(0.03, t1=1.0, t2=0.0)
    assert sizer.step() == 12


def test_idle_and_retiring_threads_are_not_taken_for_blocked_workers() -> None:
    threads = FakeThreads(busy=2)
    sizer = threads.sizer()
    threads.advance(0.0, t1=0.0, t2=0.0, t3=0.0, t4=0.0)
    sizer.step()
    for _ in range(3):  # t3 and t4 are parked: the 2 busy workers are the 2 most active threads
        threads.advance(0.03, t1=1.0, t2=0.95, t3=0.0, t4=0.0)
        assert sizer.step() == 2


def test_an_interval_that_was_partly_idle_is_not_judged() -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.load = (0, 0)  # idle: nothing is read
    threads.advance(0.1, t1=0.0, t2=0.0)
    sizer.step()
    threads.load = (10, 2)  # work arrives: this sample starts a window
    threads.advance(0.1, t1=0.0, t2=0.0)
    assert sizer.step() == 2
    threads.advance(0.03, t1=1.0, t2=1.0)
    assert sizer.step() == 2 and threads.sizes == []


def test_threads_waiting_for_the_gil_do_not_grow_the_pool() -> None:
    # Two threads running Python take turns on the GIL: each is active half the
    # time, as a thread half waiting for I/O is, and the pool grew to the whole queue.
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.gil_held = [True] * 40
    threads.advance(0.0, t1=0.0, t2=0.0)
    sizer.step()
    for _ in range(30):  # the window starts again every 0.3 s: each is judged alike
        threads.advance(0.03, t1=0.5, t2=0.5)
        assert sizer.step() == 2
    assert threads.sizes == []


@pytest.mark.parametrize(
    ("asks", "grows"),
    [
        ([False, False, False, False], True),  # I/O: the GIL is free
        ([True, False, False, False], True),  # held at a quarter of the asks: a task's own bit of Python
        ([True, True, False, False, False], False),  # held at more than a quarter
        ([True, False, True, True], False),  # one free ask between threads that compute
        ([False, False], False),  # too few asks to tell
    ],
    ids=["free", "held a quarter", "held more", "free once", "two asks"],
)
def test_the_pool_grows_only_where_the_gil_was_free_in_the_window(asks: list[bool], grows: bool) -> None:
    threads = FakeThreads()
    sizer = threads.sizer()
    threads.gil_held = list(asks)
    threads.advance(0.0, t1=0.0, t2=0.0)
    sizer.step()  # the window's first ask
    for _ in asks[1:]:  # the last one 31 ms on, where a clearly blocked worker is judged
        threads.advance(0.031 / (len(asks) - 1), t1=1.0, t2=0.1)
        sizer.step()
    assert threads.sizes == ([12] if grows else [])


def _sleep_holding_the_gil() -> Callable[[], None]:
    """A 20 ms sleep in C that keeps the GIL: ``ctypes.PyDLL`` calls do not let go of it."""
    if sys.platform == "win32":
        sleep_ms = ctypes.PyDLL("kernel32").Sleep
        return lambda: sleep_ms(20)
    sleep_us = ctypes.PyDLL(None).usleep
    return lambda: sleep_us(20_000)


@contextlib.contextmanager
def a_thread_holding_the_gil() -> Iterator[None]:
    """A thread that holds the GIL, as one running Python does, and lets go only when made to.

    It holds it asleep, not computing: a thread running Python that was made to let
    go waits for a CPU to take it back, and on a loaded machine asks made meanwhile
    found the GIL free (3 runs in 20 of each test beside a CPU hog). One only: two
    handed it to each other, and this thread waited for it for good. It yields once
    the thread has run.
    """
    stop = threading.Event()
    running = threading.Event()
    hold = _sleep_holding_the_gil()

    def keep_the_gil() -> None:
        running.set()
        while not stop.is_set():
            hold()

    thread = threading.Thread(target=keep_the_gil)
    thread.start()
    try:
        assert running.wait(30)
        yield
    finally:
        stop.set()
        thread.join(30)


def test_gil_was_held_tells_a_thread_holding_the_gil_from_none() -> None:
    def held_in(asks: int) -> int:
        held = 0
        for _ in range(asks):
            # Apart, as the sizer asks: at once after an ask, the thread that just let go
            # may not have run yet to take the GIL back (4 in 20 held on the loaded machine).
            threading.Event().wait(_autosize.BUSY_INTERVAL)
            held += _autosize.gil_was_held()
        return held

    assert held_in(20) < 10  # only this thread: the GIL comes back at once
    with a_thread_holding_the_gil():
        assert held_in(20) > 10  # the other holds it until made to let go, a switch interval on


def test_workers_that_look_blocked_beside_a_thread_holding_the_gil_do_not_grow_the_pool() -> None:
    # The GIL asked for for real, held by another thread as by Python code; the activity of two
    # workers faked as the old sizer saw threads running Python: each active half the time, asleep.
    threads = FakeThreads()
    sizer = AutoSizer(
        AutoSizePolicy(2, 16), lambda: threads.load, threads.sizes.append, cores=2,
        activity=lambda: dict(threads.active), runnable=lambda tid: False, clock=lambda: threads.now,
    )
    with a_thread_holding_the_gil():
        threads.advance(0.0, t1=0.0, t2=0.0)
        sizer.step()
        for _ in range(20):  # two windows of 0.3 s
            # Apart, as the sizer asks: at once after an ask, the other thread may not have
            # taken the GIL back yet (8 runs in 150 grew, beside a CPU hog).
            threading.Event().wait(_autosize.BUSY_INTERVAL)
            threads.advance(0.03, t1=0.5, t2=0.5)
            sizer.step()
    assert threads.sizes == []


def test_a_real_pool_does_not_grow_for_tasks_that_run_python() -> None:
    """A stream of pure-Python tasks grew an "auto" pool to 29-64 threads, no faster."""
    backend = _runtime.get_backend("thread")
    assert isinstance(backend, ThreadBackend)
    mp.configure_thread_pool(num_threads="auto")
    sizer = backend._autosizer
    assert sizer is not None
    cores = default_thread_count()
    decide = sizer.policy.decide
    samples_queued = 0
    judged = threading.Event()

    def counted(now: float, queued: int, busy: int, cpu_fraction: float) -> int:
        nonlocal samples_queued
        size = decide(now, queued, busy, cpu_fraction)
        samples_queued += queued > 0
        if samples_queued >= 30 or size > cores:  # a few windows of 0.3 s, or it grew
            judged.set()
        return size

    sizer.policy.decide = counted  # type: ignore[method-assign]
    stop = threading.Event()

    @mp.parallel
    def compute() -> None:
        while not stop.is_set():
            sum(range(1000))

    handles = [compute() for _ in range(cores + 30)]  # 30 queued
    try:
        assert judged.wait(30)
    finally:
        stop.set()
    mp.gather(handles, timeout=30)
    assert mp.get_thread_pool_info()["num_threads"] == cores


def test_a_queued_task_wakes_an_idle_sizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_autosize, "INTERVAL", 3600.0)  # only a poke can make it sample soon
    sampled = threading.Event()

    def sample() -> tuple[int, int]:
        sampled.set()
        return 0, 0

    sizer = AutoSizer(AutoSizePolicy(2, 16), sample, lambda size: None, cores=2)
    sizer.start()
    try:
        assert not sampled.is_set()
        sizer.poke()
        assert sampled.wait(30), "a poke did not wake the sizer"
    finally:
        sizer.stop()


def test_linux_reports_a_computing_thread_as_active_and_runnable() -> None:
    if not _autosize._SCHEDSTAT:
        pytest.skip("per-thread scheduler statistics are Linux's")
    stop = threading.Event()
    started = threading.Event()

    def compute() -> None:
        started.set()
        while not stop.is_set():
            sum(range(1000))

    def wait() -> None:
        stop.wait(60)

    computing = threading.Thread(target=compute, name="makeparallel-thread-test-compute")
    waiting = threading.Thread(target=wait, name="makeparallel-thread-test-wait")
    computing.start()
    waiting.start()
    try:
        assert started.wait(30)
        busy, idle = computing.native_id, waiting.native_id
        threads = [computing, waiting]
        assert busy is not None and idle is not None
        # Measured from once it sleeps: its start, waiting its turn on a loaded machine, counted 13 ms.
        assert wait_until(lambda: not _autosize.thread_is_runnable(idle), 30)
        before = _autosize.pool_thread_activity(threads)
        assert busy in before and idle in before
        assert wait_until(lambda: _autosize.pool_thread_activity(threads)[busy] > before[busy] + 0.01, 30)
        assert _autosize.pool_thread_activity(threads)[idle] - before[idle] < 0.01
        assert not _autosize.thread_is_runnable(idle)
        assert _autosize.thread_is_runnable(threading.get_native_id())  # this one runs now
    finally:
        stop.set()
        computing.join(30)
        waiting.join(30)


def test_the_sizer_measures_its_own_pools_threads_not_an_executors(gate: threading.Event) -> None:
    # An Executor's threads are named as the pool's are: taken for the pool's busy
    # workers where they computed, they kept a pool of waiting tasks from growing.
    if not _autosize._SCHEDSTAT:
        pytest.skip("per-thread scheduler statistics are Linux's")
    backend = _runtime.get_backend("thread")
    assert isinstance(backend, ThreadBackend)
    mp.configure_thread_pool(num_threads="auto")
    in_pool: list[int] = []
    in_executor: list[int] = []
    waiting = threading.Semaphore(0)

    def wait_for_gate(seen: list[int]) -> None:
        seen.append(threading.get_native_id())
        waiting.release()
        assert gate.wait(60)

    handle = mp.parallel(wait_for_gate)(in_pool)
    with mp.Executor(max_workers=1) as executor:
        future = executor.submit(wait_for_gate, in_executor)
        assert waiting.acquire(timeout=30) and waiting.acquire(timeout=30)
        sizer = backend._autosizer
        assert sizer is not None and sizer._activity is not None
        measured = sizer._activity()
        gate.set()
        future.result(timeout=30)
    handle.get(timeout=30)
    assert in_pool[0] in measured
    assert in_executor[0] not in measured


def test_the_pool_lists_no_worker_that_ended(gate: threading.Event) -> None:
    # The sizer measures the listed threads by id, and Linux gives an ended thread's id to a
    # later thread once ids wrap (at pid_max): an Executor's, measured as the pool's worker.
    backend = _runtime.get_backend("thread")
    assert isinstance(backend, ThreadBackend)
    mp.configure_thread_pool(num_threads=4)
    workers: set[threading.Thread] = set()
    started = threading.Semaphore(0)

    def hold() -> None:
        workers.add(threading.current_thread())
        started.release()
        assert gate.wait(60)

    handles = [mp.parallel(hold)() for _ in range(4)]
    for _ in range(4):
        assert started.acquire(timeout=30)
    mp.configure_thread_pool(num_threads=1)  # three of them retire as their task returns
    gate.set()
    for handle in handles:
        handle.get(timeout=30)
    assert wait_until(lambda: sum(thread.is_alive() for thread in workers) <= 1, 30)
    with backend._lock:
        listed = list(backend._threads)
    assert all(thread.is_alive() for thread in listed)


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


def test_a_rejected_call_leaves_the_auto_sizing_on() -> None:
    mp.configure_thread_pool(num_threads="auto")
    try:
        with pytest.raises(ValueError, match="stack_size must be at least"):
            mp.configure_thread_pool(num_threads=4, stack_size=1)
        assert mp.get_thread_pool_info()["auto"] is True
    finally:
        mp.configure_thread_pool(num_threads=default_thread_count())
    assert mp.get_thread_pool_info()["auto"] is False


def test_a_sizing_whose_thread_could_not_start_can_be_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its unstarted thread was kept, and the fixed size configured next failed joining it
    ("cannot join thread before it is started")."""
    start = threading.Thread.start

    def refused(thread: threading.Thread) -> None:
        if thread.name == "makeparallel-autosize":
            raise RuntimeError("can't start new thread")
        start(thread)

    cores = default_thread_count()
    monkeypatch.setattr(threading.Thread, "start", refused)
    try:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            mp.configure_thread_pool(num_threads="auto")
        assert mp.get_thread_pool_info()["auto"] is False  # no thread samples it
        monkeypatch.setattr(threading.Thread, "start", start)
        mp.configure_thread_pool(num_threads=cores + 1)
        assert mp.get_thread_pool_info()["num_threads"] == cores + 1
    finally:
        monkeypatch.setattr(threading.Thread, "start", start)
        mp.configure_thread_pool(num_threads=cores)
    assert mp.get_thread_pool_info()["auto"] is False


def test_num_threads_none_ends_the_auto_sizing_at_the_usable_cores() -> None:
    # As the README shows: mp.configure_thread_pool(num_threads=None) goes back to a
    # fixed size, the usable cores. It left the pool sized automatically.
    cores = default_thread_count()
    mp.configure_thread_pool(num_threads="auto")
    try:
        mp.configure_thread_pool()  # num_threads not given: the sizing is kept
        assert mp.get_thread_pool_info()["auto"] is True
        mp.configure_thread_pool(num_threads=None)
        info = mp.get_thread_pool_info()
        assert (info["auto"], info["num_threads"]) == (False, cores)
        mp.configure_thread_pool(num_threads=cores + 1)
        mp.configure_thread_pool()
        assert mp.get_thread_pool_info()["num_threads"] == cores + 1
        mp.configure_thread_pool(num_threads=None)
        assert mp.get_thread_pool_info()["num_threads"] == cores
    finally:
        mp.configure_thread_pool(num_threads=cores)


def test_a_fixed_size_set_as_the_sizer_decides_is_kept() -> None:
    # configure_thread_pool(num_threads=n) stops the sizer, but its thread may be
    # past its decision already: the size it then applies must not replace n.
    backend = ThreadBackend()
    try:
        backend.configure("auto", None)
        sizer = backend._autosizer
        assert sizer is not None
        backend.configure(default_thread_count() + 3, None)
        sizer._resize(default_thread_count() + 9)  # the last step of the stopped sizer
        info = backend.info()
        assert (info["auto"], info["num_threads"]) == (False, default_thread_count() + 3)
    finally:
        backend.close(cancel_pending=True)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("when", ["before its resize", "after its resize"])
def test_a_fixed_size_set_as_auto_sizing_starts_is_kept_and_leaves_no_sampling_thread(when: str) -> None:
    # configure_thread_pool(num_threads=n) from one thread as another's num_threads="auto"
    # was between choosing its sizer and starting its thread: the stop found no thread
    # to stop, the start came after it, and that thread sampled for good, sizing nothing;
    # and the auto sizing's resize to the cores, where it came after, replaced n.
    backend = ThreadBackend()
    reached, go = threading.Event(), threading.Event()
    resize = backend._resize
    cores = default_thread_count()

    def held(num_threads: int | None, *args: object, **kwargs: object) -> None:
        if num_threads == cores and when == "after its resize":
            resize(num_threads, *args, **kwargs)  # type: ignore[arg-type]
        if num_threads == cores:  # the auto sizing's own resize
            reached.set()
            assert go.wait(10)
        if num_threads != cores or when == "before its resize":
            resize(num_threads, *args, **kwargs)  # type: ignore[arg-type]

    backend._resize = held  # type: ignore[method-assign]
    before = set(threading.enumerate())
    auto = threading.Thread(target=backend.configure, args=("auto", None))
    try:
        auto.start()
        assert reached.wait(10)
        backend.configure(cores + 3, None)  # as the other thread starts the sizing
        go.set()
        auto.join(10)
        assert not auto.is_alive()
        info = backend.info()
        assert (info["auto"], info["num_threads"]) == (False, cores + 3)
        samplers = [t for t in threading.enumerate() if t not in before and t.name == "makeparallel-autosize"]
        for thread in samplers:
            thread.join(5)
        assert not [t for t in samplers if t.is_alive()], "a sampling thread of a sizer no longer in use is left"
    finally:
        go.set()
        backend.close(cancel_pending=True)
        backend.end_threads(5)


def test_a_sizing_whose_thread_could_not_start_leaves_the_size_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    # The call raised, with the pool no longer sized automatically, yet resized to the
    # cores: a refused num_threads="auto" changed the size configured before it.
    backend = ThreadBackend()
    start = threading.Thread.start

    def refused(thread: threading.Thread) -> None:
        if thread.name == "makeparallel-autosize":
            raise RuntimeError("can't start new thread")
        start(thread)

    try:
        backend.configure(default_thread_count() + 2, None)
        monkeypatch.setattr(threading.Thread, "start", refused)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            backend.configure("auto", None)
        monkeypatch.setattr(threading.Thread, "start", start)
        info = backend.info()
        assert (info["auto"], info["num_threads"]) == (False, default_thread_count() + 2)
    finally:
        monkeypatch.setattr(threading.Thread, "start", start)
        backend.close(cancel_pending=True)
        backend.end_threads(5)


@pytest.mark.timeout(30)
def test_two_auto_sizings_started_at_once_leave_one_sampling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two num_threads="auto" calls from two threads: each stopped the sizer it found (none),
    # then set its own. The one set second replaced the first, whose thread had started,
    # without stopping it: that thread sampled for good, sizing nothing, and no later
    # configure() could stop it (looping "auto" from two threads left hundreds of them).
    backend = ThreadBackend()
    reached, go = threading.Event(), threading.Event()
    cores = default_thread_count()
    held_thread: list[threading.Thread] = []

    def counted() -> int:
        if threading.current_thread() in held_thread:  # stopped what it found; its sizer is not set yet
            reached.set()
            assert go.wait(10)
        return cores

    monkeypatch.setattr(_thread, "default_thread_count", counted)
    before = set(threading.enumerate())
    second = threading.Thread(target=backend.configure, args=("auto", None))
    held_thread.append(second)
    first_sizer = None
    try:
        second.start()
        assert reached.wait(10)
        backend.configure("auto", None)  # the first, set and started in full
        first_sizer = backend._autosizer
        go.set()
        second.join(10)
        assert not second.is_alive()
        assert backend._autosizer is not first_sizer and backend.info()["auto"]
        backend.configure(cores + 3, None)  # ends the sizing: no sampling thread is left
        assert (backend.info()["auto"], backend.info()["num_threads"]) == (False, cores + 3)
        samplers = [t for t in threading.enumerate() if t not in before and t.name == "makeparallel-autosize"]
        for thread in samplers:
            thread.join(5)
        assert not [t for t in samplers if t.is_alive()], "the sampling thread of the sizer replaced is left"
    finally:
        go.set()
        if first_sizer is not None:  # (left sampling where the replacement did not stop it)
            first_sizer.stop()
        backend.close(cancel_pending=True)
        backend.end_threads(5)
