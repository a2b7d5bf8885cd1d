"""Awaiting tasks from asyncio: throughput and event-loop lag, side by side.

N no-op tasks are submitted from a coroutine (in slices of 256, the loop
getting a turn between slices, as a well-behaved producer does) and awaited all
at once, while a ticker coroutine on the same loop asks to wake every
millisecond and records how late it wakes (the loop lag: what every other
coroutine on the loop, a web request say, would wait). On the thread and the
process backends, each with ``asyncio.gather`` of the handles and with
``mp.gather_async`` (and, on threads, ``async for`` over ``mp.as_completed``); compared with the standard way, ``loop.run_in_executor``
with a ``ThreadPoolExecutor`` of the same size (and, for the process backend, a
``ProcessPoolExecutor``), awaited with ``asyncio.gather``. Rounds alternate, so
that machine noise hits all alike; each figure is the median over the rounds of
that round's throughput, lag p99 and worst lag, and of the CPU time the loop's
thread spent (submitting included): unlike the lags, that figure does not grow
when other programs load the machine.

The last row is no library at all: ``asyncio.gather`` of N awaitables that are
already done. ``asyncio.gather`` wraps each awaitable that is not an asyncio
future in a task of its own, creating all N in one turn of the loop and
starting them all in the next: that row is the loop lag ``asyncio.gather``
itself costs, whatever is awaited. ``mp.gather_async`` creates no task.

    python benchmarks/async_overhead.py [--tasks 10000] [--rounds 5] [--workers N]

A 20 ms p99 and a 100 ms worst lag are the figures to stay under.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import makeparallel as mp

TICK = 0.001  # seconds between the ticker's wake-ups
SLICE = 256  # tasks submitted between two turns of the loop


def noop() -> None:
    return None


class Ended:
    """An awaitable that is done at once: what asyncio.gather costs by itself."""

    def __await__(self) -> Generator[Any, None, None]:
        return None
        yield  # a generator, as an awaitable's __await__ must be


async def measure(run: Callable[[], Awaitable[object]]) -> tuple[float, float, list[float]]:
    """Seconds ``run()`` took, the loop thread's CPU seconds meanwhile, and the ticker's lags (seconds late)."""
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
    start, cpu = time.perf_counter(), time.thread_time()
    await run()
    elapsed, cpu = time.perf_counter() - start, time.thread_time() - cpu
    running = False
    await ticking
    return elapsed, cpu, lags


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def main(tasks: int, rounds: int, workers: int) -> None:
    mp.configure_thread_pool(num_threads=workers)
    mp.configure_process_pool(num_workers=workers, prestart=True)
    on_threads = mp.parallel(backend="thread")(noop)
    on_processes = mp.parallel(backend="process")(noop)
    loop = asyncio.get_running_loop()
    await mp.gather_async([on_processes() for _ in range(workers * 4)])  # the workers are warm

    with ThreadPoolExecutor(max_workers=workers) as threads, ProcessPoolExecutor(max_workers=workers) as processes:
        await asyncio.gather(*(loop.run_in_executor(processes, noop) for _ in range(workers * 4)))

        async def submit(start: Callable[[], Any]) -> list[Any]:
            started = []
            for first in range(0, tasks, SLICE):
                started += [start() for _ in range(min(SLICE, tasks - first))]
                await asyncio.sleep(0)
            return started

        def gathered(start: Callable[[], Any]) -> Callable[[], Awaitable[object]]:
            async def run() -> object:
                return await asyncio.gather(*await submit(start))

            return run

        def gathered_async(start: Callable[[], Any]) -> Callable[[], Awaitable[object]]:
            async def run() -> object:
                return await mp.gather_async(await submit(start))

            return run

        def completed(start: Callable[[], Any]) -> Callable[[], Awaitable[object]]:
            async def run() -> object:
                return [handle.result() async for handle in mp.as_completed(await submit(start))]

            return run

        runs = {
            "thread, asyncio.gather(*handles)": gathered(on_threads),
            "thread, mp.gather_async(handles)": gathered_async(on_threads),
            "thread, async for in as_completed": completed(on_threads),
            "run_in_executor(ThreadPoolExecutor)": gathered(lambda: loop.run_in_executor(threads, noop)),
            "process, asyncio.gather(*handles)": gathered(on_processes),
            "process, mp.gather_async(handles)": gathered_async(on_processes),
            "run_in_executor(ProcessPoolExecutor)": gathered(lambda: loop.run_in_executor(processes, noop)),
            "no library: asyncio.gather(*ended)": gathered(Ended),
        }
        elapsed: dict[str, list[float]] = {name: [] for name in runs}
        loop_cpu: dict[str, list[float]] = {name: [] for name in runs}
        p99: dict[str, list[float]] = {name: [] for name in runs}
        worst: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                seconds, cpu, lags = await measure(run)
                elapsed[name].append(seconds)
                loop_cpu[name].append(cpu)
                p99[name].append(percentile(lags, 0.99))
                worst[name].append(max(lags))

    median = statistics.median
    print(f"{tasks:,} no-op tasks awaited at once, {workers} workers, median of {rounds} rounds")
    print(f"{'':38} {'tasks/s':>10} {'lag p99':>9} {'lag max':>9} {'loop CPU':>9}")
    for name in runs:
        print(
            f"{name:38} {tasks / median(elapsed[name]):>10,.0f} "
            f"{median(p99[name]) * 1e3:>7.1f}ms {median(worst[name]) * 1e3:>7.1f}ms "
            f"{median(loop_cpu[name]) * 1e3:>7.1f}ms"
        )
    for backend, executor in (("thread", "ThreadPoolExecutor"), ("process", "ProcessPoolExecutor")):
        standard = median(elapsed[f"run_in_executor({executor})"])
        ratios = ", ".join(
            f"{how} {standard / median(elapsed[f'{backend}, {how}']):.2f}x"
            for how in ("asyncio.gather(*handles)", "mp.gather_async(handles)")
        )
        print(f"throughput, {backend} backend against run_in_executor({executor}): {ratios}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=mp.get_thread_pool_info()["num_threads"])
    arguments = parser.parse_args()
    asyncio.run(main(arguments.tasks, arguments.rounds, arguments.workers))
    mp.shutdown(timeout_secs=10)
