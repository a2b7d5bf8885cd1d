"""The thread pool: lazy start, sizing, introspection, priorities, inline claiming.

Every ordering asserted here is forced by events and barriers; nothing waits on
the clock except bounded polls of a condition the pool reaches by itself (a
thread retiring), which give up after a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _runtime
from pool_helpers import resize, wait_until

SRC = Path(__file__).resolve().parents[1] / "src"
WORKER_PREFIX = "makeparallel-thread-"


# -- helpers ----------------------------------------------------------------------------


def hold(count: int, gate: threading.Event) -> list[mp.AsyncHandle[str]]:
    """Occupy ``count`` workers with tasks blocked on ``gate``; return once all run."""
    running = threading.Barrier(count + 1)

    @mp.parallel
    def held() -> str:
        running.wait(5)
        assert gate.wait(30)
        return "held"

    handles = [held() for _ in range(count)]
    running.wait(5)
    return handles


def run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        timeout=timeout,
        capture_output=True,
        text=True,
        env=env,
    )


# -- lazy start and configuration before start ------------------------------------------


@pytest.mark.timeout(40)
def test_pool_starts_no_thread_before_the_first_submission() -> None:
    result = run_python(
        """
        import threading
        import makeparallel as mp

        def workers():
            return [t for t in threading.enumerate() if t.name.startswith("makeparallel-thread-")]

        assert workers() == [], workers()

        @mp.parallel
        def where():
            return threading.current_thread().name

        assert workers() == [], "decorating started threads"
        info = mp.get_thread_pool_info()
        assert info["live_threads"] == 0, info
        assert workers() == [], "asking for info started threads"
        name = where().get(timeout=5)  # a bounded get never runs the task inline
        assert name.startswith("makeparallel-thread-"), name
        assert workers(), "no worker thread after a submission"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.timeout(40)
def test_configure_before_the_pool_starts() -> None:
    result = run_python(
        """
        import threading
        import makeparallel as mp

        mp.configure_thread_pool(num_threads=3)
        info = mp.get_thread_pool_info()
        assert info["num_threads"] == 3 and info["live_threads"] == 0, info

        together = threading.Barrier(4)

        @mp.parallel
        def meet():
            together.wait(5)  # only passes if 3 tasks run at once
            return threading.current_thread().name

        handles = [meet() for _ in range(3)]
        together.wait(5)
        names = {h.get(timeout=5) for h in handles}
        assert len(names) == 3, names
        assert mp.get_thread_pool_info()["live_threads"] == 3
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.timeout(40)
def test_stack_size_is_accepted_and_does_not_leak_into_other_threads() -> None:
    # In a subprocess: threading.stack_size() is process-wide, and what it leaks
    # must not reach the rest of the suite.
    result = run_python(
        """
        import threading
        import makeparallel as mp

        mp.configure_thread_pool(num_threads=2, stack_size=256 * 1024)
        assert mp.get_thread_pool_info()["stack_size"] == 256 * 1024

        @mp.parallel
        def depth(n):
            return 0 if n == 0 else 1 + depth.__wrapped__(n - 1)

        assert [h.get(timeout=5) for h in [depth(100) for _ in range(4)]] == [100] * 4
        # threading.stack_size() is process-wide: the pool must put it back.
        assert threading.stack_size() == 0, threading.stack_size()
        mp.configure_thread_pool(stack_size=32 * 1024)  # the documented minimum
        assert mp.get_thread_pool_info()["stack_size"] == 32 * 1024
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.timeout(40)
def test_stack_size_none_goes_back_to_the_platform_default_and_leaving_it_out_keeps_it() -> None:
    # The docstring says None is the platform default; it was taken as "not given", so a
    # stack size once set stayed for every thread the pool started after.
    result = run_python(
        """
        import sys
        import makeparallel as mp

        mp.configure_thread_pool(num_threads=2, stack_size=256 * 1024)
        mp.configure_thread_pool(num_threads=3)  # stack_size left out: kept
        assert mp.get_thread_pool_info()["stack_size"] == 256 * 1024, mp.get_thread_pool_info()
        mp.configure_thread_pool(stack_size=None)
        info = mp.get_thread_pool_info()
        assert info["stack_size"] is None and info["num_threads"] == 3, info

        @mp.parallel
        def stack_limit():  # glibc maps a thread's default stack as RLIMIT_STACK says
            import ctypes, ctypes.util
            libc = ctypes.CDLL(ctypes.util.find_library("c"))
            libc.pthread_self.restype = ctypes.c_ulong
            libc.pthread_getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
            attr = ctypes.create_string_buffer(256)  # pthread_attr_t: 56 bytes on glibc x86-64
            size = ctypes.c_size_t()
            assert libc.pthread_getattr_np(libc.pthread_self(), attr) == 0
            libc.pthread_attr_getstacksize(attr, ctypes.byref(size))
            libc.pthread_attr_destroy(attr)
            return size.value

        if sys.platform.startswith("linux"):  # pthread_getattr_np is glibc's (and musl's)
            assert stack_limit().get(timeout=10) > 256 * 1024
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "num_threads must be an int >= 1, got 0"),
        (-1, ValueError, "num_threads must be an int >= 1, got -1"),
        (1.5, TypeError, "num_threads must be an int >= 1, got 1.5"),
        (True, TypeError, "num_threads must be an int >= 1, got True"),
    ],
)
def test_bad_num_threads_is_rejected(value: Any, error: type[Exception], message: str) -> None:
    before = mp.get_thread_pool_info()["num_threads"]
    with pytest.raises(error, match=f"^{message}$"):
        mp.configure_thread_pool(num_threads=value)
    assert mp.get_thread_pool_info()["num_threads"] == before


@pytest.mark.parametrize(
    ("value", "error", "pattern"),
    [
        (0, ValueError, r"stack_size must be at least 32768 bytes \(32 KiB\) or None, got 0"),
        (1000, ValueError, r"stack_size must be at least 32768 bytes .* got 1000"),
        ("x", TypeError, r"stack_size must be an int number of bytes or None, got 'x'"),
        (True, TypeError, r"stack_size must be an int number of bytes or None, got True"),
        (2**70, ValueError, r"stack_size must be at most \d+ bytes \(sys.maxsize\), got 1180591620717411303424"),
    ],
)
def test_bad_stack_size_is_rejected(value: Any, error: type[Exception], pattern: str) -> None:
    before = mp.get_thread_pool_info()
    with pytest.raises(error, match=pattern):
        mp.configure_thread_pool(num_threads=before["num_threads"] + 1, stack_size=value)
    after = mp.get_thread_pool_info()
    # A rejected call changes nothing, not even the valid half of it.
    assert after["stack_size"] == before["stack_size"]
    assert after["num_threads"] == before["num_threads"]


@pytest.mark.timeout(20)
def test_a_stack_size_no_thread_can_start_with_is_rejected_at_configure() -> None:
    # sys.maxsize bytes: more address space than any 64-bit system maps; threading.stack_size()
    # takes it, and before, the first task failed with a bare "can't start new thread".
    before = mp.get_thread_pool_info()
    with pytest.raises(ValueError, match=rf"stack_size of {sys.maxsize} bytes .* no thread could start with it") as caught:
        mp.configure_thread_pool(num_threads=before["num_threads"] + 1, stack_size=sys.maxsize)
    assert isinstance(caught.value.__cause__, RuntimeError)  # the system's refusal, kept
    assert "(8,388,608 TiB)" in str(caught.value) and "Use a smaller stack_size" in str(caught.value)
    after = mp.get_thread_pool_info()
    assert (after["stack_size"], after["num_threads"]) == (before["stack_size"], before["num_threads"])
    assert threading.stack_size() == 0  # process-wide: the check puts it back

    @mp.parallel
    def runs() -> int:
        return 1

    assert runs().get(timeout=10) == 1


@pytest.mark.timeout(40)
def test_a_stack_size_over_the_address_space_limit_is_rejected_and_the_pool_still_works() -> None:
    # 1 TiB under RLIMIT_AS of 16 GiB: refused whatever the machine's overcommit policy.
    result = run_python(
        """
        import resource
        import makeparallel as mp

        resource.setrlimit(resource.RLIMIT_AS, (16 * 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
        try:
            mp.configure_thread_pool(stack_size=2**40)
        except ValueError as error:
            print(error)
        try:
            mp.configure_thread_pool(num_threads="auto", stack_size=2**40)
        except ValueError:
            print("refused")
        info = mp.get_thread_pool_info()
        assert not info["auto"] and info["stack_size"] is None, info  # nothing half-configured

        @mp.parallel
        def runs():
            return 1

        assert runs().get(timeout=10) == 1
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    message, refused, ok = result.stdout.strip().splitlines()
    assert message.startswith("stack_size of 1099511627776 bytes (1 TiB) is more than"), message
    assert (refused, ok) == ("refused", "ok")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(40)
@pytest.mark.parametrize("starting", ["the check of a size refused", "a worker of a configured size"])
def test_a_process_forked_as_a_pool_thread_starts_gets_the_programs_own_stack_size(starting: str) -> None:
    # threading.stack_size() is process-wide, set only while the pool starts a thread; a
    # fork by another thread then (multiprocessing's "fork", a pre-forking server) left
    # the child with the pool's size for every thread of its own: with the check of
    # sys.maxsize, none could start there at all.
    result = run_python(
        f"""
        import os, sys, threading, warnings
        import makeparallel as mp

        warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a threaded process, meant
        threading.stack_size(512 * 1024)  # the program's own size for its threads
        checking = {starting == "the check of a size refused"}
        if not checking:
            mp.configure_thread_pool(num_threads=1, stack_size=2**20)
        held, forked = threading.Event(), threading.Event()
        start = threading.Thread.start

        def held_start(thread):  # the pool's thread start, its size in force, waits for the fork
            if thread.name.startswith("makeparallel-") and not held.is_set():
                held.set()
                assert forked.wait(20)
            start(thread)

        threading.Thread.start = held_start

        def starts_one():
            if checking:
                try:
                    mp.configure_thread_pool(stack_size=sys.maxsize)
                except ValueError:
                    pass
            else:
                assert mp.parallel(int)().get(timeout=20) == 0

        other = threading.Thread(target=starts_one)
        start(other)
        assert held.wait(20)
        pid = os.fork()
        if pid == 0:
            try:
                thread = threading.Thread(target=int)
                start(thread)
                thread.join()
                print("child started a thread, of", threading.stack_size(), "bytes by default", flush=True)
            finally:
                os._exit(0)
        forked.set()
        os.waitpid(pid, 0)
        other.join(20)
        print("parent:", threading.stack_size(), flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"child started a thread, of {512 * 1024} bytes by default",
        f"parent: {512 * 1024}",
    ], result.stderr


# -- introspection ----------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_info_reflects_busy_and_queued_work(gate: threading.Event) -> None:
    resize(2)
    held = hold(2, gate)

    @mp.parallel
    def queued(i: int) -> int:
        return i

    waiting = [queued(i) for i in range(3)]
    info = mp.get_thread_pool_info()
    assert {
        "num_threads",
        "live_threads",
        "busy_threads",
        "idle_threads",
        "queued_tasks",
    } <= set(info)
    assert info["num_threads"] == 2
    assert info["live_threads"] == 2
    assert info["busy_threads"] == 2
    assert info["idle_threads"] == 0
    assert info["queued_tasks"] == 3
    assert info["active_tasks"] == 5
    assert mp.get_active_task_count() == 5

    gate.set()
    for handle in held + waiting:
        assert handle.wait(5)
    assert [h.get() for h in waiting] == [0, 1, 2]
    info = mp.get_thread_pool_info()
    # A worker parks in the same step in which it ends its last task.
    assert (info["busy_threads"], info["idle_threads"], info["queued_tasks"]) == (0, 2, 0)
    assert info["live_threads"] == 2
    assert mp.get_active_task_count() == 0


# -- resizing a running pool ------------------------------------------------------------


@pytest.mark.timeout(20)
def test_growing_a_running_pool_starts_queued_work(gate: threading.Event) -> None:
    resize(1)
    (held,) = hold(1, gate)
    ran = threading.Event()

    @mp.parallel
    def signal() -> None:
        ran.set()

    handle = signal()
    assert mp.get_thread_pool_info()["queued_tasks"] == 1
    mp.configure_thread_pool(num_threads=2)
    assert ran.wait(5), "the larger pool did not start the queued task"
    assert not held.is_ready(), "the first task was supposed to be still held"
    assert handle.wait(5)
    gate.set()
    assert held.get(timeout=5) == "held"


@pytest.mark.timeout(20)
def test_a_burst_after_idle_reaches_every_parked_worker() -> None:
    # Tasks that must all run at once, submitted while every worker is parked:
    # each must reach a worker of its own, however the pool wakes them.
    resize(4)
    together = threading.Barrier(4)
    warm = [mp.parallel(together.wait)(10) for _ in range(4)]  # four workers started
    for handle in warm:
        assert handle.wait(10)
    assert wait_until(lambda: mp.get_thread_pool_info()["idle_threads"] == 4), mp.get_thread_pool_info()
    together.reset()
    threads: set[threading.Thread] = set()
    lock = threading.Lock()

    @mp.parallel
    def meet() -> None:
        with lock:
            threads.add(threading.current_thread())
        together.wait(10)  # only four distinct workers at once get past it

    handles = [meet() for _ in range(4)]
    for handle in handles:
        assert handle.wait(15)  # never run inline: a wait with a timeout leaves tasks to the pool
        handle.get()
    assert len(threads) == 4


@pytest.mark.timeout(20)
def test_a_ctrl_c_while_a_worker_thread_is_made_leaves_no_phantom_worker(
    gate: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted and never started, a worker would hold a place no task can use: the queue would stall."""
    resize(2)
    held = hold(2, gate)  # no idle worker: the next task starts a third
    mp.configure_thread_pool(num_threads=3)
    made = threading.Thread

    def interrupted(*args: Any, **kwargs: Any) -> threading.Thread:
        monkeypatch.setattr(threading, "Thread", made)
        raise KeyboardInterrupt  # as a Ctrl-C landing while the pool makes the thread

    monkeypatch.setattr(threading, "Thread", interrupted)

    @mp.parallel
    def double(x: int) -> int:
        return 2 * x

    with pytest.raises(KeyboardInterrupt):
        double(1)
    assert double(2).get(timeout=10) == 4  # a bounded wait runs nothing inline: a worker must start
    gate.set()
    assert [handle.get(timeout=5) for handle in held] == ["held", "held"]


class _InterruptedAsItLetsGo:
    """The pool's lock, where a Ctrl-C lands on the main thread the moment it next lets go of it."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.armed = True

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._lock.acquire(blocking, timeout))

    def release(self) -> None:
        self._lock.release()
        if self.armed and threading.current_thread() is threading.main_thread():
            self.armed = False
            raise KeyboardInterrupt

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@pytest.mark.timeout(20)
def test_a_ctrl_c_as_a_submission_lets_go_of_the_pool_still_wakes_the_idle_worker_it_took(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Taken off the idle list and never woken, a worker would sleep for good: the pool one short, for ever."""
    resize(1)
    assert mp.parallel(abs)(-1).wait(10)  # a bounded wait leaves the task to a worker, which then idles
    assert wait_until(lambda: mp.get_thread_pool_info()["idle_threads"] == 1), mp.get_thread_pool_info()
    backend = _runtime.get_backend("thread")

    @mp.parallel
    def double(x: int) -> int:
        return 2 * x

    monkeypatch.setattr(backend, "_lock", _InterruptedAsItLetsGo(backend._lock))
    with pytest.raises(KeyboardInterrupt):
        double(1)
    monkeypatch.undo()
    assert double(2).get(timeout=10) == 4  # the one worker must be awake to run it


@pytest.mark.timeout(30)
def test_a_worker_thread_that_cannot_start_leaves_no_task_waiting_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread the OS refuses (``RuntimeError: can't start new thread``: a full pids cgroup, ``ulimit -u``).

    The pool swallows the error as if the interpreter were shutting down: the task
    stays pending with a place free in the pool (here beside a busy worker; on a pool
    with no thread yet, for ever), and ``wait(timeout)`` times out with no error
    anywhere. The user must learn of it: the submission raises, or the task ends
    (with the error, or run by a thread started later).
    """
    resize(1)
    gate = threading.Event()
    held = hold(1, gate)  # the pool's one worker is busy
    mp.configure_thread_pool(num_threads=2)  # a place is free: the next task needs a new thread
    assert mp.get_thread_pool_info()["idle_threads"] == 0, mp.get_thread_pool_info()
    real_start = threading.Thread.start
    refusals = []

    def refused(self: threading.Thread) -> None:
        monkeypatch.setattr(threading.Thread, "start", real_start)
        refusals.append(self.name)
        raise RuntimeError("can't start new thread")  # what _thread.start_new_thread raises

    monkeypatch.setattr(threading.Thread, "start", refused)
    try:
        handle = mp.parallel(lambda: "ran")()
    except RuntimeError:
        outcome = "refused at the call"
    else:
        try:
            outcome = "ended" if handle.wait(10) else f"still {handle.status} after 10 s"
        finally:
            handle.cancel()
    gate.set()
    assert [h.get(timeout=5) for h in held] == ["held"]
    assert refusals, "the pool started no thread for the task: nothing was refused"
    assert outcome in ("refused at the call", "ended"), outcome


@pytest.mark.timeout(20)
def test_shrinking_retires_surplus_idle_threads() -> None:
    resize(4)
    together = threading.Barrier(5)
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    @mp.parallel
    def meet() -> None:
        with lock:
            threads.append(threading.current_thread())
        together.wait(5)  # forces four distinct workers

    handles = [meet() for _ in range(4)]
    together.wait(5)
    for handle in handles:
        assert handle.wait(5)
    assert len(set(threads)) == 4
    assert all(t.name.startswith(WORKER_PREFIX) for t in threads)

    mp.configure_thread_pool(num_threads=1)
    assert wait_until(lambda: mp.get_thread_pool_info()["live_threads"] == 1), (
        mp.get_thread_pool_info()
    )
    assert wait_until(lambda: sum(t.is_alive() for t in threads) == 1), [
        (t.name, t.is_alive()) for t in threads
    ]
    (survivor,) = [t for t in threads if t.is_alive()]
    assert mp.get_thread_pool_info()["idle_threads"] == 1

    @mp.parallel
    def where() -> threading.Thread:
        return threading.current_thread()

    assert where().get(timeout=5) is survivor  # the one left still works


@pytest.mark.timeout(30)
def test_shrinking_caps_how_many_tasks_run_at_once() -> None:
    """After a shrink to 1, surplus workers retire instead of taking queued work."""
    resize(3)
    running = threading.Barrier(4)
    gates = [threading.Event() for _ in range(3)]
    go = threading.Event()
    try:

        @mp.parallel
        def held(i: int) -> int:
            running.wait(5)
            assert gates[i].wait(30)
            return i

        @mp.parallel
        def queued(i: int) -> int:
            assert go.wait(30)
            return i

        busy = [held(i) for i in range(3)]
        running.wait(5)
        backlog = [queued(i) for i in range(3)]
        mp.configure_thread_pool(num_threads=1)

        # Two of the three workers finish their task while the pool is over size:
        # they must retire, leaving the backlog for the one worker allowed.
        for i in range(2):
            gates[i].set()
            assert busy[i].wait(5)
        info = mp.get_thread_pool_info()
        assert info["queued_tasks"] == 3, (
            f"a pool resized to 1 thread started queued tasks on surplus workers: {info}"
        )
        assert info["busy_threads"] == 1, info
    finally:
        for event in (*gates, go):
            event.set()
    for handle in busy + backlog:
        assert handle.wait(5)


# -- priorities -------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_priorities_order_queued_tasks(gate: threading.Event) -> None:
    resize(1)
    (held,) = hold(1, gate)
    lock = threading.Lock()
    order: list[int] = []

    @mp.parallel
    def record(index: int) -> None:
        with lock:
            order.append(index)

    priorities = [0, 5, -1, 5, 10]
    # priority= at call time (type checkers do not know call-time options)
    handles = [record(i, priority=p) for i, p in enumerate(priorities)]  # type: ignore[call-arg]
    assert order == []
    gate.set()
    assert held.wait(5)
    for handle in handles:
        assert handle.wait(5)  # a bounded wait never runs a task inline
    # 10 first; the two 5s in submission order; then 0; then -1.
    assert [priorities[i] for i in order] == [10, 5, 5, 0, -1]
    assert order == [4, 1, 3, 0, 2]


@pytest.mark.timeout(20)
def test_priority_from_options_and_decorator(gate: threading.Event) -> None:
    resize(1)
    (held,) = hold(1, gate)
    lock = threading.Lock()
    order: list[str] = []

    def record(label: str) -> None:
        with lock:
            order.append(label)

    low = mp.parallel(priority=-3)(record)
    high = low.options(priority=7)
    handles = [low("low"), mp.parallel(record)("default"), high("high")]
    gate.set()
    assert held.wait(5)
    for handle in handles:
        assert handle.wait(5)
    assert order == ["high", "default", "low"]


# -- inline claiming ---------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_get_runs_a_queued_task_inline_on_the_waiting_thread(gate: threading.Event) -> None:
    resize(1)
    (held,) = hold(1, gate)

    @mp.parallel
    def ident() -> int:
        return threading.get_ident()

    handle = ident()
    assert handle.status == "pending"
    assert handle.get() == threading.get_ident()
    assert held.running(), "the worker was supposed to stay held"
    gate.set()
    assert held.get(timeout=5) == "held"


@pytest.mark.timeout(20)
def test_bounded_waits_never_run_a_task_inline(gate: threading.Event) -> None:
    resize(1)
    (held,) = hold(1, gate)

    @mp.parallel
    def ident() -> int:
        return threading.get_ident()

    handle = ident()
    with pytest.raises(mp.TaskTimeoutError, match="gave up waiting"):
        handle.get(timeout=0.1)
    assert handle.status == "pending"
    assert handle.wait(timeout=0.1) is False
    assert handle.wait(timeout=0) is False
    assert handle.status == "pending"
    gate.set()
    assert handle.get(timeout=5) != threading.get_ident()
    assert held.get(timeout=5) == "held"


@pytest.mark.timeout(20)
def test_wait_without_timeout_also_runs_inline(gate: threading.Event) -> None:
    resize(1)
    (held,) = hold(1, gate)
    seen: list[int] = []

    @mp.parallel
    def ident() -> None:
        seen.append(threading.get_ident())

    handle = ident()
    assert handle.wait() is True
    assert seen == [threading.get_ident()]
    gate.set()
    assert held.wait(5)


@pytest.mark.timeout(20)
def test_a_task_with_its_own_timeout_is_never_run_inline(gate: threading.Event) -> None:
    resize(1)
    (held,) = hold(1, gate)

    @mp.parallel(timeout=30)
    def ident() -> int:
        return threading.get_ident()

    handle = ident()
    waiter_ident: list[int] = []
    result: list[int] = []
    done = threading.Event()

    def waiter() -> None:
        waiter_ident.append(threading.get_ident())
        result.append(handle.get())  # unbounded: would run it inline if allowed
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        # Inline, the task would end at once: the worker is held.
        assert not done.wait(0.2), "the task with a timeout ran inline"
    finally:
        gate.set()
    assert done.wait(5)
    thread.join(5)
    assert not thread.is_alive()
    assert result[0] != waiter_ident[0]
    assert held.get(timeout=5) == "held"


@pytest.mark.timeout(60)
def test_a_second_ctrl_c_while_an_interrupted_thread_start_is_judged_leaves_no_phantom_worker() -> None:
    """Ctrl-C pressed twice as the pool starts a worker must not leave a worker counted that never ran.

    The first Ctrl-C lands inside ``Thread.start()`` before the thread exists; the pool
    then waits up to 0.5 s to learn whether it began. A second Ctrl-C in that wait (users
    press it again when nothing seems to happen) skips the uncounting: a user sees
    ``live_threads`` one above the threads running, and the pool believes its place taken,
    so of two tasks that need two threads at once only one ever starts.
    """
    result = run_python(
        """
        import os
        import threading
        import makeparallel as mp
        from makeparallel._backends._thread import _BEGINS_WITHIN

        mp.configure_thread_pool(num_threads=1)
        gate = threading.Event()
        running = threading.Event()
        held = mp.parallel(lambda: (running.set(), gate.wait(30)))()
        assert running.wait(10)
        mp.configure_thread_pool(num_threads=2)  # a place is free: the next task needs a new thread

        real_start = threading.Thread.start
        real_wait = threading.Event.wait
        caller = threading.current_thread()

        def interrupted_start(self):
            threading.Thread.start = real_start
            raise KeyboardInterrupt  # the first Ctrl-C, before the thread was made

        def interrupted_wait(self, timeout=None):
            if timeout == _BEGINS_WITHIN and threading.current_thread() is caller:
                threading.Event.wait = real_wait
                raise KeyboardInterrupt  # the second, as the pool waits to learn if it began
            return real_wait(self, timeout)

        threading.Thread.start = interrupted_start
        threading.Event.wait = interrupted_wait
        try:
            mp.parallel(lambda: "interrupted")()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        finally:
            threading.Thread.start = real_start
            threading.Event.wait = real_wait
        gate.set()
        held.wait(10)
        while mp.get_thread_pool_info()["idle_threads"] != 1:  # the one real worker parked
            threading.Event().wait(0.005)
        alive = sum(t.name.startswith("makeparallel-thread-") for t in threading.enumerate())
        print("counted", mp.get_thread_pool_info()["live_threads"], "alive", alive, flush=True)
        meet = threading.Barrier(2, timeout=5)  # two tasks that wait for each other need both places
        pair = [mp.parallel(meet.wait)() for _ in range(2)]
        for handle in pair:
            handle.wait(30)
        print([h.status for h in pair], flush=True)
        os._exit(0)
        """,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "interrupted", result.stdout + result.stderr
    assert lines[1] == "counted 1 alive 1", f"the pool counts a worker that never ran: {lines[1]}"
    assert lines[2] == "['succeeded', 'succeeded']", "a place of the pool is held by no thread"


@pytest.mark.timeout(60)
def test_a_limited_task_from_async_code_whose_thread_is_refused_does_not_wait_for_ever() -> None:
    """A thread the OS refuses, for a task of a ``max_concurrent`` function called in async code.

    A plain submission now raises the refusal; but a limited task called on a running
    event loop is held until the limit admits it, and its worker is then started where
    a refusal is swallowed. On a pool with no thread yet, the user's ``await`` never
    ends: the task stays pending, with no thread and no error anywhere.
    """
    result = run_python(
        """
        import asyncio
        import threading
        import makeparallel as mp

        real_start = threading.Thread.start

        def refused(self):
            if self.name.startswith("makeparallel-thread-"):
                raise RuntimeError("can't start new thread")
            real_start(self)

        limited = mp.parallel(max_concurrent=1)(lambda: "ran")
        threading.Thread.start = refused

        async def main():
            try:
                return await asyncio.wait_for(asyncio.ensure_future(awaited()), 10)
            except asyncio.TimeoutError:
                info = mp.get_thread_pool_info()
                return f"still waiting: live {info['live_threads']}, queued {info['queued_tasks']}"

        async def awaited():
            try:
                return await limited()
            except RuntimeError as error:
                return f"raised {error}"

        print(asyncio.run(main()), flush=True)
        """,
        timeout=50,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout.strip()
    assert out == "ran" or (out.startswith("raised ") and out.endswith("can't start new thread")), (
        f"the task was left waiting with no thread: {out}"
    )
