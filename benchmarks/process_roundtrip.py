"""Process backend round-trip latency: one no-op task sent and its result received, again and again.

``fn(x).get()`` on ``@mp.parallel(backend="process")`` against
``Pool.apply_async(...).get()`` and ``ProcessPoolExecutor.submit(...).result()``,
same worker count. Each pool runs in a process of its own (``_isolated``: in
one process, each pool's leftover work after a call landed in the next call,
of another pool), is warmed for a second, then times blocks of calls in turn
with the others, so that machine noise hits all alike; medians are printed
with ratios (higher is better for makeparallel: its rate over the other's).

    python benchmarks/process_roundtrip.py [--calls 2000] [--block 50] [--workers 2] [--start-method fork]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable

from _isolated import Contender, add_arguments, serve

OURS = "makeparallel fn(x).get()"
CONTENDERS = (OURS, "Pool.apply_async(...).get()", "ProcessPoolExecutor.submit(...).result()")


def noop(x: int) -> int:
    return x


def round_trip(name: str, workers: int, start_method: str) -> Callable[[int], int]:
    """Set up ``name``'s pool in this process; return one round trip through it."""
    if name == OURS:
        import makeparallel as mp

        mp.configure_process_pool(num_workers=workers)
        task = mp.parallel(backend="process")(noop)
        return lambda x: task(x).get()
    context = multiprocessing.get_context(start_method)
    if name == "Pool.apply_async(...).get()":
        pool = context.Pool(workers)
        return lambda x: pool.apply_async(noop, (x,)).get()
    from concurrent.futures import ProcessPoolExecutor

    executor = ProcessPoolExecutor(workers, mp_context=context)
    return lambda x: executor.submit(noop, x).result()


def contend(name: str, workers: int, start_method: str) -> None:
    """A contender's process: answer each request ``[n]`` with the seconds of ``n`` round trips, one by one."""
    call = round_trip(name, workers, start_method)
    clock = time.perf_counter

    def block(calls: int) -> list[float]:
        times = []
        for i in range(calls):
            start = clock()
            assert call(i) == i
            times.append(clock() - start)
        return times

    serve(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--block", type=int, default=50, help="calls in a row through one pool")
    parser.add_argument("--workers", type=int, default=2)
    add_arguments(parser, CONTENDERS)
    args = parser.parse_args()
    if min(args.calls, args.block, args.workers) < 1:
        parser.error("--calls, --block and --workers must be at least 1")
    if args.contender is not None:
        contend(args.contender, args.workers, args.start_method)
        return

    options = ["--workers", str(args.workers), "--start-method", args.start_method]
    contenders = [Contender(__file__, name, options) for name in CONTENDERS]
    for contender in contenders:
        contender.warm(1.0, args.block)
    samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for _ in range(-(-args.calls // args.block)):  # at least --calls calls
        for contender in contenders:
            samples[contender.name] += contender.run(args.block)
    for contender in contenders:
        contender.close()

    ours = statistics.median(samples[OURS])
    print(
        f"round trip of one no-op task, {args.workers} workers, median of {len(samples[OURS])} "
        f"in blocks of {args.block}, each pool in a process of its own ({args.start_method} for the stdlib)"
    )
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:<42} {median * 1e6:7.1f} us   makeparallel {median / ours:5.2f}x")


if __name__ == "__main__":
    main()
