"""Waiting inside a task: running queued children inline against lending the worker's place.

A parent task on a pool of ONE thread submits N no-op children and waits for
each. Without a timeout the wait runs a queued child inline, on the parent's
thread (the cheapest way to wait). With a timeout, the parent's worker lends its
place and the pool runs a compensating worker, as Java's
``ForkJoinPool.managedBlock`` does. Printed: the cost per child of each, side by
side in one run (best of a few alternating rounds), and the ratio; then how
late a wait with a timeout ends when the child it waits for runs long, which
lending keeps near zero and running inline would make as long as the child.

    python benchmarks/nested_wait.py [--children 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import threading
import time

import makeparallel as mp


def noop() -> None:
    return None


child = mp.parallel(backend="thread")(noop)


@mp.parallel(backend="thread")
def parent_get(children: int, timeout: float | None) -> float:
    start = time.perf_counter()
    for _ in range(children):
        child().get(timeout=timeout)
    return time.perf_counter() - start


@mp.parallel(backend="thread")
def parent_gather(children: int, timeout: float | None) -> float:
    start = time.perf_counter()
    mp.gather([child() for _ in range(children)], timeout=timeout)
    return time.perf_counter() - start


@mp.parallel(backend="thread")
def late_by(run_for: float, timeout: float) -> float:
    """How long after its deadline a wait ends, the child running ``run_for`` seconds."""
    gate = threading.Event()
    slow = mp.parallel(backend="thread")(lambda: gate.wait(run_for))()
    start = time.perf_counter()
    try:
        slow.get(timeout=timeout)
    except mp.TaskTimeoutError:
        pass
    late = time.perf_counter() - start - timeout
    gate.set()
    return late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    mp.configure_thread_pool(num_threads=1)
    n = args.children
    print(f"a task on a 1-thread pool waits for {n} no-op children, one by one and with gather; best of {args.rounds}")
    for name, parent in (("get", parent_get), ("gather", parent_gather)):
        inline = min(parent(n, None).get() for _ in range(args.rounds))
        lent = min(parent(n, 60.0).get() for _ in range(args.rounds))
        print(
            f"{name:<7} inline (no timeout) {inline / n * 1e6:7.1f} us/child   "
            f"lent place (timeout=60) {lent / n * 1e6:7.1f} us/child   lending costs {lent / inline:5.2f}x"
        )
    run_for, timeout = 0.5, 0.05
    late = late_by(run_for, timeout).get()
    print(
        f"a wait with timeout={timeout:g} s for a child that runs {run_for:g} s ends {late * 1e3:.1f} ms late "
        f"(run inline, it would end about {(run_for - timeout) * 1e3:.0f} ms late)"
    )


if __name__ == "__main__":
    main()
