"""The GIL watch: decides from overlapping tasks whether threads are held back by the GIL."""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import pytest

import makeparallel as mp
from makeparallel import _gil_watch, _load, _map
from makeparallel._gil_watch import GilWatch


class ScriptedLoad:
    """Stands in for the load meter: other processes' load, as the test says."""

    others: float | None = 0.0
    seconds = 1.0  # the window measured so far: long enough for the CPU counters unless a test says

    def start(self) -> None:
        pass

    def window(self) -> float:
        return ScriptedLoad.seconds

    def stop(self) -> float | None:
        return ScriptedLoad.others if ScriptedLoad.seconds >= _load.MIN_WINDOW else None


@pytest.fixture(autouse=True)
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> type[ScriptedLoad]:
    """The watch sees an idle machine unless a test says otherwise: CI's load is not the test's."""
    ScriptedLoad.others = 0.0
    ScriptedLoad.seconds = 1.0
    monkeypatch.setattr(_load, "LoadMeter", ScriptedLoad)
    monkeypatch.setattr(_load, "recent_load", lambda ours: 0.0)
    return ScriptedLoad


def feed(watch: GilWatch, cpu_per_task: float, tasks: int = 16, overlapping: bool = True) -> None:
    """Pairs of 10 ms tasks running side by side, each using ``cpu_per_task`` of CPU."""
    for i in range(tasks):
        start = (i // 2) * 0.010
        watch.record(start, start + 0.010, cpu_per_task, overlapping)


def test_gil_bound_tasks_warn_once_naming_the_function_and_the_fix() -> None:
    watch = GilWatch("crunch")
    with pytest.warns(mp.GilBoundWarning, match=r"'crunch' looks GIL-bound.*backend='process'"):
        feed(watch, cpu_per_task=0.005)  # two at a time, one core between them
    assert not watch.active
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(watch, cpu_per_task=0.005)  # decided already: silent from now on


def _map_watch() -> GilWatch:
    return _map._new_chunk_runner("crunch", None, None, 0)._spec.cpu_watch  # type: ignore[return-value]


def _executor_watch() -> GilWatch:
    executor = mp.Executor(max_workers=2)
    try:
        return executor._spec_named("crunch").cpu_watch  # type: ignore[return-value]
    finally:
        executor.shutdown()


@pytest.mark.parametrize(
    ("watch_of", "remedy"),
    [
        pytest.param(_map_watch, r"map it with backend='process' \(parallel_map\(fn, items, backend='process'\), imap's too\)", id="map"),
        pytest.param(_executor_watch, r"run it on mp\.Executor\(backend='process'\)", id="executor"),
    ],
)
def test_the_warning_of_a_maps_or_an_executors_tasks_names_their_own_remedy(watch_of: Any, remedy: str) -> None:
    """Both advised @parallel(backend='process'), which an executor's tasks ignore, and which a map does not take."""
    with pytest.warns(mp.GilBoundWarning, match=rf"'crunch.*' looks GIL-bound.*{remedy} to use every core"):
        feed(watch_of(), cpu_per_task=0.005)


@pytest.mark.parametrize(
    "cpu_per_task",
    [pytest.param(0.010, id="releases the GIL: a core per task"), pytest.param(0.0002, id="waits on I/O")],
)
def test_work_that_runs_in_parallel_or_waits_stays_silent(cpu_per_task: float) -> None:
    watch = GilWatch("fine")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(watch, cpu_per_task=cpu_per_task)
    assert not watch.active


def test_tasks_that_never_overlap_decide_nothing_and_stop_after_a_while() -> None:
    watch = GilWatch("alone")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(watch, cpu_per_task=0.005, tasks=999, overlapping=False)
        assert watch.active
        feed(watch, cpu_per_task=0.005, tasks=1, overlapping=False)
    assert not watch.active  # gave up measuring: it costs a little per task


def test_a_warning_turned_into_an_error_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    watch = GilWatch("strict")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(watch, cpu_per_task=0.005)
    assert "looks GIL-bound" in caplog.text


def test_thread_tasks_feed_the_watch_of_their_function() -> None:
    meet = threading.Barrier(2)

    @mp.parallel(backend="thread", name="gil-watch-feed")
    def pair() -> None:
        meet.wait(5)  # two at once: overlapping by construction
        total = 0
        for i in range(200_000):  # long enough to count (well over a millisecond)
            total += i

    mp.configure_thread_pool(2)
    watch = pair._spec.cpu_watch
    assert watch is not None and watch.active
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.GilBoundWarning)
        for _ in range(20):  # each pair gives one or two overlapping samples: 16 needed
            assert all(h.wait(10) for h in [pair(), pair()])
    assert not watch.active  # it measured enough overlapping tasks and decided


@pytest.mark.parametrize(
    ("tasks", "seconds", "decides"),
    [
        pytest.param(8, 0.080, True, id="eight tasks of 80 ms: 0.32 s of them"),
        pytest.param(4, 0.060, True, id="four of 60 ms: 0.12 s"),
        pytest.param(3, 0.080, False, id="three: too few"),
        pytest.param(8, 0.010, False, id="eight of 10 ms: 40 ms of them"),
    ],
)
def test_a_few_long_tasks_are_judged_without_sixteen(tasks: int, seconds: float, decides: bool) -> None:
    # Eight GIL-bound tasks of 80 ms on two threads, or an imap of eight or nine chunks,
    # never made the 16 samples the watch waited for: no warning, ever.
    watch = GilWatch("few-and-long")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(tasks):  # two at a time, one core between them
            start = (i // 2) * seconds
            watch.record(start, start + seconds, seconds / 2, True)
    assert watch.active is not decides
    assert [w.category for w in caught] == ([mp.GilBoundWarning] if decides else [])


def test_four_pairs_of_long_thread_tasks_are_judged() -> None:
    meet = threading.Barrier(2)

    @mp.parallel(backend="thread", name="gil-watch-few-and-long")
    def pair() -> None:
        meet.wait(5)  # two at once: overlapping by construction
        end = time.perf_counter() + 0.06  # pure Python for 60 ms at least
        while time.perf_counter() < end:
            pass

    mp.configure_thread_pool(2)
    watch = pair._spec.cpu_watch
    assert watch is not None and watch.active
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mp.GilBoundWarning)
        for _ in range(4):
            assert all(h.wait(10) for h in [pair(), pair()])
    assert not watch.active  # eight samples, 0.24 s of them: it decided


def test_a_busy_machine_is_not_blamed_on_the_gil(
    quiet_machine: type[ScriptedLoad], caplog: pytest.LogCaptureFixture
) -> None:
    quiet_machine.others = 1.5  # other processes kept one and a half CPUs busy meanwhile
    watch = GilWatch("hashing-on-a-busy-machine")
    caplog.set_level("DEBUG", logger="makeparallel")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feed(watch, cpu_per_task=0.005)  # about one core between two tasks: could be either
    assert not watch.active  # it decided: no warning
    assert "other processes used 1.5 CPUs" in caplog.text


@pytest.mark.parametrize(("others", "warns"), [(1.5, False), (0.0, True)])
def test_a_burst_too_brief_to_measure_the_load_is_sampled_on_until_it_can(
    quiet_machine: type[ScriptedLoad], monkeypatch: pytest.MonkeyPatch, others: float, warns: bool
) -> None:
    # Sixteen tasks of a few milliseconds end within 0.1 s, below the CPU counters' resolution.
    # The load average (a minute's) barely holds such a burst, and less our tasks it read none:
    # two threads hashing beside two busy processes were told to use processes.
    monkeypatch.setattr(_load, "recent_load", lambda ours: max(0.0, 1.5 - ours))  # 1.5: others'
    quiet_machine.others = others
    quiet_machine.seconds = 0.05
    watch = GilWatch("brief-burst")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feed(watch, cpu_per_task=0.005)  # two at a time, one core between them: GIL or load?
        assert watch.active and caught == []  # not decided: the load cannot be told yet
        quiet_machine.seconds = 0.2  # more tasks later: the window is long enough now
        feed(watch, cpu_per_task=0.005, tasks=2)
    assert not watch.active
    assert [w.category for w in caught] == ([mp.GilBoundWarning] if warns else [])


@pytest.mark.parametrize(("recent", "warns"), [(2.0, False), (0.1, True)])
def test_a_brief_sample_falls_back_on_the_load_average(
    quiet_machine: type[ScriptedLoad], monkeypatch: pytest.MonkeyPatch, recent: float, warns: bool
) -> None:
    quiet_machine.others = None  # sampled too briefly for the CPU counters
    monkeypatch.setattr(_load, "recent_load", lambda ours: recent)
    watch = GilWatch("brief")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feed(watch, cpu_per_task=0.005)
    assert [w.category for w in caught] == ([mp.GilBoundWarning] if warns else [])


def test_one_usable_core_is_not_blamed_on_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    # A container limited to one CPU (or a process pinned to one) on a larger host: threads
    # that hash, GIL released, share that core too, and processes would not do better.
    monkeypatch.setattr(_gil_watch, "usable_cpu_count", lambda: 1)
    watch = GilWatch("hashing-on-one-core")
    assert watch.active
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feed(watch, cpu_per_task=0.005)  # two at a time, one core between them: all there is
    assert not watch.active  # it decided
    assert [w.message for w in caught] == []


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("at_once", "cpu_per_task", "warns"),
    [
        pytest.param(4, 0.005, False, id="four hash at once on two cores: two cores busy"),
        pytest.param(2, 0.005, True, id="two pure-Python tasks at once: one core busy"),
    ],
)
def test_idle_time_between_bursts_of_tasks_is_not_counted(
    monkeypatch: pytest.MonkeyPatch, at_once: int, cpu_per_task: float, warns: bool
) -> None:
    # A service runs a function's tasks in bursts, a request at a time, idle in between:
    # measured over the whole span, idle included, GIL-releasing work on a pool larger
    # than the cores looked GIL-bound, and GIL-bound work looked as if it ran alone.
    monkeypatch.setattr(_gil_watch, "usable_cpu_count", lambda: 2)
    watch = GilWatch("bursts")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(16):
            start = (i // at_once) * 0.020  # 10 ms of tasks, then 10 ms idle
            watch.record(start, start + 0.010, cpu_per_task, True)
    assert not watch.active  # it decided
    assert [w.category for w in caught] == ([mp.GilBoundWarning] if warns else [])


@pytest.mark.parametrize(
    ("alone_cpu", "warns"),
    [
        pytest.param(0.002, False, id="waits 80% of its time alone: threads overlap the waits"),
        pytest.param(0.010, True, id="computes all its time alone: the GIL holds it back"),
    ],
)
def test_tasks_that_wait_on_their_own_are_not_blamed_on_the_gil(
    monkeypatch: pytest.MonkeyPatch, alone_cpu: float, warns: bool
) -> None:
    # A task of 5 ms of pure Python and 20 ms of waiting (a network call), 160 of them on 8
    # threads: 1.06 s against 4.17 s one after another (3.9x) and 2.21 s on the 2 processes
    # the warning advised, on the 2-core machine. Together the threads kept about half a
    # core busy, which the watch took for GIL-bound work gaining nothing, and it said so.
    # What a task uses of a core when it runs alone tells what the threads gained.
    monkeypatch.setattr(_gil_watch, "usable_cpu_count", lambda: 2)
    watch = GilWatch("fetch-and-parse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(4):  # the first tasks, before a second one runs beside them
            watch.record(i * 0.010, i * 0.010 + 0.010, alone_cpu, False)
        for i in range(16):  # then four at once, keeping 0.6 cores busy together
            start = 1.0 + (i // 4) * 0.010
            watch.record(start, start + 0.010, 0.0015, True)
    assert not watch.active  # it decided
    assert [w.category for w in caught] == ([mp.GilBoundWarning] if warns else [])
    if warns:  # the speed-up it states is what the threads gained over one at a time
        assert "4.0 tasks ran at once on threads but together used 0.60 cores, a speed-up of 0.60x" in str(
            caught[0].message
        )


def test_tasks_that_mostly_compute_are_told_on_a_machine_of_many_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tasks that compute 70% of their time alone, eight at once on eight cores, kept one core
    # busy together: 1.4 times as fast as one after another, where eight processes would run
    # them up to eight times as fast. Judged against a fixed 1.25x, the watch stayed silent.
    monkeypatch.setattr(_gil_watch, "usable_cpu_count", lambda: 8)
    watch = GilWatch("mostly-computes")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(4):  # the first tasks, alone: 7 ms of a core in 10 ms
            watch.record(i * 0.010, i * 0.010 + 0.010, 0.007, False)
        for i in range(16):  # then eight at once, keeping one core busy together
            start = 1.0 + (i // 8) * 0.010
            watch.record(start, start + 0.010, 0.00125, True)
    assert not watch.active  # it decided
    assert [w.category for w in caught] == [mp.GilBoundWarning]
    assert "8.0 tasks ran at once on threads but together used 1.00 cores, a speed-up of 1.43x" in str(
        caught[0].message
    )
