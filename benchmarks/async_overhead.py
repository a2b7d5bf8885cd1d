"""Awaiting tasks from asyncio: throughput and event-loop lag, side by side.

N no-op tasks are submitted from a coroutine (in slices of 256, the loop
getting a turn between slices, as a well-behaved producer does) and awaited all
at once with ``asyncio.gather``, while a ticker coroutine on the same loop asks
to wake every millisecond and records how late it wakes (the loop lag: what
every other coroutine on the loop, a web request say, would wait). Compared
with the standard way, ``loop.run_in_executor`` with a ``ThreadPoolExecutor`` of
the same size; ``mp.gather_async`` and the process backend are measured too.
Rounds alternate, so that machine noise hits all alike; it prints the best
throughput of each and the lag percentiles over every round.

``asyncio.gather`` wraps each handle in an ``asyncio.Task`` (it does so for any
awaitable that is not a future), and creating and first stepping ten thousand
tasks takes a turn of the loop each; ``mp.gather_async`` needs none.

    python benchmarks/async_overhead.py [--tasks 10000] [--rounds 5] [--workers N]

A 20 ms p99 and a 100 ms worst lag are the figures to stay under.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any
from concurrent.futures import ThreadPoolExecutor

import makeparallel as mp

TICK = 0.001  # seconds between the ticker's wake-ups
SLICE = 256  # tasks submitted between two turns of the loop


def noop() -> None:
    return None


async def measure(run: Callable[[], Awaitable[object]]) -> tuple[float, list[float]]:
    """Seconds ``run()`` took, and the ticker's lags (seconds late) meanwhile."""
    lags: list[float] = []
    running = True

    async def ticker() -> None:
        clock = time.perf_counter
        while running:
            expected = clock() + TICK
            await asyncio.sleep(TICK)
            lags.append(max(0.0, clock() - expected))

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(TICK * 3)  # the ticker is under way
    start = time.perf_counter()
    await run()
    elapsed = time.perf_counter() - start
    running = False
    await ticking
    return elapsed, lags


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(tasks: int, rounds: int, workers: int) -> None:
    mp.configure_thread_pool(num_threads=workers)
    mp.configure_process_pool(num_workers=workers)
    on_threads = mp.parallel(backend="thread")(noop)
    on_processes = mp.parallel(backend="process")(noop)
    loop = asyncio.get_running_loop()
    on_processes().get()  # start the workers before measuring
    await asyncio.gather(*(on_processes() for _ in range(workers * 4)))

    with ThreadPoolExecutor(max_workers=workers) as pool:

        async def submit(start: Callable[[], Any]) -> list[Any]:
            started = []
            for first in range(0, tasks, SLICE):
                started += [start() for _ in range(min(SLICE, tasks - first))]
                await asyncio.sleep(0)
            return started

        async def with_handles() -> object:
            return await asyncio.gather(*await submit(on_threads))

        async def with_executor() -> object:
            return await asyncio.gather(*await submit(lambda: loop.run_in_executor(pool, noop)))

        async def with_gather_async() -> object:
            return await mp.gather_async(await submit(on_threads))

        async def with_processes() -> object:
            return await mp.gather_async(await submit(on_processes))

        runs = {
            "makeparallel, thread, asyncio.gather": with_handles,
            "run_in_executor(ThreadPoolExecutor)": with_executor,  # with asyncio.gather
            "makeparallel, thread, mp.gather_async": with_gather_async,
            "makeparallel, process, mp.gather_async": with_processes,
        }
        best = dict.fromkeys(runs, float("inf"))
        lags: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                elapsed, round_lags = await measure(run)
                best[name] = min(best[name], elapsed)
                lags[name] += round_lags

    print(f"{tasks:,} no-op tasks awaited at once, {workers} workers, best of {rounds} rounds")
    print(f"{'':38} {'tasks/s':>10} {'lag p50':>9} {'lag p99':>9} {'lag max':>9}")
    for name in runs:
        samples = lags[name]
        print(
            f"{name:38} {tasks / best[name]:>10,.0f} "
            f"{statistics.median(samples) * 1e3:>7.2f}ms {percentile(samples, 0.99) * 1e3:>7.2f}ms "
            f"{max(samples) * 1e3:>7.2f}ms"
        )
    ratio = best["run_in_executor(ThreadPoolExecutor)"] / best["makeparallel, thread, asyncio.gather"]
    print(f"throughput, thread backend against run_in_executor: {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=mp.get_thread_pool_info()["num_threads"])
    arguments = parser.parse_args()
    asyncio.run(main(arguments.tasks, arguments.rounds, arguments.workers))
    mp.shutdown(timeout_secs=10)
