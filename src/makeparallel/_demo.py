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
from typing import Any

from . import GilBoundWarning, gather, get_thread_pool_info, parallel

__all__ = [
    "DemoReport",
    "Measurement",
    "Workload",
    "free_threaded_build",
    "gil_enabled",
    "render",
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
    """Best wall times of one workload run sequentially and in parallel."""

    workload: Workload
    sequential_s: float
    parallel_s: float

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
    for handle in [meet(barrier) for _ in range(threads)]:
        handle.get()


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
        handles = [function(*arguments) for arguments in workload.arguments]
        results = [handle.get() for handle in handles]
        return time.perf_counter() - started, results


def _measure(workload: Workload, rounds: int) -> Measurement:
    sequential: list[float] = []
    in_parallel: list[float] = []
    for _ in range(rounds):
        seconds, expected = _time_sequential(workload)
        sequential.append(seconds)
        seconds, results = _time_parallel(workload)
        in_parallel.append(seconds)
        if results != expected:  # a wrong answer fast is no speed-up
            raise RuntimeError(
                f"the parallel run of {workload.label!r} returned {results!r}, "
                f"the sequential run {expected!r}: please report this bug"
            )
    return Measurement(workload, min(sequential), min(in_parallel))


def run_demo(quick: bool = False) -> DemoReport:
    """Measure both workloads on the thread backend, and the pure-Python one on processes.

    Args:
        quick: much smaller sizes and a single round (a smoke test, not a measurement).
    """
    size = _QUICK if quick else _FULL
    threads = int(get_thread_pool_info()["num_threads"])
    tasks = max(2, threads)
    _warm_up(threads)
    _warm_up_processes(tasks)
    workloads = (
        _hash_workload(tasks, size),
        _loop_workload(tasks, size, "thread"),
        _loop_workload(tasks, size, "process"),
    )
    return DemoReport(
        threads=threads,
        tasks=tasks,
        rounds=size.rounds,
        gil_enabled=gil_enabled(),
        free_threaded_build=free_threaded_build(),
        measurements=tuple(_measure(workload, size.rounds) for workload in workloads),
    )


def _build_words(report: DemoReport) -> str:
    build = "free-threaded build" if report.free_threaded_build else "GIL build"
    gil = "GIL enabled" if report.gil_enabled else "GIL disabled"
    return f"{platform.python_implementation()} {platform.python_version()}, {build}, {gil}"


def _explain(measurement: Measurement, report: DemoReport) -> str:
    if measurement.workload.backend == "process":
        return (
            "worker processes each have an interpreter and a GIL of their own, so "
            "pure-Python code runs on every core: use @parallel(backend='process') "
            "(or 'auto') for it. The time includes sending arguments and results "
            "between processes."
        )
    if measurement.workload.releases_gil:
        return (
            "hashlib.sha256 releases the GIL while it hashes large buffers, so the "
            "threads hash at the same time: threads speed up work that releases the GIL."
        )
    if not report.gil_enabled:
        return (
            "the GIL is disabled in this free-threaded build, so the threads run Python "
            "bytecode at the same time: pure-Python code speeds up too."
        )
    why = (
        "the GIL is enabled at run time in this free-threaded build"
        if report.free_threaded_build
        else "this is a GIL build"
    )
    return (
        f"no speed-up for pure-Python code on threads, because {why}: Python bytecode "
        "needs the GIL whichever thread runs it, so the threads take turns. A "
        "free-threaded Python (3.13t or later) runs it in parallel on threads."
    )


def render(report: DemoReport) -> str:
    """The report as an aligned plain-text table with one explanation per workload."""
    best = f"best of {report.rounds}" if report.rounds > 1 else "1 round"
    lines = [
        f"makeparallel demo: {_build_words(report)}",
        f"pools: {report.threads} thread(s), {report.tasks} worker process(es); each "
        f"workload split into {report.tasks} tasks; wall times, {best}",
        "",
    ]
    label_width = max(len("workload"), *(len(m.workload.label) for m in report.measurements))
    header = (
        f"{'workload':<{label_width}}  {'backend':<8}  {'sequential':>10}  {'parallel':>10}  {'speed-up':>8}"
    )
    lines += [header, "-" * len(header)]
    for m in report.measurements:
        lines.append(
            f"{m.workload.label:<{label_width}}  {m.workload.backend:<8}  {m.sequential_s:>9.3f}s  "
            f"{m.parallel_s:>9.3f}s  {m.speedup:>7.2f}x"
        )
    notes = [_explain(m, report) for m in report.measurements]
    if report.threads < 2:
        notes.append(
            "the pool has a single thread (this process may use one core), so "
            "nothing can run in parallel here."
        )
    lines.append("")
    lines += [textwrap.fill(note, width=88, initial_indent="* ", subsequent_indent="  ") for note in notes]
    return "\n".join(lines)
