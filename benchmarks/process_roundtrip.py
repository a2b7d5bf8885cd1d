"""Process backend round-trip latency: one no-op task sent and its result received, again and again.

``fn(x).get()`` on ``@mp.parallel(backend="process")`` against
``Pool.apply_async(...).get()`` and ``ProcessPoolExecutor.submit(...).result()``,
same worker count, every pool warmed, samples interleaved so that machine noise
hits all alike; medians are printed with ratios (higher is better for
makeparallel: its rate over the other's).

    python benchmarks/process_roundtrip.py [--calls 2000] [--workers 2] [--start-method forkserver]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import makeparallel as mp


def noop(x: int) -> int:
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", default="forkserver", help="for the stdlib pools (default: forkserver)")
    args = parser.parse_args()

    mp.configure_process_pool(num_workers=args.workers)
    task = mp.parallel(backend="process")(noop)
    context = multiprocessing.get_context(args.start_method)
    pool = context.Pool(args.workers)
    executor = ProcessPoolExecutor(args.workers, mp_context=context)
    ways: dict[str, Callable[[int], int]] = {
        "makeparallel fn(x).get()": lambda x: task(x).get(),
        "Pool.apply_async(...).get()": lambda x: pool.apply_async(noop, (x,)).get(),
        "ProcessPoolExecutor.submit(...).result()": lambda x: executor.submit(noop, x).result(),
    }
    samples: dict[str, list[float]] = {name: [] for name in ways}
    clock = time.perf_counter
    for i in range(args.calls + 50):  # the first 50 of each warm the pools and are dropped
        for name, call in ways.items():
            start = clock()
            assert call(i) == i
            if i >= 50:
                samples[name].append(clock() - start)
    pool.close()
    pool.join()
    executor.shutdown()
    mp.shutdown()

    ours = statistics.median(samples["makeparallel fn(x).get()"])
    print(f"round trip of one no-op task, {args.workers} workers, median of {args.calls} ({args.start_method} for the stdlib)")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:<42} {median * 1e6:7.1f} us   makeparallel {median / ours:5.2f}x")


if __name__ == "__main__":
    main()
