"""Fixed and per-item cost of ``parallel_map`` from 100 to 1,000,000 items, side by side.

For each size, a no-op mapped over ``range(size)``, or with ``--over list``
over a list of the same ints (which every pool pickles, where a range's
chunks travel as ranges in ours):

* processes: ``mp.parallel_map(..., backend="process")`` against ``Pool.map``
  (its own chunksize) and ``ProcessPoolExecutor.map`` with chunksize
  ``size // (4 * workers)``, same worker count, each pool in a process of its
  own (``_isolated``) and warmed for a second: in one process each pool's
  leftover work landed in the others' timings, and a new ``Pool`` is slow for
  its first half second or so;
* threads: ``mp.parallel_map`` against a plain list comprehension (a no-op is
  GIL-bound, so the loop is the bound nothing can beat);
* a map of one item on threads (the fixed cost of a map), medians over 2,000
  calls, against one ``@parallel`` call (what it should stay near: at most 2x)
  and ``ThreadPoolExecutor.map`` of one item, with the difference in
  microseconds beside each ratio. The calls run in blocks of
  ``ONE_ITEM_BLOCK`` of one kind, the kinds in turn: a call returns when its
  result is ready, while the pool's worker thread still finishes its own round
  (it settles the task, takes the GIL back, parks), and with the kinds
  interleaved call by call that work landed in the timing of the next call, of
  another pool (the map, always run right after ``ThreadPoolExecutor.map``,
  took 2.6x one call instead of 1.8x). In a block each pool pays its own; a
  pause before each call would add the wake-up of a parked thread to every
  call alike, and flatter the ratios. The first two or three calls of a block
  still pay for the pool's idle time before it: its parked worker threads
  wake (25-35 us each, against 3-6 us once warm, whatever ran before: a
  sleep did the same). In blocks of 10 those calls were a fifth to a third of
  the samples of the kind run after ``ThreadPoolExecutor.map``, the map, and
  never of the call, run after the map on a warm pool: the map read 2.06x to
  2.16x one call, and 1.65x to 1.71x with each kind run alone. In blocks of
  100 they are 2-3% of each kind's samples.

The maps of each size run the same way: in each round, a block of ``BLOCK``
calls of each kind in turn (one call each from 100,000 items on, where a call
takes milliseconds and what follows it is lost in them). A process pool too
finishes its round after a map returns (its result and task threads, its
workers going back to wait); in a block each pays its own round, as in a
program that runs maps in a loop.

Rounds alternate so that machine noise hits all alike; medians are printed with
ratios (higher is better for makeparallel: the other's time over ours). From
100,000 items on a round is one call of each, and a median of 5 swung too
much to read: over a list of 100,000, runs of 5 rounds printed 0.83x to 1.20x
``Pool.map`` on one day, and runs of 21 rounds 0.98x to 1.21x. So 15 rounds.
``--work N`` maps a function that loops ``N`` times instead of the no-op (on
the machine of the README's table, 50 is about 0.4 microseconds per item and
500 about 4), to see a fixed cost per item in proportion. ``--returns`` maps
a function that returns something else than its item (``None``, a ``bool``,
a pair of ints): a worker process keeps each result in its crash journal as it
ends, which costs more for those than for an ``int``.

    python benchmarks/map_scaling.py [--sizes 100,1000,10000,100000,1000000] [--rounds 15] [--workers 2] [--work 0] [--returns int] [--over range] [--start-method fork]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from _isolated import Contender, add_arguments, serve

import makeparallel as mp

OURS_PROCESS = "mp.parallel_map (process)"
PROCESS_MAPS = (OURS_PROCESS, "Pool.map", "ProcessPoolExecutor.map")


def noop(x: int) -> int:
    return x


def nothing(x: int) -> None:
    return None


def even(x: int) -> bool:
    return x % 2 == 0


def pair(x: int) -> tuple[int, int]:
    return (x, x)


RETURNS: dict[str, Callable[[int], Any]] = {"int": noop, "none": nothing, "bool": even, "pair": pair}


def work(loops: int, x: int) -> int:
    """``x``, after ``loops`` iterations of an empty loop."""
    for _ in range(loops):
        pass
    return x


BLOCK = 10  # map calls of one kind in a row
ONE_ITEM_BLOCK = 100  # one-item calls of one kind in a row


def timed(run: Callable[[], list[Any]], size: int, last: Any) -> float:
    """Seconds ``run`` took; its result must be ``size`` long and end with ``last``."""
    start = time.perf_counter()
    result = run()
    elapsed = time.perf_counter() - start
    assert len(result) == size and result[-1] == last, "wrong results"
    return elapsed


def report(title: str, rows: dict[str, list[float]], ours: str) -> None:
    base = statistics.median(rows[ours])
    print(title)
    for name, samples in rows.items():
        median = statistics.median(samples)
        print(f"  {name:<34} {median * 1e3:9.2f} ms   makeparallel {median / base:6.2f}x")


def inputs(kind: str, size: int) -> Sequence[int]:
    """The ``size`` items mapped: ``range(size)``, or the same numbers in a list (``--over list``)."""
    return range(size) if kind == "range" else list(range(size))


def mapped(args: argparse.Namespace) -> Callable[[int], Any]:
    return RETURNS[args.returns] if args.work == 0 else functools.partial(work, args.work)


def contend(name: str, args: argparse.Namespace) -> None:
    """A contender's process: set up ``name``'s pool, then answer ``[size, calls]`` with each call's seconds."""
    fn = mapped(args)
    run: Callable[[Sequence[int]], list[Any]]
    if name == OURS_PROCESS:
        mp.configure_process_pool(num_workers=args.workers)
        run = functools.partial(mp.parallel_map, fn, backend="process")
    else:
        context = multiprocessing.get_context(args.start_method)
        if name == "Pool.map":
            pool = context.Pool(args.workers)
            run = functools.partial(pool.map, fn)
        else:
            from concurrent.futures import ProcessPoolExecutor

            executor = ProcessPoolExecutor(args.workers, mp_context=context)
            run = lambda items: list(executor.map(fn, items, chunksize=max(1, len(items) // (4 * args.workers))))

    def calls_of(size: int, calls: int) -> list[float]:
        items = inputs(args.over, size)
        return [timed(lambda: run(items), size, fn(size - 1)) for _ in range(calls)]

    serve(calls_of)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000,100000,1000000")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=int, default=0, help="loop iterations per item (default: 0, a no-op)")
    parser.add_argument(
        "--returns", choices=list(RETURNS), default="int", help="what a no-op returns (default: int, its item)"
    )
    parser.add_argument("--over", choices=("range", "list"), default="range", help="what is mapped (default: range)")
    add_arguments(parser, PROCESS_MAPS)
    args = parser.parse_args()
    if args.contender is not None:
        contend(args.contender, args)
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    if min(*sizes, args.rounds, args.workers) < 1 or args.work < 0:
        parser.error("--sizes, --rounds and --workers must be at least 1, --work at least 0")
    if args.work and args.returns != "int":
        parser.error("--returns is for the no-op: --work's loop returns its item")
    what = "a no-op" if args.work == 0 else f"a loop of {args.work} iterations"
    if args.returns != "int":
        what += f" returning {args.returns}"
    print(
        f"{what} mapped over a {args.over} of ints; "
        f"the standard library's process pools start workers with {args.start_method}"
    )

    options = ["--workers", str(args.workers), "--start-method", args.start_method, "--work", str(args.work)]
    options += ["--returns", args.returns]
    options += ["--over", args.over]
    contenders = [Contender(__file__, name, options) for name in PROCESS_MAPS]
    for contender in contenders:
        contender.warm(1.0, 100, BLOCK)  # workers started, functions imported, a new Pool's slow start over
    single = mp.parallel(noop)
    fn = mapped(args)

    for size in sizes:
        items = inputs(args.over, size)
        processes: dict[str, list[float]] = {name: [] for name in PROCESS_MAPS}
        threads: dict[str, Callable[[], list[Any]]] = {
            "mp.parallel_map (thread)": functools.partial(mp.parallel_map, fn, items),
            "list comprehension": lambda items=items: [fn(x) for x in items],
        }
        thread_times: dict[str, list[float]] = {name: [] for name in threads}
        block = max(1, min(BLOCK, 100_000 // size))  # calls of one kind in a row: see the docstring
        for _ in range(args.rounds):
            for contender in contenders:
                processes[contender.name] += contender.run(size, block)
            for name, run in threads.items():
                thread_times[name].extend(timed(run, size, fn(size - 1)) for _ in range(block))
        report(
            f"\n{size:,} items, processes ({args.workers} workers, each pool in a process of its own)",
            processes,
            OURS_PROCESS,
        )
        report(f"{size:,} items, threads", thread_times, "mp.parallel_map (thread)")
    for contender in contenders:
        contender.close()

    threads_executor = ThreadPoolExecutor(mp.get_thread_pool_info()["num_threads"])
    one_item: dict[str, Callable[[], list[int]]] = {
        "mp.parallel_map of 1 item": lambda: mp.parallel_map(noop, range(1)),
        "one @parallel call": lambda: [single(0).get()],
        "ThreadPoolExecutor.map of 1 item": lambda: list(threads_executor.map(noop, range(1))),
    }
    one: dict[str, list[float]] = {name: [] for name in one_item}
    for _ in range(2000 // ONE_ITEM_BLOCK):
        for name, run in one_item.items():
            one[name] += [timed(run, 1, 0) for _ in range(ONE_ITEM_BLOCK)]
    ours = statistics.median(one["mp.parallel_map of 1 item"])
    print(f"\nmap of 1 item on threads, median of 2,000 in blocks of {ONE_ITEM_BLOCK} (target: at most 2x one @parallel call)")
    for name, samples in one.items():
        median = statistics.median(samples)
        print(
            f"  {name:<34} {median * 1e6:9.1f} us   the map takes {ours / median:5.2f}x this, "
            f"{(ours - median) * 1e6:+6.1f} us"
        )
    threads_executor.shutdown()
    mp.shutdown()


if __name__ == "__main__":
    main()
