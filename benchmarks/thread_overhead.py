"""Per-task overhead of the thread backend against ``ThreadPoolExecutor``, side by side.

Runs in one process, same worker count, alternating rounds so that machine noise
hits both alike, and prints ratios (higher is better for makeparallel):

* throughput: N no-op tasks submitted, then all collected; the median over
  rounds, and the best round in brackets (``ThreadPoolExecutor``'s rounds
  spread over 2-3x on a shared 2-core machine, 25,000 to 96,000 tasks/s in
  one run of 30: a best of few rounds is mostly its luckiest one);
* latency: one task submitted and collected, again and again (median);
* memory: N unfinished tasks held at once (tracemalloc), per task.

    python benchmarks/thread_overhead.py [--tasks 20000] [--rounds 15] [--exporters]

``--exporters`` runs it with every exporter on: the Prometheus collector
registered and scraped meanwhile, a StatsD exporter flushing every 0.1 s, and
task logging enabled.
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
from makeparallel.testing import wait_until_idle


def noop() -> None:
    return None


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


def latencies(fn: mp.ParallelFunction[[], None], pool: ThreadPoolExecutor, calls: int) -> dict[str, float]:
    """Median seconds per round trip, samples interleaved so noise hits all alike.

    ``get``: what users write, ``fn().get()``; a task still queued when asked for
    runs on the asking thread. ``hop``: ``fn().wait(60)``, which never runs the
    task inline, so it measures the hand-off to a worker thread and back.
    """
    samples: dict[str, list[float]] = {"get": [], "hop": [], "executor": []}
    clock = time.perf_counter
    for _ in range(calls):
        start = clock()
        fn().get()
        samples["get"].append(clock() - start)
        start = clock()
        fn().wait(60)
        samples["hop"].append(clock() - start)
        start = clock()
        pool.submit(noop).result()
        samples["executor"].append(clock() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


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


def start_exporters() -> None:
    """Prometheus (registered, scraped in a loop), StatsD (flushing fast), task logging."""
    import urllib.request

    from prometheus_client import CollectorRegistry

    from makeparallel.prometheus import start_http_server
    from makeparallel.statsd import StatsdExporter

    server, _ = start_http_server(0, registry=CollectorRegistry())
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def scrape() -> None:
        while True:
            urllib.request.urlopen(url).read()
            time.sleep(0.1)

    threading.Thread(target=scrape, daemon=True).start()
    StatsdExporter("127.0.0.1", 8125, interval=0.1).start()
    mp.enable_task_logging()
    print("exporters on: Prometheus (scraped every 0.1 s), StatsD (flushed every 0.1 s), task logging")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--exporters", action="store_true", help="with every exporter on")
    args = parser.parse_args()
    if args.exporters:
        start_exporters()
    workers = mp.get_thread_pool_info()["num_threads"]
    fn = mp.parallel(noop)
    print(f"{args.tasks} no-op tasks, {workers} workers each, median of {args.rounds} rounds (best in brackets)")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours.append(throughput_mp(fn, args.tasks))
            theirs.append(throughput_executor(pool, args.tasks))
        ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
        print(
            f"throughput: makeparallel {ours_median:>10,.0f} tasks/s ({max(ours):,.0f})   "
            f"ThreadPoolExecutor {theirs_median:>10,.0f} tasks/s ({max(theirs):,.0f})   "
            f"ratio {ours_median / theirs_median:.2f}x ({max(ours) / max(theirs):.2f}x)"
        )

        latency = latencies(fn, pool, 5_000)
        theirs_us = latency["executor"] * 1e6
        for name, label in (("get", "fn().get()"), ("hop", "fn().wait(60)")):
            ours_us = latency[name] * 1e6
            print(
                f"latency {label:<14} makeparallel {ours_us:>7.1f} us   "
                f"ThreadPoolExecutor {theirs_us:>7.1f} us   ratio {theirs_us / ours_us:.2f}x"
            )

    gate = threading.Event()
    blocker = mp.parallel(gate.wait)
    blockers = [blocker() for _ in range(workers)]
    our_bytes = pending_memory(fn, args.tasks, gate.set)
    wait_until_idle(60)
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
    main()
