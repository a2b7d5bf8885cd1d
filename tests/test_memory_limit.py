"""Memory-aware throttling: the budget read from a fake cgroup tree, pause and resume of the pools."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _memory_guard, _runtime
from makeparallel._backends._base import Backend
from makeparallel._backends._thread import ThreadBackend
from makeparallel._memory_budget import MemoryBudget, cgroup_memory, memory_budget
from pool_helpers import resize, wait_until
from fake_cgroup import fake_cgroup

GiB = 1024**3


# -- the budget -------------------------------------------------------------------------------


def test_v2_limit_and_usage_less_inactive_file(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path,
        "0::/app/web\n",
        {
            "app/web/memory.max": f"{2 * GiB}\n",
            "app/web/memory.current": f"{GiB}\n",
            "app/web/memory.stat": f"anon 1000\ninactive_file {GiB // 4}\nactive_file 5\n",
        },
    )
    budget = cgroup_memory(root, proc)
    assert budget == MemoryBudget(GiB - GiB // 4, 2 * GiB, "cgroup v2")
    assert budget.percent == pytest.approx(37.5)


def test_v2_walks_up_to_the_tightest_limit_and_max_means_none(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path,
        "0::/app/web\n",
        {
            "app/web/memory.max": "max\n",
            "app/web/memory.current": "100\n",
            "app/memory.max": f"{GiB}\n",
            "app/memory.current": f"{GiB // 2}\n",
            "memory.max": f"{4 * GiB}\n",
            "memory.current": f"{GiB}\n",
        },
    )
    assert cgroup_memory(root, proc) == MemoryBudget(GiB // 2, GiB, "cgroup v2")


def test_the_level_nearest_its_limit_wins_not_the_smallest_limit(tmp_path: Path) -> None:
    # A pod's limit shared by its containers: this one is far under its own 2 GiB,
    # but the pod, at 4 GiB, is nearly full, and its OOM killer ends this process too.
    root, proc = fake_cgroup(
        tmp_path,
        "0::/pod/app\n",
        {
            "pod/app/memory.max": f"{2 * GiB}\n",
            "pod/app/memory.current": f"{GiB // 2}\n",
            "pod/memory.max": f"{4 * GiB}\n",
            "pod/memory.current": f"{4 * GiB - GiB // 8}\n",
        },
    )
    budget = cgroup_memory(root, proc)
    assert budget == MemoryBudget(4 * GiB - GiB // 8, 4 * GiB, "cgroup v2")
    assert budget is not None and budget.percent > 95


def test_v1_limit_usage_and_its_unlimited_value(tmp_path: Path) -> None:
    root, proc = fake_cgroup(
        tmp_path,
        "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n",
        {
            "memory/docker/abc/memory.limit_in_bytes": f"{GiB}\n",
            "memory/docker/abc/memory.usage_in_bytes": f"{GiB // 2}\n",
            "memory/docker/abc/memory.stat": f"cache 7\ntotal_inactive_file {GiB // 4}\n",
            "memory/docker/memory.limit_in_bytes": "9223372036854771712\n",
        },
    )
    assert cgroup_memory(root, proc) == MemoryBudget(GiB // 4, GiB, "cgroup v1")


def test_no_cgroup_limit_falls_back_to_the_host_or_rlimit(tmp_path: Path) -> None:
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"memory.max": "max\n"})
    assert cgroup_memory(root, proc) is None
    budget = memory_budget(root, proc)
    assert budget.source in ("RLIMIT_AS", "host") and 0 < budget.used and budget.limit > 0
    unreadable = memory_budget(str(tmp_path / "none"), str(tmp_path / "missing"))
    assert unreadable.source in ("RLIMIT_AS", "host")


# -- the guard ----------------------------------------------------------------------------------


class FakeMemory:
    """An injectable reader: the test sets the figures."""

    def __init__(self, percent: float) -> None:
        self.percent = percent

    def __call__(self) -> MemoryBudget:
        return MemoryBudget(int(self.percent * 10), 1000, "cgroup v2")


def test_the_guard_pauses_and_resumes_only_at_crossings() -> None:
    calls: list[bool] = []
    memory = FakeMemory(50)
    guard = _memory_guard.MemoryGuard(80.0, calls.append, memory)
    assert guard.check() is False and calls == []
    memory.percent = 90
    assert guard.check() is True and guard.check() is True
    memory.percent = 70
    assert guard.check() is False
    memory.percent = 95
    guard.check()
    assert calls == [True, False, True] and guard.pauses == 2
    guard.stop()  # never started: stopping resumes the pools
    assert calls[-1] is False and guard.snapshot()["paused"] is False


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (100.5, ValueError), (-1, ValueError), ("80", TypeError), (True, TypeError)])
def test_bad_limit_names_the_argument(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_memory_percent"):
        mp.configure_memory_limit(value)


@pytest.fixture
def fake_memory(monkeypatch: pytest.MonkeyPatch) -> Any:
    """configure_memory_limit() reading a fake budget; turned off at teardown."""
    memory = FakeMemory(50)
    monkeypatch.setattr(_memory_guard, "memory_budget", memory)
    original = _memory_guard.configure_memory_limit

    def configure(percent: Any, pause: Any, reader: Any = None) -> Any:
        return original(percent, pause, memory)

    monkeypatch.setattr(_memory_guard, "configure_memory_limit", configure)
    yield memory
    mp.configure_memory_limit(None)


def test_a_paused_thread_pool_starts_one_task_at_a_time_and_resumes(fake_memory: FakeMemory, gate: threading.Event) -> None:
    resize(4)
    running = 0
    high_water = 0
    lock = threading.Lock()
    first_running = threading.Event()

    @mp.parallel
    def work(i: int) -> int:
        nonlocal running, high_water
        with lock:
            running += 1
            high_water = max(high_water, running)
        first_running.set()
        assert gate.wait(30)
        with lock:
            running -= 1
        return i

    fake_memory.percent = 95
    mp.configure_memory_limit(80)
    guard = _memory_guard.current_guard()
    assert guard is not None and guard.paused
    handles = [work(i) for i in range(8)]  # submissions are accepted while paused
    assert first_running.wait(30)
    assert mp.get_thread_pool_info()["paused"] is True
    report = mp.health(memory_limit_percent=100)
    assert report["status"] == "degraded"
    assert any("95% used (cgroup v2: 950 of 1000 bytes), over the limit of 80%" in r for r in report["reasons"])
    assert mp.metrics_snapshot()["memory_limit"]["pauses"] == 1
    with lock:
        assert running == 1  # one at a time while paused
    fake_memory.percent = 10  # memory falls: the guard's next read resumes the pools
    assert wait_until(lambda: not mp.get_thread_pool_info()["paused"])
    assert wait_until(lambda: running == 4)  # all four workers take tasks again
    gate.set()
    assert mp.gather(handles, timeout=30) == list(range(8))
    assert high_water == 4


def test_children_of_running_tasks_are_exempt(fake_memory: FakeMemory) -> None:
    resize(2)
    fake_memory.percent = 99
    mp.configure_memory_limit(50)

    @mp.parallel
    def child(i: int) -> int:
        return i * i

    @mp.parallel
    def parent() -> list[int]:
        return mp.gather([child(i) for i in range(5)])  # run inline while the pool is paused

    assert parent().get(timeout=30) == [0, 1, 4, 9, 16]


def test_the_process_pool_pauses_too(fake_memory: FakeMemory) -> None:
    fake_memory.percent = 99
    mp.configure_memory_limit(50)
    handles = [mp.parallel(backend="process")(abs)(-i) for i in range(6)]
    assert mp.get_process_pool_info()["paused"] is True
    assert mp.gather(handles, timeout=60) == list(range(6))  # one at a time, but all of them


@pytest.mark.timeout(30)
def test_executor_pools_pause_and_resume_too(fake_memory: FakeMemory) -> None:
    # An mp.Executor runs tasks on a pool of its own, which no backend name reaches:
    # the guard paused the runtime's pools only, and an executor's started every
    # task it had room for however full memory was.
    before = mp.Executor(max_workers=4)
    try:
        fake_memory.percent = 99
        mp.configure_memory_limit(50)
        after = mp.Executor(max_workers=4)  # made while paused: it starts paused
        try:
            assert before._backend.info()["paused"] is True
            assert after._backend.info()["paused"] is True
            assert after.submit(abs, -3).result(timeout=10) == 3  # one at a time, but it runs
            fake_memory.percent = 10  # memory falls: the guard's next read resumes them
            assert wait_until(lambda: not (before._backend.info()["paused"] or after._backend.info()["paused"]))
        finally:
            after.shutdown()
    finally:
        before.shutdown()


def test_none_turns_it_off(fake_memory: FakeMemory) -> None:
    fake_memory.percent = 99
    mp.configure_memory_limit(50)
    assert mp.get_thread_pool_info()["paused"] is True
    mp.configure_memory_limit(None)
    assert mp.get_thread_pool_info()["paused"] is False
    assert _memory_guard.current_guard() is None
    assert mp.metrics_snapshot()["memory_limit"] is None


def test_figures_that_cannot_be_read_are_logged_once_until_read_again(caplog: pytest.LogCaptureFixture) -> None:
    # Read every 100 ms: a reader that keeps failing logged a traceback ten times a second.
    memory = FakeMemory(50)
    failing = [True]

    def reader() -> MemoryBudget:
        if failing[0]:
            raise PermissionError("memory.current")
        return memory()

    guard = _memory_guard.MemoryGuard(80.0, lambda paused: None, reader)
    for _ in range(5):
        guard.check()
    assert caplog.text.count("could not read the memory figures") == 1
    failing[0] = False
    guard.check()
    failing[0] = True
    guard.check()  # failing again after a read: said again
    assert caplog.text.count("could not read the memory figures") == 2


def _four_threads_made_by(made_by: str, name: str) -> tuple[Backend, Callable[[], None]]:
    """A pool of four threads, made by an ``mp.Executor`` or as backend ``name`` is first used, and what stops it.

    The stop shuts the executor down, or forgets the backend and ends its threads.
    """
    if made_by == "Executor":
        executor = mp.Executor(max_workers=4)
        return executor._backend, executor.shutdown
    pool = _runtime._create(name, lambda: ThreadBackend(num_threads=4))

    def stop() -> None:
        _runtime._backends.pop(name, None)
        pool.close(cancel_pending=True)
        pool.terminate()

    return pool, stop


@pytest.mark.timeout(30)
@pytest.mark.parametrize("made_by", ["Executor", "first use of a backend"])
def test_a_pool_made_as_memory_falls_is_not_left_paused(
    fake_memory: FakeMemory, monkeypatch: pytest.MonkeyPatch, made_by: str
) -> None:
    # A new pool read that the pools were paused, the guard then resumed every
    # pool listed (this one too, or not yet listed), and the pool paused itself:
    # one worker at a time for good, memory long under the limit.
    fake_memory.percent = 99
    mp.configure_memory_limit(50)
    guard = _memory_guard.current_guard()
    assert guard is not None and guard.paused and guard._thread is not None
    guard._stop.set()  # the test reads memory for the guard: the resume falls where it says
    guard._thread.join(10)
    real = ThreadBackend.set_paused
    paused_first: list[ThreadBackend] = []

    def set_paused(self: ThreadBackend, paused: bool) -> None:
        if paused and not paused_first:  # the new pool pauses: memory fell just before
            paused_first.append(self)
            fake_memory.percent = 10
            assert guard.check() is False  # the guard's resume
        real(self, paused)

    monkeypatch.setattr(ThreadBackend, "set_paused", set_paused)
    pool, stop = _four_threads_made_by(made_by, "memory-falls-as-made")
    try:
        assert paused_first == [pool]
        assert pool.info()["paused"] is False
    finally:
        stop()


class _LockThatSaysItWaited:
    """A lock that sets ``waited`` when a thread finds it taken and waits for it."""

    def __init__(self, waited: threading.Event) -> None:
        self._lock = threading.Lock()
        self.waited = waited

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.waited.set()
            self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def locked(self) -> bool:  # read, as a lock is, by configure_memory_limit() on the main thread
        return self._lock.locked()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("made_by", ["Executor", "first use of a backend"])
def test_a_pool_made_as_the_limit_is_replaced_follows_the_new_guard(
    fake_memory: FakeMemory, monkeypatch: pytest.MonkeyPatch, made_by: str
) -> None:
    # The new pool paused itself as the old guard said; configure_memory_limit()
    # then stopped the old guard (resuming every pool) and the new one, memory
    # over its limit too, paused every pool, this one included; and the pool,
    # reading the old guard again, found it resumed and resumed itself: full
    # size over the new limit until memory fell and rose again.
    fake_memory.percent = 99
    mp.configure_memory_limit(50)
    either = threading.Event()  # the replacement is done, or waits for the pool
    monkeypatch.setattr(_memory_guard, "_guard_lock", _LockThatSaysItWaited(either))
    real = ThreadBackend.set_paused
    replacing: list[threading.Thread] = []

    def replace() -> None:
        mp.configure_memory_limit(60)
        either.set()

    def set_paused(self: ThreadBackend, paused: bool) -> None:
        if paused and not replacing:  # the new pool pauses itself: the limit is replaced meanwhile
            replacing.append(threading.Thread(target=replace, name="replaces-the-limit"))
            replacing[0].start()
            assert either.wait(20)
        real(self, paused)

    monkeypatch.setattr(ThreadBackend, "set_paused", set_paused)
    pool, stop = _four_threads_made_by(made_by, "limit-replaced-as-made")
    try:
        replacing[0].join(20)
        guard = _memory_guard.current_guard()
        assert guard is not None and guard.limit_percent == 60 and guard.paused
        assert pool.info()["paused"] is True
    finally:
        stop()


class _InterruptedIfTaken:
    """Stands for a guard's lock of its pauses: a thread that finds it taken gets Ctrl-C there, and ``interrupted`` is set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.interrupted = threading.Event()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.interrupted.set()
            raise KeyboardInterrupt

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


@pytest.mark.timeout(30)
def test_ctrl_c_as_the_limit_is_replaced_does_not_leave_the_pools_paused(fake_memory: FakeMemory) -> None:
    # Ctrl-C as the old guard's stop() waited (for its thread, then for the pause
    # under way) skipped its resume of the pools: no guard left to resume them,
    # they ran one task at a time for good. The pause under way resumes them.
    mp.configure_memory_limit(50)
    executor = mp.Executor(max_workers=4)
    try:
        guard = _memory_guard.current_guard()
        assert guard is not None and guard._thread is not None and executor._backend.info()["paused"] is False
        thread = guard._thread
        pausing = threading.Event()
        go_on = threading.Event()
        real_pause = guard._pause

        def pause(paused: bool) -> None:
            if paused:
                pausing.set()
                assert go_on.wait(20)
            real_pause(paused)

        guard._pause = pause
        lock = guard._pausing = _InterruptedIfTaken()  # type: ignore[assignment]
        fake_memory.percent = 99
        assert pausing.wait(10)  # the guard's thread is pausing the pools
        try:
            with pytest.raises(KeyboardInterrupt):
                mp.configure_memory_limit(None)
            assert lock.interrupted.is_set()
        finally:
            go_on.set()
            thread.join(10)
        assert not thread.is_alive()
        assert _memory_guard.current_guard() is None
        assert executor._backend.info()["paused"] is False
    finally:
        executor.shutdown()


class _ThreadStuckInItsRead:
    """Stands for a guard's thread stuck in its read: a join waits its whole timeout, here until ``released``.

    No clock: the join of a real stuck thread returned after 5 s, which a test will not wait for.
    """

    def __init__(self, released: threading.Event) -> None:
        self.released = released

    def join(self, timeout: float | None = None) -> None:
        self.released.wait()


class _JoinTimedOut:
    """Stands for a guard's thread that did not end within stop()'s join: the join returns at once."""

    def join(self, timeout: float | None = None) -> None:
        pass


class _ReadHeldBack:
    """A reader of ``memory`` whose read after ``hold()`` waits in the read until ``release()``."""

    def __init__(self, memory: FakeMemory) -> None:
        self.memory = memory
        self.held = threading.Event()
        self.entered = threading.Event()
        self.released = threading.Event()

    def hold(self) -> None:
        self.held.set()

    def release(self) -> None:
        self.released.set()

    def __call__(self) -> MemoryBudget:
        if self.held.is_set() and not self.released.is_set():
            self.entered.set()
            assert self.released.wait(30)
        return self.memory()


@pytest.mark.timeout(30)
def test_a_guard_stopped_while_its_thread_reads_never_pauses_again() -> None:
    # stop() waited 5 s for the thread, then resumed the pools and returned; the
    # thread, its read done later, found memory over the limit and paused them:
    # one task at a time for good, no guard left to resume them.
    calls: list[bool] = []
    memory = FakeMemory(50)
    reader = _ReadHeldBack(memory)
    guard = _memory_guard.MemoryGuard(80.0, calls.append, reader)
    guard.start()
    thread = guard._thread
    assert thread is not None
    reader.hold()
    assert reader.entered.wait(10)  # the thread is in its read
    memory.percent = 95
    guard._thread = _JoinTimedOut()  # type: ignore[assignment]
    try:
        guard.stop()
        assert calls == []
    finally:
        reader.release()
        thread.join(10)
    assert not thread.is_alive()
    assert calls == [] and guard.snapshot()["paused"] is False


@pytest.mark.timeout(30)
def test_a_guard_stopped_while_its_thread_pauses_the_pools_leaves_them_resumed() -> None:
    # The thread was pausing the pools when stop() came: stop() resumed them,
    # and the thread's pause, ending after, left them paused for good.
    done: list[bool] = []
    pausing = threading.Event()
    go_on = threading.Event()

    def pause(paused: bool) -> None:
        if paused and not go_on.is_set():
            pausing.set()
            assert go_on.wait(30)
        done.append(paused)

    memory = FakeMemory(50)
    guard = _memory_guard.MemoryGuard(80.0, pause, memory)
    either = threading.Event()  # stop() returned, or waits for the pause under way
    guard._pausing = _LockThatSaysItWaited(either)  # type: ignore[assignment]
    guard.start()
    thread = guard._thread
    assert thread is not None
    memory.percent = 95
    assert pausing.wait(10)  # the thread is in its pause of the pools
    guard._thread = _JoinTimedOut()  # type: ignore[assignment]

    def stop() -> None:
        guard.stop()
        either.set()

    stopping = threading.Thread(target=stop, name="stops-the-guard")
    stopping.start()
    try:
        assert either.wait(10)
    finally:
        go_on.set()
        stopping.join(10)
        thread.join(10)
    assert not stopping.is_alive() and not thread.is_alive()
    assert done[-1] is False and done.count(True) == 1, done
    assert guard.snapshot()["paused"] is False
    memory.percent = 99
    assert guard.check() is False and done[-1] is False  # stopped is final: a check no longer pauses


@pytest.mark.timeout(30)
@pytest.mark.parametrize("made_by", ["Executor", "first use of a backend"])
def test_a_pool_made_as_the_limit_is_replaced_does_not_wait_for_the_old_guards_read(
    fake_memory: FakeMemory, made_by: str
) -> None:
    # configure_memory_limit() waited up to 5 s for the old guard's thread under
    # the lock a new pool follows the guard under: making a pool waited as long.
    reader = _ReadHeldBack(fake_memory)
    mp.configure_memory_limit(80)
    old = _memory_guard.current_guard()
    assert old is not None and old._thread is not None
    old._reader = reader
    reader.hold()
    thread = old._thread
    try:
        assert reader.entered.wait(10)  # the old guard's thread is in its read
        old._thread = _ThreadStuckInItsRead(reader.released)  # type: ignore[assignment]
        replaced = threading.Event()
        made = threading.Event()
        pools: list[tuple[Backend, Callable[[], None]]] = []

        def replace() -> None:
            mp.configure_memory_limit(60)
            replaced.set()

        def make() -> None:
            pools.append(_four_threads_made_by(made_by, "made-as-the-limit-is-replaced"))
            made.set()

        replacing = threading.Thread(target=replace, name="replaces-the-limit")
        making = threading.Thread(target=make, name="makes-a-pool")
        replacing.start()
        making.start()
        assert replaced.wait(10), "replacing the limit waited for the old guard's read"
        assert made.wait(10), "making a pool waited for the old guard's read"
    finally:
        reader.release()
        replacing.join(10)
        making.join(10)
        thread.join(10)
        for _, stop in pools:
            stop()
    guard = _memory_guard.current_guard()
    assert guard is not None and guard is not old and guard.limit_percent == 60


def _wait_by_get(quick: Any) -> list[int]:
    return [quick(0).get()]


def _wait_by_parallel_map(quick: Any) -> list[int]:
    return mp.parallel_map(quick, range(3))


def _wait_in_a_group(quick: Any) -> list[int]:
    with mp.ParallelContext() as ctx:
        for i in range(3):
            ctx.submit(quick, i)
    return ctx.results()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wait_for", [_wait_by_get, _wait_by_parallel_map, _wait_in_a_group])
def test_a_paused_pool_starts_no_queued_task_in_the_thread_that_waits_for_it(
    fake_memory: FakeMemory, gate: threading.Event, wait_for: Callable[[Any], list[int]]
) -> None:
    # A thread outside the pool's tasks that waited for a queued task (get(), a map, a
    # group's end) ran it itself: beside the pool's one worker, one more task per such
    # thread ran while memory was over the limit (two at once here; a service's request
    # threads, each mapping, ran one each).
    resize(4)
    running = 0
    high_water = 0
    ran_on: set[str] = set()
    lock = threading.Lock()
    first_running = threading.Event()

    def count(delta: int) -> None:
        nonlocal running, high_water
        with lock:
            running += delta
            high_water = max(high_water, running)

    @mp.parallel
    def hold() -> None:
        count(1)
        first_running.set()
        assert gate.wait(30)
        count(-1)

    @mp.parallel
    def quick(i: int) -> int:
        count(1)
        ran_on.add(threading.current_thread().name)
        count(-1)
        return i

    fake_memory.percent = 95
    mp.configure_memory_limit(80)
    held = hold()  # the pool's one worker runs it
    assert first_running.wait(30)
    results: list[list[int]] = []
    waiter = threading.Thread(target=lambda: results.append(wait_for(quick)), name="waiter")
    waiter.start()
    # Queued behind the task that holds the one worker; run by the waiter, it left the queue at once.
    assert wait_until(lambda: mp.get_thread_pool_info()["queued_tasks"] >= 1 or not waiter.is_alive())
    gate.set()
    waiter.join(30)
    assert not waiter.is_alive()
    held.get(timeout=30)
    assert results and results[0] == list(range(len(results[0])))
    assert high_water == 1, "a queued task started beside the running one while paused"
    assert "waiter" not in ran_on


@pytest.mark.timeout(30)
def test_a_paused_pool_whose_places_are_all_stuck_lets_the_waiter_run_the_queued_task(
    fake_memory: FakeMemory, gate: threading.Event
) -> None:
    # Paused, the pool keeps one worker and replaces one stuck thread: two tasks cancelled
    # as they ran (still running) fill both places, and no worker takes a queued task.
    # A thread outside the tasks that waited for one was refused it, as if a worker
    # would run it, and waited until a stuck task returned or memory fell: for good
    # where neither came. With no worker to take it, it runs it itself, as before.
    resize(4)
    started = threading.Semaphore(0)

    @mp.parallel
    def ignores_cancel() -> None:
        started.release()
        assert gate.wait(30)

    @mp.parallel
    def quick(i: int) -> int:
        return i

    stuck = [ignores_cancel() for _ in range(2)]
    for _ in stuck:
        assert started.acquire(timeout=30)
    for handle in stuck:
        assert handle.cancel()
    assert mp.get_thread_pool_info()["stuck_threads"] == 2
    fake_memory.percent = 95
    mp.configure_memory_limit(80)
    assert mp.get_thread_pool_info()["paused"] is True
    handle = quick(7)
    results: list[int] = []
    waiter = threading.Thread(target=lambda: results.append(handle.get()), name="waiter", daemon=True)
    waiter.start()
    waiter.join(10)  # bounded: it ends at once, or never while the tasks stay stuck
    stopped_waiting = not waiter.is_alive()
    gate.set()  # the stuck tasks return, and a worker runs the task if the waiter did not
    waiter.join(30)
    assert stopped_waiting, "the waiter waited for a worker the paused pool did not have"
    assert results == [7]
