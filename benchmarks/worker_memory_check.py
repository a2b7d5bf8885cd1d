"""What ``max_worker_memory`` costs: no-op process tasks with the limit off and on.

The limit is set far above any worker (8 GiB), so nothing is recycled: what is
measured is the read of each worker's memory after its results. Rounds alternate
off and on, so that machine noise hits both alike; medians per task are printed,
with the ratio on/off (1.00 is free).

    python benchmarks/worker_memory_check.py [--rounds 9] [--burst 5000] [--calls 500] [--workers 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import makeparallel as mp


def noop(x: int) -> int:
    return x


def burst(task: Callable[[int], mp.AsyncHandle[int]], n: int) -> float:
    """Seconds per task, ``n`` submitted at once, then collected."""
    start = time.perf_counter()
    handles = [task(i) for i in range(n)]
    for handle in handles:
        handle.get(timeout=120)
    return (time.perf_counter() - start) / n


def round_trips(task: Callable[[int], mp.AsyncHandle[int]], n: int) -> float:
    """Seconds per task, each awaited before the next is submitted."""
    start = time.perf_counter()
    for i in range(n):
        task(i).get(timeout=120)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    mp.configure_process_pool(args.workers, prestart=True)
    task = mp.parallel(backend="process")(noop)
    burst(task, args.burst)  # warm the workers and the function cache
    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for setting, limit in (("off", None), ("on", "8GiB")):
            mp.configure_process_pool(max_worker_memory=limit)
            samples.setdefault(("burst", setting), []).append(burst(task, args.burst))
            samples.setdefault(("round trip", setting), []).append(round_trips(task, args.calls))
    restarts = mp.get_process_pool_info()["worker_restarts"]
    mp.shutdown()

    print(f"no-op process tasks, {args.workers} workers, median of {args.rounds} alternating rounds ({restarts} restarts)")
    for kind in ("burst", "round trip"):
        off = statistics.median(samples[(kind, "off")])
        on = statistics.median(samples[(kind, "on")])
        print(f"  {kind:<11} off {off * 1e6:7.1f} us/task   on {on * 1e6:7.1f} us/task   on/off {on / off:5.2f}x")


if __name__ == "__main__":
    main()
