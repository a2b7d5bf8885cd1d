"""``makeparallel demo``: what threads and processes speed up on this Python, measured here.

Two workloads, each split into as many tasks as the pools have workers, run once
after the other on the calling thread and once with ``@parallel``:

* hashing large buffers with ``hashlib.sha256``, which releases the GIL while it
  hashes (buffers over 2 KiB), so the threads hash at the same time;
* a pure-Python loop, which needs the GIL for every bytecode: on a GIL build the
  threads take turns and nothing is gained, while worker processes (each with an
  interpreter and a GIL of its own) run it on every core.

The total work is fixed and split among the tasks, so a machine with more cores
finishes sooner rather than doing more. Each timing is the best of a few rounds,
sequential and parallel alternating so that machine noise hits both alike, and
the worker threads are started before anything is timed.

Each row is printed as soon as it is measured, and the explanations follow the
measured numbers. While a workload is measured, the demo also measures how much
CPU time *other* processes used (psutil: the machine's busy time less this
process's and its workers'): a speed-up lower than the work allows, on a busy
machine, is blamed on the load rather than explained away.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import sysconfig
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import psutil

from . import AsyncHandle, GilBoundWarning, gather, get_process_pool_info, get_thread_pool_info, parallel
from ._cpus import usable_cpus
from ._handle import cancel_and_stop
from ._load import BUSY_CPUS, LoadMeter

__all__ = [
    "DemoReport",
    "Measurement",
    "Workload",
    "explain",
    "free_threaded_build",
    "gil_enabled",
    "run_demo",
]

_MiB = 1 << 20
_PATTERN = bytes(range(256))  # cheap to repeat, and every page is really written


@dataclass(frozen=True)
class _Size:
    """How much work one demo does in total, before it is split among the tasks."""

    hash_bytes: int  # bytes hashed per round, split evenly among the tasks
    hash_rounds: int  # times each task hashes its share
    loop_iterations: int  # pure-Python loop iterations, all tasks together
    rounds: int  # timings taken of each; the best one counts


_FULL = _Size(hash_bytes=64 * _MiB, hash_rounds=16, loop_iterations=8_000_000, rounds=3)
_QUICK = _Size(hash_bytes=4 * _MiB, hash_rounds=2, loop_iterations=200_000, rounds=1)


@dataclass(frozen=True)
class Workload:
    """One kind of work, already split into one argument tuple per task."""

    label: str
    releases_gil: bool
    function: Callable[..., object]
    arguments: Sequence[tuple[Any, ...]]
    backend: str = "thread"


@dataclass(frozen=True)
class Measurement:
    """Best wall times of one workload run sequentially and in parallel.

    ``others_cpus`` is how many CPUs other processes kept busy, on average, while
    it was measured (``None`` where psutil cannot tell).
    """

    workload: Workload
    sequential_s: float
    parallel_s: float
    others_cpus: float | None = None

    @property
    def speedup(self) -> float:
        return self.sequential_s / self.parallel_s


@dataclass(frozen=True)
class DemoReport:
    """Everything the demo measured, and on what."""

    threads: int
    tasks: int
    rounds: int
    gil_enabled: bool
    free_threaded_build: bool
    measurements: tuple[Measurement, ...]
    cpus: int = 1
    """CPUs this process may use (:func:`makeparallel._cpus.usable_cpus`)."""
    host_cpus: int = 1
    """Logical CPUs of the machine: the load of other processes is counted in these."""
    quick: bool = False
    """Measured with ``--quick``'s sizes: milliseconds, too short to tell a speed-up or the load."""


def gil_enabled() -> bool:
    """Whether the GIL is enabled now (always, before Python 3.13)."""
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_gil_enabled is None else bool(is_gil_enabled())


def free_threaded_build() -> bool:
    """Whether this interpreter was built free-threaded (3.13t and later)."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def hash_buffer(buffer: bytes, rounds: int) -> str:
    """Hash ``buffer`` ``rounds`` times over; hashlib releases the GIL meanwhile."""
    digest = hashlib.sha256()
    for _ in range(rounds):
        digest.update(buffer)
    return digest.hexdigest()


def sum_squares_mod(start: int, stop: int) -> int:
    """A pure-Python loop: every iteration is bytecode, so it holds the GIL."""
    total = 0
    for i in range(start, stop):
        total += i * i % 7
    return total


def _hash_workload(tasks: int, size: _Size) -> Workload:
    length = max(4096, size.hash_bytes // tasks)
    # One buffer serves every task: hashing only reads it.
    buffer = (_PATTERN * (length // len(_PATTERN) + 1))[:length]
    hashed = tasks * length * size.hash_rounds
    return Workload(
        label=f"hashlib.sha256, {hashed / _MiB:,.0f} MiB",
        releases_gil=True,
        function=hash_buffer,
        arguments=[(buffer, size.hash_rounds)] * tasks,
    )


def _loop_workload(tasks: int, size: _Size, backend: str) -> Workload:
    share = size.loop_iterations // tasks
    return Workload(
        label=f"pure-Python loop, {share * tasks / 1e6:g}M steps",
        releases_gil=False,
        function=sum_squares_mod,
        arguments=[(i * share, (i + 1) * share) for i in range(tasks)],
        backend=backend,
    )


def _meet(barrier: threading.Barrier) -> None:
    barrier.wait(timeout=30)


def _warm_up_processes(workers: int) -> None:
    """Start the worker processes, so that interpreter start-up is not timed."""
    touch = parallel(backend="process", name="makeparallel.demo.warm_up")(sum_squares_mod)
    gather([touch(0, 1000) for _ in range(4 * workers)])


def _warm_up(threads: int) -> None:
    """Start every worker thread, so that thread start-up is not timed.

    Each task waits until all of them run at once. The caller runs one of them
    itself if ``get()`` finds it still queued, which still makes ``threads``
    parties, so the barrier always fills.
    """
    meet = parallel(backend="thread", name="makeparallel.demo.warm_up")(_meet)
    barrier = threading.Barrier(threads)
    _collect(meet, [(barrier,)] * threads)


def _collect(function: Callable[..., AsyncHandle[Any]], arguments: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Call ``function`` with each argument tuple and return the results, in order.

    On Ctrl-C (or any error), the tasks submitted so far are cancelled: left
    running, they held up the exit of ``makeparallel demo``, which a Ctrl-C
    ends at once (see ``__main__.main``), or were abandoned there with a
    warning meant for the user's own tasks.
    """
    handles: list[AsyncHandle[Any]] = []
    try:
        for each in arguments:
            handles.append(function(*each))
        return [handle.get() for handle in handles]
    except BaseException:
        cancel_and_stop(handles)
        raise


def _time_sequential(workload: Workload) -> tuple[float, list[object]]:
    function = workload.function
    started = time.perf_counter()
    results = [function(*arguments) for arguments in workload.arguments]
    return time.perf_counter() - started, results


def _time_parallel(workload: Workload) -> tuple[float, list[object]]:
    function = parallel(
        backend=workload.backend, name=f"makeparallel.demo.{workload.function.__name__}"
    )(workload.function)
    with warnings.catch_warnings():  # GIL-bound work on threads is the point here
        warnings.simplefilter("ignore", GilBoundWarning)
        started = time.perf_counter()
        results = _collect(function, workload.arguments)
        return time.perf_counter() - started, results


def _measure(
    workload: Workload, rounds: int, on_round: Callable[[Measurement, int], None] | None = None
) -> Measurement:
    """Time ``workload`` ``rounds`` times; ``on_round(best so far, rounds done)`` after each."""
    sequential: list[float] = []
    in_parallel: list[float] = []
    load = LoadMeter(own_pids=lambda: [None, *get_process_pool_info()["worker_pids"]])
    load.start()
    for done in range(1, rounds + 1):
        seconds, expected = _time_sequential(workload)
        sequential.append(seconds)
        seconds, results = _time_parallel(workload)
        in_parallel.append(seconds)
        if results != expected:  # a wrong answer fast is no speed-up
            raise RuntimeError(
                f"the parallel run of {workload.label!r} returned {results!r}, "
                f"the sequential run {expected!r}: please report this bug"
            )
        if on_round is not None and done < rounds:
            on_round(Measurement(workload, min(sequential), min(in_parallel)), done)
    return Measurement(workload, min(sequential), min(in_parallel), load.stop())


def run_demo(quick: bool = False, out: TextIO | None = None) -> DemoReport:
    """Measure both workloads on the thread backend, and the pure-Python one on processes.

    Args:
        quick: much smaller sizes and a single round (a smoke test, not a measurement).
        out: where to print the table as it is measured (a row as each workload
            ends, then the explanations); ``None`` prints nothing.

    Returns:
        What was measured, with the load of other processes meanwhile.
    """
    size = _QUICK if quick else _FULL
    threads = int(get_thread_pool_info()["num_threads"])
    workers = int(get_process_pool_info()["num_workers"])
    tasks = max(2, threads)  # two at least, on one CPU too: the pools' workers may be fewer
    cpus = usable_cpus()
    show = _Printer(out)
    show.line(f"makeparallel demo: {_build_words()}")
    show.line(
        f"{cpus.cpus} usable CPU(s) ({cpus.source}); starting {threads} worker thread(s) and "
        f"{workers} worker process(es)..."
    )
    _warm_up(threads)
    _warm_up_processes(workers)
    workloads = (
        _hash_workload(tasks, size),
        _loop_workload(tasks, size, "thread"),
        _loop_workload(tasks, size, "process"),
    )
    show.line(_plan_words(tasks, size.rounds))
    show.line("")
    width = _label_width(workloads)
    for line in _header(width):
        show.line(line)
    measurements = []
    for workload in workloads:
        start = _row_start(workload, width)
        show.part(start)

        def so_far(best: Measurement, done: int, start: str = start) -> None:
            show.redraw(f"{start}{_row_end(best)}  (round {done} of {size.rounds})")

        measurement = _measure(workload, size.rounds, so_far if show.live else None)
        show.redraw(start + _row_end(measurement))
        show.line("")
        measurements.append(measurement)
    report = DemoReport(
        threads=threads,
        tasks=tasks,
        rounds=size.rounds,
        gil_enabled=gil_enabled(),
        free_threaded_build=free_threaded_build(),
        measurements=tuple(measurements),
        cpus=cpus.cpus,
        host_cpus=psutil.cpu_count() or cpus.cpus,
        quick=quick,
    )
    show.line("")
    for line in _notes(report):
        show.line(line)
    return report


class _Printer:
    """Writes to ``out`` at once (flushed), or nowhere.

    On a terminal (``live``), a row being measured is redrawn in place after
    each round; elsewhere (a pipe, a log) each row is written once, when done.
    """

    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        self.live = out is not None and out.isatty()
        self._current = ""  # the unfinished line, as last drawn

    def part(self, text: str) -> None:
        if self._out is not None:
            self._out.write(text)
            self._out.flush()
        self._current = (self._current + text).rsplit("\n", 1)[-1]

    def line(self, text: str) -> None:
        self.part(text + "\n")

    def redraw(self, text: str) -> None:
        """Show ``text`` as the unfinished line: in place on a terminal, else what it adds."""
        if self.live:
            padding = " " * max(0, len(self._current) - len(text))  # wipe a longer line
            self.part("\r" + text + padding)
        elif text.startswith(self._current):
            self.part(text[len(self._current):])
        self._current = text


def _build_words() -> str:
    build = "free-threaded build" if free_threaded_build() else "GIL build"
    gil = "GIL enabled" if gil_enabled() else "GIL disabled"
    return f"{platform.python_implementation()} {platform.python_version()}, {build}, {gil}"


def _plan_words(tasks: int, rounds: int) -> str:
    best = f"best of {rounds}" if rounds > 1 else "1 round"
    return f"each workload split into {tasks} tasks, run one after the other, then with @parallel; wall times, {best}"


def _label_width(workloads: Sequence[Workload]) -> int:
    return max(len("workload"), *(len(w.label) for w in workloads))


def _header(width: int) -> list[str]:
    header = f"{'workload':<{width}}  {'backend':<8}  {'sequential':>10}  {'parallel':>10}  {'speed-up':>8}"
    return [header, "-" * len(header)]


def _row_start(workload: Workload, width: int) -> str:
    return f"{workload.label:<{width}}  {workload.backend:<8}  "


def _row_end(m: Measurement) -> str:
    return f"{m.sequential_s:>9.3f}s  {m.parallel_s:>9.3f}s  {m.speedup:>7.2f}x"


def _ideal(report: DemoReport) -> int:
    """The most a workload split into ``tasks`` tasks can gain on the usable CPUs."""
    return max(1, min(report.tasks, report.cpus))


def _sped_up(m: Measurement, report: DemoReport) -> bool:
    """At least half the gain the CPUs allow: 1.5x on two, 2.5x on four."""
    return m.speedup >= 1 + 0.5 * (_ideal(report) - 1) and m.speedup >= 1.2


def _busy(m: Measurement) -> bool:
    return m.others_cpus is not None and m.others_cpus >= BUSY_CPUS


def _why_low(m: Measurement, report: DemoReport) -> str:
    # One usable CPU first: a quieter machine gives it no more, whatever load the others' CPUs had.
    if report.cpus < 2:
        return "this process may use a single CPU, so nothing can run in parallel here"
    if report.quick:  # a few milliseconds: start-up and noise, and too short a window to measure the load
        return "--quick's sizes are too small to measure a speed-up: run the demo without --quick to measure one"
    if _busy(m):
        return (
            f"other processes kept about {m.others_cpus:.1f} of this machine's "
            f"{report.host_cpus} CPUs busy meanwhile, so this figure is low: run the demo "
            "again when the machine is quieter"
        )
    if m.workload.backend == "process":
        return (
            "with no other load measured, the cost of sending arguments and results "
            "between processes held it back (larger tasks repay it)"
        )
    return "no other load was measured, so this is what this machine gives this work"


def explain(m: Measurement, report: DemoReport) -> str:
    """One sentence on one measurement, following its numbers (and the load meanwhile)."""
    speedup = f"{m.speedup:.2f}x"
    if m.workload.backend == "process":
        if _sped_up(m, report):
            return (
                "worker processes each have an interpreter and a GIL of their own, so the "
                f"pure-Python code ran on {_ideal(report)} cores at once ({speedup}): use "
                "@parallel(backend='process') (or 'auto') for such code. The time includes "
                "sending arguments and results between processes."
            )
        return (
            "worker processes each have an interpreter and a GIL of their own, so "
            f"pure-Python code can run on every core, but here it measured only {speedup}; "
            f"{_why_low(m, report)}."
        )
    if m.workload.releases_gil:
        if _sped_up(m, report):
            return (
                "hashlib.sha256 releases the GIL while it hashes large buffers, so the "
                f"threads hashed at the same time ({speedup}): threads speed up work that "
                "releases the GIL."
            )
        return (
            "hashlib.sha256 releases the GIL while it hashes large buffers, so threads can "
            f"hash at the same time, but here they measured only {speedup}; {_why_low(m, report)}."
        )
    if not report.gil_enabled:
        if _sped_up(m, report):
            return (
                "the GIL is disabled in this free-threaded build, so the threads ran Python "
                f"bytecode at the same time ({speedup}): pure-Python code speeds up too."
            )
        return (
            "the GIL is disabled in this free-threaded build, so threads can run Python "
            f"bytecode at the same time, but here they measured only {speedup}; "
            f"{_why_low(m, report)}."
        )
    why = (
        "the GIL is enabled at run time in this free-threaded build"
        if report.free_threaded_build
        else "this is a GIL build"
    )
    if m.speedup >= 1.2:
        return (
            f"{speedup} for pure-Python code on threads, although {why}: Python bytecode "
            "needs the GIL whichever thread runs it, so this gain is timing noise; expect "
            "about 1x. A free-threaded Python (3.13t or later) runs it in parallel on threads."
        )
    return (
        f"no speed-up ({speedup}) for pure-Python code on threads, because {why}: Python "
        "bytecode needs the GIL whichever thread runs it, so the threads take turns. A "
        "free-threaded Python (3.13t or later) runs it in parallel on threads."
    )


def _notes(report: DemoReport) -> list[str]:
    notes = [explain(m, report) for m in report.measurements]
    loads = [m.others_cpus for m in report.measurements if m.others_cpus is not None]
    # Not on one CPU, nor at --quick's sizes: a quiet machine would not give either a higher speed-up.
    if loads and max(loads) >= BUSY_CPUS and report.cpus >= 2 and not report.quick:
        notes.append(
            f"the machine was busy: other processes used up to {max(loads):.1f} of its "
            f"{report.host_cpus} CPUs while the demo ran, so every speed-up above is lower "
            "than this machine gives when it is quiet."
        )
    if report.threads < 2:
        notes.append(
            "the pool has a single thread (this process may use one core), so "
            "nothing can run in parallel here."
        )
    return [textwrap.fill(note, width=88, initial_indent="* ", subsequent_indent="  ") for note in notes]
