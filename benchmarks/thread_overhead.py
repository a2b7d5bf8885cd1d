"""Per-task overhead of the thread backend against ``ThreadPoolExecutor``, side by side.

Runs in one process, same worker count, alternating rounds so that machine noise
hits both alike, and prints ratios (higher is better for makeparallel):

* throughput: N no-op tasks submitted, then all collected;
* latency: one task submitted and collected, again and again;
* memory: N unfinished tasks held at once (tracemalloc), per task.

    python benchmarks/thread_overhead.py [--tasks 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import makeparallel as mp


def noop() -> None:
    return None


def best_of(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def throughput_mp(fn: mp.ParallelFunction[[], None], tasks: int) -> float:
    start = time.perf_counter()
    handles = [fn() for _ in range(tasks)]
    for handle in handles:
        handle.get()
    return tasks / (time.perf_counter() - start)


def throughput_executor(pool: ThreadPoolExecutor, tasks: int) -> float:
    start = time.perf_counter()
    futures = [pool.submit(noop) for _ in range(tasks)]
    for future in futures:
        future.result()
    return tasks / (time.perf_counter() - start)


def latency_mp(fn: mp.ParallelFunction[[], None], calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn().wait(60)  # wait(timeout) never runs the task inline: a true round trip
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def latency_executor(pool: ThreadPoolExecutor, calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        pool.submit(noop).result()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def pending_memory(submit: Callable[[], object], tasks: int, release: Callable[[], None]) -> float:
    """Bytes per task for ``tasks`` tasks queued behind a blocked pool."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = [submit() for _ in range(tasks)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    release()
    del held
    return (after - before) / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    workers = mp.get_thread_pool_info()["num_threads"]
    fn = mp.parallel(noop)
    print(f"{args.tasks} no-op tasks, {workers} workers each, best of {args.rounds} rounds")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(throughput_mp(fn, args.tasks))
            theirs.append(throughput_executor(pool, args.tasks))
        print(
            f"throughput: makeparallel {max(ours):>10,.0f} tasks/s   "
            f"ThreadPoolExecutor {max(theirs):>10,.0f} tasks/s   ratio {max(ours) / max(theirs):.2f}x"
        )

        calls = 2_000
        our_latency = min(latency_mp(fn, calls) for _ in range(args.rounds))
        their_latency = min(latency_executor(pool, calls) for _ in range(args.rounds))
        print(
            f"latency:    makeparallel {our_latency * 1e6:>8.1f} us       "
            f"ThreadPoolExecutor {their_latency * 1e6:>8.1f} us       "
            f"ratio {their_latency / our_latency:.2f}x"
        )

    gate = threading.Event()
    blocker = mp.parallel(gate.wait)
    blockers = [blocker() for _ in range(workers)]
    our_bytes = pending_memory(fn, args.tasks, gate.set)
    mp.testing.wait_until_idle(60)
    del blockers
    gate = threading.Event()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in range(workers):
            pool.submit(gate.wait)
        their_bytes = pending_memory(lambda: pool.submit(noop), args.tasks, gate.set)
    print(
        f"memory:     makeparallel {our_bytes:>8.0f} B/task    "
        f"ThreadPoolExecutor {their_bytes:>8.0f} B/task    ratio {their_bytes / our_bytes:.2f}x"
    )


if __name__ == "__main__":
    import makeparallel.testing  # noqa: F401  (wait_until_idle)

    main()
