"""``parallel_map`` of a no-op against a list comprehension and ``ThreadPoolExecutor.map``.

Side by side in one process, best of a few rounds each, alternating so machine
noise hits all alike. ``ThreadPoolExecutor.map`` ignores ``chunksize``, so its
best chunking is done by hand: the executor maps a function over pre-cut chunks
of the same size as ours would be on average.

    python benchmarks/map_throughput.py [--items 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import makeparallel as mp


def noop(x: int) -> int:
    return x


def map_chunk(items: list[int]) -> list[int]:
    return [noop(x) for x in items]


def timed(run: Callable[[], list[int]], expected: int) -> float:
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    assert len(result) == expected
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--plain-items", type=int, default=100_000,
                        help="items for the unchunked executor.map (it is slow)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.items
    workers = mp.get_thread_pool_info()["num_threads"]
    data = range(n)
    chunk = max(1, n // (4 * workers))

    def chunked_executor() -> list[int]:
        chunks = (list(data[i : i + chunk]) for i in range(0, n, chunk))
        return list(itertools.chain.from_iterable(pool.map(map_chunk, chunks)))

    best: dict[str, float] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs: dict[str, Callable[[], list[int]]] = {
            "list comprehension": lambda: [noop(x) for x in data],
            "mp.parallel_map": lambda: mp.parallel_map(noop, data),
            "executor.map, hand-chunked": chunked_executor,
        }
        for _ in range(args.rounds):
            for name, run in runs.items():
                best[name] = min(best.get(name, float("inf")), timed(run, n))
        plain_n = args.plain_items
        plain = min(
            timed(lambda: list(pool.map(noop, range(plain_n))), plain_n) for _ in range(args.rounds)
        )

    print(f"no-op over {n:,} items, {workers} workers, best of {args.rounds} rounds")
    ours = n / best["mp.parallel_map"]
    for name, seconds in best.items():
        rate = n / seconds
        print(f"{name:<28} {seconds:7.3f} s  {rate:>12,.0f} items/s  makeparallel is {ours / rate:5.2f}x")
    rate = plain_n / plain
    print(
        f"{'executor.map (per item)':<28} {plain:7.3f} s  {rate:>12,.0f} items/s  makeparallel is "
        f"{ours / rate:5.2f}x   (over {plain_n:,} items)"
    )


if __name__ == "__main__":
    main()
