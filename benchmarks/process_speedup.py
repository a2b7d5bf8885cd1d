"""The process backend against ``ProcessPoolExecutor``, ``multiprocessing.Pool`` and joblib, side by side.

One run, same worker count for every pool, each pool in a process of its own
(``_isolated``: measured in one process, each pool's leftover work landed in
the others' timings), every pool warmed (each of its workers has run a task,
then a second of no-op bursts) before it is timed, rounds alternating so that
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
one (meant for a machine with many cores). The stdlib pools use the ``fork``
start method by default, their fastest: each starts in a process of its own,
which has no other thread yet. ``--by-reference`` imports the task functions
from this file as a module instead of taking them from ``__main__``:
makeparallel sends ``__main__`` functions by value (cloudpickle), the stdlib
pools by reference.

    python benchmarks/process_speedup.py [--workers N] [--rounds 3] [--cpu-tasks 8]
        [--tasks 5000] [--items 200000] [--scaling] [--start-method fork] [--by-reference]
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
from types import ModuleType
from typing import Any

from _isolated import Contender, add_arguments, serve

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
    print(f"  warning: only {len(seen)} of {workers} {what} workers ran a warm-up task", file=sys.stderr)


def warm_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:5.2f}x"


# -- the contenders, each in a process of its own ------------------------------------------

OURS = "makeparallel process"
EXECUTOR = "ProcessPoolExecutor"
POOL = "Pool"
JOBLIB = "joblib.Parallel"


class Ways:
    """One pool's ways of running each part's work, set up and warmed in this process."""

    def __init__(self, name: str, workers: int, method: str, tasks: ModuleType) -> None:
        if name == OURS:
            import makeparallel as mp

            mp.configure_process_pool(num_workers=workers)
            cpu_task = mp.parallel(backend="process")(tasks.cpu_task)
            noop = mp.parallel(backend="process")(tasks.noop)
            sleeper = mp.parallel(backend="process")(tasks.warm_sleep)
            self.cpu = lambda n, count: [h.get() for h in [cpu_task(n) for _ in range(count)]]
            self.burst = lambda count: [h.get() for h in [noop(i) for i in range(count)]]
            self.map = lambda data: mp.parallel_map(tasks.noop, data, backend="process")
            warm(lambda s: sleeper(s).get, workers, name)
        elif name == EXECUTOR:
            from concurrent.futures import ProcessPoolExecutor

            executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method))
            self.cpu = lambda n, count: [f.result() for f in [executor.submit(tasks.cpu_task, n) for _ in range(count)]]
            self.burst = lambda count: [f.result() for f in [executor.submit(tasks.noop, i) for i in range(count)]]
            self.map = lambda data: list(executor.map(tasks.noop, data, chunksize=max(1, len(data) // (4 * workers))))
            warm(lambda s: executor.submit(tasks.warm_sleep, s).result, workers, name)
        elif name == POOL:
            pool = multiprocessing.get_context(method).Pool(workers)
            self.burst = lambda count: [r.get() for r in [pool.apply_async(tasks.noop, (i,)) for i in range(count)]]
            self.map = lambda data: pool.map(tasks.noop, data)
            warm(lambda s: pool.apply_async(tasks.warm_sleep, (s,)).get, workers, name)
        else:  # joblib: loky's reusable executor, the same one each call
            assert joblib is not None
            self.cpu = lambda n, count: joblib.Parallel(n_jobs=workers)(joblib.delayed(tasks.cpu_task)(n) for _ in range(count))
            joblib.Parallel(n_jobs=workers)(joblib.delayed(tasks.warm_sleep)(0.05) for _ in range(2 * workers))

    def answer(self, part: str, *params: Any) -> Any:
        """Run one round of ``part``: ``[seconds, workers that ran tasks]`` for "cpu", else seconds."""
        if part == "cpu":
            n, count = params
            expected = spin(n)
            result: list[tuple[int, int]] = []

            def run() -> list[tuple[int, int]]:
                result[:] = self.cpu(n, count)
                return result

            seconds = timed(run, lambda done: len(done) == count and all(total == expected for _, total in done))
            return [seconds, len({pid for pid, _ in result})]
        if part == "burst":
            (count,) = params
            return timed(lambda: self.burst(count), lambda done: len(done) == count and done[-1] == count - 1)
        kind, items = params  # "map"
        data = range(items) if kind == "range" else list(range(items))
        return timed(lambda: self.map(data), lambda done: done == list(range(items)))


def contend(name: str, args: argparse.Namespace) -> None:
    """A contender's process: set up and warm ``name``'s pool, then answer the parts' requests."""
    serve(Ways(name, args.workers, args.start_method, task_module(args.by_reference)).answer)


def task_module(by_reference: bool) -> ModuleType:
    """Where the tasks come from: ``__main__``, or this file imported as a module."""
    if not by_reference:
        return sys.modules[__name__]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    return importlib.import_module("process_speedup")


def start_contenders(names: list[str], workers: int, args: argparse.Namespace) -> dict[str, Contender]:
    options = ["--workers", str(workers), "--start-method", args.start_method]
    if args.by_reference:
        options.append("--by-reference")
    contenders = {name: Contender(__file__, name, options) for name in names}
    for name, contender in contenders.items():
        if name != JOBLIB:  # a new Pool is slow for its first half second or so (_isolated)
            contender.warm(1.0, "burst", 100)
    return contenders


def close_all(contenders: dict[str, Contender]) -> None:
    for contender in contenders.values():
        contender.close()


def best_rounds(asks: dict[str, Callable[[], Any]], rounds: int, key: Callable[[Any], float] = float) -> dict[str, Any]:
    """Best (lowest ``key``) answer per name, the asks alternating round by round."""
    best: dict[str, Any] = {}
    for _ in range(rounds):
        for name, ask in asks.items():
            answer = ask()
            if name not in best or key(answer) < key(best[name]):
                best[name] = answer
    return best


# -- part 1: speed-up ----------------------------------------------------------------


def speedup(contenders: dict[str, Contender], n: int, count: int, rounds: int) -> dict[str, tuple[float, int]]:
    """Per way of running ``count`` tasks of ``spin(n)``: best seconds, and how many
    worker processes ran the tasks in that best round."""
    asks: dict[str, Callable[[], Any]] = {"sequential": lambda: [_time(lambda: [cpu_task(n) for _ in range(count)]), 1]}
    for name in (OURS, EXECUTOR, JOBLIB):
        if name in contenders:
            asks[name] = lambda contender=contenders[name]: contender.run("cpu", n, count)
    best = best_rounds(asks, rounds, key=lambda answer: answer[0])
    return {name: (seconds, used) for name, (seconds, used) in best.items()}


def ideal_speedup(count: int, workers: int) -> float:
    return count / -(-count // workers)


def print_speedup(best: dict[str, tuple[float, int]], workers: int, count: int) -> None:
    sequential = best["sequential"][0]
    ours = best[OURS][0]
    for name, (seconds, used) in best.items():
        line = f"  {name:<22} {seconds:7.3f} s"
        if name != "sequential":
            gain = sequential / seconds
            verdict = "ok" if gain / workers >= 0.9 else "BELOW target 0.9"
            line += f"   speed-up {gain:5.2f}x   per worker {gain / workers:4.2f} {verdict:<16}"
            line += f"  on {used:>2} workers"
        if name not in ("sequential", OURS):
            line += f"   makeparallel is {ratio(seconds, ours)}"
        print(line)
    if joblib is None:
        print("  joblib: not installed")
    print(f"  (ideal speed-up for {count} equal tasks on {workers} workers: {ideal_speedup(count, workers):.2f}x)")


# -- parts 2 and 3: no-op task and map throughput ---------------------------------------------


def throughput(contenders: dict[str, Contender], tasks_n: int, rounds: int) -> dict[str, float]:
    labels = {OURS: OURS, EXECUTOR: EXECUTOR, POOL: "Pool.apply_async"}
    asks = {labels[name]: lambda c=contenders[name]: c.run("burst", tasks_n) for name in labels}
    return best_rounds(asks, rounds)


def map_throughput(contenders: dict[str, Contender], kind: str, items: int, workers: int, rounds: int) -> dict[str, float]:
    labels = {OURS: "mp.parallel_map", POOL: "Pool.map", EXECUTOR: f"executor.map chunk {max(1, items // (4 * workers))}"}
    asks = {labels[name]: lambda c=contenders[name]: c.run("map", kind, items) for name in labels}
    return best_rounds(asks, rounds)


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
        "--by-reference", action="store_true",
        help="take the task functions from this file imported as a module, not __main__",
    )
    add_arguments(parser, (OURS, EXECUTOR, POOL, JOBLIB))
    args = parser.parse_args()
    if args.contender is not None:
        contend(args.contender, args)
        return
    if min(args.workers, args.rounds, args.cpu_tasks, args.tasks, args.items) < 1:
        parser.error("--workers, --rounds, --cpu-tasks, --tasks and --items must be at least 1")
    workers = args.workers
    tasks = task_module(args.by_reference)

    n = calibrate(TASK_SECONDS)
    joblib_note = f"joblib {joblib.__version__} (loky)" if joblib is not None else "joblib: not installed"
    print(
        f"Python {sys.version.split()[0]}, {cores()} usable cores, {workers} workers per pool, "
        f"best of {args.rounds} rounds; functions from {tasks.__name__}; each pool in a process of its own"
    )
    print(
        f"start methods: makeparallel: {'forks of its template process' if template_available() else 'fresh interpreters (subprocess)'}; ProcessPoolExecutor and "
        f"Pool: {args.start_method}; {joblib_note}"
    )

    names = [OURS, EXECUTOR, POOL] + ([JOBLIB] if joblib is not None else [])
    contenders = start_contenders(names, workers, args)
    try:
        count = args.cpu_tasks
        print(f"\n1. speed-up: {count} CPU tasks of spin({n:,}) (~{TASK_SECONDS} s each here)")
        print_speedup(speedup(contenders, n, count, args.rounds), workers, count)

        print(f"\n2. no-op throughput: {args.tasks:,} tasks submitted, then collected")
        best = throughput(contenders, args.tasks, args.rounds)
        print_rates(best, args.tasks, "tasks", {EXECUTOR: 2.0, "Pool.apply_async": 1.0})

        print(f"\n3. map throughput: no-op over range({args.items:,})")
        best = map_throughput(contenders, "range", args.items, workers, args.rounds)
        print_rates(best, args.items, "items", {"Pool.map": 1.0})
        print(f"   the same over a list of those {args.items:,} ints (a range's chunks travel as ranges, a list's items pickled)")
        best = map_throughput(contenders, "list", args.items, workers, args.rounds)
        print_rates(best, args.items, "items", {"Pool.map": 1.0})
    finally:
        close_all(contenders)

    if args.scaling:
        print(
            f"\n4. scaling: part 1 at 1, 2, 4, ... {workers} workers, max({args.cpu_tasks}, workers) tasks each; "
            "speed-up over sequential (per worker) [workers that ran tasks]"
        )
        steps = sorted({min(1 << k, workers) for k in range(workers.bit_length() + 1)})
        curve = []
        for step in steps:
            count = max(args.cpu_tasks, step)
            contenders = start_contenders([name for name in names if name != POOL], step, args)
            try:
                curve.append((step, count, speedup(contenders, n, count, args.rounds)))
            finally:
                close_all(contenders)
        names_shown = list(curve[0][2])[1:]
        header = f"  {'workers':>7} {'tasks':>5} {'ideal':>6}  {'sequential':>10}  "
        print(header + "".join(f"{name:>29}" for name in names_shown))
        for step, count, timings in curve:
            sequential = timings["sequential"][0]
            cells = []
            for name in names_shown:
                seconds, used = timings[name]
                gain = sequential / seconds
                cells.append(f"{gain:5.2f}x ({gain / step:4.2f}) [{used:>2}]")
            ideal = ideal_speedup(count, step)
            row = f"  {step:>7} {count:>5} {ideal:5.2f}x  {sequential:8.3f} s  "
            print(row + "".join(f"{c:>29}" for c in cells))


if __name__ == "__main__":
    main()
