"""``configure_thread_pool(num_threads="auto")`` against fixed pool sizes, on three mixes of work.

Each mix runs on every configuration in turn, round after round (best of the
rounds), so that machine noise hits all alike; it prints seconds and each
configuration's time relative to the best fixed size (lower is better):

* ``io``: tasks that wait (``time.sleep``), where threads help far past the cores;
* ``cpu``: ``hashlib.sha256`` over a few MB, which releases the GIL, so threads help
  up to the cores;
* ``mixed``: half of each, interleaved.

    python benchmarks/adaptive_threads.py [--rounds 3] [--sleep-tasks 300] [--hash-tasks 80]
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable

import makeparallel as mp
from makeparallel._backends._thread import default_thread_count

PAYLOAD = bytes(4 * 1024 * 1024)


@mp.parallel
def wait_a_little(seconds: float) -> None:
    time.sleep(seconds)


@mp.parallel
def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mixes(sleep_tasks: int, hash_tasks: int) -> dict[str, Callable[[], list[mp.AsyncHandle[object]]]]:
    def io() -> list[mp.AsyncHandle[object]]:
        return [wait_a_little(0.01) for _ in range(sleep_tasks)]

    def cpu() -> list[mp.AsyncHandle[object]]:
        return [digest(PAYLOAD) for _ in range(hash_tasks)]

    def mixed() -> list[mp.AsyncHandle[object]]:
        handles: list[mp.AsyncHandle[object]] = []
        for i in range(max(sleep_tasks, hash_tasks) // 2):
            if i < sleep_tasks // 2:
                handles.append(wait_a_little(0.01))
            if i < hash_tasks // 2:
                handles.append(digest(PAYLOAD))
        return handles

    return {"io": io, "cpu": cpu, "mixed": mixed}


def timed(submit: Callable[[], list[mp.AsyncHandle[object]]]) -> float:
    start = time.perf_counter()
    handles = submit()
    mp.wait(handles)  # from the workers only: never run inline by this thread
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sleep-tasks", type=int, default=300)
    parser.add_argument("--hash-tasks", type=int, default=80)
    args = parser.parse_args()
    cores = default_thread_count()
    sizes: list[int | str] = sorted({cores, 2 * cores, 4 * cores, 16, 64}) + ["auto"]
    print(f"{cores} usable cores; fixed sizes {sizes[:-1]} against \"auto\"; best of {args.rounds} rounds")
    for name, submit in mixes(args.sleep_tasks, args.hash_tasks).items():
        best: dict[int | str, float] = {}
        for _ in range(args.rounds):
            for size in sizes:
                mp.configure_thread_pool(num_threads=size)  # "auto" starts again at the cores
                seconds = timed(submit)
                best[size] = min(best.get(size, float("inf")), seconds)
        fixed = {size: t for size, t in best.items() if size != "auto"}
        best_size = min(fixed, key=lambda size: fixed[size])
        row = "  ".join(f"{size}: {t:.3f}s" for size, t in best.items())
        print(f"{name:6} {row}")
        print(
            f"{'':6} auto / best fixed ({best_size}) = {best['auto'] / fixed[best_size]:.2f}x;  "
            f"auto / default ({cores}) = {best['auto'] / fixed[cores]:.2f}x"
        )
    mp.configure_thread_pool(num_threads=cores)


if __name__ == "__main__":
    main()
