"""Peak memory of sending one large item to a worker process: a map of it against one ``@parallel`` call.

One ``bytes`` of ``--mib`` MiB goes to the process backend, as the argument of
a ``@parallel`` call and as the one item of ``mp.parallel_map``; the function
returns its length. Before each run the kernel's peak-RSS counters of the
parent and of every worker are reset (``/proc/PID/clear_refs``), after it they
are read (``VmHWM``) and summed: the most each process held, above what the
item itself costs the parent. Linux only. Rounds alternate; medians are printed.

    python benchmarks/large_item_memory.py [--mib 32] [--rounds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import makeparallel as mp

MIB = 1024 * 1024


def size_of(data: bytes) -> int:
    return len(data)


def pids() -> list[int]:
    return [os.getpid(), *mp.get_process_pool_info()["worker_pids"]]


def reset_peaks(processes: list[int]) -> None:
    for pid in processes:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")  # peak RSS := current RSS


def kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def peak_above_start(run: Callable[[], int], expected: int) -> float:
    """MiB: the sum over the parent and the workers of each one's peak RSS during ``run``, minus its RSS before."""
    processes = pids()
    reset_peaks(processes)
    before = {pid: kib(pid, "VmRSS") for pid in processes}
    assert run() == expected, "wrong result"
    return sum(kib(pid, "VmHWM") - before[pid] for pid in processes) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    mp.configure_process_pool(num_workers=args.workers, prestart=True)
    task = mp.parallel(backend="process")(size_of)
    item = os.urandom(args.mib * MIB)
    for _ in range(2):  # warm: workers started, function and buffers paths used once
        task(item).get()
        mp.parallel_map(size_of, [item], backend="process")

    rows: dict[str, list[float]] = {"one @parallel call": [], "parallel_map of one item": []}
    for _ in range(args.rounds):
        rows["one @parallel call"].append(peak_above_start(lambda: task(item).get(), len(item)))
        rows["parallel_map of one item"].append(
            peak_above_start(lambda: mp.parallel_map(size_of, [item], backend="process")[0], len(item))
        )
    print(f"a {args.mib} MiB bytes item, {args.workers} workers: peak RSS above the start, parent + workers")
    base = statistics.median(rows["one @parallel call"])
    for name, samples in rows.items():
        median = statistics.median(samples)
        print(f"  {name:<26} {median:8.1f} MiB  ({min(samples):.1f} to {max(samples):.1f}); {median / base:.2f}x the call")
    mp.shutdown()


if __name__ == "__main__":
    main()
