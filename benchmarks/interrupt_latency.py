"""How long a program takes to end after Ctrl-C in the middle of a large batch.

For each way of waiting on a batch (``gather``, ``wait``, a ``ParallelContext``,
``parallel_map``) and each batch size, a child process submits the batch, says
"ready" once the first task ran, and is sent SIGINT; the time from the signal
to the child's exit is measured (best of a few rounds). The same is measured
for a child that only starts and exits, so that interpreter start-up and exit
can be told apart. A bulk cancellation keeps the time flat as batches grow.
Each figure is split in two: until the program's exit hooks start (the batch
is cancelled and ``KeyboardInterrupt`` has reached the top), and the rest of
the exit, which is mostly the interpreter's own garbage collection at
finalization over every object still alive (the program's list of 200,000
handles included: a full collection scans each of them).

    python benchmarks/interrupt_latency.py [--sizes 10000 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import textwrap
import time

PRELUDE = """
import atexit
import threading
import time
import makeparallel as mp

# Registered after the library's exit hook, so it runs first: the moment the
# interrupted program is done with the batch and only exit remains.
atexit.register(lambda: print("exiting", time.time(), flush=True))

_ready = threading.Event()

def ready():
    print("ready", flush=True)

def work(i):
    if not _ready.is_set():  # for the map: the first item says it is under way
        _ready.set()
        ready()
    return sum(range(2000))

task = mp.parallel(lambda i: sum(range(2000)))
"""

# Each batch is submitted whole before "ready", so the signal lands in the wait.
WAYS = {
    "gather": """
handles = [task(i) for i in range(N)]
ready()
mp.gather(handles)
""",
    "wait": """
handles = [task(i) for i in range(N)]
ready()
mp.wait(handles)
""",
    "ParallelContext": """
with mp.ParallelContext() as ctx:
    for i in range(N):
        ctx.submit(task, i)
    ready()
""",
    "parallel_map": "mp.parallel_map(work, range(N * 1000))",
}

BASELINE = 'print("ready", flush=True)\ntime.sleep(60)'


def stop_time(body: str, size: int) -> tuple[float, float]:
    """Seconds from SIGINT to the exit hooks and to the exit of a child running ``body`` with ``N = size``."""
    env = {k: v for k, v in os.environ.items() if k != "MAKEPARALLEL_BACKEND"}
    script = PRELUDE + f"N = {size}\n" + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the child never got ready ({body!r})")
        start = time.time()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
        end = time.time()
        hooks = next((float(line.split()[1]) for line in rest.splitlines() if line.startswith("exiting")), end)
        return hooks - start, end - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 200_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # Started in the background (``cmd &``, nohup), this process ignores SIGINT, and so would
    # its children, which then slept through the signal: a handler here is reset in them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    baseline = min(stop_time(BASELINE, 0)[1] for _ in range(args.rounds))
    print(
        f"seconds from SIGINT to exit (to the exit hooks in brackets), best of {args.rounds}; "
        f"a bare interpreter exits in {baseline:.3f} s"
    )
    for name, body in WAYS.items():
        times = [min((stop_time(body, size) for _ in range(args.rounds)), key=lambda t: t[1]) for size in args.sizes]
        row = "   ".join(
            f"{size:>8,} tasks {exit_:6.3f} s ({hooks:5.3f})" for size, (hooks, exit_) in zip(args.sizes, times)
        )
        print(f"{name:<16} {row}   largest/smallest {times[-1][1] / times[0][1]:5.2f}x")


if __name__ == "__main__":
    main()
