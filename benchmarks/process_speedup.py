"""The process backend against ``ProcessPoolExecutor``, ``multiprocessing.Pool`` and joblib, side by side.

One run, same worker count for every pool, every pool warmed (its workers
started by a throwaway round) before it is timed, rounds alternating so that
machine noise hits all alike, best of ``--rounds``. Ratios are printed (higher
is better for makeparallel):

1. speed-up: eight pure-Python CPU tasks of about 0.15 s each (the loop count is
   calibrated at start), sequential, then ``@mp.parallel(backend="process")``
   (submit all, get all), ``ProcessPoolExecutor`` and, if importable,
   ``joblib.Parallel``; speed-up over sequential and per worker (target >= 0.9);
2. no-op throughput: N no-op tasks submitted, then all collected: makeparallel
   vs ``ProcessPoolExecutor.submit`` vs ``Pool.apply_async`` (targets: >= 2x the
   executor, >= 1x the pool);
3. map throughput: ``mp.parallel_map`` of a no-op over ``range(200_000)`` vs
   ``Pool.map`` (its own chunksize) vs ``ProcessPoolExecutor.map`` with chunksize
   items // (4 * workers) (target: >= Pool.map); then the same over a list of
   those ints (makeparallel sends a range's chunks as ranges, a few bytes each,
   and a list's items pickled, as the others do for both).

Part 1 also prints how many worker processes ran the tasks, which shows a pool
that leaves workers idle. ``--scaling`` repeats part 1 for 1, 2, 4, ... up to
``--workers`` workers, with max(8, workers) tasks so that every worker could get
one (meant for a machine with many cores). The stdlib pools use the
``forkserver`` start method by default: makeparallel's loop thread is running by
then, and forking a threaded process is unsafe (Python 3.12+ warns). ``--by-reference`` imports the
task functions from this file as a module instead of taking them from
``__main__``: makeparallel sends ``__main__`` functions by value (cloudpickle),
the stdlib pools by reference.

    python benchmarks/process_speedup.py [--workers N] [--rounds 3] [--cpu-tasks 8]
        [--tasks 5000] [--items 200000] [--scaling] [--start-method forkserver] [--by-reference]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from types import ModuleType
from typing import Any

import makeparallel as mp
from makeparallel._backends._template import template_available

try:
    import joblib  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # optional
    joblib = None

CPU_TASKS = 8
TASK_SECONDS = 0.15


# -- the work: module level, so that every pool can pickle it ---------------------------


def spin(n: int) -> int:
    """Pure-Python CPU work, about linear in ``n``."""
    total = 0
    for i in range(n):
        total += i ^ (i >> 3)
    return total


def cpu_task(n: int) -> tuple[int, int]:
    """``spin(n)``, and which process ran it."""
    return os.getpid(), spin(n)


def noop(x: Any = None) -> Any:
    return x


# -- helpers ------------------------------------------------------------------------


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def calibrate(target: float) -> int:
    """The loop count for which ``spin`` takes about ``target`` seconds here."""
    n = 20_000
    while True:
        start = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - start
        if elapsed > 0.02:
            break
        n *= 4
    n = int(n * target / elapsed)
    best = min(_time(lambda: spin(n)) for _ in range(3))
    return int(n * target / best)


def _time(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def timed(run: Callable[[], list[Any]], check: Callable[[list[Any]], bool]) -> float:
    gc.collect()
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    assert check(result), "wrong results"
    return elapsed


def best_of(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Best (lowest) seconds per name, the runs alternating round by round."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            best[name] = min(best.get(name, float("inf")), run())
    return best


def warm(submit: Callable[[float], Callable[[], int]], workers: int, what: str) -> None:
    """Rounds of 2 * workers short sleeps until every worker process has run one.

    A task that returns its pid shows which workers are up and past their first
    unpickling (imports, cloudpickle); two tasks per worker, so that a pool that
    sends tasks ahead to a busy worker still reaches every worker.
    """
    seen: set[int] = set()
    for _ in range(20):
        seen.update(get() for get in [submit(0.05) for _ in range(2 * workers)])
        if len(seen) >= workers:
            return
    print(f"  warning: only {len(seen)} of {workers} {what} workers ran a warm-up task")


def warm_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def warm_mp(tasks: ModuleType, workers: int) -> None:
    mp.configure_process_pool(num_workers=workers)
    fn = mp.parallel(backend="process")(tasks.warm_sleep)
    warm(lambda s: fn(s).get, workers, "makeparallel")
    deadline = time.monotonic() + 10  # after a shrink, surplus workers stop once idle
    while mp.get_process_pool_info()["live_workers"] != workers and time.monotonic() < deadline:
        time.sleep(0.01)


class Pools:
    """The stdlib pools at one worker count, started and warmed."""

    def __init__(self, workers: int, method: str, tasks: Any) -> None:
        context = multiprocessing.get_context(method)
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=context)
        self.pool = context.Pool(workers)
        # Warm: every worker started and its imports done. The executor starts its
        # workers on demand, one per submission that finds none idle.
        warm(lambda s: self.executor.submit(tasks.warm_sleep, s).result, workers, "ProcessPoolExecutor")
        warm(lambda s: self.pool.apply_async(tasks.warm_sleep, (s,)).get, workers, "Pool")
        if joblib is not None:  # loky's reusable executor: the same one each call
            joblib.Parallel(n_jobs=workers)(joblib.delayed(tasks.warm_sleep)(0.05) for _ in range(2 * workers))

    def close(self) -> None:
        self.executor.shutdown()
        self.pool.close()
        self.pool.join()


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:5.2f}x"


# -- part 1: speed-up ----------------------------------------------------------------


def speedup(
    workers: int, n: int, count: int, rounds: int, pools: Pools, tasks: ModuleType
) -> dict[str, tuple[float, int]]:
    """Per way of running ``count`` tasks of ``spin(n)``: best seconds, and how many
    worker processes ran the tasks in that best round."""
    expected = spin(n)
    mp_task = mp.parallel(backend="process")(tasks.cpu_task)
    best: dict[str, tuple[float, int]] = {}

    def run(name: str, go: Callable[[], list[tuple[int, int]]]) -> Callable[[], float]:
        def timed_run() -> float:
            gc.collect()
            start = time.perf_counter()
            result = go()
            elapsed = time.perf_counter() - start
            assert len(result) == count and all(total == expected for _, total in result), "wrong results"
            if elapsed < best.get(name, (float("inf"), 0))[0]:
                best[name] = (elapsed, len({pid for pid, _ in result}))
            return elapsed

        return timed_run

    runs = {
        "sequential": run("sequential", lambda: [tasks.cpu_task(n) for _ in range(count)]),
        "makeparallel process": run(
            "makeparallel process", lambda: [h.get() for h in [mp_task(n) for _ in range(count)]]
        ),
        "ProcessPoolExecutor": run(
            "ProcessPoolExecutor",
            lambda: [f.result() for f in [pools.executor.submit(tasks.cpu_task, n) for _ in range(count)]],
        ),
    }
    if joblib is not None:
        runs["joblib.Parallel"] = run(
            "joblib.Parallel",
            lambda: joblib.Parallel(n_jobs=workers)(joblib.delayed(tasks.cpu_task)(n) for _ in range(count)),
        )
    best_of(runs, rounds)
    return best


def ideal_speedup(count: int, workers: int) -> float:
    return count / -(-count // workers)


def print_speedup(best: dict[str, tuple[float, int]], workers: int, count: int) -> None:
    sequential = best["sequential"][0]
    ours = best["makeparallel process"][0]
    for name, (seconds, used) in best.items():
        line = f"  {name:<22} {seconds:7.3f} s"
        if name != "sequential":
            gain = sequential / seconds
            verdict = "ok" if gain / workers >= 0.9 else "BELOW target 0.9"
            line += f"   speed-up {gain:5.2f}x   per worker {gain / workers:4.2f} {verdict:<16}"
            line += f"  on {used:>2} workers"
        if name not in ("sequential", "makeparallel process"):
            line += f"   makeparallel is {ratio(seconds, ours)}"
        print(line)
    if joblib is None:
        print("  joblib: not installed")
    print(f"  (ideal speed-up for {count} equal tasks on {workers} workers: {ideal_speedup(count, workers):.2f}x)")


# -- part 2: no-op task throughput ------------------------------------------------------


def throughput(tasks_n: int, rounds: int, pools: Pools, tasks: ModuleType) -> dict[str, float]:
    mp_noop = mp.parallel(backend="process")(tasks.noop)

    def ok(result: list[Any]) -> bool:
        return len(result) == tasks_n and result[-1] == tasks_n - 1

    runs: dict[str, Callable[[], float]] = {
        "makeparallel process": lambda: timed(
            lambda: [h.get() for h in [mp_noop(i) for i in range(tasks_n)]], ok
        ),
        "ProcessPoolExecutor": lambda: timed(
            lambda: [f.result() for f in [pools.executor.submit(tasks.noop, i) for i in range(tasks_n)]], ok
        ),
        "Pool.apply_async": lambda: timed(
            lambda: [r.get() for r in [pools.pool.apply_async(tasks.noop, (i,)) for i in range(tasks_n)]], ok
        ),
    }
    return best_of(runs, rounds)


# -- part 3: map throughput -------------------------------------------------------------


def map_throughput(data: range | list[int], workers: int, rounds: int, pools: Pools, tasks: ModuleType) -> dict[str, float]:
    expected = list(data)
    chunk = max(1, len(data) // (4 * workers))

    def ok(result: list[int]) -> bool:
        return result == expected

    runs: dict[str, Callable[[], float]] = {
        "mp.parallel_map": lambda: timed(lambda: mp.parallel_map(tasks.noop, data, backend="process"), ok),
        "Pool.map": lambda: timed(lambda: pools.pool.map(tasks.noop, data), ok),
        f"executor.map chunk {chunk}": lambda: timed(
            lambda: list(pools.executor.map(tasks.noop, data, chunksize=chunk)), ok
        ),
    }
    return best_of(runs, rounds)


def print_rates(best: dict[str, float], count: int, unit: str, targets: dict[str, float]) -> None:
    first = next(iter(best))  # makeparallel
    ours = best[first]
    for name, seconds in best.items():
        rate = count / seconds
        line = f"  {name:<26} {seconds:7.3f} s  {rate:>12,.0f} {unit}/s"
        if name != first:
            verdict = ""
            if name in targets:
                verdict = "   ok" if seconds / ours >= targets[name] else f"   BELOW target {targets[name]:g}x"
            line += f"   makeparallel is {ratio(seconds, ours)}{verdict}"
        print(line)


# -- main ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=cores(), help="default: the cores this process may use")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu-tasks", type=int, default=CPU_TASKS, help="CPU tasks in part 1")
    parser.add_argument("--tasks", type=int, default=5_000, help="no-op tasks in part 2")
    parser.add_argument("--items", type=int, default=200_000, help="items mapped in part 3")
    parser.add_argument("--scaling", action="store_true", help="repeat part 1 for 1, 2, 4, ... workers")
    parser.add_argument(
        "--start-method", default="forkserver", choices=multiprocessing.get_all_start_methods(),
        help="for ProcessPoolExecutor and Pool (default: forkserver)",
    )
    parser.add_argument(
        "--by-reference", action="store_true",
        help="take the task functions from this file imported as a module, not __main__",
    )
    args = parser.parse_args()
    workers = args.workers

    tasks: ModuleType = sys.modules[__name__]
    if args.by_reference:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        tasks = importlib.import_module("process_speedup")

    n = calibrate(TASK_SECONDS)
    method = args.start_method
    joblib_note = f"joblib {joblib.__version__} (loky)" if joblib is not None else "joblib: not installed"
    print(
        f"Python {sys.version.split()[0]}, {cores()} usable cores, {workers} workers per pool, "
        f"best of {args.rounds} rounds; functions from {tasks.__name__}"
    )
    print(
        f"start methods: makeparallel: {'forks of its template process' if template_available() else 'fresh interpreters (subprocess)'}; ProcessPoolExecutor and "
        f"Pool: {method}; {joblib_note}"
    )

    warm_mp(tasks, workers)
    pools = Pools(workers, method, tasks)
    try:
        count = args.cpu_tasks
        print(f"\n1. speed-up: {count} CPU tasks of spin({n:,}) (~{TASK_SECONDS} s each here)")
        print_speedup(speedup(workers, n, count, args.rounds, pools, tasks), workers, count)

        print(f"\n2. no-op throughput: {args.tasks:,} tasks submitted, then collected")
        best = throughput(args.tasks, args.rounds, pools, tasks)
        print_rates(best, args.tasks, "tasks", {"ProcessPoolExecutor": 2.0, "Pool.apply_async": 1.0})

        print(f"\n3. map throughput: no-op over range({args.items:,})")
        best = map_throughput(range(args.items), workers, args.rounds, pools, tasks)
        print_rates(best, args.items, "items", {"Pool.map": 1.0})
        print(f"   the same over a list of those {args.items:,} ints (a range's chunks travel as ranges, a list's items pickled)")
        best = map_throughput(list(range(args.items)), workers, args.rounds, pools, tasks)
        print_rates(best, args.items, "items", {"Pool.map": 1.0})
    finally:
        pools.close()

    if args.scaling:
        print(
            f"\n4. scaling: part 1 at 1, 2, 4, ... {workers} workers, max({args.cpu_tasks}, workers) tasks each; "
            "speed-up over sequential (per worker) [workers that ran tasks]"
        )
        steps = sorted({min(1 << k, workers) for k in range(workers.bit_length() + 1)})
        curve = []
        for step in steps:
            count = max(args.cpu_tasks, step)
            warm_mp(tasks, step)
            pools = Pools(step, method, tasks)
            try:
                curve.append((step, count, speedup(step, n, count, args.rounds, pools, tasks)))
            finally:
                pools.close()
        names = list(curve[0][2])[1:]
        header = f"  {'workers':>7} {'tasks':>5} {'ideal':>6}  {'sequential':>10}  "
        print(header + "".join(f"{name:>29}" for name in names))
        for step, count, timings in curve:
            sequential = timings["sequential"][0]
            cells = []
            for name in names:
                seconds, used = timings[name]
                gain = sequential / seconds
                cells.append(f"{gain:5.2f}x ({gain / step:4.2f}) [{used:>2}]")
            ideal = ideal_speedup(count, step)
            row = f"  {step:>7} {count:>5} {ideal:5.2f}x  {sequential:8.3f} s  "
            print(row + "".join(f"{c:>29}" for c in cells))

    mp.shutdown()


if __name__ == "__main__":
    main()
